/* model_client.c -- embedding requests to model servers on libcurl multi inside the libuv loop:
 * splitting a batch into requests, the transfer pool, stats; and the
 * built-in hashing model, computed on the loop in bounded slices. Each model's requests
 * (FIFO under a concurrency cap, adaptive rate limit, 429 back-off, circuit breaker) are
 * model_request.c's; model_internal.h holds the structs both files share.
 *
 * Owns a curl loop (curl_loop.h: the CURLM on the loop), the pooled transfers (easy handle +
 * request body + response buffer, reset and reused), one uv_timer per model
 * (token and Retry-After waits), one uv_idle that computes hashing slices and delivers
 * callbacks, and every struct bd_model_call from bd_model_embed until its callback returned.
 * Loop thread only; never blocks (curl resolves names asynchronously). Never calls a user
 * callback from a curl callback or from the function the user called: every finished call is
 * queued and delivered from the idle handle, so callbacks are always asynchronous, run once,
 * and may call back into this module. Knows nothing of jobs, Redis or PostgreSQL.
 * SPDX-License-Identifier: MIT
 */
#include "model_internal.h"

#include "batchd/config.h"
#include "batchd/curl_loop.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <curl/curl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double model_hist_bounds[] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

static const char *const model_error_kind_names[BD_MODEL_ERR_KIND_COUNT] = {
    "timeout_error", "connection_error", "processing_error", "rate_limited",
};

/* ---------------------------------------------------------------------------------------
 * Small helpers
 */


const char *bd_model_error_kind_name(enum bd_model_error_kind k)
{
    return (unsigned)k < BD_MODEL_ERR_KIND_COUNT ? model_error_kind_names[k] : "unknown";
}

void bd_model_tuning_init(struct bd_model_tuning *t)
{
    *t = (struct bd_model_tuning){
        .breaker_threshold = 5,
        .breaker_cooldown_s = 5.0,
        .breaker_max_cooldown_s = 60.0,
        .max_consecutive_429 = 20,
        .default_retry_after_s = 1.0,
        .max_retry_after_s = 60.0,
        .connect_timeout_s = 10.0,
        .hashing_slice_inputs = 64,
        .hashing_slice_bytes = 256 * 1024,
    };
}

void bd_model_client_set_tuning(struct bd_model_client *mc, const struct bd_model_tuning *t)
{
    mc->tuning = *t;
    if (mc->tuning.breaker_threshold == 0)
        mc->tuning.breaker_threshold = 1;
    if (mc->tuning.max_consecutive_429 == 0)
        mc->tuning.max_consecutive_429 = 1;
    if (mc->tuning.hashing_slice_inputs == 0)
        mc->tuning.hashing_slice_inputs = 1;
    for (unsigned i = 0; i < mc->models_count; i++)
        mc->models[i].cooldown_s = mc->tuning.breaker_cooldown_s;
}

/* ---------------------------------------------------------------------------------------
 * Transfer pool
 */

struct model_xfer *bd__model_xfer_get(struct bd_model_client *mc)
{
    struct model_xfer *x = mc->free_xfers;

    if (x != NULL) {
        mc->free_xfers = x->next_free;
        curl_easy_reset(x->easy);
    } else {
        x = calloc(1, sizeof(*x));
        if (x == NULL)
            return NULL;
        x->easy = curl_easy_init();
        if (x->easy == NULL) {
            free(x);
            return NULL;
        }
        bd_buf_init(&x->body);
        bd_buf_init(&x->resp);
    }
    bd_buf_reset(&x->body);
    bd_buf_reset(&x->resp);
    x->next_free = NULL;
    x->sub = NULL;
    x->is_too_large = false;
    x->is_nomem = false;
    x->is_no_fd = false;
    x->errbuf[0] = '\0';
    return x;
}

/* Back to the pool. The easy handle must be out of the multi. Buffers that grew past
 * MODEL_BUF_KEEP_MAX are released so one huge batch does not pin memory for good. */
void bd__model_xfer_put(struct bd_model_client *mc, struct model_xfer *x)
{
    x->sub = NULL;
    if (x->body.cap > MODEL_BUF_KEEP_MAX)
        bd_buf_free(&x->body);
    if (x->resp.cap > MODEL_BUF_KEEP_MAX)
        bd_buf_free(&x->resp);
    x->next_free = mc->free_xfers;
    mc->free_xfers = x;
}

