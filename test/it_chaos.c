/* it_chaos.c -- random faults while jobs run: two batchd processes share one Redis and one
 * PostgreSQL (a stack of this test's own, never the shared test stack: it restarts both),
 * mixed bulk_insert and bulk_embed jobs (the embed ones through the fake model, which
 * answers 500, 429, slowly, or never -- batchd's timeout then drops the connection), and
 * meanwhile, one after another: SIGKILL of a batchd and a restart, SIGSTOP of a batchd for
 * longer than its lease then SIGCONT, Redis restarted empty (no persistence) or flushed,
 * PostgreSQL restarted (fast, or immediate: SIGQUIT to the postmaster, crash recovery).
 *
 * Afterwards, from PostgreSQL: every job is terminal (none stuck), and per job processed +
 * failed = total, the rows of its collection = processed, each item index stored at most
 * once and under the id it was given, every index either stored or recorded as failed (none
 * lost, none both), the batches' counters add up to the job's, and an item failed only
 * because the model kept failing it (a store error is a lost item too); the API's status
 * agrees; each submit (retried with an Idempotency-Key until answered) made exactly one job.
 *
 * Knobs (environment): BD_CHAOS_FAULTS (default 22; `make chaos` runs 200), BD_CHAOS_SEED
 * (default: from the clock; printed: a failure replays with the same fault sequence, the
 * timing and so the jobs differ), BD_CHAOS_REDIS_PORT / BD_CHAOS_PG_PORT (16502 / 15542), and
 * BD_CHAOS_KEEP=1 keeps the stack's data and batchd's logs after a passing run.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bd_it.h"
#include "batchd/buf.h"
#include "fake_model/fake_model_client.h"

enum { CH_PROCS = 2, CH_LEASE_S = 3, CH_ACTIVE_JOBS = 5, CH_MAX_JOBS = 4096,
       CH_MAX_LOGS = 1024 };

enum ch_fault { CH_KILL, CH_STOP, CH_REDIS, CH_PG, CH_FAULT_KINDS };
static const unsigned ch_fault_weights[CH_FAULT_KINDS] = { 35, 25, 20, 20 };

enum ch_state { CH_DOWN, CH_UP, CH_STOPPED };

struct ch_job {
    char key[64];                /* Idempotency-Key */
    char *body;                  /* until the submit is answered */
    char *id;                    /* the job id once answered 202/200 */
    bool is_embed;
    unsigned items;
};

struct ch {
    uint64_t rng, rng_jobs;
    unsigned long long seed;
    unsigned faults;
    int redis_port, pg_port;
    char redis_url[128], pg_url[160];
    char src[512];
    bool is_stack_up;

    struct bd_it_proc proc[CH_PROCS];
    enum ch_state state[CH_PROCS];
    unsigned starts;
    char *logs[CH_MAX_LOGS];     /* every batchd log and config file, removed after a pass */
    unsigned logs_count;
    unsigned logs_first;         /* the first of the random run's */

    pid_t fake_pid;
    int fake_port;
    struct bd_buf yaml;

    struct ch_job jobs[CH_MAX_JOBS];
    unsigned jobs_count;
    bool is_submitting;
    unsigned tests_run, tests_passed;

    unsigned injected[CH_FAULT_KINDS];
    unsigned redis_flushes, pg_immediate, while_running, submit_retries;
    struct bd_buf fault_log;     /* one line per fault, printed when the test fails */
    double t0;
};

static struct ch ch;

/* ---- randomness (splitmix64) ------------------------------------------------------------
 * Two streams from the seed: the faults' (kind, victim, durations, gaps), which the seed
 * alone decides, so BD_CHAOS_SEED replays the same fault sequence; and the jobs' (sizes,
 * which process a submit goes to), drawn as often as the timing asks. */

static uint64_t ch_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned ch_between(unsigned lo, unsigned hi)   /* a fault's: lo..hi inclusive */
{
    return lo + (unsigned)(ch_rand(&ch.rng) % (uint64_t)(hi - lo + 1));
}

static unsigned ch_job_between(unsigned lo, unsigned hi)
{
    return lo + (unsigned)(ch_rand(&ch.rng_jobs) % (uint64_t)(hi - lo + 1));
}

/* ---- the stack of this test (scripts/stack.sh, stack name "chaos") ---------------------- */

static int ch_stack(const char *cmd)
{
    return bd_it_sh("BD_REDIS_PORT=%d BD_PG_PORT=%d '%s/scripts/stack.sh' %s chaos "
                    ">/dev/null 2>&1", ch.redis_port, ch.pg_port, ch.src, cmd);
}

/* A number from SQL on the chaos stack, quietly (PostgreSQL may be restarting): -1 when
 * psql failed. Only for statements without shell-special characters. */
