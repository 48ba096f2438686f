/* model_internal.h -- what the model client's files share (model_client.c: curl multi,
 * transfer pool, hashing slices, public API; model_request.c: one model's requests, rate
 * limit, 429 back-off, circuit breaker, call completion; model_wire.c: request bodies and
 * response parsing; model_hashing.c) and their unit tests. Not for other modules: a
 * private header, in src/, not include/batchd/.
 *
 * The wire functions are pure: no I/O, no state, loop thread or any other. The rest is
 * loop thread only.
 */
#ifndef BATCHD_MODEL_INTERNAL_H
#define BATCHD_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>
#include <uv.h>

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/curl_loop.h"
#include "batchd/model_client.h"

/* The path appended to base_url: "/api/embed", "/v1/embeddings", "/embed"; NULL for
 * hashing. */
const char *bd__model_wire_path(enum bd_model_provider p);

/* Build a request body into b (appends; the caller resets b first): begin, then one add per
 * text (is_first on the first), then end. remote_model is JSON-escaped (ignored by tei).
 * Texts are escaped straight into b: no allocation per text beyond b's growth. On ENOMEM
 * b->is_failed is set. */
void bd__model_wire_begin(struct bd_buf *b, enum bd_model_provider p, const char *remote_model);
void bd__model_wire_add(struct bd_buf *b, const char *text, size_t len, bool is_first);
void bd__model_wire_end(struct bd_buf *b, enum bd_model_provider p);

/* Parse an embedding response body[0..len) of provider p for n inputs of dim numbers each
 * into out[0..n*dim), row i for input i (openai: placed by data[].index). Validates: valid
 * JSON of the provider's shape, exactly n vectors, each exactly dim numbers, all finite as
 * float. Returns BD_OK, or BD_EMODELBAD with a one-line reason in msg ("model returned 3
 * vectors for 4 inputs", "vector 2 has 385 dimensions, expected 384", "response is not valid
 * JSON: ..."); out is then partly written. BD_ENOMEM when jansson cannot allocate.
 * Allocates (jansson's tree) and frees it before returning. */
int bd__model_wire_parse(enum bd_model_provider p, const char *body, size_t len, unsigned n,
                         unsigned dim, float *out, char *msg, size_t msglen);

/* The error text of a non-2xx answer: a JSON "error" string, "error"."message", "message" or
 * "detail", else the start of the body with control bytes as spaces; at most outlen-1 bytes,
 * cut at a UTF-8 boundary, "(empty body)" when there is nothing. Always NUL-terminates. */
void bd__model_wire_error_text(const char *body, size_t len, char *out, size_t outlen);

/* The length of the longest prefix of text[0..len) that is at most max bytes and does not
 * end inside a UTF-8 sequence. */
size_t bd__model_utf8_cut(const char *text, size_t len, size_t max);


/* ---------------------------------------------------------------------------------------
 * The client's state (model_client.c and model_request.c)
 */

#define MODEL_RESP_CAP_BASE      ((size_t)64 << 20) /* plus a per-vector estimate */
#define MODEL_RESP_BYTES_PER_NUM 32                 /* generous for "-0.0123456789," */
#define MODEL_BUF_KEEP_MAX       ((size_t)4 << 20)  /* larger pooled buffers are freed */
#define MODEL_RATE_STEP_RPS      1.0   /* additive increase per second of success */
#define MODEL_RATE_MIN_RPS       0.2   /* multiplicative decrease stops here */
#define MODEL_RATE_DECREASE_GAP  1.0   /* at most one decrease per this many seconds */
#define MODEL_UNLIMITED_RESTORE  60.0  /* unlimited ceiling: limiter off after this calm */
#define MODEL_SENT_RING          64    /* send times kept to measure the observed rate */

/* ---------------------------------------------------------------------------------------
 * Intrusive doubly linked lists (libuv's QUEUE, spelled out)
 */

struct model_link {
    struct model_link *prev;
    struct model_link *next;
};

