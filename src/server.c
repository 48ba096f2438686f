/* server.c -- creates batchd's modules on the loop, handles signals, shuts down in order.
 *
 * Owns struct bd_server's handles (signals, loop-lag timer) and the order of start and
 * stop: HTTP stops accepting first, the job engine hands its jobs back, then the stores
 * close. Loop thread only.  SPDX-License-Identifier: MIT
 */
#include "batchd/server.h"
#include "batchd/batch.h"

#include "batchd/api.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/model_client.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/svc_notify.h"
#include "batchd/webhook.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define SERVER_LAG_PROBE_MS 100

static void server_on_handle_closed(uv_handle_t *h)
{
    struct bd_server *srv = h->loop->data;
    srv->pending_closes--;
}

static void server_on_all_closed(struct bd_server *srv)
{
    bd_metrics_free(srv->metrics);
    srv->metrics = NULL;
    bd_log(BD_LOG_INFO, "server", "event=stopped exit_code=%d", srv->exit_code);
}

static void server_on_pg_closed(int status, void *arg)
{
    struct bd_server *srv = arg;
    (void)status;
    srv->pg = NULL;
    server_on_all_closed(srv);
}

static void server_on_pg_jobs_closed(int status, void *arg)
{
    struct bd_server *srv = arg;
    (void)status;
    srv->pg_jobs = NULL;
    if (srv->pg)
        bd_pg_close(srv->pg, server_on_pg_closed, srv);
    else
        server_on_all_closed(srv);
}

static void server_on_rq_closed(int status, void *arg)
{
    struct bd_server *srv = arg;
    (void)status;
    srv->rq = NULL;
    if (srv->pg_jobs)
        bd_pg_close(srv->pg_jobs, server_on_pg_jobs_closed, srv);
    else
        server_on_pg_jobs_closed(BD_OK, srv);
}

static void server_close_redis_pg(struct bd_server *srv)
{
    if (srv->rq)
        bd_rq_close(srv->rq, server_on_rq_closed, srv);
    else
        server_on_rq_closed(BD_OK, srv);
}

static void server_on_models_closed(void *arg)
{
    struct bd_server *srv = arg;
    srv->models = NULL;
    server_close_redis_pg(srv);
}

static void server_close_stores(struct bd_server *srv);

static void server_on_webhooks_closed(void *arg)
{
    struct bd_server *srv = arg;
    srv->webhooks = NULL;
    server_close_stores(srv);
}

static void server_close_stores(struct bd_server *srv)
{
    if (srv->webhooks) {                      /* before the pool its statements use */
        bd_webhook_close(srv->webhooks, server_on_webhooks_closed, srv);
        return;
    }
    if (srv->models)
        bd_model_client_close(srv->models, server_on_models_closed, srv);
    else
        server_close_redis_pg(srv);
}

static void server_on_jobs_stopped(void *arg)
{
    struct bd_server *srv = arg;
    bd_job_engine_free(srv->jobs);
    srv->jobs = NULL;
    server_close_stores(srv);
}

static void server_on_batches_stopped(void *arg)
{
    struct bd_server *srv = arg;

    srv->batches = NULL;
    if (srv->jobs)
        bd_job_engine_stop(srv->jobs, server_on_jobs_stopped, srv);
    else
        server_close_stores(srv);
}

static void server_on_http_closed(struct bd_http_server *http, void *arg)
{
    struct bd_server *srv = arg;
    (void)http;
    srv->http = NULL;
    bd_router_free(srv->router);
    srv->router = NULL;
    bd_api_free(srv);
    if (srv->batches) {                   /* it cancels through the engine: stops first */
        bd_batch_finalizer_stop(srv->batches, server_on_batches_stopped, srv);
        return;
    }
    if (srv->jobs)
        bd_job_engine_stop(srv->jobs, server_on_jobs_stopped, srv);
    else
        server_close_stores(srv);
}

