/* model_client.c -- embedding requests to model servers on libcurl multi inside the libuv loop:
 * splitting a batch into requests, a per-model FIFO under a concurrency cap, an adaptive rate
 * limit, 429 back-off, a circuit breaker, stats; and the built-in hashing model, computed on
 * the loop in bounded slices.
 *
 * Owns the CURLM, the pooled transfers (easy handle + request body + response buffer, reset
 * and reused), one uv_poll per curl socket, one uv_timer for curl, one uv_timer per model
 * (token and Retry-After waits), one uv_idle that computes hashing slices and delivers
 * callbacks, and every struct bd_model_call from bd_model_embed until its callback returned.
 * Loop thread only; never blocks (curl resolves names asynchronously). Never calls a user
 * callback from a curl callback or from the function the user called: every finished call is
 * queued and delivered from the idle handle, so callbacks are always asynchronous, run once,
 * and may call back into this module. Knows nothing of jobs, Redis or PostgreSQL.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/model_client.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/log.h"
#include "batchd/model_internal.h"

#include <curl/curl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_RESP_CAP_BASE      ((size_t)64 << 20) /* plus a per-vector estimate */
#define MODEL_RESP_BYTES_PER_NUM 32                 /* generous for "-0.0123456789," */
#define MODEL_BUF_KEEP_MAX       ((size_t)4 << 20)  /* larger pooled buffers are freed */
#define MODEL_RATE_STEP_RPS      1.0   /* additive increase per second of success */
#define MODEL_RATE_MIN_RPS       0.2   /* multiplicative decrease stops here */
#define MODEL_RATE_DECREASE_GAP  1.0   /* at most one decrease per this many seconds */
#define MODEL_UNLIMITED_RESTORE  60.0  /* unlimited ceiling: limiter off after this calm */
#define MODEL_SENT_RING          64    /* send times kept to measure the observed rate */

static const double model_hist_bounds[] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
};

static const char *const model_error_kind_names[BD_MODEL_ERR_KIND_COUNT] = {
    "timeout_error", "connection_error", "processing_error", "rate_limited",
};

/* ---------------------------------------------------------------------------------------
 * Intrusive doubly linked lists (libuv's QUEUE, spelled out)
 */

struct model_link {
    struct model_link *prev;
    struct model_link *next;
};

#define MODEL_OF(ptr, type, field) ((type *)(void *)((char *)(ptr) - offsetof(type, field)))

static void link_init(struct model_link *l)
{
    l->prev = l->next = l;
}

static bool link_is_empty(const struct model_link *head)
{
    return head->next == head;
}

static void link_remove(struct model_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    link_init(l);
}

static void link_insert_tail(struct model_link *head, struct model_link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static void link_insert_head(struct model_link *head, struct model_link *l)
{
    l->next = head->next;
    l->prev = head;
    head->next->prev = l;
    head->next = l;
}

/* Move every element of from to the empty list to. */
static void link_move(struct model_link *from, struct model_link *to)
{
    link_init(to);
    if (link_is_empty(from))
        return;
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    link_init(from);
}

/* ---------------------------------------------------------------------------------------
 * Types
 */

struct model_sub;

/* A pooled transfer. Lives on mc->free_xfers or is attached to one in-flight sub. */
struct model_xfer {
    CURL *easy;
    struct bd_buf body;            /* request body; curl reads it in place */
    struct bd_buf resp;            /* response body */
    size_t resp_cap;               /* abort the transfer past this many bytes */
    struct model_sub *sub;
    struct model_xfer *next_free;
    bool is_too_large;
    bool is_nomem;
    char errbuf[CURL_ERROR_SIZE];
};

enum sub_state { SUB_NEW = 0, SUB_WAITING, SUB_IN_FLIGHT, SUB_DONE };

/* One HTTP request of a call: inputs [first, end) minus those refused by the overlong
 * policy. Stored inside the call's allocation. */
struct model_sub {
    struct bd_model_call *call;
    struct model_link link;        /* in model->waiting while SUB_WAITING */
    struct model_xfer *xfer;       /* while SUB_IN_FLIGHT */
    unsigned first;
    unsigned end;
    unsigned n_sent;
    unsigned n429;                 /* 429 answers to this request so far */
    uint64_t t_start;              /* uv_hrtime of the current attempt */
    enum sub_state state;
    bool is_probe;                 /* the half-open breaker's one trial request */
};

enum call_state { CALL_RUNNING = 0, CALL_DONE, CALL_DELIVERING };

struct bd_model_call {
    struct bd_model_client *mc;
    struct model *m;
    const struct bd_embed_input *inputs;
    unsigned count;
    bd_model_embed_cb cb;
    void *arg;
    float *vectors;                /* count * dim, zeros for refused inputs */
    int *item_status;
    unsigned truncated;
    unsigned requests;
    unsigned rate_limited;
    uint64_t t_first;
    uint64_t t_last;
    struct model_sub *subs;
    unsigned subs_count;
    unsigned subs_left;            /* not yet answered successfully */
    unsigned hash_next;            /* hashing: next input to compute */
    enum call_state state;
    int status;
    bool is_retryable;
    char message[320];
    struct model_link link;        /* mc->calls while running, mc->done once finished */
    struct model_link hash_link;   /* mc->hashing while a hashing call runs */
};

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN };

struct model {
    struct bd_model_client *mc;
    const struct bd_model_config *cfg;
    char *url;
    struct curl_slist *headers;
    const char *remote_model;
    unsigned dim;
    unsigned max_inputs;
    unsigned max_chars;
    unsigned max_input_chars;
    unsigned concurrency;
    double timeout_s;

    struct model_link waiting;     /* subs waiting for a slot, a token or Retry-After */
    uv_timer_t timer;              /* wakes the pump after a token or Retry-After wait */
    bool is_pumping;
    bool is_pump_again;

    /* Adaptive rate limit: a token bucket whose rate moves between MODEL_RATE_MIN_RPS and
     * the ceiling (AIMD). rate 0 means no limit. */
    double ceiling;
    double rate;
    double tokens;
    double bucket_t;
    double last_adjust;
    double last_decrease;
    double blocked_until;          /* 429: nothing leaves before this time */
    double sent_at[MODEL_SENT_RING];
    unsigned sent_pos;

    enum breaker_state breaker;
    unsigned consecutive_failures;
    double cooldown_s;
    double open_until;
    bool is_probe_in_flight;

    struct bd_model_stats stats;
};

struct model_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct bd_model_client *mc;
    struct model_link link;        /* mc->socks */
};

struct bd_model_client {
    uv_loop_t *loop;
    const struct bd_config *cfg;
    struct bd_model_tuning tuning;
    CURLM *multi;
    uv_timer_t curl_timer;
    uv_idle_t idle;
    struct model *models;
    unsigned models_count;
    struct model_xfer *free_xfers;
    struct model_link calls;       /* running */
    struct model_link done;        /* finished, callback not yet run */
    struct model_link hashing;     /* running hashing calls, served round robin */
    struct model_link socks;
    float *scratch;                /* parse target, reused */
    size_t scratch_cap;
    int pending_closes;
    bool is_closing;
    bool is_torn_down;
    bd_model_closed_cb closed_cb;
    void *closed_arg;
};

static void model_pump(struct model *m);
static void model_on_idle(uv_idle_t *h);
static void call_finish(struct bd_model_call *call, int status, bool is_retryable,
                        const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---------------------------------------------------------------------------------------
 * Small helpers
 */

static double model_now(void)
{
    return (double)uv_hrtime() / 1e9;
}

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

/* The bytes of input in that are sent: all of it, or a prefix cut at max_input_chars. */
static size_t model_text_len(const struct model *m, const struct bd_embed_input *in)
{
    if (in->len <= m->max_input_chars)
        return in->len;
    return bd__model_utf8_cut(in->text, in->len, m->max_input_chars);
}

/* ---------------------------------------------------------------------------------------
 * Transfer pool
 */

static struct model_xfer *xfer_get(struct bd_model_client *mc)
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
    x->errbuf[0] = '\0';
    return x;
}

/* Back to the pool. The easy handle must be out of the multi. Buffers that grew past
 * MODEL_BUF_KEEP_MAX are released so one huge batch does not pin memory for good. */
static void xfer_put(struct bd_model_client *mc, struct model_xfer *x)
{
    x->sub = NULL;
    if (x->body.cap > MODEL_BUF_KEEP_MAX)
        bd_buf_free(&x->body);
    if (x->resp.cap > MODEL_BUF_KEEP_MAX)
        bd_buf_free(&x->resp);
    x->next_free = mc->free_xfers;
    mc->free_xfers = x;
}

static size_t xfer_on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
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
 * Rate limit and circuit breaker
 */