#define MODEL_OF(ptr, type, field) ((type *)(void *)((char *)(ptr) - offsetof(type, field)))

static inline void model_link_init(struct model_link *l)
{
    l->prev = l->next = l;
}

static inline bool model_link_is_empty(const struct model_link *head)
{
    return head->next == head;
}

static inline void model_link_remove(struct model_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    model_link_init(l);
}

static inline void model_link_insert_tail(struct model_link *head, struct model_link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static inline void model_link_insert_head(struct model_link *head, struct model_link *l)
{
    l->next = head->next;
    l->prev = head;
    head->next->prev = l;
    head->next = l;
}

/* Move every element of from to the empty list to. */
static inline void model_link_move(struct model_link *from, struct model_link *to)
{
    model_link_init(to);
    if (model_link_is_empty(from))
        return;
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    model_link_init(from);
}

/* ---------------------------------------------------------------------------------------
 * Types
 */

struct model;
struct model_sub;
/* Put a waiting sub in m->waiting at its call's place: priority, then rank, then arrival. */
void bd__model_enqueue(struct model *m, struct model_sub *sub);

struct model_sub;

/* A pooled transfer. Lives on mc->free_xfers or is attached to one in-flight sub. */
struct model_xfer {
    CURL *easy;
    struct bd_buf body;            /* request body; curl reads it in place */
    struct bd_buf resp;            /* response body */
    size_t resp_cap;               /* abort the transfer past this many bytes */
    struct model_sub *sub;
    struct model_xfer *next_free;
    bool is_too_large;
    bool is_nomem;
    bool is_no_fd;                 /* socket() failed: EMFILE/ENFILE (ours, not the model's) */
    char errbuf[CURL_ERROR_SIZE];
};

enum sub_state { SUB_NEW = 0, SUB_WAITING, SUB_IN_FLIGHT, SUB_DONE };

/* One HTTP request of a call: inputs [first, end) minus those refused by the overlong
 * policy. Stored inside the call's allocation. */
struct model_sub {
    struct bd_model_call *call;
    struct model_link link;        /* in model->waiting while SUB_WAITING */
    struct model_xfer *xfer;       /* while SUB_IN_FLIGHT */
    unsigned first;
    unsigned end;
    unsigned n_sent;
    unsigned n429;                 /* 429 answers to this request so far */
    uint64_t t_start;              /* uv_hrtime of the current attempt */
    enum sub_state state;
    bool is_probe;                 /* the half-open breaker's one trial request */
};

enum call_state { CALL_RUNNING = 0, CALL_DONE, CALL_DELIVERING };

struct bd_model_call {
    struct bd_model_client *mc;
    struct model *m;
    const struct bd_embed_input *inputs;
    unsigned count;
    bd_model_embed_cb cb;
    void *arg;
    float *vectors;                /* count * dim, zeros for refused inputs */
    int *item_status;
    unsigned truncated;
    unsigned requests;
    unsigned rate_limited;
    uint64_t t_first;
    uint64_t t_last;
    struct model_sub *subs;
    unsigned subs_count;
    unsigned subs_left;            /* not yet answered successfully */
    unsigned hash_next;            /* hashing: next input to compute */
    struct bd_model_order order;   /* its place in the model's queue (bd_model_embed) */
    uint64_t seq;                  /* arrival order, the queue's last key */
    enum call_state state;
    int status;
    bool is_retryable;
    char message[320];
    struct model_link link;        /* mc->calls while running, mc->done once finished */
    struct model_link hash_link;   /* mc->hashing while a hashing call runs */
};

enum breaker_state { BREAKER_CLOSED = 0, BREAKER_OPEN, BREAKER_HALF_OPEN };

struct model {
    struct bd_model_client *mc;
    const struct bd_model_config *cfg;
    char *url;
    char *url_shown;               /* url with a password in it replaced: for messages,
                                    * which are stored with the items and logged */
    struct curl_slist *headers;
    const char *remote_model;
    unsigned dim;
    unsigned max_inputs;
    unsigned max_chars;
    unsigned max_input_chars;
    unsigned concurrency;
    double timeout_s;

    struct model_link waiting;     /* subs waiting for a slot, a token or Retry-After, in
                                    * dispatch order (bd__model_enqueue) */
    uint64_t next_seq;
    uv_timer_t timer;              /* wakes the pump after a token or Retry-After wait */
    bool is_pumping;
    bool is_pump_again;

    /* Adaptive rate limit: a token bucket whose rate moves between MODEL_RATE_MIN_RPS and
     * the ceiling (AIMD). rate 0 means no limit. */
    double ceiling;
    double rate;
    double tokens;
    double bucket_t;
    double last_adjust;
    double last_decrease;
    double blocked_until;          /* 429: nothing leaves before this time */
    double sent_at[MODEL_SENT_RING];
    unsigned sent_pos;

    enum breaker_state breaker;
    unsigned consecutive_failures;
    double cooldown_s;
    double open_until;
    bool is_probe_in_flight;

    struct bd_model_stats stats;
};

struct bd_model_client {
    uv_loop_t *loop;
    const struct bd_config *cfg;
    struct bd_model_tuning tuning;
    struct bd_curl_loop *curl;     /* curl_loop.h: the multi on the loop */
    CURLM *multi;                  /* curl's, borrowed from it */
    uv_idle_t idle;
    struct model *models;
    unsigned models_count;
    struct model_xfer *free_xfers;
    struct model_link calls;       /* running */
    struct model_link done;        /* finished, callback not yet run */
    struct model_link hashing;     /* running hashing calls, served round robin */
    float *scratch;                /* parse target, reused */
    size_t scratch_cap;
    int pending_closes;
    bool is_closing;
    bool is_torn_down;
    bd_model_closed_cb closed_cb;
    void *closed_arg;
};

static inline double model_now(void)
{
    return (double)uv_hrtime() / 1e9;
}

/* The bytes of input in that are sent: all of it, or a prefix cut at max_input_chars. */
static inline size_t model_text_len(const struct model *m, const struct bd_embed_input *in)
{
    if (in->len <= m->max_input_chars)
        return in->len;
    return bd__model_utf8_cut(in->text, in->len, m->max_input_chars);
}

/* ---- model_client.c ------------------------------------------------------------------- */

/* A transfer from the pool (easy handle reset, buffers empty); NULL on ENOMEM. */
struct model_xfer *bd__model_xfer_get(struct bd_model_client *mc);
/* Back to the pool; a buffer grown past MODEL_BUF_KEEP_MAX is freed. */
void bd__model_xfer_put(struct bd_model_client *mc, struct model_xfer *x);
/* CURLOPT_WRITEFUNCTION: append to x->resp, abort past x->resp_cap. */
size_t bd__model_xfer_on_write(char *ptr, size_t size, size_t nmemb, void *userdata);
/* The idle handle: one hashing slice, then deliver finished calls. */
void bd__model_on_idle(uv_idle_t *h);

/* ---- model_request.c ------------------------------------------------------------------ */

/* Set m's token-bucket rate (0 = no limit). */
void bd__model_rate_set(struct model *m, double rate);
/* Finish call with status (first outcome wins): cancel its other requests and queue it for
 * delivery from the idle handle. Never calls the user's callback itself. */
void bd__model_call_finish(struct bd_model_call *call, int status, bool is_retryable,
                           const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void bd__model_call_free(struct bd_model_call *call);
/* Run call's callback, then free it. The call is out of every list. */
void bd__model_call_deliver(struct bd_model_call *call);
/* curl finished sub's transfer with result: classify, retry, or place the rows. */
void bd__model_sub_on_done(struct model_sub *sub, CURLcode result);
/* Send m's waiting requests as far as slots, breaker, Retry-After and tokens allow. */
void bd__model_pump(struct model *m);

#endif
