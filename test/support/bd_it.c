/* bd_it.c -- integration-test helpers: spawn batchd, blocking HTTP via libcurl, JSON
 * answers, job status polling, shell commands. PostgreSQL helpers are in bd_it_pg.c, JSON
 * paths in bd_it_jpath.c, the raw socket client in bd_it_raw.c.
 *
 * Test code only: blocking calls are fine here and never appear in src/.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bd_it.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double bd_it_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bd_it_sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void bd_it_apply_filter(void)
{
    const char *f = getenv("BD_TEST_FILTER");
    if (f && *f)
        cmocka_set_test_filter(f);
}

const char *bd_it_env(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return (v && *v) ? v : fallback;
}

int bd_it_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = 0 };
    socklen_t len = sizeof(sa);
    int port = -1;

    if (fd < 0)
        return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

#define IT_MAX_PROCS 32
static pid_t it_procs[IT_MAX_PROCS];

static void it_track(pid_t pid, bool add)
{
    for (int i = 0; i < IT_MAX_PROCS; i++) {
        if (add ? it_procs[i] == 0 : it_procs[i] == pid) {
            it_procs[i] = add ? pid : 0;
            return;
        }
    }
}

void bd_it_kill_all(void)
{
    for (int i = 0; i < IT_MAX_PROCS; i++) {
        if (it_procs[i] > 0) {
            kill(it_procs[i], SIGKILL);
            waitpid(it_procs[i], NULL, 0);
            it_procs[i] = 0;
        }
    }
}

int bd_it_teardown(void **state)
{
    (void)state;
    bd_it_kill_all();
    return 0;
}

static void it_print_log(const struct bd_it_proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    char line[1024];

    if (f == NULL)
        return;
    fprintf(stderr, "---- batchd log %s ----\n", p->log_path);
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fprintf(stderr, "---- end of log ----\n");
    fclose(f);
}

int bd_it_start(struct bd_it_proc *p, const char *extra_yaml, const char *const *env)
{
    const char *bin = bd_it_env("BD_BATCHD_BIN", "./batchd");
    static unsigned counter;
    FILE *f;

    memset(p, 0, sizeof(*p));
    p->port = bd_it_free_port();
    if (p->port < 0)
        return -1;
    snprintf(p->base, sizeof(p->base), "http://127.0.0.1:%d", p->port);
    snprintf(p->config_path, sizeof(p->config_path), "/tmp/bd_it_%d_%u.yaml", (int)getpid(),
             counter);
    snprintf(p->log_path, sizeof(p->log_path), "/tmp/bd_it_%d_%u.log", (int)getpid(),
             counter++);
    f = fopen(p->config_path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "server:\n  listen: 127.0.0.1:%d\n  log_level: %s\n", p->port,
            bd_it_env("BD_IT_LOG_LEVEL", "info"));
    fprintf(f, "redis:\n  url: %s\n",
            bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0"));
    fprintf(f, "postgres:\n  url: %s\n",
            bd_it_env("BATCH_POSTGRES_URL", "postgresql://batchd@127.0.0.1:15433/batchd"));
    if (extra_yaml)
        fputs(extra_yaml, f);
    fclose(f);

    p->pid = fork();
    if (p->pid < 0)
        return -1;
    if (p->pid == 0) {
        /* Die with the test: a crashed test must not leave batchd claiming jobs. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        FILE *log = freopen(p->log_path, "w", stderr);
        FILE *out = freopen("/dev/null", "w", stdout);
        (void)out;
        (void)log;
        /* The stack's URLs come from the file; drop the environment copies so the file is
         * what the test controls (env overrides would otherwise win). */
        unsetenv("BATCH_REDIS_URL");
        unsetenv("BATCH_POSTGRES_URL");
        for (const char *const *e = env; e && *e; e++)
            putenv(strdup(*e));
        execl(bin, bin, "--config", p->config_path, (char *)NULL);
        perror("execl batchd");
        _exit(127);
    }

    static bool has_atexit;
    if (!has_atexit) {
        atexit(bd_it_kill_all);
        has_atexit = true;
    }
    it_track(p->pid, true);
    double deadline = bd_it_now() + 20.0;
    char url[128];
    /* Ready, not just alive: Redis and PostgreSQL reachable and the schema migrated (a
     * slow start, e.g. under sanitizers, would otherwise get 503 not_ready). */
    snprintf(url, sizeof(url), "%s/%s", p->base, bd_it_env("BD_IT_WAIT", "readyz"));
    while (bd_it_now() < deadline) {
        struct bd_it_resp r;
        int status;
        if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
            it_track(p->pid, false);
            fprintf(stderr, "batchd exited early (status %d)\n", status);
            it_print_log(p);
            p->pid = 0;
            return -1;
        }
        if (bd_it_http("GET", url, NULL, NULL, &r) == 0) {
            long code = r.status;
            bd_it_resp_free(&r);
            if (code == 200)
                return 0;
        }
        bd_it_sleep_ms(50);
    }
    fprintf(stderr, "batchd did not become healthy in time\n");
    it_print_log(p);
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    it_track(p->pid, false);
    p->pid = 0;
    return -1;
}

