/* webhook.c -- the webhook delivery worker: outbox fan-out, claims, signed POSTs, outcomes.
 *
 * Owns struct bd_webhook: a curl loop (curl_loop.h) for the POSTs, one poll timer, the
 * decoded endpoint keys, and each claimed delivery (struct wh_delivery) from its claim until
 * its outcome is recorded. Loop thread only; never blocks. Reaches PostgreSQL only through
 * pg_store.h; the tables are schema version 9's (pg_schema.c), and every statement on them
 * is in this file.
 *
 * One poll (every webhooks.poll_interval, again at once when it filled its quota) is one
 * pipelined transaction: copy new events into deliveries for the endpoints that want them,
 * then claim due deliveries (FOR UPDATE SKIP LOCKED) and push their next_attempt_at past the
 * send's timeout -- the lease: another process skips them, and if this one dies they come
 * due again. At most webhooks.concurrency deliveries are claimed and not yet recorded. A
 * transfer's outcome is one UPDATE (delivered, pending with the next attempt's time, or
 * failed). A lost answer or a crash only sends a delivery again: at least once.
 * The easy handles are made per delivery (webhooks are rare; curl's connection cache is the
 * multi's, so keep-alive still works). SPDX-License-Identifier: MIT
 */
#include "batchd/webhook.h"

#include "batchd/base64.h"
#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/curl_loop.h"
#include "batchd/error.h"
#include "batchd/hmac.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/pg_store.h"

#include <curl/curl.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WH_FANOUT_BATCH "500" /* events copied per poll at most */
#define WH_LEASE_GRACE_S 30.0 /* lease = the longest timeout plus this */
#define WH_COUNT_EVERY_S 5.0  /* the pending gauge's refresh */
#define WH_ERROR_MAX 200      /* bytes of last_error kept */
#define WH_BACKOFF_FACTOR 6.0 /* 5 s, 30 s, 3 min, 18 min, ... up to retry_max */

struct wh_endpoint {
    const struct bd_webhook_endpoint_config *cfg;
    unsigned char key[BD_WEBHOOK_KEY_MAX];
    size_t klen;
};

/* One claimed delivery: from the claim until its outcome is recorded. */
struct wh_delivery {
    struct bd_webhook *w;
    const struct wh_endpoint *ep;
    char *event_id;
    char *body;
    size_t blen;
    int attempts;      /* before this one */
    double created_at; /* the event's, unix seconds */
    CURL *easy;
    struct curl_slist *headers;
    char resp[WH_ERROR_MAX]; /* the start of the answer, for last_error */
    size_t resp_len;
    char errbuf[CURL_ERROR_SIZE];
    struct wh_delivery *prev, *next; /* w->sending while the POST runs */
};

struct bd_webhook {
    uv_loop_t *loop;
    const struct bd_config *cfg;
    struct bd_pg *pg;
    struct bd_metrics *metrics;
    struct bd_curl_loop *curl;
    uv_timer_t timer;
    struct wh_endpoint *eps;
    unsigned eps_count;
    char *names_param; /* '{"a","b"}': the endpoints' names, text[] */
    char *types_param; /* per endpoint "*" or "job.completed,...", text[] */
    char lease_param[32];
    char max_age_param[32];
    struct wh_delivery *sending;
    unsigned in_flight; /* claimed and not yet recorded */
    unsigned pg_ops;    /* statements in flight */
    uint64_t rng;
    double last_count; /* monotonic seconds of the last pending count */
    double last_prune;
    bool is_polling;
    bool is_poll_failing; /* logged once per failing streak */
    bool is_closing;
    bool is_started;
    bd_webhook_closed_cb closed_cb;
    void *closed_arg;
};

/* ---------------------------------------------------------------------------------------
 * Signing (pure)
 */

int bd_webhook_secret_decode(const char *s, unsigned char *key, size_t *klen)
{
    static const char prefix[] = "whsec_";
    size_t len;

    if (s == NULL || strncmp(s, prefix, sizeof(prefix) - 1) != 0)
        return BD_EINVAL;
    s += sizeof(prefix) - 1;
    len = strlen(s);
    if (bd_base64_decoded_max(len) > BD_WEBHOOK_KEY_MAX + 2)
        return BD_EINVAL;
    return bd_base64_decode(s, len, key, BD_WEBHOOK_KEY_MAX, klen);
}

