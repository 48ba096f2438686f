/* metrics.c -- fixed-size counters and histograms, rendered as Prometheus text on scrape.
 *
 * Owns struct bd_metrics. Loop thread only. Recording never allocates or formats; the
 * HTTP counter is a small open-addressed table keyed by (route pointer, method, status),
 * whose cardinality is bounded by the route table. Job, batch and item counts and their
 * duration histograms sit in a fixed array indexed by (operation, model slot), the slot
 * being the model's index in the config, so a job event is a few additions. Process
 * figures (CPU, RSS, fds) are read from getrusage and /proc only when asked for. Includes
 * job_types.h for the state and operation enums and names only.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/metrics.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/job_types.h"

#include <assert.h>
#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define METRICS_HTTP_SLOTS 512

/* Latency buckets (seconds): 100 us .. 10 s, roughly x2.5 apart. */
static const double metrics_latency_bounds[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                 0.005,  0.01,    0.025,  0.05,  0.1,
                                                 0.25,   0.5,     1,      2.5,   10 };
/* Loop-lag buckets (seconds): 1 ms .. 1 s. */
static const double metrics_lag_bounds[] = { 0.001, 0.002, 0.005, 0.01, 0.025,
                                             0.05,  0.1,   0.25,  0.5,  1 };

/* Job duration buckets (seconds), started_at to the terminal state: 100 ms .. 6 h. */
static const double metrics_job_bounds[] = { 0.1, 0.25, 0.5, 1,    2.5,  5,    10,   30,
                                             60,  120,  300, 600, 1800, 3600, 7200, 21600 };
/* Batch duration buckets (seconds), load to commit: 5 ms .. 5 min. */
static const double metrics_batch_bounds[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                               2.5,   5,    10,    30,   60,  120,  300 };

/* Webhook delivery buckets (seconds), event to 2xx: 100 ms .. 1 day (retries included). */
static const double metrics_webhook_bounds[] = { 0.1, 0.25, 0.5, 1,    2.5,   5,    10,
                                                 30,  60,   300, 900, 3600, 14400, 86400 };
static const char *const metrics_webhook_results[BD_METRICS_WEBHOOK_RESULTS] = {
    "delivered", "failed_attempt", "gave_up",
};

#define METRICS_COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Model slots: 0..BD_METRICS_MAX_MODELS-1 are config indexes, then these three. */
#define METRICS_SLOT_OTHER BD_METRICS_MAX_MODELS
#define METRICS_SLOT_NONE (BD_METRICS_MAX_MODELS + 1)
#define METRICS_SLOT_UNKNOWN (BD_METRICS_MAX_MODELS + 2)
#define METRICS_SLOTS (BD_METRICS_MAX_MODELS + 3)
#define METRICS_OPS 2                 /* enum bd_job_operation */

static_assert(BD_JOB_STATE_COUNT == 5, "bd_metrics_job_totals.jobs has 5 entries");
static_assert(BD_OP_BULK_INSERT == METRICS_OPS - 1, "operations are 0..METRICS_OPS-1");

static const char *const metrics_methods[] = { "GET", "POST", "DELETE", "HEAD", "PUT",
                                               "PATCH", "OPTIONS", "OTHER" };
#define METRICS_METHODS_COUNT (sizeof(metrics_methods) / sizeof(metrics_methods[0]))

struct metrics_http_slot {
    const char *route;                /* NULL route is stored as the "unmatched" sentinel */
    uint16_t status;                  /* 0 = empty slot */
    uint8_t method;
    uint64_t count;
};

/* What this process did for one (operation, model slot). */
struct metrics_work {
    uint64_t jobs[BD_JOB_STATE_COUNT];
    uint64_t batches;
    uint64_t items_ok, items_failed, cache_hits;
    struct bd_hist job_seconds;
    struct bd_hist batch_seconds;
};

struct bd_metrics {
    struct metrics_http_slot http[METRICS_HTTP_SLOTS];
    uint64_t http_dropped;            /* table full (cannot happen with bounded routes) */
    struct bd_hist http_duration;
    struct bd_hist loop_lag;
    struct metrics_work work[METRICS_OPS][METRICS_SLOTS];
    bool is_queue_paused;
    bool is_model_paused[BD_METRICS_MAX_MODELS];
    bool has_model_paused[BD_METRICS_MAX_MODELS];   /* paused once: its series is written */
    struct bd_metrics_webhooks webhooks;

    /* CPU window: from sample a to now; b is the newer sample that becomes a after 5 s. */
    double cpu_a_s, cpu_b_s;
    double wall_a_s, wall_b_s;
};