int bd_it_stop_started(struct bd_it_proc *p, bool *started)
{
    if (!*started)
        return 0;
    *started = false;
    if (bd_it_stop(p, SIGTERM, 20) == 0)
        return 0;
    fprintf(stderr, "batchd did not exit cleanly; log: %s\n", p->log_path);
    return -1;
}

int bd_it_stop(struct bd_it_proc *p, int sig, double timeout_s)
{
    int status = 0;
    double deadline = bd_it_now() + timeout_s;

    if (p->pid <= 0)
        return -1;
    it_track(p->pid, false);
    kill(p->pid, sig);
    for (;;) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid)
            break;
        if (bd_it_now() > deadline) {
            fprintf(stderr, "batchd pid %d did not exit after signal %d\n", (int)p->pid, sig);
            it_print_log(p);
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            p->pid = 0;
            return -1;
        }
        bd_it_sleep_ms(20);
    }
    p->pid = 0;
    if (WIFEXITED(status)) {
        if (WEXITSTATUS(status) != 0)
            it_print_log(p);
        return WEXITSTATUS(status);
    }
    return 128 + WTERMSIG(status);
}

/* Where an easy handle made by bd_it_easy_new writes: the response being filled and the
 * header list to free with it. Hung on the handle as CURLOPT_PRIVATE. */
struct it_easy {
    struct bd_it_resp *out;
    struct curl_slist *headers;
    size_t hcap, bcap;
    double t0;
};

static size_t it_append(char **data, size_t *len, size_t *cap, const char *ptr, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 1024;
        while (c < *len + n + 1)
            c *= 2;
        char *d = realloc(*data, c);
        if (d == NULL)
            return 0;
        *data = d;
        *cap = c;
    }
    memcpy(*data + *len, ptr, n);
    *len += n;
    (*data)[*len] = '\0';
    return n;
}

static size_t it_on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct it_easy *e = userdata;
    return it_append(&e->out->body, &e->out->len, &e->bcap, ptr, size * nmemb);
}

static size_t it_on_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct it_easy *e = userdata;
    size_t hlen = e->out->headers ? strlen(e->out->headers) : 0;
    return it_append(&e->out->headers, &hlen, &e->hcap, ptr, size * nmemb);
}

