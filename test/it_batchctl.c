/* it_batchctl.c -- batchctl end to end: the real batchctl binary against the real batchd,
 * Redis and PostgreSQL of the test stack, with the fake model server for slow and failing
 * models. Each case runs batchctl as a user would (its own process, its environment, its
 * exit code, stdout and stderr) and checks the outcome through the API as well.
 *
 * What the real server cannot be made to do on cue (cut a results stream with an error line,
 * end an event stream early, refuse streams, lack an endpoint, fail with a 500) comes from a
 * scripted server in this process: canned answers, one per connection, in order.
 *
 * Isolation: the models are named after this process (ctlh<pid>, ...), so the jobs listed
 * by model are this run's only.  SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "bd_it.h"
#include "batchd/buf.h"
#include "fake_model/fake_model_client.h"

/* batchctl's exit codes (src/batchctl/bctl.h, batchctl(1)): the contract under test, so
 * written out here rather than included. */
enum {
    EX_OK = 0, EX_USAGE = 1, EX_CONNECT = 2, EX_REFUSED = 3, EX_NOT_FOUND = 4,
    EX_SERVER = 5, EX_FAILED = 6, EX_CANCELLED = 7, EX_AUTH = 8, EX_LOCAL = 9,
};

#define API_KEY "ctl-secret-key"

static struct bd_it_proc g_proc;      /* batchd without API keys */
static pid_t g_slow_pid, g_fail_pid;
static char g_hash[32], g_slow[32], g_fail[32];   /* model names of this run */
static char g_dir[128];               /* scratch files */

/* A finished batchctl run. */
struct ctl_run {
    int code;                         /* exit status; -1 when it did not end in time */
    char *out, *err;                  /* stdout and stderr, NUL-terminated */
};