static long ch_sql_long(const char *sql)
{
    char out[64];
    if (bd_it_sh_out(out, sizeof(out), "PGCONNECT_TIMEOUT=3 psql '%s' -X -A -t -q -c \"%s\" "
                     "2>/dev/null", ch.pg_url, sql) != 0 || out[0] == '\0')
        return -1;
    return strtol(out, NULL, 10);
}

/* ---- batchd ---------------------------------------------------------------------------- */

static void ch_keep_paths(const struct bd_it_proc *p)
{
    if (ch.logs_count + 2 <= CH_MAX_LOGS) {
        ch.logs[ch.logs_count++] = strdup(p->log_path);
        ch.logs[ch.logs_count++] = strdup(p->config_path);
    }
}

/* Start batchd i; a start may meet a store that is still coming back, so try a few times. */
static void ch_start(unsigned i)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = bd_it_start(&ch.proc[i], ch.yaml.data, NULL);
        ch_keep_paths(&ch.proc[i]);
        ch.starts++;
        if (rc == 0) {
            ch.state[i] = CH_UP;
            return;
        }
        bd_it_sleep_ms(1000);
    }
    fail_msg("chaos: batchd %u did not start (seed %llu)", i, ch.seed);
}

static struct bd_it_proc *ch_up_proc(void)
{
    unsigned first = ch_job_between(0, CH_PROCS - 1);
    for (unsigned k = 0; k < CH_PROCS; k++) {
        unsigned i = (first + k) % CH_PROCS;
        if (ch.state[i] == CH_UP)
            return &ch.proc[i];
    }
    return NULL;
}

/* ---- jobs ------------------------------------------------------------------------------- */

/* A new job: bulk_insert of 2,000..8,000 vectors whose first component is the item's index
 * and whose id is "v<index>", or bulk_embed of 200..1,200 texts through the fake model
 * (no ids: batchd gives "<job_id>:<index>"). Each job has a collection of its own. */
static void ch_new_job(void)
{
    if (ch.jobs_count == CH_MAX_JOBS)
        return;
    unsigned n = ch.jobs_count;
    struct ch_job *j = &ch.jobs[ch.jobs_count++];
    struct bd_buf b;

    j->is_embed = ch_job_between(0, 99) < 45;
    snprintf(j->key, sizeof(j->key), "chaos-%llu-%u", ch.seed, n);
    bd_buf_init(&b);
    if (j->is_embed) {
        static const unsigned sizes[] = { 16, 32, 64, 100 };
        j->items = ch_job_between(200, 1200);
        bd_buf_printf(&b, "{\"operation\":\"bulk_embed\",\"model\":\"fake\",\"collection\":"
                          "\"chaos_%u\",\"options\":{\"batch_size\":%u},\"data\":[",
                      n, sizes[ch_job_between(0, 3)]);
        /* Texts unique to this run and job: the embedding cache must not answer. */
        for (unsigned i = 0; i < j->items; i++)
            bd_buf_printf(&b, "%s{\"text\":\"chaos %llu %d job %u text %u\"}", i ? "," : "",
                          ch.seed, (int)getpid(), n, i);
    } else {
        static const unsigned sizes[] = { 50, 100, 250, 500 };
        j->items = ch_job_between(2000, 8000);
        bd_buf_printf(&b, "{\"operation\":\"bulk_insert\",\"collection\":\"chaos_%u\","
                          "\"options\":{\"batch_size\":%u},\"data\":[",
                      n, sizes[ch_job_between(0, 3)]);
        for (unsigned i = 0; i < j->items; i++) {
            bd_buf_printf(&b, "%s{\"id\":\"v%u\",\"embedding\":[%u", i ? "," : "", i, i);
            for (unsigned k = 1; k < 16; k++)
                bd_buf_printf(&b, ",%.3f", (double)((i * 7 + k) % 101) / 101.0);
            bd_buf_printf(&b, "],\"metadata\":{\"n\":%u}}", i);
        }
    }
    bd_buf_puts(&b, "]}");
    j->body = bd_buf_steal(&b, NULL);
}

/* Send each unanswered submit once more (same Idempotency-Key) to a live process. A submit
 * may meet a store that is down (503), a process that dies under it (no answer): it stays
 * pending and goes again at the next tick. */