void bd_server_get_readiness(const struct bd_server *srv, struct bd_server_readiness *out)
{
    out->is_redis_up = srv->rq != NULL && bd_rq_is_up(srv->rq);
    out->is_postgres_up = srv->pg != NULL && bd_pg_is_up(srv->pg) &&
                          (srv->pg_jobs == NULL || bd_pg_is_up(srv->pg_jobs));
    out->is_migrated = srv->jobs != NULL && bd_job_engine_is_ready(srv->jobs);
    out->is_stopping = srv->is_stopping;
}

const char *bd_server_waiting_for(const struct bd_server *srv)
{
    struct bd_server_readiness r;

    bd_server_get_readiness(srv, &r);
    if (r.is_stopping)
        return "stopping";
    if (!r.is_redis_up)
        return "waiting for Redis";
    if (!r.is_postgres_up)
        return "waiting for PostgreSQL";
    if (!r.is_migrated)
        return "waiting for the PostgreSQL schema migration";
    return NULL;
}

void bd_server_stop(struct bd_server *srv)
{
    if (srv->is_stopping)
        return;
    srv->is_stopping = true;
    bd_log(BD_LOG_INFO, "server", "event=stopping");
    bd_svc_notify_stopping();                 /* systemd: STOPPING=1 */
    uv_close((uv_handle_t *)&srv->sig_term, server_on_handle_closed);
    uv_close((uv_handle_t *)&srv->sig_int, server_on_handle_closed);
    uv_close((uv_handle_t *)&srv->sig_hup, server_on_handle_closed);
    uv_close((uv_handle_t *)&srv->lag_timer, server_on_handle_closed);
    srv->pending_closes += 4;
    if (srv->jobs)
        bd_job_engine_drain(srv->jobs);       /* no new job while HTTP winds down */
    if (srv->http)
        bd_http_server_close(srv->http, server_on_http_closed, srv);
    else
        server_on_http_closed(NULL, srv);
}

static void server_on_signal(uv_signal_t *sig, int signum)
{
    struct bd_server *srv = sig->data;

    if (signum == SIGHUP) {
        /* Logs go to stderr, which the supervisor owns: nothing to reopen. */
        bd_log(BD_LOG_INFO, "server", "event=sighup action=ignored");
        return;
    }
    bd_log(BD_LOG_INFO, "server", "event=signal signal=%s", signum == SIGTERM ? "TERM" : "INT");
    bd_server_stop(srv);
}

/* The probe expects to run every SERVER_LAG_PROBE_MS; anything later is time the loop
 * spent elsewhere (a callback that ran long). */
static void server_on_lag_probe(uv_timer_t *t)
{
    struct bd_server *srv = t->data;
    uint64_t now = uv_hrtime();

    /* Every probe is one observation (on time = 0), so _count is the number of probes. */
    if (srv->lag_expected_ns != 0 && srv->metrics)
        bd_metrics_observe_loop_lag(srv->metrics,
                                    now > srv->lag_expected_ns
                                        ? (double)(now - srv->lag_expected_ns) / 1e9
                                        : 0.0);
    srv->lag_expected_ns = now + (uint64_t)SERVER_LAG_PROBE_MS * 1000000ULL;
}

static void server_on_http_response(const struct bd_http_request *req, int status,
                                    uint64_t duration_ns, void *arg)
{
    struct bd_server *srv = arg;
    if (srv->metrics)
        bd_metrics_observe_http(srv->metrics, req->route, req->method, status,
                                (double)duration_ns / 1e9);
}

/* Descriptors batchd needs besides its clients: both PostgreSQL pools, Redis, the models'
 * and the webhook endpoints' connections (curl keeps idle ones), the loop's own, logs and
 * the slack for connections being refused with a 503. */
static unsigned server_fd_reserve(const struct bd_config *cfg)
{
    unsigned n = 64 + 2 * cfg->postgres_pool_size + 2 * cfg->webhook_concurrency;
    for (unsigned i = 0; i < cfg->models_count; i++)
        n += 2 * cfg->models[i].concurrency;
    return n;
}

