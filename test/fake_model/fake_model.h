/* fake_model.h -- internals shared by fake_model.c (sockets, HTTP) and fake_model_routes.c
 * (routes, faults, stats, config, response bodies).
 *
 * Not for tests: they include fake_vectors.h and fake_model_client.h.  The fake model is a
 * test tool, so allocation failure aborts instead of unwinding (fm_xrealloc).
 * SPDX-License-Identifier: MIT
 */
#ifndef FAKE_MODEL_H
#define FAKE_MODEL_H

#include <jansson.h>
#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define FM_HEAD_RESERVE 256            /* bytes kept in front of each body for the HTTP head */
#define FM_MAX_BODY     (64u << 20)    /* larger request bodies get 413 */
#define FM_MAX_DIM      65536u

/* A growing byte buffer; p is heap memory owned by whoever holds the struct. */
struct fm_buf {
    char *p;
    size_t len;
    size_t cap;
};

/* Fault and shape settings: set by flags, changed by POST /config (same names, '-' or '_'). */
struct fm_config {
    unsigned dim;
    unsigned latency_ms;
    unsigned jitter_ms;
    double fail_rate;
    double rate_429;
    unsigned retry_after;
    double hang_rate;
    double malformed_rate;
    double wrong_dim_rate;
    unsigned max_inputs;               /* 0 = unlimited */
    bool shuffle_openai;
    char api_key[256];                 /* "" = no auth */
    json_t *model_dims;                /* object: model name -> dimension; owned */
    uint64_t seed;
};

enum fm_route_id {
    FM_ROUTE_OLLAMA,                   /* POST /api/embed */
    FM_ROUTE_OPENAI,                   /* POST /v1/embeddings */
    FM_ROUTE_TEI,                      /* POST /embed */
    FM_ROUTE_COUNT
};

struct fm_stats {
    uint64_t requests_total;           /* embedding requests only */
    uint64_t by_route[FM_ROUTE_COUNT];
    uint64_t inputs_total;
    uint64_t in_flight;
    uint64_t max_in_flight;
    uint64_t ok_200;
    uint64_t bad_request_400;
    uint64_t unauthorized_401;
    uint64_t not_found_404;
    uint64_t errors_500;
    uint64_t rate_limited_429;
    uint64_t hangs;
    uint64_t malformed;
    uint64_t wrong_dim;
    uint64_t disconnects;
    json_t *by_model;                  /* object: model name -> requests; owned */
};

struct fm_text {
    const char *s;
    size_t n;
};

struct fm_conn;

struct fm_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_signal_t sig_int;
    uv_signal_t sig_term;
    llhttp_settings_t settings;
    struct fm_config cfg;
    struct fm_config cfg_start;        /* the flags, restored by POST /config {"reset":true} */
    struct fm_stats stats;
    uint64_t rng;                      /* splitmix64 state, seeded from cfg.seed */
    struct fm_conn *conns;             /* every open connection, doubly linked */
    float *vec;                        /* scratch: one vector */
    unsigned vec_cap;
    struct fm_text *texts;             /* scratch: the inputs of the current request */
    size_t texts_cap;
    bool is_stopping;
};

/* One parsed request; every pointer is borrowed from the connection and valid only during
 * fm_handle(). */
struct fm_request {
    int method;                        /* llhttp_method_t */
    const char *path;                  /* without the query string, not NUL-terminated */
    size_t path_len;
    const char *body;
    size_t body_len;
    const char *auth;                  /* Authorization value, "" when absent */
    size_t auth_len;
};

enum fm_when {
    FM_REPLY_NOW,
    FM_REPLY_DELAYED,                  /* send after delay_ms (uv_timer) */
    FM_REPLY_HANG                      /* never answer */
};

/* What fm_handle() decided. buf holds FM_HEAD_RESERVE unused bytes, then the body, so the
 * head can be written in front of it and the whole response goes out in one uv_write. */
struct fm_reply {
    int status;
    struct fm_buf buf;
    unsigned retry_after;              /* 0: no Retry-After header */
    enum fm_when when;
    uint64_t delay_ms;
    bool is_embed;                     /* counts in in_flight until sent */
};

/* realloc that aborts on failure (test tool). */
void *fm_xrealloc(void *p, size_t size);

/* Defaults: dim 8, seed 1, retry_after 1, all rates 0, empty model_dims. */
void fm_config_init(struct fm_config *cfg);
/* dst becomes an independent copy of src (dst must not hold a model_dims). */
void fm_config_copy(struct fm_config *dst, const struct fm_config *src);
/* Releases model_dims; cfg may be copied into or re-initialised afterwards. */
void fm_config_free(struct fm_config *cfg);

/* Set one setting from a command-line flag: name is the flag without "--" ('-' or '_'),
 * arg its argument (NULL for a boolean flag given alone). "model-dim NAME=N" adds to
 * model_dims. Returns 0, or -1 with a message in err. */
int fm_config_set_arg(struct fm_config *cfg, const char *name, const char *arg, char *err,
                      size_t errlen);

/* Setting names, NULL-terminated, with '_'; main builds its flags from them ('-' for '_').
 * model_dims is absent: its flag is the repeatable --model-dim NAME=N. */
extern const char *const fm_config_keys[];

/* Route req and fill rep (which the caller zeroed). Updates srv->stats and draws from
 * srv->rng. Never fails: errors become 4xx/5xx replies. Caller frees rep->buf.p. */
void fm_handle(struct fm_server *srv, const struct fm_request *req, struct fm_reply *rep);

/* A reply with a JSON error body {"error":{"message":msg}} (e.g. for HTTP parse errors). */
void fm_reply_error(struct fm_reply *rep, int status, const char *msg);

/* Write the HTTP head in front of the body; returns the start and sets *len to head+body. */
char *fm_reply_finish(struct fm_reply *rep, bool keep_alive, size_t *len);

#endif
