/* api_metrics.c -- GET /api/v1/batch/queue/status and GET /api/v1/batch/metrics: the JSON
 * views of the queue and of the work done, in the seed's shapes.
 *
 * Owns each request's gather record (in the request's arena) from the handler to its
 * response. Loop thread only. Totals over every process sharing the stack come from
 * PostgreSQL (job counts, items, times: one GROUP BY over jobs, one sliding-window sum over
 * job_batches) and Redis (queue depths, INFO memory); per-process figures (CPU, memory,
 * active workers, model request errors, pool connections) come from this process. Nothing
 * here is a constant: a figure that cannot be measured right now is null.
 * SPDX-License-Identifier: MIT
 */
#include "api_internal.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/metrics.h"
#include "batchd/model_client.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

/* The throughput window: items checkpointed in the last API_WINDOW_S seconds, over the time
 * from the start of the first of those batches (or the window's start, if earlier) to now,
 * so that a burst younger than the window is not diluted by the idle time before it. */
#define API_WINDOW_S 300

struct api_model_sum {
    long long pending, processing, finished;
    long long processed, failed, processing_ms;
    long long ran;
    double run_s;
};

struct api_model_total {
    const char *model;
    unsigned row;                      /* while sorting: the row it came from */
    struct api_model_sum sum;
};

struct api_gather {
    struct bd_http_request *req;
    struct bd_server *srv;
    bool is_metrics;                   /* JSON metrics; else queue status */
    unsigned pending;                  /* store calls still due, +1 while starting */

    bool has_jobs;
    struct bd_job_group *rows;         /* copied, model strings in the request's arena */
    unsigned rows_count;
    struct api_model_total *models;    /* per model, sorted by name (request's arena) */
    unsigned models_count;

    bool has_window;
    long long window_items;
    double window_span_s;

    bool has_counts;
    struct bd_rq_counts counts;

    bool has_memory;
    long long used_memory;
};

static json_t *api_real1(double x)
{
    return json_real(bd__api_round1(isfinite(x) ? x : 0.0));
}

/* succeeded / (succeeded + failed) * 100, and 100.0 while nothing finished (as the status
 * object does: no failure so far). */
static double api_success_rate(long long ok, long long failed)
{
    return ok + failed > 0 ? (double)ok * 100.0 / (double)(ok + failed) : 100.0;
}

/* ---- building the answers ------------------------------------------------------------ */

struct api_totals {
    long long by_state[BD_JOB_STATE_COUNT];
    long long jobs, processed, failed;
    long long started;
    double wait_s;
    long long ran;                     /* completed or failed jobs with both timestamps */
    double run_s;
};

static bool api_is_finished(const struct bd_job_group *r)
{
    return r->is_known_state && (r->state == BD_JOB_COMPLETED || r->state == BD_JOB_FAILED);
}

static void api_totals(const struct api_gather *g, struct api_totals *t)
{
    memset(t, 0, sizeof(*t));
    for (unsigned i = 0; i < g->rows_count; i++) {
        const struct bd_job_group *r = &g->rows[i];
        if (r->is_known_state)
            t->by_state[r->state] += r->jobs;
        t->jobs += r->jobs;
        t->processed += r->processed_items;
        t->failed += r->failed_items;
        t->started += r->started;
        t->wait_s += r->wait_s;
        if (api_is_finished(r)) {
            t->ran += r->ran;
            t->run_s += r->run_s;
        }
    }
}

static double api_window_per_minute(const struct api_gather *g)
{
    if (!g->has_window || g->window_items == 0)
        return 0.0;
    return (double)g->window_items * 60.0 / fmax(g->window_span_s, 0.001);
}

/* Per-model figures, summed over the rows of model. */
static int api_model_cmp(const void *a, const void *b)
{
    return strcmp(((const struct api_model_total *)a)->model,
                  ((const struct api_model_total *)b)->model);
}

/* One model's figures: a binary search in the totals built once per answer. */
static void api_model_sum(const struct api_gather *g, const char *model,
                          struct api_model_sum *s)
{
    struct api_model_total key = { .model = model };
    const struct api_model_total *t =
        g->models_count ? bsearch(&key, g->models, g->models_count, sizeof(*g->models),
                                  api_model_cmp)
                        : NULL;
    if (t)
        *s = t->sum;
    else
        memset(s, 0, sizeof(*s));
}