static void ch_submit_pending(void)
{
    for (unsigned n = 0; n < ch.jobs_count; n++) {
        struct ch_job *j = &ch.jobs[n];
        if (j->id != NULL)
            continue;
        struct bd_it_proc *p = ch_up_proc();
        if (p == NULL)
            return;
        char url[128], hdr[128];
        struct bd_it_resp r;
        snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", p->base);
        snprintf(hdr, sizeof(hdr), "Idempotency-Key: %s", j->key);
        const char *const headers[] = { hdr, NULL };
        if (bd_it_http_ex("POST", url, j->body, headers, 15000, &r) == 0) {
            if (r.status == 202 || r.status == 200) {
                json_t *o = json_loads(r.body, 0, NULL);
                const char *id = json_string_value(json_object_get(o, "job_id"));
                assert_non_null(id);
                j->id = strdup(id);
                json_decref(o);
                free(j->body);
                j->body = NULL;
            } else if (r.status != 503 && r.status != 429 && r.status != 409) {
                fail_msg("chaos: submit %s answered %ld: %s", j->key, r.status, r.body);
            }
        }
        if (j->id == NULL)
            ch.submit_retries++;
        bd_it_resp_free(&r);
    }
}

/* Between faults: keep CH_ACTIVE_JOBS jobs queued or processing (while submitting) and
 * retry unanswered submits. */
static void ch_tick(void)
{
    if (ch.is_submitting) {
        long active = ch_sql_long("SELECT count(*) FROM jobs WHERE status IN "
                                  "('queued', 'processing')");
        unsigned pending = 0;
        for (unsigned n = 0; n < ch.jobs_count; n++)
            pending += ch.jobs[n].id == NULL;
        if (active >= 0)
            for (long k = active + pending; k < CH_ACTIVE_JOBS; k++)
                ch_new_job();
    }
    ch_submit_pending();
}

/* Tick for ms milliseconds. */
static void ch_run_for(unsigned ms)
{
    double until = bd_it_now() + ms / 1000.0;
    do {
        ch_tick();
        double left = until - bd_it_now();
        if (left > 0)
            bd_it_sleep_ms(left > 0.25 ? 250 : (unsigned)(left * 1000) + 1);
    } while (bd_it_now() < until);
}

/* ---- faults ----------------------------------------------------------------------------- */

static void ch_log_fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ch_log_fault(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    bd_buf_printf(&ch.fault_log, "  %7.1fs %s\n", bd_it_now() - ch.t0, line);
}

/* SIGKILL a live batchd, leave it down 0.2..3 s (its jobs wait for their lease, or for a
 * peer's reaper), start it again. */
static void ch_fault_kill(void)
{
    unsigned i = ch_between(0, CH_PROCS - 1);
    unsigned down_ms = ch_between(200, 3000);
    ch_log_fault("kill batchd %u (pid %d), down %u ms", i, (int)ch.proc[i].pid, down_ms);
    assert_int_equal(bd_it_stop(&ch.proc[i], SIGKILL, 5), 128 + SIGKILL);
    ch.state[i] = CH_DOWN;
    ch_run_for(down_ms);
    ch_start(i);
}

/* SIGSTOP a batchd for longer than its lease: a peer takes its jobs over; after SIGCONT the
 * old owner's writes must not count twice. */
static void ch_fault_stop(void)
{
    unsigned i = ch_between(0, CH_PROCS - 1);
    unsigned stop_ms = CH_LEASE_S * 1000 + ch_between(1000, 3000);
    ch_log_fault("stop batchd %u (pid %d) for %u ms", i, (int)ch.proc[i].pid, stop_ms);
    assert_int_equal(kill(ch.proc[i].pid, SIGSTOP), 0);
    ch.state[i] = CH_STOPPED;
    ch_run_for(stop_ms);
    assert_int_equal(kill(ch.proc[i].pid, SIGCONT), 0);
    ch.state[i] = CH_UP;
}

/* Redis loses everything: restarted without persistence, or flushed. */
static void ch_fault_redis(void)
{
    if (ch_between(0, 2) == 0) {
        ch_log_fault("redis FLUSHALL");
        ch.redis_flushes++;
        assert_int_equal(bd_it_sh("redis-cli -p %d FLUSHALL >/dev/null 2>&1", ch.redis_port), 0);
    } else {
        ch_log_fault("redis restart (empty)");
        assert_int_equal(ch_stack("restart-redis"), 0);
    }
}

/* PostgreSQL goes away and comes back with its data: a fast restart (sessions ended
 * cleanly), or an immediate stop (SIGQUIT to the postmaster: no checkpoint, crash recovery
 * at the start; engine commits not yet flushed may be lost, their batches must run again). */
static void ch_fault_pg(void)
{
    if (ch_between(0, 1) == 0) {
        ch_log_fault("postgresql restart (fast)");
        assert_int_equal(ch_stack("restart-pg"), 0);
        return;
    }
    ch_log_fault("postgresql stop (immediate) + start");
    ch.pg_immediate++;
    assert_int_equal(bd_it_sh(
        "d=$(PGCONNECT_TIMEOUT=5 psql '%s' -X -A -t -q -c 'SHOW data_directory') && "
        "pid=$(head -n 1 \"$d/postmaster.pid\") && kill -QUIT \"$pid\" && "
        "for i in $(seq 300); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; "
        "! kill -0 \"$pid\" 2>/dev/null", ch.pg_url), 0);
    assert_int_equal(ch_stack("start"), 0);
}

