/* it_webhooks.c -- signed webhooks end to end: batchd's outbox triggers and delivery worker
 * against a receiver in this process (a thread with a plain socket) that checks every
 * signature with its own HMAC (OpenSSL's, not batchd's), and against the official openai
 * SDK's client.webhooks.unwrap() (test/openai/webhooks.mjs).
 *
 * PostgreSQL: a schema of its own (batchd migrates it at start), so no other suite's events
 * reach the receiver; Redis: a database of its own (BD_IT_WEBHOOKS_REDIS_DB, default 18).
 * Each case starts the batchd processes it needs with its webhooks section.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bd_it.h"
#include "batchd/buf.h"

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define RX_MAX 512

static struct bd_it_scratch g_scr;   /* own schema and Redis db */

/* ---- the receiver ---------------------------------------------------------------------- */

struct rx_req {
    char path[64];
    char id[128];  /* webhook-id */
    char ts[32];   /* webhook-timestamp */
    char sig[256]; /* webhook-signature */
    char *body;
    double at;    /* bd_it_now() when it arrived */
    int answered; /* the status we sent */
    bool is_sig_ok;
};

static struct {
    pthread_t thread;
    pthread_mutex_t mu;
    int fd;
    int port;
    volatile bool is_stopping;
    struct rx_req reqs[RX_MAX];
    unsigned count;
    int fail_next; /* answer 500 to this many more requests (-1: all) */
} rx = {.mu = PTHREAD_MUTEX_INITIALIZER, .fd = -1};

/* Standard Webhooks' signature computed here with OpenSSL: base64(HMAC-SHA256(key,
 * "id.ts.body")) where key is the base64 after "whsec_". */
static bool rx_verify(const char *id, const char *ts, const char *body, const char *sig)
{
    const char *b64 = &SECRET[strlen("whsec_")];
    unsigned char key[64], mac[32];
    unsigned int maclen = 0;
    char want[64];
    int klen = EVP_DecodeBlock(key, (const unsigned char *)b64, (int)strlen(b64));
    struct bd_buf msg;

    if (klen != 24) /* 32 characters, no padding: 24 bytes */
        return false;
    bd_buf_init(&msg);
    bd_buf_printf(&msg, "%s.%s.%s", id, ts, body);
    HMAC(EVP_sha256(), key, klen, (const unsigned char *)msg.data, msg.len, mac, &maclen);
    bd_buf_free(&msg);
    EVP_EncodeBlock((unsigned char *)want, mac, (int)maclen);
    return strncmp(sig, "v1,", 3) == 0 && strcmp(sig + 3, want) == 0;
}