/* Sum the (model, state) rows into one total per model, in one pass over rows sorted by
 * model: the answer costs O(R log R), not a scan of every row for every model. */
static int api_model_totals(struct api_gather *g)
{
    struct api_model_total *t;

    if (g->rows_count == 0)
        return BD_OK;
    t = bd_http_alloc(g->req, g->rows_count * sizeof(*t));
    if (t == NULL)
        return BD_ENOMEM;
    for (unsigned i = 0; i < g->rows_count; i++)
        t[i] = (struct api_model_total){ .model = g->rows[i].model, .row = i };
    qsort(t, g->rows_count, sizeof(*t), api_model_cmp);
    g->models = t;
    g->models_count = 0;
    for (unsigned i = 0; i < g->rows_count; i++) {
        const struct bd_job_group *r = &g->rows[t[i].row];
        struct api_model_total *m = &g->models[g->models_count];
        if (g->models_count == 0 || strcmp(g->models[g->models_count - 1].model, r->model)) {
            *m = (struct api_model_total){ .model = r->model };
            g->models_count++;
        } else {
            m = &g->models[g->models_count - 1];
        }
        struct api_model_sum *s = &m->sum;
        if (r->is_known_state && r->state == BD_JOB_QUEUED)
            s->pending += r->jobs;
        else if (r->is_known_state && r->state == BD_JOB_PROCESSING)
            s->processing += r->jobs;
        if (api_is_finished(r)) {
            s->finished += r->jobs;
            s->ran += r->ran;
            s->run_s += r->run_s;
        }
        s->processed += r->processed_items;
        s->failed += r->failed_items;
        s->processing_ms += r->processing_ms;
    }
    return BD_OK;
}

/* Call fn for every model: the configured ones in config order, then any other model name
 * PostgreSQL knows (jobs accepted by a process with another config). */
typedef int (*api_model_fn)(const struct api_gather *g, const char *model, json_t *obj);

static int api_each_model(const struct api_gather *g, json_t *obj, api_model_fn fn)
{
    const struct bd_config *cfg = g->srv->cfg;

    for (unsigned i = 0; i < cfg->models_count; i++)
        if (fn(g, cfg->models[i].name, obj) < 0)
            return BD_ENOMEM;
    for (unsigned i = 0; i < g->models_count; i++) {
        const char *m = g->models[i].model;
        if (*m == '\0' || json_object_get(obj, m) != NULL)
            continue;
        if (fn(g, m, obj) < 0)
            return BD_ENOMEM;
    }
    return BD_OK;
}

/* How busy this process keeps a configured model's request slots: in flight now, the
 * limit, and the slot-seconds used so far (null for a model this process does not run). */
static json_t *api_model_slots(const struct api_gather *g, const char *model)
{
    const struct bd_config *cfg = g->srv->cfg;

    for (unsigned i = 0; g->srv->models && i < cfg->models_count; i++) {
        const struct bd_model_stats *st = bd_model_client_get_stats(g->srv->models, i);
        if (st == NULL || strcmp(cfg->models[i].name, model) != 0)
            continue;
        return json_pack("{s:i,s:i,s:o}", "in_flight", (int)st->in_flight, "limit",
                         (int)st->concurrency_limit, "busy_seconds_total",
                         api_real1(bd_model_client_get_busy_seconds(g->srv->models, i)));
    }
    return json_null();
}

/* The pause state this process holds (read from PostgreSQL twice a second); all clear
 * while the engine has not read it yet. */
static const struct bd_job_pause_state *api_pause_state(const struct api_gather *g)
{
    static const struct bd_job_pause_state none;
    return g->srv->jobs ? bd_job_engine_get_pause(g->srv->jobs) : &none;
}

static int api_model_queue(const struct api_gather *g, const char *model, json_t *obj)
{
    struct api_model_sum s;
    long long paused_at = bd_job_pause_model_at(api_pause_state(g), model);

    api_model_sum(g, model, &s);
    return json_object_set_new(obj, model,
                               json_pack("{s:I,s:I,s:o,s:o,s:b,s:o}", "pending",
                                         (json_int_t)s.pending, "processing",
                                         (json_int_t)s.processing, "avg_time_seconds",
                                         api_real1(s.ran ? s.run_s / (double)s.ran : 0.0),
                                         "slots", api_model_slots(g, model), "paused",
                                         paused_at != 0, "paused_at",
                                         paused_at != 0 ? bd__api_time_json(paused_at)
                                                        : json_null()));
}