int bd_webhook_sign(const unsigned char *key, size_t klen, const char *id, long long timestamp,
                    const char *body, size_t blen, char out[BD_WEBHOOK_SIGNATURE_LEN + 1])
{
    struct bd_hmac_sha256 h;
    unsigned char mac[32];
    char ts[24];
    int n = snprintf(ts, sizeof(ts), ".%lld.", timestamp);
    int err;

    bd_hmac_sha256_init(&h, key, klen);
    bd_hmac_sha256_update(&h, id, strlen(id));
    bd_hmac_sha256_update(&h, ts, (size_t)n);
    bd_hmac_sha256_update(&h, body, blen);
    err = bd_hmac_sha256_final(&h, mac);
    if (err < 0) {
        out[0] = '\0';
        return err;
    }
    memcpy(out, "v1,", 3);
    bd_base64_encode(mac, sizeof(mac), out + 3);
    return BD_OK;
}

/* ---------------------------------------------------------------------------------------
 * Small helpers
 */

static double wh_mono(void)
{
    return (double)uv_hrtime() / 1e9;
}

static double wh_unix_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* xorshift64*: jitter only, not security. */
static double wh_random01(struct bd_webhook *w)
{
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return (double)((w->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

/* Delay before the attempt after attempt number n (1-based) failed: retry_base * 6^(n-1),
 * capped at retry_max, times a jitter in [0.8, 1.2) so receivers that came back are not hit
 * by every pending delivery in the same second. */
static double wh_backoff(struct bd_webhook *w, int n)
{
    double d = w->cfg->webhook_retry_base_s * pow(WH_BACKOFF_FACTOR, n > 1 ? n - 1 : 0);

    if (d > w->cfg->webhook_retry_max_s)
        d = w->cfg->webhook_retry_max_s;
    return d * (0.8 + 0.4 * wh_random01(w));
}

/* Append s as an element of a PostgreSQL array literal: quoted, with \ and " escaped. */
static void wh_array_elem(struct bd_buf *b, const char *s, bool is_first)
{
    bd_buf_puts(b, is_first ? "\"" : ",\"");
    for (; *s != '\0'; s++) {
        if (*s == '"' || *s == '\\')
            bd_buf_append(b, "\\", 1);
        bd_buf_append(b, s, 1);
    }
    bd_buf_puts(b, "\"");
}

static void wh_check_closed(struct bd_webhook *w);

/* ---------------------------------------------------------------------------------------
 * Recording an outcome
 */

static void wh_delivery_free(struct wh_delivery *d)
{
    if (d->easy != NULL)
        curl_easy_cleanup(d->easy);
    curl_slist_free_all(d->headers);
    free(d->event_id);
    free(d->body);
    free(d);
}

static void wh_schedule_poll(struct bd_webhook *w, uint64_t delay_ms);

static void wh_on_recorded(int status, PGresult *res, void *arg)
{
    struct bd_webhook *w = arg;

    if (status < 0 && status != BD_ECANCELED)
        bd_log(BD_LOG_WARN, "webhook",
               "event=record_failed err=%s pg=\"%s\" note=resent_after_lease", bd_strerror(status),
               res ? PQresultErrorMessage(res) : "connection lost");
    w->pg_ops--;
    w->in_flight--;
    if (w->is_closing)
        wh_check_closed(w);
    else if (w->in_flight + 1 == w->cfg->webhook_concurrency)
        wh_schedule_poll(w, 0); /* a slot opened while the quota was full */
}

/* The UPDATE for one outcome: delivered, failed for good, or pending until next_in_s. */
static void wh_record(struct wh_delivery *d, long http_status, const char *error, bool is_ok,
                      bool is_given_up, double next_in_s)
{
    static const char sql[] =
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(),"
        " last_status = $3::int, last_error = $4,"
        " state = CASE WHEN $5::bool THEN 'delivered' WHEN $6::bool THEN 'failed'"
        " ELSE 'pending' END,"
        " delivered_at = CASE WHEN $5::bool THEN now() END,"
        " next_attempt_at = now() + make_interval(secs => $7::float8)"
        /* a late outcome (this process's lease ran out and another delivered it) never
         * turns a delivered or given-up row back */
        " WHERE event_id = $1 AND endpoint = $2 AND state = 'pending'";
    struct bd_webhook *w = d->w;
    char st[16], next[32];
    const char *values[7];
    int err;

    snprintf(st, sizeof(st), "%ld", http_status);
    snprintf(next, sizeof(next), "%.3f", next_in_s);
    values[0] = d->event_id;
    values[1] = d->ep->cfg->name;
    values[2] = http_status > 0 ? st : NULL;
    values[3] = is_ok ? NULL : error;
    values[4] = is_ok ? "true" : "false";
    values[5] = is_given_up ? "true" : "false";
    values[6] = next;
    err = bd_pg_query(w->pg, sql, 7, values, NULL, NULL, 0, wh_on_recorded, w);
    if (err < 0) {
        /* Not recorded: the lease runs out and the delivery is sent again. */
        w->in_flight--;
        bd_log(BD_LOG_WARN, "webhook", "event=record_failed err=%s note=resent_after_lease",
               bd_strerror(err));
        if (w->is_closing)
            wh_check_closed(w);
        return;
    }
    w->pg_ops++;
}

/* ---------------------------------------------------------------------------------------
 * Sending
 */

static size_t wh_on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct wh_delivery *d = userdata;
    size_t n = size * nmemb;
    size_t room = sizeof(d->resp) - 1 - d->resp_len;
    size_t take = n < room ? n : room;

    memcpy(d->resp + d->resp_len, ptr, take);
    d->resp_len += take;
    return n; /* the rest is read and dropped */
}

static void wh_unlink(struct bd_webhook *w, struct wh_delivery *d)
{
    if (d->prev != NULL)
        d->prev->next = d->next;
    else
        w->sending = d->next;
    if (d->next != NULL)
        d->next->prev = d->prev;
    d->prev = d->next = NULL;
}

/* curl_loop's done callback: classify the answer, count it, record it. */
static void wh_on_sent(CURL *easy, CURLcode result, void *arg)
{
    struct bd_webhook *w = arg;
    struct wh_delivery *d = NULL;
    long code = 0;
    char error[WH_ERROR_MAX + 64];

    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&d);
    curl_multi_remove_handle(bd_curl_loop_get_multi(w->curl), easy);
    if (d == NULL)
        return;
    wh_unlink(w, d);
    if (result == CURLE_OK)
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);

    bool is_ok = result == CURLE_OK && code >= 200 && code < 300;
    int attempt = d->attempts + 1;
    double now = wh_unix_now();
    double next = is_ok ? 0 : wh_backoff(w, attempt);
    bool is_given_up = !is_ok && (attempt >= (int)w->cfg->webhook_max_attempts ||
                                  now + next - d->created_at > w->cfg->webhook_max_age_s);

    if (result != CURLE_OK) {
        snprintf(error, sizeof(error), "%s", d->errbuf[0] ? d->errbuf : curl_easy_strerror(result));
    } else {
        /* One line of ASCII in logs and in the row: bytes of a cut or non-UTF-8 body would
         * make PostgreSQL refuse the record (and the delivery would never be given up). */
        for (size_t i = 0; i < d->resp_len; i++)
            if ((unsigned char)d->resp[i] < 0x20 || (unsigned char)d->resp[i] >= 0x7f)
                d->resp[i] = '?';
        d->resp[d->resp_len] = '\0';
        snprintf(error, sizeof(error), "HTTP %ld: %s", code,
                 d->resp_len ? d->resp : "(empty body)");
    }
    if (is_ok) {
        bd_metrics_webhook_result(w->metrics, BD_METRICS_WEBHOOK_DELIVERED, now - d->created_at);
        bd_log(BD_LOG_DEBUG, "webhook", "event=delivered id=%s endpoint=%s attempt=%d status=%ld",
               d->event_id, d->ep->cfg->name, attempt, code);
    } else if (is_given_up) {
        bd_metrics_webhook_result(w->metrics, BD_METRICS_WEBHOOK_GAVE_UP, 0);
        bd_log(BD_LOG_WARN, "webhook", "event=gave_up id=%s endpoint=%s attempts=%d error=\"%s\"",
               d->event_id, d->ep->cfg->name, attempt, error);
    } else {
        bd_metrics_webhook_result(w->metrics, BD_METRICS_WEBHOOK_FAILED_ATTEMPT, 0);
        bd_log(BD_LOG_INFO, "webhook",
               "event=attempt_failed id=%s endpoint=%s attempt=%d "
               "retry_in_s=%.1f error=\"%s\"",
               d->event_id, d->ep->cfg->name, attempt, next, error);
    }
    wh_record(d, result == CURLE_OK ? code : 0, error, is_ok, is_given_up, next);
    wh_delivery_free(d);
}

