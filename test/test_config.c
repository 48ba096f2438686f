/* test_config.c -- bd_config_load(): values, defaults, BATCH_* overrides, and one test per
 * kind of bad input, each checking that the error names the file (or variable) and key.
 *
 * Every case writes its YAML to a mkstemp() file and removes it. The environment is a
 * table behind a fake getenv_fn; nothing calls setenv(). conf/batchd.yaml and conf/dev.yaml
 * are found through BD_SOURCE_DIR (set by ctest). BD_TEST_VERBOSE=1 prints each message
 * checked.  SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/url.h"

/* The stores every file needs unless the environment supplies them. */
#define STORES                                                                             \
    "redis:\n  url: redis://127.0.0.1:16379/0\n"                                           \
    "postgres:\n  url: postgresql://batchd@127.0.0.1:15432/batchd\n"

/* A NULL-terminated list of name, value, name, value, ... */
static const char *env_lookup(const char *name, void *arg)
{
    const char *const *kv = arg;

    for (; kv != NULL && kv[0] != NULL; kv += 2)
        if (strcmp(kv[0], name) == 0)
            return kv[1];
    return NULL;
}

static const char *const no_env[] = { NULL };

struct loaded {
    char path[64];
    char err[512];
    int rc;
    struct bd_config *cfg;
};