static int api_model_perf(const struct api_gather *g, const char *model, json_t *obj)
{
    struct api_model_sum s;
    long long items;

    api_model_sum(g, model, &s);
    items = s.processed + s.failed;
    return json_object_set_new(
        obj, model,
        json_pack("{s:I,s:I,s:o,s:o}", "jobs_processed", (json_int_t)s.finished,
                  "items_processed", (json_int_t)items, "avg_processing_time_ms",
                  api_real1(items ? (double)s.processing_ms / (double)items : 0.0),
                  "success_rate", api_real1(api_success_rate(s.processed, s.failed))));
}

static json_t *api_queue_status_json(const struct api_gather *g)
{
    struct bd_server *srv = g->srv;
    struct api_totals t;
    unsigned cap = srv->jobs ? bd_job_engine_get_capacity(srv->jobs)
                             : srv->cfg->max_concurrent_jobs;
    unsigned active = srv->jobs ? bd_job_engine_get_active(srv->jobs) : 0;
    json_t *models = json_object(), *depth, *j;

    api_totals(g, &t);
    if (models == NULL || api_each_model(g, models, api_model_queue) < 0) {
        json_decref(models);
        return NULL;
    }
    if (g->has_counts)
        depth = json_pack("{s:I,s:I,s:I,s:I,s:I}", "high", (json_int_t)g->counts.pending[0],
                          "normal", (json_int_t)g->counts.pending[1], "low",
                          (json_int_t)g->counts.pending[2], "in_flight",
                          (json_int_t)g->counts.inflight, "queued_items",
                          (json_int_t)g->counts.queued_items);
    else
        depth = json_null();
    j = json_pack(
        "{s:{s:I,s:I,s:I,s:I,s:I,s:I},s:{s:i,s:i,s:i},s:{s:o,s:o,s:o,s:o},s:o,s:o}",
        "queue_status", "total_jobs", (json_int_t)t.jobs, "pending_jobs",
        (json_int_t)t.by_state[BD_JOB_QUEUED], "processing_jobs",
        (json_int_t)t.by_state[BD_JOB_PROCESSING], "completed_jobs",
        (json_int_t)t.by_state[BD_JOB_COMPLETED], "failed_jobs",
        (json_int_t)t.by_state[BD_JOB_FAILED], "cancelled_jobs",
        (json_int_t)t.by_state[BD_JOB_CANCELLED],
        "processing_capacity", "max_concurrent_jobs", (int)cap, "active_workers", (int)active,
        "available_workers", (int)(cap > active ? cap - active : 0),
        "queue_health", "average_wait_time_seconds",
        api_real1(t.started ? t.wait_s / (double)t.started : 0.0),
        "average_processing_time_seconds", api_real1(t.ran ? t.run_s / (double)t.ran : 0.0),
        "throughput_items_per_minute", api_real1(api_window_per_minute(g)), "success_rate",
        api_real1(api_success_rate(t.processed, t.failed)),
        "model_queues", models, "queue_depth", depth);
    if (j != NULL) {
        const struct bd_job_pause_state *p = api_pause_state(g);
        bool is_failed = false;
        bd__api_set(j, "paused", json_boolean(p->is_paused), &is_failed);
        bd__api_set(j, "paused_at", p->is_paused ? bd__api_time_json(p->paused_at_ms)
                                                 : json_null(), &is_failed);
        if (is_failed) {
            json_decref(j);
            j = NULL;
        }
    }
    return j;
}

/* This process's webhook deliveries by result, and the outbox's pending count (null until
 * first counted). */