CURL *bd_it_easy_new(const char *method, const char *url, const char *body,
                     const char *const *headers, long timeout_ms, struct bd_it_resp *out)
{
    CURL *c = curl_easy_init();
    struct it_easy *e = calloc(1, sizeof(*e));
    bool has_ct = false;

    memset(out, 0, sizeof(*out));
    if (c == NULL || e == NULL) {
        if (c)
            curl_easy_cleanup(c);
        free(e);
        return NULL;
    }
    e->out = out;
    e->t0 = bd_it_now();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 30000L);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    for (const char *const *h = headers; h && *h; h++) {
        e->headers = curl_slist_append(e->headers, *h);
        if (strncasecmp(*h, "Content-Type:", 13) == 0)
            has_ct = true;
    }
    /* As a JSON client does: a POST without a body (retry) says JSON too (batchd refuses a
     * POST a browser could send cross-site, one with no type among them). */
    if ((body || strcmp(method, "POST") == 0) && !has_ct)
        e->headers = curl_slist_append(e->headers, "Content-Type: application/json");
    e->headers = curl_slist_append(e->headers, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, e->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, it_on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, e);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, it_on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, e);
    curl_easy_setopt(c, CURLOPT_PRIVATE, e);
    return c;
}

int bd_it_easy_finish(CURL *c, int curl_code)
{
    struct it_easy *e = NULL;

    curl_easy_getinfo(c, CURLINFO_PRIVATE, (char **)&e);
    struct bd_it_resp *out = e->out;
    out->curl_code = curl_code;
    out->seconds = bd_it_now() - e->t0;
    if (curl_code == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
        if (out->body == NULL)
            out->body = strdup("");
        if (out->headers == NULL)
            out->headers = strdup("");
    } else {
        /* No response: nothing for the caller to free (callers skip bd_it_resp_free then). */
        free(out->body);
        free(out->headers);
        out->body = out->headers = NULL;
        out->len = 0;
    }
    curl_slist_free_all(e->headers);
    free(e);
    curl_easy_cleanup(c);
    return curl_code == CURLE_OK ? 0 : -1;
}

int bd_it_http_ex(const char *method, const char *url, const char *body,
                  const char *const *headers, long timeout_ms, struct bd_it_resp *out)
{
    CURL *c = bd_it_easy_new(method, url, body, headers, timeout_ms, out);

    if (c == NULL)
        return -1;
    return bd_it_easy_finish(c, (int)curl_easy_perform(c));
}

int bd_it_http(const char *method, const char *url, const char *body,
               const char *const *headers, struct bd_it_resp *out)
{
    return bd_it_http_ex(method, url, body, headers, 30000, out);
}