static void rx_header(const char *head, const char *name, char *out, size_t outlen)
{
    size_t n = strlen(name);

    out[0] = '\0';
    for (const char *p = strstr(head, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        const char *l = p + 2;
        if (strncasecmp(l, name, n) == 0 && l[n] == ':') {
            l += n + 1;
            while (*l == ' ')
                l++;
            size_t len = strcspn(l, "\r\n");
            snprintf(out, outlen, "%.*s", (int)len, l);
            return;
        }
    }
}

/* One request per connection: read it, record it, answer, close. */
static void rx_serve(int c)
{
    char buf[65536];
    size_t len = 0;
    char *end = NULL;
    char cl[32];
    struct rx_req r = {.answered = 200};

    while (len < sizeof(buf) - 1) {
        struct pollfd pf = {.fd = c, .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0)
            return;
        ssize_t k = recv(c, buf + len, sizeof(buf) - 1 - len, 0);
        if (k <= 0)
            return;
        len += (size_t)k;
        buf[len] = '\0';
        if (end == NULL && (end = strstr(buf, "\r\n\r\n")) != NULL) {
            *end = '\0';
            rx_header(buf, "content-length", cl, sizeof(cl));
        }
        if (end != NULL && len >= (size_t)(end + 4 - buf) + (size_t)atol(cl))
            break;
    }
    if (end == NULL)
        return;
    sscanf(buf, "POST %63s", r.path);
    rx_header(buf, "webhook-id", r.id, sizeof(r.id));
    rx_header(buf, "webhook-timestamp", r.ts, sizeof(r.ts));
    rx_header(buf, "webhook-signature", r.sig, sizeof(r.sig));
    r.body = strndup(end + 4, (size_t)atol(cl));
    r.at = bd_it_now();
    r.is_sig_ok = r.body != NULL && rx_verify(r.id, r.ts, r.body, r.sig);
    pthread_mutex_lock(&rx.mu);
    if (rx.fail_next != 0) {
        r.answered = 500;
        if (rx.fail_next > 0)
            rx.fail_next--;
    }
    if (rx.count < RX_MAX)
        rx.reqs[rx.count++] = r;
    else
        free(r.body);
    pthread_mutex_unlock(&rx.mu);
    /* A failure's body is not UTF-8 (as a cut or binary error page is not): batchd must
     * still record the attempt. */
    char out[160];
    int n = snprintf(out, sizeof(out),
                     "HTTP/1.1 %d %s\r\nContent-Length: %d\r\n"
                     "Connection: close\r\n\r\n%s",
                     r.answered, r.answered == 200 ? "OK" : "Oops", r.answered == 200 ? 2 : 6,
                     r.answered == 200 ? "ok" : "\xff\xfeoops");
    (void)!send(c, out, (size_t)n, MSG_NOSIGNAL);
}

static void *rx_main(void *arg)
{
    (void)arg;
    while (!rx.is_stopping) {
        struct pollfd pf = {.fd = rx.fd, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        int c = accept(rx.fd, NULL, NULL);
        if (c < 0)
            continue;
        rx_serve(c);
        close(c);
    }
    return NULL;
}

static int rx_start(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t alen = sizeof(a);
    int one = 1;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    rx.fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(rx.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (rx.fd < 0 || bind(rx.fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(rx.fd, 64) < 0 ||
        getsockname(rx.fd, (struct sockaddr *)&a, &alen) < 0)
        return -1;
    rx.port = ntohs(a.sin_port);
    return pthread_create(&rx.thread, NULL, rx_main, NULL) == 0 ? 0 : -1;
}

static void rx_reset(int fail_next)
{
    pthread_mutex_lock(&rx.mu);
    for (unsigned i = 0; i < rx.count; i++)
        free(rx.reqs[i].body);
    rx.count = 0;
    rx.fail_next = fail_next;
    pthread_mutex_unlock(&rx.mu);
}

static void rx_set_fail(int fail_next)
{
    pthread_mutex_lock(&rx.mu);
    rx.fail_next = fail_next;
    pthread_mutex_unlock(&rx.mu);
}

/* Requests to path (NULL: any) whose body has type and data.id == subject (NULL: any). */
static unsigned rx_count(const char *path, const char *type, const char *subject, int answered)
{
    unsigned n = 0;

    pthread_mutex_lock(&rx.mu);
    for (unsigned i = 0; i < rx.count; i++) {
        const struct rx_req *r = &rx.reqs[i];
        json_t *j = json_loads(r->body ? r->body : "", 0, NULL);
        const char *t = bd_it_str(j, "type"), *s = bd_it_str(j, "data.id");
        if ((path == NULL || strcmp(r->path, path) == 0) && t != NULL &&
            (type == NULL || strcmp(t, type) == 0) &&
            (subject == NULL || (s != NULL && strcmp(s, subject) == 0)) &&
            (answered == 0 || r->answered == answered))
            n++;
        json_decref(j);
    }
    pthread_mutex_unlock(&rx.mu);
    return n;
}

/* Wait until rx_count(...) >= want or timeout_s; returns the count. */
static unsigned rx_wait(const char *path, const char *type, const char *subject, int answered,
                        unsigned want, double timeout_s)
{
    double until = bd_it_now() + timeout_s;
    unsigned n;

    while ((n = rx_count(path, type, subject, answered)) < want && bd_it_now() < until)
        bd_it_sleep_ms(20);
    return n;
}

/* A copy of the i-th request for (type, subject), or fails the test. */
static struct rx_req rx_get(const char *type, const char *subject, unsigned nth)
{
    struct rx_req out = {.answered = 0};
    unsigned n = 0;

    pthread_mutex_lock(&rx.mu);
    for (unsigned i = 0; i < rx.count; i++) {
        json_t *j = json_loads(rx.reqs[i].body ? rx.reqs[i].body : "", 0, NULL);
        const char *t = bd_it_str(j, "type"), *s = bd_it_str(j, "data.id");
        bool is_it = t && s && strcmp(t, type) == 0 && strcmp(s, subject) == 0;
        json_decref(j);
        if (is_it && n++ == nth) {
            out = rx.reqs[i];
            out.body = strdup(out.body);
            break;
        }
    }
    pthread_mutex_unlock(&rx.mu);
    if (out.body == NULL)
        fail_msg("no request %u for %s %s", nth, type, subject);
    return out;
}

/* ---- batchd ----------------------------------------------------------------------------- */

/* A webhooks section: retry_base, then endpoints as YAML list items (already indented). */
static int start_batchd_ex(struct bd_it_proc *p, double retry_base, unsigned max_attempts,
                           const char *endpoints)
{
    char yaml[2048];

    snprintf(yaml, sizeof(yaml),
             "jobs:\n  processing_interval: 0.1\nwebhooks:\n  poll_interval: 0.1\n"
             "  retry_base: %g\n  retry_max: 60\n  max_attempts: %u\n  endpoints:\n%s",
             retry_base, max_attempts, endpoints);
    return bd_it_start(p, yaml, NULL);
}

static int start_batchd(struct bd_it_proc *p, double retry_base, const char *endpoints)
{
    return start_batchd_ex(p, retry_base, 10, endpoints);
}

static char *endpoint_yaml(const char *path, const char *extra)
{
    struct bd_buf b;

    bd_buf_init(&b);
    bd_buf_printf(&b, "    - url: http://127.0.0.1:%d%s\n      secret: %s\n%s", rx.port, path,
                  SECRET, extra ? extra : "");
    return bd_buf_steal(&b, NULL);
}

/* A small bulk_insert job; returns its id (caller frees) once it is completed. */
static char *run_job(struct bd_it_proc *p, const char *coll)
{
    char body[512];

    snprintf(
        body, sizeof(body),
        "{\"operation\":\"bulk_insert\",\"collection\":\"%s\",\"data\":["
        "{\"id\":\"a\",\"embedding\":[0.1,0.2,0.3]},{\"id\":\"b\",\"embedding\":[0.3,0.2,0.1]}]}",
        coll);
    char *id = bd_it_submit(p, body, NULL);
    assert_non_null(id);
    json_decref(bd_it_expect_status(p, id, "completed", 30));
    return id;
}

/* psql stands in for batchd's sessions: those of a process with endpoints say so, and the
 * triggers write events only for them. */
#define WH_SESSION "SET batchd.webhooks = on;\n"

/* Insert a batches row (no job) finalized with final_status, as the finalizer does for a
 * batch whose input failed validation, or (is_update) open, then finalized by an UPDATE. */
static void finalize_batch(const char *id, const char *final_status, bool is_update)
{
    if (!is_update) {
        assert_int_equal(
            bd_it_psql_exec(WH_SESSION "INSERT INTO batches (id, input_file_id, endpoint,"
                            " completion_window, expires_at, final_status, finalized_at) VALUES ('%s', 'file-x',"
                            " '/v1/embeddings', '24h', now() + interval '1 day', '%s', now());",
                            id, final_status),
            0);
        return;
    }
    assert_int_equal(
        bd_it_psql_exec(WH_SESSION "INSERT INTO batches (id, input_file_id, endpoint,"
                        " completion_window, expires_at) VALUES ('%s', 'file-x', '/v1/embeddings', '24h',"
                        " now() + interval '1 day');\n"
                        "UPDATE batches SET final_status = '%s', finalized_at = now()"
                        " WHERE id = '%s';",
                        id, final_status, id),
        0);
}

/* ---- cases ------------------------------------------------------------------------------ */

/* A native job that completes is announced as job.completed: signed (checked with our own
 * HMAC), webhook-id equal to the event's id, a fresh timestamp, OpenAI's event shape. */
static void test_webhooks_sends_signed_job_completed_when_job_completes(void **state)
{
    struct bd_it_proc p;
    char *ep = endpoint_yaml("/all", NULL);

    (void)state;
    rx_reset(0);
    assert_int_equal(start_batchd(&p, 0.2, ep), 0);
    char *job = run_job(&p, "wh_signed");
    assert_int_equal(rx_wait("/all", "job.completed", job, 200, 1, 15), 1);

    struct rx_req r = rx_get("job.completed", job, 0);
    assert_true(r.is_sig_ok);
    json_t *ev = json_loads(r.body, 0, NULL);
    assert_non_null(ev);
    assert_string_equal(bd_it_str(ev, "object"), "event");
    assert_string_equal(bd_it_str(ev, "id"), r.id);
    assert_true(strncmp(r.id, "evt_", 4) == 0);
    assert_string_equal(bd_it_str(ev, "data.status"), "completed");
    assert_int_equal(bd_it_int(ev, "data.total_items"), 2);
    long long now = (long long)time(NULL);
    assert_true(llabs(now - bd_it_int(ev, "created_at")) < 30);
    assert_true(llabs(now - atoll(r.ts)) < 30);
    json_decref(ev);
    free(r.body);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(job);
    free(ep);
}

/* The receiver answers 500 twice: the same event (same webhook-id) comes a third time, each
 * retry later than the one before (retry_base 0.3 s, x6 with jitter 0.8..1.2: gaps of at
 * least 0.24 s and 1.44 s), the row ends delivered after 3 attempts, and the counters say 2
 * failed attempts and 1 delivery. */
static void test_webhooks_retries_with_backoff_when_receiver_fails(void **state)
{
    struct bd_it_proc p;
    char *ep = endpoint_yaml("/flaky", NULL);

    (void)state;
    rx_reset(2);
    assert_int_equal(start_batchd(&p, 0.3, ep), 0);
    char *job = run_job(&p, "wh_retry");
    assert_int_equal(rx_wait("/flaky", "job.completed", job, 200, 1, 20), 1);
    assert_int_equal(rx_count("/flaky", "job.completed", job, 500), 2);

    struct rx_req a = rx_get("job.completed", job, 0), b = rx_get("job.completed", job, 1),
                  c = rx_get("job.completed", job, 2);
    assert_string_equal(a.id, b.id);
    assert_string_equal(b.id, c.id);
    assert_true(a.is_sig_ok && b.is_sig_ok && c.is_sig_ok);
    assert_int_equal(a.answered, 500);
    assert_int_equal(c.answered, 200);
    assert_true(b.at - a.at >= 0.24);
    assert_true(c.at - b.at >= 1.44);
    assert_true(c.at - b.at > b.at - a.at);
    assert_int_equal(bd_it_psql_long("SELECT attempts FROM webhook_deliveries WHERE event_id = "
                                     "'%s' AND state = 'delivered' AND last_status = 200",
                                     a.id),
                     3);

    /* Recorded before the row is: wait for the metric rather than assume. */
    double until = bd_it_now() + 10;
    bool is_seen = false;
    while (!is_seen && bd_it_now() < until) {
        struct bd_it_resp m;
        char url[128];
        snprintf(url, sizeof(url), "%s/metrics", p.base);
        assert_int_equal(bd_it_http("GET", url, NULL, NULL, &m), 0);
        is_seen =
            strstr(m.body, "batchd_webhook_deliveries_total{result=\"failed_attempt\"} 2\n") &&
            strstr(m.body, "batchd_webhook_deliveries_total{result=\"delivered\"} 1\n") &&
            strstr(m.body, "batchd_webhook_delivery_seconds_count 1\n") &&
            strstr(m.body, "batchd_webhook_pending 0\n");
        bd_it_resp_free(&m);
        if (!is_seen)
            bd_it_sleep_ms(200);
    }
    assert_true(is_seen);
    json_t *jm = bd_it_get_ok(&p, "/api/v1/batch/metrics");
    assert_int_equal(bd_it_int(jm, "webhooks.delivered"), 1);
    assert_int_equal(bd_it_int(jm, "webhooks.failed_attempts"), 2);
    json_decref(jm);
    free(a.body);
    free(b.body);
    free(c.body);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(job);
    free(ep);
}

/* With max_attempts 2 and a receiver that always answers 500, the delivery is tried twice
 * and then given up: marked failed with the last answer, counted, and not tried again. */
static void test_webhooks_gives_up_when_attempts_run_out(void **state)
{
    struct bd_it_proc p;
    char *ep = endpoint_yaml("/down", NULL);
    char url[128];

    (void)state;
    rx_reset(-1);
    assert_int_equal(start_batchd_ex(&p, 0.2, 2, ep), 0);
    char *job = run_job(&p, "wh_giveup");
    assert_int_equal(rx_wait("/down", "job.completed", job, 500, 2, 15), 2);
    double until = bd_it_now() + 10;
    while (bd_it_psql_long("SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e ON "
                           "e.id = d.event_id WHERE e.subject_id = '%s' AND d.state = 'failed' "
                           "AND d.attempts = 2 AND d.last_status = 500 AND d.last_error = "
                           "'HTTP 500: ??oops'",
                           job) != 1 &&
           bd_it_now() < until)
        bd_it_sleep_ms(20);
    assert_true(bd_it_now() < until);
    snprintf(url, sizeof(url), "%s/metrics", p.base);
    struct bd_it_resp m;
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &m), 0);
    assert_non_null(strstr(m.body, "batchd_webhook_deliveries_total{result=\"gave_up\"} 1\n"));
    assert_non_null(
        strstr(m.body, "batchd_webhook_deliveries_total{result=\"failed_attempt\"} 1\n"));
    bd_it_resp_free(&m);
    bd_it_sleep_ms(1000); /* ten polls: a third attempt would have come */
    assert_int_equal(rx_count("/down", "job.completed", job, 0), 2);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(job);
    free(ep);
}

/* batchd is SIGKILLed while a delivery waits for its retry; a new batchd delivers it (the
 * state is in PostgreSQL), with the same webhook-id. */
static void test_webhooks_delivers_after_restart_when_killed_with_pending_delivery(void **state)
{
    struct bd_it_proc p, q;
    char *ep = endpoint_yaml("/restart", NULL);

    (void)state;
    rx_reset(-1);
    assert_int_equal(start_batchd(&p, 2.0, ep), 0);
    char *job = run_job(&p, "wh_restart");
    assert_int_equal(rx_wait("/restart", "job.completed", job, 500, 1, 15), 1);
    /* Killed once the failure is recorded (the retry is then 1.6 to 2.4 s away); killed
     * mid-send it would wait for its lease instead, 40 s. */
    double until = bd_it_now() + 10;
    while (bd_it_psql_long("SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e ON "
                           "e.id = d.event_id WHERE e.subject_id = '%s' AND d.attempts = 1",
                           job) != 1 &&
           bd_it_now() < until)
        bd_it_sleep_ms(20);
    assert_int_equal(bd_it_stop(&p, SIGKILL, 5), 128 + SIGKILL);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM webhook_deliveries d JOIN "
                                     "webhook_events e ON e.id = d.event_id WHERE "
                                     "e.subject_id = '%s' AND d.state = 'pending'",
                                     job),
                     1);
    rx_set_fail(0);
    assert_int_equal(start_batchd(&q, 2.0, ep), 0);
    assert_int_equal(rx_wait("/restart", "job.completed", job, 200, 1, 15), 1);
    struct rx_req a = rx_get("job.completed", job, 0);
    unsigned n = rx_count("/restart", "job.completed", job, 0);
    struct rx_req last = rx_get("job.completed", job, n - 1);
    assert_string_equal(a.id, last.id);
    assert_true(last.is_sig_ok);
    assert_int_equal(last.answered, 200);
    free(a.body);
    free(last.body);
    assert_int_equal(bd_it_stop(&q, SIGTERM, 20), 0);
    free(job);
    free(ep);
}