static json_t *api_webhooks_json(const struct bd_metrics *m)
{
    const struct bd_metrics_webhooks *w = bd_metrics_get_webhooks(m);
    const struct bd_hist *h = &w->delivery_seconds;

    return json_pack("{s:I,s:I,s:I,s:o,s:o}", "delivered",
                     (json_int_t)w->results[BD_METRICS_WEBHOOK_DELIVERED], "failed_attempts",
                     (json_int_t)w->results[BD_METRICS_WEBHOOK_FAILED_ATTEMPT], "gave_up",
                     (json_int_t)w->results[BD_METRICS_WEBHOOK_GAVE_UP], "pending",
                     w->pending >= 0 ? json_integer(w->pending) : json_null(),
                     "average_delivery_seconds",
                     api_real1(h->count ? h->sum / (double)h->count : 0.0));
}

static json_t *api_metrics_json(struct api_gather *g)
{
    struct bd_server *srv = g->srv;
    const struct bd_config *cfg = srv->cfg;
    uint64_t errs[BD_MODEL_ERR_KIND_COUNT] = { 0 };
    struct api_totals t;
    json_t *models = json_object(), *redis_mb, *common;
    long rss = bd_metrics_get_rss_bytes();
    uint64_t total = 0, best = 0;
    int best_kind = -1;

    api_totals(g, &t);
    if (models == NULL || api_each_model(g, models, api_model_perf) < 0) {
        json_decref(models);
        return NULL;
    }
    for (unsigned i = 0; srv->models && i < cfg->models_count; i++) {
        const struct bd_model_stats *st = bd_model_client_get_stats(srv->models, i);
        for (unsigned k = 0; st && k < BD_MODEL_ERR_KIND_COUNT; k++)
            errs[k] += st->errors[k];
    }
    /* A 429 is waited out inside the model client and fails nothing: it is reported on its
     * own, not as an error. */
    for (int k = 0; k < BD_MODEL_ERR_RATE_LIMITED; k++) {
        total += errs[k];
        if (errs[k] > best) {
            best = errs[k];
            best_kind = k;
        }
    }
    common = best_kind >= 0 ? json_string(bd_model_error_kind_name(best_kind)) : json_null();
    redis_mb = g->has_memory ? api_real1((double)g->used_memory / (1024.0 * 1024.0))
                             : json_null();
    json_t *out = json_pack(
        "{s:{s:{s:I,s:I,s:o,s:o,s:o},s:{s:o,s:o,s:o,s:i},s:{s:I,s:I,s:I,s:I,s:I,s:o},s:o,s:o}}",
        "batch_metrics",
        "performance", "total_jobs_processed",
        (json_int_t)(t.by_state[BD_JOB_COMPLETED] + t.by_state[BD_JOB_FAILED]),
        "total_items_processed", (json_int_t)(t.processed + t.failed),
        "average_throughput_items_per_minute", api_real1(api_window_per_minute(g)),
        "average_job_processing_time_seconds",
        api_real1(t.ran ? t.run_s / (double)t.ran : 0.0), "success_rate",
        api_real1(api_success_rate(t.processed, t.failed)),
        "resource_utilization", "cpu_usage_percent",
        api_real1(bd_metrics_sample_cpu_percent(srv->metrics)), "memory_usage_mb",
        api_real1(rss > 0 ? (double)rss / (1024.0 * 1024.0) : 0.0), "redis_memory_usage_mb",
        redis_mb, "postgres_connections",
        (int)((srv->pg ? bd_pg_get_connected(srv->pg) : 0) +
              (srv->pg_jobs ? bd_pg_get_connected(srv->pg_jobs) : 0)),
        "error_statistics", "total_errors", (json_int_t)total, "timeout_errors",
        (json_int_t)errs[BD_MODEL_ERR_TIMEOUT], "connection_errors",
        (json_int_t)errs[BD_MODEL_ERR_CONNECTION], "processing_errors",
        (json_int_t)errs[BD_MODEL_ERR_PROCESSING], "rate_limited_responses",
        (json_int_t)errs[BD_MODEL_ERR_RATE_LIMITED], "most_common_error", common,
        "model_performance", models, "queue_pause", bd__api_pause_json(api_pause_state(g)));
    if (out != NULL && srv->metrics != NULL)
        json_object_set_new(out, "webhooks", api_webhooks_json(srv->metrics));
    return out;
}

/* ---- gathering ------------------------------------------------------------------------ */