static void rate_set(struct model *m, double rate)
{
    m->rate = rate;
    m->stats.rate_limit_rps = rate;
    double burst = rate > 1.0 ? rate : 1.0;
    if (m->tokens > burst)
        m->tokens = burst;
}

/* Take a token now (true), or say how long until one is there (false, *wait seconds). */
static bool rate_take(struct model *m, double now, double *wait)
{
    if (m->rate <= 0.0)
        return true;
    double burst = m->rate > 1.0 ? m->rate : 1.0;
    m->tokens += (now - m->bucket_t) * m->rate;
    if (m->tokens > burst)
        m->tokens = burst;
    m->bucket_t = now;
    if (m->tokens >= 1.0) {
        m->tokens -= 1.0;
        return true;
    }
    *wait = (1.0 - m->tokens) / m->rate;
    return false;
}

/* The rate a 429 answered: requests sent in the last second (at least 1). When the whole
 * ring is inside that second the model was faster than the ring is long, so the rate is
 * estimated from the ring's span instead. */
static double rate_observed(const struct model *m, double now)
{
    unsigned n = 0;
    double oldest = now;

    for (unsigned i = 0; i < MODEL_SENT_RING; i++) {
        if (m->sent_at[i] > 0.0 && now - m->sent_at[i] <= 1.0) {
            n++;
            if (m->sent_at[i] < oldest)
                oldest = m->sent_at[i];
        }
    }
    if (n == MODEL_SENT_RING && now - oldest > 1e-3)
        return (double)n / (now - oldest);
    return n > 0 ? (double)n : 1.0;
}

/* Additive increase: +MODEL_RATE_STEP_RPS per second since the last change, up to the
 * ceiling. With no ceiling the limiter switches off after a calm minute. */
static void rate_on_success(struct model *m, double now)
{
    if (m->rate <= 0.0)
        return;
    if (m->ceiling <= 0.0 && now - m->last_decrease >= MODEL_UNLIMITED_RESTORE) {
        rate_set(m, 0.0);
        return;
    }
    double rate = m->rate + (now - m->last_adjust) * MODEL_RATE_STEP_RPS;
    if (m->ceiling > 0.0 && rate > m->ceiling)
        rate = m->ceiling;
    m->last_adjust = now;
    rate_set(m, rate);
}

/* Multiplicative decrease on a 429 or a timeout, at most once per MODEL_RATE_DECREASE_GAP
 * (a burst of answers to one overload must not halve the rate once per request). An
 * unlimited model starts limiting on its first 429, at the rate it was sending (requests
 * in the last second); timeouts alone never turn the limiter on. */
static void rate_on_congestion(struct model *m, double now, bool is_429)
{
    double rate = m->rate;

    if (rate <= 0.0) {
        if (!is_429)
            return;
        rate = rate_observed(m, now);
        m->tokens = 0.0;
        m->bucket_t = now;
    } else if (now - m->last_decrease < MODEL_RATE_DECREASE_GAP) {
        return;
    } else {
        rate *= 0.5;
    }
    if (rate < MODEL_RATE_MIN_RPS)
        rate = MODEL_RATE_MIN_RPS;
    m->last_decrease = m->last_adjust = now;
    rate_set(m, rate);
}

static void breaker_set(struct model *m, enum breaker_state s)
{
    m->breaker = s;
    m->stats.is_circuit_open = s != BREAKER_CLOSED;
}

/* The model answered (anything but 5xx): it is reachable. */
static void breaker_on_success(struct model *m)
{
    m->consecutive_failures = 0;
    if (m->breaker != BREAKER_CLOSED) {
        bd_log(BD_LOG_INFO, "model", "model=%s circuit=closed", m->cfg->name);
        breaker_set(m, BREAKER_CLOSED);
        m->cooldown_s = m->mc->tuning.breaker_cooldown_s;
    }
}

/* A timeout, connection error or 5xx. */
static void breaker_on_failure(struct model *m, bool was_probe, double now)
{
    const struct bd_model_tuning *t = &m->mc->tuning;

    m->consecutive_failures++;
    if (was_probe) {
        m->cooldown_s *= 2.0;
        if (m->cooldown_s > t->breaker_max_cooldown_s)
            m->cooldown_s = t->breaker_max_cooldown_s;
    } else if (m->breaker != BREAKER_CLOSED ||
               m->consecutive_failures < t->breaker_threshold) {
        return;
    }
    m->open_until = now + m->cooldown_s;
    breaker_set(m, BREAKER_OPEN);
    bd_log(BD_LOG_WARN, "model", "model=%s circuit=open failures=%u cooldown_s=%.1f",
           m->cfg->name, m->consecutive_failures, m->cooldown_s);
}

