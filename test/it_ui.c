/* it_ui.c -- integration tests of the web dashboard (GET /ui, src/api_ui.c, ui/): its headers
 * from C, then the page itself in a real browser, Debian's chromium driven by playwright-core
 * (test/ui/dashboard.mjs, one scenario per case): the key question, a job's live progress to
 * 100 %, cancel with its confirmation, failed items and retry, pause and resume, job text
 * shown as text, the filters in the URL. Against the real batchd binary, the fake model server and the test stack.
 *
 * batchd runs with an API key configured, so every scenario goes through the page's key
 * dialog. Models: "uifake" (the fake model server, 150 ms per request, one request at a
 * time, one text per request: a job of n items takes about n x 150 ms, slow enough to watch
 * and to cancel), "uihash" (the built-in hashing provider, instant) and "uidead" (a port
 * nobody listens on: its items fail).
 *
 * Needs /usr/bin/chromium (scripts/deps.sh installs it) and npm: `npm ci` installs the pinned
 * playwright-core from test/ui/package-lock.json on first use (no browser download). One
 * `node dashboard.mjs --serve` runs every scenario in one chromium, a case at a time. The
 * screenshot of a finished job goes to <build>/test/artifacts/dashboard.png.
 *
 * Isolation: a PostgreSQL schema of its own ("itui_<pid>", through search_path) and a Redis
 * database of its own (BD_IT_UI_REDIS_DB, default 9).  SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bd_it.h"
#include "fake_model/fake_model_client.h"

#define KEY "ui-test-key-0123"
#define CSP                                                                                 \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "        \
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

static struct bd_it_proc g_proc;
static bool g_started;
static pid_t g_fake_pid;
static int g_fake_port;
static struct bd_it_scratch g_scr;   /* own schema and Redis db */
static pid_t g_node_pid;               /* node dashboard.mjs --serve */
static FILE *g_node_in, *g_node_out;

/* ---- helpers -------------------------------------------------------------------------------- */

static void get(const char *path, const char *const *headers, struct bd_it_resp *r)
{
    char url[256];

    snprintf(url, sizeof(url), "%s%s", g_proc.base, path);
    assert_int_equal(bd_it_http("GET", url, NULL, headers, r), 0);
}

static void expect_header(const struct bd_it_resp *r, const char *name, const char *want)
{
    char buf[512];
    const char *v = bd_it_resp_header(r, name, buf, sizeof(buf));

    if (v == NULL || strcmp(v, want) != 0)
        fail_msg("%s: want \"%s\", got \"%s\"", name, want, v ? v : "(absent)");
}

/* Start `node dashboard.mjs --serve` once (after `npm ci`, only when playwright-core is not
 * installed yet): one chromium for every scenario, since starting one costs seconds. Its
 * stdin takes scenario names, its stdout answers "ok <name>" / "fail <name>"; its stderr is
 * the test's. */
static void node_start(void)
{
    const char *src = bd_it_env("BD_SOURCE_DIR", ".");
    char cwd[512], dir[768], artifacts[600];
    int in[2], out[2];

    if (access("/usr/bin/chromium", X_OK) != 0)
        fail_msg("/usr/bin/chromium is missing: run scripts/deps.sh (it installs Debian's "
                 "chromium for this test)");
    assert_int_equal(bd_it_sh("cd '%s/test/ui' && { [ -f node_modules/playwright-core/"
                              "package.json ] || PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci "
                              "--no-audit --no-fund --loglevel=error; }", src), 0);
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    snprintf(artifacts, sizeof(artifacts), "%s/artifacts", cwd);
    snprintf(dir, sizeof(dir), "%s/test/ui", src);
    signal(SIGPIPE, SIG_IGN);                      /* a node that died fails its case */
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    fflush(NULL);
    g_node_pid = fork();
    assert_true(g_node_pid >= 0);
    if (g_node_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);          /* a crashed test leaves no node behind */
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]), close(in[1]), close(out[0]), close(out[1]);
        setenv("BATCHD_URL", g_proc.base, 1);
        setenv("BATCHD_KEY", KEY, 1);
        setenv("BD_UI_SLOW_MODEL", "uifake", 1);
        setenv("BD_UI_FAST_MODEL", "uihash", 1);
        setenv("BD_UI_DEAD_MODEL", "uidead", 1);
        setenv("BD_UI_ARTIFACTS", artifacts, 1);
        if (chdir(dir) == 0)
            execlp("node", "node", "dashboard.mjs", "--serve", (char *)NULL);
        perror("it_ui: node");
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    g_node_in = fdopen(in[1], "w");
    g_node_out = fdopen(out[0], "r");
    assert_non_null(g_node_in);
    assert_non_null(g_node_out);
}

