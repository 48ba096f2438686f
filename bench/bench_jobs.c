/* bench_jobs.c -- the job driver: submits J bulk_insert or bulk_embed jobs to one or more
 * batchd processes and measures the time from the first submit to the last completion.
 *
 * Owns its loop, the generated job bodies, the submit connections and one watcher
 * connection. Single thread; libuv callbacks only. Every body is generated before the
 * clock starts (bench_common.h's generator, so ceilings and peers write the same rows).
 * Completion is observed by polling every --poll-ms: with at most LIST_MAX jobs, each
 * unfinished job's status (its progress gives a throughput-over-time series); with more,
 * "no job queued or processing" in the job list ends the run. The end time is when the poll
 * that saw the end was answered, so the figure can only be pessimistic, by at most one
 * poll interval. With --rss-pid it also samples that process's VmRSS, reads its VmHWM
 * when the submits are done and, with --reset-hwm, resets the peak there (clear_refs 5),
 * and again once the first batch is stored, so the peak of submitting and the peak of
 * processing are reported apart. With --submit-only nothing is polled until the last 202
 * (the figure is then submits/s, the 202 being the end); the run still waits, off the
 * clock, for every job to finish, so batchd is quiet again and failures are seen.
 *
 * Always bounded: --timeout (default 600 s) ends the run with an error.
 * Prints one JSON object on stdout. Bench code only.  SPDX-License-Identifier: MIT
 */
#include "bench_common.h"
#include "bench_http.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIST_MAX 200
#define MAX_BASES 8
#define API "/api/v1/batch"

struct sub_conn {
    struct bh_conn *http;
    struct drv *d;
    int job;                           /* job being submitted, -1 when idle */
};

struct drv {
    uv_loop_t *loop;
    const char *op;                    /* "insert" or "embed" */
    unsigned jobs, items, dim, batch_size, concurrency;
    const char *collection, *model, *nonce, *label, *progress_path;
    uint32_t seed;
    unsigned job_offset;               /* job j is generated as job j + job_offset */
    double poll_ms, timeout_s;
    int rss_pid;
    bool reset_hwm;
    bool is_submit_only;               /* --submit-only: no polling until the last 202 */
    bool is_reset_in_processing;

    struct sockaddr_in bases[MAX_BASES];
    unsigned nbases;

    struct bb_buf *bodies;
    char **ids;
    unsigned next_job;
    unsigned submitted;                /* 202s received */
    unsigned submit_errors;
    struct sub_conn *subs;

    struct bh_conn *watch;
    uv_timer_t poll_timer;
    uv_timer_t deadline;
    int count_phase;                   /* count mode: 0 queued, 1 processing, 2 failed */
    uint64_t poll_sent;                /* when the last poll request was sent */
    unsigned watch_job;                /* status mode: the job being asked about */
    unsigned *job_processed, *job_failed;
    unsigned char *job_state;          /* 0 unknown/running, 2 completed, 3 failed/cancelled */
    bool is_final;                     /* the last poll (final statuses) is running */
    bool is_done;
    bool is_timed_out;

    uint64_t t0, t_submitted, t_end;
    long rss_start_kb, hwm_submit_kb, hwm_process_kb, rss_max_kb, rss_submitted_kb;
    unsigned long long processed, failed_items;
    unsigned jobs_completed, jobs_terminal, jobs_failed;
    FILE *progress;
};

static void drv_poll(struct drv *d);

static void drv_on_poll_timer(uv_timer_t *t)
{
    drv_poll(t->data);
}

static void drv_sample_rss(struct drv *d)
{
    long rss = bb_proc_status_kb(d->rss_pid, "VmRSS");
    if (rss > d->rss_max_kb)
        d->rss_max_kb = rss;
}

/* ---- bodies ----------------------------------------------------------------------------- */