/* ---------------------------------------------------------------------------------------
 * Calls
 */

/* Take sub out of whatever it waits in; an in-flight transfer is removed from curl at once,
 * which closes its connection (the server sees the client go). */
static void sub_cancel(struct model_sub *sub)
{
    struct model *m = sub->call->m;

    if (sub->state == SUB_WAITING) {
        link_remove(&sub->link);
    } else if (sub->state == SUB_IN_FLIGHT) {
        curl_multi_remove_handle(m->mc->multi, sub->xfer->easy);
        xfer_put(m->mc, sub->xfer);
        sub->xfer = NULL;
        m->stats.in_flight--;
        if (sub->is_probe)
            m->is_probe_in_flight = false;
        sub->is_probe = false;
    }
    sub->state = SUB_DONE;
}

/* Finish call with status (first outcome wins): cancel its other requests and queue it for
 * delivery from the idle handle. */
static void call_finish(struct bd_model_call *call, int status, bool is_retryable,
                        const char *fmt, ...)
{
    struct bd_model_client *mc = call->mc;
    bool had_in_flight = false;
    va_list ap;

    if (call->state != CALL_RUNNING)
        return;
    call->state = CALL_DONE;
    call->status = status;
    call->is_retryable = is_retryable;
    va_start(ap, fmt);
    vsnprintf(call->message, sizeof(call->message), fmt, ap);
    va_end(ap);
    for (unsigned i = 0; i < call->subs_count; i++) {
        had_in_flight |= call->subs[i].state == SUB_IN_FLIGHT;
        sub_cancel(&call->subs[i]);
    }
    link_remove(&call->hash_link);
    link_remove(&call->link);
    link_insert_tail(&mc->done, &call->link);
    uv_idle_start(&mc->idle, model_on_idle);
    if (had_in_flight)
        model_pump(call->m);
}

static void call_free(struct bd_model_call *call)
{
    free(call->vectors);
    free(call->item_status);
    free(call);
}

/* Run call's callback, then free it. The call is out of every list. */
static void call_deliver(struct bd_model_call *call)
{
    call->state = CALL_DELIVERING;
    if (call->status == BD_OK) {
        struct bd_embed_result res = {
            .count = call->count,
            .dim = call->m->dim,
            .vectors = call->vectors,
            .item_status = call->item_status,
            .truncated = call->truncated,
            .requests = call->requests,
            .rate_limited = call->rate_limited,
            .model_seconds = call->t_last > call->t_first
                                 ? (double)(call->t_last - call->t_first) / 1e9 : 0.0,
        };
        call->cb(BD_OK, &res, "", false, call->arg);
    } else {
        call->cb(call->status, NULL, call->message, call->is_retryable, call->arg);
    }
    call_free(call);
}

/* ---------------------------------------------------------------------------------------
 * HTTP requests
 */

/* Build sub's body and hand it to curl. On failure the call is finished. */
static void sub_start(struct model *m, struct model_sub *sub, double now)
{
    struct bd_model_client *mc = m->mc;
    struct bd_model_call *call = sub->call;
    struct model_xfer *x = xfer_get(mc);
    bool is_first = true;
    CURLMcode mrc;

    if (x == NULL) {
        call_finish(call, BD_EMODEL, true, "out of memory starting a model request");
        return;
    }
    bd__model_wire_begin(&x->body, m->cfg->provider, m->remote_model);
    for (unsigned i = sub->first; i < sub->end; i++) {
        if (call->item_status[i] != BD_OK)
            continue;
        bd__model_wire_add(&x->body, call->inputs[i].text, model_text_len(m, &call->inputs[i]),
                           is_first);
        is_first = false;
    }
    bd__model_wire_end(&x->body, m->cfg->provider);
    if (x->body.is_failed) {
        xfer_put(mc, x);
        call_finish(call, BD_EMODEL, true, "out of memory building a model request");
        return;
    }
    x->resp_cap = MODEL_RESP_CAP_BASE +
                  (size_t)sub->n_sent * m->dim * MODEL_RESP_BYTES_PER_NUM;
    x->sub = sub;

    long timeout_ms = (long)ceil(m->timeout_s * 1000.0);
    long connect_ms = (long)ceil(mc->tuning.connect_timeout_s * 1000.0);
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, m->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_ms < timeout_ms ? connect_ms
                                                                          : timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, m->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "batchd/" BATCHD_VERSION);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body.len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, xfer_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);

    mrc = curl_multi_add_handle(mc->multi, e);
    if (mrc != CURLM_OK) {
        xfer_put(mc, x);
        call_finish(call, BD_EMODELCONN, true, "cannot start a model request: %s",
                    curl_multi_strerror(mrc));
        return;
    }
    sub->xfer = x;
    sub->state = SUB_IN_FLIGHT;
    sub->t_start = uv_hrtime();
    if (call->t_first == 0)
        call->t_first = sub->t_start;
    m->stats.in_flight++;
    m->sent_at[m->sent_pos++ % MODEL_SENT_RING] = now;
}

