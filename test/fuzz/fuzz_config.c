/* fuzz_config.c -- fuzz target for the configuration loader (src/config.c, libcyaml).
 *
 * Input: a YAML file, optionally followed by an environment section. The section starts
 * at a line "#@env" (a YAML comment, so a corpus file stays a valid config); the YAML is
 * everything before it, and each later line "NAME=VALUE" is what the getenv_fn answers for
 * NAME. Without the section every variable is unset (getenv_fn returns NULL), so the
 * process environment never leaks in.
 *
 * The YAML is written to one memfd per process and loaded through /proc/self/fd/N, so
 * bd_config_load() reads a real file as it does at startup, with no disk I/O. Checks:
 * failure is BD_EINVAL or BD_ENOMEM with *out NULL and a one-line, non-empty message;
 * success gives a config that keeps every documented rule (required URLs, ranges, batch
 * size within max, unique model names, base_url unless hashing, ...), found again by
 * bd_config_get_model(). Then bd_config_free().  SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE                      /* memfd_create */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/log.h"

#define FUZZ_MAX_ENV 32
#define FUZZ_ENV_MARK "#@env\n"
#define FUZZ_MAX_SECONDS 31536000.0     /* config.c's CFG_MAX_SECONDS */

#define FUZZ_NAME "fuzz_config"
#include "fuzz_check.h"

struct fuzz_env {
    char *names[FUZZ_MAX_ENV];
    char *values[FUZZ_MAX_ENV];
    unsigned count;
};

static const char *fuzz_getenv(const char *name, void *arg)
{
    const struct fuzz_env *env = arg;

    for (unsigned i = 0; i < env->count; i++)
        if (strcmp(env->names[i], name) == 0)
            return env->values[i];
    return NULL;
}

/* Lines "NAME=VALUE" of s[0..len); a value ends at the line's end (or at a NUL, being a C
 * string). Lines without '=' are skipped. */
static void env_parse(struct fuzz_env *env, const char *s, size_t len)
{
    const char *end = s + len;

    while (s < end && env->count < FUZZ_MAX_ENV) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *line_end = nl ? nl : end;
        const char *eq = memchr(s, '=', (size_t)(line_end - s));

        if (eq != NULL) {
            env->names[env->count] = strndup(s, (size_t)(eq - s));
            env->values[env->count] = strndup(eq + 1, (size_t)(line_end - eq - 1));
            if (env->names[env->count] == NULL || env->values[env->count] == NULL) {
                free(env->names[env->count]);
                free(env->values[env->count]);
                return;
            }
            env->count++;
        }
        s = nl ? nl + 1 : end;
    }
}

static void env_free(struct fuzz_env *env)
{
    for (unsigned i = 0; i < env->count; i++) {
        free(env->names[i]);
        free(env->values[i]);
    }
    env->count = 0;
}

/* Where the environment section starts (at "#@env\n" that begins a line), or NULL. */
static const char *find_env_mark(const char *s, size_t len)
{
    size_t mlen = strlen(FUZZ_ENV_MARK);

    for (const char *p = s; (size_t)(s + len - p) >= mlen;) {
        const char *hit = memmem(p, (size_t)(s + len - p), FUZZ_ENV_MARK, mlen);

        if (hit == NULL)
            return NULL;
        if (hit == s || hit[-1] == '\n')
            return hit;
        p = hit + 1;
    }
    return NULL;
}

static void check_seconds(double v, const char *what)
{
    FUZZ_CHECK(isfinite(v) && v >= 0 && v <= FUZZ_MAX_SECONDS, "%s = %g", what, v);
}

