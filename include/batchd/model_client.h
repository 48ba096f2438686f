/* model_client.h -- embedding requests to model servers on libcurl multi inside the loop.
 *
 * curl_multi_socket_action is driven by a uv_poll per socket and one uv_timer. Providers:
 * ollama, openai, tei (HTTP) and hashing (built in, computed on the loop in bounded slices).
 * One bd_model_embed call covers one job batch: it is split into requests by the model's
 * max_inputs_per_request and max_chars_per_request, sent under the model's concurrency cap
 * and adaptive rate limit, behind a circuit breaker. 429 answers are waited out (Retry-After)
 * inside the client and do not count as failures of the batch. Every response is validated
 * (count, dimension, finite numbers). Depends on libcurl, jansson, libuv and log only.
 * Loop thread only.
 */
#ifndef BATCHD_MODEL_CLIENT_H
#define BATCHD_MODEL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "batchd/metrics.h"

struct bd_config;
struct bd_model_config;
struct bd_model_client;
struct bd_model_call;        /* one bd_model_embed in flight; handle for abort */

struct bd_embed_input {
    const char *text;        /* borrowed until the callback */
    size_t len;
};

struct bd_embed_result {
    unsigned count;          /* == inputs count */
    unsigned dim;            /* the model's dimensions */
    const float *vectors;    /* count*dim; row i is input i; borrowed until cb returns */
    const int *item_status;  /* per input: BD_OK, or BD_EINVAL when the text was over the
                              * model's max_input_chars and its policy is "fail" */
    unsigned truncated;      /* inputs truncated to max_input_chars (policy "truncate") */
    unsigned requests;       /* HTTP requests made (0 for hashing) */
    unsigned rate_limited;   /* 429 answers waited out */
    double model_seconds;    /* wall time from first request to last answer */
};

/* Called once per bd_model_embed. status BD_OK: res valid (borrowed until return).
 * Otherwise res is NULL, message says why ("model returned 3 vectors for 4 inputs"),
 * and status is one of BD_EMODELTIMEOUT, BD_EMODELCONN, BD_EMODEL (5xx), BD_EMODELBAD
 * (malformed/wrong dimension/non-finite), BD_EMODELRATE (429 beyond the client's own
 * patience), BD_EFATAL (other 4xx: not worth retrying), BD_ECANCELED (aborted/closing).
 * is_retryable tells the job engine whether to try the batch again. */
typedef void (*bd_model_embed_cb)(int status, const struct bd_embed_result *res,
                                  const char *message, bool is_retryable, void *arg);

/* Per-model counters for metrics and /debug. */
enum bd_model_error_kind {
    BD_MODEL_ERR_TIMEOUT = 0,     /* "timeout_error" */
    BD_MODEL_ERR_CONNECTION,      /* "connection_error" */
    BD_MODEL_ERR_PROCESSING,      /* "processing_error": 5xx, 4xx, malformed, dimension */
    BD_MODEL_ERR_RATE_LIMITED,    /* "rate_limited" */
    BD_MODEL_ERR_KIND_COUNT
};
const char *bd_model_error_kind_name(enum bd_model_error_kind k);

/* request_seconds buckets (upper bounds, seconds): 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5
 * 5 10 30 60 (+Inf). HTTP models observe each completed request (any outcome, not aborted
 * ones); hashing observes each slice computed on the loop. */
struct bd_model_stats {
    uint64_t requests;            /* HTTP requests completed (any outcome) */
    uint64_t inputs;              /* texts embedded successfully */
    uint64_t connections;         /* TCP connections opened (fewer than requests: keep-alive) */
    uint64_t errors[BD_MODEL_ERR_KIND_COUNT];
    struct bd_hist request_seconds; /* per HTTP request (or per hashing slice) */
    unsigned in_flight;           /* requests now in flight */
    uint64_t busy_ns;             /* slot time used: in_flight integrated over time, up to
                                   * busy_at_ns (bd_model_client_get_busy_seconds adds the
                                   * time since) */
    uint64_t busy_at_ns;          /* uv_hrtime of in_flight's last change (0: never) */
    unsigned concurrency_limit;   /* configured cap */
    double rate_limit_rps;        /* current adaptive limit (0 = unlimited) */
    bool is_circuit_open;
};

/* Knobs of the client's own policies, with defaults from bd_model_tuning_init. Tests
 * shorten them; batchd uses the defaults. */