/* Write yaml to a fresh temp file, load it with env, remove the file. */
static void load(struct loaded *l, const char *yaml, const char *const *env)
{
    int fd;

    snprintf(l->path, sizeof(l->path), "/tmp/bd_test_config_XXXXXX");
    fd = mkstemp(l->path);
    assert_true(fd >= 0);
    size_t len = strlen(yaml);
    assert_int_equal(write(fd, yaml, len), (ssize_t)len);
    close(fd);
    memset(l->err, 'x', sizeof(l->err));          /* must be overwritten by a message */
    l->cfg = (struct bd_config *)(uintptr_t)1;    /* must be reset to NULL on error */
    l->rc = bd_config_load(l->path, env_lookup, (void *)env, &l->cfg, l->err, sizeof(l->err));
    unlink(l->path);
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

/* The load must fail with BD_EINVAL, one line "FILE: key: ..." containing problem. */
static void expect_file_error(const char *yaml, const char *key, const char *problem)
{
    struct loaded l;
    char prefix[128];

    load(&l, yaml, no_env);
    if (l.rc == BD_OK)
        fail_msg("loaded, but expected an error naming %s", key);
    assert_int_equal(l.rc, BD_EINVAL);
    assert_null(l.cfg);
    assert_null(strchr(l.err, '\n'));
    if (getenv("BD_TEST_VERBOSE") != NULL)
        print_message("%s\n", l.err);
    snprintf(prefix, sizeof(prefix), "%s: %s", l.path, key);
    if (strncmp(l.err, prefix, strlen(prefix)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", l.err, prefix);
    assert_contains(l.err, problem);
}

/* The load must fail with "environment VAR: ...problem". */
static void expect_env_error(const char *yaml, const char *const *env, const char *var,
                             const char *problem)
{
    struct loaded l;
    char prefix[128];

    load(&l, yaml, env);
    if (l.rc == BD_OK)
        fail_msg("loaded, but expected an error naming %s", var);
    assert_int_equal(l.rc, BD_EINVAL);
    assert_null(l.cfg);
    if (getenv("BD_TEST_VERBOSE") != NULL)
        print_message("%s\n", l.err);
    snprintf(prefix, sizeof(prefix), "environment %s: ", var);
    if (strncmp(l.err, prefix, strlen(prefix)) != 0)
        fail_msg("\"%s\" does not start with \"%s\"", l.err, prefix);
    assert_contains(l.err, problem);
}

static struct bd_config *load_ok(const char *yaml, const char *const *env)
{
    struct loaded l;

    load(&l, yaml, env);
    if (l.rc != BD_OK)
        fail_msg("load failed: %s", l.err);
    assert_non_null(l.cfg);
    return l.cfg;
}

/* -- Values ----------------------------------------------------------------------------- */

static const char full_yaml[] =
    "server:\n"
    "  listen: 0.0.0.0:9001\n"
    "  log_level: debug\n"
    "  api_keys: [k1, \"k-2\"]\n"
    "  worker_id: w-1\n"
    "redis:\n"
    "  url: redis://10.0.0.1:6379/2\n"
    "postgres:\n"
    "  url: postgresql://u@db/x\n"
    "  pool_size: 8\n"
    "jobs:\n"
    "  max_concurrent_jobs: 5\n"
    "  default_batch_size: 50\n"
    "  max_batch_size: 500\n"
    "  max_items_per_job: 2000\n"
    "  processing_interval: 0.25\n"
    "  retry_attempts: 0\n"
    "  retry_delay: 0.05\n"
    "  job_timeout: 120\n"
    "  cleanup_interval: 600\n"
    "  progress_update_interval: 2.5\n"
    "  lease: 10\n"
    "  reaper_interval: 1.5\n"
    "  max_queued_items: 777\n"
    "metrics:\n"
    "  enabled: false\n"
    "http:\n"
    "  max_connections: 10\n"
    "  max_header_bytes: 8192\n"
    "  max_url_bytes: 2048\n"
    "  max_body_bytes: 1048576\n"
    "  idle_timeout: 5\n"
    "  request_timeout: 7\n"
    "models:\n"
    "  - name: mixtral\n"
    "    provider: ollama\n"
    "    base_url: http://127.0.0.1:11434/\n"
    "    remote_model: mixtral:8x7b\n"
    "    version: \"2\"\n"
    "    dimensions: 4096\n"
    "    max_inputs_per_request: 16\n"
    "    max_chars_per_request: 100000\n"
    "    max_input_chars: 4000\n"
    "    overlong: fail\n"
    "    concurrency: 2\n"
    "    timeout: 12.5\n"
    "    rate_limit_rps: 20\n"
    "  - name: oa\n"
    "    provider: openai\n"
    "    base_url: https://api.example.com\n"
    "    api_key: sk-abc\n"
    "    dimensions: 1536\n"
    "  - name: t\n"
    "    provider: tei\n"
    "    base_url: http://127.0.0.1:8080\n"
    "    dimensions: 384\n"
    "  - name: h\n"
    "    provider: hashing\n"
    "    dimensions: 384\n";

static void config_loads_every_key_when_file_is_valid(void **state)
{
    (void)state;
    struct bd_config *c = load_ok(full_yaml, no_env);

    assert_non_null(c->source_path);
    assert_string_equal(c->listen, "0.0.0.0:9001");
    assert_string_equal(c->listen_host, "0.0.0.0");
    assert_int_equal(c->listen_port, 9001);
    assert_string_equal(c->log_level, "debug");
    assert_int_equal(c->api_keys_count, 2);
    assert_string_equal(c->api_keys[0], "k1");
    assert_string_equal(c->api_keys[1], "k-2");
    assert_string_equal(c->worker_id, "w-1");
    assert_string_equal(c->redis_url, "redis://10.0.0.1:6379/2");
    assert_string_equal(c->postgres_url, "postgresql://u@db/x");
    assert_int_equal(c->postgres_pool_size, 8);
    assert_int_equal(c->max_concurrent_jobs, 5);
    assert_int_equal(c->default_batch_size, 50);
    assert_int_equal(c->max_batch_size, 500);
    assert_int_equal(c->max_items_per_job, 2000);
    assert_float_equal(c->processing_interval_s, 0.25, 1e-9);
    assert_int_equal(c->retry_attempts, 0);
    assert_float_equal(c->retry_delay_s, 0.05, 1e-9);
    assert_float_equal(c->job_timeout_s, 120, 1e-9);
    assert_float_equal(c->cleanup_interval_s, 600, 1e-9);
    assert_float_equal(c->progress_update_interval_s, 2.5, 1e-9);
    assert_float_equal(c->lease_s, 10, 1e-9);
    assert_float_equal(c->reaper_interval_s, 1.5, 1e-9);
    assert_int_equal(c->max_queued_items, 777);
    assert_false(c->metrics_enabled);
    assert_int_equal(c->http_max_connections, 10);
    assert_int_equal(c->http_max_header_bytes, 8192);
    assert_int_equal(c->http_max_url_bytes, 2048);
    assert_int_equal(c->http_max_body_bytes, 1048576);
    assert_float_equal(c->http_idle_timeout_s, 5, 1e-9);
    assert_float_equal(c->http_request_timeout_s, 7, 1e-9);

    assert_int_equal(c->models_count, 4);
    const struct bd_model_config *m = &c->models[0];
    assert_string_equal(m->name, "mixtral");
    assert_int_equal(m->provider, BD_PROVIDER_OLLAMA);
    assert_string_equal(m->base_url, "http://127.0.0.1:11434");   /* trailing / dropped */
    assert_string_equal(m->remote_model, "mixtral:8x7b");
    assert_null(m->api_key);
    assert_string_equal(m->version, "2");
    assert_int_equal(m->dimensions, 4096);
    assert_int_equal(m->max_inputs_per_request, 16);
    assert_int_equal(m->max_chars_per_request, 100000);
    assert_int_equal(m->max_input_chars, 4000);
    assert_int_equal(m->overlong, BD_OVERLONG_FAIL);
    assert_int_equal(m->concurrency, 2);
    assert_float_equal(m->timeout_s, 12.5, 1e-9);
    assert_float_equal(m->rate_limit_rps, 20, 1e-9);
    assert_int_equal(c->models[1].provider, BD_PROVIDER_OPENAI);
    assert_string_equal(c->models[1].api_key, "sk-abc");
    assert_int_equal(c->models[2].provider, BD_PROVIDER_TEI);
    assert_int_equal(c->models[3].provider, BD_PROVIDER_HASHING);
    assert_null(c->models[3].base_url);

    assert_ptr_equal(bd_config_get_model(c, "oa"), &c->models[1]);
    assert_null(bd_config_get_model(c, "nope"));
    assert_string_equal(bd_config_provider_name(BD_PROVIDER_OLLAMA), "ollama");
    assert_string_equal(bd_config_provider_name(BD_PROVIDER_OPENAI), "openai");
    assert_string_equal(bd_config_provider_name(BD_PROVIDER_TEI), "tei");
    assert_string_equal(bd_config_provider_name(BD_PROVIDER_HASHING), "hashing");
    bd_config_free(c);
}

static void config_uses_defaults_when_keys_are_missing(void **state)
{
    (void)state;
    struct bd_config *c = load_ok(STORES "models:\n  - name: m\n    provider: ollama\n"
                                   "    base_url: http://h:1\n    dimensions: 8\n", no_env);
    char want_prefix[300];

    assert_string_equal(c->listen, "127.0.0.1:8000");
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8000);
    assert_string_equal(c->log_level, "info");
    assert_int_equal(c->api_keys_count, 0);
    assert_null(c->api_keys);
    char host[256];
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    host[sizeof(host) - 1] = '\0';
    for (char *p = host; *p != '\0'; p++)         /* what a worker id may not hold */
        if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-", *p) ==
            NULL)
            *p = '_';
    snprintf(want_prefix, sizeof(want_prefix), "%.100s-%ld-", host, (long)getpid());
    /* "<host>-<pid>-" and 4 random hex digits: unique where hostname and pid repeat. */
    size_t plen = strlen(want_prefix);
    assert_int_equal(strncmp(c->worker_id, want_prefix, plen), 0);
    assert_int_equal(strlen(c->worker_id), plen + 4);
    assert_int_equal(strspn(c->worker_id + plen, "0123456789abcdef"), 4);
    assert_int_equal(c->postgres_pool_size, 4);
    assert_int_equal(c->max_concurrent_jobs, 3);
    assert_int_equal(c->default_batch_size, 100);
    assert_int_equal(c->max_batch_size, 10000);
    assert_int_equal(c->max_items_per_job, 10000000);
    assert_float_equal(c->processing_interval_s, 1, 1e-9);
    assert_int_equal(c->retry_attempts, 3);
    assert_float_equal(c->retry_delay_s, 1, 1e-9);
    assert_float_equal(c->job_timeout_s, 3600, 1e-9);
    assert_float_equal(c->cleanup_interval_s, 86400, 1e-9);
    assert_float_equal(c->progress_update_interval_s, 1, 1e-9);
    assert_float_equal(c->lease_s, 30, 1e-9);
    assert_float_equal(c->reaper_interval_s, 5, 1e-9);
    assert_int_equal(c->max_queued_items, 10000000);
    assert_true(c->metrics_enabled);
    assert_int_equal(c->http_max_connections, 4096);
    assert_int_equal(c->http_max_header_bytes, 16384);
    assert_int_equal(c->http_max_url_bytes, 4096);
    assert_int_equal(c->http_max_body_bytes, 268435456);
    assert_float_equal(c->http_idle_timeout_s, 60, 1e-9);
    assert_float_equal(c->http_request_timeout_s, 30, 1e-9);

    const struct bd_model_config *m = &c->models[0];
    assert_string_equal(m->remote_model, "m");
    assert_null(m->api_key);
    assert_string_equal(m->version, "1");
    assert_int_equal(m->max_inputs_per_request, 32);
    assert_int_equal(m->max_chars_per_request, 200000);
    assert_int_equal(m->max_input_chars, 8192);
    assert_int_equal(m->overlong, BD_OVERLONG_TRUNCATE);
    assert_int_equal(m->concurrency, 4);
    assert_float_equal(m->timeout_s, 30, 1e-9);
    assert_float_equal(m->rate_limit_rps, 0, 1e-9);
    bd_config_free(c);
}

static void config_loads_when_file_is_empty_and_env_has_stores(void **state)
{
    (void)state;
    static const char *const env[] = {
        "BATCH_REDIS_URL", "redis://r:1", "BATCH_POSTGRES_URL", "dbname=batchd", NULL,
    };
    struct bd_config *c = load_ok("", env);

    assert_string_equal(c->redis_url, "redis://r:1");
    assert_string_equal(c->postgres_url, "dbname=batchd");
    assert_int_equal(c->models_count, 0);
    bd_config_free(c);

    /* Empty sections and null values mean "use the default". */
    c = load_ok("server:\njobs:\n  retry_attempts: ~\n  lease: null\nmodels:\n", env);
    assert_int_equal(c->retry_attempts, 3);
    assert_float_equal(c->lease_s, 30, 1e-9);
    bd_config_free(c);
}

static void config_accepts_ipv6_listen_when_bracketed(void **state)
{
    (void)state;
    struct bd_config *c = load_ok(STORES "server:\n  listen: \"[::1]:0\"\n", no_env);

    assert_string_equal(c->listen_host, "::1");
    assert_int_equal(c->listen_port, 0);
    bd_config_free(c);
}

/* -- Invalid files ---------------------------------------------------------------------- */

static void config_fails_naming_key_when_key_is_unknown(void **state)
{
    (void)state;
    expect_file_error(STORES "jobs:\n  retry_attemps: 3\n", "jobs.retry_attemps",
                      "unknown key (expected one of: max_concurrent_jobs,");
    expect_file_error(STORES "colour: blue\n", "colour", "unknown key");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "  - name: b\n    provider: hashing\n    dims: 4\n",
                      "models[1].dims", "unknown key (expected one of: name, provider,");
}