/* Grow mc->scratch to n floats. */
static float *model_scratch(struct bd_model_client *mc, size_t n)
{
    if (n > mc->scratch_cap) {
        float *p = realloc(mc->scratch, n * sizeof(float));
        if (p == NULL)
            return NULL;
        mc->scratch = p;
        mc->scratch_cap = n;
    }
    return mc->scratch;
}

/* A 2xx answer: validate it, place the rows, finish the call when it was the last. */
static void sub_on_ok(struct model *m, struct model_sub *sub, struct model_xfer *x,
                      double now)
{
    struct bd_model_call *call = sub->call;
    char msg[256];
    float *rows = model_scratch(m->mc, (size_t)sub->n_sent * m->dim);
    int rc;

    breaker_on_success(m);
    if (rows == NULL) {
        call_finish(call, BD_EMODEL, true, "out of memory parsing the model's answer");
        return;
    }
    rc = bd__model_wire_parse(m->cfg->provider, x->resp.data, x->resp.len, sub->n_sent, m->dim,
                              rows, msg, sizeof(msg));
    if (rc == BD_ENOMEM) {
        call_finish(call, BD_EMODEL, true, "out of memory parsing the model's answer");
        return;
    }
    if (rc < 0) {
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        call_finish(call, BD_EMODELBAD, true, "%s", msg);
        return;
    }
    for (unsigned i = sub->first, j = 0; i < sub->end; i++) {
        if (call->item_status[i] != BD_OK)
            continue;
        memcpy(call->vectors + (size_t)i * m->dim, rows + (size_t)j * m->dim,
               (size_t)m->dim * sizeof(float));
        j++;
    }
    rate_on_success(m, now);
    m->stats.inputs += sub->n_sent;
    sub->state = SUB_DONE;
    if (--call->subs_left == 0)
        call_finish(call, BD_OK, false, "%s", "");
}

/* A 429: wait out Retry-After (the whole model waits: the server said it is overloaded) and
 * send the same request again first, unless it has been refused too often. */
static void sub_on_429(struct model *m, struct model_sub *sub, struct model_xfer *x,
                       double now)
{
    const struct bd_model_tuning *t = &m->mc->tuning;
    struct bd_model_call *call = sub->call;
    curl_off_t ra = -1;

    breaker_on_success(m);
    m->stats.errors[BD_MODEL_ERR_RATE_LIMITED]++;
    call->rate_limited++;
    rate_on_congestion(m, now, true);
    if (++sub->n429 >= t->max_consecutive_429) {
        sub->state = SUB_DONE;
        call_finish(call, BD_EMODELRATE, true,
                    "model %s answered 429 Too Many Requests %u times to the same request",
                    m->cfg->name, sub->n429);
        return;
    }
    curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &ra);
    double wait = ra > 0 ? (double)ra : t->default_retry_after_s;
    if (wait > t->max_retry_after_s)
        wait = t->max_retry_after_s;
    if (now + wait > m->blocked_until)
        m->blocked_until = now + wait;
    bd_log(BD_LOG_DEBUG, "model", "model=%s status=429 retry_after_s=%.1f rate_rps=%.2f",
           m->cfg->name, wait, m->rate);
    sub->state = SUB_WAITING;
    link_insert_head(&m->waiting, &sub->link);
}

