/* config.c -- loads batchd's YAML configuration, applies BATCH_* overrides, validates it.
 *
 * This file holds the schema, the settings tables, reading the file and the public API;
 * each value's parser and check, the environment overrides and the cross-field rules are
 * in config_values.c (config_internal.h shares the tables' types between the two).
 * Owns struct bd_config from bd_config_load() until bd_config_free(); nothing else made
 * here outlives a call. Startup only: it reads a file, so it must never run on the loop.
 * No mutable statics: libcyaml's log lines are captured into a struct on
 * bd_config_load()'s stack, reached through cyaml_config.log_ctx.
 * SPDX-License-Identifier: MIT
 *
 * How a value is found: the built-in default, replaced by the file's value, replaced by
 * the environment variable's value (an empty variable counts as unset). Each value passes
 * the same parser and range check wherever it came from, so an error names the place it
 * came from: "conf/x.yaml: jobs.retry_attempts: ..." or "environment BATCH_RETRY_ATTEMPTS:
 * ...". Cross-field rules (required URLs, batch size within max, unique model names) run
 * last. libcyaml parses every scalar as a string (null, ~ and "" mean "unset"); this file
 * converts them, which gives one set of messages for file and environment alike.
 *
 * The file (every section and key optional; redis.url and postgres.url must come from the
 * file or the environment; each model needs name, provider, dimensions, and base_url unless
 * its provider is hashing). Defaults shown; docs/configuration.md explains each key.
 *
 *   server:
 *     listen: 127.0.0.1:8000       # host:port, [v6]:port; port 0 picks one (BATCH_LISTEN)
 *     log_level: info              # debug | info | warn | error | off (BATCH_LOG_LEVEL)
 *     api_keys: []                 # none = no authentication (BATCH_API_KEYS, comma list)
 *     worker_id: <hostname>-<pid>-<rand>  # lease owner name (BATCH_WORKER_ID)
 *   redis:
 *     url: redis://host:port/db    # required (BATCH_REDIS_URL)
 *   postgres:
 *     url: postgresql://...        # required, URL or conninfo (BATCH_POSTGRES_URL)
 *     pool_size: 4
 *   jobs:
 *     max_concurrent_jobs: 3       # BATCH_MAX_CONCURRENT_JOBS
 *     default_batch_size: 100      # BATCH_DEFAULT_SIZE
 *     max_batch_size: 10000
 *     max_items_per_job: 10000000
 *     processing_interval: 1       # seconds, fractions ok (BATCH_PROCESSING_INTERVAL)
 *     retry_attempts: 3            # BATCH_RETRY_ATTEMPTS
 *     retry_delay: 1               # BATCH_RETRY_DELAY
 *     job_timeout: 3600            # BATCH_JOB_TIMEOUT
 *     cleanup_interval: 86400      # BATCH_CLEANUP_INTERVAL
 *     progress_update_interval: 1  # BATCH_PROGRESS_UPDATE_INTERVAL
 *     lease: 30                    # BATCH_LEASE_SECONDS
 *     reaper_interval: 5
 *     max_queued_items: 10000000   # BATCH_MAX_QUEUED_ITEMS
 *   metrics:
 *     enabled: true                # BATCH_METRICS_ENABLED
 *   http:
 *     max_connections: 4096
 *     max_header_bytes: 16384
 *     max_url_bytes: 4096
 *     max_body_bytes: 268435456
 *     max_stream_bytes: 17179869184
 *     idle_timeout: 60
 *     request_timeout: 30
 *     write_timeout: 60            # a response the client stops reading: cut after this
 *     allowed_hosts: ""            # comma list of Host names to answer; "" = any (BATCH_ALLOWED_HOSTS)
 *     status_cache_ms: 50          # job status answers reused this long (BATCH_STATUS_CACHE_MS)
 *   openai:
 *     max_file_bytes: 209715200    # POST /v1/files: largest file (200 MiB)
 *     max_batch_lines: 50000       # POST /v1/batches: most requests in one input file
 *     batch_expiry: 86400          # a batch not finished this long after creation expires
 *   webhooks:                      # docs/webhooks.md
 *     poll_interval: 1             # seconds between looks for due deliveries
 *     retry_base: 5                # first retry delay; x6 per attempt (jittered) ...
 *     retry_max: 3600              # ... up to this
 *     max_attempts: 20             # then a delivery is given up (failed)
 *     max_age: 86400               # or once its event is this old
 *     concurrency: 8               # deliveries in flight per process
 *     timeout: 10                  # endpoints' default
 *     retention: 604800            # events and their deliveries deleted after (>= max_age)
 *     endpoints:
 *       - url: https://example.com/hook   # http or https, required
 *         secret: whsec_<base64>   # required, as Standard Webhooks (never logged)
 *         events: [job.completed]  # default: every type
 *         name: ops                # the outbox's key; default: the url; unique
 *         timeout: 10
 *   models:
 *     - name: mixtral              # ^[A-Za-z0-9_.:-]{1,64}$, unique
 *       provider: ollama           # ollama | openai | tei | hashing
 *       base_url: http://127.0.0.1:11434
 *       remote_model: mixtral      # default: name
 *       api_key: ""                # optional bearer key
 *       version: "1"               # part of the embedding-cache key
 *       dimensions: 4096           # required, 1..65536
 *       max_inputs_per_request: 32
 *       max_chars_per_request: 200000
 *       max_input_chars: 8192
 *       overlong: truncate         # truncate | fail
 *       concurrency: 4
 *       timeout: 30
 *       rate_limit_rps: 0          # 0 = unlimited
 */