static void ctl_run_free(struct ctl_run *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

static const char *ctl_bin(void)
{
    const char *bin = getenv("BD_BATCHCTL_BIN");
    static char path[512];

    if (bin != NULL && *bin != '\0')
        return bin;
    /* Beside batchd in the build directory. */
    snprintf(path, sizeof(path), "%s", bd_it_env("BD_BATCHD_BIN", "batchd"));
    char *slash = strrchr(path, '/');
    snprintf(slash ? slash + 1 : path, sizeof(path) - (size_t)(slash ? slash + 1 - path : 0),
             "batchctl");
    return path;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct bd_buf b;
    char chunk[4096];
    size_t n;

    bd_buf_init(&b);
    bd_buf_puts(&b, "");
    if (f == NULL)
        return bd_buf_steal(&b, NULL);
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        bd_buf_append(&b, chunk, n);
    fclose(f);
    return bd_buf_steal(&b, NULL);
}

/* Start batchctl with argv (NULL-terminated, without the program) and env (NULL or
 * "NAME=value" entries added to a clean BATCHD_* environment); its output goes to files
 * named after tag. Returns its pid. */
static pid_t ctl_spawn(const char *tag, const char *const *env, const char *const *argv)
{
    char out[256], err[256];
    const char *args[32];
    size_t n = 0;

    snprintf(out, sizeof(out), "%s/%s.out", g_dir, tag);
    snprintf(err, sizeof(err), "%s/%s.err", g_dir, tag);
    args[n++] = ctl_bin();
    for (size_t i = 0; argv[i] != NULL && n < 31; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open("/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0)
            _exit(126);
        dup2(fi, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        unsetenv("BATCHD_URL");
        unsetenv("BATCHD_API_KEY");
        for (size_t i = 0; env != NULL && env[i] != NULL; i++)
            putenv((char *)env[i]);
        execv(args[0], (char *const *)args);
        _exit(127);
    }
    return pid;
}

/* Wait for a spawned batchctl (at most timeout_s, then SIGKILL) and collect its output. */
static struct ctl_run ctl_wait(pid_t pid, const char *tag, double timeout_s)
{
    struct ctl_run r = {.code = -1};
    char path[256];
    double deadline = bd_it_now() + timeout_s;
    int status;

    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (bd_it_now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        bd_it_sleep_ms(10);
    }
    snprintf(path, sizeof(path), "%s/%s.out", g_dir, tag);
    r.out = read_file(path);
    snprintf(path, sizeof(path), "%s/%s.err", g_dir, tag);
    r.err = read_file(path);
    return r;
}

/* Run batchctl to its end (60 s at most); argv as for ctl_spawn. */
static struct ctl_run ctl(const char *const *env, const char *const *argv)
{
    pid_t pid = ctl_spawn("run", env, argv);
    struct ctl_run r = ctl_wait(pid, "run", 60);
    if (r.code < 0)
        fail_msg("batchctl %s did not end within 60 s; stderr: %s", argv[0], r.err);
    return r;
}

/* Fails the test, showing batchctl's output, unless it exited with want. */
static void expect_code(const struct ctl_run *r, int want, const char *what)
{
    if (r->code != want)
        fail_msg("%s: exit %d, expected %d\nstdout: %.2000s\nstderr: %.2000s", what, r->code,
                 want, r->out, r->err);
}

/* The URL env entry for g_proc ("BATCHD_URL=http://..."). */
static const char *url_env(void)
{
    static char env[128];
    snprintf(env, sizeof(env), "BATCHD_URL=%s", g_proc.base);
    return env;
}

static char *scratch(const char *name)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", g_dir, name) > 0);
    return path;
}

/* A JSON Lines file of n bulk_embed items with texts unique to this run. */
static char *write_lines(const char *name, unsigned n, const char *tag)
{
    char *path = scratch(name);
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    for (unsigned i = 0; i < n; i++)
        fprintf(f, "{\"text\": \"%s %d line %u\", \"id\": \"%s-%u\"}\n", tag, (int)getpid(), i,
                tag, i);
    assert_int_equal(fclose(f), 0);
    return path;
}

static json_t *parse_json(const char *s, const char *what)
{
    json_error_t e;
    json_t *doc = json_loads(s, 0, &e);
    if (doc == NULL)
        fail_msg("%s: not JSON (%s): %.500s", what, e.text, s);
    return doc;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}


/* ---- a scripted HTTP server ------------------------------------------------------------
 * Serves answers[i] (raw HTTP, with "Connection: close") to the i-th connection and closes
 * it, on a thread; records each request's first line. */

#define SCRIPT_MAX 8

struct script {
    int fd, port;
    const char *const *answers;       /* NULL-terminated */
    int served;
    char requests[SCRIPT_MAX][512];
    pthread_t thread;
};

static void *script_main(void *arg)
{
    struct script *s = arg;

    for (int i = 0; s->answers[i] != NULL && i < SCRIPT_MAX; i++) {
        struct pollfd pfd = {.fd = s->fd, .events = POLLIN};
        if (poll(&pfd, 1, 20000) != 1)
            break;                    /* batchctl asked for less than scripted */
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            break;
        char head[4096];
        size_t len = 0;
        while (len < sizeof(head) - 1) {
            ssize_t n = recv(c, head + len, sizeof(head) - 1 - len, 0);
            if (n <= 0)
                break;
            len += (size_t)n;
            head[len] = '\0';
            if (strstr(head, "\r\n\r\n") != NULL)
                break;
        }
        head[len] = '\0';
        char *eol = strstr(head, "\r\n");
        snprintf(s->requests[i], sizeof(s->requests[i]), "%.*s",
                 eol ? (int)(eol - head) : (int)len, head);
        const char *a = s->answers[i];
        size_t left = strlen(a);
        while (left > 0) {
            ssize_t n = send(c, a, left, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            a += n;
            left -= (size_t)n;
        }
        shutdown(c, SHUT_WR);
        char sink[256];
        while (recv(c, sink, sizeof(sink), 0) > 0) {
        }
        close(c);
        s->served = i + 1;
    }
    return NULL;
}

static void script_start(struct script *s, const char *const *answers)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);

    memset(s, 0, sizeof(*s));
    s->answers = answers;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->fd >= 0);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 8), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &alen), 0);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->thread, NULL, script_main, s), 0);
}