/* Endpoint /jobs wants job.completed only, /batches batch.completed only: each gets its own
 * and, once both have arrived and a few polls have passed, nothing else. A batch's own job
 * never announces job.* (its batch does). */
static void test_webhooks_sends_only_wanted_types_when_endpoints_filter(void **state)
{
    struct bd_it_proc p;
    char *a = endpoint_yaml("/jobs", "      name: jobs\n      events: [job.completed]\n");
    char *b = endpoint_yaml("/batches", "      name: batches\n      events: [batch.completed]\n");
    char both[1024];

    (void)state;
    snprintf(both, sizeof(both), "%s%s", a, b);
    rx_reset(0);
    assert_int_equal(start_batchd(&p, 0.2, both), 0);
    char *job = run_job(&p, "wh_filter");
    finalize_batch("batch_filter1", "completed", false);
    finalize_batch("batch_filter2", "failed", true);
    assert_int_equal(rx_wait("/jobs", "job.completed", job, 200, 1, 15), 1);
    assert_int_equal(rx_wait("/batches", "batch.completed", "batch_filter1", 200, 1, 15), 1);
    /* batch.failed is wanted by no one: its event exists, with no delivery. */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM webhook_events WHERE "
                                     "type = 'batch.failed' AND subject_id = 'batch_filter2'"),
                     1);
    bd_it_sleep_ms(1000); /* ten polls: anything else would have come */
    assert_int_equal(rx_count("/jobs", NULL, NULL, 0), 1);
    assert_int_equal(rx_count("/batches", NULL, NULL, 0), 1);

    /* A job that belongs to a batch: completing it is the batch's news, not a job.* event. */
    char *bjob = run_job(&p, "wh_filter");
    assert_int_equal(
        bd_it_psql_exec(WH_SESSION "UPDATE jobs SET status = 'processing' WHERE id = '%s';\n"
                        "INSERT INTO batches (id, job_id, input_file_id, endpoint,"
                        " completion_window, expires_at) VALUES ('batch_owned', '%s',"
                        " 'file-x', '/v1/embeddings', '24h', now() + interval '1 day');\n"
                        "UPDATE jobs SET status = 'completed' WHERE id = '%s';",
                        bjob, bjob, bjob),
        0);
    assert_int_equal(
        bd_it_psql_long("SELECT count(*) FROM webhook_events WHERE subject_id = '%s'", bjob),
        1); /* the first completion, before it was owned */
    /* The forged batch would be finalized by the next test's processes (its job ended):
     * its batch.completed would then reach their endpoint. */
    assert_int_equal(bd_it_psql_exec("DELETE FROM batches WHERE id = 'batch_owned';"), 0);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(bjob);
    free(job);
    free(a);
    free(b);
}