#include "config_internal.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <assert.h>
#include <cyaml/cyaml.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -- Raw schema: what libcyaml fills, every scalar a string (NULL when unset) ------------ */

/* Member names equal the YAML keys; the settings table below relies on it. */
struct raw_server {
    char *listen;
    char *log_level;
    char **api_keys;
    unsigned api_keys_count;
    char *worker_id;
};

struct raw_redis {
    char *url;
};

struct raw_postgres {
    char *url;
    char *pool_size;
};

struct raw_jobs {
    char *max_concurrent_jobs;
    char *default_batch_size;
    char *max_batch_size;
    char *max_items_per_job;
    char *processing_interval;
    char *retry_attempts;
    char *retry_delay;
    char *job_timeout;
    char *cleanup_interval;
    char *progress_update_interval;
    char *lease;
    char *reaper_interval;
    char *max_queued_items;
};

struct raw_metrics {
    char *enabled;
    char *require_key;
};

struct raw_http {
    char *max_connections;
    char *max_header_bytes;
    char *max_url_bytes;
    char *max_body_bytes;
    char *max_stream_bytes;
    char *idle_timeout;
    char *request_timeout;
    char *write_timeout;
    char *allowed_hosts;
    char *status_cache_ms;
};

struct raw_openai {
    char *max_file_bytes;
    char *max_batch_lines;
    char *batch_expiry;
};

struct raw_webhook_endpoint {
    char *name;
    char *url;
    char *secret;
    char **events;
    unsigned events_count;
    char *timeout;
};

struct raw_webhooks {
    char *poll_interval;
    char *retry_base;
    char *retry_max;
    char *max_attempts;
    char *max_age;
    char *concurrency;
    char *timeout;
    char *retention;
    struct raw_webhook_endpoint *endpoints;
    unsigned endpoints_count;
};

struct raw_model {
    char *name;
    char *provider;
    char *base_url;
    char *remote_model;
    char *api_key;
    char *version;
    char *dimensions;
    char *max_inputs_per_request;
    char *max_chars_per_request;
    char *max_input_chars;
    char *overlong;
    char *concurrency;
    char *timeout;
    char *rate_limit_rps;
};

struct raw_config {
    struct raw_server *server;
    struct raw_redis *redis;
    struct raw_postgres *postgres;
    struct raw_jobs *jobs;
    struct raw_metrics *metrics;
    struct raw_http *http;
    struct raw_openai *openai;
    struct raw_webhooks *webhooks;
    struct raw_model *models;
    unsigned models_count;
};

/* A scalar: any YAML scalar loads as a string; null, ~ and empty load as NULL (unset). */
#define RAW_STR(type, member)                                                              \
    CYAML_FIELD_STRING_PTR(#member, CYAML_FLAG_POINTER_NULL_STR | CYAML_FLAG_OPTIONAL,     \
                           type, member, 0, CYAML_UNLIMITED)

/* A section: optional, and an empty "server:" is the same as no section. */
#define RAW_SECTION(member, fields)                                                        \
    CYAML_FIELD_MAPPING_PTR(#member, CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL,        \
                            struct raw_config, member, fields)