static void config_fails_naming_key_when_type_is_wrong(void **state)
{
    (void)state;
    expect_file_error(STORES "jobs: [1, 2]\n", "jobs", "expected a mapping of keys, got a list");
    expect_file_error(STORES "server:\n  listen: [a]\n", "server.listen",
                      "expected a single value, got a list");
    expect_file_error(STORES "models:\n  name: x\n", "models", "expected a list");
    expect_file_error(STORES "server:\n  api_keys: {a: b}\n", "server.api_keys",
                      "expected a list");
    expect_file_error(STORES "jobs:\n  max_concurrent_jobs: lots\n", "jobs.max_concurrent_jobs",
                      "not an integer (got \"lots\")");
    expect_file_error(STORES "jobs:\n  max_concurrent_jobs: 2.5\n", "jobs.max_concurrent_jobs",
                      "not an integer");
    expect_file_error(STORES "jobs:\n  retry_attempts: -1\n", "jobs.retry_attempts",
                      "not an integer");
    expect_file_error(STORES "jobs:\n  retry_delay: soon\n", "jobs.retry_delay", "not a number");
    expect_file_error("- a\n- b\n", "top level", "expected a mapping of sections");
}

static void config_fails_naming_key_when_number_is_out_of_range(void **state)
{
    (void)state;
    expect_file_error(STORES "jobs:\n  max_concurrent_jobs: 0\n", "jobs.max_concurrent_jobs",
                      "must be between 1 and 1024 (got 0)");
    expect_file_error(STORES "jobs:\n  max_concurrent_jobs: 1025\n", "jobs.max_concurrent_jobs",
                      "must be between 1 and 1024");
    expect_file_error(STORES "jobs:\n  retry_attempts: 101\n", "jobs.retry_attempts",
                      "must be between 0 and 100");
    expect_file_error(STORES "jobs:\n  default_batch_size: 0\n", "jobs.default_batch_size",
                      "must be between 1 and");
    expect_file_error(STORES "jobs:\n  max_batch_size: 50\n  default_batch_size: 60\n",
                      "jobs.default_batch_size", "must not exceed jobs.max_batch_size (50)");
    expect_file_error(STORES "jobs:\n  max_queued_items: 99999999999\n", "jobs.max_queued_items",
                      "must be between 1 and 4294967295");
    expect_file_error(STORES "jobs:\n  max_items_per_job: 123456789012345678901234567890\n",
                      "jobs.max_items_per_job", "must be between 1 and 4294967295 (got");
    expect_file_error(STORES "jobs:\n  processing_interval: 0\n", "jobs.processing_interval",
                      "must be a number of seconds > 0");
    expect_file_error(STORES "jobs:\n  job_timeout: -5\n", "jobs.job_timeout",
                      "must be a number of seconds > 0");
    expect_file_error(STORES "jobs:\n  lease: .inf\n", "jobs.lease", "not a number");
    expect_file_error(STORES "jobs:\n  lease: nan\n", "jobs.lease", "not a number");
    expect_file_error(STORES "http:\n  request_timeout: 1e300\n", "http.request_timeout",
                      "<= 31536000");
    expect_file_error("redis:\n  url: redis://x\npostgres:\n  url: dbname=x\n  pool_size: 0\n",
                      "postgres.pool_size",
                      "must be between 2 and 64");
    /* One connection cannot serve an upload's transaction and its collection lookup. */
    expect_file_error("redis:\n  url: redis://x\npostgres:\n  url: dbname=x\n  pool_size: 1\n",
                      "postgres.pool_size",
                      "must be between 2 and 64");
    expect_file_error(STORES "http:\n  max_body_bytes: 0\n", "http.max_body_bytes",
                      "must be between 1 and");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "  - name: b\n    provider: hashing\n    dimensions: 8\n"
                      "  - name: c\n    provider: hashing\n    dimensions: 65537\n",
                      "models[2].dimensions", "must be between 1 and 65536");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 0\n",
                      "models[0].dimensions", "must be between 1 and 65536");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "    rate_limit_rps: -1\n", "models[0].rate_limit_rps",
                      "must be between 0 and");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "    concurrency: 0\n", "models[0].concurrency", "must be between 1");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "    max_chars_per_request: 100\n", "models[0].max_input_chars",
                      "must not exceed max_chars_per_request (100)");
}