static void gen_body(struct drv *d, unsigned j, struct bb_buf *b)
{
    struct bb_rng rng;
    bool is_insert = strcmp(d->op, "insert") == 0;

    j += d->job_offset;
    bb_rng_seed_job(&rng, d->seed, j);
    if (is_insert)
        bb_printf(b, "{\"operation\":\"bulk_insert\",\"collection\":\"%s\",\"data\":[",
                  d->collection);
    else
        bb_printf(b, "{\"operation\":\"bulk_embed\",\"model\":\"%s\",\"collection\":\"%s\","
                     "\"data\":[", d->model, d->collection);
    for (unsigned i = 0; i < d->items; i++) {
        bb_puts(b, i ? ",{\"id\":\"" : "{\"id\":\"");
        bb_put_item_id(b, j, i);
        if (is_insert) {
            bb_puts(b, "\",\"embedding\":[");
            for (unsigned k = 0; k < d->dim; k++) {
                if (k)
                    bb_put(b, ",", 1);
                bb_put_component(b, bb_rng_component(&rng));
            }
            bb_puts(b, "]}");
        } else {
            bb_puts(b, "\",\"text\":\"");
            bb_put_embed_text(b, d->nonce, j, i);
            bb_puts(b, "\"}");
        }
    }
    bb_printf(b, "],\"options\":{\"batch_size\":%u}}", d->batch_size);
}

/* The Ollama /api/embed bodies batchd sends for these jobs: one per batch. */
static int emit_ollama(struct drv *d, const char *path, const char *remote_model)
{
    FILE *f = fopen(path, "w");
    struct bb_buf b = {0};

    if (f == NULL) {
        perror(path);
        return 1;
    }
    for (unsigned j = 0; j < d->jobs; j++)
        for (unsigned first = 0; first < d->items; first += d->batch_size) {
            b.len = 0;
            bb_printf(&b, "{\"model\":\"%s\",\"input\":[", remote_model);
            for (unsigned i = first; i < d->items && i < first + d->batch_size; i++) {
                bb_puts(&b, i > first ? ",\"" : "\"");
                bb_put_embed_text(&b, d->nonce, j, i);
                bb_puts(&b, "\"");
            }
            bb_puts(&b, "]}\n");
            fwrite(b.p, 1, b.len, f);
        }
    bb_free(&b);
    return fclose(f) == 0 ? 0 : 1;
}

/* ---- finishing ---------------------------------------------------------------------------- */

static void drv_close_all(struct drv *d)
{
    uv_timer_stop(&d->poll_timer);
    uv_close((uv_handle_t *)&d->poll_timer, NULL);
    uv_timer_stop(&d->deadline);
    uv_close((uv_handle_t *)&d->deadline, NULL);
    bh_conn_free(d->watch);
    for (unsigned i = 0; i < d->concurrency; i++)
        bh_conn_free(d->subs[i].http);
}

static void drv_on_deadline(uv_timer_t *t)
{
    struct drv *d = t->data;
    fprintf(stderr, "bench_jobs: timed out after %.0f s (%u of %u jobs submitted)\n",
            d->timeout_s, d->submitted, d->jobs);
    d->is_timed_out = true;
    d->t_end = uv_hrtime();
    drv_close_all(d);
}

/* ---- submitting ------------------------------------------------------------------------- */

static void sub_next(struct sub_conn *s);

static void sub_on_response(struct bh_conn *c, int status, const char *body, size_t len,
                            void *arg)
{
    struct sub_conn *s = arg;
    struct drv *d = s->d;
    unsigned j = (unsigned)s->job;

    (void)c;
    if (d->is_timed_out)
        return;
    if (status == 202 || status == 200) {
        json_error_t err;
        json_t *root = json_loadb(body, len, 0, &err);
        const char *id = json_string_value(json_object_get(root, "job_id"));
        if (id) {
            d->ids[j] = bb_xstrdup(id);
            d->submitted++;
        } else {
            d->submit_errors++;
        }
        json_decref(root);
    } else {
        fprintf(stderr, "bench_jobs: submit of job %u: status %d: %.300s\n", j, status,
                body ? body : "");
        d->submit_errors++;
    }
    /* The job's input is in PostgreSQL now; the body is not needed any more. */
    bb_free(&d->bodies[j]);
    s->job = -1;
    if (d->submitted + d->submit_errors == d->jobs) {
        d->t_submitted = uv_hrtime();
        if (d->rss_pid > 0) {
            d->hwm_submit_kb = bb_proc_status_kb(d->rss_pid, "VmHWM");
            d->rss_submitted_kb = bb_proc_status_kb(d->rss_pid, "VmRSS");
            if (d->reset_hwm)
                bb_proc_reset_hwm(d->rss_pid);
        }
        if (d->is_submit_only)
            drv_poll(d);
    }
    sub_next(s);
}