static void check_config(const struct bd_config *cfg)
{
    enum bd_log_level level;

    FUZZ_CHECK(cfg->source_path != NULL, "no source_path");
    FUZZ_CHECK(cfg->listen != NULL && cfg->listen_host != NULL, "no listen address");
    FUZZ_CHECK(cfg->listen_port >= 0 && cfg->listen_port <= 65535, "port %d",
               cfg->listen_port);
    FUZZ_CHECK(cfg->log_level != NULL && bd_log_level_parse(cfg->log_level, &level) == BD_OK,
               "log_level \"%s\"", cfg->log_level ? cfg->log_level : "(null)");
    FUZZ_CHECK(cfg->worker_id != NULL && cfg->worker_id[0] != '\0', "no worker_id");
    FUZZ_CHECK(cfg->redis_url != NULL && cfg->postgres_url != NULL, "store URL missing");
    FUZZ_CHECK(cfg->api_keys_count == 0 || cfg->api_keys != NULL, "api_keys");
    for (unsigned i = 0; i < cfg->api_keys_count; i++)
        FUZZ_CHECK(cfg->api_keys[i] != NULL && cfg->api_keys[i][0] != '\0', "api_keys[%u]", i);
    FUZZ_CHECK(cfg->postgres_pool_size >= 1 && cfg->postgres_pool_size <= 64, "pool %u",
               cfg->postgres_pool_size);
    FUZZ_CHECK(cfg->default_batch_size >= 1 && cfg->default_batch_size <= cfg->max_batch_size,
               "default_batch_size %u, max_batch_size %u", cfg->default_batch_size,
               cfg->max_batch_size);
    FUZZ_CHECK(cfg->max_concurrent_jobs >= 1, "max_concurrent_jobs 0");
    FUZZ_CHECK(cfg->max_items_per_job >= 1 && cfg->max_queued_items >= 1, "item limits");
    FUZZ_CHECK(cfg->retry_attempts <= 100, "retry_attempts %u", cfg->retry_attempts);
    FUZZ_CHECK(cfg->http_max_connections >= 1 && cfg->http_max_header_bytes >= 1024 &&
                   cfg->http_max_url_bytes >= 64 && cfg->http_max_body_bytes >= 1,
               "http limits");
    check_seconds(cfg->processing_interval_s, "processing_interval");
    check_seconds(cfg->retry_delay_s, "retry_delay");
    check_seconds(cfg->job_timeout_s, "job_timeout");
    check_seconds(cfg->cleanup_interval_s, "cleanup_interval");
    check_seconds(cfg->progress_update_interval_s, "progress_update_interval");
    check_seconds(cfg->lease_s, "lease");
    check_seconds(cfg->reaper_interval_s, "reaper_interval");
    check_seconds(cfg->http_idle_timeout_s, "http.idle_timeout");
    check_seconds(cfg->http_request_timeout_s, "http.request_timeout");

    FUZZ_CHECK(cfg->models_count == 0 || cfg->models != NULL, "models");
    for (unsigned m = 0; m < cfg->models_count; m++) {
        const struct bd_model_config *mc = &cfg->models[m];

        FUZZ_CHECK(mc->name != NULL && mc->name[0] != '\0', "models[%u].name", m);
        FUZZ_CHECK(mc->remote_model != NULL && mc->version != NULL, "models[%u] defaults", m);
        FUZZ_CHECK((unsigned)mc->provider <= BD_PROVIDER_HASHING, "models[%u].provider %d", m,
                   (int)mc->provider);
        FUZZ_CHECK(mc->base_url != NULL || mc->provider == BD_PROVIDER_HASHING,
                   "models[%u] has no base_url", m);
        if (mc->base_url != NULL) {
            size_t n = strlen(mc->base_url);
            FUZZ_CHECK(n == 0 || mc->base_url[n - 1] != '/', "models[%u].base_url ends in /",
                       m);
        }
        FUZZ_CHECK(mc->dimensions >= 1 && mc->dimensions <= 65536, "models[%u].dimensions %u",
                   m, mc->dimensions);
        FUZZ_CHECK(mc->max_inputs_per_request >= 1 && mc->max_chars_per_request >= 1 &&
                       mc->max_input_chars >= 1 && mc->concurrency >= 1,
                   "models[%u] limits", m);
        FUZZ_CHECK(mc->max_input_chars <= mc->max_chars_per_request,
                   "models[%u].max_input_chars %u > max_chars_per_request %u", m,
                   mc->max_input_chars, mc->max_chars_per_request);
        FUZZ_CHECK(mc->overlong == BD_OVERLONG_TRUNCATE || mc->overlong == BD_OVERLONG_FAIL,
                   "models[%u].overlong", m);
        check_seconds(mc->timeout_s, "models[].timeout");
        FUZZ_CHECK(isfinite(mc->rate_limit_rps) && mc->rate_limit_rps >= 0,
                   "models[%u].rate_limit_rps %g", m, mc->rate_limit_rps);
        FUZZ_CHECK(bd_config_get_model(cfg, mc->name) == mc, "models[%u] \"%s\" not unique",
                   m, mc->name);
        (void)bd_config_provider_name(mc->provider);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;                  /* one memfd for the process, rewritten per input */
    static char path[64];
    struct fuzz_env env = { .count = 0 };
    struct bd_config *cfg = (struct bd_config *)1;
    const char *text = (const char *)data;
    const char *mark = find_env_mark(text, size);
    size_t yaml_len = mark ? (size_t)(mark - text) : size;
    char err[512];
    int rc;

    if (fd < 0) {
        bd_log_set_level(BD_LOG_OFF);
        fd = memfd_create("fuzz_config", 0);
        FUZZ_CHECK(fd >= 0, "memfd_create failed");
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate failed");
    FUZZ_CHECK(yaml_len == 0 || pwrite(fd, data, yaml_len, 0) == (ssize_t)yaml_len,
               "pwrite failed");
    if (mark != NULL)
        env_parse(&env, mark + strlen(FUZZ_ENV_MARK),
                  size - yaml_len - strlen(FUZZ_ENV_MARK));

    memset(err, 'x', sizeof(err));
    rc = bd_config_load(path, fuzz_getenv, &env, &cfg, err, sizeof(err));
    FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "errbuf not NUL-terminated");
    if (rc == BD_OK) {
        FUZZ_CHECK(cfg != NULL, "BD_OK without a config");
        check_config(cfg);
        bd_config_free(cfg);
    } else {
        FUZZ_CHECK(rc == BD_EINVAL || rc == BD_ENOMEM, "rc %d", rc);
        FUZZ_CHECK(cfg == NULL, "*out not NULL on failure");
        FUZZ_CHECK(err[0] != '\0', "failure without a message");
        FUZZ_CHECK(strchr(err, '\n') == NULL, "message is not one line: %s", err);
    }
    env_free(&env);
    return 0;
}