static void config_fails_naming_key_when_enum_value_is_unknown(void **state)
{
    (void)state;
    expect_file_error(STORES "models:\n  - name: a\n    provider: llama\n    dimensions: 4\n",
                      "models[0].provider",
                      "must be one of ollama, openai, tei, hashing (got \"llama\")");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "    overlong: chop\n", "models[0].overlong", "must be truncate or fail");
    expect_file_error(STORES "server:\n  log_level: loud\n", "server.log_level",
                      "must be one of debug, info, warn, error, off");
    expect_file_error(STORES "metrics:\n  enabled: maybe\n", "metrics.enabled",
                      "must be true or false (got \"maybe\")");
}

static void config_fails_naming_key_when_required_model_key_is_missing(void **state)
{
    (void)state;
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n",
                      "models[0].dimensions", "required");
    expect_file_error(STORES "models:\n  - provider: hashing\n    dimensions: 4\n",
                      "models[0].name", "required");
    expect_file_error(STORES "models:\n  - name: a\n    dimensions: 4\n", "models[0].provider",
                      "required");
    expect_file_error(STORES "models:\n  - name: a\n    provider: ollama\n    dimensions: 4\n",
                      "models[0].base_url", "required for provider ollama");
    expect_file_error(STORES "models:\n  - name: a\n    provider: openai\n    dimensions: 4\n"
                      "    base_url: \"\"\n", "models[0].base_url", "required for provider openai");
}

static void config_fails_naming_key_when_model_names_repeat_or_are_bad(void **state)
{
    (void)state;
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "  - name: b\n    provider: hashing\n    dimensions: 4\n"
                      "  - name: a\n    provider: hashing\n    dimensions: 8\n",
                      "models[2].name", "duplicate model name \"a\" (also models[0])");
    expect_file_error(STORES "models:\n  - name: a b\n    provider: hashing\n    dimensions: 4\n",
                      "models[0].name", "may contain only A-Z a-z 0-9 _ . : -");
    expect_file_error(STORES "models:\n  - name: "
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
                      "    provider: hashing\n    dimensions: 4\n",
                      "models[0].name", "must be 1 to 64 characters long");
    expect_file_error(STORES "models:\n  - name: a\n    provider: hashing\n    dimensions: 4\n"
                      "    version: \"1 2\"\n", "models[0].version", "may contain only");
}

static void config_fails_naming_key_when_listen_is_bad(void **state)
{
    (void)state;
    expect_file_error(STORES "server:\n  listen: localhost\n", "server.listen",
                      "must be host:port");
    expect_file_error(STORES "server:\n  listen: 127.0.0.1:65536\n", "server.listen",
                      "port must be an integer 0..65535");
    expect_file_error(STORES "server:\n  listen: 127.0.0.1:http\n", "server.listen",
                      "port must be an integer");
    expect_file_error(STORES "server:\n  listen: \":8000\"\n", "server.listen", "host of 1 to");
    expect_file_error(STORES "server:\n  listen: \"::1:8000\"\n", "server.listen",
                      "IPv6 address needs brackets");
    expect_file_error(STORES "server:\n  listen: \"[::1]8000\"\n", "server.listen",
                      "[ipv6]:port");
}