static const cyaml_schema_value_t raw_string_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER_NULL_STR, char, 0, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t raw_server_fields[] = {
    RAW_STR(struct raw_server, listen),
    RAW_STR(struct raw_server, log_level),
    CYAML_FIELD_SEQUENCE("api_keys", CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL,
                         struct raw_server, api_keys, &raw_string_entry, 0, CYAML_UNLIMITED),
    RAW_STR(struct raw_server, worker_id),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_redis_fields[] = {
    RAW_STR(struct raw_redis, url),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_postgres_fields[] = {
    RAW_STR(struct raw_postgres, url),
    RAW_STR(struct raw_postgres, pool_size),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_jobs_fields[] = {
    RAW_STR(struct raw_jobs, max_concurrent_jobs),
    RAW_STR(struct raw_jobs, default_batch_size),
    RAW_STR(struct raw_jobs, max_batch_size),
    RAW_STR(struct raw_jobs, max_items_per_job),
    RAW_STR(struct raw_jobs, processing_interval),
    RAW_STR(struct raw_jobs, retry_attempts),
    RAW_STR(struct raw_jobs, retry_delay),
    RAW_STR(struct raw_jobs, job_timeout),
    RAW_STR(struct raw_jobs, cleanup_interval),
    RAW_STR(struct raw_jobs, progress_update_interval),
    RAW_STR(struct raw_jobs, lease),
    RAW_STR(struct raw_jobs, reaper_interval),
    RAW_STR(struct raw_jobs, max_queued_items),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_metrics_fields[] = {
    RAW_STR(struct raw_metrics, enabled),
    RAW_STR(struct raw_metrics, require_key),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_http_fields[] = {
    RAW_STR(struct raw_http, max_connections),
    RAW_STR(struct raw_http, max_header_bytes),
    RAW_STR(struct raw_http, max_url_bytes),
    RAW_STR(struct raw_http, max_body_bytes),
    RAW_STR(struct raw_http, max_stream_bytes),
    RAW_STR(struct raw_http, idle_timeout),
    RAW_STR(struct raw_http, request_timeout),
    RAW_STR(struct raw_http, write_timeout),
    RAW_STR(struct raw_http, allowed_hosts),
    RAW_STR(struct raw_http, status_cache_ms),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_openai_fields[] = {
    RAW_STR(struct raw_openai, max_file_bytes),
    RAW_STR(struct raw_openai, max_batch_lines),
    RAW_STR(struct raw_openai, batch_expiry),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_webhook_endpoint_fields[] = {
    RAW_STR(struct raw_webhook_endpoint, name),
    RAW_STR(struct raw_webhook_endpoint, url),
    RAW_STR(struct raw_webhook_endpoint, secret),
    CYAML_FIELD_SEQUENCE("events", CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL,
                         struct raw_webhook_endpoint, events, &raw_string_entry, 0,
                         CYAML_UNLIMITED),
    RAW_STR(struct raw_webhook_endpoint, timeout),
    CYAML_FIELD_END
};

static const cyaml_schema_value_t raw_webhook_endpoint_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_webhook_endpoint,
                        raw_webhook_endpoint_fields),
};

static const cyaml_schema_field_t raw_webhooks_fields[] = {
    RAW_STR(struct raw_webhooks, poll_interval),
    RAW_STR(struct raw_webhooks, retry_base),
    RAW_STR(struct raw_webhooks, retry_max),
    RAW_STR(struct raw_webhooks, max_attempts),
    RAW_STR(struct raw_webhooks, max_age),
    RAW_STR(struct raw_webhooks, concurrency),
    RAW_STR(struct raw_webhooks, timeout),
    RAW_STR(struct raw_webhooks, retention),
    CYAML_FIELD_SEQUENCE("endpoints", CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL,
                         struct raw_webhooks, endpoints, &raw_webhook_endpoint_entry, 0,
                         CYAML_UNLIMITED),
    CYAML_FIELD_END
};

static const cyaml_schema_field_t raw_model_fields[] = {
    RAW_STR(struct raw_model, name),
    RAW_STR(struct raw_model, provider),
    RAW_STR(struct raw_model, base_url),
    RAW_STR(struct raw_model, remote_model),
    RAW_STR(struct raw_model, api_key),
    RAW_STR(struct raw_model, version),
    RAW_STR(struct raw_model, dimensions),
    RAW_STR(struct raw_model, max_inputs_per_request),
    RAW_STR(struct raw_model, max_chars_per_request),
    RAW_STR(struct raw_model, max_input_chars),
    RAW_STR(struct raw_model, overlong),
    RAW_STR(struct raw_model, concurrency),
    RAW_STR(struct raw_model, timeout),
    RAW_STR(struct raw_model, rate_limit_rps),
    CYAML_FIELD_END
};

static const cyaml_schema_value_t raw_model_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_model, raw_model_fields),
};

static const cyaml_schema_field_t raw_config_fields[] = {
    RAW_SECTION(server, raw_server_fields),
    RAW_SECTION(redis, raw_redis_fields),
    RAW_SECTION(postgres, raw_postgres_fields),
    RAW_SECTION(jobs, raw_jobs_fields),
    RAW_SECTION(metrics, raw_metrics_fields),
    RAW_SECTION(http, raw_http_fields),
    RAW_SECTION(openai, raw_openai_fields),
    RAW_SECTION(webhooks, raw_webhooks_fields),
    CYAML_FIELD_SEQUENCE("models", CYAML_FLAG_POINTER_NULL | CYAML_FLAG_OPTIONAL,
                         struct raw_config, models, &raw_model_entry, 0, CYAML_UNLIMITED),
    CYAML_FIELD_END
};

static const cyaml_schema_value_t raw_config_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct raw_config, raw_config_fields),
};

/* -- Settings tables: key, environment variable, where it lands, range, default ---------- */

/* The checks a CFG_STRING setting may name live in config_values.c. */
#define TOP(sec, fld, env_, member, kind_, lo, hi, def_, check_)                          \
    { .key = #sec "." #fld, .env = (env_), .section_off = offsetof(struct raw_config, sec), \
      .raw_off = offsetof(struct raw_##sec, fld), .cfg_off = offsetof(struct bd_config, member), \
      .kind = (kind_), .min = (lo), .max = (hi), .def = (def_), .check = (check_) }

#define T_UINT(sec, fld, env, member, lo, hi, def) \
    TOP(sec, fld, env, member, CFG_UINT, lo, hi, def, NULL)
#define T_SECS(sec, fld, env, member, def) \
    TOP(sec, fld, env, member, CFG_SECONDS, 0, CFG_MAX_SECONDS, def, NULL)
#define T_STR(sec, fld, env, member, def, check) \
    TOP(sec, fld, env, member, CFG_STRING, 0, 0, def, check)

/* server.api_keys is not here: a list in the file, a comma list in the environment. */
const struct cfg_field cfg_fields[] = {
    T_STR(server, listen, "BATCH_LISTEN", listen, "127.0.0.1:8000", bd__config_check_listen),
    T_STR(server, log_level, "BATCH_LOG_LEVEL", log_level, "info", bd__config_check_log_level),
    T_STR(server, worker_id, "BATCH_WORKER_ID", worker_id, NULL, bd__config_check_worker_id),
    T_STR(redis, url, "BATCH_REDIS_URL", redis_url, NULL, bd__config_check_redis_url),
    T_STR(postgres, url, "BATCH_POSTGRES_URL", postgres_url, NULL, bd__config_check_postgres_url),
    T_UINT(postgres, pool_size, "BATCH_POSTGRES_POOL_SIZE", postgres_pool_size, 2, 64, "4"),
    T_UINT(jobs, max_concurrent_jobs, "BATCH_MAX_CONCURRENT_JOBS", max_concurrent_jobs,
           1, 1024, "3"),
    T_UINT(jobs, default_batch_size, "BATCH_DEFAULT_SIZE", default_batch_size, 1, 1000000,
           "100"),
    T_UINT(jobs, max_batch_size, NULL, max_batch_size, 1, 1000000, "10000"),
    T_UINT(jobs, max_items_per_job, NULL, max_items_per_job, 1, 4294967295.0, "10000000"),
    T_SECS(jobs, processing_interval, "BATCH_PROCESSING_INTERVAL", processing_interval_s, "1"),
    T_UINT(jobs, retry_attempts, "BATCH_RETRY_ATTEMPTS", retry_attempts, 0, 100, "3"),
    T_SECS(jobs, retry_delay, "BATCH_RETRY_DELAY", retry_delay_s, "1"),
    T_SECS(jobs, job_timeout, "BATCH_JOB_TIMEOUT", job_timeout_s, "3600"),
    T_SECS(jobs, cleanup_interval, "BATCH_CLEANUP_INTERVAL", cleanup_interval_s, "86400"),
    T_SECS(jobs, progress_update_interval, "BATCH_PROGRESS_UPDATE_INTERVAL",
           progress_update_interval_s, "1"),
    T_SECS(jobs, lease, "BATCH_LEASE_SECONDS", lease_s, "30"),
    T_SECS(jobs, reaper_interval, NULL, reaper_interval_s, "5"),
    T_UINT(jobs, max_queued_items, "BATCH_MAX_QUEUED_ITEMS", max_queued_items,
           1, 4294967295.0, "10000000"),
    TOP(metrics, enabled, "BATCH_METRICS_ENABLED", metrics_enabled, CFG_BOOL, 0, 0, "true",
        NULL),
    TOP(metrics, require_key, "BATCH_METRICS_REQUIRE_KEY", metrics_require_key, CFG_BOOL, 0, 0,
        "false", NULL),
    T_UINT(http, max_connections, NULL, http_max_connections, 1, 1000000, "4096"),
    T_UINT(http, max_header_bytes, NULL, http_max_header_bytes, 1024, 1048576, "16384"),
    T_UINT(http, max_url_bytes, NULL, http_max_url_bytes, 64, 1048576, "4096"),
    TOP(http, max_body_bytes, NULL, http_max_body_bytes, CFG_SIZE, 1, 17179869184.0,
        "268435456", NULL),
    TOP(http, max_stream_bytes, NULL, http_max_stream_bytes, CFG_SIZE, 1, 1099511627776.0,
        "17179869184", NULL),
    T_SECS(http, idle_timeout, NULL, http_idle_timeout_s, "60"),
    T_SECS(http, request_timeout, NULL, http_request_timeout_s, "30"),
    T_SECS(http, write_timeout, NULL, http_write_timeout_s, "60"),
    T_STR(http, allowed_hosts, "BATCH_ALLOWED_HOSTS", http_allowed_hosts, "",
          bd__config_check_hosts),
    T_UINT(http, status_cache_ms, "BATCH_STATUS_CACHE_MS", http_status_cache_ms, 0, 60000, "50"),
    TOP(openai, max_file_bytes, NULL, openai_max_file_bytes, CFG_SIZE, 1, 17179869184.0,
        "209715200", NULL),
    T_UINT(openai, max_batch_lines, NULL, openai_max_batch_lines, 1, 10000000, "50000"),
    TOP(openai, batch_expiry, NULL, openai_batch_expiry_s, CFG_SECONDS, 1, CFG_MAX_SECONDS,
        "86400", NULL),
    T_SECS(webhooks, poll_interval, NULL, webhook_poll_interval_s, "1"),
    T_SECS(webhooks, retry_base, NULL, webhook_retry_base_s, "5"),
    T_SECS(webhooks, retry_max, NULL, webhook_retry_max_s, "3600"),
    T_UINT(webhooks, max_attempts, NULL, webhook_max_attempts, 1, 1000, "20"),
    T_SECS(webhooks, max_age, NULL, webhook_max_age_s, "86400"),
    T_UINT(webhooks, concurrency, NULL, webhook_concurrency, 1, 1024, "8"),
    T_SECS(webhooks, timeout, NULL, webhook_timeout_s, "10"),
    T_SECS(webhooks, retention, NULL, webhook_retention_s, "604800"),
};

_Static_assert(sizeof(cfg_fields) / sizeof(cfg_fields[0]) == CFG_NFIELDS,
               "CFG_NFIELDS in config_internal.h must count cfg_fields");

#define MODEL(fld, member, kind_, lo, hi, def_, check_, req)                               \
    { .key = #fld, .raw_off = offsetof(struct raw_model, fld),                              \
      .cfg_off = offsetof(struct bd_model_config, member), .kind = (kind_), .min = (lo),    \
      .max = (hi), .def = (def_), .check = (check_), .is_required = (req) }

/* remote_model's default (the model's name) is filled in after this table has run. */
static const struct cfg_field model_fields[] = {
    MODEL(name, name, CFG_STRING, 0, 0, NULL, bd__config_check_name, true),
    MODEL(provider, provider, CFG_PROVIDER, 0, 0, NULL, NULL, true),
    MODEL(base_url, base_url, CFG_STRING, 0, 0, NULL, bd__config_check_http_url, false),
    MODEL(remote_model, remote_model, CFG_STRING, 0, 0, NULL, bd__config_check_printable, false),
    MODEL(api_key, api_key, CFG_STRING, 0, 0, NULL, bd__config_check_token, false),
    MODEL(version, version, CFG_STRING, 0, 0, "1", bd__config_check_name, false),
    MODEL(dimensions, dimensions, CFG_UINT, 1, 65536, NULL, NULL, true),
    MODEL(max_inputs_per_request, max_inputs_per_request, CFG_UINT, 1, 100000, "32", NULL,
          false),
    MODEL(max_chars_per_request, max_chars_per_request, CFG_UINT, 1, 1000000000, "200000",
          NULL, false),
    MODEL(max_input_chars, max_input_chars, CFG_UINT, 1, 1000000000, "8192", NULL, false),
    MODEL(overlong, overlong, CFG_OVERLONG, 0, 0, "truncate", NULL, false),
    MODEL(concurrency, concurrency, CFG_UINT, 1, 1024, "4", NULL, false),
    MODEL(timeout, timeout_s, CFG_SECONDS, 0, CFG_MAX_SECONDS, "30", NULL, false),
    MODEL(rate_limit_rps, rate_limit_rps, CFG_RATE, 0, 1000000, "0", NULL, false),
};

#define MODEL_NFIELDS (sizeof(model_fields) / sizeof(model_fields[0]))

#define ENDPOINT(fld, member, kind_, def_, check_, req)                                    \
    { .key = #fld, .raw_off = offsetof(struct raw_webhook_endpoint, fld),                  \
      .cfg_off = offsetof(struct bd_webhook_endpoint_config, member), .kind = (kind_),     \
      .max = CFG_MAX_SECONDS, .def = (def_), .check = (check_), .is_required = (req) }

/* name's default (the url, redacted) and timeout's (webhooks.timeout) are filled in after
 * this table has run; events, a list, are read on their own. */
static const struct cfg_field endpoint_fields[] = {
    ENDPOINT(name, name, CFG_STRING, NULL, bd__config_check_name, false),
    ENDPOINT(url, url, CFG_STRING, NULL, bd__config_check_webhook_url, true),
    ENDPOINT(secret, secret, CFG_STRING, NULL, bd__config_check_webhook_secret, true),
    ENDPOINT(timeout, timeout_s, CFG_SECONDS, NULL, NULL, false),
};

#define ENDPOINT_NFIELDS (sizeof(endpoint_fields) / sizeof(endpoint_fields[0]))

/* -- Reading the file with libcyaml ------------------------------------------------------ */

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* What libcyaml logged: its first error line, then the backtrace (innermost frame first). */
struct cfg_cyaml_log {
    char problem[256];
    bool has_problem;
    bool in_backtrace;
    char frames[CFG_MAX_FRAMES][72];  /* "listen", "[1]" (0-based), or "" for a bare mapping */
    unsigned frames_count;
    unsigned line;                    /* innermost frame's line (1-based), 0 if none */
    bool has_more_documents;          /* "---" and a second document, which libcyaml skips */
};

/* libcyaml's log_fn: called once per line; ctx is the struct cfg_cyaml_log on the stack of
 * bd_config_load(). Keeps the first error and its backtrace, and notes the one warning we
 * turn into an error ("Ignoring documents after first in stream"). */
static void config_on_cyaml_log(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
    struct cfg_cyaml_log *lg = ctx;
    char line[512];
    char name[72];
    unsigned idx, ln;

    if (level < CYAML_LOG_WARNING || lg == NULL)
        return;
    vsnprintf(line, sizeof(line), fmt, args);
    line[strcspn(line, "\n")] = '\0';
    if (level < CYAML_LOG_ERROR) {
        if (has_prefix(line, "Ignoring documents after first"))
            lg->has_more_documents = true;
        return;
    }

    if (!lg->has_problem) {
        const char *p = has_prefix(line, "Load: ") ? line + strlen("Load: ") : line;
        snprintf(lg->problem, sizeof(lg->problem), "%.*s", (int)sizeof(lg->problem) - 1, p);
        lg->has_problem = true;
        return;
    }
    if (strcmp(line, "Load: Backtrace:") == 0) {
        lg->in_backtrace = true;
        return;
    }
    if (!lg->in_backtrace || lg->frames_count == CFG_MAX_FRAMES)
        return;
    char *frame = lg->frames[lg->frames_count];
    if (sscanf(line, "  in mapping field '%71[^']' (line: %u", name, &ln) == 2)
        snprintf(frame, sizeof(lg->frames[0]), "%s", name);
    else if (sscanf(line, "  in sequence entry '%u' (line: %u", &idx, &ln) == 2)
        snprintf(frame, sizeof(lg->frames[0]), "[%u]", idx > 0 ? idx - 1 : 0);
    else if (sscanf(line, "  in mapping (line: %u", &ln) == 1)
        frame[0] = '\0';
    else
        return;
    if (lg->frames_count == 0)
        lg->line = ln;
    lg->frames_count++;
}

/* The key path of the backtrace, outermost first: "models[1].name". */
static void cfg_cyaml_path(const struct cfg_cyaml_log *lg, char *out, size_t outlen)
{
    size_t n = 0;

    out[0] = '\0';
    for (unsigned i = lg->frames_count; i-- > 0;) {
        const char *f = lg->frames[i];
        if (f[0] == '\0')
            continue;
        n += (size_t)snprintf(out + n, n < outlen ? outlen - n : 0, "%s%s",
                              (n > 0 && f[0] != '[') ? "." : "", f);
        if (n >= outlen)
            return;
    }
}

/* The schema fields of the mapping the backtrace ends in (to list the keys it accepts). */
static const cyaml_schema_field_t *cfg_cyaml_fields(const struct cfg_cyaml_log *lg)
{
    const cyaml_schema_field_t *fields = raw_config_fields;

    for (unsigned i = lg->frames_count; i-- > 0;) {
        const char *f = lg->frames[i];
        const cyaml_schema_value_t *v = NULL;
        if (f[0] == '\0' || f[0] == '[')
            continue;
        for (const cyaml_schema_field_t *fl = fields; fl->key != NULL; fl++)
            if (strcmp(fl->key, f) == 0)
                v = &fl->value;
        if (v != NULL && v->type == CYAML_SEQUENCE)
            v = v->sequence.entry;
        if (v == NULL || v->type != CYAML_MAPPING)
            return NULL;
        fields = v->mapping.fields;
    }
    return fields;
}

static const char *cfg_cyaml_event_desc(const char *s)
{
    if (has_prefix(s, "MAPPING"))
        return "a mapping of keys";
    if (has_prefix(s, "SEQUENCE"))
        return "a list";
    if (has_prefix(s, "SCALAR") || has_prefix(s, "STRING"))
        return "a single value";
    if (has_prefix(s, "ALIAS"))
        return "an alias";
    return "something else";
}

/* Turn what libcyaml logged into "FILE: key: problem". */
static int cfg_cyaml_fail(struct cfg_load *ld, const struct cfg_cyaml_log *lg, cyaml_err_t err)
{
    char path[256];
    char want[32], got[32];
    const char *p = lg->problem;

    if (!lg->has_problem)
        return bd__config_fail(ld, err == CYAML_ERR_OOM ? BD_ENOMEM : BD_EINVAL, "%s: %s", ld->path,
                               cyaml_strerror(err));
    cfg_cyaml_path(lg, path, sizeof(path));

    if (has_prefix(p, "Unexpected key: ")) {
        const cyaml_schema_field_t *fields = cfg_cyaml_fields(lg);
        char hint[320] = "";
        size_t n = 0;
        for (const cyaml_schema_field_t *f = fields; f != NULL && f->key != NULL; f++)
            n += (size_t)snprintf(hint + n, n < sizeof(hint) ? sizeof(hint) - n : 0, "%s%s",
                                  n == 0 ? " (expected one of: " : ", ", f->key);
        if (n > 0 && n < sizeof(hint) - 1)
            strcat(hint, ")");
        return bd__config_fail(ld, BD_EINVAL, "%s: %s%s%s: unknown key%s", ld->path, path,
                               path[0] != '\0' ? "." : "", p + strlen("Unexpected key: "), hint);
    }
    if (has_prefix(p, "Mapping field already seen: "))
        return bd__config_fail(ld, BD_EINVAL, "%s: %s: duplicate key", ld->path, path);
    if (sscanf(p, "Expecting %31s got event: %31s", want, got) == 2) {
        want[strcspn(want, ",")] = '\0';
        return bd__config_fail(ld, BD_EINVAL, "%s: %s: expected %s, got %s", ld->path,
                               path[0] != '\0' ? path : "top level",
                               path[0] == '\0' ? "a mapping of sections"
                                               : cfg_cyaml_event_desc(want),
                               cfg_cyaml_event_desc(got));
    }
    /* libyaml does not say where a syntax error is, and the backtrace ends at the last key
     * that parsed, so name that key as a landmark rather than as the culprit. */
    if (has_prefix(p, "libyaml: ")) {
        if (path[0] != '\0')
            return bd__config_fail(ld, BD_EINVAL, "%s: invalid YAML after %s (line %u): %s",
                                   ld->path, path, lg->line, p + strlen("libyaml: "));
        return bd__config_fail(ld, BD_EINVAL, "%s: invalid YAML: %s", ld->path,
                               p + strlen("libyaml: "));
    }
    if (path[0] != '\0')
        return bd__config_fail(ld, BD_EINVAL, "%s: %s: %s", ld->path, path, p);
    return bd__config_fail(ld, BD_EINVAL, "%s: %s", ld->path, p);
}

/* Read the whole file; libcyaml's own fopen would hide errno from the message. */
static int cfg_read_file(struct cfg_load *ld, uint8_t **data, size_t *len)
{
    FILE *fp = fopen(ld->path, "rb");
    uint8_t *buf = NULL;
    size_t n = 0;

    if (fp == NULL)
        return bd__config_fail(ld, BD_EINVAL, "%s: cannot open: %s", ld->path, strerror(errno));
    buf = malloc(CFG_MAX_FILE_BYTES + 1);
    if (buf == NULL) {
        fclose(fp);
        return bd__config_fail_oom(ld);
    }
    n = fread(buf, 1, CFG_MAX_FILE_BYTES + 1, fp);
    if (ferror(fp)) {
        int e = errno;
        fclose(fp);
        free(buf);
        return bd__config_fail(ld, BD_EINVAL, "%s: cannot read: %s", ld->path, strerror(e));
    }
    fclose(fp);
    if (n > CFG_MAX_FILE_BYTES) {
        free(buf);
        return bd__config_fail(ld, BD_EINVAL, "%s: larger than %u bytes; is this a config file?",
                               ld->path, CFG_MAX_FILE_BYTES);
    }
    *data = buf;
    *len = n;
    return BD_OK;
}

static cyaml_config_t cfg_cyaml_config(struct cfg_cyaml_log *lg)
{
    return (cyaml_config_t){
        .log_fn = lg != NULL ? config_on_cyaml_log : NULL,
        .log_ctx = lg,
        .mem_fn = cyaml_mem,
        .log_level = CYAML_LOG_WARNING,
        .flags = CYAML_CFG_DEFAULT,   /* unknown keys are errors */
    };
}

static void cfg_raw_free(struct raw_config *raw)
{
    cyaml_config_t cc = cfg_cyaml_config(NULL);

    if (raw != NULL)
        cyaml_free(&cc, &raw_config_schema, raw, 0);
}

/* Parse the file into *raw (NULL for an empty document). Free with cfg_raw_free(). */
static int cfg_load_raw(struct cfg_load *ld, struct raw_config **raw)
{
    struct cfg_cyaml_log lg = { .has_problem = false };
    cyaml_config_t cc = cfg_cyaml_config(&lg);
    uint8_t *data = NULL;
    size_t len = 0;
    cyaml_data_t *out = NULL;
    int err;

    err = cfg_read_file(ld, &data, &len);
    if (err < 0)
        return err;
    cyaml_err_t cerr = cyaml_load_data(data, len, &cc, &raw_config_schema, &out, NULL);
    free(data);
    if (cerr != CYAML_OK)
        return cfg_cyaml_fail(ld, &lg, cerr);
    *raw = out;
    if (lg.has_more_documents)
        return bd__config_fail(ld, BD_EINVAL,
                               "%s: more than one YAML document (\"---\"); batchd "
                               "reads exactly one",
                               ld->path);
    return BD_OK;
}

/* -- From raw values to struct bd_config ------------------------------------------------ */

static const char *raw_text(const struct raw_config *raw, const struct cfg_field *f)
{
    if (raw == NULL)
        return NULL;
    const char *section = *(char *const *)((const char *)raw + f->section_off);
    if (section == NULL)
        return NULL;
    return *(char *const *)(section + f->raw_off);
}

/* Defaults, then the file's values. */
static int cfg_apply_file(struct cfg_load *ld, struct bd_config *cfg,
                          const struct raw_config *raw)
{
    char why[256];
    int err;

    for (size_t i = 0; i < CFG_NFIELDS; i++) {
        const struct cfg_field *f = &cfg_fields[i];
        if (f->def != NULL) {
            err = bd__config_parse_value(f, f->def, cfg, why, sizeof(why));
            assert(err != BD_EINVAL);         /* a default that fails its own rules */
            if (err < 0)
                return bd__config_fail_oom(ld);
        }
        const char *text = raw_text(raw, f);
        if (text == NULL)
            continue;
        err = bd__config_parse_value(f, text, cfg, why, sizeof(why));
        if (err == BD_ENOMEM)
            return bd__config_fail_oom(ld);
        if (err < 0)
            return bd__config_fail_value(ld, f->key, NULL, why);
    }
    return BD_OK;
}

static int cfg_apply_file_api_keys(struct cfg_load *ld, struct bd_config *cfg,
                                   const struct raw_config *raw)
{
    char why[128];
    char key[64];

    if (raw == NULL || raw->server == NULL)
        return BD_OK;
    for (unsigned i = 0; i < raw->server->api_keys_count; i++) {
        const char *k = raw->server->api_keys[i];
        snprintf(key, sizeof(key), "server.api_keys[%u]", i);
        if (k == NULL)
            return bd__config_fail_value(ld, key, NULL, "must not be empty");
        if (!bd__config_check_token(k, why, sizeof(why)))
            return bd__config_fail_value(ld, key, NULL, why);
        if (bd__config_api_keys_add(cfg, k, strlen(k)) < 0)
            return bd__config_fail_oom(ld);
    }
    return BD_OK;
}

static int cfg_apply_file_models(struct cfg_load *ld, struct bd_config *cfg,
                                 const struct raw_config *raw)
{
    char why[256];
    char key[96];
    int err;

    if (raw == NULL || raw->models_count == 0)
        return BD_OK;
    cfg->models = calloc(raw->models_count, sizeof(*cfg->models));
    if (cfg->models == NULL)
        return bd__config_fail_oom(ld);
    cfg->models_count = raw->models_count;

    for (unsigned m = 0; m < raw->models_count; m++) {
        const struct raw_model *rm = &raw->models[m];
        struct bd_model_config *mc = &cfg->models[m];
        for (size_t i = 0; i < MODEL_NFIELDS; i++) {
            const struct cfg_field *f = &model_fields[i];
            const char *text = *(char *const *)((const char *)rm + f->raw_off);
            snprintf(key, sizeof(key), "models[%u].%s", m, f->key);
            if (text == NULL && f->is_required)
                return bd__config_fail_value(ld, key, NULL, "required");
            if (text == NULL)
                text = f->def;
            if (text == NULL)
                continue;
            err = bd__config_parse_value(f, text, mc, why, sizeof(why));
            if (err == BD_ENOMEM)
                return bd__config_fail_oom(ld);
            if (err < 0)
                return bd__config_fail_value(ld, key, NULL, why);
        }
        if (mc->remote_model == NULL && (mc->remote_model = strdup(mc->name)) == NULL)
            return bd__config_fail_oom(ld);
    }
    return BD_OK;
}

static int cfg_apply_endpoint_events(struct cfg_load *ld, struct bd_webhook_endpoint_config *ec,
                                     const struct raw_webhook_endpoint *re, unsigned e)
{
    char why[160];
    char key[96];

    if (re->events_count == 0)
        return BD_OK;
    ec->events = calloc(re->events_count, sizeof(*ec->events));
    if (ec->events == NULL)
        return bd__config_fail_oom(ld);
    for (unsigned i = 0; i < re->events_count; i++) {
        const char *t = re->events[i];
        snprintf(key, sizeof(key), "webhooks.endpoints[%u].events[%u]", e, i);
        if (t == NULL)
            return bd__config_fail_value(ld, key, NULL, "must not be empty");
        if (!bd__config_check_webhook_event(t, why, sizeof(why)))
            return bd__config_fail_value(ld, key, NULL, why);
        if ((ec->events[i] = strdup(t)) == NULL)
            return bd__config_fail_oom(ld);
        ec->events_count = i + 1;
    }
    return BD_OK;
}

/* webhooks.endpoints: each through endpoint_fields, then its events list and defaults. */
static int cfg_apply_file_webhooks(struct cfg_load *ld, struct bd_config *cfg,
                                   const struct raw_config *raw)
{
    char why[256];
    char key[96];
    char shown[512];
    int err;

    if (raw == NULL || raw->webhooks == NULL || raw->webhooks->endpoints_count == 0)
        return BD_OK;
    const struct raw_webhooks *rw = raw->webhooks;
    cfg->webhook_endpoints = calloc(rw->endpoints_count, sizeof(*cfg->webhook_endpoints));
    if (cfg->webhook_endpoints == NULL)
        return bd__config_fail_oom(ld);
    cfg->webhook_endpoints_count = rw->endpoints_count;

    for (unsigned e = 0; e < rw->endpoints_count; e++) {
        const struct raw_webhook_endpoint *re = &rw->endpoints[e];
        struct bd_webhook_endpoint_config *ec = &cfg->webhook_endpoints[e];
        for (size_t i = 0; i < ENDPOINT_NFIELDS; i++) {
            const struct cfg_field *f = &endpoint_fields[i];
            const char *text = *(char *const *)((const char *)re + f->raw_off);
            snprintf(key, sizeof(key), "webhooks.endpoints[%u].%s", e, f->key);
            if (text == NULL && f->is_required)
                return bd__config_fail_value(ld, key, NULL, "required");
            if (text == NULL)
                continue;
            err = bd__config_parse_value(f, text, ec, why, sizeof(why));
            if (err == BD_ENOMEM)
                return bd__config_fail_oom(ld);
            if (err < 0)
                return bd__config_fail_value(ld, key, NULL, why);
        }
        err = cfg_apply_endpoint_events(ld, ec, re, e);
        if (err < 0)
            return err;
        if (ec->name == NULL &&
            (ec->name = strdup(bd_log_redact_url(ec->url, shown, sizeof(shown)))) == NULL)
            return bd__config_fail_oom(ld);
    }
    return BD_OK;
}

/* -- Public API -------------------------------------------------------------------------- */

static const char *config_on_getenv(const char *name, void *arg)
{
    (void)arg;
    return getenv(name);
}

int bd_config_load(const char *path, bd_config_getenv_fn getenv_fn, void *getenv_arg,
                   struct bd_config **out, char *errbuf, size_t errlen)
{
    struct cfg_load ld = {
        .path = path,
        .getenv_fn = getenv_fn != NULL ? getenv_fn : config_on_getenv,
        .getenv_arg = getenv_arg,
        .errbuf = errbuf,
        .errlen = errlen,
    };
    struct raw_config *raw = NULL;
    struct bd_config *cfg = NULL;
    int err;

    assert(path != NULL && out != NULL);
    *out = NULL;
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';

    cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL || (cfg->source_path = strdup(path)) == NULL) {
        err = bd__config_fail_oom(&ld);
        goto fail;
    }
    err = cfg_load_raw(&ld, &raw);
    if (err < 0)
        goto fail;
    err = cfg_apply_file(&ld, cfg, raw);
    if (err < 0)
        goto fail;
    err = cfg_apply_file_api_keys(&ld, cfg, raw);
    if (err < 0)
        goto fail;
    err = cfg_apply_file_models(&ld, cfg, raw);
    if (err < 0)
        goto fail;
    err = cfg_apply_file_webhooks(&ld, cfg, raw);
    if (err < 0)
        goto fail;
    err = bd__config_apply_env(&ld, cfg);
    if (err < 0)
        goto fail;
    err = bd__config_validate(&ld, cfg);
    if (err < 0)
        goto fail;
    cfg_raw_free(raw);
    *out = cfg;
    return BD_OK;

fail:
    cfg_raw_free(raw);
    bd_config_free(cfg);
    return err;
}

void bd_config_free(struct bd_config *cfg)
{
    if (cfg == NULL)
        return;
    for (unsigned m = 0; m < cfg->models_count; m++) {
        struct bd_model_config *mc = &cfg->models[m];
        free(mc->name);
        free(mc->base_url);
        free(mc->remote_model);
        free(mc->api_key);
        free(mc->version);
    }
    free(cfg->models);
    bd__config_webhooks_free(cfg);
    bd__config_api_keys_clear(cfg);
    free(cfg->source_path);
    free(cfg->listen_host);
    /* Every string setting, from the one table that lists them (a new key cannot leak). */
    for (size_t i = 0; i < CFG_NFIELDS; i++)
        if (cfg_fields[i].kind == CFG_STRING)
            free(*(char **)((char *)cfg + cfg_fields[i].cfg_off));
    free(cfg);
}

const struct bd_model_config *bd_config_get_model(const struct bd_config *cfg, const char *name)
{
    for (unsigned m = 0; m < cfg->models_count; m++)
        if (strcmp(cfg->models[m].name, name) == 0)
            return &cfg->models[m];
    return NULL;
}