/* Set up and add the POST of d. BD_OK, or an error with nothing added. */
static int wh_send(struct bd_webhook *w, struct wh_delivery *d)
{
    char sig[BD_WEBHOOK_SIGNATURE_LEN + 1];
    char line[128 + BD_WEBHOOK_SIGNATURE_LEN];
    long long ts = (long long)time(NULL);
    long timeout_ms = (long)(d->ep->cfg->timeout_s * 1000.0);
    int err;

    err = bd_webhook_sign(d->ep->key, d->ep->klen, d->event_id, ts, d->body, d->blen, sig);
    if (err < 0)
        return err;
    const char *fixed[] = {"Content-Type: application/json", "Expect:", NULL, NULL, NULL};
    char id_line[96], ts_line[48];
    snprintf(id_line, sizeof(id_line), "webhook-id: %s", d->event_id);
    snprintf(ts_line, sizeof(ts_line), "webhook-timestamp: %lld", ts);
    snprintf(line, sizeof(line), "webhook-signature: %s", sig);
    fixed[2] = id_line;
    fixed[3] = ts_line;
    fixed[4] = line;
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        struct curl_slist *l = curl_slist_append(d->headers, fixed[i]);
        if (l == NULL)
            return BD_ENOMEM;
        d->headers = l;
    }
    d->easy = curl_easy_init();
    if (d->easy == NULL)
        return BD_ENOMEM;
    CURL *e = d->easy;
    curl_easy_setopt(e, CURLOPT_URL, d->ep->cfg->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, d);
    /* No redirects: the configured URL is the only place a delivery goes. */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, d->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "batchd-webhooks/" BATCHD_VERSION);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)d->blen);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, wh_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, d);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, d->errbuf);
    if (curl_multi_add_handle(bd_curl_loop_get_multi(w->curl), e) != CURLM_OK)
        return BD_ENOMEM;
    d->next = w->sending;
    if (w->sending != NULL)
        w->sending->prev = d;
    w->sending = d;
    return BD_OK;
}