static void config_fails_naming_key_when_url_scheme_is_wrong(void **state)
{
    (void)state;
    expect_file_error("redis:\n  url: http://127.0.0.1:6379\n"
                      "postgres:\n  url: postgresql://x\n", "redis.url", "must be a redis:// URL");
    expect_file_error(STORES "models:\n  - name: a\n    provider: tei\n    dimensions: 4\n"
                      "    base_url: ftp://x\n", "models[0].base_url", "http:// or https://");
    expect_file_error(STORES "models:\n  - name: a\n    provider: tei\n    dimensions: 4\n"
                      "    base_url: \"http://\"\n", "models[0].base_url", "http:// or https://");
}

/* Each configured URL goes through bd_url_parse() when the config loads: a URL the module
 * would refuse at startup fails --check-config, naming its key (or variable). */
static void config_fails_naming_key_when_url_port_is_bad(void **state)
{
    const char *const env[] = { "BATCH_REDIS_URL", "redis://h:notaport", NULL };

    (void)state;
    expect_file_error("redis:\n  url: redis://h:notaport\npostgres:\n  url: postgresql://x\n",
                      "redis.url", "must be a redis:// URL");
    expect_file_error("redis:\n  url: redis://h:65536/0\npostgres:\n  url: postgresql://x\n",
                      "redis.url", "ort");
    expect_file_error("redis:\n  url: redis://h:0/0\npostgres:\n  url: postgresql://x\n",
                      "redis.url", "port must be 1..65535");
    expect_env_error(STORES, env, "BATCH_REDIS_URL", "must be a redis:// URL");
    expect_file_error("redis:\n  url: redis://h\npostgres:\n  url: postgres://db:5x/b\n",
                      "postgres.url", "must be a postgres:// or postgresql:// URL");
    expect_file_error(STORES "models:\n  - name: a\n    provider: tei\n    dimensions: 4\n"
                      "    base_url: http://h:http\n", "models[0].base_url",
                      "http:// or https://");
}

static void config_fails_naming_key_when_url_lacks_host_or_has_bad_parts(void **state)
{
    (void)state;
    expect_file_error("redis:\n  url: redis:///0\npostgres:\n  url: postgresql://x\n",
                      "redis.url", "must be a redis:// URL");
    expect_file_error("redis:\n  url: redis://h/zero\npostgres:\n  url: postgresql://x\n",
                      "redis.url", "database number");
    expect_file_error("redis:\n  url: redis://h\npostgres:\n  url: mysql://h/db\n",
                      "postgres.url", "scheme must be postgres:// or postgresql://");
    expect_file_error("redis:\n  url: redis://h\npostgres:\n  url: \"postgresql://:5432/db\"\n",
                      "postgres.url", "must be a postgres://");
    expect_file_error("redis:\n  url: redis://h\npostgres:\n  url: \"host=h dbname\"\n",
                      "postgres.url", "libpq cannot parse it");
    expect_file_error(STORES "models:\n  - name: a\n    provider: tei\n    dimensions: 4\n"
                      "    base_url: \"http://h/v1?x=1\"\n", "models[0].base_url", "no ?query");
}

static void config_accepts_urls_when_well_formed(void **state)
{
    struct bd_config *c;

    (void)state;
    c = load_ok("redis:\n  url: \"redis://:p%40ss@[::1]:6380/3\"\n"
                "postgres:\n  url: \"host=/run/pg dbname=x\"\n", no_env);
    assert_string_equal(c->postgres_url, "host=/run/pg dbname=x");   /* conninfo: as is */
    bd_config_free(c);
    /* libpq takes its parameters in the query: a postgres URL keeps it. */
    c = load_ok("redis:\n  url: redis://h\npostgres:\n"
                "  url: \"postgresql://u@h/db?sslmode=disable&options=-csearch_path%3Dx\"\n",
                no_env);
    assert_string_equal(c->postgres_url,
                        "postgresql://u@h/db?sslmode=disable&options=-csearch_path%3Dx");
    bd_config_free(c);
    /* Forms only libpq knows: the Unix socket (no host) and several hosts. */
    c = load_ok("redis:\n  url: redis://h\npostgres:\n"
                "  url: \"postgresql:///batchd?host=/run/postgresql\"\n", no_env);
    bd_config_free(c);
    c = load_ok("redis:\n  url: redis://h\npostgres:\n"
                "  url: \"postgresql://h1:5432,h2:5433/batchd\"\n", no_env);
    bd_config_free(c);
}

/* -- bd_url_parse (url.c): the parser behind the checks above ----------------------------- */

static void url_parse_decodes_userinfo_when_percent_encoded(void **state)
{
    struct bd_url u;
    char why[128];

    (void)state;
    assert_int_equal(bd_url_parse("redis://us%3Aer:p%40ss%2Fw@h.example:6380/3",
                                  bd_url_redis_schemes, &u, why, sizeof(why)), BD_OK);
    assert_string_equal(u.scheme, "redis");
    assert_string_equal(u.host, "h.example");
    assert_int_equal(u.port, 6380);
    assert_string_equal(u.user, "us:er");
    assert_string_equal(u.password, "p@ss/w");
    assert_string_equal(u.path, "/3");
    assert_string_equal(u.query, "");
    bd_url_free(&u);
    bd_url_free(&u);                                   /* idempotent */
}

static void url_parse_fills_default_port_when_none_given(void **state)
{
    static const struct {
        const char *url;
        const char *const *schemes;
        int port;
        int path_rc;                                   /* bd_url_path_uint() */
    } ok[] = {
        { "redis://h", bd_url_redis_schemes, 6379, BD_OK },
        { "postgres://u@db/x", bd_url_postgres_schemes, 5432, BD_EINVAL },
        { "postgresql://db", bd_url_postgres_schemes, 5432, BD_OK },
        { "http://h/api", bd_url_http_schemes, 80, BD_EINVAL },
        { "HTTPS://h", bd_url_http_schemes, 443, BD_OK },
    };
    struct bd_url u;
    unsigned db;

    (void)state;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(bd_url_parse(ok[i].url, ok[i].schemes, &u, NULL, 0), BD_OK);
        assert_int_equal(u.port, ok[i].port);
        assert_string_equal(u.user, i == 1 ? "u" : "");
        assert_string_equal(u.password, "");
        assert_int_equal(bd_url_path_uint(&u, 15, &db), ok[i].path_rc);
        bd_url_free(&u);
    }
    assert_int_equal(bd_url_parse("redis://[::1]:7000/15", bd_url_redis_schemes, &u, NULL, 0),
                     BD_OK);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 7000);
    assert_int_equal(bd_url_path_uint(&u, 15, &db), BD_OK);
    assert_int_equal(db, 15);
    assert_int_equal(bd_url_path_uint(&u, 14, &db), BD_EINVAL);
    bd_url_free(&u);
}