/* Two batchd processes share the outbox: twelve jobs' events are each delivered exactly
 * once (claims skip what the other process has locked or leased). */
static void test_webhooks_delivers_each_event_once_when_two_processes_run(void **state)
{
    struct bd_it_proc p, q;
    char *ep = endpoint_yaml("/pair", "      events: [job.completed]\n");
    char *jobs[12];

    (void)state;
    rx_reset(0);
    assert_int_equal(start_batchd(&p, 0.2, ep), 0);
    assert_int_equal(start_batchd(&q, 0.2, ep), 0);
    for (int i = 0; i < 12; i++)
        jobs[i] = run_job(i % 2 ? &q : &p, "wh_pair");
    for (int i = 0; i < 12; i++)
        assert_int_equal(rx_wait("/pair", "job.completed", jobs[i], 200, 1, 15), 1);
    bd_it_sleep_ms(1000); /* ten polls of each: a double would have come */
    for (int i = 0; i < 12; i++) {
        assert_int_equal(rx_count("/pair", "job.completed", jobs[i], 0), 1);
        free(jobs[i]);
    }
    assert_int_equal(rx_count("/pair", NULL, NULL, 0), 12);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    assert_int_equal(bd_it_stop(&q, SIGTERM, 20), 0);
    free(ep);
}