size_t bd__model_xfer_on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct model_xfer *x = userdata;
    size_t n = size * nmemb;

    if (x->resp.len + n > x->resp_cap) {
        x->is_too_large = true;
        return 0;                              /* CURLE_WRITE_ERROR ends the transfer */
    }
    bd_buf_append(&x->resp, ptr, n);
    if (x->resp.is_failed) {
        x->is_nomem = true;
        return 0;
    }
    return n;
}

/* ---------------------------------------------------------------------------------------
 * Finished transfers (the curl multi glue is curl_loop.c's)
 */

static void client_on_handle_closed(struct bd_model_client *mc);

/* curl_loop's done callback: hand the transfer to its request. */
static void model_on_curl_done(CURL *easy, CURLcode result, void *arg)
{
    struct bd_model_client *mc = arg;
    struct model_xfer *x = NULL;

    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    if (x != NULL && x->sub != NULL)
        bd__model_sub_on_done(x->sub, result);
    else
        curl_multi_remove_handle(mc->multi, easy);   /* not ours to finish; drop it */
}

/* ---------------------------------------------------------------------------------------
 * Hashing model and delivery (the idle handle)
 */

/* Compute one bounded slice of the first hashing call, then move it to the back so calls
 * share the loop fairly. */
static void hashing_slice(struct bd_model_client *mc)
{
    struct bd_model_call *call = MODEL_OF(mc->hashing.next, struct bd_model_call, hash_link);
    struct model *m = call->m;
    uint64_t t0 = uv_hrtime();
    unsigned n = 0;
    size_t bytes = 0;

    if (call->t_first == 0)
        call->t_first = t0;
    while (call->hash_next < call->count && n < mc->tuning.hashing_slice_inputs &&
           bytes < mc->tuning.hashing_slice_bytes) {
        unsigned i = call->hash_next++;
        if (call->item_status[i] != BD_OK)
            continue;
        size_t len = model_text_len(m, &call->inputs[i]);
        bd_model_hashing_embed(call->inputs[i].text, len, m->dim,
                               call->vectors + (size_t)i * m->dim);
        n++;
        bytes += len;
    }
    call->t_last = uv_hrtime();
    bd_hist_observe(&m->stats.request_seconds, (double)(call->t_last - t0) / 1e9);
    m->stats.inputs += n;
    if (call->hash_next >= call->count) {
        bd__model_call_finish(call, BD_OK, false, "%s", "");
        return;
    }
    model_link_remove(&call->hash_link);
    model_link_insert_tail(&mc->hashing, &call->hash_link);
}

static void client_teardown(struct bd_model_client *mc);

void bd__model_on_idle(uv_idle_t *h)
{
    struct bd_model_client *mc = h->data;
    struct model_link batch;

    if (!model_link_is_empty(&mc->hashing))
        hashing_slice(mc);
    /* Deliver what finished so far; calls finishing inside these callbacks wait for the
     * next turn, so one busy caller cannot starve the loop. */
    model_link_move(&mc->done, &batch);
    while (!model_link_is_empty(&batch)) {
        struct bd_model_call *call = MODEL_OF(batch.next, struct bd_model_call, link);
        model_link_remove(&call->link);
        bd__model_call_deliver(call);
    }
    if (model_link_is_empty(&mc->hashing) && model_link_is_empty(&mc->done)) {
        uv_idle_stop(h);
        if (mc->is_closing && !mc->is_torn_down && model_link_is_empty(&mc->calls))
            client_teardown(mc);
    }
}

/* ---------------------------------------------------------------------------------------
 * Public: embed, abort, stats
 */

static struct model *model_find(struct bd_model_client *mc, const char *name)
{
    for (unsigned i = 0; i < mc->models_count; i++)
        if (strcmp(mc->models[i].cfg->name, name) == 0)
            return &mc->models[i];
    return NULL;
}

/* Apply the overlong policy and split inputs into requests of at most max_inputs inputs and
 * max_chars bytes (a lone input longer than max_chars still goes, alone). Returns the number
 * of requests; with call != NULL also fills call->subs, item_status and truncated. Hashing
 * models get no requests. */