struct bd_model_tuning {
    unsigned breaker_threshold;     /* consecutive failed requests that open it: 5 */
    double breaker_cooldown_s;      /* first open period: 5, doubling per failed probe */
    double breaker_max_cooldown_s;  /* 60 */
    unsigned max_consecutive_429;   /* 429s on one request before BD_EMODELRATE: 20 */
    double default_retry_after_s;   /* a 429 without Retry-After: 1 */
    double max_retry_after_s;       /* Retry-After cap: 60 */
    double connect_timeout_s;       /* TCP+TLS connect, capped by the model's timeout: 10 */
    unsigned hashing_slice_inputs;  /* hashing: texts per loop tick at most: 64 */
    size_t hashing_slice_bytes;     /* hashing: bytes of text per loop tick at most: 256 KiB */
};
void bd_model_tuning_init(struct bd_model_tuning *t);

/* Create the client for every model in cfg (borrowed; must outlive the client).
 * NULL with *err on failure (curl_global_init must have succeeded). */
struct bd_model_client *bd_model_client_new(uv_loop_t *loop, const struct bd_config *cfg,
                                            int *err);

/* Replace the tuning (copied). Call before the first bd_model_embed. */
void bd_model_client_set_tuning(struct bd_model_client *mc, const struct bd_model_tuning *t);

/* Abort everything in flight (callbacks get BD_ECANCELED), close handles, free the client,
 * then call cb (async; may be NULL). Call once; bd_model_embed fails with BD_ESHUTDOWN after.
 * May be called from inside an embed callback. */
typedef void (*bd_model_closed_cb)(void *arg);
void bd_model_client_close(struct bd_model_client *mc, bd_model_closed_cb cb, void *arg);

/* Where a call's requests go in the model's queue when its slots are all busy: the model's
 * dispatcher sends the waiting request of the highest priority first (0 high, 1 normal,
 * 2 low), within one priority the one with the lowest rank (the caller's count of its own
 * calls already at this model, so jobs take turns: each job's first call goes before any
 * job's second), then in arrival order. NULL: priority 1, rank 0. */
struct bd_model_order {
    int priority;
    unsigned rank;
};

/* Embed inputs[0..count) with model (a name from the config). inputs are borrowed until cb.
 * Returns BD_OK (cb will run once, async) or BD_ENOTFOUND (unknown model), BD_EINVAL,
 * BD_ENOMEM, BD_ESHUTDOWN (client closing) (cb will not run). *call (may be NULL) receives a
 * handle for bd_model_abort, valid until cb runs. Lengths (max_input_chars,
 * max_chars_per_request) are counted in bytes of UTF-8 text before JSON escaping;
 * truncation cuts at a character boundary; a single text longer than max_chars_per_request
 * goes alone. order (may be NULL) places the call in the model's queue. count 0 completes (async) with an empty result. message is "" on success, never
 * NULL. Allocates the call (vectors, statuses) once; no allocation per input. */
int bd_model_embed(struct bd_model_client *mc, const char *model,
                   const struct bd_embed_input *inputs, unsigned count,
                   const struct bd_model_order *order, bd_model_embed_cb cb, void *arg,
                   struct bd_model_call **call);

/* Abort a call: its HTTP transfers are removed from curl at once (the server sees the
 * connection close) and cb runs with BD_ECANCELED (async). A call that already finished but
 * whose cb has not run yet is delivered as BD_ECANCELED too. No-op inside the call's own cb. */
void bd_model_abort(struct bd_model_call *call);

/* Stats of model index i (order of cfg->models), or NULL. Borrowed. */
const struct bd_model_stats *bd_model_client_get_stats(const struct bd_model_client *mc,
                                                       unsigned i);

/* Slot-seconds model i's requests have held so far (each request in flight counts one slot
 * for as long as it is): its rate over the model's concurrency is how busy the model is
 * kept. HTTP providers; 0 for the built-in hashing one, which computes on the loop. */
double bd_model_client_get_busy_seconds(const struct bd_model_client *mc, unsigned i);

/* Seconds until model `name` takes a request again: while its circuit is open (after
 * repeated failures) calls are refused without a request, so a caller retrying a failed
 * call should wait at least this long for the retry to be a real try. 0 when the circuit
 * is closed (or half open), or for an unknown model. */
double bd_model_get_wait_s(const struct bd_model_client *mc, const char *name);

/* The built-in hashing embedder, exposed for tests: deterministic feature hashing of word
 * unigrams and character 3-grams into dim buckets with signed hashes, L2-normalised.
 * See model_hashing.c for the exact features. A text with no features (empty, or only
 * whitespace) maps to the fixed unit vector e0 = (1, 0, ..., 0), so every output has norm 1.
 * out is caller storage of dim floats. No allocation. */
void bd_model_hashing_embed(const char *text, size_t len, unsigned dim, float *out);

#endif