/* Raise the soft RLIMIT_NOFILE to the hard limit (systemd's default soft limit is 1024,
 * as was max_connections), and keep the client connections below it with the reserve, so
 * idle clients can never starve PostgreSQL, Redis or a model call of a descriptor (a model
 * call failing with EMFILE would spend its items' retries). Returns the connections to
 * serve. */
static unsigned server_fd_budget(const struct bd_config *cfg)
{
    struct rlimit rl;
    unsigned want = cfg->http_max_connections;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return want;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < rl.rlim_max) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
    }
    unsigned reserve = server_fd_reserve(cfg);
    rlim_t soft = rl.rlim_cur;
    unsigned cap = soft == RLIM_INFINITY || soft > (rlim_t)want + reserve
                       ? want : (soft > (rlim_t)reserve + 16 ? (unsigned)(soft - reserve) : 16);
    if (cap < want)
        bd_log(BD_LOG_WARN, "server", "event=fd_limit soft=%llu reserve=%u max_connections=%u "
               "configured=%u note=raise_LimitNOFILE", (unsigned long long)soft, reserve, cap,
               want);
    else
        bd_log(BD_LOG_DEBUG, "server", "event=fd_limit soft=%llu reserve=%u max_connections=%u",
               (unsigned long long)soft, reserve, cap);
    return cap;
}

