/* config_internal.h -- what config.c and config_values.c share; not a public header.
 *
 * config.c: the YAML schema, the settings tables, reading the file with libcyaml, the
 * file's values into struct bd_config, bd_config_load()/bd_config_free().
 * config_values.c: every value's parser and string check, the BATCH_* overrides, the
 * cross-field rules, and the error messages all of them share.
 * Startup only. Non-static names are bd__config_ (libuv's uv__ rule); the table and
 * struct names (cfg_field, cfg_load) stay short because nothing outside these two files
 * sees them.  SPDX-License-Identifier: MIT
 */
#ifndef BATCHD_CONFIG_INTERNAL_H
#define BATCHD_CONFIG_INTERNAL_H

#include "batchd/config.h"

#include <stdbool.h>
#include <stddef.h>

#define CFG_MAX_FILE_BYTES (1u << 20)     /* a config is a few KiB; refuse anything silly */
#define CFG_MAX_SECONDS 31536000.0        /* one year: every duration must fit comfortably */
#define CFG_MAX_FRAMES 16                 /* libcyaml backtrace depth we keep (ours is 3) */
#define CFG_NFIELDS 42                    /* entries in cfg_fields (checked in config.c) */

enum cfg_kind {
    CFG_UINT,       /* unsigned, integer in [min, max] */
    CFG_SIZE,       /* size_t, integer in [min, max] */
    CFG_SECONDS,    /* double, finite, > 0 and <= max */
    CFG_RATE,       /* double, finite, in [min, max] */
    CFG_BOOL,       /* bool: true/false/yes/no/on/off/1/0 */
    CFG_STRING,     /* char *, checked by check() when set */
    CFG_PROVIDER,   /* enum bd_model_provider */
    CFG_OVERLONG    /* enum bd_overlong_policy */
};

/* Checks a string value; on failure writes the reason into why and returns false. */
typedef bool (*cfg_check_fn)(const char *s, char *why, size_t whylen);

struct cfg_field {
    const char *key;            /* as written in errors and docs: "jobs.retry_attempts" */
    const char *env;            /* overriding environment variable, or NULL */
    size_t section_off;         /* top-level: offset of the section pointer in raw_config */
    size_t raw_off;             /* offset of the char * in the raw section / raw_model */
    size_t cfg_off;             /* offset of the value in bd_config / bd_model_config */
    enum cfg_kind kind;
    double min, max;
    const char *def;            /* default, parsed like any other value; NULL = none */
    cfg_check_fn check;         /* CFG_STRING only; NULL = any non-empty string */
    bool is_required;           /* model fields: must be given */
};

/* One load in progress: where errors go and which settings the environment supplied. */
struct cfg_load {
    const char *path;
    bd_config_getenv_fn getenv_fn;
    void *getenv_arg;
    char *errbuf;
    size_t errlen;
    bool is_from_env[CFG_NFIELDS];
    bool are_api_keys_from_env;
};

/* The top-level settings (config.c); each maps to one member of struct bd_config. */
extern const struct cfg_field cfg_fields[];        /* CFG_NFIELDS entries */

/* -- config_values.c: errors ------------------------------------------------------------ */

/* Write the message into ld's error buffer and return code. */
int bd__config_fail(struct cfg_load *ld, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int bd__config_fail_oom(struct cfg_load *ld);
/* "FILE: key: why" or, when the value came from the environment, "environment VAR: why". */
int bd__config_fail_value(struct cfg_load *ld, const char *key, const char *env, const char *why);

/* -- config_values.c: values ------------------------------------------------------------ */

/* Parse text as f's kind into base + f->cfg_off. BD_OK, BD_EINVAL with why filled, or
 * BD_ENOMEM. A string replaces (and frees) what was there. */
int bd__config_parse_value(const struct cfg_field *f, const char *text, void *base, char *why,
                           size_t whylen);

/* String checks named by the settings tables (cfg_check_fn). */
bool bd__config_check_listen(const char *s, char *why, size_t whylen);
bool bd__config_check_log_level(const char *s, char *why, size_t whylen);
bool bd__config_check_worker_id(const char *s, char *why, size_t whylen);
bool bd__config_check_hosts(const char *s, char *why, size_t whylen);
bool bd__config_check_redis_url(const char *s, char *why, size_t whylen);
bool bd__config_check_postgres_url(const char *s, char *why, size_t whylen);
bool bd__config_check_http_url(const char *s, char *why, size_t whylen);
bool bd__config_check_name(const char *s, char *why, size_t whylen);
bool bd__config_check_printable(const char *s, char *why, size_t whylen);
bool bd__config_check_token(const char *s, char *why, size_t whylen);
/* webhooks.endpoints[]: any http(s) URL (a query allowed); "whsec_<base64>"; an event type. */
bool bd__config_check_webhook_url(const char *s, char *why, size_t whylen);
bool bd__config_check_webhook_secret(const char *s, char *why, size_t whylen);
bool bd__config_check_webhook_event(const char *s, char *why, size_t whylen);

/* Append a copy of key[0..len) to cfg->api_keys; BD_OK or BD_ENOMEM. */
int bd__config_api_keys_add(struct bd_config *cfg, const char *key, size_t len);
void bd__config_api_keys_clear(struct bd_config *cfg);

/* -- config_values.c: environment and cross-field rules ----------------------------------- */

/* Apply every BATCH_* variable that is set and not empty over what the file said. */
int bd__config_apply_env(struct cfg_load *ld, struct bd_config *cfg);

/* Free the webhook endpoints (and their strings) of cfg. */
void bd__config_webhooks_free(struct bd_config *cfg);

/* Rules between settings, run last: required URLs, batch size within max, unique model
 * names, the listen address split, the default worker id. */
int bd__config_validate(struct cfg_load *ld, struct bd_config *cfg);

#endif