/* ---------------------------------------------------------------------------------------
 * Polling: fan-out and claim, one pipelined transaction
 */

static const struct wh_endpoint *wh_find_endpoint(const struct bd_webhook *w, const char *name)
{
    for (unsigned i = 0; i < w->eps_count; i++)
        if (strcmp(w->eps[i].cfg->name, name) == 0)
            return &w->eps[i];
    return NULL;
}

/* Start one claimed row's POST; a row that cannot be sent is recorded as a failed attempt
 * (so it is retried with backoff, not at once). */
static void wh_start_row(struct bd_webhook *w, const PGresult *res, int r, int c_id, int c_ep,
                         int c_att, int c_body, int c_created)
{
    struct wh_delivery *d = calloc(1, sizeof(*d));
    const char *ep_name = PQgetvalue(res, r, c_ep);
    int err = BD_ENOMEM;

    w->in_flight++;
    if (d == NULL) {
        w->in_flight--; /* unrecorded: the lease brings it back */
        return;
    }
    d->w = w;
    d->ep = wh_find_endpoint(w, ep_name);
    d->attempts = atoi(PQgetvalue(res, r, c_att));
    d->created_at = strtod(PQgetvalue(res, r, c_created), NULL);
    d->event_id = strdup(PQgetvalue(res, r, c_id));
    d->blen = (size_t)PQgetlength(res, r, c_body);
    d->body = malloc(d->blen + 1);
    if (d->event_id != NULL && d->body != NULL && d->ep != NULL) {
        memcpy(d->body, PQgetvalue(res, r, c_body), d->blen + 1);
        err = wh_send(w, d);
    }
    if (err == BD_OK)
        return;
    if (d->ep == NULL || d->event_id == NULL) { /* claimed by name from our own list */
        w->in_flight--;
        wh_delivery_free(d);
        return;
    }
    bd_log(BD_LOG_WARN, "webhook", "event=send_failed id=%s endpoint=%s err=%s", d->event_id,
           d->ep->cfg->name, bd_strerror(err));
    wh_record(d, 0, bd_strerror(err), false, false, wh_backoff(w, d->attempts + 1));
    wh_delivery_free(d);
}

