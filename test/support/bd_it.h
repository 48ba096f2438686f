/* bd_it.h -- helpers for integration tests: start the real batchd binary against the test
 * stack, talk HTTP to it (blocking libcurl: fine in a test, never in batchd), parse JSON,
 * run SQL on the test database, read raw HTTP from a socket.
 *
 * Helpers documented "fails the test" call cmocka's fail_msg(), so they are for use inside a
 * cmocka test case (not in setup code that must return an error instead).
 */
#ifndef BD_IT_H
#define BD_IT_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct bd_it_proc {
    pid_t pid;
    int port;
    char base[64];               /* "http://127.0.0.1:PORT" */
    char config_path[256];
    char log_path[256];
};

struct bd_it_resp {
    long status;
    char *body;                  /* NUL-terminated */
    size_t len;
    char *headers;               /* raw header block, NUL-terminated */
    double seconds;              /* from the start of the request to its end */
    int curl_code;               /* CURLE_OK, or why no response arrived */
};

/* A free TCP port on 127.0.0.1 (bind to 0, read it, close). */
int bd_it_free_port(void);

/* Environment value or fallback. */
const char *bd_it_env(const char *name, const char *fallback);

/* Write a config file with "server:" (listen on a free port), "redis:" and "postgres:"
 * (the test stack's URLs from BATCH_REDIS_URL / BATCH_POSTGRES_URL) and then extra_yaml
 * verbatim (whole sections such as "jobs:" and "models:"; NULL for none). Start batchd with
 * it and wait until /readyz (or /$BD_IT_WAIT, e.g. "healthz" for a batchd meant to
 * run without its stores) answers 200 (timeout 20 s). env: NULL or a NULL-terminated list of
 * "NAME=value" added to batchd's environment. Returns 0, or -1 with batchd's log printed. */
int bd_it_start(struct bd_it_proc *p, const char *extra_yaml, const char *const *env);

/* SIGKILL every batchd this test binary started and has not stopped yet (a failed test
 * leaves its processes behind otherwise). Use as a cmocka teardown; also run at exit. */
void bd_it_kill_all(void);
int bd_it_teardown(void **state);

/* Send sig (SIGTERM usually), wait up to timeout_s; returns the exit status (0..255),
 * 128+signal if killed by a signal, or -1 if it did not exit (then SIGKILLed). */
int bd_it_stop(struct bd_it_proc *p, int sig, double timeout_s);

/* A suite's teardown: if p was started (*started), SIGTERM it and wait (20 s); print its
 * log's path when it did not exit with 0, and clear *started. Returns 0, or -1 then. */
int bd_it_stop_started(struct bd_it_proc *p, bool *started);

/* HTTP request with libcurl easy. headers: NULL or NULL-terminated "Name: value" list.
 * body may be NULL. Returns 0 when a response arrived (any status), -1 otherwise. */
int bd_it_http(const char *method, const char *url, const char *body,
               const char *const *headers, struct bd_it_resp *out);
void bd_it_resp_free(struct bd_it_resp *r);

/* The same with a timeout in ms (0: 30 s); out->curl_code says why it failed (e.g.
 * CURLE_OPERATION_TIMEDOUT) and out->seconds how long it took. When no response arrived
 * (-1), out holds no memory; bd_it_resp_free() is safe on it either way. */
int bd_it_http_ex(const char *method, const char *url, const char *body,
                  const char *const *headers, long timeout_ms, struct bd_it_resp *out);

/* The easy handle bd_it_http_ex runs, for a test that drives several at once with curl
 * multi: set up like bd_it_http_ex, writing into out (which must stay put until finish).
 * After the transfer, bd_it_easy_finish(handle, its CURLcode) fills out->status, seconds and
 * curl_code, frees the handle and returns 0 (a response arrived) or -1. NULL on ENOMEM. */
CURL *bd_it_easy_new(const char *method, const char *url, const char *body,
                     const char *const *headers, long timeout_ms, struct bd_it_resp *out);
int bd_it_easy_finish(CURL *handle, int curl_code);

/* Header value from a response (case-insensitive), copied into buf; NULL when absent. */
const char *bd_it_resp_header(const struct bd_it_resp *r, const char *name, char *buf,
                              size_t buflen);