static void script_stop(struct script *s)
{
    pthread_join(s->thread, NULL);
    close(s->fd);
}

/* "BATCHD_URL=http://127.0.0.1:<port>" of a script (static buffer). */
static const char *script_env(const struct script *s)
{
    static char env[64];
    snprintf(env, sizeof(env), "BATCHD_URL=http://127.0.0.1:%d", s->port);
    return env;
}

#define JSON_OK(body) \
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" body
#define SSE_OK \
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
#define NDJSON_OK \
    "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
#define STATUS_DOC(state, done) \
    "{\"job_id\":\"batch_s_1\",\"status\":\"" state "\",\"progress\":{\"total_items\":4," \
    "\"processed_items\":" #done ",\"failed_items\":0,\"percentage\":" #done "0.0," \
    "\"current_batch\":1,\"total_batches\":2}}"
#define RESULT(i) "{\"index\":" #i ",\"id\":\"v" #i "\",\"embedding\":[0.5],\"metadata\":{}}\n"

/* ---- setup -------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    const char *const slow_args[] = {"--dim", "16", "--latency-ms", "300", NULL};
    const char *const fail_args[] = {"--dim", "16", "--fail-rate", "1", NULL};
    int slow_port = 0, fail_port = 0;
    char yaml[1024];

    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/it_batchctl.%d", (int)getpid());
    mkdir(g_dir, 0700);
    snprintf(g_hash, sizeof(g_hash), "ctlh%d", (int)getpid());
    snprintf(g_slow, sizeof(g_slow), "ctls%d", (int)getpid());
    snprintf(g_fail, sizeof(g_fail), "ctlf%d", (int)getpid());
    if (fake_model_spawn(NULL, slow_args, &g_slow_pid, &slow_port) < 0 ||
        fake_model_spawn(NULL, fail_args, &g_fail_pid, &fail_port) < 0)
        return -1;
    snprintf(yaml, sizeof(yaml),
             "jobs:\n  max_concurrent_jobs: 3\n  processing_interval: 0.1\n"
             "  progress_update_interval: 0.2\n  retry_delay: 0.05\n  lease: 5\n"
             "models:\n"
             "  - name: %s\n    provider: hashing\n    dimensions: 16\n"
             "  - name: %s\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 16\n    timeout: 10\n"
             "  - name: %s\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 16\n    timeout: 10\n",
             g_hash, g_slow, slow_port, g_fail, fail_port);
    return bd_it_start(&g_proc, yaml, NULL);
}

static int group_teardown(void **state)
{
    (void)state;
    bd_it_stop(&g_proc, SIGTERM, 10);
    fake_model_stop(g_slow_pid);
    fake_model_stop(g_fail_pid);
    bd_it_sh("rm -rf '%s'", g_dir);
    return 0;
}

/* ---- cases -------------------------------------------------------------------------- */

/* A JSON file is submitted (its fields its own), --json prints the 202's JSON, watch
 * follows the job to completed (exit 0); status, list and results agree with the API. */