/* A batch finalized by the finalizer's columns (via psql here): batch.<final_status> for an
 * UPDATE that sets finalized_at and for an INSERT with it; a second UPDATE sends nothing. */
static void test_webhooks_sends_batch_events_when_batch_row_finalized(void **state)
{
    struct bd_it_proc p;
    char *ep = endpoint_yaml("/b", NULL);

    (void)state;
    rx_reset(0);
    assert_int_equal(start_batchd(&p, 0.2, ep), 0);
    finalize_batch("batch_final1", "completed", true);
    finalize_batch("batch_final2", "expired", false);
    finalize_batch("batch_final3", "cancelled", true);
    assert_int_equal(rx_wait("/b", "batch.completed", "batch_final1", 200, 1, 15), 1);
    assert_int_equal(rx_wait("/b", "batch.expired", "batch_final2", 200, 1, 15), 1);
    assert_int_equal(rx_wait("/b", "batch.cancelled", "batch_final3", 200, 1, 15), 1);
    struct rx_req r = rx_get("batch.completed", "batch_final1", 0);
    assert_true(r.is_sig_ok);
    free(r.body);
    assert_int_equal(bd_it_psql_exec(WH_SESSION "UPDATE batches SET finalized_at = now() "
                                     "WHERE id = 'batch_final1';"),
                     0);
    bd_it_sleep_ms(1000);
    assert_int_equal(rx_count("/b", NULL, "batch_final1", 0), 1);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(ep);
}