static const char metrics_unmatched[] = "unmatched";

static void metrics_hist_init(struct bd_hist *h, const double *bounds, unsigned n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->bounds_count = n;
}

static double metrics_cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double metrics_mono_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct bd_metrics *bd_metrics_new(void)
{
    struct bd_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    metrics_hist_init(&m->http_duration, metrics_latency_bounds,
                      sizeof(metrics_latency_bounds) / sizeof(double));
    metrics_hist_init(&m->loop_lag, metrics_lag_bounds,
                      sizeof(metrics_lag_bounds) / sizeof(double));
    metrics_hist_init(&m->webhooks.delivery_seconds, metrics_webhook_bounds,
                      METRICS_COUNT(metrics_webhook_bounds));
    m->webhooks.pending = -1;
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            metrics_hist_init(&m->work[op][i].job_seconds, metrics_job_bounds,
                              METRICS_COUNT(metrics_job_bounds));
            metrics_hist_init(&m->work[op][i].batch_seconds, metrics_batch_bounds,
                              METRICS_COUNT(metrics_batch_bounds));
        }
    }
    m->cpu_a_s = m->cpu_b_s = metrics_cpu_seconds();
    m->wall_a_s = m->wall_b_s = metrics_mono_seconds();
    return m;
}

void bd_metrics_free(struct bd_metrics *m)
{
    free(m);
}

void bd_hist_observe(struct bd_hist *h, double v)
{
    unsigned i = 0;
    while (i < h->bounds_count && v > h->bounds[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum += v;
}

static uint8_t metrics_method_index(const char *method)
{
    if (method == NULL)
        return METRICS_METHODS_COUNT - 1;
    for (uint8_t i = 0; i < METRICS_METHODS_COUNT - 1; i++)
        if (strcmp(method, metrics_methods[i]) == 0)
            return i;
    return METRICS_METHODS_COUNT - 1;
}

void bd_metrics_observe_http(struct bd_metrics *m, const char *route, const char *method,
                             int status, double seconds)
{
    const char *key = route ? route : metrics_unmatched;
    uint8_t mi = metrics_method_index(method);
    uintptr_t h = ((uintptr_t)key >> 3) * 31u + mi * 7u + (unsigned)status;

    bd_hist_observe(&m->http_duration, seconds);
    for (unsigned probe = 0; probe < METRICS_HTTP_SLOTS; probe++) {
        struct metrics_http_slot *s = &m->http[(h + probe) % METRICS_HTTP_SLOTS];
        if (s->status == 0) {
            s->route = key;
            s->method = mi;
            s->status = (uint16_t)status;
            s->count = 1;
            return;
        }
        if (s->route == key && s->method == mi && s->status == status) {
            s->count++;
            return;
        }
    }
    m->http_dropped++;
}

void bd_metrics_observe_loop_lag(struct bd_metrics *m, double seconds)
{
    bd_hist_observe(&m->loop_lag, seconds);
}

int bd_metrics_model_slot(const struct bd_config *cfg, const char *model)
{
    if (model == NULL || *model == '\0')
        return BD_METRICS_MODEL_NONE;
    for (unsigned i = 0; cfg && i < cfg->models_count; i++)
        if (strcmp(cfg->models[i].name, model) == 0)
            return i < BD_METRICS_MAX_MODELS ? (int)i : METRICS_SLOT_OTHER;
    return BD_METRICS_MODEL_UNKNOWN;
}

/* The work record of (op, slot); out-of-range values land in "unknown", never outside. */
static struct metrics_work *metrics_work_of(struct bd_metrics *m, int op, int slot)
{
    unsigned o = (op >= 0 && op < METRICS_OPS) ? (unsigned)op : 0;
    unsigned i = slot == BD_METRICS_MODEL_NONE             ? METRICS_SLOT_NONE
                 : (slot >= 0 && slot < METRICS_SLOTS - 2) ? (unsigned)slot
                                                           : METRICS_SLOT_UNKNOWN;
    return &m->work[o][i];
}

void bd_metrics_job_finished(struct bd_metrics *m, int op, int model_slot, const char *state,
                             double seconds)
{
    enum bd_job_state st;

    if (m == NULL || state == NULL || bd_job_state_parse(state, &st) != 0 ||
        st == BD_JOB_QUEUED || st == BD_JOB_PROCESSING)
        return;
    struct metrics_work *w = metrics_work_of(m, op, model_slot);
    w->jobs[st]++;
    bd_hist_observe(&w->job_seconds, seconds > 0 ? seconds : 0);
}

void bd_metrics_batch_done(struct bd_metrics *m, int op, int model_slot, double seconds,
                           unsigned items_ok, unsigned items_failed, unsigned cache_hits)
{
    if (m == NULL)
        return;
    struct metrics_work *w = metrics_work_of(m, op, model_slot);
    w->batches++;
    w->items_ok += items_ok;
    w->items_failed += items_failed;
    w->cache_hits += cache_hits;
    bd_hist_observe(&w->batch_seconds, seconds > 0 ? seconds : 0);
}

void bd_metrics_get_job_totals(const struct bd_metrics *m, struct bd_metrics_job_totals *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            const struct metrics_work *w = &m->work[op][i];
            for (unsigned st = 0; st < BD_JOB_STATE_COUNT; st++)
                out->jobs[st] += w->jobs[st];
            out->batches += w->batches;
            out->items_ok += w->items_ok;
            out->items_failed += w->items_failed;
            out->cache_hits += w->cache_hits;
        }
    }
}