static void wh_on_polled(int status, PGresult *res, void *arg)
{
    struct bd_webhook *w = arg;
    int rows = 0;

    w->pg_ops--;
    w->is_polling = false;
    if (status == BD_OK && !w->is_closing) {
        int c_id = PQfnumber(res, "event_id"), c_ep = PQfnumber(res, "endpoint");
        int c_att = PQfnumber(res, "attempts"), c_body = PQfnumber(res, "body");
        int c_created = PQfnumber(res, "created_at");
        rows = PQntuples(res);
        if (w->is_poll_failing)
            bd_log(BD_LOG_INFO, "webhook", "event=poll_recovered");
        w->is_poll_failing = false;
        for (int r = 0; r < rows; r++)
            wh_start_row(w, res, r, c_id, c_ep, c_att, c_body, c_created);
    } else if (status < 0 && status != BD_ECANCELED && !w->is_poll_failing) {
        /* Before the migration to version 9 ran (at start) this fails; said once per streak. */
        w->is_poll_failing = true;
        bd_log(BD_LOG_WARN, "webhook", "event=poll_failed err=%s pg=\"%s\"", bd_strerror(status),
               res ? PQresultErrorMessage(res) : "connection lost");
    }
    if (w->is_closing) {
        wh_check_closed(w);
        return;
    }
    /* A full quota means more may be due: look again on the next turn. */
    if (rows > 0 && w->in_flight < w->cfg->webhook_concurrency)
        wh_schedule_poll(w, 0);
}

/* One poll in flight: the leased connection and the claim's limit. */
struct wh_poll_ctx {
    struct bd_webhook *w;
    struct bd_pg_conn *conn;
    char limit[16];
};

/* Fan-out: new events (oldest first, skipping those another process is copying) get one
 * delivery per endpoint whose filter wants the type; events older than max_age get none
 * (webhooks turned on later do not replay a week). Claim: due deliveries of our endpoints,
 * their lease taken by moving next_attempt_at. */
static const char wh_fanout_sql[] =
    "WITH ev AS (SELECT id, type, created_at FROM webhook_events WHERE dispatched_at IS NULL"
    "   ORDER BY seq LIMIT " WH_FANOUT_BATCH " FOR UPDATE SKIP LOCKED),"
    " ins AS (INSERT INTO webhook_deliveries (event_id, endpoint)"
    "   SELECT ev.id, e.name FROM ev, unnest($1::text[], $2::text[]) AS e(name, types)"
    "   WHERE ev.created_at > now() - make_interval(secs => $3::float8)"
    "     AND (e.types = '*' OR ev.type = ANY (string_to_array(e.types, ',')))"
    "   ON CONFLICT DO NOTHING)"
    " UPDATE webhook_events w SET dispatched_at = now() FROM ev WHERE w.id = ev.id";
static const char wh_claim_sql[] =
    "WITH c AS (SELECT event_id, endpoint FROM webhook_deliveries"
    "   WHERE state = 'pending' AND next_attempt_at <= now() AND endpoint = ANY ($1::text[])"
    "   ORDER BY next_attempt_at LIMIT $2::int FOR UPDATE SKIP LOCKED)"
    " UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $3::float8)"
    " FROM c, webhook_events e"
    " WHERE d.event_id = c.event_id AND d.endpoint = c.endpoint AND e.id = d.event_id"
    " RETURNING d.event_id, d.endpoint, d.attempts, e.body,"
    "   extract(epoch FROM e.created_at)::float8 AS created_at";

static void wh_on_poll_done(int status, PGresult *res, void *arg)
{
    struct wh_poll_ctx *ctx = arg;
    struct bd_webhook *w = ctx->w;

    bd_pg_release(ctx->conn);
    free(ctx);
    wh_on_polled(status, res, w);
}

static void wh_on_poll_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct wh_poll_ctx *ctx = arg;
    struct bd_webhook *w = ctx->w;
    const char *const fan_params[] = {w->names_param, w->types_param, w->max_age_param};
    const char *const claim_params[] = {w->names_param, ctx->limit, w->lease_param};
    const char *const sqls[] = {wh_fanout_sql, wh_claim_sql};
    const int nparams[] = {3, 3};
    const char *const *const params[] = {fan_params, claim_params};

    if (status < 0) {
        free(ctx);
        wh_on_polled(status, NULL, w);
        return;
    }
    ctx->conn = conn;
    if (w->is_closing) {
        bd_pg_release(conn);
        free(ctx);
        wh_on_polled(BD_ECANCELED, NULL, w);
        return;
    }
    status = bd_pg_conn_pipeline(conn, 2, sqls, nparams, params, wh_on_poll_done, ctx);
    if (status < 0) {
        bd_pg_release(conn);
        free(ctx);
        wh_on_polled(status, NULL, w);
    }
}