static void ch_inject(enum ch_fault f)
{
    long processing = ch_sql_long("SELECT count(*) FROM jobs WHERE status = 'processing'");
    if (processing > 0)
        ch.while_running++;
    ch.injected[f]++;
    switch (f) {
    case CH_KILL:  ch_fault_kill(); break;
    case CH_STOP:  ch_fault_stop(); break;
    case CH_REDIS: ch_fault_redis(); break;
    case CH_PG:    ch_fault_pg(); break;
    default:       break;
    }
}

static enum ch_fault ch_pick(unsigned n, const enum ch_fault *first)
{
    if (n < CH_FAULT_KINDS)
        return first[n];                  /* each kind at least once, in a random order */
    unsigned total = 0, r;
    for (unsigned k = 0; k < CH_FAULT_KINDS; k++)
        total += ch_fault_weights[k];
    r = ch_between(0, total - 1);
    for (unsigned k = 0; k < CH_FAULT_KINDS; k++) {
        if (r < ch_fault_weights[k])
            return (enum ch_fault)k;
        r -= ch_fault_weights[k];
    }
    return CH_KILL;
}

/* ---- the checks ------------------------------------------------------------------------- */

/* The jobs (and rows) of the random run: other cases of this suite use other collections. */
#define CH_OURS "collection ~ '^chaos_[0-9]+$'"

static void ch_print_failure_context(void)
{
    fprintf(stderr, "chaos: seed %llu (BD_CHAOS_SEED=%llu replays the fault sequence); "
                    "faults:\n%s", ch.seed, ch.seed, ch.fault_log.data ? ch.fault_log.data : "");
    fprintf(stderr, "chaos: batchd logs and configs kept:");
    for (unsigned k = 0; k < ch.logs_count; k += 2)
        fprintf(stderr, " %s", ch.logs[k]);
    fprintf(stderr, "\n");
}

/* Lines of the random run's batchd logs that contain needle. */
static unsigned ch_count_log_lines(const char *needle)
{
    unsigned n = 0;
    char line[4096];
    for (unsigned k = ch.logs_first; k < ch.logs_count; k += 2) {
        FILE *f = fopen(ch.logs[k], "r");
        if (f == NULL)
            continue;
        while (fgets(line, sizeof(line), f))
            n += strstr(line, needle) != NULL;
        fclose(f);
    }
    return n;
}

/* Rows (one JSON object per job) where an invariant does not hold; "[]" when all hold. */
static const char ch_check_sql[] =
    "WITH j AS (SELECT id, status, operation, collection, total_items, processed_items,\n"
    "                  failed_items FROM jobs),\n"
    " v AS (SELECT collection, count(*) AS n_rows, count(DISTINCT item_index) AS n_idx,\n"
    "              count(*) FILTER (WHERE item_index IS NULL) AS n_null_idx\n"
    "       FROM vectors GROUP BY collection),\n"
    " badid AS (SELECT j.id, count(*) AS n FROM j JOIN vectors x ON x.collection = j.collection\n"
    "           WHERE x.id <> CASE WHEN j.operation = 'bulk_insert' THEN 'v' || x.item_index\n"
    "                              ELSE j.id || ':' || x.item_index END\n"
    "              OR x.job_id IS DISTINCT FROM j.id\n"
    "              OR (j.operation = 'bulk_insert' AND x.embedding[1] <> x.item_index)\n"
    "           GROUP BY j.id),\n"
    " idx AS (SELECT j.id, count(DISTINCT i) AS n FROM j,\n"
    "         LATERAL (SELECT item_index AS i FROM vectors x WHERE x.collection = j.collection\n"
    "                  UNION ALL SELECT item_index FROM job_item_errors e\n"
    "                  WHERE e.job_id = j.id) u\n"
    "         WHERE i >= 0 AND i < j.total_items GROUP BY j.id),\n"
    " both_ AS (SELECT e.job_id AS id, count(*) AS n FROM job_item_errors e JOIN jobs jj\n"
    "           ON jj.id = e.job_id JOIN vectors x ON x.collection = jj.collection\n"
    "           AND x.item_index = e.item_index GROUP BY e.job_id),\n"
    " b AS (SELECT job_id AS id, sum(processed) AS processed, sum(failed) AS failed,\n"
    "              count(*) FILTER (WHERE status NOT IN ('done', 'failed')) AS open\n"
    "       FROM job_batches GROUP BY job_id),\n"
    " r AS (SELECT j.*, coalesce(v.n_rows, 0) AS n_rows, coalesce(v.n_idx, 0) AS n_idx,\n"
    "              coalesce(v.n_null_idx, 0) AS n_null_idx, coalesce(badid.n, 0) AS bad_ids,\n"
    "              coalesce(idx.n, 0) AS covered, coalesce(both_.n, 0) AS stored_and_failed,\n"
    "              b.processed AS b_processed, b.failed AS b_failed,\n"
    "              coalesce(b.open, 0) AS open_batches\n"
    "       FROM j LEFT JOIN v USING (collection) LEFT JOIN badid USING (id)\n"
    "       LEFT JOIN idx USING (id) LEFT JOIN both_ USING (id) LEFT JOIN b USING (id))\n"
    "SELECT coalesce(json_agg(r), '[]') FROM r\n"
    "WHERE status NOT IN ('completed', 'failed')\n"
    "   OR (status = 'failed' AND failed_items <> total_items)\n"
    "   OR processed_items + failed_items <> total_items\n"
    "   OR n_rows <> processed_items OR n_idx <> n_rows OR n_null_idx <> 0 OR bad_ids <> 0\n"
    "   OR covered <> total_items OR stored_and_failed <> 0\n"
    "   OR b_processed IS DISTINCT FROM processed_items\n"
    "   OR b_failed IS DISTINCT FROM failed_items OR open_batches <> 0;\n";