/* Shorthands: method on p->base + path; parse the body as JSON (NULL if not JSON). The
 * status is stored in *status when not NULL. Caller json_decref()s. */
json_t *bd_it_json(struct bd_it_proc *p, const char *method, const char *path,
                   const char *body, long *status);

/* The same on any URL (e.g. the fake model server's); *status is -1 when nothing arrived. */
json_t *bd_it_json_url(const char *method, const char *url, const char *body, long *status);

/* GET the path (printf format) on p; fails the test unless it answers 200 with JSON.
 * Returns the body (caller decrefs). */
json_t *bd_it_get_ok(struct bd_it_proc *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The value of the Prometheus sample whose name and labels are exactly key
 * ("name{a=\"x\"}") in an exposition text, or 0 when there is no such sample (a counter not
 * yet written is 0). bd_it_metric: the same on p's GET /metrics (fails the test unless 200). */
double bd_it_sample(const char *text, const char *key);
double bd_it_metric(struct bd_it_proc *p, const char *key);

/* POST body to /api/v1/batch/jobs. Returns the job_id (caller frees) or NULL, printing the
 * answer when it is not a 202 with a job_id; the status goes to *status when not NULL. */
char *bd_it_submit(struct bd_it_proc *p, const char *body, long *status);

/* Poll GET path until json field "status" equals want or timeout_s passes.
 * Returns the last JSON (caller decrefs) or NULL. */
json_t *bd_it_wait_status(struct bd_it_proc *p, const char *job_id, const char *want,
                          double timeout_s);

/* Poll the job's status until it is want or terminal (or timeout_s passed); fails the test,
 * printing the last answer, unless it is want. Returns that answer (caller decrefs). Unlike
 * bd_it_wait_status, a job that ends otherwise fails at once instead of at the timeout. */
json_t *bd_it_expect_status(struct bd_it_proc *p, const char *job_id, const char *want,
                            double timeout_s);

/* Run only the cases whose name matches $BD_TEST_FILTER (a cmocka pattern, * and ?) when
 * it is set; call in main before running the group. For iterating on one case. */
void bd_it_apply_filter(void);

/* Monotonic seconds. */
double bd_it_now(void);

/* Sleep ms milliseconds (tests only). */
void bd_it_sleep_ms(unsigned ms);

/* Run a shell command (tests only, e.g. psql); returns its exit status. */
int bd_it_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run a shell command and capture its first line of stdout into out. Returns exit status. */
int bd_it_sh_out(char *out, size_t outlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- JSON paths (bd_it_jpath.c) -------------------------------------------------------
 * path: object keys separated by dots; a key made of digits indexes an array ("data.0.id").
 */

/* The value at path in o (borrowed), or NULL when a step is missing. */
json_t *bd_it_at(json_t *o, const char *path);

/* The string at path, or NULL when missing or not a string. */
const char *bd_it_str(json_t *o, const char *path);

/* The integer / real / number (integer or real) at path; fails the test, naming the path,
 * when it is missing or of another type. */
long long bd_it_int(json_t *o, const char *path);
double bd_it_real(json_t *o, const char *path);
double bd_it_num(json_t *o, const char *path);

/* ---- PostgreSQL through psql (bd_it_pg.c) ---------------------------------------------
 * The SQL goes to psql in a file (no shell quoting), with -X (no psqlrc), ON_ERROR_STOP and
 * unaligned tuples-only output; psql's errors go to the test's stderr.
 */

/* The test database: $BATCH_POSTGRES_URL as it is now (a suite that setenv()s its own
 * schema URL gets that one), or the test stack's default. */
const char *bd_it_pg_url(void);

/* base (a postgresql:// URL, or key=value conninfo) with search_path set to schema, into out:
 * how a suite puts batchd, a pool or psql in a scratch schema of its own. */
void bd_it_pg_schema_url(char *out, size_t outlen, const char *base, const char *schema);

/* Run node on script in test/openai/ (the official openai npm package, pinned; `npm ci` the
 * first time) with env ("NAME='value' ..." shell assignments) in its environment; its
 * output goes to the test's stderr. Returns node's exit status (0: every check passed). */
int bd_it_openai_sdk(const char *script, const char *env);
/* Only the `npm ci` of test/openai/ (the first time); 0 when the package is there. */
int bd_it_openai_sdk_install(void);

/* A suite's own scratch stores: a schema "<prefix>_<pid>" created empty in the test
 * database and a Redis database of its own ($db_env, else db_default) flushed, with
 * BATCH_POSTGRES_URL / BATCH_REDIS_URL set to them so that every batchd the suite starts
 * uses them. open: 0, or -1 (printed) when PostgreSQL cannot be reached. close: drops the
 * schema and flushes the Redis database.
 *
 * Redis databases, one per suite (ctest runs two suites at once, and a suite's FLUSHDB must
 * not empty another's queue; scripts/stack.sh starts Redis with 32): 0 the suites on the
 * shared stores, 9 it_ui, 10 it_pause, 11 it_api_read, 12 it_batches, 13 it_rebuild,
 * 14 and 15 it_group_commit (its 429 case's second process), 16 it_files, 17 it_metrics,
 * 18 it_webhooks, 19 it_submit, 20 it_embed's private run, 21 it_events. */
struct bd_it_scratch {
    char schema[64];
    char pg_base[512];               /* the test database as the stack gave it */
    char pg_url[640];                /* the same with search_path = schema */
    char redis_url[256];             /* the stack's Redis, the suite's database */
};
int bd_it_scratch_open(struct bd_it_scratch *s, const char *prefix, const char *db_env,
                       const char *db_default);
void bd_it_scratch_close(const struct bd_it_scratch *s);

/* For suites that put a PostgreSQL proxy between batchd and the store: start the proxy on
 * s's database (bd_it_pgproxy_start(pg_base, marker)), write s's schema URL through it into
 * out and point BATCH_POSTGRES_URL at it (s->pg_url stays direct). 0, or -1 (printed). */
int bd_it_scratch_proxy(const struct bd_it_scratch *s, const char *marker, char *out,
                        size_t outlen);

/* Run the SQL against url (NULL: bd_it_pg_url()). psql_args: NULL or more psql arguments
 * passed verbatim (e.g. "-v pfx=abc"). Returns psql's whole stdout (caller frees) or NULL
 * when psql failed. */
char *bd_it_psql_url(const char *url, const char *psql_args, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* On bd_it_pg_url(): run statements (0, or -1 when psql failed); the first value of the
 * first row as a number (-1 when psql failed or there was no row); the first row into out
 * (0, or -1 with out empty); every output line parsed as JSON, as an array (caller decrefs;
 * fails the test when psql fails or a line is not JSON). */
int bd_it_psql_exec(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
long bd_it_psql_long(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* bd_it_psql_long against url (a suite's own schema, a proxy). */
long bd_it_psql_long_url(const char *url, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int bd_it_psql_str(char *out, size_t outlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
json_t *bd_it_psql_json_rows(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- raw HTTP on a socket (bd_it_raw.c) -----------------------------------------------
 * For streams and timing: one blocking socket to 127.0.0.1, everything read appended to buf.
 */
struct bd_it_raw {
    int fd;
    char *buf;                   /* NUL-terminated */
    size_t len, cap;
    bool is_eof;
};

/* Connect to 127.0.0.1:port and send "<method> <path> HTTP/1.1", Host and extra_headers
 * (NULL or "Name: value\r\n" lines). rcvbuf > 0 sets SO_RCVBUF before connecting (a small
 * window makes a slow reader). Fails the test when connect or send fails. */
void bd_it_raw_open(struct bd_it_raw *c, int port, const char *method, const char *path,
                    const char *extra_headers, int rcvbuf);

/* Connect to 127.0.0.1:port and send nothing yet, with Nagle off (each send goes out at once,
 * as a test that times its pieces needs). Fails the test when connect fails. */
void bd_it_raw_connect(struct bd_it_raw *c, int port);

/* Send data (NUL-terminated) on the connection, e.g. a second request; fails the test when
 * send fails. */
void bd_it_raw_send(struct bd_it_raw *c, const char *data);

/* Send len bytes of data (any bytes; partial sends continued); fails the test when send
 * fails. */
void bd_it_raw_send_n(struct bd_it_raw *c, const void *data, size_t len);

/* Take one HTTP/1.x response off the front of c->buf, reading more as needed (each read waits
 * at most timeout_ms): the body framed by Content-Length, chunked (dechunked) or the end of
 * the connection; none for a HEAD request (is_head), 1xx, 204 and 304, so a 100 Continue is
 * returned as a response of its own. Fills out as bd_it_http does (status; headers: the status
 * line and header block; body NUL-terminated, "" when none; seconds: time spent reading) and
 * removes the response's bytes from c->buf, so the next call reads the next pipelined one.
 * Returns 0, or -1 (out holds no memory) when the connection ended or a read timed out first.
 * Fails the test when the bytes are not an HTTP/1.x response. Caller bd_it_resp_free()s. */
int bd_it_raw_response(struct bd_it_raw *c, struct bd_it_resp *out, bool is_head,
                       int timeout_ms);

/* True when the peer closes the connection (EOF or an error) within timeout_ms. Bytes that
 * arrive meanwhile are appended to c->buf. */
bool bd_it_raw_sees_close(struct bd_it_raw *c, int timeout_ms);

/* Read what is available within timeout_ms (at most max bytes; 0 = any). 0 on data, -1 on
 * timeout, 1 at EOF. */
int bd_it_raw_read(struct bd_it_raw *c, int timeout_ms, size_t max);

/* Read until needle occurs at or after offset from, or timeout_s passes, or EOF. Returns
 * its offset or -1. */
long bd_it_raw_wait(struct bd_it_raw *c, const char *needle, size_t from, double timeout_s);

/* Bytes the kernel has received on the socket and the test has not read yet. */
size_t bd_it_raw_unread(const struct bd_it_raw *c);

void bd_it_raw_close(struct bd_it_raw *c);

/* Occurrences of needle in hay (NULL hay: 0). */
size_t bd_it_count(const char *hay, const char *needle);

/* ---- the fake model server's admin routes (bd_it_fake.c) ------------------------------
 * For a fake started with fake_model_spawn() (test/fake_model/fake_model_client.h) on
 * 127.0.0.1:port. Requests time out after 5 s.
 */

/* The fake's JSON answer to method path (body: NULL for none), or NULL (the answer printed)
 * unless it answered 200 with JSON. Caller decrefs. */
json_t *bd_it_fake_json(int port, const char *method, const char *path, const char *body);

/* POST /config json (an object of settings; all apply or none do). Fails the test unless the
 * fake accepts it. */
void bd_it_fake_config(int port, const char *json);

/* POST /config {"reset":true<extra>} and POST /stats/reset: the fake's command-line settings
 * plus extra (NULL, "" or ",\"key\":value..."), and its counters at zero. Fails the test when
 * the fake refuses either. */
void bd_it_fake_reset(int port, const char *extra);

/* The integer at path (bd_it_at's syntax, e.g. "requests_total") in GET /stats; fails the
 * test, naming the path, when /stats fails or the value is missing or not an integer. */
long long bd_it_fake_stat(int port, const char *path);

/* ---- a PostgreSQL proxy that loses commit answers (bd_it_pgproxy.c) -------------------
 * One per test process, on its own thread, in front of host:port of pg_url
 * (postgresql://user@host:port/db...). A transaction it forwards is applied by the server,
 * but when the server answers that it has ended (ReadyForQuery, idle) the connection is
 * dropped instead, so the client never hears of it: the next commit on any connection after
 * bd_it_pgproxy_arm() (a COMMIT, or batchd's group statement "bd_submit_jobs", a
 * transaction of its own), and every transaction whose messages carried marker (NULL:
 * none). Returns the port it listens on, or -1. */
int bd_it_pgproxy_start(const char *pg_url, const char *marker);
void bd_it_pgproxy_arm(void);
void bd_it_pgproxy_disarm(void);
/* How many answers were lost so far. */
int bd_it_pgproxy_fired(void);
void bd_it_pgproxy_stop(void);

/* Under AddressSanitizer freed memory waits in a quarantine (256 MB), so a process's
 * resident size says nothing about what it holds: memory bounds are checked in normal
 * builds only. gcc defines __SANITIZE_ADDRESS__, clang answers __has_feature. */
#if defined(__SANITIZE_ADDRESS__)
#define BD_IT_RSS_IS_MEANINGFUL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BD_IT_RSS_IS_MEANINGFUL 0
#endif
#endif
#ifndef BD_IT_RSS_IS_MEANINGFUL
#define BD_IT_RSS_IS_MEANINGFUL 1
#endif

#endif