static void test_batchctl_runs_json_job_to_results_when_submitted_and_watched(void **state)
{
    const char *env[] = {url_env(), NULL};
    char *path = scratch("job.json");
    char *out = scratch("out.jsonl");
    FILE *f = fopen(path, "w");
    (void)state;

    assert_non_null(f);
    fprintf(f, "{\"operation\":\"bulk_embed\",\"model\":\"%s\",\"options\":{\"batch_size\":10},"
               "\"data\":[", g_hash);
    for (int i = 0; i < 45; i++)
        fprintf(f, "%s{\"text\":\"json %d item %d\"}", i ? "," : "", (int)getpid(), i);
    fprintf(f, "]}");
    assert_int_equal(fclose(f), 0);

    struct ctl_run r = ctl(env, (const char *[]){"--json", "submit", path, NULL});
    expect_code(&r, EX_OK, "submit --json");
    json_t *sub = parse_json(r.out, "submit --json");
    assert_string_equal(bd_it_str(sub, "status"), "queued");
    assert_int_equal(bd_it_int(sub, "items_count"), 45);
    char *id = strdup(bd_it_str(sub, "job_id"));
    json_decref(sub);
    ctl_run_free(&r);

    r = ctl(env, (const char *[]){"watch", id, NULL});
    expect_code(&r, EX_OK, "watch");
    assert_non_null(strstr(r.out, "completed"));
    ctl_run_free(&r);
    json_t *st = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%s/status", id);
    assert_string_equal(bd_it_str(st, "status"), "completed");
    assert_int_equal(bd_it_int(st, "progress.processed_items"), 45);
    json_decref(st);

    /* status: for people, and --json for scripts. */
    r = ctl(env, (const char *[]){"status", id, NULL});
    expect_code(&r, EX_OK, "status");
    assert_non_null(strstr(r.out, "completed"));
    assert_non_null(strstr(r.out, "45/45 items, 0 failed, batch 5/5"));
    ctl_run_free(&r);
    r = ctl(env, (const char *[]){"status", "--json", id, NULL});
    expect_code(&r, EX_OK, "status --json");
    st = parse_json(r.out, "status --json");
    assert_string_equal(bd_it_str(st, "job_id"), id);
    assert_int_equal(bd_it_int(st, "progress.total_items"), 45);
    json_decref(st);
    ctl_run_free(&r);

    /* results: every stored vector, one line each, in index order. */
    r = ctl(env, (const char *[]){"results", id, "-o", out, NULL});
    expect_code(&r, EX_OK, "results");
    ctl_run_free(&r);
    char *lines = read_file(out);
    assert_int_equal(count_lines(lines), 45);
    char *save = NULL;
    int i = 0;
    for (char *line = strtok_r(lines, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *row = parse_json(line, "a result line");
        assert_int_equal(bd_it_int(row, "index"), i++);
        assert_int_equal(json_array_size(bd_it_at(row, "embedding")), 16);
        json_decref(row);
    }
    free(lines);
    free(id);
    free(out);
    free(path);
}

/* A JSON Lines file of about 1.3 MB, compressed on the fly (--gzip), with the job's
 * fields as options: --wait follows it to completed, and the job has the fields and every
 * item; list filters by model and follows the cursor (--all). */
static void test_batchctl_streams_gzip_json_lines_when_submitted_with_wait(void **state)
{
    enum { N = 30000 };
    const char *env[] = {url_env(), NULL};
    char *path = write_lines("job.jsonl", N, "gz");
    (void)state;

    struct ctl_run r = ctl(env, (const char *[]){"submit", path, "--gzip", "--model", g_hash,
                                                 "--batch-size", "700", "--priority", "high",
                                                 "--max-retries", "1", "--job-timeout", "600",
                                                 "--wait", NULL});
    expect_code(&r, EX_OK, "submit --gzip --wait");
    char id[160] = "";
    assert_int_equal(sscanf(r.out, "%159s queued: %*d items", id), 1);
    assert_non_null(strstr(r.out, "completed"));
    ctl_run_free(&r);

    json_t *job = bd_it_get_ok(&g_proc, "/api/v1/batch/jobs/%s", id);
    assert_string_equal(bd_it_str(job, "status"), "completed");
    assert_string_equal(bd_it_str(job, "model"), g_hash);
    assert_string_equal(bd_it_str(job, "priority"), "high");
    assert_int_equal(bd_it_int(job, "batch_size"), 700);
    assert_int_equal(bd_it_int(job, "max_retries"), 1);
    assert_true(bd_it_num(job, "timeout_s") == 600.0);
    assert_int_equal(bd_it_int(job, "progress.total_items"), N);
    assert_int_equal(bd_it_int(job, "progress.processed_items"), N);
    json_decref(job);

    /* A second job of the model (quietly: only its id on stdout), then the model's list. */
    r = ctl(env, (const char *[]){"-q", "submit", path, "--model", g_hash, NULL});
    expect_code(&r, EX_OK, "submit -q");
    assert_int_equal(strncmp(r.out, "batch_", 6), 0);
    assert_int_equal(count_lines(r.out), 1);
    ctl_run_free(&r);

    r = ctl(env, (const char *[]){"list", "--model", g_hash, "--limit", "1", "--json", NULL});
    expect_code(&r, EX_OK, "list --json");
    json_t *page = parse_json(r.out, "list --json");
    assert_int_equal(json_array_size(bd_it_at(page, "jobs")), 1);
    assert_non_null(bd_it_str(page, "next_cursor"));
    json_decref(page);
    ctl_run_free(&r);

    /* Three jobs of the model so far (the JSON case's, and two here), one per page. */
    r = ctl(env, (const char *[]){"list", "--model", g_hash, "--limit", "1", "--all", "--json",
                                  NULL});
    expect_code(&r, EX_OK, "list --all --json");
    page = parse_json(r.out, "list --all --json");
    assert_int_equal(bd_it_int(page, "count"), 3);
    assert_int_equal(json_array_size(bd_it_at(page, "jobs")), 3);
    json_decref(page);
    ctl_run_free(&r);

    r = ctl(env, (const char *[]){"list", "--model", g_hash, "--status", "completed", NULL});
    expect_code(&r, EX_OK, "list");
    assert_non_null(strstr(r.out, "JOB ID"));
    assert_non_null(strstr(r.out, id));
    ctl_run_free(&r);
    free(path);
}

/* A job cancelled while submit --wait follows it: the wait ends with the cancelled code,
 * and so does a later watch. */
static void test_batchctl_exits_cancelled_when_job_is_cancelled_while_waiting(void **state)
{
    const char *env[] = {url_env(), NULL};
    char *path = write_lines("slow.jsonl", 100, "slow");
    char query[160];
    (void)state;

    /* 100 batches of one item at 300 ms each: half a minute unless cancelled. */
    pid_t pid = ctl_spawn("wait", env, (const char *[]){"submit", path, "--model", g_slow,
                                                         "--batch-size", "1", "--wait", NULL});
    snprintf(query, sizeof(query), "/api/v1/batch/jobs?model=%s&status=processing", g_slow);
    char *id = NULL;
    double deadline = bd_it_now() + 20;
    while (id == NULL && bd_it_now() < deadline) {
        json_t *l = bd_it_get_ok(&g_proc, "%s", query);
        const char *s = bd_it_str(l, "jobs.0.job_id");
        if (s != NULL && bd_it_int(l, "jobs.0.progress.processed_items") > 0)
            id = strdup(s);
        json_decref(l);
        if (id == NULL)
            bd_it_sleep_ms(50);
    }
    assert_non_null(id);

    struct ctl_run r = ctl(env, (const char *[]){"cancel", id, NULL});
    expect_code(&r, EX_OK, "cancel");
    ctl_run_free(&r);
    r = ctl_wait(pid, "wait", 30);
    expect_code(&r, EX_CANCELLED, "submit --wait of a cancelled job");
    assert_non_null(strstr(r.out, "cancelled"));
    ctl_run_free(&r);

    r = ctl(env, (const char *[]){"watch", id, NULL});
    expect_code(&r, EX_CANCELLED, "watch of a cancelled job");
    ctl_run_free(&r);
    /* A second cancel is refused by the server (409): the refused code. */
    r = ctl(env, (const char *[]){"cancel", id, NULL});
    expect_code(&r, EX_REFUSED, "cancel of an ended job");
    assert_non_null(strstr(r.err, "409"));
    ctl_run_free(&r);
    free(id);
    free(path);
}

/* A job whose every item fails ends failed: the failed code; retry queues it again. */
static void test_batchctl_exits_failed_when_every_item_fails(void **state)
{
    const char *env[] = {url_env(), NULL};
    char *path = scratch("fail.json");
    FILE *f = fopen(path, "w");
    (void)state;

    assert_non_null(f);
    fprintf(f, "{\"operation\":\"bulk_embed\",\"model\":\"%s\",\"options\":{\"max_retries\":0},"
               "\"data\":[{\"text\":\"doomed %d\"}]}", g_fail, (int)getpid());
    assert_int_equal(fclose(f), 0);
    struct ctl_run r = ctl(env, (const char *[]){"submit", "--wait", path, NULL});
    expect_code(&r, EX_FAILED, "submit --wait of a failing job");
    char id[160] = "";
    assert_int_equal(sscanf(r.out, "%159s queued:", id), 1);
    ctl_run_free(&r);

    r = ctl(env, (const char *[]){"retry", id, NULL});
    expect_code(&r, EX_OK, "retry");
    assert_non_null(strstr(r.out, " again"));
    ctl_run_free(&r);
    json_t *st = bd_it_expect_status(&g_proc, id, "failed", 30);
    json_decref(st);
    free(path);
}

/* Errors: each has its exit code, and nothing is written for a job that does not exist. */
static void test_batchctl_exit_codes_say_what_happened_when_requests_fail(void **state)
{
    const char *env[] = {url_env(), NULL};
    char refused[128];
    char *out = scratch("none.jsonl");
    (void)state;

    struct ctl_run r = ctl(env, (const char *[]){"status", "batch_nope_20000101_000000_1", NULL});
    expect_code(&r, EX_NOT_FOUND, "status of an unknown job");
    assert_non_null(strstr(r.err, "404"));
    ctl_run_free(&r);
    r = ctl(env, (const char *[]){"watch", "batch_nope_20000101_000000_1", NULL});
    expect_code(&r, EX_NOT_FOUND, "watch of an unknown job");
    ctl_run_free(&r);
    r = ctl(env, (const char *[]){"results", "batch_nope_20000101_000000_1", "-o", out, NULL});
    expect_code(&r, EX_NOT_FOUND, "results of an unknown job");
    assert_int_equal(access(out, F_OK), -1);
    ctl_run_free(&r);

    /* The server refuses a bad job (400): the refused code, the field named. */
    char *bad = scratch("bad.jsonl");
    FILE *f = fopen(bad, "w");
    assert_non_null(f);
    fputs("{\"text\": \"fine\"}\n{\"text\": 42}\n", f);
    assert_int_equal(fclose(f), 0);
    r = ctl(env, (const char *[]){"submit", bad, "--model", g_hash, NULL});
    expect_code(&r, EX_REFUSED, "submit of a bad line");
    assert_non_null(strstr(r.err, "400"));
    ctl_run_free(&r);

    /* Nothing listens there: the connection code. */
    snprintf(refused, sizeof(refused), "http://127.0.0.1:%d", bd_it_free_port());
    r = ctl(NULL, (const char *[]){"--url", refused, "queue", NULL});
    expect_code(&r, EX_CONNECT, "queue on a closed port");
    ctl_run_free(&r);

    /* Usage errors never reach the server. */
    r = ctl(env, (const char *[]){"status", NULL});
    expect_code(&r, EX_USAGE, "status without an id");
    ctl_run_free(&r);
    r = ctl(env, (const char *[]){"list", "--limit", "0", NULL});
    expect_code(&r, EX_USAGE, "list --limit 0");
    ctl_run_free(&r);

    /* A missing input file. */
    r = ctl(env, (const char *[]){"submit", "/nonexistent/job.json", NULL});
    expect_code(&r, EX_LOCAL, "submit of a missing file");
    ctl_run_free(&r);

    /* queue answers with JSON for scripts. */
    r = ctl(env, (const char *[]){"queue", "--json", NULL});
    expect_code(&r, EX_OK, "queue --json");
    json_t *q = parse_json(r.out, "queue --json");
    assert_non_null(bd_it_at(q, "queue_status.total_jobs"));
    json_decref(q);
    ctl_run_free(&r);
    free(bad);
    free(out);
}

/* With API keys configured: no key is the auth code; BATCHD_API_KEY or --api-key pass. */
static void test_batchctl_sends_api_key_when_server_requires_one(void **state)
{
    const char *const benv[] = {"BATCH_API_KEYS=" API_KEY, NULL};
    struct bd_it_proc p;
    char url[128];
    (void)state;

    assert_int_equal(bd_it_start(&p, NULL, benv), 0);
    snprintf(url, sizeof(url), "BATCHD_URL=%s", p.base);
    const char *no_key[] = {url, NULL};
    const char *with_key[] = {url, "BATCHD_API_KEY=" API_KEY, NULL};
    const char *wrong_key[] = {url, "BATCHD_API_KEY=wrong", NULL};

    struct ctl_run r = ctl(no_key, (const char *[]){"queue", NULL});
    expect_code(&r, EX_AUTH, "queue without a key");
    assert_non_null(strstr(r.err, "API key"));
    ctl_run_free(&r);
    r = ctl(wrong_key, (const char *[]){"queue", NULL});
    expect_code(&r, EX_AUTH, "queue with a wrong key");
    ctl_run_free(&r);
    r = ctl(with_key, (const char *[]){"queue", NULL});
    expect_code(&r, EX_OK, "queue with BATCHD_API_KEY");
    ctl_run_free(&r);
    r = ctl(no_key, (const char *[]){"--api-key", API_KEY, "list", "--limit", "1", NULL});
    expect_code(&r, EX_OK, "list with --api-key");
    ctl_run_free(&r);
    /* The option wins over the environment. */
    r = ctl(wrong_key, (const char *[]){"--api-key", API_KEY, "queue", NULL});
    expect_code(&r, EX_OK, "--api-key over a wrong BATCHD_API_KEY");
    ctl_run_free(&r);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 10), 0);
}