static void url_parse_fails_with_reason_when_url_is_bad(void **state)
{
    static const char *const bad[][2] = {
        { "redis://h:notaport", "ort" },
        { "redis://h:0", "port must be 1..65535" },
        { "redis://h:70000", "ort" },
        { "http://h", "scheme must be redis://" },
        { "h:6379", "" },
        { "redis:///0", "" },
        { "redis://h/0#frag", "fragment" },
        { "redis://h /0", "spaces" },
        { "", "" },
    };
    struct bd_url u;
    char why[128];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = '\0';
        if (bd_url_parse(bad[i][0], bd_url_redis_schemes, &u, why, sizeof(why)) != BD_EINVAL)
            fail_msg("\"%s\" parsed, or failed other than BD_EINVAL", bad[i][0]);
        if (getenv("BD_TEST_VERBOSE") != NULL)
            print_message("%s -> %s\n", bad[i][0], why);
        assert_true(why[0] != '\0');
        assert_contains(why, bad[i][1]);
        assert_null(u.host);                           /* nothing left to free */
    }
    /* The password never reaches the reason. */
    assert_int_equal(bd_url_parse("redis://:s3cret@h:x", bd_url_redis_schemes, &u, why,
                                  sizeof(why)), BD_EINVAL);
    assert_null(strstr(why, "s3cret"));
}

static void config_fails_naming_key_when_store_url_is_missing(void **state)
{
    (void)state;
    expect_file_error("postgres:\n  url: postgresql://x\n", "redis.url",
                      "required (in the file or in BATCH_REDIS_URL)");
    expect_file_error("redis:\n  url: redis://x\npostgres:\n  url: \"\"\n", "postgres.url",
                      "required (in the file or in BATCH_POSTGRES_URL)");
}

static void config_fails_naming_key_when_yaml_is_malformed(void **state)
{
    (void)state;
    /* libyaml gives no position; the message names the last key that parsed. */
    expect_file_error(STORES "server:\n  listen: \"127.0.0.1:1\n",
                      "invalid YAML after server.listen (line 6): ", "end of stream");
    expect_file_error(STORES "server:\n  listen: a\n   bad: x\n",
                      "invalid YAML after server.listen (line 6): ",
                      "mapping values are not allowed");
    expect_file_error("@redis\n", "invalid YAML: ", "cannot start any token");
    expect_file_error(STORES "jobs:\n  lease: 1\n  lease: 2\n", "jobs.lease", "duplicate key");
    expect_file_error(STORES "---\nredis:\n  bogus: 1\n", "more than one YAML document", "");
}

static void config_fails_naming_file_when_file_is_missing(void **state)
{
    (void)state;
    char err[256];
    struct bd_config *c = (struct bd_config *)(uintptr_t)1;

    int rc = bd_config_load("/nonexistent/batchd.yaml", env_lookup, (void *)no_env, &c, err,
                            sizeof(err));
    assert_int_equal(rc, BD_EINVAL);
    assert_null(c);
    assert_string_equal(err, "/nonexistent/batchd.yaml: cannot open: No such file or directory");

    rc = bd_config_load("/", env_lookup, (void *)no_env, &c, err, sizeof(err));
    assert_int_equal(rc, BD_EINVAL);
    assert_contains(err, "/: cannot read: Is a directory");

    rc = bd_config_load("/nonexistent", env_lookup, (void *)no_env, &c, NULL, 0);
    assert_int_equal(rc, BD_EINVAL);                  /* no errbuf is fine too */
}

static void config_fails_without_echoing_secret_when_api_key_is_bad(void **state)
{
    (void)state;
    struct loaded l;

    expect_file_error(STORES "server:\n  api_keys: [good, \"\"]\n", "server.api_keys[1]",
                      "must not be empty");
    load(&l, STORES "server:\n  api_keys: [\"sekrit value\"]\n", no_env);
    assert_int_equal(l.rc, BD_EINVAL);
    assert_contains(l.err, "server.api_keys[0]: must be printable ASCII without spaces");
    assert_null(strstr(l.err, "sekrit"));
    load(&l, STORES "models:\n  - name: a\n    provider: openai\n    base_url: http://x\n"
                    "    dimensions: 4\n    api_key: \"sk oops\"\n", no_env);
    assert_int_equal(l.rc, BD_EINVAL);
    assert_contains(l.err, "models[0].api_key: must be printable ASCII");
    assert_null(strstr(l.err, "oops"));
}

/* -- Environment ------------------------------------------------------------------------ */