/* curl finished sub's transfer with result: classify, count, and act. */
static void sub_on_done(struct model_sub *sub, CURLcode result)
{
    struct bd_model_call *call = sub->call;
    struct model *m = call->m;
    struct bd_model_client *mc = m->mc;
    struct model_xfer *x = sub->xfer;
    bool was_probe = sub->is_probe;
    double now = model_now();
    uint64_t t_end = uv_hrtime();
    long http = 0;
    long connects = 0;
    char text[200];

    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &http);
    curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &connects);
    m->stats.connections += (uint64_t)(connects > 0 ? connects : 0);
    curl_multi_remove_handle(mc->multi, x->easy);
    sub->xfer = NULL;
    sub->state = SUB_NEW;
    sub->is_probe = false;
    if (was_probe)
        m->is_probe_in_flight = false;
    m->stats.in_flight--;
    m->stats.requests++;
    bd_hist_observe(&m->stats.request_seconds, (double)(t_end - sub->t_start) / 1e9);
    call->requests++;
    call->t_last = t_end;

    if (result == CURLE_OK && http >= 200 && http < 300) {
        sub_on_ok(m, sub, x, now);
    } else if (result == CURLE_OK && http == 429) {
        sub_on_429(m, sub, x, now);
    } else if (result == CURLE_OK && (http >= 500 || http == 408)) {
        bool is_timeout = http == 408;
        bd__model_wire_error_text(x->resp.data, x->resp.len, text, sizeof(text));
        m->stats.errors[is_timeout ? BD_MODEL_ERR_TIMEOUT : BD_MODEL_ERR_PROCESSING]++;
        breaker_on_failure(m, was_probe, now);
        call_finish(call, is_timeout ? BD_EMODELTIMEOUT : BD_EMODEL, true,
                    "model %s answered HTTP %ld: %s", m->cfg->name, http, text);
    } else if (result == CURLE_OK) {
        /* Other 4xx (and stray 1xx/3xx): the request itself is wrong for this server (bad
         * key, unknown model, too many inputs); sending it again cannot help. */
        bd__model_wire_error_text(x->resp.data, x->resp.len, text, sizeof(text));
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        breaker_on_success(m);
        call_finish(call, BD_EFATAL, false, "model %s answered HTTP %ld: %s", m->cfg->name,
                    http, text);
    } else if (result == CURLE_OPERATION_TIMEDOUT) {
        m->stats.errors[BD_MODEL_ERR_TIMEOUT]++;
        breaker_on_failure(m, was_probe, now);
        rate_on_congestion(m, now, false);
        call_finish(call, BD_EMODELTIMEOUT, true, "model %s did not answer within %.3g s",
                    m->cfg->name, m->timeout_s);
    } else if (x->is_too_large) {
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        breaker_on_success(m);
        call_finish(call, BD_EMODELBAD, true, "model %s answer is larger than %zu bytes",
                    m->cfg->name, x->resp_cap);
    } else if (x->is_nomem) {
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        call_finish(call, BD_EMODEL, true, "out of memory reading the model's answer");
    } else {
        m->stats.errors[BD_MODEL_ERR_CONNECTION]++;
        breaker_on_failure(m, was_probe, now);
        call_finish(call, BD_EMODELCONN, true, "model %s at %s: %s", m->cfg->name, m->url,
                    x->errbuf[0] ? x->errbuf : curl_easy_strerror(result));
    }
    xfer_put(mc, x);
    model_pump(m);
}

/* ---------------------------------------------------------------------------------------
 * Scheduling
 */

static void model_on_timer(uv_timer_t *t)
{
    model_pump(t->data);
}

static void model_arm(struct model *m, double delay_s)
{
    uint64_t ms = (uint64_t)ceil(delay_s * 1000.0);

    uv_timer_start(&m->timer, model_on_timer, ms ? ms : 1, 0);
}

/* Send waiting requests while the model has a free slot, the breaker lets them through,
 * no Retry-After is pending and the bucket has a token; otherwise arm the timer for the
 * moment one of those changes (slots free up in sub_on_done, which pumps again). Re-entrant
 * calls (a failure inside finishing another call) just ask the running pump to loop. */