/* results: a stream the server ends with an error line is resumed from the first result not
 * written (cursor=i<next>), and the file has every result once. */
static void test_batchctl_resumes_results_when_stream_ends_with_error(void **state)
{
    static const char *const answers[] = {
        JSON_OK(STATUS_DOC("completed", 4)),
        NDJSON_OK RESULT(0) RESULT(1)
            "{\"error\":{\"code\":\"store_unavailable\",\"message\":\"gone\"}}\n",
        NDJSON_OK RESULT(2) RESULT(3),
        NULL,
    };
    struct script s;
    char *out = scratch("resumed.jsonl");
    (void)state;

    script_start(&s, answers);
    const char *env[] = {script_env(&s), NULL};
    struct ctl_run r = ctl(env, (const char *[]){"results", "batch_s_1", "-o", out, NULL});
    script_stop(&s);
    expect_code(&r, EX_OK, "results resumed");
    ctl_run_free(&r);
    assert_int_equal(s.served, 3);
    assert_non_null(strstr(s.requests[1], "GET /api/v1/batch/jobs/batch_s_1/results "));
    assert_non_null(strstr(s.requests[2], "/results?cursor=i2 "));
    char *lines = read_file(out);
    assert_string_equal(lines, RESULT(0) RESULT(1) RESULT(2) RESULT(3));
    free(lines);
    free(out);
}