static void wh_poll(struct bd_webhook *w)
{
    struct wh_poll_ctx *ctx;

    if (w->is_polling || w->eps_count == 0 || w->in_flight >= w->cfg->webhook_concurrency)
        return;
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return; /* the next tick tries again */
    ctx->w = w;
    snprintf(ctx->limit, sizeof(ctx->limit), "%u", w->cfg->webhook_concurrency - w->in_flight);
    if (bd_pg_acquire(w->pg, wh_on_poll_conn, ctx) < 0) {
        free(ctx);
        return;
    }
    w->is_polling = true;
    w->pg_ops++;
}

/* ---------------------------------------------------------------------------------------
 * The pending gauge and the retention sweep
 */

static void wh_on_counted(int status, PGresult *res, void *arg)
{
    struct bd_webhook *w = arg;

    w->pg_ops--;
    if (status == BD_OK && PQntuples(res) == 1)
        bd_metrics_webhook_set_pending(w->metrics, strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    if (w->is_closing)
        wh_check_closed(w);
}

static void wh_on_pruned(int status, PGresult *res, void *arg)
{
    struct bd_webhook *w = arg;

    w->pg_ops--;
    if (status == BD_OK && atol(PQcmdTuples(res)) > 0)
        bd_log(BD_LOG_INFO, "webhook", "event=pruned events=%s", PQcmdTuples(res));
    else if (status < 0 && status != BD_ECANCELED)
        bd_log(BD_LOG_DEBUG, "webhook", "event=prune_failed err=%s", bd_strerror(status));
    if (w->is_closing)
        wh_check_closed(w);
}

static void wh_housekeep(struct bd_webhook *w)
{
    double now = wh_mono();
    char secs[32];
    const char *values[1] = {secs};

    if (w->metrics != NULL && w->eps_count > 0 && now - w->last_count >= WH_COUNT_EVERY_S) {
        w->last_count = now;
        if (bd_pg_query(w->pg, "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'", 0,
                        NULL, NULL, NULL, 0, wh_on_counted, w) == BD_OK)
            w->pg_ops++;
    }
    /* Deliveries go with their event (ON DELETE CASCADE). */
    if (w->last_prune == 0 || now - w->last_prune >= w->cfg->cleanup_interval_s) {
        w->last_prune = now;
        snprintf(secs, sizeof(secs), "%.0f", w->cfg->webhook_retention_s);
        if (bd_pg_query(w->pg,
                        "DELETE FROM webhook_events"
                        " WHERE created_at < now() - make_interval(secs => $1::float8)",
                        1, values, NULL, NULL, 0, wh_on_pruned, w) == BD_OK)
            w->pg_ops++;
    }
}

static void wh_on_timer(uv_timer_t *t)
{
    struct bd_webhook *w = t->data;

    wh_housekeep(w);
    wh_poll(w);
}

static void wh_schedule_poll(struct bd_webhook *w, uint64_t delay_ms)
{
    uint64_t every = (uint64_t)(w->cfg->webhook_poll_interval_s * 1000.0);

    if (!w->is_closing && w->is_started)
        uv_timer_start(&w->timer, wh_on_timer, delay_ms, every > 0 ? every : 1);
}

/* ---------------------------------------------------------------------------------------
 * Life cycle
 */

static int wh_build_params(struct bd_webhook *w)
{
    struct bd_buf names, types;
    double lease = 0;
    int err = BD_OK;

    bd_buf_init(&names);
    bd_buf_init(&types);
    bd_buf_puts(&names, "{");
    bd_buf_puts(&types, "{");
    for (unsigned i = 0; i < w->eps_count; i++) {
        const struct bd_webhook_endpoint_config *ec = w->eps[i].cfg;
        wh_array_elem(&names, ec->name, i == 0);
        bd_buf_puts(&types, i == 0 ? "\"" : ",\"");
        if (ec->events_count == 0)
            bd_buf_puts(&types, "*");
        for (unsigned k = 0; k < ec->events_count; k++) {
            bd_buf_puts(&types, k == 0 ? "" : ",");
            bd_buf_puts(&types, ec->events[k]); /* checked names: no quoting needed */
        }
        bd_buf_puts(&types, "\"");
        if (ec->timeout_s > lease)
            lease = ec->timeout_s;
    }
    bd_buf_puts(&names, "}");
    bd_buf_puts(&types, "}");
    if (names.is_failed || types.is_failed ||
        (w->names_param = strndup(names.data, names.len)) == NULL ||
        (w->types_param = strndup(types.data, types.len)) == NULL)
        err = BD_ENOMEM;
    bd_buf_free(&names);
    bd_buf_free(&types);
    snprintf(w->lease_param, sizeof(w->lease_param), "%.3f", lease + WH_LEASE_GRACE_S);
    snprintf(w->max_age_param, sizeof(w->max_age_param), "%.3f", w->cfg->webhook_max_age_s);
    return err;
}

static void wh_free(struct bd_webhook *w)
{
    for (unsigned i = 0; i < w->eps_count; i++)
        memset(w->eps[i].key, 0, sizeof(w->eps[i].key));
    free(w->eps);
    free(w->names_param);
    free(w->types_param);
    free(w);
}

struct bd_webhook *bd_webhook_new(const struct bd_webhook_deps *deps, int *err)
{
    const struct bd_config *cfg = deps->cfg;
    struct bd_webhook *w = calloc(1, sizeof(*w));
    int rc = BD_ENOMEM;

    if (w == NULL)
        goto fail;
    w->loop = deps->loop;
    w->cfg = cfg;
    w->pg = deps->pg;
    w->metrics = deps->metrics;
    w->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
    w->eps_count = cfg->webhook_endpoints_count;
    w->eps = calloc(w->eps_count ? w->eps_count : 1, sizeof(*w->eps));
    if (w->eps == NULL)
        goto fail_free;
    for (unsigned i = 0; i < w->eps_count; i++) {
        w->eps[i].cfg = &cfg->webhook_endpoints[i];
        if (bd_webhook_secret_decode(w->eps[i].cfg->secret, w->eps[i].key, &w->eps[i].klen) < 0) {
            rc = BD_EINVAL;
            goto fail_free;
        }
    }
    rc = wh_build_params(w);
    if (rc < 0)
        goto fail_free;
    w->curl = bd_curl_loop_new(w->loop, wh_on_sent, w, &rc);
    if (w->curl == NULL)
        goto fail_free;
    uv_timer_init(w->loop, &w->timer);
    w->timer.data = w;
    return w;

fail_free:
    wh_free(w);
fail:
    if (err != NULL)
        *err = rc;
    return NULL;
}

void bd_webhook_start(struct bd_webhook *w)
{
    w->is_started = true;
    bd_log(BD_LOG_INFO, "webhook", "event=started endpoints=%u concurrency=%u poll_s=%.3f",
           w->eps_count, w->cfg->webhook_concurrency, w->cfg->webhook_poll_interval_s);
    wh_schedule_poll(w, (uint64_t)(w->cfg->webhook_poll_interval_s * 1000.0));
}

static void wh_on_curl_closed(void *arg)
{
    struct bd_webhook *w = arg;
    bd_webhook_closed_cb cb = w->closed_cb;
    void *cb_arg = w->closed_arg;

    wh_free(w);
    if (cb != NULL)
        cb(cb_arg);
}

static void wh_on_timer_closed(uv_handle_t *h)
{
    struct bd_webhook *w = h->data;

    bd_curl_loop_close(w->curl, wh_on_curl_closed, w);
}

/* Once no statement is in flight: close the timer, then the curl loop, then free. */
static void wh_check_closed(struct bd_webhook *w)
{
    if (w->pg_ops > 0 || uv_is_closing((uv_handle_t *)&w->timer))
        return;
    uv_close((uv_handle_t *)&w->timer, wh_on_timer_closed);
}

void bd_webhook_close(struct bd_webhook *w, bd_webhook_closed_cb cb, void *arg)
{
    CURLM *multi = bd_curl_loop_get_multi(w->curl);

    w->is_closing = true;
    w->closed_cb = cb;
    w->closed_arg = arg;
    uv_timer_stop(&w->timer);
    /* Abandoned sends are not recorded: their lease runs out and they are sent again. */
    while (w->sending != NULL) {
        struct wh_delivery *d = w->sending;
        wh_unlink(w, d);
        curl_multi_remove_handle(multi, d->easy);
        w->in_flight--;
        wh_delivery_free(d);
    }
    wh_check_closed(w);
}
