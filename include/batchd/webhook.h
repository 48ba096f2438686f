/* webhook.h -- signed webhooks, delivered at least once from the PostgreSQL outbox.
 *
 * Events are written by triggers of schema version 8 (pg_schema.c) in the transaction of
 * the state change they announce; this module only delivers them: each batchd process runs
 * one worker that copies new events into per-endpoint deliveries, claims due deliveries
 * (FOR UPDATE SKIP LOCKED plus a lease, so processes never send the same delivery at once),
 * POSTs them with libcurl multi on the loop (curl_loop.h), signed as Standard Webhooks do,
 * and records the outcome: 2xx delivered, else retried with exponential backoff and
 * jitter, given up after webhooks.max_attempts or webhooks.max_age. Endpoints come from the
 * configuration only. docs/webhooks.md is the user's side of it.
 *
 * Loop thread only, never blocks. Reaches PostgreSQL only through pg_store.h.
 */
#ifndef BATCHD_WEBHOOK_H
#define BATCHD_WEBHOOK_H

#include <stddef.h>
#include <uv.h>

struct bd_config;
struct bd_pg;
struct bd_metrics;
struct bd_webhook;

#define BD_WEBHOOK_KEY_MAX 128      /* bytes of a decoded whsec_ key (config.h) */
#define BD_WEBHOOK_SIGNATURE_LEN 47 /* "v1," + 44 characters of base64 */

/* The key of a "whsec_<base64>" secret into key[0..BD_WEBHOOK_KEY_MAX), its length into
 * *klen. BD_OK, or BD_EINVAL when s is not of that form. Pure. */
int bd_webhook_secret_decode(const char *s, unsigned char *key, size_t *klen);

/* The webhook-signature header's value for one send: "v1," and the base64 of
 * HMAC-SHA256(key, id "." timestamp "." body), NUL-terminated into out. BD_OK, or the
 * digest's failure (out is then ""). Pure; allocates only inside libcrypto. */
int bd_webhook_sign(const unsigned char *key, size_t klen, const char *id, long long timestamp,
                    const char *body, size_t blen, char out[BD_WEBHOOK_SIGNATURE_LEN + 1]);

struct bd_webhook_deps {
    uv_loop_t *loop;
    const struct bd_config *cfg; /* borrowed; outlives the worker */
    struct bd_pg *pg;            /* the synchronous-commit pool; borrowed */
    struct bd_metrics *metrics;  /* may be NULL */
};

/* Create the worker (nothing runs until bd_webhook_start). NULL with *err on failure
 * (BD_ENOMEM, or BD_EINVAL for a secret that does not decode: config checks it first).
 * Allocates. */
struct bd_webhook *bd_webhook_new(const struct bd_webhook_deps *deps, int *err);

/* Start polling (every webhooks.poll_interval; before the schema is migrated the polls
 * fail quietly and are tried again) and the retention sweep. Without endpoints only the
 * sweep runs. */
void bd_webhook_start(struct bd_webhook *w);

/* Stop: transfers in flight are abandoned (their lease runs out and a process sends them
 * again: at least once), statements in flight are waited for, handles closed, w freed, then
 * cb(arg) (async, may be NULL). Call once, before the PostgreSQL pool closes. */
typedef void (*bd_webhook_closed_cb)(void *arg);
void bd_webhook_close(struct bd_webhook *w, bd_webhook_closed_cb cb, void *arg);

#endif