/* Run one scenario of test/ui/dashboard.mjs; fails the test unless it passes (within 120 s). */
static void run_scenario(const char *name)
{
    char line[256], want[128];
    struct pollfd pfd;

    if (g_node_in == NULL)
        node_start();
    double t0 = bd_it_now();
    fprintf(g_node_in, "%s\n", name);
    fflush(g_node_in);
    pfd = (struct pollfd){ .fd = fileno(g_node_out), .events = POLLIN };
    if (poll(&pfd, 1, 120000) != 1 || fgets(line, sizeof(line), g_node_out) == NULL)
        fail_msg("dashboard.mjs gave no answer for %s", name);
    line[strcspn(line, "\n")] = '\0';
    fprintf(stderr, "it_ui: scenario %s took %.1f s\n", name, bd_it_now() - t0);
    snprintf(want, sizeof(want), "ok %s", name);
    if (strcmp(line, want) != 0)
        fail_msg("dashboard.mjs: %s (its stderr above says why)", line);
}

/* ---- cases ------------------------------------------------------------------------------------ */

/* /ui and its files need no key (the API does), come with the strict CSP, nosniff, their
 * content types and an ETag that answers 304; an unknown file is 404, / and /ui/ send to
 * /ui. */
static void ui_is_served_without_a_key_with_csp_and_etag(void **state)
{
    struct bd_it_resp r;
    char etag[64], inm[96];

    (void)state;
    get("/ui", NULL, &r);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "text/html; charset=utf-8");
    expect_header(&r, "Content-Security-Policy", CSP);
    expect_header(&r, "X-Content-Type-Options", "nosniff");
    expect_header(&r, "Cache-Control", "no-cache");
    assert_non_null(bd_it_resp_header(&r, "ETag", etag, sizeof(etag)));
    assert_non_null(strstr(r.body, "<script src=\"/ui/app.js\""));
    bd_it_resp_free(&r);

    snprintf(inm, sizeof(inm), "If-None-Match: %s", etag);
    const char *const cond[] = { inm, NULL };
    get("/ui", cond, &r);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.len, 0);
    bd_it_resp_free(&r);

    get("/ui/app.js", NULL, &r);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "text/javascript; charset=utf-8");
    expect_header(&r, "Content-Security-Policy", CSP);
    assert_non_null(strstr(r.body, "textContent"));
    bd_it_resp_free(&r);

    get("/ui/app.css", NULL, &r);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Content-Type", "text/css; charset=utf-8");
    bd_it_resp_free(&r);

    get("/ui/nope.js", NULL, &r);
    assert_int_equal(r.status, 404);
    bd_it_resp_free(&r);
    get("/ui/?status=failed", NULL, &r);               /* what people type: sent on */
    assert_int_equal(r.status, 301);
    expect_header(&r, "Location", "/ui?status=failed");
    bd_it_resp_free(&r);
    get("/ui/", NULL, &r);
    assert_int_equal(r.status, 301);
    expect_header(&r, "Location", "/ui");
    bd_it_resp_free(&r);
    get("/", NULL, &r);                                 /* the server's root: the same */
    assert_int_equal(r.status, 301);
    expect_header(&r, "Location", "/ui");
    bd_it_resp_free(&r);

    /* The API behind it still wants the key. */
    get("/api/v1/batch/queue/status", NULL, &r);
    assert_int_equal(r.status, 401);
    bd_it_resp_free(&r);
}

