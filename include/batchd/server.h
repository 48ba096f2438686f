/* server.h -- the one struct that ties batchd's modules to the loop.
 *
 * main() creates it, bd_server_start() creates every module and starts listening,
 * bd_server_stop() shuts down in order (stop accepting, hand jobs back, close stores).
 * loop->data points at it. Loop thread only.
 */
#ifndef BATCHD_SERVER_H
#define BATCHD_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct bd_config;
struct bd_http_server;
struct bd_router;
struct bd_rq;
struct bd_pg;
struct bd_job_engine;
struct bd_batch_finalizer;
struct bd_metrics;
struct bd_model_client;
struct bd_webhook;
struct bd_api_cache;
struct bd_api_collections;
struct bd__api_stream;                     /* api_submit_stream.c */
struct bd__api_create;                     /* api_batches.c */
struct bd__api_watch;                      /* api_events.c */

struct bd_server {
    uv_loop_t *loop;
    const struct bd_config *cfg;           /* borrowed from main */
    struct bd_http_server *http;
    struct bd_router *router;
    struct bd_rq *rq;
    struct bd_pg *pg;                      /* API: synchronous commit (a 202 is durable) */
    struct bd_pg *pg_jobs;                 /* job engine: asynchronous commit, see server.c */
    struct bd_job_engine *jobs;
    struct bd_batch_finalizer *batches;    /* OpenAI batches' finalizer (batch.h) */
    struct bd_metrics *metrics;
    struct bd_model_client *models;
    struct bd_webhook *webhooks;           /* the outbox's delivery worker (webhook.c) */
    struct bd_api_cache *api_cache;        /* the API's status cache (api_status.c) */
    struct bd_api_collections *api_collections; /* dimensions seen (api_submit.c) */
    unsigned batch_creates;                /* POST /v1/batches in flight (api_batches.c) */
    struct bd__api_create *batch_waiting;  /* creates waiting for one of those, in order */
    unsigned batch_waiting_count;
    unsigned submit_streams;               /* streamed submits holding an API connection */
    unsigned event_streams;                /* GET /jobs/{id}/events streams open (api_events.c) */
    struct bd__api_watch *event_watches;   /* one per job those streams watch (api_events.c) */
    struct bd__api_stream *uploads_waiting; /* streamed submits waiting for one, in order */
    unsigned uploads_waiting_count;

    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;
    uv_timer_t lag_timer;                  /* loop-lag probe */
    uint64_t lag_expected_ns;
    uint64_t start_time_unix;
    unsigned pending_closes;
    bool is_stopping;
    int exit_code;
};

/* Create every module and listen. Returns BD_OK or a negative error (logged once here,
 * everything created so far is closed again before return). */
int bd_server_start(struct bd_server *srv, uv_loop_t *loop, const struct bd_config *cfg);

/* Readiness, as /readyz and systemd's READY=1 mean it: Redis and both PostgreSQL pools up,
 * the schema migrated, not stopping. */
struct bd_server_readiness {
    bool is_redis_up, is_postgres_up, is_migrated, is_stopping;
};
void bd_server_get_readiness(const struct bd_server *srv, struct bd_server_readiness *out);

/* NULL when ready, else what it waits for ("waiting for Redis", ...; constant). */
const char *bd_server_waiting_for(const struct bd_server *srv);

/* Begin an orderly shutdown (idempotent); uv_run returns when it is complete. */
void bd_server_stop(struct bd_server *srv);

#endif
