/* it_notify.c -- batchd under systemd's notification protocol (src/svc_notify.c), end to
 * end: the test owns the unix datagram socket $NOTIFY_SOCKET names, as systemd would, and
 * reads what the real batchd sends there: STATUS= while PostgreSQL is missing and no
 * READY=1 until it is there, READY=1 once ready, WATCHDOG=1 at half of $WATCHDOG_USEC, and
 * STOPPING=1 on SIGTERM.  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "bd_it.h"

/* The socket systemd would own, and every datagram read from it so far (one per line
 * group, separated by "|" so the test can print what arrived). */
struct nt_sock {
    int fd;
    char path[108];
    char env[128];                       /* "NOTIFY_SOCKET=<path>" */
    char seen[16384];
    size_t seen_len;
};

static void nt_open(struct nt_sock *s, const char *name)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    memset(s, 0, sizeof(*s));
    snprintf(s->path, sizeof(s->path), "/tmp/bd_notify_%d_%s.sock", (int)getpid(), name);
    snprintf(s->env, sizeof(s->env), "NOTIFY_SOCKET=%s", s->path);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", s->path);
    unlink(s->path);
    s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void nt_close(struct nt_sock *s)
{
    close(s->fd);
    unlink(s->path);
}

/* Read datagrams until one holds the line `want` (exactly, as a whole line) or timeout_s
 * passes. Returns how many datagrams holding it arrived in that read (0: none). */
static int nt_wait_line(struct nt_sock *s, const char *want, double timeout_s)
{
    double deadline = bd_it_now() + timeout_s;
    char msg[4096];

    for (;;) {
        double left = deadline - bd_it_now();
        if (left <= 0)
            return 0;
        struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
        if (poll(&pfd, 1, (int)(left * 1000) + 1) <= 0)
            continue;
        ssize_t n = recv(s->fd, msg, sizeof(msg) - 1, 0);
        if (n < 0)
            continue;
        msg[n] = '\0';
        s->seen_len += (size_t)snprintf(s->seen + s->seen_len, sizeof(s->seen) - s->seen_len,
                                        "%s|", msg);
        if (s->seen_len >= sizeof(s->seen))
            s->seen_len = 0;             /* a long watchdog run: keep the tail only */
        for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n"))
            if (strcmp(line, want) == 0)
                return 1;
    }
}

/* Count the datagrams that are exactly `want` during seconds. */
static int nt_count(struct nt_sock *s, const char *want, double seconds)
{
    double end = bd_it_now() + seconds;
    int count = 0;

    while (bd_it_now() < end)
        count += nt_wait_line(s, want, end - bd_it_now());
    return count;
}

/* batchd with the test stack, systemd's variables set: READY=1 with the listening status
 * (bd_it_start returned once /readyz said 200, so it is queued already), WATCHDOG=1 every
 * 100 ms for a 200 ms watchdog, STOPPING=1 on SIGTERM, and a clean exit. */
static void test_notify_ready_watchdog_stopping_when_run_by_systemd(void **state)
{
    struct nt_sock s;
    struct bd_it_proc p;
    char ready_status[128];
    (void)state;

    nt_open(&s, "ready");
    const char *env[] = { s.env, "WATCHDOG_USEC=200000", NULL };
    assert_int_equal(bd_it_start(&p, NULL, env), 0);
    snprintf(ready_status, sizeof(ready_status), "STATUS=ready, listening on %s", p.base);
    if (!nt_wait_line(&s, "READY=1", 5.0))
        fail_msg("no READY=1; got: %s", s.seen);
    assert_non_null(strstr(s.seen, ready_status));
    int pings = nt_count(&s, "WATCHDOG=1", 1.0);
    if (pings < 6 || pings > 14)        /* 10 expected in 1 s; the machine is shared */
        fail_msg("%d WATCHDOG=1 in 1 s for WATCHDOG_USEC=200000 (every 100 ms expected)",
                 pings);
    assert_int_equal(kill(p.pid, SIGTERM), 0);
    if (!nt_wait_line(&s, "STOPPING=1", 5.0))
        fail_msg("no STOPPING=1 after SIGTERM; got: %s", s.seen);
    /* Signal 0: wait only (a second SIGTERM would meet the default action, since batchd
     * closed its signal handlers when it began to stop). */
    assert_int_equal(bd_it_stop(&p, 0, 15.0), 0);
    /* The notify timers were closed before the loop was: no handle left behind. */
    assert_int_equal(bd_it_sh("grep -q loop_close_busy '%s'", p.log_path), 1);
    nt_close(&s);
}

/* PostgreSQL's database does not exist yet: batchd runs (healthz) and says what it waits
 * for, and sends no READY=1; once the database appears it connects, migrates, and only
 * then sends READY=1. */
static void test_notify_status_until_postgres_then_ready(void **state)
{
    struct nt_sock s;
    struct bd_it_proc p;
    char db[64], url[512], env_url[600];
    (void)state;

    /* The test stack's URL with the database replaced by one that does not exist yet. */
    const char *base = bd_it_pg_url();
    const char *hostpart = strstr(base, "://");
    assert_non_null(hostpart);
    const char *slash = strchr(hostpart + 3, '/');
    assert_non_null(slash);
    const char *query = strchr(slash, '?');
    snprintf(db, sizeof(db), "bd_notify_%d", (int)getpid());
    snprintf(url, sizeof(url), "%.*s/%s%s", (int)(slash - base), base, db, query ? query : "");
    snprintf(env_url, sizeof(env_url), "BATCH_POSTGRES_URL=%s", url);
    (void)bd_it_psql_exec("DROP DATABASE IF EXISTS %s", db);

    nt_open(&s, "wait");
    const char *env[] = { s.env, env_url, NULL };
    setenv("BD_IT_WAIT", "healthz", 1);
    int rc = bd_it_start(&p, NULL, env);
    unsetenv("BD_IT_WAIT");
    assert_int_equal(rc, 0);
    if (!nt_wait_line(&s, "STATUS=waiting for PostgreSQL", 5.0))
        fail_msg("no STATUS=waiting for PostgreSQL; got: %s", s.seen);
    if (nt_wait_line(&s, "READY=1", 1.5))
        fail_msg("READY=1 without PostgreSQL; got: %s", s.seen);

    assert_int_equal(bd_it_psql_exec("CREATE DATABASE %s", db), 0);
    /* The pool retries with a backoff of at most 5 s, then the schema is migrated. */
    if (!nt_wait_line(&s, "READY=1", 20.0))
        fail_msg("no READY=1 after the database appeared; got: %s", s.seen);
    json_t *j = bd_it_get_ok(&p, "/readyz");
    json_decref(j);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 15.0), 0);
    (void)bd_it_psql_exec("DROP DATABASE IF EXISTS %s", db);
    nt_close(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_notify_ready_watchdog_stopping_when_run_by_systemd,
                                  bd_it_teardown),
        cmocka_unit_test_teardown(test_notify_status_until_postgres_then_ready,
                                  bd_it_teardown),
    };
    bd_it_apply_filter();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