/* The API's view of each job agrees with PostgreSQL's (no stale status after the stores
 * restarted). */
static void ch_check_api(unsigned *mismatches)
{
    struct bd_it_proc *p = &ch.proc[0];
    for (unsigned n = 0; n < ch.jobs_count; n++) {
        const struct ch_job *j = &ch.jobs[n];
        char path[256], want[128];
        long st = 0;
        snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", j->id);
        json_t *o = bd_it_json(p, "GET", path, NULL, &st);
        bd_it_psql_str(want, sizeof(want), "SELECT status || ' ' || processed_items || ' ' || "
                       "failed_items FROM jobs WHERE id = '%s'", j->id);
        char got[128];
        json_t *prog = json_object_get(o, "progress");
        snprintf(got, sizeof(got), "%s %lld %lld",
                 json_is_string(json_object_get(o, "status"))
                     ? json_string_value(json_object_get(o, "status")) : "?",
                 (long long)json_integer_value(json_object_get(prog, "processed_items")),
                 (long long)json_integer_value(json_object_get(prog, "failed_items")));
        if (st != 200 || strcmp(got, want) != 0) {
            fprintf(stderr, "chaos: job %s: API says %ld \"%s\", PostgreSQL \"%s\"\n", j->id, st,
                    got, want);
            (*mismatches)++;
        }
        json_decref(o);
    }
}

/* ---- the test --------------------------------------------------------------------------- */