/* A real OpenAI batch through /v1/files and /v1/batches: the finalizer's final row is what
 * sends its batch.completed, signed. */
static void test_webhooks_sends_batch_completed_when_openai_batch_finishes(void **state)
{
    struct bd_it_proc p;
    char *ep = endpoint_yaml("/real", "      events: [batch.completed]\n");
    char yaml[2048], path[128], out[4096], url[256], body[256];
    const char *hdrs[] = { "Authorization: Bearer x", "Content-Type: application/json", NULL };
    struct bd_it_resp r = { 0 };
    FILE *f;

    (void)state;
    rx_reset(0);
    snprintf(yaml, sizeof(yaml),
             "webhooks:\n  poll_interval: 0.1\n  endpoints:\n%s"
             "models:\n  - name: hm\n    provider: hashing\n    dimensions: 4\n", ep);
    assert_int_equal(bd_it_start(&p, yaml, NULL), 0);
    snprintf(path, sizeof(path), "/tmp/it_webhooks_%d.jsonl", (int)getpid());
    assert_non_null(f = fopen(path, "w"));
    for (int i = 0; i < 3; i++)
        fprintf(f, "{\"custom_id\":\"r%d\",\"method\":\"POST\",\"url\":\"/v1/embeddings\","
                   "\"body\":{\"model\":\"hm\",\"input\":\"text %d\"}}\n", i, i);
    fclose(f);
    assert_int_equal(bd_it_sh_out(out, sizeof(out), "curl -s -H 'Authorization: Bearer x' "
                                  "-F purpose=batch -F file=@%s %s/v1/files", path, p.base), 0);
    unlink(path);
    json_t *file = json_loads(out, 0, NULL);
    assert_non_null(bd_it_str(file, "id"));
    snprintf(url, sizeof(url), "%s/v1/batches", p.base);
    snprintf(body, sizeof(body), "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\","
             "\"completion_window\":\"24h\"}", bd_it_str(file, "id"));
    assert_int_equal(bd_it_http("POST", url, body, hdrs, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *batch = json_loads(r.body, 0, NULL);
    const char *id = bd_it_str(batch, "id");
    assert_non_null(id);
    assert_int_equal(rx_wait("/real", "batch.completed", id, 200, 1, 30), 1);
    struct rx_req got = rx_get("batch.completed", id, 0);
    assert_true(got.is_sig_ok);
    free(got.body);
    json_decref(batch);
    json_decref(file);
    bd_it_resp_free(&r);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(ep);
}

/* A process without endpoints: its jobs finish without writing any event (the triggers
 * look at the session's batchd.webhooks). */
static void test_webhooks_writes_no_event_when_no_endpoint_configured(void **state)
{
    struct bd_it_proc p;
    char *job;

    (void)state;
    assert_int_equal(bd_it_start(&p, "jobs:\n  processing_interval: 0.1\n", NULL), 0);
    job = run_job(&p, "wh_none");
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM webhook_events WHERE subject_id = '%s'",
                                     job), 0);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    free(job);
}