static void sub_next(struct sub_conn *s)
{
    struct drv *d = s->d;

    if (d->next_job >= d->jobs || d->is_timed_out)
        return;
    s->job = (int)d->next_job++;
    struct bb_buf *b = &d->bodies[s->job];
    int rc = bh_conn_request(s->http, "POST", API "/jobs", "application/json", b->p, b->len,
                             true, sub_on_response, s);
    if (rc < 0) {
        fprintf(stderr, "bench_jobs: submit failed to start: %s\n", uv_strerror(rc));
        d->submit_errors++;
    }
}

/* ---- watching ------------------------------------------------------------------------- */

static bool is_terminal(const char *st)
{
    return st && (strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 ||
                  strcmp(st, "cancelled") == 0);
}

static void drv_finish(struct drv *d)
{
    d->is_done = true;
    drv_close_all(d);
}

static void watch_next_status(struct drv *d);

/* Status mode: one pass GETs the status of every submitted job not yet terminal, one
 * after the other on the watcher connection; then the pass is summed up. (The job list
 * would be one request, but it is ordered by a Redis sequence that restarts when Redis
 * loses its data, so "the newest J jobs" are not always this run's.) */
static void watch_on_status(struct bh_conn *c, int status, const char *body, size_t len,
                            void *arg)
{
    struct drv *d = arg;
    unsigned j = d->watch_job;

    (void)c;
    if (d->is_timed_out || d->is_done)
        return;
    if (status == 200) {
        json_error_t err;
        json_t *root = json_loadb(body, len, 0, &err);
        const char *st = json_string_value(json_object_get(root, "status"));
        json_t *pr = json_object_get(root, "progress");
        d->job_processed[j] = (unsigned)json_integer_value(json_object_get(pr, "processed_items"));
        d->job_failed[j] = (unsigned)json_integer_value(json_object_get(pr, "failed_items"));
        if (is_terminal(st)) {
            d->job_state[j] = strcmp(st, "completed") == 0 ? 2 : 3;
        }
        json_decref(root);
    } else {
        fprintf(stderr, "bench_jobs: status of %s: %d\n", d->ids[j], status);
    }
    d->watch_job++;
    watch_next_status(d);
}

static void watch_next_status(struct drv *d)
{
    char path[256];

    while (d->watch_job < d->jobs && (d->ids[d->watch_job] == NULL || d->job_state[d->watch_job] >= 2))
        d->watch_job++;
    if (d->watch_job < d->jobs) {
        snprintf(path, sizeof(path), API "/jobs/%s/status", d->ids[d->watch_job]);
        bh_conn_request(d->watch, "GET", path, NULL, NULL, 0, true, watch_on_status, d);
        return;
    }
    /* The pass is over. */
    uint64_t now = uv_hrtime();
    unsigned long long done_items = 0, processed = 0, failed = 0;
    unsigned terminal = 0, completed = 0, failed_jobs = 0;
    for (unsigned j = 0; j < d->jobs; j++) {
        processed += d->job_processed[j];
        failed += d->job_failed[j];
        terminal += d->job_state[j] >= 2;
        completed += d->job_state[j] == 2;
        failed_jobs += d->job_state[j] == 3;
    }
    done_items = processed + failed;
    if (d->rss_pid > 0)
        drv_sample_rss(d);
    /* The processing peak: reset again once the first batch is stored. By then batchd has
     * answered every submit and given the request's memory back, which the reset at the
     * last 202 can come too early to see. */
    if (d->reset_hwm && !d->is_reset_in_processing && done_items > 0 &&
        d->submitted + d->submit_errors == d->jobs) {
        bb_proc_reset_hwm(d->rss_pid);
        d->is_reset_in_processing = true;
    }
    if (d->progress)
        fprintf(d->progress, "%.3f\t%llu\t%u\t%ld\n", (double)(now - d->t0) / 1e9, done_items,
                terminal, d->rss_pid > 0 ? bb_proc_status_kb(d->rss_pid, "VmRSS") : 0L);
    d->processed = processed;
    d->failed_items = failed;
    d->jobs_terminal = terminal;
    d->jobs_completed = completed;
    d->jobs_failed = failed_jobs;
    if (d->submitted + d->submit_errors == d->jobs && terminal == d->submitted) {
        d->t_end = now;
        drv_finish(d);
        return;
    }
    uv_timer_start(&d->poll_timer, drv_on_poll_timer, (uint64_t)d->poll_ms, 0);
}