static void api_gather_respond(struct api_gather *g)
{
    json_t *j;

    if (!g->has_jobs) {
        bd_http_respond_err(g->req, BD_EPG, NULL, NULL);
        return;
    }
    j = g->is_metrics ? api_metrics_json(g) : api_queue_status_json(g);
    if (j == NULL)
        bd_http_respond_err(g->req, BD_ENOMEM, NULL, NULL);
    else
        bd__api_respond_json(g->req, 200, j, "Cache-Control: no-store\r\n");
}

static void api_gather_done(struct api_gather *g)
{
    if (--g->pending == 0)
        api_gather_respond(g);
}

static void api_on_jobs(int status, const struct bd_job_group *groups, size_t n,
                        const char *pg_message, void *arg)
{
    struct api_gather *g = arg;

    (void)pg_message;                  /* answered as EPG below, when the figures are built */
    if (status != BD_OK)
        goto done;
    g->rows = n > 0 ? bd_http_alloc(g->req, n * sizeof(*g->rows)) : NULL;
    if (n > 0 && g->rows == NULL)
        goto done;
    for (size_t i = 0; i < n; i++) {
        g->rows[i] = groups[i];
        /* Borrowed until this callback returns: the answer is built later. */
        if ((g->rows[i].model = bd_http_strdup(g->req, groups[i].model)) == NULL)
            goto done;
    }
    g->rows_count = (unsigned)n;
    g->has_jobs = api_model_totals(g) == BD_OK;
done:
    api_gather_done(g);
}

static void api_on_window(int status, long long items, double span_s, const char *pg_message,
                          void *arg)
{
    struct api_gather *g = arg;

    (void)pg_message;                  /* the throughput is then shown as 0 */
    if (status == BD_OK) {
        g->window_items = items;
        g->window_span_s = span_s;
        g->has_window = true;
    }
    api_gather_done(g);
}

static void api_on_counts(int status, const struct bd_rq_counts *c, void *arg)
{
    struct api_gather *g = arg;

    if (status == BD_OK && c) {
        g->counts = *c;
        g->has_counts = true;
    }
    api_gather_done(g);
}

static void api_on_memory(int status, long long value, void *arg)
{
    struct api_gather *g = arg;

    if (status == BD_OK && value >= 0) {
        g->used_memory = value;
        g->has_memory = true;
    }
    api_gather_done(g);
}

static void api_gather_start(struct bd_http_request *req, struct bd_server *srv, bool is_metrics)
{
    struct api_gather *g;

    if (!bd__api_check_auth(req, srv))
        return;
    if (srv->pg == NULL || !bd_pg_is_up(srv->pg) || srv->jobs == NULL ||
        !bd_job_engine_is_ready(srv->jobs)) {
        bd_http_respond_err(req, BD_EPG, NULL, NULL);
        return;
    }
    g = bd_http_alloc(req, sizeof(*g));
    if (g == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    memset(g, 0, sizeof(*g));
    g->req = req;
    g->srv = srv;
    g->is_metrics = is_metrics;
    g->pending = 1;                        /* released below, after every call was started */
    if (bd_job_store_get_job_groups(srv->pg, api_on_jobs, g) == BD_OK)
        g->pending++;
    if (bd_job_store_get_recent_items(srv->pg, API_WINDOW_S, api_on_window, g) == BD_OK)
        g->pending++;
    if (srv->rq && bd_rq_is_up(srv->rq)) {
        if (!is_metrics && bd_rq_get_counts(srv->rq, api_on_counts, g) == BD_OK)
            g->pending++;
        if (is_metrics && bd_rq_get_used_memory(srv->rq, api_on_memory, g) == BD_OK)
            g->pending++;
    }
    api_gather_done(g);
}

static void api_on_queue_status(struct bd_http_request *req, void *arg)
{
    api_gather_start(req, arg, false);
}

static void api_on_metrics(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;

    if (!srv->cfg->metrics_enabled) {
        bd_http_respond_err(req, BD_ENOTFOUND, "metrics are disabled", NULL);
        return;
    }
    api_gather_start(req, srv, true);
}

int bd__api_register_metrics(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/queue/status", api_on_queue_status,
                                 srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/metrics", api_on_metrics, srv);
    rc = rc ? rc : bd__api_register_queue(r, srv);
    return rc;
}
