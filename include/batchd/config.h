/* config.h -- batchd's configuration: YAML file (libcyaml schema) + BATCH_* environment.
 *
 * Loaded and validated once before uv_run; read-only afterwards. Durations are seconds as
 * doubles so tests can use fractions (retry_delay: 0.05).
 */
#ifndef BATCHD_CONFIG_H
#define BATCHD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

enum bd_model_provider {
    BD_PROVIDER_OLLAMA = 0,   /* POST {base}/api/embed   {"model","input":[..]} -> embeddings */
    BD_PROVIDER_OPENAI,       /* POST {base}/v1/embeddings                       -> data[].embedding */
    BD_PROVIDER_TEI,          /* POST {base}/embed       {"inputs":[..]}          -> [[..],..] */
    BD_PROVIDER_HASHING       /* built in: deterministic feature hashing, no server */
};

enum bd_overlong_policy { BD_OVERLONG_TRUNCATE = 0, BD_OVERLONG_FAIL };

struct bd_model_config {
    char *name;                       /* key in the API ("mixtral") */
    enum bd_model_provider provider;
    char *base_url;                   /* required unless provider is hashing */
    char *remote_model;               /* model name sent to the server; default: name */
    char *api_key;                    /* optional bearer key (openai); never logged */
    char *version;                    /* part of the embedding-cache key; default "1" */
    unsigned dimensions;              /* vector length the model returns; required */
    unsigned max_inputs_per_request;  /* default 32 */
    unsigned max_chars_per_request;   /* default 200000 */
    unsigned max_input_chars;         /* one text; default 8192 */
    enum bd_overlong_policy overlong; /* default truncate */
    unsigned concurrency;             /* requests in flight to this model; default 4 */
    double timeout_s;                 /* one request; default 30 */
    double rate_limit_rps;            /* ceiling, 0 = unlimited */
};

/* One webhook endpoint (webhooks.endpoints[i]); see docs/webhooks.md. */
struct bd_webhook_endpoint_config {
    char *name;                       /* the outbox's key for its deliveries; default: the
                                       * url with any password redacted; unique */
    char *url;                        /* http:// or https:// */
    char *secret;                     /* "whsec_" + base64 of 16..128 bytes; never logged */
    char **events;                    /* event types it receives ("job.completed"); none =
                                       * every type */
    unsigned events_count;
    double timeout_s;                 /* one delivery attempt; default webhooks.timeout */
};

struct bd_config {
    char *source_path;                /* file it was loaded from (for messages) */

    /* server */
    char *listen;                     /* "127.0.0.1:8000" (BATCH_LISTEN) */
    char *listen_host;                /* listen split at load: "127.0.0.1", "::1" (no []) */
    int listen_port;                  /* 0..65535; 0 = pick a free port */
    char *log_level;                  /* debug|info|warn|error */
    char **api_keys;                  /* BATCH_API_KEYS (comma separated); none = open */
    unsigned api_keys_count;
    char *worker_id;                  /* default "<hostname>-<pid>-<4 hex>" filled at load */

    /* stores */
    char *redis_url;                  /* BATCH_REDIS_URL    redis://host:port[/db] */
    char *postgres_url;               /* BATCH_POSTGRES_URL postgresql://... or conninfo */
    unsigned postgres_pool_size;      /* default 4 */

    /* jobs (names follow the seed's environment variables) */
    unsigned max_concurrent_jobs;           /* BATCH_MAX_CONCURRENT_JOBS, default 3 */
    unsigned default_batch_size;            /* BATCH_DEFAULT_SIZE, default 100 */
    unsigned max_batch_size;                /* default 10000 */
    double processing_interval_s;           /* BATCH_PROCESSING_INTERVAL: idle poll, default 1 */
    unsigned retry_attempts;                /* BATCH_RETRY_ATTEMPTS, default 3 */
    double retry_delay_s;                   /* BATCH_RETRY_DELAY, default 1 */
    double job_timeout_s;                   /* BATCH_JOB_TIMEOUT, default 3600 */
    double cleanup_interval_s;              /* BATCH_CLEANUP_INTERVAL, default 86400 */
    bool metrics_enabled;                   /* BATCH_METRICS_ENABLED, default true */
    bool metrics_require_key;               /* BATCH_METRICS_REQUIRE_KEY: /metrics needs an
                                             * API key (when keys are set), default false */
    double progress_update_interval_s;      /* BATCH_PROGRESS_UPDATE_INTERVAL, default 1 */
    double lease_s;                         /* job lease, default 30 */
    double reaper_interval_s;               /* expired-lease sweep, default 5 */
    unsigned max_queued_items;              /* backpressure: 429 above, default 10000000 */
    unsigned max_items_per_job;             /* default 1000000 */