static void model_pump(struct model *m)
{
    if (m->mc->is_closing)
        return;
    if (m->is_pumping) {
        m->is_pump_again = true;
        return;
    }
    m->is_pumping = true;
    do {
        m->is_pump_again = false;
        while (!link_is_empty(&m->waiting) && m->stats.in_flight < m->concurrency) {
            struct model_sub *sub = MODEL_OF(m->waiting.next, struct model_sub, link);
            double now = model_now();
            double wait = 0.0;
            bool is_probe = false;

            if (m->breaker == BREAKER_OPEN && now < m->open_until) {
                /* Refused without a request, but still a failure of this model as the
                 * batch sees it: count it, or error statistics would undercount. */
                m->stats.errors[BD_MODEL_ERR_CONNECTION]++;
                call_finish(sub->call, BD_EMODELCONN, true,
                            "circuit open for model %s after %u failed requests; "
                            "next try in %.1f s", m->cfg->name, m->consecutive_failures,
                            m->open_until - now);
                continue;
            }
            if (m->breaker == BREAKER_OPEN)
                breaker_set(m, BREAKER_HALF_OPEN);
            if (m->breaker == BREAKER_HALF_OPEN) {
                if (m->is_probe_in_flight)
                    break;                  /* the others wait for the probe's answer */
                is_probe = true;
            }
            if (now < m->blocked_until) {
                model_arm(m, m->blocked_until - now);
                break;
            }
            if (!rate_take(m, now, &wait)) {
                model_arm(m, wait);
                break;
            }
            link_remove(&sub->link);
            sub->state = SUB_NEW;
            sub_start(m, sub, now);
            if (is_probe && sub->state == SUB_IN_FLIGHT) {
                sub->is_probe = true;
                m->is_probe_in_flight = true;
            }
        }
    } while (m->is_pump_again);
    m->is_pumping = false;
}

/* ---------------------------------------------------------------------------------------
 * curl multi glue: one uv_poll per socket, one uv_timer
 */

static void client_on_handle_closed(struct bd_model_client *mc);

static void model_check_info(struct bd_model_client *mc)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(mc->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        /* msg dies at the next curl call: copy what is needed. */
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        struct model_xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        if (x != NULL && x->sub != NULL)
            sub_on_done(x->sub, result);
        else
            curl_multi_remove_handle(mc->multi, easy);   /* not ours to finish; drop it */
    }
}

static void sock_on_close(uv_handle_t *h)
{
    struct model_sock *s = h->data;
    struct bd_model_client *mc = s->mc;

    free(s);
    client_on_handle_closed(mc);
}

static void sock_close(struct bd_model_client *mc, struct model_sock *s)
{
    link_remove(&s->link);
    mc->pending_closes++;
    uv_close((uv_handle_t *)&s->poll, sock_on_close);
}

static void sock_on_poll(uv_poll_t *h, int status, int events)
{
    struct model_sock *s = h->data;
    struct bd_model_client *mc = s->mc;
    int flags = 0;
    int running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    /* s may be closed during the action (CURL_POLL_REMOVE); only mc is used after. */
    curl_multi_socket_action(mc->multi, s->fd, flags, &running);
    model_check_info(mc);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching fd. Must not call back into
 * curl beyond curl_multi_assign. */
static int model_on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                                void *socketp)
{
    struct bd_model_client *mc = userp;
    struct model_sock *s = socketp;
    int events = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL)
            sock_close(mc, s);             /* curl drops its entry (and socketp) itself */
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        if (uv_poll_init_socket(mc->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->mc = mc;
        s->poll.data = s;
        link_insert_tail(&mc->socks, &s->link);
        curl_multi_assign(mc->multi, fd, s);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, sock_on_poll);
    return 0;
}

static void model_on_curl_timeout(uv_timer_t *t)
{
    struct bd_model_client *mc = t->data;
    int running;

    curl_multi_socket_action(mc->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    model_check_info(mc);
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer; 0 means "as soon as possible", which must
 * still be a later loop turn (curl may not be re-entered from here). */
static int model_on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct bd_model_client *mc = userp;

    (void)multi;
    if (mc->is_torn_down)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&mc->curl_timer);
    else
        uv_timer_start(&mc->curl_timer, model_on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
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
        call_finish(call, BD_OK, false, "%s", "");
        return;
    }
    link_remove(&call->hash_link);
    link_insert_tail(&mc->hashing, &call->hash_link);
}

static void client_teardown(struct bd_model_client *mc);