int bd_server_start(struct bd_server *srv, uv_loop_t *loop, const struct bd_config *cfg)
{
    char host[256];
    int port = 0, rc;

    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = cfg;
    srv->start_time_unix = (uint64_t)time(NULL);
    loop->data = srv;

    uv_signal_init(loop, &srv->sig_term);
    uv_signal_init(loop, &srv->sig_int);
    uv_signal_init(loop, &srv->sig_hup);
    uv_timer_init(loop, &srv->lag_timer);
    srv->sig_term.data = srv->sig_int.data = srv->sig_hup.data = srv->lag_timer.data = srv;
    uv_signal_start(&srv->sig_term, server_on_signal, SIGTERM);
    uv_signal_start(&srv->sig_int, server_on_signal, SIGINT);
    uv_signal_start(&srv->sig_hup, server_on_signal, SIGHUP);
    uv_timer_start(&srv->lag_timer, server_on_lag_probe, SERVER_LAG_PROBE_MS,
                   SERVER_LAG_PROBE_MS);
    signal(SIGPIPE, SIG_IGN);

    snprintf(host, sizeof(host), "%s", cfg->listen_host);
    port = cfg->listen_port;

    srv->metrics = bd_metrics_new();
    if (srv->metrics == NULL) {
        rc = BD_ENOMEM;
        goto fail;
    }

    struct bd_rq_options rqo = {
        .url = cfg->redis_url, .worker_id = cfg->worker_id, .prefix = NULL,
        .lease_s = cfg->lease_s, .command_timeout_s = 5.0,
    };
    rc = bd_rq_new(loop, &rqo, &srv->rq);
    if (rc < 0) {
        bd_log(BD_LOG_ERROR, "server", "event=redis_init_failed err=%s", bd_strerror(rc));
        goto fail;
    }
    struct bd_pg_options pgo = {
        .conninfo = cfg->postgres_url, .pool_size = cfg->postgres_pool_size,
        .acquire_timeout_s = 5.0, .statement_timeout_s = 60.0,
        /* jobs and batches that end through this process's sessions make webhook events
         * only when this process has endpoints to send them to */
        .is_webhooks_on = cfg->webhook_endpoints_count > 0,
    };
    rc = bd_pg_new(loop, &pgo, &srv->pg);
    if (rc < 0) {
        bd_log(BD_LOG_ERROR, "server", "event=postgres_init_failed err=%s", bd_strerror(rc));
        goto fail;
    }
    /* The job engine's own pool commits asynchronously: its writes (start, checkpoints,
     * finish) are all safe to redo, so a PostgreSQL crash that loses the last few hundred
     * milliseconds of them only makes a batch run again (upserts, same transaction as its
     * counters). Submits, cancels and retries stay on the synchronous pool: a 202 or 200
     * is durable. */
    pgo.is_async_commit = true;
    rc = bd_pg_new(loop, &pgo, &srv->pg_jobs);
    if (rc < 0) {
        bd_log(BD_LOG_ERROR, "server", "event=postgres_init_failed err=%s", bd_strerror(rc));
        goto fail;
    }

    srv->models = bd_model_client_new(loop, cfg, &rc);
    if (srv->models == NULL) {
        bd_log(BD_LOG_ERROR, "server", "event=model_client_init_failed err=%s",
               bd_strerror(rc));
        goto fail;
    }
    struct bd_job_deps deps = {
        .loop = loop, .cfg = cfg, .pg = srv->pg_jobs ? srv->pg_jobs : srv->pg,
        .pg_sync = srv->pg, .rq = srv->rq, .models = srv->models, .metrics = srv->metrics,
    };
    srv->jobs = bd_job_engine_new(&deps, &rc);
    if (srv->jobs == NULL) {
        bd_log(BD_LOG_ERROR, "server", "event=job_engine_init_failed err=%s", bd_strerror(rc));
        goto fail;
    }

    struct bd_webhook_deps whd = {
        .loop = loop, .cfg = cfg, .pg = srv->pg, .metrics = srv->metrics,
    };
    srv->webhooks = bd_webhook_new(&whd, &rc);
    if (srv->webhooks == NULL) {
        bd_log(BD_LOG_ERROR, "server", "event=webhook_init_failed err=%s", bd_strerror(rc));
        goto fail;
    }

    srv->router = bd_router_new();
    if (srv->router == NULL) {
        rc = BD_ENOMEM;
        goto fail;
    }
    rc = bd_api_register(srv->router, srv);
    if (rc < 0)
        goto fail;

    struct bd_http_options ho = {
        .max_connections = server_fd_budget(cfg),
        .max_header_bytes = cfg->http_max_header_bytes,
        .max_url_bytes = cfg->http_max_url_bytes,
        .max_body_bytes = cfg->http_max_body_bytes,
        .idle_timeout_ms = (uint64_t)(cfg->http_idle_timeout_s * 1000.0),
        .request_timeout_ms = (uint64_t)(cfg->http_request_timeout_s * 1000.0),
        .write_timeout_ms = (uint64_t)(cfg->http_write_timeout_s * 1000.0),
        .on_request = bd_router_dispatch, .on_request_arg = srv->router,
        .on_headers = bd_api_on_headers, .on_headers_arg = srv,
        .on_response = server_on_http_response, .on_response_arg = srv,
    };
    rc = bd_http_server_new(loop, &ho, &srv->http);
    if (rc < 0)
        goto fail;
    rc = bd_http_server_listen(srv->http, host, port);
    if (rc < 0) {
        bd_log(BD_LOG_ERROR, "server", "event=listen_failed listen=%s err=%s", cfg->listen,
               bd_strerror(rc));
        goto fail;
    }
    bd_job_engine_start(srv->jobs);
    struct bd_batch_final_deps fd = {
        .loop = loop, .pg = srv->pg, .jobs = srv->jobs, .owner = cfg->worker_id,
        .interval_s = 1.0,
    };
    if ((srv->batches = bd_batch_finalizer_start(&fd)) == NULL) {
        rc = BD_ENOMEM;
        goto fail;
    }
    bd_webhook_start(srv->webhooks);
    bd_log(BD_LOG_INFO, "server", "event=listening url=http://%s:%d version=%s worker=%s",
           host, bd_http_server_get_port(srv->http), BATCHD_VERSION, cfg->worker_id);
    return BD_OK;

fail:
    srv->exit_code = 1;
    bd_server_stop(srv);
    return rc < 0 ? rc : BD_EINTERNAL;
}
