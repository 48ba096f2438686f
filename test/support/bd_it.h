/* bd_it.h -- helpers for integration tests: start the real batchd binary against the test
 * stack, talk HTTP to it (blocking libcurl: fine in a test, never in batchd), parse JSON.
 */
#ifndef BD_IT_H
#define BD_IT_H

#include <jansson.h>
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

/* HTTP request with libcurl easy. headers: NULL or NULL-terminated "Name: value" list.
 * body may be NULL. Returns 0 when a response arrived (any status), -1 otherwise. */
int bd_it_http(const char *method, const char *url, const char *body,
               const char *const *headers, struct bd_it_resp *out);
void bd_it_resp_free(struct bd_it_resp *r);

/* Header value from a response (case-insensitive), copied into buf; NULL when absent. */
const char *bd_it_resp_header(const struct bd_it_resp *r, const char *name, char *buf,
                              size_t buflen);

/* Shorthands: method on p->base + path; parse the body as JSON (NULL if not JSON). The
 * status is stored in *status when not NULL. Caller json_decref()s. */
json_t *bd_it_json(struct bd_it_proc *p, const char *method, const char *path,
                   const char *body, long *status);

/* Poll GET path until json field "status" equals want or timeout_s passes.
 * Returns the last JSON (caller decrefs) or NULL. */
json_t *bd_it_wait_status(struct bd_it_proc *p, const char *job_id, const char *want,
                          double timeout_s);

/* Monotonic seconds. */
double bd_it_now(void);

/* Sleep ms milliseconds (tests only). */
void bd_it_sleep_ms(unsigned ms);

/* Run a shell command (tests only, e.g. psql); returns its exit status. */
int bd_it_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run a shell command and capture its first line of stdout into out. Returns exit status. */
int bd_it_sh_out(char *out, size_t outlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