/* watch: an event stream that ends without its final event (a server restarting) is opened
 * again, through a 503 of the server going down, and the job's outcome is the exit code. */
static void test_batchctl_reconnects_watch_when_stream_ends_early(void **state)
{
    static const char *const answers[] = {
        SSE_OK "event: progress\ndata: " STATUS_DOC("processing", 2) "\n\n",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Connection: close\r\n\r\n"
        "{\"error\":{\"code\":\"shutting_down\",\"message\":\"stopping\"}}",
        SSE_OK ": keepalive\n\nevent: final\ndata: " STATUS_DOC("failed", 2) "\n\n",
        NULL,
    };
    struct script s;
    (void)state;

    script_start(&s, answers);
    const char *env[] = {script_env(&s), NULL};
    struct ctl_run r = ctl(env, (const char *[]){"watch", "batch_s_1", NULL});
    script_stop(&s);
    expect_code(&r, EX_FAILED, "watch of a job that fails, across a reconnect");
    assert_int_equal(s.served, 3);
    assert_non_null(strstr(s.requests[2], "GET /api/v1/batch/jobs/batch_s_1/events "));
    ctl_run_free(&r);
}

/* watch: a server at its cap on event streams (503) is polled for the status instead. */
static void test_batchctl_polls_status_when_streams_are_refused(void **state)
{
    static const char *const answers[] = {
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Retry-After: 5\r\nConnection: close\r\n\r\n"
        "{\"error\":{\"code\":\"too_many_streams\",\"message\":\"too many\"}}",
        JSON_OK(STATUS_DOC("processing", 2)),
        JSON_OK(STATUS_DOC("completed", 4)),
        NULL,
    };
    struct script s;
    (void)state;

    script_start(&s, answers);
    const char *env[] = {script_env(&s), NULL};
    struct ctl_run r = ctl(env, (const char *[]){"watch", "--json", "batch_s_1", NULL});
    script_stop(&s);
    expect_code(&r, EX_OK, "watch by polling");
    assert_int_equal(s.served, 3);
    assert_non_null(strstr(s.requests[2], "GET /api/v1/batch/jobs/batch_s_1/status "));
    assert_int_equal(count_lines(r.out), 2);          /* --json: one status per line */
    ctl_run_free(&r);
}