static void test_chaos_keeps_every_item_exactly_once_when_faults_hit_running_jobs(void **state)
{
    (void)state;
    enum ch_fault first[CH_FAULT_KINDS];

    ch.tests_run++;
    ch.logs_first = ch.logs_count;
    ch.t0 = bd_it_now();
    for (unsigned i = 0; i < CH_PROCS; i++)
        ch_start(i);
    for (unsigned k = 0; k < CH_FAULT_KINDS; k++)
        first[k] = (enum ch_fault)k;
    for (unsigned k = CH_FAULT_KINDS - 1; k > 0; k--) {
        unsigned r = ch_between(0, k);
        enum ch_fault t = first[k];
        first[k] = first[r];
        first[r] = t;
    }

    ch.is_submitting = true;
    ch_run_for(3000);                     /* jobs under way before the first fault */
    for (unsigned n = 0; n < ch.faults; n++) {
        ch_inject(ch_pick(n, first));
        ch_run_for(ch_between(300, 2000));
        if ((n + 1) % 25 == 0)
            fprintf(stderr, "chaos: %u faults, %u jobs, %.0f s\n", n + 1, ch.jobs_count,
                    bd_it_now() - ch.t0);
    }
    ch.is_submitting = false;
    double faults_done = bd_it_now();

    /* Drain: every submit answered, every job terminal. */
    double deadline = bd_it_now() + 300;
    long open = -1;
    for (;;) {
        ch_tick();
        unsigned pending = 0;
        for (unsigned n = 0; n < ch.jobs_count; n++)
            pending += ch.jobs[n].id == NULL;
        open = ch_sql_long("SELECT count(*) FROM jobs WHERE status NOT IN "
                           "('completed', 'failed', 'cancelled')");
        if (pending == 0 && open == 0)
            break;
        if (bd_it_now() > deadline) {
            ch_print_failure_context();
            char *rows = bd_it_psql_url(ch.pg_url, NULL,
                "SELECT id, status, lease_owner, next_batch, processed_items, failed_items, "
                "total_items FROM jobs WHERE status NOT IN ('completed', 'failed', "
                "'cancelled');");
            fail_msg("chaos: %u submits unanswered, %ld jobs not terminal 300 s after the "
                     "last fault:\n%s", pending, open, rows ? rows : "(psql failed)");
        }
        bd_it_sleep_ms(250);
    }
    double drained = bd_it_now();

    /* The invariants, from PostgreSQL. */
    char *bad = bd_it_psql_url(ch.pg_url, NULL, "%s", ch_check_sql);
    assert_non_null(bad);
    if (strcmp(bad, "[]\n") != 0 && strcmp(bad, "[]") != 0) {
        ch_print_failure_context();
        fail_msg("chaos: invariants broken for these jobs:\n%s", bad);
    }
    free(bad);
    long db_jobs = bd_it_psql_long("SELECT count(*) FROM jobs WHERE " CH_OURS);
    if (db_jobs != (long)ch.jobs_count) {
        ch_print_failure_context();
        fail_msg("chaos: %u submits made %ld jobs", ch.jobs_count, db_jobs);
    }
    unsigned mismatches = 0;
    ch_check_api(&mismatches);
    if (mismatches) {
        ch_print_failure_context();
        fail_msg("chaos: the API's status differs from PostgreSQL's for %u jobs", mismatches);
    }

    long items = bd_it_psql_long("SELECT coalesce(sum(total_items), 0) FROM jobs WHERE "
                                 CH_OURS);
    long processed = bd_it_psql_long("SELECT coalesce(sum(processed_items), 0) FROM jobs "
                                     "WHERE " CH_OURS);
    long failed = bd_it_psql_long("SELECT coalesce(sum(failed_items), 0) FROM jobs WHERE "
                                  CH_OURS);
    long rows = bd_it_psql_long("SELECT count(*) FROM vectors WHERE " CH_OURS);
    long completed = bd_it_psql_long("SELECT count(*) FROM jobs WHERE status = 'completed' "
                                     "AND " CH_OURS);
    long embeds = bd_it_psql_long("SELECT count(*) FROM jobs WHERE operation = 'bulk_embed' "
                                  "AND " CH_OURS);
    unsigned total_faults = 0;
    for (unsigned k = 0; k < CH_FAULT_KINDS; k++)
        total_faults += ch.injected[k];
    fprintf(stderr,
            "chaos: seed %llu: %u faults (kill %u, stop %u, redis %u [%u flushes], pg %u "
            "[%u immediate]), %u while jobs were processing; %u batchd starts; %ld jobs "
            "(%ld bulk_insert, %ld bulk_embed; %ld completed, %ld failed); %ld items "
            "(%ld processed, %ld failed), %ld rows; lost 0, duplicates 0; %u submit retries, "
            "%u lost checkpoints run again; "
            "model: %lld requests, %lld errors 500, %lld 429, %lld hangs, %lld disconnects; "
            "wall %.0f s (faults %.0f s, drain %.0f s)\n",
            ch.seed, total_faults, ch.injected[CH_KILL], ch.injected[CH_STOP],
            ch.injected[CH_REDIS], ch.redis_flushes, ch.injected[CH_PG], ch.pg_immediate,
            ch.while_running, ch.starts, db_jobs, db_jobs - embeds, embeds, completed,
            db_jobs - completed, items, processed, failed, rows, ch.submit_retries,
            ch_count_log_lines("event=finish_deferred"),
            bd_it_fake_stat(ch.fake_port, "requests_total"),
            bd_it_fake_stat(ch.fake_port, "errors_500"),
            bd_it_fake_stat(ch.fake_port, "rate_limited_429"),
            bd_it_fake_stat(ch.fake_port, "hangs"), bd_it_fake_stat(ch.fake_port, "disconnects"),
            drained - ch.t0, faults_done - ch.t0, drained - faults_done);
    if (failed > 0) {
        /* Why items failed (allowed: a batch whose retries ran out), for the report. */
        char *why = bd_it_psql_url(ch.pg_url, NULL,
            "SELECT j.operation || ' ' || j.status || ' ' || coalesce(j.error_code, '-') || "
            "': ' || e.code || ' x' || count(*) || ' (' || min(e.message) || ')' "
            "FROM job_item_errors e JOIN jobs j ON j.id = e.job_id WHERE j.%s "
            "GROUP BY j.operation, j.status, j.error_code, e.code ORDER BY 1;", CH_OURS);
        fprintf(stderr, "chaos: failed items:\n%s", why ? why : "(psql failed)\n");
        free(why);
    }
    /* Items may fail only because the model kept failing them (their batch's retries ran
     * out): a restart of a store or of batchd must cost none ("nothing is lost"). */
    long store_failed = bd_it_psql_long(
        "SELECT count(*) FROM job_item_errors e JOIN jobs j ON j.id = e.job_id WHERE j.%s "
        "AND e.code NOT IN ('processing_error', 'timeout_error', 'connection_error', "
        "'rate_limited')", CH_OURS);
    if (store_failed != 0) {
        ch_print_failure_context();
        fail_msg("chaos: %ld items failed for another reason than the model", store_failed);
    }
    assert_int_equal(rows, processed);
    assert_int_equal(processed + failed, items);
    /* Faults landed while jobs ran, not into an idle system. */
    if (ch.while_running * 2 < total_faults) {
        ch_print_failure_context();
        fail_msg("chaos: only %u of %u faults hit while a job was processing", ch.while_running,
                 total_faults);
    }

    for (unsigned i = 0; i < CH_PROCS; i++) {
        assert_int_equal(bd_it_stop(&ch.proc[i], SIGTERM, 20), 0);
        ch.state[i] = CH_DOWN;
    }
    ch.tests_passed++;
}