/* --check-config refuses a secret without whsec_, one that is not base64, and an ftp://
 * URL, naming the key; the good one passes. */
static void test_webhooks_refuses_config_when_secret_or_url_malformed(void **state)
{
    static const struct {
        const char *url, *secret, *want;
        int rc;
    } cases[] = {
        {"http://127.0.0.1:9/ok", SECRET, "configuration is valid", 0},
        {"http://127.0.0.1:9/ok", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
         "webhooks.endpoints[0].secret: must start with", 1},
        {"http://127.0.0.1:9/ok", "whsec_not*base64", "webhooks.endpoints[0].secret: the part", 1},
        {"ftp://127.0.0.1/x", SECRET, "webhooks.endpoints[0].url: must be an http", 1},
    };
    const char *bin = bd_it_env("BD_BATCHD_BIN", "./batchd");
    char path[128], out[512];

    (void)state;
    snprintf(path, sizeof(path), "/tmp/it_webhooks_%d.yaml", (int)getpid());
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f,
                "redis: {url: \"redis://127.0.0.1:1/0\"}\npostgres: {url: \"postgresql://x@"
                "127.0.0.1:1/db\"}\nwebhooks:\n  endpoints:\n    - url: \"%s\"\n      "
                "secret: \"%s\"\n",
                cases[i].url, cases[i].secret);
        fclose(f);
        int rc = bd_it_sh_out(out, sizeof(out), "'%s' --check-config -c '%s' 2>&1", bin, path);
        assert_int_equal(rc, cases[i].rc);
        if (strstr(out, cases[i].want) == NULL)
            fail_msg("case %zu: %s", i, out);
        /* The secret is never echoed. */
        assert_null(strstr(out, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }
    unlink(path);
}