/* The model label of slot i: the config's name, "" for no model (bulk_insert). */
static const char *metrics_slot_name(const struct bd_config *cfg, unsigned i)
{
    if (i == METRICS_SLOT_NONE)
        return "";
    if (i == METRICS_SLOT_UNKNOWN)
        return "_unknown";
    if (i == METRICS_SLOT_OTHER)
        return "_other";
    return (cfg && i < cfg->models_count) ? cfg->models[i].name : "_unknown";
}

/* 'operation="bulk_embed",model="x"' into lab (reset first). */
static void metrics_work_labels(struct bd_buf *lab, const struct bd_config *cfg, unsigned op,
                                unsigned i)
{
    bd_buf_reset(lab);
    bd_buf_printf(lab, "operation=\"%s\",model=\"", bd_job_operation_name(op));
    bd_metrics_escape_label(lab, metrics_slot_name(cfg, i));
    bd_buf_puts(lab, "\"");
}

/* One counter family over every (operation, model) slot that has seen a batch; field is
 * the offset of a uint64_t in struct metrics_work. */
static void metrics_render_work_counter(const struct bd_metrics *m, const struct bd_config *cfg,
                                        struct bd_buf *out, struct bd_buf *lab,
                                        const char *name, const char *help, size_t field)
{
    bd_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            const struct metrics_work *w = &m->work[op][i];
            uint64_t v;
            if (w->batches == 0)
                continue;
            memcpy(&v, (const char *)w + field, sizeof(v));
            metrics_work_labels(lab, cfg, op, i);
            bd_buf_printf(out, "%s{%.*s} %llu\n", name, (int)lab->len, lab->data,
                          (unsigned long long)v);
        }
    }
}

void bd_metrics_set_queue_paused(struct bd_metrics *m, bool is_paused)
{
    if (m)
        m->is_queue_paused = is_paused;
}

void bd_metrics_set_model_paused(struct bd_metrics *m, unsigned model_index, bool is_paused)
{
    if (m && model_index < BD_METRICS_MAX_MODELS) {
        m->is_model_paused[model_index] = is_paused;
        m->has_model_paused[model_index] |= is_paused;
    }
}