static void ui_asks_for_the_key_and_keeps_it_for_the_tab(void **state)
{
    (void)state;
    run_scenario("key");
}

static void ui_shows_a_submitted_job_and_its_progress_to_100(void **state)
{
    (void)state;
    run_scenario("progress");
}

static void ui_cancels_a_running_job_after_confirmation(void **state)
{
    (void)state;
    run_scenario("cancel");
}

static void ui_shows_failed_items_and_retries_a_failed_job(void **state)
{
    (void)state;
    run_scenario("retry");
}

static void ui_pauses_and_resumes_the_queue(void **state)
{
    (void)state;
    run_scenario("pause");
}

static void ui_renders_job_text_as_text(void **state)
{
    (void)state;
    run_scenario("xss");
}

static void ui_keeps_filters_and_search_in_the_url(void **state)
{
    (void)state;
    run_scenario("list");
}

/* ---- setup ------------------------------------------------------------------------------------ */

static int it_setup(void **state)
{
    const char *const fake_args[] = { "--dim", "16", "--latency-ms", "150", NULL };
    static const char *const env[] = { "BATCH_API_KEYS=" KEY, NULL };
    char yaml[1024];

    (void)state;
    if (bd_it_scratch_open(&g_scr, "itui", "BD_IT_UI_REDIS_DB", "9") != 0)
        return -1;
    if (fake_model_spawn(NULL, fake_args, &g_fake_pid, &g_fake_port) != 0)
        return -1;
    snprintf(yaml, sizeof(yaml),
             "jobs:\n  max_concurrent_jobs: 3\n  processing_interval: 0.1\n"
             "  progress_update_interval: 0.2\n"
             "models:\n"
             "  - name: uifake\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 16\n    concurrency: 1\n    max_inputs_per_request: 1\n"
             "    timeout: 10\n"
             "  - name: uihash\n    provider: hashing\n    dimensions: 16\n"
             "  - name: uidead\n    provider: ollama\n    base_url: http://127.0.0.1:%d\n"
             "    dimensions: 16\n    timeout: 2\n",
             g_fake_port, bd_it_free_port());
    if (bd_it_start(&g_proc, yaml, env) != 0)
        return -1;
    g_started = true;
    return 0;
}

static int it_teardown(void **state)
{
    (void)state;
    if (g_node_in != NULL) {
        fclose(g_node_in);                         /* end of its stdin: node closes chromium */
        fclose(g_node_out);
        waitpid(g_node_pid, NULL, 0);
    }
    if (g_started)
        bd_it_stop(&g_proc, SIGTERM, 20);
    if (g_fake_pid > 0)
        fake_model_stop(g_fake_pid);
    bd_it_scratch_close(&g_scr);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(ui_is_served_without_a_key_with_csp_and_etag),
        cmocka_unit_test(ui_asks_for_the_key_and_keeps_it_for_the_tab),
        cmocka_unit_test(ui_shows_a_submitted_job_and_its_progress_to_100),
        cmocka_unit_test(ui_cancels_a_running_job_after_confirmation),
        cmocka_unit_test(ui_shows_failed_items_and_retries_a_failed_job),
        cmocka_unit_test(ui_pauses_and_resumes_the_queue),
        cmocka_unit_test(ui_renders_job_text_as_text),
        cmocka_unit_test(ui_keeps_filters_and_search_in_the_url),
    };

    bd_it_apply_filter();
    return cmocka_run_group_tests_name("it_ui", tests, it_setup, it_teardown);
}