/* The official openai SDK (test/openai/webhooks.mjs, pinned 5.23.2) is the endpoint: it
 * verifies each delivery with client.webhooks.unwrap(body, headers, secret), answers 400 to
 * one it refuses, and exits 0 once a job.completed and a batch.completed have verified. */
static void test_webhooks_verify_with_official_openai_sdk(void **state)
{
    const char *src = bd_it_env("BD_SOURCE_DIR", ".");
    struct bd_it_proc p;
    char dir[128], ep[512], line[256];
    int port = bd_it_free_port();

    (void)state;
    assert_int_equal(bd_it_openai_sdk_install(), 0);
    snprintf(dir, sizeof(dir), "/tmp/it_webhooks_sdk_%d", (int)getpid());
    assert_int_equal(bd_it_sh("rm -rf '%s' && mkdir -p '%s'", dir, dir), 0);
    /* In the background, with none of popen's pipe: bd_it_sh reads it to its end. */
    assert_int_equal(bd_it_sh("(cd '%s/test/openai' && PORT=%d WEBHOOK_SECRET='%s' "
                              "EXPECT=job.completed,batch.completed node webhooks.mjs "
                              ">'%s/out' 2>'%s/err'; echo $? >'%s/rc') "
                              "</dev/null >/dev/null 2>&1 &",
                              src, port, SECRET, dir, dir, dir),
                     0);
    snprintf(ep, sizeof(ep), "    - url: http://127.0.0.1:%d/sdk\n      secret: %s\n", port,
             SECRET);
    assert_int_equal(start_batchd(&p, 0.2, ep), 0);
    char *job = run_job(&p, "wh_sdk");
    finalize_batch("batch_sdk", "completed", true);

    double until = bd_it_now() + 60;
    while (bd_it_sh("test -s '%s/rc'", dir) != 0 && bd_it_now() < until)
        bd_it_sleep_ms(100);
    bd_it_sh("cat '%s/out' '%s/err' >&2", dir, dir);
    assert_int_equal(bd_it_sh_out(line, sizeof(line), "cat '%s/rc'", dir), 0);
    assert_string_equal(line, "0");
    assert_int_equal(bd_it_sh("grep -qx 'verified job.completed %s' '%s/out'", job, dir), 0);
    assert_int_equal(bd_it_sh("grep -qx 'verified batch.completed batch_sdk' '%s/out'", dir), 0);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    bd_it_sh("rm -rf '%s'", dir);
    free(job);
}

/* ---- setup ------------------------------------------------------------------------------ */

static int it_setup(void **state)
{

    (void)state;
    if (bd_it_scratch_open(&g_scr, "itwh", "BD_IT_WEBHOOKS_REDIS_DB", "18") != 0)
        return -1;
    return rx_start();
}

static int it_teardown(void **state)
{
    (void)state;
    bd_it_kill_all();
    rx.is_stopping = true;
    if (rx.fd >= 0) {
        pthread_join(rx.thread, NULL);
        close(rx.fd);
    }
    rx_reset(0);
    bd_it_scratch_close(&g_scr);
    return 0;
}

#define WH_TEST(f) cmocka_unit_test_teardown(f, bd_it_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        WH_TEST(test_webhooks_sends_signed_job_completed_when_job_completes),
        WH_TEST(test_webhooks_retries_with_backoff_when_receiver_fails),
        WH_TEST(test_webhooks_gives_up_when_attempts_run_out),
        WH_TEST(test_webhooks_delivers_after_restart_when_killed_with_pending_delivery),
        WH_TEST(test_webhooks_sends_only_wanted_types_when_endpoints_filter),
        WH_TEST(test_webhooks_delivers_each_event_once_when_two_processes_run),
        WH_TEST(test_webhooks_sends_batch_events_when_batch_row_finalized),
        WH_TEST(test_webhooks_sends_batch_completed_when_openai_batch_finishes),
        WH_TEST(test_webhooks_writes_no_event_when_no_endpoint_configured),
        WH_TEST(test_webhooks_refuses_config_when_secret_or_url_malformed),
        WH_TEST(test_webhooks_verify_with_official_openai_sdk),
    };
    bd_it_apply_filter();
    return cmocka_run_group_tests(tests, it_setup, it_teardown);
}
