/* api_admin.c -- liveness, readiness, Prometheus metrics, and the route registry.
 *
 * Owns nothing; reads module state through their headers. Loop thread only. The one place
 * that turns an error code into an HTTP answer is bd_http_respond_err (via error.h).
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

void bd__api_respond_json(struct bd_http_request *req, int status, json_t *json,
                          const char *extra_headers)
{
    char *body = json ? json_dumps(json, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;

    if (json && body == NULL) {
        json_decref(json);
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    bd_http_respond(req, status, "application/json", extra_headers, body ? body : "{}",
                    body ? strlen(body) : 2);
    free(body);
    json_decref(json);
}

int bd__api_check_auth(struct bd_http_request *req, struct bd_server *srv)
{
    const struct bd_config *cfg = srv->cfg;
    const char *key;

    if (cfg->api_keys_count == 0)
        return 1;
    key = bd_http_header_get(req, "X-API-Key");
    if (key == NULL) {
        const char *auth = bd_http_header_get(req, "Authorization");
        if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
            key = auth + 7;
    }
    for (unsigned i = 0; key && i < cfg->api_keys_count; i++)
        if (strcmp(key, cfg->api_keys[i]) == 0)
            return 1;
    bd_http_respond(req, 401, "application/json", "WWW-Authenticate: Bearer\r\n",
                    "{\"error\":{\"code\":\"unauthorized\",\"message\":\"missing or invalid "
                    "API key\"}}",
                    strlen("{\"error\":{\"code\":\"unauthorized\",\"message\":\"missing or "
                           "invalid API key\"}}"));
    return 0;
}

static void api_on_healthz(struct bd_http_request *req, void *arg)
{
    (void)arg;
    bd__api_respond_json(req, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

static void api_on_readyz(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    bool redis_up = srv->rq && bd_rq_is_up(srv->rq);
    bool pg_up = srv->pg && bd_pg_is_up(srv->pg);
    bool migrated = srv->jobs && bd_job_engine_is_ready(srv->jobs);
    bool ready = redis_up && pg_up && migrated && !srv->is_stopping;

    bd__api_respond_json(req, ready ? 200 : 503,
                         json_pack("{s:s,s:b,s:b,s:b,s:b}", "status",
                                   ready ? "ready" : "not_ready", "redis", redis_up,
                                   "postgres", pg_up, "schema", migrated, "stopping",
                                   srv->is_stopping),
                         ready ? NULL : "Retry-After: 1\r\n");
}

static void api_on_prometheus(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct bd_buf out;

    if (!srv->cfg->metrics_enabled) {
        bd_http_respond_error(req, 404, "not_found", "metrics are disabled", NULL);
        return;
    }
    bd_buf_init(&out);
    bd_metrics_render(srv->metrics, &out, srv->start_time_unix);
    bd_buf_printf(&out, "# HELP batchd_redis_up Whether the Redis connection is up.\n"
                        "# TYPE batchd_redis_up gauge\nbatchd_redis_up %d\n",
                  srv->rq && bd_rq_is_up(srv->rq));
    bd_buf_printf(&out, "# HELP batchd_postgres_up Whether a PostgreSQL connection is up.\n"
                        "# TYPE batchd_postgres_up gauge\nbatchd_postgres_up %d\n",
                  srv->pg && bd_pg_is_up(srv->pg));
    bd_buf_printf(&out, "# HELP batchd_postgres_pool_connections PostgreSQL connections.\n"
                        "# TYPE batchd_postgres_pool_connections gauge\n"
                        "batchd_postgres_pool_connections{state=\"connected\"} %u\n"
                        "batchd_postgres_pool_connections{state=\"configured\"} %u\n",
                  srv->pg ? bd_pg_get_connected(srv->pg) : 0,
                  srv->pg ? bd_pg_get_pool_size(srv->pg) : 0);
    bd_buf_printf(&out, "# HELP batchd_http_connections Open HTTP connections.\n"
                        "# TYPE batchd_http_connections gauge\nbatchd_http_connections %u\n",
                  srv->http ? bd_http_server_get_connections(srv->http) : 0);
    if (out.is_failed) {
        bd_buf_free(&out);
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    bd_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, out.data,
                    out.len);
    bd_buf_free(&out);
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
    rc = rc ? rc : bd__api_register_jobs_read(r, srv);
    return rc;
}