/* Count mode: is anything queued, processing (or, at the end, failed)? Once every job is
 * submitted, "none queued" followed by "none processing" means all are terminal: a job
 * never goes back from processing to queued. The "none queued" answer only counts when
 * its request was sent after the last submit was answered. */
static void watch_on_count(struct bh_conn *c, int status, const char *body, size_t len,
                           void *arg)
{
    struct drv *d = arg;
    uint64_t now = uv_hrtime();

    (void)c;
    if (d->is_timed_out || d->is_done)
        return;
    json_error_t err;
    json_t *root = status == 200 ? json_loadb(body, len, 0, &err) : NULL;
    json_int_t n = json_integer_value(json_object_get(root, "count"));
    json_decref(root);
    if (status != 200) {
        fprintf(stderr, "bench_jobs: job count: status %d\n", status);
        d->count_phase = 0;
        uv_timer_start(&d->poll_timer, drv_on_poll_timer, (uint64_t)d->poll_ms, 0);
        return;
    }
    if (d->rss_pid > 0)
        drv_sample_rss(d);
    if (d->count_phase == 2) {         /* the final check */
        d->jobs_failed = (unsigned)n;
        drv_finish(d);
        return;
    }
    bool is_after_submits = d->t_submitted != 0 && d->poll_sent >= d->t_submitted;
    if (n > 0 || (d->count_phase == 0 && !is_after_submits)) {
        d->count_phase = 0;
        if (d->progress)
            fprintf(d->progress, "%.3f\t%u\t0\t%ld\n", (double)(now - d->t0) / 1e9,
                    d->submitted, d->rss_pid > 0 ? bb_proc_status_kb(d->rss_pid, "VmRSS") : 0L);
        uv_timer_start(&d->poll_timer, drv_on_poll_timer, (uint64_t)d->poll_ms, 0);
        return;
    }
    if (d->count_phase == 0) {
        d->count_phase = 1;            /* nothing queued: now ask about processing */
        drv_poll(d);
        return;
    }
    d->t_end = now;                    /* neither queued nor processing: all finished */
    d->jobs_terminal = d->submitted;
    d->count_phase = 2;
    drv_poll(d);
}

static void drv_poll(struct drv *d)
{
    char path[160];

    if (d->is_done || d->is_timed_out)
        return;
    d->poll_sent = uv_hrtime();
    if (d->jobs <= LIST_MAX) {
        d->watch_job = 0;
        watch_next_status(d);
        return;
    }
    static const char *const phase_status[] = { "queued", "processing", "failed" };
    snprintf(path, sizeof(path), API "/jobs?status=%s&limit=1", phase_status[d->count_phase]);
    bh_conn_request(d->watch, "GET", path, NULL, NULL, 0, true, watch_on_count, d);
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_jobs --base http://127.0.0.1:PORT[,http://127.0.0.1:PORT2]\n"
            "   --op insert|embed --jobs J --items N [--dim D] [--batch-size B]\n"
            "   [--concurrency C] [--collection NAME] [--model M] [--seed S] [--nonce X]\n"
            "   [--poll-ms P] [--timeout S] [--progress FILE] [--rss-pid PID [--reset-hwm]]\n"
            "   [--label L] [--job-offset K (ids and vectors of job j are job j+K's)]\n"
            "   [--submit-only (poll only after the last 202; submits_per_s is the figure)]\n"
            "   or: bench_jobs --op embed ... --emit-ollama FILE [--remote-model M]\n");
}

