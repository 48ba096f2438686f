/* model_request.c -- one model's requests: building them, the per-model FIFO under a
 * concurrency cap, the adaptive rate limit, 429 back-off, the circuit breaker, and finishing
 * a call when its last request is answered.
 *
 * Works on the structs of model_internal.h; owns no handle of its own (the per-model timer
 * is model_client.c's). Hands each request to curl with curl_multi_add_handle and hears
 * back through bd__model_sub_on_done(). Loop thread only; never blocks; never calls a user
 * callback (finished calls are queued for the idle handle in model_client.c).
 * SPDX-License-Identifier: MIT
 */
#include "model_internal.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ---------------------------------------------------------------------------------------
 * Rate limit and circuit breaker
 */

void bd__model_rate_set(struct model *m, double rate)
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
        bd__model_rate_set(m, 0.0);
        return;
    }
    double rate = m->rate + (now - m->last_adjust) * MODEL_RATE_STEP_RPS;
    if (m->ceiling > 0.0 && rate > m->ceiling)
        rate = m->ceiling;
    m->last_adjust = now;
    bd__model_rate_set(m, rate);
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
    bd__model_rate_set(m, rate);
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

/* in_flight goes up or down by one; the time since its last change is counted as that many
 * busy slots (bd_model_stats.busy_ns). */
static void model_count_in_flight(struct model *m, int delta)
{
    uint64_t now = uv_hrtime();

    if (m->stats.busy_at_ns != 0)
        m->stats.busy_ns += (uint64_t)m->stats.in_flight * (now - m->stats.busy_at_ns);
    m->stats.busy_at_ns = now;
    m->stats.in_flight = delta > 0 ? m->stats.in_flight + 1 : m->stats.in_flight - 1;
}

/* Take sub out of whatever it waits in; an in-flight transfer is removed from curl at once,
 * which closes its connection (the server sees the client go). */
static void sub_cancel(struct model_sub *sub)
{
    struct model *m = sub->call->m;

    if (sub->state == SUB_WAITING) {
        model_link_remove(&sub->link);
    } else if (sub->state == SUB_IN_FLIGHT) {
        curl_multi_remove_handle(m->mc->multi, sub->xfer->easy);
        bd__model_xfer_put(m->mc, sub->xfer);
        sub->xfer = NULL;
        model_count_in_flight(m, -1);
        if (sub->is_probe)
            m->is_probe_in_flight = false;
        sub->is_probe = false;
    }
    sub->state = SUB_DONE;
}

/* Finish call with status (first outcome wins): cancel its other requests and queue it for
 * delivery from the idle handle. */
void bd__model_call_finish(struct bd_model_call *call, int status, bool is_retryable,
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
    model_link_remove(&call->hash_link);
    model_link_remove(&call->link);
    model_link_insert_tail(&mc->done, &call->link);
    uv_idle_start(&mc->idle, bd__model_on_idle);
    if (had_in_flight)
        bd__model_pump(call->m);
}

void bd__model_call_free(struct bd_model_call *call)
{
    free(call->vectors);
    free(call->item_status);
    free(call);
}

/* Run call's callback, then free it. The call is out of every list. */
void bd__model_call_deliver(struct bd_model_call *call)
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
    bd__model_call_free(call);
}

/* ---------------------------------------------------------------------------------------
 * HTTP requests
 */

/* curl's socket(), so that running out of descriptors is told apart from a model that
 * cannot be reached: the first is this process's state and must not spend the items'
 * attempts nor open the model's circuit. */
static curl_socket_t model_open_socket(void *clientp, curlsocktype purpose,
                                       struct curl_sockaddr *address)
{
    struct model_xfer *x = clientp;
    curl_socket_t fd;

    (void)purpose;
    fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    if (fd == CURL_SOCKET_BAD && (errno == EMFILE || errno == ENFILE))
        x->is_no_fd = true;
    return fd;
}

/* Build sub's body and hand it to curl. On failure the call is finished. */
static void sub_start(struct model *m, struct model_sub *sub, double now)
{
    struct bd_model_client *mc = m->mc;
    struct bd_model_call *call = sub->call;
    struct model_xfer *x = bd__model_xfer_get(mc);
    bool is_first = true;
    CURLMcode mrc;

    if (x == NULL) {
        bd__model_call_finish(call, BD_EMODEL, true, "out of memory starting a model request");
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
        bd__model_xfer_put(mc, x);
        bd__model_call_finish(call, BD_EMODEL, true, "out of memory building a model request");
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
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, bd__model_xfer_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, model_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);

    mrc = curl_multi_add_handle(mc->multi, e);
    if (mrc != CURLM_OK) {
        bd__model_xfer_put(mc, x);
        bd__model_call_finish(call, BD_EMODELCONN, true, "cannot start a model request: %s",
                              curl_multi_strerror(mrc));
        return;
    }
    sub->xfer = x;
    sub->state = SUB_IN_FLIGHT;
    sub->t_start = uv_hrtime();
    if (call->t_first == 0)
        call->t_first = sub->t_start;
    model_count_in_flight(m, +1);
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
        bd__model_call_finish(call, BD_EMODEL, true, "out of memory parsing the model's answer");
        return;
    }
    rc = bd__model_wire_parse(m->cfg->provider, x->resp.data, x->resp.len, sub->n_sent, m->dim,
                              rows, msg, sizeof(msg));
    if (rc == BD_ENOMEM) {
        bd__model_call_finish(call, BD_EMODEL, true, "out of memory parsing the model's answer");
        return;
    }
    if (rc < 0) {
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        bd__model_call_finish(call, BD_EMODELBAD, true, "%s", msg);
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
        bd__model_call_finish(call, BD_OK, false, "%s", "");
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
        bd__model_call_finish(
            call, BD_EMODELRATE, true,
            "model %s answered 429 Too Many Requests %u times to the same request", m->cfg->name,
            sub->n429);
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
    model_link_insert_head(&m->waiting, &sub->link);
}