void bd_it_resp_free(struct bd_it_resp *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

const char *bd_it_resp_header(const struct bd_it_resp *r, const char *name, char *buf,
                              size_t buflen)
{
    size_t nlen = strlen(name);
    const char *line = r->headers;

    while (line && *line) {
        const char *eol = strstr(line, "\r\n");
        size_t llen = eol ? (size_t)(eol - line) : strlen(line);
        if (llen > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = llen - (size_t)(v - line);
            if (vlen >= buflen)
                vlen = buflen - 1;
            memcpy(buf, v, vlen);
            buf[vlen] = '\0';
            return buf;
        }
        line = eol ? eol + 2 : NULL;
    }
    return NULL;
}

json_t *bd_it_json_url(const char *method, const char *url, const char *body, long *status)
{
    struct bd_it_resp r;
    json_t *j;

    if (bd_it_http(method, url, body, NULL, &r) != 0) {
        if (status)
            *status = -1;
        bd_it_resp_free(&r);
        return NULL;
    }
    if (status)
        *status = r.status;
    j = json_loadb(r.body, r.len, 0, NULL);
    bd_it_resp_free(&r);
    return j;
}

json_t *bd_it_json(struct bd_it_proc *p, const char *method, const char *path,
                   const char *body, long *status)
{
    char url[1024];
    int n = snprintf(url, sizeof(url), "%s%s", p->base, path);

    assert_true(n > 0 && (size_t)n < sizeof(url));   /* a path that long is a test bug */
    return bd_it_json_url(method, url, body, status);
}

json_t *bd_it_get_ok(struct bd_it_proc *p, const char *fmt, ...)
{
    char path[1024];
    va_list ap;
    long status = 0;

    va_start(ap, fmt);
    vsnprintf(path, sizeof(path), fmt, ap);
    va_end(ap);
    json_t *j = bd_it_json(p, "GET", path, NULL, &status);
    if (status != 200 || j == NULL)
        fail_msg("GET %s -> %ld%s", path, status, j ? "" : " (no JSON body)");
    return j;
}

double bd_it_sample(const char *text, const char *key)
{
    size_t klen = strlen(key);
    const char *p = text;

    while (p && *p) {
        if (strncmp(p, key, klen) == 0 && p[klen] == ' ')
            return strtod(p + klen + 1, NULL);
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return 0;
}

double bd_it_metric(struct bd_it_proc *p, const char *key)
{
    char url[160];
    struct bd_it_resp r;
    double v;

    snprintf(url, sizeof(url), "%s/metrics", p->base);
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    v = bd_it_sample(r.body, key);
    bd_it_resp_free(&r);
    return v;
}

char *bd_it_submit(struct bd_it_proc *p, const char *body, long *status)
{
    long st = 0;
    json_t *j = bd_it_json(p, "POST", "/api/v1/batch/jobs", body, &st);
    const char *id = json_string_value(json_object_get(j, "job_id"));
    char *r = id ? strdup(id) : NULL;

    if (status)
        *status = st;
    if (r == NULL || st != 202) {
        char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
        fprintf(stderr, "submit: HTTP %ld %.300s\n", st, d ? d : "(no JSON)");
        free(d);
    }
    json_decref(j);
    return r;
}

json_t *bd_it_wait_status(struct bd_it_proc *p, const char *job_id, const char *want,
                          double timeout_s)
{
    char path[512];
    double deadline = bd_it_now() + timeout_s;
    json_t *j = NULL;

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", job_id);
    while (bd_it_now() < deadline) {
        json_decref(j);
        j = bd_it_json(p, "GET", path, NULL, NULL);
        const char *s = json_string_value(json_object_get(j, "status"));
        if (s && strcmp(s, want) == 0)
            return j;
        bd_it_sleep_ms(50);
    }
    return j;
}

static bool it_is_terminal(const char *s)
{
    return s && (strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 ||
                 strcmp(s, "cancelled") == 0);
}

json_t *bd_it_expect_status(struct bd_it_proc *p, const char *job_id, const char *want,
                            double timeout_s)
{
    char path[512];
    double deadline = bd_it_now() + timeout_s;
    json_t *j = NULL;
    const char *s = NULL;

    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", job_id);
    for (;;) {
        json_decref(j);
        j = bd_it_json(p, "GET", path, NULL, NULL);
        s = json_string_value(json_object_get(j, "status"));
        if ((s && strcmp(s, want) == 0) || it_is_terminal(s) || bd_it_now() > deadline)
            break;
        bd_it_sleep_ms(20);
    }
    if (s == NULL || strcmp(s, want) != 0) {
        char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        fail_msg("job %s: wanted %s within %.0f s, got %.500s", job_id, want, timeout_s,
                 d ? d : "(no answer)");
    }
    return j;
}

static int it_vsh(char *out, size_t outlen, const char *fmt, va_list ap)
{
    char cmd[4096];
    FILE *f;
    int status;

    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    f = popen(cmd, "r");
    if (f == NULL)
        return -1;
    if (out && outlen) {
        out[0] = '\0';
        if (fgets(out, (int)outlen, f)) {
            size_t n = strlen(out);
            while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
                out[--n] = '\0';
        }
    }
    char sink[512];
    while (fgets(sink, sizeof(sink), f))
        ;
    status = pclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int bd_it_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = it_vsh(NULL, 0, fmt, ap);
    va_end(ap);
    return r;
}

int bd_it_sh_out(char *out, size_t outlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = it_vsh(out, outlen, fmt, ap);
    va_end(ap);
    return r;
}