static void config_applies_every_override_when_env_is_set(void **state)
{
    (void)state;
    static const char *const env[] = {
        "BATCH_REDIS_URL", "redis://env:1/3",
        "BATCH_POSTGRES_URL", "postgresql://env/db",
        "BATCH_MAX_CONCURRENT_JOBS", "7",
        "BATCH_DEFAULT_SIZE", "250",
        "BATCH_PROCESSING_INTERVAL", "300",
        "BATCH_RETRY_ATTEMPTS", "9",
        "BATCH_RETRY_DELAY", "60",
        "BATCH_JOB_TIMEOUT", "7200",
        "BATCH_CLEANUP_INTERVAL", "43200",
        "BATCH_METRICS_ENABLED", "false",
        "BATCH_PROGRESS_UPDATE_INTERVAL", "10",
        "BATCH_LISTEN", "127.0.0.2:8123",
        "BATCH_API_KEYS", " a1 , b2,,c3 ",
        "BATCH_LOG_LEVEL", "warn",
        "BATCH_WORKER_ID", "node-7",
        "BATCH_LEASE_SECONDS", "45.5",
        "BATCH_MAX_QUEUED_ITEMS", "1234",
        NULL,
    };
    /* The file sets every one of them to something else; the environment wins. */
    struct bd_config *c = load_ok(full_yaml, env);

    assert_string_equal(c->redis_url, "redis://env:1/3");
    assert_string_equal(c->postgres_url, "postgresql://env/db");
    assert_int_equal(c->max_concurrent_jobs, 7);
    assert_int_equal(c->default_batch_size, 250);
    assert_float_equal(c->processing_interval_s, 300, 1e-9);
    assert_int_equal(c->retry_attempts, 9);
    assert_float_equal(c->retry_delay_s, 60, 1e-9);
    assert_float_equal(c->job_timeout_s, 7200, 1e-9);
    assert_float_equal(c->cleanup_interval_s, 43200, 1e-9);
    assert_false(c->metrics_enabled);
    assert_float_equal(c->progress_update_interval_s, 10, 1e-9);
    assert_string_equal(c->listen, "127.0.0.2:8123");
    assert_string_equal(c->listen_host, "127.0.0.2");
    assert_int_equal(c->listen_port, 8123);
    assert_int_equal(c->api_keys_count, 3);
    assert_string_equal(c->api_keys[0], "a1");
    assert_string_equal(c->api_keys[1], "b2");
    assert_string_equal(c->api_keys[2], "c3");
    assert_string_equal(c->log_level, "warn");
    assert_string_equal(c->worker_id, "node-7");
    assert_float_equal(c->lease_s, 45.5, 1e-9);
    assert_int_equal(c->max_queued_items, 1234);
    /* Not overridable: still the file's. */
    assert_int_equal(c->max_batch_size, 500);
    bd_config_free(c);
}

static void config_reads_metrics_flag_when_env_uses_any_spelling(void **state)
{
    (void)state;
    static const char *const spellings[][2] = {
        { "true", "1" }, { "false", "0" }, { "1", "1" }, { "0", "0" }, { "yes", "1" },
        { "no", "0" }, { "TRUE", "1" }, { "Off", "0" },
    };

    for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
        const char *env[] = { "BATCH_METRICS_ENABLED", spellings[i][0], NULL };
        struct bd_config *c = load_ok(STORES "metrics:\n  enabled: " "yes\n", env);
        assert_int_equal(c->metrics_enabled, spellings[i][1][0] == '1');
        bd_config_free(c);
    }
}

/* http.allowed_hosts: a comma list of bare host names; ports, spaces and empty entries are
 * refused at load, naming the key; write_timeout is read in seconds. */
static void config_checks_allowed_hosts_and_write_timeout(void **state)
{
    (void)state;
    struct bd_config *c = load_ok(STORES "http:\n  allowed_hosts: \"a.example,127.0.0.1,[::1]\"\n"
                                  "  write_timeout: 2.5\n", no_env);
    assert_string_equal(c->http_allowed_hosts, "a.example,127.0.0.1,[::1]");
    assert_true(c->http_write_timeout_s == 2.5);
    bd_config_free(c);
    c = load_ok(STORES, no_env);
    assert_string_equal(c->http_allowed_hosts, "");
    assert_true(c->http_write_timeout_s == 60);
    bd_config_free(c);
    expect_file_error(STORES "http:\n  allowed_hosts: \"a.example:8000\"\n", "http.allowed_hosts",
                      "no port");
    expect_file_error(STORES "http:\n  allowed_hosts: \"a.example,,b\"\n", "http.allowed_hosts",
                      "comma list");
    expect_file_error(STORES "http:\n  allowed_hosts: \"a.example,\"\n", "http.allowed_hosts",
                      "must not end with a comma");
    expect_file_error(STORES "http:\n  allowed_hosts: \"a b\"\n", "http.allowed_hosts",
                      "may contain only");
    static const char *const env[] = { "BATCH_ALLOWED_HOSTS", "x.example:1", NULL };
    expect_env_error(STORES, env, "BATCH_ALLOWED_HOSTS", "no port");
}

static void config_ignores_variable_when_env_value_is_empty(void **state)
{
    (void)state;
    static const char *const env[] = {
        "BATCH_RETRY_ATTEMPTS", "", "BATCH_API_KEYS", "", NULL,
    };
    struct bd_config *c = load_ok(STORES "jobs:\n  retry_attempts: 5\n"
                                  "server:\n  api_keys: [x]\n", env);
    assert_int_equal(c->retry_attempts, 5);
    assert_int_equal(c->api_keys_count, 1);
    bd_config_free(c);
}