    /* HTTP limits */
    unsigned http_max_connections;          /* default 4096 */
    unsigned http_max_header_bytes;         /* default 16384 */
    unsigned http_max_url_bytes;            /* default 4096 */
    size_t http_max_body_bytes;             /* default 256 MiB */
    size_t http_max_stream_bytes;           /* streamed submit bodies; default 16 GiB */
    double http_idle_timeout_s;             /* keep-alive idle, default 60 */
    double http_request_timeout_s;          /* whole request must arrive within, default 30 */
    double http_write_timeout_s;            /* output not taken by the client: cut, default 60 */
    char *http_allowed_hosts;               /* "a.example,b.example": Host names answered;
                                             * "" = any (BATCH_ALLOWED_HOSTS) */
    unsigned http_status_cache_ms;          /* GET status answers reused, default 50; 0 = off */

    /* OpenAI-compatible API (/v1) */
    size_t openai_max_file_bytes;           /* POST /v1/files: largest file, default 200 MiB */
    unsigned openai_max_batch_lines;        /* POST /v1/batches: most requests, default 50000 */
    double openai_batch_expiry_s;           /* a batch's time to finish ("24h"), default 86400 */

    /* webhooks (docs/webhooks.md): the outbox's delivery worker in this process */
    double webhook_poll_interval_s;         /* due deliveries looked for, default 1 */
    double webhook_retry_base_s;            /* delay after the first failure, default 5 */
    double webhook_retry_max_s;             /* delays grow x6 up to this, default 3600 */
    unsigned webhook_max_attempts;          /* then the delivery is given up, default 20 */
    double webhook_max_age_s;               /* or when the event is this old, default 86400 */
    unsigned webhook_concurrency;           /* deliveries in flight per process, default 8 */
    double webhook_timeout_s;               /* endpoints' default timeout, default 10 */
    double webhook_retention_s;             /* events and deliveries kept, default 7 days */
    struct bd_webhook_endpoint_config *webhook_endpoints;
    unsigned webhook_endpoints_count;

    struct bd_model_config *models;
    unsigned models_count;
};

/* Environment lookup; tests pass their own. Returns NULL when unset. */
typedef const char *(*bd_config_getenv_fn)(const char *name, void *arg);

/* Load path (YAML), apply defaults, then BATCH_* overrides from getenv_fn (NULL = getenv),
 * then validate. On success *out owns a new config (free with bd_config_free) and BD_OK is
 * returned. On failure BD_EINVAL is returned, *out is NULL, and errbuf holds one line that
 * names the file and the offending key, e.g. "conf/x.yaml: models[2].dimensions: must be
 * between 1 and 65536". Allocates; call before uv_run. BD_ENOMEM instead of BD_EINVAL when
 * memory runs out. Errors in a BATCH_* value name the variable instead of the file
 * ("environment BATCH_RETRY_ATTEMPTS: not an integer (got \"x\")"). */
int bd_config_load(const char *path, bd_config_getenv_fn getenv_fn, void *getenv_arg,
                   struct bd_config **out, char *errbuf, size_t errlen);

/* Free a config from bd_config_load. NULL is ignored. */
void bd_config_free(struct bd_config *cfg);

/* The model named name, or NULL. Borrowed from cfg. */
const struct bd_model_config *bd_config_get_model(const struct bd_config *cfg, const char *name);

/* "ollama", "openai", "tei", "hashing". */
const char *bd_config_provider_name(enum bd_model_provider p);

#endif