static void model_on_idle(uv_idle_t *h)
{
    struct bd_model_client *mc = h->data;
    struct model_link batch;

    if (!link_is_empty(&mc->hashing))
        hashing_slice(mc);
    /* Deliver what finished so far; calls finishing inside these callbacks wait for the
     * next turn, so one busy caller cannot starve the loop. */
    link_move(&mc->done, &batch);
    while (!link_is_empty(&batch)) {
        struct bd_model_call *call = MODEL_OF(batch.next, struct bd_model_call, link);
        link_remove(&call->link);
        call_deliver(call);
    }
    if (link_is_empty(&mc->hashing) && link_is_empty(&mc->done)) {
        uv_idle_stop(h);
        if (mc->is_closing && !mc->is_torn_down && link_is_empty(&mc->calls))
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
                   const struct bd_embed_input *inputs, unsigned count, bd_model_embed_cb cb,
                   void *arg, struct bd_model_call **call_out)
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
            call_free(call);
            return BD_ENOMEM;
        }
    }
    call->mc = mc;
    call->m = m;
    call->inputs = inputs;
    call->count = count;
    call->cb = cb;
    call->arg = arg;
    call->subs_count = call_plan(m, inputs, count, call);
    call->subs_left = call->subs_count;
    call->state = CALL_RUNNING;
    link_init(&call->hash_link);
    link_insert_tail(&mc->calls, &call->link);
    if (call_out != NULL)
        *call_out = call;

    if (m->cfg->provider == BD_PROVIDER_HASHING && count > 0) {
        link_insert_tail(&mc->hashing, &call->hash_link);
        uv_idle_start(&mc->idle, model_on_idle);
        return BD_OK;
    }
    if (call->subs_count == 0) {                   /* nothing to send: every input refused */
        call_finish(call, BD_OK, false, "%s", "");
        return BD_OK;
    }
    for (unsigned i = 0; i < call->subs_count; i++) {
        call->subs[i].state = SUB_WAITING;
        link_insert_tail(&m->waiting, &call->subs[i].link);
    }
    model_pump(m);
    return BD_OK;
}

void bd_model_abort(struct bd_model_call *call)
{
    if (call == NULL)
        return;
    if (call->state == CALL_RUNNING) {
        call_finish(call, BD_ECANCELED, false, "model request aborted");
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

/* ---------------------------------------------------------------------------------------
 * Life cycle
 */

static void model_fini(struct model *m)
{
    free(m->url);
    curl_slist_free_all(m->headers);
    m->url = NULL;
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
    rate_set(m, m->ceiling);
    m->tokens = m->rate > 1.0 ? m->rate : 1.0;
    link_init(&m->waiting);
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
    link_init(&mc->calls);
    link_init(&mc->done);
    link_init(&mc->hashing);
    link_init(&mc->socks);
    mc->models_count = cfg->models_count;
    mc->models = calloc(cfg->models_count ? cfg->models_count : 1, sizeof(*mc->models));
    if (mc->models == NULL)
        goto fail_models;
    for (; inited < cfg->models_count; inited++) {
        rc = model_init(mc, &mc->models[inited], &cfg->models[inited]);
        if (rc < 0)
            goto fail_model;
    }
    rc = BD_ENOMEM;
    mc->multi = curl_multi_init();
    if (mc->multi == NULL)
        goto fail_multi;
    curl_multi_setopt(mc->multi, CURLMOPT_SOCKETFUNCTION, model_on_curl_socket);
    curl_multi_setopt(mc->multi, CURLMOPT_SOCKETDATA, mc);
    curl_multi_setopt(mc->multi, CURLMOPT_TIMERFUNCTION, model_on_curl_timer);
    curl_multi_setopt(mc->multi, CURLMOPT_TIMERDATA, mc);

    uv_timer_init(loop, &mc->curl_timer);
    mc->curl_timer.data = mc;
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
    mc->pending_closes++;                     /* held until every close below is queued */
    /* Cached keep-alive connections close here; curl may report CURL_POLL_REMOVE for them,
     * and any poll it does not report is closed just after. */
    curl_multi_cleanup(mc->multi);
    mc->multi = NULL;
    while (!link_is_empty(&mc->socks))
        sock_close(mc, MODEL_OF(mc->socks.next, struct model_sock, link));
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
    mc->pending_closes += 2;
    uv_close((uv_handle_t *)&mc->curl_timer, client_on_close);
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
    while (!link_is_empty(&mc->calls))
        call_finish(MODEL_OF(mc->calls.next, struct bd_model_call, link), BD_ECANCELED, false,
                    "model client is closing");
    for (unsigned i = 0; i < mc->models_count; i++)
        uv_timer_stop(&mc->models[i].timer);
    uv_idle_start(&mc->idle, model_on_idle);
}