/* No descriptor for the request: wait MODEL_NO_FD_WAIT_S (the whole model: every request
 * would fail alike) and send it again, as for a 429, without counting it against the
 * model or the items. */
#define MODEL_NO_FD_WAIT_S 1.0

static void sub_on_no_fd(struct model *m, struct model_sub *sub, double now)
{
    bd_log(BD_LOG_WARN, "model", "model=%s event=no_descriptors action=retry_in_s=%.0f "
           "note=raise_LimitNOFILE", m->cfg->name, MODEL_NO_FD_WAIT_S);
    if (now + MODEL_NO_FD_WAIT_S > m->blocked_until)
        m->blocked_until = now + MODEL_NO_FD_WAIT_S;
    sub->state = SUB_WAITING;
    model_link_insert_head(&m->waiting, &sub->link);
}

/* curl finished sub's transfer with result: classify, count, and act. */
void bd__model_sub_on_done(struct model_sub *sub, CURLcode result)
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
    model_count_in_flight(m, -1);
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
        bd__model_call_finish(call, is_timeout ? BD_EMODELTIMEOUT : BD_EMODEL, true,
                              "model %s answered HTTP %ld: %s", m->cfg->name, http, text);
    } else if (result == CURLE_OK) {
        /* Other 4xx (and stray 1xx/3xx): the request itself is wrong for this server (bad
         * key, unknown model, too many inputs); sending it again cannot help. */
        bd__model_wire_error_text(x->resp.data, x->resp.len, text, sizeof(text));
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        breaker_on_success(m);
        bd__model_call_finish(call, BD_EFATAL, false, "model %s answered HTTP %ld: %s",
                              m->cfg->name, http, text);
    } else if (result == CURLE_OPERATION_TIMEDOUT) {
        m->stats.errors[BD_MODEL_ERR_TIMEOUT]++;
        breaker_on_failure(m, was_probe, now);
        rate_on_congestion(m, now, false);
        bd__model_call_finish(call, BD_EMODELTIMEOUT, true, "model %s did not answer within %.3g s",
                              m->cfg->name, m->timeout_s);
    } else if (x->is_too_large) {
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        breaker_on_success(m);
        bd__model_call_finish(call, BD_EMODELBAD, true, "model %s answer is larger than %zu bytes",
                              m->cfg->name, x->resp_cap);
    } else if (x->is_nomem) {
        m->stats.errors[BD_MODEL_ERR_PROCESSING]++;
        bd__model_call_finish(call, BD_EMODEL, true, "out of memory reading the model's answer");
    } else if (x->is_no_fd) {
        sub_on_no_fd(m, sub, now);
    } else {
        m->stats.errors[BD_MODEL_ERR_CONNECTION]++;
        breaker_on_failure(m, was_probe, now);
        bd__model_call_finish(call, BD_EMODELCONN, true, "model %s at %s: %s", m->cfg->name,
                              m->url_shown,
                              x->errbuf[0] ? x->errbuf : curl_easy_strerror(result));
    }
    bd__model_xfer_put(mc, x);
    bd__model_pump(m);
}

/* ---------------------------------------------------------------------------------------
 * Scheduling
 */

static void model_on_timer(uv_timer_t *t)
{
    bd__model_pump(t->data);
}

static void model_arm(struct model *m, double delay_s)
{
    uint64_t ms = (uint64_t)ceil(delay_s * 1000.0);

    uv_timer_start(&m->timer, model_on_timer, ms ? ms : 1, 0);
}

/* Dispatch order: a before b? */
static bool model_goes_before(const struct bd_model_call *a, const struct bd_model_call *b)
{
    if (a->order.priority != b->order.priority)
        return a->order.priority < b->order.priority;
    if (a->order.rank != b->order.rank)
        return a->order.rank < b->order.rank;
    return a->seq < b->seq;
}

/* From the tail: a new call usually goes last or near it. A request sent back by a 429
 * goes to the head instead (it waits out the model's Retry-After first). */
void bd__model_enqueue(struct model *m, struct model_sub *sub)
{
    struct model_link *at = m->waiting.prev;
    while (at != &m->waiting &&
           model_goes_before(sub->call, MODEL_OF(at, struct model_sub, link)->call))
        at = at->prev;
    sub->link.prev = at;
    sub->link.next = at->next;
    at->next->prev = &sub->link;
    at->next = &sub->link;
}

/* Send waiting requests while the model has a free slot, the breaker lets them through,
 * no Retry-After is pending and the bucket has a token; otherwise arm the timer for the
 * moment one of those changes (slots free up in bd__model_sub_on_done, which pumps
 * again). Re-entrant calls (a failure inside finishing another call) just ask the running
 * pump to loop. */
void bd__model_pump(struct model *m)
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
        while (!model_link_is_empty(&m->waiting) && m->stats.in_flight < m->concurrency) {
            struct model_sub *sub = MODEL_OF(m->waiting.next, struct model_sub, link);
            double now = model_now();
            double wait = 0.0;
            bool is_probe = false;

            if (m->breaker == BREAKER_OPEN && now < m->open_until) {
                /* Refused without a request, but still a failure of this model as the
                 * batch sees it: count it, or error statistics would undercount. */
                m->stats.errors[BD_MODEL_ERR_CONNECTION]++;
                bd__model_call_finish(sub->call, BD_EMODELCONN, true,
                                      "circuit open for model %s after %u failed requests; "
                                      "next try in %.1f s",
                                      m->cfg->name, m->consecutive_failures, m->open_until - now);
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
            model_link_remove(&sub->link);
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