int main(int argc, char **argv)
{
    struct drv d;
    const char *bases = NULL, *emit = NULL, *remote_model = NULL;
    static const struct option opts[] = {
        { "base", required_argument, NULL, 'b' }, { "op", required_argument, NULL, 'o' },
        { "jobs", required_argument, NULL, 'j' }, { "items", required_argument, NULL, 'n' },
        { "dim", required_argument, NULL, 'D' }, { "batch-size", required_argument, NULL, 'B' },
        { "concurrency", required_argument, NULL, 'c' },
        { "collection", required_argument, NULL, 'C' }, { "model", required_argument, NULL, 'm' },
        { "seed", required_argument, NULL, 's' }, { "nonce", required_argument, NULL, 'N' },
        { "poll-ms", required_argument, NULL, 'p' }, { "timeout", required_argument, NULL, 't' },
        { "progress", required_argument, NULL, 'P' }, { "rss-pid", required_argument, NULL, 'r' },
        { "reset-hwm", no_argument, NULL, 'R' }, { "label", required_argument, NULL, 'l' },
        { "emit-ollama", required_argument, NULL, 'e' },
        { "remote-model", required_argument, NULL, 'M' }, { "help", no_argument, NULL, 'h' },
        { "job-offset", required_argument, NULL, 'O' },
        { "submit-only", no_argument, NULL, 'S' },
        { 0, 0, 0, 0 },
    };
    int ch;

    memset(&d, 0, sizeof(d));
    d.op = "insert";
    d.jobs = 1;
    d.items = 100;
    d.dim = 8;
    d.batch_size = 100;
    d.concurrency = 4;
    d.collection = "bench";
    d.model = "fake";
    d.nonce = "n0";
    d.label = "jobs";
    d.seed = 42;
    d.poll_ms = 50;
    d.timeout_s = 600;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'b': bases = optarg; break;
        case 'o': d.op = optarg; break;
        case 'j': d.jobs = (unsigned)bb_arg_num("--jobs", optarg, 1, 1e7); break;
        case 'n': d.items = (unsigned)bb_arg_num("--items", optarg, 1, 1e8); break;
        case 'D': d.dim = (unsigned)bb_arg_num("--dim", optarg, 1, 65536); break;
        case 'B': d.batch_size = (unsigned)bb_arg_num("--batch-size", optarg, 1, 1e6); break;
        case 'c': d.concurrency = (unsigned)bb_arg_num("--concurrency", optarg, 1, 1024); break;
        case 'C': d.collection = optarg; break;
        case 'm': d.model = optarg; break;
        case 's': d.seed = (uint32_t)bb_arg_num("--seed", optarg, 0, 4294967295.0); break;
        case 'N': d.nonce = optarg; break;
        case 'p': d.poll_ms = bb_arg_num("--poll-ms", optarg, 1, 10000); break;
        case 't': d.timeout_s = bb_arg_num("--timeout", optarg, 1, 7200); break;
        case 'P': d.progress_path = optarg; break;
        case 'r': d.rss_pid = (int)bb_arg_num("--rss-pid", optarg, 1, 1e9); break;
        case 'R': d.reset_hwm = true; break;
        case 'S': d.is_submit_only = true; break;
        case 'l': d.label = optarg; break;
        case 'e': emit = optarg; break;
        case 'M': remote_model = optarg; break;
        case 'O': d.job_offset = (unsigned)bb_arg_num("--job-offset", optarg, 0, 1e8); break;
        default: usage(); return ch == 'h' ? 0 : 2;
        }
    }
    if (strcmp(d.op, "insert") != 0 && strcmp(d.op, "embed") != 0) {
        usage();
        return 2;
    }
    if (emit)
        return emit_ollama(&d, emit, remote_model ? remote_model : d.model);
    if (bases == NULL) {
        usage();
        return 2;
    }
    char *list = bb_xstrdup(bases);
    for (char *tok = strtok(list, ","); tok && d.nbases < MAX_BASES; tok = strtok(NULL, ",")) {
        char host[64];
        int port;
        bb_parse_base(tok, host, sizeof(host), &port);
        if (bh_addr(host, port, &d.bases[d.nbases]) < 0) {
            fprintf(stderr, "bench_jobs: bad address %s\n", tok);
            return 2;
        }
        d.nbases++;
    }
    free(list);
    if (d.concurrency > d.jobs)
        d.concurrency = d.jobs;

    /* Everything is generated before the clock starts. */
    d.bodies = bb_xmalloc(d.jobs * sizeof(struct bb_buf));
    d.ids = bb_xmalloc(d.jobs * sizeof(char *));
    d.job_processed = calloc(d.jobs, sizeof(unsigned));
    d.job_failed = calloc(d.jobs, sizeof(unsigned));
    d.job_state = calloc(d.jobs, 1);
    size_t total_bytes = 0;
    for (unsigned j = 0; j < d.jobs; j++) {
        d.bodies[j] = (struct bb_buf){0};
        d.ids[j] = NULL;
        gen_body(&d, j, &d.bodies[j]);
        total_bytes += d.bodies[j].len;
    }
    if (d.progress_path) {
        d.progress = fopen(d.progress_path, "w");
        if (d.progress == NULL)
            perror(d.progress_path);
    }

    d.loop = uv_default_loop();
    uv_timer_init(d.loop, &d.poll_timer);
    d.poll_timer.data = &d;
    uv_timer_init(d.loop, &d.deadline);
    d.deadline.data = &d;
    uv_timer_start(&d.deadline, drv_on_deadline, (uint64_t)(d.timeout_s * 1000), 0);
    d.watch = bh_conn_new(d.loop, &d.bases[0]);
    d.subs = bb_xmalloc(d.concurrency * sizeof(struct sub_conn));
    for (unsigned i = 0; i < d.concurrency; i++)
        d.subs[i] = (struct sub_conn){ bh_conn_new(d.loop, &d.bases[i % d.nbases]), &d, -1 };
    d.rss_start_kb = bb_proc_status_kb(d.rss_pid, "VmRSS");
    d.rss_max_kb = d.rss_start_kb;

    d.t0 = uv_hrtime();
    for (unsigned i = 0; i < d.concurrency; i++)
        sub_next(&d.subs[i]);
    if (!d.is_submit_only)
        drv_poll(&d);
    uv_run(d.loop, UV_RUN_DEFAULT);
    if (d.rss_pid > 0)
        d.hwm_process_kb = bb_proc_status_kb(d.rss_pid, "VmHWM");

    double total = (double)(d.t_end - d.t0) / 1e9;
    double submit = d.t_submitted ? (double)(d.t_submitted - d.t0) / 1e9 : total;
    unsigned long long items = (unsigned long long)d.jobs * d.items;
    printf("{\"label\":\"%s\",\"op\":\"%s\",\"jobs\":%u,\"items\":%llu,\"dim\":%u,"
           "\"batch_size\":%u,\"concurrency\":%u,\"processes\":%u,\"body_bytes\":%zu,"
           "\"submit_s\":%.3f,\"submits_per_s\":%.1f,\"total_s\":%.3f,\"items_per_s\":%.1f,\"jobs_per_s\":%.1f,"
           "\"submitted\":%u,\"submit_errors\":%u,\"jobs_terminal\":%u,\"jobs_failed\":%u,"
           "\"processed\":%llu,\"failed_items\":%llu,\"timed_out\":%s,"
           "\"rss_start_kb\":%ld,\"hwm_submit_kb\":%ld,\"rss_after_submit_kb\":%ld,"
           "\"hwm_process_kb\":%ld,\"rss_max_sampled_kb\":%ld}\n",
           d.label, d.op, d.jobs, items, d.dim, d.batch_size, d.concurrency, d.nbases,
           total_bytes, submit, submit > 0 ? d.jobs / submit : 0.0, total, total > 0 ? (double)items / total : 0.0,
           total > 0 ? d.jobs / total : 0.0, d.submitted, d.submit_errors, d.jobs_terminal,
           d.jobs_failed, d.processed, d.failed_items, d.is_timed_out ? "true" : "false",
           d.rss_start_kb, d.hwm_submit_kb, d.rss_submitted_kb, d.hwm_process_kb, d.rss_max_kb);
    if (d.progress)
        fclose(d.progress);
    uv_loop_close(d.loop);
    /* Release what main allocated, so a sanitizer build of the bench runs clean. */
    for (unsigned j = 0; j < d.jobs; j++) {
        bb_free(&d.bodies[j]);
        free(d.ids[j]);
    }
    free(d.bodies);
    free(d.ids);
    free(d.job_processed);
    free(d.job_failed);
    free(d.job_state);
    free(d.subs);
    return d.is_timed_out || d.submit_errors ? 1 : 0;
}