void bd_metrics_render_jobs(const struct bd_metrics *m, struct bd_buf *out,
                            const struct bd_config *cfg)
{
    static const char *const outcomes[] = { "succeeded", "failed" };
    struct bd_buf lab;

    bd_buf_init(&lab);
    bd_buf_printf(out, "# HELP batchd_queue_paused Whether the whole queue is paused (shared "
                       "by all processes).\n# TYPE batchd_queue_paused gauge\n"
                       "batchd_queue_paused %d\n", m->is_queue_paused ? 1 : 0);
    bd_buf_puts(out, "# HELP batchd_model_paused Whether the model is paused on its own "
                     "(shared by all processes).\n# TYPE batchd_model_paused gauge\n");
    for (unsigned i = 0; cfg && i < cfg->models_count && i < BD_METRICS_MAX_MODELS; i++) {
        if (!m->has_model_paused[i])
            continue;                         /* never paused: absent, as unrecorded counters */
        bd_buf_puts(out, "batchd_model_paused{model=\"");
        bd_metrics_escape_label(out, cfg->models[i].name);
        bd_buf_printf(out, "\"} %d\n", m->is_model_paused[i] ? 1 : 0);
    }
    bd_buf_puts(out, "# HELP batchd_jobs_total Jobs that reached a terminal state in this "
                     "process.\n# TYPE batchd_jobs_total counter\n");
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            const struct metrics_work *w = &m->work[op][i];
            for (unsigned st = BD_JOB_COMPLETED; st < BD_JOB_STATE_COUNT; st++) {
                if (w->jobs[st] == 0)
                    continue;
                metrics_work_labels(&lab, cfg, op, i);
                bd_buf_printf(out, "batchd_jobs_total{%.*s,status=\"%s\"} %llu\n",
                              (int)lab.len, lab.data, bd_job_state_name(st),
                              (unsigned long long)w->jobs[st]);
            }
        }
    }
    bd_buf_puts(out, "# HELP batchd_items_total Items checkpointed in this process, by "
                     "outcome.\n# TYPE batchd_items_total counter\n");
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            const struct metrics_work *w = &m->work[op][i];
            const uint64_t n[2] = { w->items_ok, w->items_failed };
            if (w->batches == 0)
                continue;
            metrics_work_labels(&lab, cfg, op, i);
            for (unsigned k = 0; k < 2; k++)
                bd_buf_printf(out, "batchd_items_total{%.*s,outcome=\"%s\"} %llu\n",
                              (int)lab.len, lab.data, outcomes[k], (unsigned long long)n[k]);
        }
    }
    metrics_render_work_counter(m, cfg, out, &lab, "batchd_batches_total",
                                "Batches checkpointed in this process.",
                                offsetof(struct metrics_work, batches));
    metrics_render_work_counter(m, cfg, out, &lab, "batchd_cache_hits_total",
                                "Items served from the embedding cache in this process.",
                                offsetof(struct metrics_work, cache_hits));
    bd_buf_puts(out, "# HELP batchd_job_duration_seconds Time from a job's start to its "
                     "terminal state, for jobs finished in this process.\n"
                     "# TYPE batchd_job_duration_seconds histogram\n");
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            const struct metrics_work *w = &m->work[op][i];
            if (w->job_seconds.count == 0)
                continue;
            metrics_work_labels(&lab, cfg, op, i);
            bd_buf_append(&lab, "", 1);                 /* NUL-terminate for bd_hist_render */
            bd_hist_render(&w->job_seconds, out, "batchd_job_duration_seconds", NULL,
                           lab.data, 0);
        }
    }
    bd_buf_puts(out, "# HELP batchd_batch_duration_seconds Time from loading a batch to "
                     "committing its checkpoint (model call and retries included).\n"
                     "# TYPE batchd_batch_duration_seconds histogram\n");
    for (unsigned op = 0; op < METRICS_OPS; op++) {
        for (unsigned i = 0; i < METRICS_SLOTS; i++) {
            const struct metrics_work *w = &m->work[op][i];
            if (w->batch_seconds.count == 0)
                continue;
            metrics_work_labels(&lab, cfg, op, i);
            bd_buf_append(&lab, "", 1);
            bd_hist_render(&w->batch_seconds, out, "batchd_batch_duration_seconds", NULL,
                           lab.data, 0);
        }
    }
    if (lab.is_failed)
        out->is_failed = 1;
    bd_buf_free(&lab);
}

double bd_metrics_sample_cpu_percent(struct bd_metrics *m)
{
    double cpu = metrics_cpu_seconds(), now = metrics_mono_seconds();

    if (now - m->wall_b_s >= 5.0) {
        m->cpu_a_s = m->cpu_b_s;
        m->wall_a_s = m->wall_b_s;
        m->cpu_b_s = cpu;
        m->wall_b_s = now;
    }
    if (now - m->wall_a_s <= 0)
        return 0;
    return (cpu - m->cpu_a_s) / (now - m->wall_a_s) * 100.0;
}

void bd_metrics_escape_label(struct bd_buf *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            bd_buf_append(out, "\\\\", 2);
        else if (*p == '"')
            bd_buf_append(out, "\\\"", 2);
        else if (*p == '\n')
            bd_buf_append(out, "\\n", 2);
        else
            bd_buf_append(out, p, 1);
    }
}

void bd_hist_render(const struct bd_hist *h, struct bd_buf *out, const char *name,
                    const char *help, const char *labels, int with_header)
{
    const char *sep = (labels && *labels) ? "," : "";
    uint64_t cum = 0;

    if (labels == NULL)
        labels = "";
    if (with_header)
        bd_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (unsigned i = 0; i < h->bounds_count; i++) {
        cum += h->buckets[i];
        bd_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                      (unsigned long long)cum);
    }
    cum += h->buckets[h->bounds_count];
    bd_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                  (unsigned long long)cum);
    if (*labels) {
        bd_buf_printf(out, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name,
                      labels, (unsigned long long)h->count);
    } else {
        bd_buf_printf(out, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name,
                      (unsigned long long)h->count);
    }
}