/* pause against a batchd without the endpoint (its router's 404 "no such route"): the
 * unsupported code and a message that says so; a 500 is the server error code. */
static void test_batchctl_reports_unsupported_when_server_lacks_pause(void **state)
{
    static const char *const answers[] = {
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nConnection: close\r\n"
        "\r\n{\"error\":{\"code\":\"not_found\",\"message\":\"no such route\"}}",
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
        "Connection: close\r\n\r\n{\"error\":{\"code\":\"internal\",\"message\":\"boom\"}}",
        NULL,
    };
    struct script s;
    (void)state;

    script_start(&s, answers);
    const char *env[] = {script_env(&s), NULL};
    struct ctl_run r = ctl(env, (const char *[]){"pause", "--model", "m 1", NULL});
    expect_code(&r, 10, "pause on a batchd without it");
    assert_non_null(strstr(r.err, "upgrade"));
    ctl_run_free(&r);
    r = ctl(env, (const char *[]){"resume", NULL});
    expect_code(&r, EX_SERVER, "resume answered 500");
    assert_non_null(strstr(r.err, "boom"));
    ctl_run_free(&r);
    script_stop(&s);
    assert_non_null(strstr(s.requests[0], "POST /api/v1/batch/queue/pause?model=m+1 "));
    assert_non_null(strstr(s.requests[1], "POST /api/v1/batch/queue/resume "));
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batchctl_runs_json_job_to_results_when_submitted_and_watched),
        cmocka_unit_test(test_batchctl_streams_gzip_json_lines_when_submitted_with_wait),
        cmocka_unit_test(test_batchctl_exits_cancelled_when_job_is_cancelled_while_waiting),
        cmocka_unit_test(test_batchctl_exits_failed_when_every_item_fails),
        cmocka_unit_test(test_batchctl_exit_codes_say_what_happened_when_requests_fail),
        cmocka_unit_test(test_batchctl_sends_api_key_when_server_requires_one),
        cmocka_unit_test(test_batchctl_resumes_results_when_stream_ends_with_error),
        cmocka_unit_test(test_batchctl_reconnects_watch_when_stream_ends_early),
        cmocka_unit_test(test_batchctl_polls_status_when_streams_are_refused),
        cmocka_unit_test(test_batchctl_reports_unsupported_when_server_lacks_pause),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
