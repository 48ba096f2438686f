/* api_admin.c -- liveness, readiness, Prometheus metrics, and the route registry.
 *
 * Owns each scrape's gather record (heap, freed once the exposition is sent); reads module
 * state through their headers, job counts through job_store.h. Loop thread only. Error
 * statuses come from the error map (error.h), through bd_http_respond_err.
 * SPDX-License-Identifier: MIT
 */
#include "api_internal.h"
#include "api_ui.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/model_client.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdlib.h>
#include <string.h>

static void api_on_healthz(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd__api_respond_json(req, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

static void api_on_readyz(struct bd_http_request *req, void *arg)
{
    struct bd_server_readiness r;
    bool ready = bd_server_waiting_for(arg) == NULL;

    bd_server_get_readiness(arg, &r);
    bd__api_respond_json(req, ready ? 200 : bd_err_http_status(BD_ENOTREADY),
                         json_pack("{s:s,s:b,s:b,s:b,s:b}", "status",
                                   ready ? "ready" : "not_ready", "redis", r.is_redis_up,
                                   "postgres", r.is_postgres_up, "schema", r.is_migrated,
                                   "stopping", r.is_stopping),
                         ready ? NULL : "Retry-After: 1\r\n");
}

/* ---- Prometheus /metrics ---------------------------------------------------------------
 * One scrape gathers, in parallel, the job counts by state from PostgreSQL and the queue
 * depths from Redis (both shared by every process: the same figures from each), then
 * writes everything this process counted itself. A store that is down or slow only drops
 * its families (batchd_redis_up / batchd_postgres_up say why); the rest is still served. */

struct api_scrape {
    struct bd_http_request *req;
    struct bd_server *srv;
    unsigned pending;                      /* store calls still due, +1 while starting */
    bool has_states;
    long long states[BD_JOB_STATE_COUNT];
    bool has_counts;
    struct bd_rq_counts counts;
    bool has_models;
    struct bd_buf models;                  /* batchd_model_queue_jobs samples */
};

static void api_prom_gauge(struct bd_buf *out, const char *name, const char *help, double v)
{
    bd_buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %.17g\n", name, help, name, name, v);
}

static void api_prom_header(struct bd_buf *out, const char *name, const char *type,
                            const char *help)
{
    bd_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Families from the model client's per-model stats (this process). */
static void api_prom_models(struct bd_buf *out, struct bd_server *srv)
{
    const struct bd_config *cfg = srv->cfg;
    struct bd_buf lab;
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        { "batchd_model_requests_total", "counter", "HTTP requests to the model completed." },
        { "batchd_model_inputs_total", "counter", "Texts the model embedded successfully." },
        { "batchd_model_connections_total", "counter", "TCP connections opened to the model." },
        { "batchd_model_in_flight", "gauge", "Requests to the model in flight now." },
        { "batchd_model_concurrency_limit", "gauge", "Configured cap on requests in flight." },
        { "batchd_model_rate_limit_rps", "gauge",
          "Current adaptive request rate ceiling (0 = unlimited)." },
        { "batchd_model_circuit_open", "gauge",
          "1 while the model's circuit breaker is open or half-open." },
        { "batchd_model_busy_seconds_total", "counter",
          "Slot-seconds the model's requests held (rate / concurrency limit = how busy)." },
    };

    if (srv->models == NULL)
        return;
    bd_buf_init(&lab);
    for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
        api_prom_header(out, fam[f].name, fam[f].type, fam[f].help);
        for (unsigned i = 0; i < cfg->models_count; i++) {
            const struct bd_model_stats *st = bd_model_client_get_stats(srv->models, i);
            double v;
            if (st == NULL)
                continue;
            switch (f) {
            case 0: v = (double)st->requests; break;
            case 1: v = (double)st->inputs; break;
            case 2: v = (double)st->connections; break;
            case 3: v = st->in_flight; break;
            case 4: v = st->concurrency_limit; break;
            case 5: v = st->rate_limit_rps; break;
            case 6: v = st->is_circuit_open; break;
            default: v = bd_model_client_get_busy_seconds(srv->models, i); break;
            }
            bd_buf_printf(out, "%s{model=\"", fam[f].name);
            bd_metrics_escape_label(out, cfg->models[i].name);
            bd_buf_printf(out, "\"} %.17g\n", v);
        }
    }
    api_prom_header(out, "batchd_model_errors_total", "counter",
                    "Failed model requests by kind (timeout_error, connection_error, "
                    "processing_error, rate_limited).");
    for (unsigned i = 0; i < cfg->models_count; i++) {
        const struct bd_model_stats *st = bd_model_client_get_stats(srv->models, i);
        for (unsigned k = 0; st && k < BD_MODEL_ERR_KIND_COUNT; k++) {
            bd_buf_puts(out, "batchd_model_errors_total{model=\"");
            bd_metrics_escape_label(out, cfg->models[i].name);
            bd_buf_printf(out, "\",kind=\"%s\"} %llu\n", bd_model_error_kind_name(k),
                          (unsigned long long)st->errors[k]);
        }
    }
    api_prom_header(out, "batchd_model_request_duration_seconds", "histogram",
                    "Duration of each completed model request (hashing: each slice "
                    "computed on the loop).");
    for (unsigned i = 0; i < cfg->models_count; i++) {
        const struct bd_model_stats *st = bd_model_client_get_stats(srv->models, i);
        if (st == NULL)
            continue;
        bd_buf_reset(&lab);
        bd_buf_puts(&lab, "model=\"");
        bd_metrics_escape_label(&lab, cfg->models[i].name);
        bd_buf_append(&lab, "\"", 2);                  /* with the NUL */
        if (!lab.is_failed)
            bd_hist_render(&st->request_seconds, out, "batchd_model_request_duration_seconds",
                           NULL, lab.data, 0);
    }
    if (lab.is_failed)
        out->is_failed = 1;
    bd_buf_free(&lab);
}

static void api_prom_engine(struct bd_buf *out, struct bd_server *srv)
{
    const struct bd_job_engine_stats *st;

    if (srv->jobs == NULL)
        return;
    st = bd_job_engine_get_stats(srv->jobs);
    api_prom_gauge(out, "batchd_jobs_active", "Jobs running in this process.",
                   bd_job_engine_get_active(srv->jobs));
    api_prom_gauge(out, "batchd_jobs_capacity",
                   "Jobs this process runs at once at most (max_concurrent_jobs).",
                   bd_job_engine_get_capacity(srv->jobs));
    api_prom_gauge(out, "batchd_throughput_items_per_second",
                   "Items per second of the jobs finished in the last 15 minutes, all "
                   "processes.", bd_job_engine_get_throughput(srv->jobs));
    api_prom_header(out, "batchd_engine_events_total", "counter",
                    "Job engine events in this process.");
    const struct {
        const char *event;
        uint64_t v;
    } ev[] = {
        { "job_claimed", st->jobs_claimed }, { "batch_failed", st->batches_failed },
        { "batch_retry", st->batch_retries }, { "lease_lost", st->leases_lost },
        { "lease_reaped", st->reaped }, { "queue_rebuilt", st->rebuilt },
        { "job_swept", st->swept },
    };
    for (size_t i = 0; i < sizeof(ev) / sizeof(ev[0]); i++)
        bd_buf_printf(out, "batchd_engine_events_total{event=\"%s\"} %llu\n", ev[i].event,
                      (unsigned long long)ev[i].v);
}

static void api_scrape_render(struct api_scrape *sc)
{
    struct bd_server *srv = sc->srv;
    static const char *const prios[BD_PRIO_COUNT] = { "high", "normal", "low" };
    struct bd_buf out;

    bd_buf_init(&out);
    bd_metrics_render(srv->metrics, &out, srv->start_time_unix);
    bd_metrics_render_jobs(srv->metrics, &out, srv->cfg);
    if (sc->has_states) {
        api_prom_header(&out, "batchd_jobs_in_state", "gauge",
                        "Jobs in PostgreSQL by state (all processes sharing the store).");
        for (unsigned st = 0; st < BD_JOB_STATE_COUNT; st++)
            bd_buf_printf(&out, "batchd_jobs_in_state{state=\"%s\"} %lld\n",
                          bd_job_state_name(st), sc->states[st]);
    }
    if (sc->has_counts) {
        api_prom_header(&out, "batchd_queue_depth", "gauge",
                        "Jobs waiting in the Redis queue by priority (all processes).");
        for (unsigned p = 0; p < BD_PRIO_COUNT; p++)
            bd_buf_printf(&out, "batchd_queue_depth{priority=\"%s\"} %lld\n", prios[p],
                          sc->counts.pending[p]);
        api_prom_gauge(&out, "batchd_queue_inflight", "Jobs leased by a worker (all processes).",
                       (double)sc->counts.inflight);
        api_prom_gauge(&out, "batchd_queue_items",
                       "Items of queued jobs (the backpressure counter).",
                       (double)sc->counts.queued_items);
    }
    if (sc->has_models) {
        api_prom_header(&out, "batchd_model_queue_jobs", "gauge",
                        "Jobs per model waiting (pending) or running (processing), all "
                        "processes.");
        if (sc->models.len > 0)
            bd_buf_append(&out, sc->models.data, sc->models.len);
    }
    api_prom_models(&out, srv);
    api_prom_engine(&out, srv);
    bd_buf_printf(&out, "# HELP batchd_redis_up Whether the Redis connection is up.\n"
                        "# TYPE batchd_redis_up gauge\nbatchd_redis_up %d\n",
                  srv->rq && bd_rq_is_up(srv->rq));
    bd_buf_printf(&out, "# HELP batchd_postgres_up Whether a PostgreSQL connection is up.\n"
                        "# TYPE batchd_postgres_up gauge\nbatchd_postgres_up %d\n",
                  srv->pg && bd_pg_is_up(srv->pg));
    bd_buf_printf(&out, "# HELP batchd_postgres_pool_connections PostgreSQL connections.\n"
                        "# TYPE batchd_postgres_pool_connections gauge\n"
                        "batchd_postgres_pool_connections{state=\"connected\"} %u\n"
                        "batchd_postgres_pool_connections{state=\"configured\"} %u\n"
                        "batchd_postgres_pool_connections{state=\"waiting\"} %u\n",
                  (srv->pg ? bd_pg_get_connected(srv->pg) : 0) +
                      (srv->pg_jobs ? bd_pg_get_connected(srv->pg_jobs) : 0),
                  (srv->pg ? bd_pg_get_pool_size(srv->pg) : 0) +
                      (srv->pg_jobs ? bd_pg_get_pool_size(srv->pg_jobs) : 0),
                  (srv->pg ? bd_pg_get_waiting(srv->pg) : 0) +
                      (srv->pg_jobs ? bd_pg_get_waiting(srv->pg_jobs) : 0));
    bd_buf_printf(&out, "# HELP batchd_http_connections Open HTTP connections.\n"
                        "# TYPE batchd_http_connections gauge\nbatchd_http_connections %u\n",
                  srv->http ? bd_http_server_get_connections(srv->http) : 0);
    bd_buf_printf(&out, "# HELP batchd_submit_uploads Streamed job submissions in progress "
                        "(each holds a PostgreSQL connection until its COMMIT).\n"
                        "# TYPE batchd_submit_uploads gauge\nbatchd_submit_uploads %u\n"
                        "# HELP batchd_submit_uploads_waiting Streamed job submissions "
                        "waiting for a PostgreSQL connection, their bodies paused.\n"
                        "# TYPE batchd_submit_uploads_waiting gauge\n"
                        "batchd_submit_uploads_waiting %u\n",
                  srv->submit_streams, srv->uploads_waiting_count);
    if (out.is_failed || sc->models.is_failed)
        bd_http_respond_err(sc->req, BD_ENOMEM, NULL, NULL);
    else
        bd_http_respond(sc->req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL,
                        out.data, out.len);
    bd_buf_free(&out);
    bd_buf_free(&sc->models);
    free(sc);
}

static void api_scrape_done(struct api_scrape *sc)
{
    if (--sc->pending == 0)
        api_scrape_render(sc);
}

static void api_scrape_on_states(int status, const long long *counts, const char *pg_message,
                                 void *arg)
{
    struct api_scrape *sc = arg;

    (void)pg_message;                      /* the family is dropped; batchd_postgres_up tells */
    if (status == BD_OK) {
        sc->has_states = true;
        memcpy(sc->states, counts, sizeof(sc->states));
    }
    api_scrape_done(sc);
}

static void api_scrape_on_counts(int status, const struct bd_rq_counts *c, void *arg)
{
    struct api_scrape *sc = arg;

    if (status == BD_OK && c) {
        sc->has_counts = true;
        sc->counts = *c;
    }
    api_scrape_done(sc);
}

static long long api_reply_ll(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return atoll(r->str);
    return 0;
}

static void api_scrape_on_models(int status, const redisReply *reply, void *arg)
{
    struct api_scrape *sc = arg;

    if (status == BD_OK && reply && reply->type == REDIS_REPLY_ARRAY) {
        sc->has_models = true;
        for (size_t i = 0; i + 2 < reply->elements; i += 3) {
            const redisReply *name = reply->element[i];
            if (name->type != REDIS_REPLY_STRING)
                continue;
            for (unsigned k = 0; k < 2; k++) {
                bd_buf_puts(&sc->models, "batchd_model_queue_jobs{model=\"");
                bd_metrics_escape_label(&sc->models, name->str);
                bd_buf_printf(&sc->models, "\",state=\"%s\"} %lld\n",
                              k == 0 ? "pending" : "processing",
                              api_reply_ll(reply->element[i + 1 + k]));
            }
        }
    }
    api_scrape_done(sc);
}

static void api_on_prometheus(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_scrape *sc;

    if (!srv->cfg->metrics_enabled) {
        bd_http_respond_err(req, BD_ENOTFOUND, "metrics are disabled", NULL);
        return;
    }
    /* A scrape reads PostgreSQL and Redis: operators who expose the port can require a key
     * (Prometheus sends it with `authorization: {credentials: ...}`). */
    if (srv->cfg->metrics_require_key && !bd__api_check_auth(req, srv))
        return;
    sc = calloc(1, sizeof(*sc));
    if (sc == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    sc->req = req;
    sc->srv = srv;
    sc->pending = 1;                       /* released below, after every call was started */
    bd_buf_init(&sc->models);
    if (srv->pg && bd_pg_is_up(srv->pg) && srv->jobs && bd_job_engine_is_ready(srv->jobs) &&
        bd_job_store_count_jobs_by_state(srv->pg, api_scrape_on_states, sc) == BD_OK)
        sc->pending++;
    if (srv->rq && bd_rq_is_up(srv->rq)) {
        if (bd_rq_get_counts(srv->rq, api_scrape_on_counts, sc) == BD_OK)
            sc->pending++;
        if (bd_rq_get_model_counts(srv->rq, api_scrape_on_models, sc) == BD_OK)
            sc->pending++;
    }
    api_scrape_done(sc);
}

int bd__api_register_admin(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;
    rc = rc ? rc : bd_router_add(r, "GET", "/healthz", api_on_healthz, srv);
    rc = rc ? rc : bd_router_add(r, "GET", "/readyz", api_on_readyz, srv);
    rc = rc ? rc : bd_router_add(r, "GET", "/metrics", api_on_prometheus, srv);
    return rc;
}

int bd_api_register(struct bd_router *r, struct bd_server *srv)
{
    int rc = bd__api_register_admin(r, srv);
    rc = rc ? rc : bd__api_register_jobs(r, srv);
    rc = rc ? rc : bd__api_register_submit(r, srv);
    rc = rc ? rc : bd__api_register_status(r, srv);
    rc = rc ? rc : bd__api_register_results(r, srv);
    rc = rc ? rc : bd__api_register_events(r, srv);
    rc = rc ? rc : bd__api_register_metrics(r, srv);
    rc = rc ? rc : bd__api_register_files(r, srv);
    rc = rc ? rc : bd__api_register_batches(r, srv);
    rc = rc ? rc : bd__api_register_models(r, srv);
    rc = rc ? rc : bd__api_register_ui(r, srv);
    return rc;
}