long bd_metrics_get_rss_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = -1;
    fclose(f);
    return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

static long metrics_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;                     /* the directory handle itself */
}

void bd_metrics_webhook_result(struct bd_metrics *m, enum bd_metrics_webhook_result r,
                               double seconds)
{
    if (m == NULL || (unsigned)r >= BD_METRICS_WEBHOOK_RESULTS)
        return;
    m->webhooks.results[r]++;
    if (r == BD_METRICS_WEBHOOK_DELIVERED)
        bd_hist_observe(&m->webhooks.delivery_seconds, seconds > 0 ? seconds : 0);
}

void bd_metrics_webhook_set_pending(struct bd_metrics *m, int64_t pending)
{
    if (m != NULL)
        m->webhooks.pending = pending;
}

const struct bd_metrics_webhooks *bd_metrics_get_webhooks(const struct bd_metrics *m)
{
    return &m->webhooks;
}

static void metrics_render_webhooks(const struct bd_metrics *m, struct bd_buf *out)
{
    const struct bd_metrics_webhooks *w = &m->webhooks;

    bd_buf_puts(out, "# HELP batchd_webhook_deliveries_total Webhook delivery attempts by "
                     "result.\n# TYPE batchd_webhook_deliveries_total counter\n");
    for (unsigned r = 0; r < BD_METRICS_WEBHOOK_RESULTS; r++)
        bd_buf_printf(out, "batchd_webhook_deliveries_total{result=\"%s\"} %llu\n",
                      metrics_webhook_results[r], (unsigned long long)w->results[r]);
    if (w->pending >= 0)
        bd_buf_printf(out, "# HELP batchd_webhook_pending Webhook deliveries not yet delivered "
                           "or given up (the outbox, all processes).\n"
                           "# TYPE batchd_webhook_pending gauge\nbatchd_webhook_pending %lld\n",
                      (long long)w->pending);
    bd_hist_render(&w->delivery_seconds, out, "batchd_webhook_delivery_seconds",
                   "Time from a webhook event to its delivery (2xx), retries included.", "", 1);
}

void bd_metrics_render(const struct bd_metrics *m, struct bd_buf *out, uint64_t start_time_unix)
{
    bd_buf_puts(out, "# HELP batchd_http_requests_total HTTP responses by route pattern, "
                     "method and status code.\n# TYPE batchd_http_requests_total counter\n");
    for (unsigned i = 0; i < METRICS_HTTP_SLOTS; i++) {
        const struct metrics_http_slot *s = &m->http[i];
        if (s->status == 0)
            continue;
        bd_buf_puts(out, "batchd_http_requests_total{route=\"");
        bd_metrics_escape_label(out, s->route);
        bd_buf_printf(out, "\",method=\"%s\",code=\"%u\"} %llu\n", metrics_methods[s->method],
                      s->status, (unsigned long long)s->count);
    }
    bd_hist_render(&m->http_duration, out, "batchd_http_request_duration_seconds",
                   "Time from a request's first byte to its response being queued.", "", 1);
    bd_hist_render(&m->loop_lag, out, "batchd_loop_lag_seconds",
                   "How late a 100 ms loop timer fired: time the loop spent blocked.", "", 1);
    metrics_render_webhooks(m, out);

    double cpu = metrics_cpu_seconds();
    bd_buf_printf(out, "# HELP process_cpu_seconds_total User and system CPU time spent.\n"
                       "# TYPE process_cpu_seconds_total counter\n"
                       "process_cpu_seconds_total %.6f\n", cpu);
    bd_buf_printf(out, "# HELP process_resident_memory_bytes Resident memory size.\n"
                       "# TYPE process_resident_memory_bytes gauge\n"
                       "process_resident_memory_bytes %ld\n", bd_metrics_get_rss_bytes());
    bd_buf_printf(out, "# HELP process_open_fds Open file descriptors.\n"
                       "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n",
                  metrics_open_fds());
    bd_buf_printf(out, "# HELP process_start_time_seconds Start time since the epoch.\n"
                       "# TYPE process_start_time_seconds gauge\n"
                       "process_start_time_seconds %llu\n",
                  (unsigned long long)start_time_unix);
}