/* What a checkpoint lost in a PostgreSQL crash looks like (the engine commits with
 * synchronous_commit off; seen in this suite's random runs after an immediate stop): batch 0
 * was written and the job went on, then the commit is undone -- rows gone, the batch
 * pending, the counters back. The job must not end 'completed' with those items neither
 * stored nor failed: the batch runs again. The model answers after 300 ms, so the job is
 * still running when the commit is undone. */
static void test_chaos_reruns_batch_when_its_checkpoint_is_lost(void **state)
{
    (void)state;
    ch.tests_run++;
    const char *const fake_args[] = { "--dim", "16", "--latency-ms", "300", NULL };
    pid_t fake_pid = 0;
    int fake_port = 0;
    struct bd_it_proc p;
    struct bd_buf yaml, body;
    long st = 0;

    assert_int_equal(fake_model_spawn(NULL, fake_args, &fake_pid, &fake_port), 0);
    bd_buf_init(&yaml);
    bd_buf_printf(&yaml, "jobs:\n  max_concurrent_jobs: 1\n  processing_interval: 0.1\n"
                         "  lease: 5\n  reaper_interval: 0.5\n"
                         "models:\n  - name: slow\n    provider: ollama\n"
                         "    base_url: http://127.0.0.1:%d\n    dimensions: 16\n"
                         "    concurrency: 1\n    timeout: 10\n", fake_port);
    assert_int_equal(bd_it_start(&p, yaml.data, NULL), 0);
    ch_keep_paths(&p);
    bd_buf_free(&yaml);
    bd_buf_init(&body);
    bd_buf_printf(&body, "{\"operation\":\"bulk_embed\",\"model\":\"slow\",\"collection\":"
                         "\"lost_checkpoint\",\"options\":{\"batch_size\":4},\"data\":[");
    for (unsigned i = 0; i < 40; i++)
        bd_buf_printf(&body, "%s{\"text\":\"lost checkpoint %llu %u\"}", i ? "," : "",
                      ch.seed, i);
    bd_buf_puts(&body, "]}");
    char *id = bd_it_submit(&p, body.data, &st);
    bd_buf_free(&body);
    assert_int_equal(st, 202);

    double deadline = bd_it_now() + 30;
    while (bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                           "batch_no = 0 AND status = 'done'", id) != 1) {
        assert_true(bd_it_now() < deadline);
        bd_it_sleep_ms(20);
    }
    assert_int_equal(bd_it_psql_exec(
        "BEGIN;\n"
        "DELETE FROM vectors WHERE job_id = '%s' AND item_index < 4;\n"
        "UPDATE job_batches SET status = 'pending', processed = 0, failed = 0, attempts = 0 "
        "WHERE job_id = '%s' AND batch_no = 0;\n"
        "UPDATE jobs SET processed_items = processed_items - 4, next_batch = next_batch - 1 "
        "WHERE id = '%s' AND status = 'processing';\n"
        "COMMIT;\n", id, id, id), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s' AND status = "
                                     "'processing'", id), 1);

    json_decref(bd_it_expect_status(&p, id, "completed", 60));
    assert_int_equal(bd_it_psql_long("SELECT processed_items FROM jobs WHERE id = '%s'", id), 40);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE job_id = '%s'", id), 40);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                                     "status <> 'done'", id), 0);
    free(id);
    assert_int_equal(bd_it_stop(&p, SIGTERM, 20), 0);
    assert_int_equal(fake_model_stop(fake_pid), 0);
    ch.tests_passed++;
}

/* ---- setup and teardown ----------------------------------------------------------------- */

static void ch_stop_stack(void)
{
    if (!ch.is_stack_up)
        return;
    ch.is_stack_up = false;
    ch_stack("stop");
}