static unsigned call_plan(const struct model *m, const struct bd_embed_input *in,
                          unsigned count, struct bd_model_call *call)
{
    bool is_http = m->cfg->provider != BD_PROVIDER_HASHING;
    unsigned nsubs = 0;
    unsigned cur_first = 0;
    unsigned cur_n = 0;
    size_t cur_chars = 0;

    for (unsigned i = 0; i < count; i++) {
        size_t len = in[i].len;
        if (len > m->max_input_chars) {
            if (m->cfg->overlong == BD_OVERLONG_FAIL) {
                if (call != NULL)
                    call->item_status[i] = BD_EINVAL;
                continue;
            }
            len = model_text_len(m, &in[i]);
            if (call != NULL)
                call->truncated++;
        }
        if (!is_http)
            continue;
        if (cur_n > 0 && (cur_n >= m->max_inputs || cur_chars + len > m->max_chars)) {
            if (call != NULL)
                call->subs[nsubs] = (struct model_sub){
                    .call = call, .first = cur_first, .end = i, .n_sent = cur_n};
            nsubs++;
            cur_n = 0;
            cur_chars = 0;
        }
        if (cur_n == 0)
            cur_first = i;
        cur_n++;
        cur_chars += len;
    }
    if (cur_n > 0) {
        if (call != NULL)
            call->subs[nsubs] = (struct model_sub){
                .call = call, .first = cur_first, .end = count, .n_sent = cur_n};
        nsubs++;
    }
    return nsubs;
}

int bd_model_embed(struct bd_model_client *mc, const char *model,
                   const struct bd_embed_input *inputs, unsigned count,
                   const struct bd_model_order *order, bd_model_embed_cb cb, void *arg,
                   struct bd_model_call **call_out)
{
    struct bd_model_call *call;
    struct model *m;
    unsigned nsubs;

    if (call_out != NULL)
        *call_out = NULL;
    if (mc == NULL || model == NULL || cb == NULL || (count > 0 && inputs == NULL))
        return BD_EINVAL;
    if (mc->is_closing)
        return BD_ESHUTDOWN;
    m = model_find(mc, model);
    if (m == NULL)
        return BD_ENOTFOUND;
    for (unsigned i = 0; i < count; i++)
        if (inputs[i].text == NULL && inputs[i].len > 0)
            return BD_EINVAL;

    nsubs = call_plan(m, inputs, count, NULL);
    call = calloc(1, sizeof(*call) + (size_t)nsubs * sizeof(struct model_sub));
    if (call == NULL)
        return BD_ENOMEM;
    call->subs = (struct model_sub *)(void *)(call + 1);
    if (count > 0) {
        call->vectors = calloc((size_t)count * m->dim, sizeof(float));
        call->item_status = calloc(count, sizeof(int));
        if (call->vectors == NULL || call->item_status == NULL) {
            bd__model_call_free(call);
            return BD_ENOMEM;
        }
    }
    call->mc = mc;
    call->m = m;
    call->inputs = inputs;
    call->count = count;
    call->cb = cb;
    call->arg = arg;
    call->order = order ? *order : (struct bd_model_order){ .priority = 1, .rank = 0 };
    call->seq = m->next_seq++;
    call->subs_count = call_plan(m, inputs, count, call);
    call->subs_left = call->subs_count;
    call->state = CALL_RUNNING;
    model_link_init(&call->hash_link);
    model_link_insert_tail(&mc->calls, &call->link);
    if (call_out != NULL)
        *call_out = call;

    if (m->cfg->provider == BD_PROVIDER_HASHING && count > 0) {
        model_link_insert_tail(&mc->hashing, &call->hash_link);
        uv_idle_start(&mc->idle, bd__model_on_idle);
        return BD_OK;
    }
    if (call->subs_count == 0) {                   /* nothing to send: every input refused */
        bd__model_call_finish(call, BD_OK, false, "%s", "");
        return BD_OK;
    }
    for (unsigned i = 0; i < call->subs_count; i++) {
        call->subs[i].state = SUB_WAITING;
        bd__model_enqueue(m, &call->subs[i]);
    }
    bd__model_pump(m);
    return BD_OK;
}

void bd_model_abort(struct bd_model_call *call)
{
    if (call == NULL)
        return;
    if (call->state == CALL_RUNNING) {
        bd__model_call_finish(call, BD_ECANCELED, false, "model request aborted");
    } else if (call->state == CALL_DONE) {
        call->status = BD_ECANCELED;
        call->is_retryable = false;
        snprintf(call->message, sizeof(call->message), "model request aborted");
    }
}

const struct bd_model_stats *bd_model_client_get_stats(const struct bd_model_client *mc,
                                                       unsigned i)
{
    if (mc == NULL || i >= mc->models_count)
        return NULL;
    return &mc->models[i].stats;
}