static void config_fails_naming_variable_when_env_value_is_bad(void **state)
{
    (void)state;
    static const char *const bad[][3] = {
        { "BATCH_MAX_CONCURRENT_JOBS", "three", "not an integer (got \"three\")" },
        { "BATCH_MAX_CONCURRENT_JOBS", "0", "must be between 1 and 1024" },
        { "BATCH_DEFAULT_SIZE", "1x", "not an integer" },
        { "BATCH_DEFAULT_SIZE", "20000", "must not exceed jobs.max_batch_size (10000)" },
        { "BATCH_PROCESSING_INTERVAL", "5m", "not a number" },
        { "BATCH_RETRY_ATTEMPTS", "x", "not an integer" },
        { "BATCH_RETRY_ATTEMPTS", "1000", "must be between 0 and 100" },
        { "BATCH_RETRY_DELAY", "-1", "must be a number of seconds > 0" },
        { "BATCH_JOB_TIMEOUT", "inf", "not a number" },
        { "BATCH_CLEANUP_INTERVAL", "0", "must be a number of seconds > 0" },
        { "BATCH_METRICS_ENABLED", "enabled", "must be true or false" },
        { "BATCH_PROGRESS_UPDATE_INTERVAL", "", NULL },         /* empty: ignored, loads */
        { "BATCH_LISTEN", "8000", "must be host:port" },
        { "BATCH_API_KEYS", " , ", "no key in the list" },
        { "BATCH_API_KEYS", "a,b c", "printable ASCII without spaces" },
        { "BATCH_LOG_LEVEL", "chatty", "must be one of debug" },
        { "BATCH_WORKER_ID", "a/b", "may contain only" },
        { "BATCH_LEASE_SECONDS", "thirty", "not a number" },
        { "BATCH_MAX_QUEUED_ITEMS", "-1", "not an integer" },
        { "BATCH_REDIS_URL", "rediss://x", "must be a redis:// URL" },
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *env[] = { bad[i][0], bad[i][1], NULL };
        if (bad[i][2] == NULL) {
            bd_config_free(load_ok(STORES, env));
            continue;
        }
        expect_env_error(STORES, env, bad[i][0], bad[i][2]);
    }
}

/* -- The repo's own files --------------------------------------------------------------- */

static struct bd_config *load_repo_file(const char *rel)
{
    const char *dir = getenv("BD_SOURCE_DIR");
    char path[1024];
    char err[512];
    struct bd_config *c = NULL;

    if (dir == NULL)
        dir = ".";
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    int rc = bd_config_load(path, env_lookup, (void *)no_env, &c, err, sizeof(err));
    if (rc != BD_OK)
        fail_msg("%s: %s", path, err);
    return c;
}

static void config_loads_repo_files_when_shipped(void **state)
{
    (void)state;
    static const char *const seed_models[] = { "mixtral", "yi34", "deepcoder", "imp",
                                               "deepseek" };
    struct bd_config *prod = load_repo_file("conf/batchd.yaml");
    struct bd_config *dev = load_repo_file("conf/dev.yaml");

    for (size_t i = 0; i < sizeof(seed_models) / sizeof(seed_models[0]); i++) {
        const struct bd_model_config *p = bd_config_get_model(prod, seed_models[i]);
        const struct bd_model_config *d = bd_config_get_model(dev, seed_models[i]);
        assert_non_null(p);
        assert_non_null(d);
        assert_int_equal(p->provider, BD_PROVIDER_OLLAMA);
        assert_string_equal(p->base_url, "http://127.0.0.1:11434");
        assert_int_equal(d->provider, BD_PROVIDER_HASHING);
        assert_int_equal(d->dimensions, 384);
    }
    const struct bd_model_config *nomic = bd_config_get_model(dev, "nomic-embed-text");
    assert_non_null(nomic);
    assert_int_equal(nomic->provider, BD_PROVIDER_HASHING);
    assert_int_equal(nomic->dimensions, 768);
    assert_string_equal(dev->listen, "127.0.0.1:8000");
    assert_string_equal(dev->redis_url, "redis://127.0.0.1:16379/0");
    assert_string_equal(dev->postgres_url, "postgresql://batchd@127.0.0.1:15432/batchd");
    bd_config_free(prod);
    bd_config_free(dev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(config_loads_every_key_when_file_is_valid),
        cmocka_unit_test(config_uses_defaults_when_keys_are_missing),
        cmocka_unit_test(config_loads_when_file_is_empty_and_env_has_stores),
        cmocka_unit_test(config_accepts_ipv6_listen_when_bracketed),
        cmocka_unit_test(config_fails_naming_key_when_key_is_unknown),
        cmocka_unit_test(config_fails_naming_key_when_type_is_wrong),
        cmocka_unit_test(config_fails_naming_key_when_number_is_out_of_range),
        cmocka_unit_test(config_fails_naming_key_when_enum_value_is_unknown),
        cmocka_unit_test(config_fails_naming_key_when_required_model_key_is_missing),
        cmocka_unit_test(config_fails_naming_key_when_model_names_repeat_or_are_bad),
        cmocka_unit_test(config_fails_naming_key_when_listen_is_bad),
        cmocka_unit_test(config_fails_naming_key_when_url_scheme_is_wrong),
        cmocka_unit_test(config_fails_naming_key_when_url_port_is_bad),
        cmocka_unit_test(config_fails_naming_key_when_url_lacks_host_or_has_bad_parts),
        cmocka_unit_test(config_accepts_urls_when_well_formed),
        cmocka_unit_test(url_parse_decodes_userinfo_when_percent_encoded),
        cmocka_unit_test(url_parse_fills_default_port_when_none_given),
        cmocka_unit_test(url_parse_fails_with_reason_when_url_is_bad),
        cmocka_unit_test(config_fails_naming_key_when_store_url_is_missing),
        cmocka_unit_test(config_fails_naming_key_when_yaml_is_malformed),
        cmocka_unit_test(config_fails_naming_file_when_file_is_missing),
        cmocka_unit_test(config_fails_without_echoing_secret_when_api_key_is_bad),
        cmocka_unit_test(config_applies_every_override_when_env_is_set),
        cmocka_unit_test(config_reads_metrics_flag_when_env_uses_any_spelling),
        cmocka_unit_test(config_checks_allowed_hosts_and_write_timeout),
        cmocka_unit_test(config_ignores_variable_when_env_value_is_empty),
        cmocka_unit_test(config_fails_naming_variable_when_env_value_is_bad),
        cmocka_unit_test(config_loads_repo_files_when_shipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