static void ch_on_signal(int sig)
{
    bd_it_kill_all();
    ch_stop_stack();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int ch_setup(void **state)
{
    (void)state;
    const char *seed = getenv("BD_CHAOS_SEED");
    ch.seed = seed && *seed ? strtoull(seed, NULL, 10)
                            : (unsigned long long)time(NULL) * 1000003ULL + (unsigned)getpid();
    ch.rng = ch.seed;
    ch.rng_jobs = ch.seed ^ 0x6a6f6273ULL;
    ch.faults = (unsigned)atoi(bd_it_env("BD_CHAOS_FAULTS", "22"));
    ch.redis_port = atoi(bd_it_env("BD_CHAOS_REDIS_PORT", "16502"));
    ch.pg_port = atoi(bd_it_env("BD_CHAOS_PG_PORT", "15542"));
    snprintf(ch.src, sizeof(ch.src), "%s", bd_it_env("BD_SOURCE_DIR", "."));
    snprintf(ch.redis_url, sizeof(ch.redis_url), "redis://127.0.0.1:%d/0", ch.redis_port);
    snprintf(ch.pg_url, sizeof(ch.pg_url), "postgresql://batchd@127.0.0.1:%d/batchd",
             ch.pg_port);
    bd_buf_init(&ch.fault_log);
    fprintf(stderr, "chaos: seed %llu, %u faults, stack redis %d postgresql %d\n", ch.seed,
            ch.faults, ch.redis_port, ch.pg_port);

    /* bd_it_start writes these URLs into batchd's config; bd_it_psql_* use the second. */
    setenv("BATCH_REDIS_URL", ch.redis_url, 1);
    setenv("BATCH_POSTGRES_URL", ch.pg_url, 1);
    signal(SIGTERM, ch_on_signal);
    signal(SIGINT, ch_on_signal);
    atexit(ch_stop_stack);
    ch_stack("wipe");                     /* a stack a killed run left behind */
    ch.is_stack_up = true;
    if (ch_stack("start") != 0) {
        fprintf(stderr, "chaos: the stack did not start\n");
        return -1;
    }

    const char *const fake_args[] = {
        "--dim", "16", "--latency-ms", "5", "--jitter-ms", "60", "--fail-rate", "0.08",
        "--rate-429", "0.03", "--retry-after", "1", "--hang-rate", "0.01", NULL };
    if (fake_model_spawn(NULL, fake_args, &ch.fake_pid, &ch.fake_port) != 0)
        return -1;
    bd_buf_init(&ch.yaml);
    bd_buf_printf(&ch.yaml,
                  "jobs:\n"
                  "  max_concurrent_jobs: 2\n"
                  "  processing_interval: 0.1\n"
                  "  retry_attempts: 4\n"
                  "  retry_delay: 0.1\n"
                  "  lease: %d\n"
                  "  reaper_interval: 0.5\n"
                  "models:\n"
                  "  - name: fake\n"
                  "    provider: ollama\n"
                  "    base_url: http://127.0.0.1:%d\n"
                  "    dimensions: 16\n"
                  "    max_inputs_per_request: 64\n"
                  "    concurrency: 4\n"
                  "    timeout: 2\n",
                  CH_LEASE_S, ch.fake_port);
    return 0;
}

static int ch_teardown(void **state)
{
    (void)state;
    bool is_passed = ch.tests_run > 0 && ch.tests_passed == ch.tests_run;
    bool is_kept = is_passed && *bd_it_env("BD_CHAOS_KEEP", "") == '1';

    bd_it_kill_all();                     /* SIGKILL works on a stopped process too */
    if (ch.fake_pid > 0)
        fake_model_stop(ch.fake_pid);
    if (is_passed && !is_kept) {
        ch_stack("wipe");
        ch.is_stack_up = false;
        for (unsigned k = 0; k < ch.logs_count; k++)
            unlink(ch.logs[k]);
    } else {
        ch_stop_stack();
        fprintf(stderr, "chaos: the stack's data stays in %s/var/chaos\n", ch.src);
    }
    for (unsigned k = 0; k < ch.logs_count; k++)
        free(ch.logs[k]);
    for (unsigned n = 0; n < ch.jobs_count; n++) {
        free(ch.jobs[n].body);
        free(ch.jobs[n].id);
    }
    bd_buf_free(&ch.yaml);
    bd_buf_free(&ch.fault_log);
    return 0;
}

int main(void)
{
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chaos_reruns_batch_when_its_checkpoint_is_lost),
        cmocka_unit_test(test_chaos_keeps_every_item_exactly_once_when_faults_hit_running_jobs),
    };
    return cmocka_run_group_tests(tests, ch_setup, ch_teardown);
}