double bd_model_client_get_busy_seconds(const struct bd_model_client *mc, unsigned i)
{
    const struct bd_model_stats *st = bd_model_client_get_stats(mc, i);
    if (st == NULL)
        return 0;
    uint64_t busy = st->busy_ns;
    if (st->busy_at_ns != 0)
        busy += (uint64_t)st->in_flight * (uv_hrtime() - st->busy_at_ns);
    return (double)busy / 1e9;
}

double bd_model_get_wait_s(const struct bd_model_client *mc, const char *name)
{
    for (unsigned i = 0; i < mc->models_count; i++) {
        const struct model *m = &mc->models[i];
        if (strcmp(m->cfg->name, name) == 0) {
            double left = m->open_until - model_now();
            return m->breaker == BREAKER_OPEN && left > 0 ? left : 0;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Life cycle
 */

static void model_fini(struct model *m)
{
    free(m->url);
    free(m->url_shown);
    curl_slist_free_all(m->headers);
    m->url = NULL;
    m->url_shown = NULL;
    m->headers = NULL;
}

/* Fill m from its config (defaults for zero fields, so hand-built configs work). No uv
 * handles yet. */
static int model_init(struct bd_model_client *mc, struct model *m,
                      const struct bd_model_config *cfg)
{
    m->mc = mc;
    m->cfg = cfg;
    if (cfg->name == NULL || cfg->dimensions == 0 || (unsigned)cfg->provider >
                                                         (unsigned)BD_PROVIDER_HASHING)
        return BD_EINVAL;
    m->dim = cfg->dimensions;
    m->remote_model = cfg->remote_model && cfg->remote_model[0] ? cfg->remote_model : cfg->name;
    m->max_inputs = cfg->max_inputs_per_request ? cfg->max_inputs_per_request : 32;
    m->max_chars = cfg->max_chars_per_request ? cfg->max_chars_per_request : 200000;
    m->max_input_chars = cfg->max_input_chars ? cfg->max_input_chars : 8192;
    m->concurrency = cfg->concurrency ? cfg->concurrency : 4;
    m->timeout_s = cfg->timeout_s > 0.0 ? cfg->timeout_s : 30.0;
    m->ceiling = cfg->rate_limit_rps > 0.0 ? cfg->rate_limit_rps : 0.0;
    m->cooldown_s = mc->tuning.breaker_cooldown_s;
    m->bucket_t = m->last_adjust = model_now();
    bd__model_rate_set(m, m->ceiling);
    m->tokens = m->rate > 1.0 ? m->rate : 1.0;
    model_link_init(&m->waiting);
    m->stats.request_seconds.bounds = model_hist_bounds;
    m->stats.request_seconds.bounds_count = sizeof(model_hist_bounds) / sizeof(double);
    m->stats.concurrency_limit = m->concurrency;
    if (cfg->provider == BD_PROVIDER_HASHING)
        return BD_OK;

    const char *base = cfg->base_url;
    const char *path = bd__model_wire_path(cfg->provider);
    if (base == NULL || base[0] == '\0')
        return BD_EINVAL;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    m->url = malloc(blen + strlen(path) + 1);
    if (m->url == NULL)
        return BD_ENOMEM;
    memcpy(m->url, base, blen);
    strcpy(m->url + blen, path);
    char shown[512];
    m->url_shown = strdup(bd_log_redact_url(m->url, shown, sizeof(shown)));
    if (m->url_shown == NULL)
        return BD_ENOMEM;

    /* "Expect:" turns off curl's 100-continue wait for bodies over 1 MiB: servers that do
     * not answer it would cost a second per request. */
    static const char *const fixed[] = {
        "Content-Type: application/json", "Accept: application/json", "Expect:",
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        struct curl_slist *l = curl_slist_append(m->headers, fixed[i]);
        if (l == NULL)
            goto fail_nomem;
        m->headers = l;
    }
    if (cfg->api_key != NULL && cfg->api_key[0] != '\0') {
        size_t n = strlen("Authorization: Bearer ") + strlen(cfg->api_key) + 1;
        char *h = malloc(n);
        if (h == NULL)
            goto fail_nomem;
        snprintf(h, n, "Authorization: Bearer %s", cfg->api_key);
        struct curl_slist *l = curl_slist_append(m->headers, h);
        memset(h, 0, n);                          /* the key does not linger in freed memory */
        free(h);
        if (l == NULL)
            goto fail_nomem;
        m->headers = l;
    }
    return BD_OK;

fail_nomem:
    model_fini(m);
    return BD_ENOMEM;
}

struct bd_model_client *bd_model_client_new(uv_loop_t *loop, const struct bd_config *cfg,
                                            int *err)
{
    struct bd_model_client *mc;
    unsigned inited = 0;
    int rc = BD_ENOMEM;

    mc = calloc(1, sizeof(*mc));
    if (mc == NULL)
        goto fail_alloc;
    mc->loop = loop;
    mc->cfg = cfg;
    bd_model_tuning_init(&mc->tuning);
    model_link_init(&mc->calls);
    model_link_init(&mc->done);
    model_link_init(&mc->hashing);
    mc->models_count = cfg->models_count;
    mc->models = calloc(cfg->models_count ? cfg->models_count : 1, sizeof(*mc->models));
    if (mc->models == NULL)
        goto fail_models;
    for (; inited < cfg->models_count; inited++) {
        rc = model_init(mc, &mc->models[inited], &cfg->models[inited]);
        if (rc < 0)
            goto fail_model;
    }
    mc->curl = bd_curl_loop_new(loop, model_on_curl_done, mc, &rc);
    if (mc->curl == NULL)
        goto fail_multi;
    mc->multi = bd_curl_loop_get_multi(mc->curl);
    uv_idle_init(loop, &mc->idle);
    mc->idle.data = mc;
    for (unsigned i = 0; i < mc->models_count; i++) {
        uv_timer_init(loop, &mc->models[i].timer);
        mc->models[i].timer.data = &mc->models[i];
    }
    return mc;

fail_multi:
fail_model:
    for (unsigned i = 0; i <= inited && i < cfg->models_count; i++)
        model_fini(&mc->models[i]);
    free(mc->models);
fail_models:
    free(mc);
fail_alloc:
    if (err != NULL)
        *err = rc;
    return NULL;
}

static void client_free(struct bd_model_client *mc)
{
    bd_model_closed_cb cb = mc->closed_cb;
    void *arg = mc->closed_arg;

    for (unsigned i = 0; i < mc->models_count; i++)
        model_fini(&mc->models[i]);
    free(mc->models);
    free(mc->scratch);
    free(mc);
    if (cb != NULL)
        cb(arg);
}

static void client_on_handle_closed(struct bd_model_client *mc)
{
    if (--mc->pending_closes == 0 && mc->is_torn_down)
        client_free(mc);
}

static void client_on_close(uv_handle_t *h)
{
    client_on_handle_closed(h->data);
}

static void client_on_curl_closed(void *arg)
{
    client_on_handle_closed(arg);
}

static void model_on_timer_close(uv_handle_t *h)
{
    struct model *m = h->data;

    client_on_handle_closed(m->mc);
}

/* Every call has been delivered: release curl (no easy handle is in the multi any more),
 * then close every handle; the last close callback frees the client and runs closed_cb.
 * Runs from the idle callback, never inside curl. */
static void client_teardown(struct bd_model_client *mc)
{
    mc->is_torn_down = true;
    mc->pending_closes += 2;                  /* the curl loop, and a hold until every
                                               * close below is queued */
    /* Cached keep-alive connections close here, with curl's sockets and timer. */
    bd_curl_loop_close(mc->curl, client_on_curl_closed, mc);
    mc->curl = NULL;
    mc->multi = NULL;
    while (mc->free_xfers != NULL) {
        struct model_xfer *x = mc->free_xfers;
        mc->free_xfers = x->next_free;
        curl_easy_cleanup(x->easy);
        bd_buf_free(&x->body);
        bd_buf_free(&x->resp);
        free(x);
    }
    for (unsigned i = 0; i < mc->models_count; i++) {
        mc->pending_closes++;
        uv_close((uv_handle_t *)&mc->models[i].timer, model_on_timer_close);
    }
    mc->pending_closes++;
    uv_close((uv_handle_t *)&mc->idle, client_on_close);
    client_on_handle_closed(mc);              /* drop the hold */
}

void bd_model_client_close(struct bd_model_client *mc, bd_model_closed_cb cb, void *arg)
{
    if (mc == NULL || mc->is_closing)
        return;
    mc->is_closing = true;
    mc->closed_cb = cb;
    mc->closed_arg = arg;
    while (!model_link_is_empty(&mc->calls))
        bd__model_call_finish(MODEL_OF(mc->calls.next, struct bd_model_call, link), BD_ECANCELED,
                              false, "model client is closing");
    for (unsigned i = 0; i < mc->models_count; i++)
        uv_timer_stop(&mc->models[i].timer);
    uv_idle_start(&mc->idle, bd__model_on_idle);
}
