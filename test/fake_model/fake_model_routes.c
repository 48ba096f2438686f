/* fake_model_routes.c -- what the fake model server answers: the Ollama, OpenAI and TEI
 * embedding routes, fault injection, /stats, /config and /healthz.
 *
 * Owns the settings (struct fm_config), the counters (struct fm_stats) and the PRNG that
 * decides faults. Loop thread only; never blocks, never touches sockets: it turns one
 * request into one struct fm_reply and fake_model.c sends it. Bodies are built by hand into
 * one growing buffer (floats with a fast 9-significant-digit formatter) so the fake model
 * is never the bottleneck of a benchmark; only the rare admin replies use jansson to dump.
 * SPDX-License-Identifier: MIT
 */
#include "fake_model.h"
#include "fake_vectors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void *fm_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);

    if (q == NULL) {
        fprintf(stderr, "fake_model: out of memory (%zu bytes)\n", size);
        abort();
    }
    return q;
}

/* ---------------------------------------------------------------------------------------
 * Output buffer
 */

static void buf_reserve(struct fm_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra)
        cap *= 2;
    b->p = fm_xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_put(struct fm_buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

#define BUF_LIT(b, lit) buf_put((b), (lit), sizeof(lit) - 1)

static void buf_put_u64(struct fm_buf *b, uint64_t v)
{
    char tmp[24];
    size_t n = 0;

    do {
        tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    buf_put(b, tmp + sizeof tmp - n, n);
}

/* A JSON string literal of s[0..n): escapes quote, backslash and control bytes; other bytes
 * (UTF-8) pass through, which is what jansson handed us. */
static void buf_put_json_str(struct fm_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    buf_reserve(b, n * 6 + 2);
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

/* 10^k for k = 0..64, each the correctly rounded double of its literal. */
static const double pow10_tab[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7,
    1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23,
    1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31,
    1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39,
    1e40, 1e41, 1e42, 1e43, 1e44, 1e45, 1e46, 1e47,
    1e48, 1e49, 1e50, 1e51, 1e52, 1e53, 1e54, 1e55,
    1e56, 1e57, 1e58, 1e59, 1e60, 1e61, 1e62, 1e63,
    1e64,
};

/* 10^k for any k, using the table where it can (every k a unit vector needs). */
static double pow10_int(int k)
{
    double r = 1.0;
    bool is_neg = k < 0;

    if (k >= 0 && k <= 64)
        return pow10_tab[k];
    if (is_neg)
        k = -k;
    while (k > 64) {
        r *= 1e64;
        k -= 64;
    }
    r *= pow10_tab[k];
    return is_neg ? 1.0 / r : r;
}

/* Writes f like printf("%.9g") into o (at least 16 bytes) and returns the length.
 *
 * Why not snprintf: it costs about 4x more (107 vs 26 ns per float measured), and a
 * 384-dim batch of 32 is 12k floats. The 9-digit mantissa is computed in double (rounded
 * half-to-even, as glibc does), so in rare near-tie cases (1 in 20 million random floats
 * when checked) the last digit differs from glibc's by one. That still parses back to the
 * same float: one unit of the 9th digit (<= 1e-8 relative) is under half a float ulp
 * (>= 3e-8 relative). */
static size_t fmt_float(char *o, float f)
{
    char *start = o;
    double v = f;

    if (v != v) {                      /* never produced by fake_vector; keep JSON valid */
        memcpy(o, "0", 1);
        return 1;
    }
    if (v < 0) {
        *o++ = '-';
        v = -v;
    }
    if (v == 0) {
        *o++ = '0';
        return (size_t)(o - start);
    }
    if (isinf(v)) {
        memcpy(o, "1e999", 5);        /* not reachable for unit vectors */
        return (size_t)(o - start) + 5;
    }
    /* floor(log10(v)) from the binary exponent: v = m * 2^x with m in [0.5, 1), so
     * log10(v) lies in [(x - 1) * log10(2), x * log10(2)); the estimate may be one short,
     * which the d >= 1e9 check below corrects. */
    int x;
    frexp(v, &x);
    int e = (int)floor((x - 1) * 0.30102999566398120);
    uint64_t d = (uint64_t)nearbyint(v * pow10_int(8 - e));
    if (d >= 1000000000u) {            /* e one short, or rounding carried to 10 digits */
        e++;
        d = (uint64_t)nearbyint(v * pow10_int(8 - e));
    } else if (d < 100000000u) {
        e--;
        d = (uint64_t)nearbyint(v * pow10_int(8 - e));
    }
    char dg[9];
    int nd = 9;
    for (int i = 8; i >= 0; i--) {
        dg[i] = (char)('0' + d % 10);
        d /= 10;
    }
    while (nd > 1 && dg[nd - 1] == '0')
        nd--;

    if (e < -4 || e >= 9) {
        *o++ = dg[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, dg + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        *o++ = 'e';
        *o++ = e < 0 ? '-' : '+';
        int ae = e < 0 ? -e : e;
        if (ae >= 100)
            *o++ = (char)('0' + ae / 100);
        *o++ = (char)('0' + ae / 10 % 10);
        *o++ = (char)('0' + ae % 10);
    } else if (e >= 0) {
        for (int i = 0; i <= e; i++)
            *o++ = i < nd ? dg[i] : '0';
        if (nd > e + 1) {
            *o++ = '.';
            memcpy(o, dg + e + 1, (size_t)(nd - e - 1));
            o += nd - e - 1;
        }
    } else {
        *o++ = '0';
        *o++ = '.';
        for (int i = -1; i > e; i--)
            *o++ = '0';
        memcpy(o, dg, (size_t)nd);
        o += nd;
    }
    return (size_t)(o - start);
}

/* "[f,f,...]" for the fake vector of t, dim components. */
static void buf_put_vector(struct fm_server *srv, struct fm_buf *b, const struct fm_text *t,
                           unsigned dim)
{
    if (srv->vec_cap < dim) {
        srv->vec = fm_xrealloc(srv->vec, (size_t)dim * sizeof *srv->vec);
        srv->vec_cap = dim;
    }
    fake_vector(t->s, t->n, dim, srv->vec);

    buf_reserve(b, (size_t)dim * 17 + 2);
    char *o = b->p + b->len;
    *o++ = '[';
    for (unsigned i = 0; i < dim; i++) {
        if (i)
            *o++ = ',';
        o += fmt_float(o, srv->vec[i]);
    }
    *o++ = ']';
    b->len = (size_t)(o - b->p);
}

/* ---------------------------------------------------------------------------------------
 * Replies
 */

static const char *status_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    default:  return "Unknown";
    }
}

static void reply_begin(struct fm_reply *rep, int status)
{
    rep->status = status;
    rep->buf.len = 0;
    buf_reserve(&rep->buf, FM_HEAD_RESERVE + 1024);
    rep->buf.len = FM_HEAD_RESERVE;
}

void fm_reply_error(struct fm_reply *rep, int status, const char *msg)
{
    reply_begin(rep, status);
    BUF_LIT(&rep->buf, "{\"error\":{\"message\":");
    buf_put_json_str(&rep->buf, msg, strlen(msg));
    BUF_LIT(&rep->buf, "}}");
}

/* The error body in the dialect of the route the client spoke. */
static void reply_route_error(struct fm_reply *rep, enum fm_route_id route, int status,
                              const char *type, const char *msg)
{
    reply_begin(rep, status);
    struct fm_buf *b = &rep->buf;
    switch (route) {
    case FM_ROUTE_OLLAMA:                               /* {"error":"..."} */
        BUF_LIT(b, "{\"error\":");
        buf_put_json_str(b, msg, strlen(msg));
        BUF_LIT(b, "}");
        break;
    case FM_ROUTE_OPENAI:
        BUF_LIT(b, "{\"error\":{\"message\":");
        buf_put_json_str(b, msg, strlen(msg));
        BUF_LIT(b, ",\"type\":");
        buf_put_json_str(b, type, strlen(type));
        BUF_LIT(b, ",\"param\":null,\"code\":null}}");
        break;
    default:                                            /* TEI: {"error","error_type"} */
        BUF_LIT(b, "{\"error\":");
        buf_put_json_str(b, msg, strlen(msg));
        BUF_LIT(b, ",\"error_type\":");
        buf_put_json_str(b, type, strlen(type));
        BUF_LIT(b, "}");
        break;
    }
}

static void reply_json(struct fm_reply *rep, int status, json_t *body)
{
    reply_begin(rep, status);
    size_t n = json_dumpb(body, NULL, 0, JSON_COMPACT);
    buf_reserve(&rep->buf, n);
    rep->buf.len += json_dumpb(body, rep->buf.p + rep->buf.len, n, JSON_COMPACT);
    json_decref(body);
}

char *fm_reply_finish(struct fm_reply *rep, bool keep_alive, size_t *len)
{
    char head[FM_HEAD_RESERVE];
    size_t body_len = rep->buf.len - FM_HEAD_RESERVE;
    int n;

    if (rep->retry_after)
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: %s\r\nRetry-After: %u\r\n\r\n",
                     rep->status, status_reason(rep->status), body_len,
                     keep_alive ? "keep-alive" : "close", rep->retry_after);
    else
        n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: %s\r\n\r\n",
                     rep->status, status_reason(rep->status), body_len,
                     keep_alive ? "keep-alive" : "close");
    char *start = rep->buf.p + FM_HEAD_RESERVE - n;
    memcpy(start, head, (size_t)n);
    *len = (size_t)n + body_len;
    return start;
}

/* ---------------------------------------------------------------------------------------
 * Settings
 */

enum key_type { KEY_UINT, KEY_RATE, KEY_BOOL, KEY_STR, KEY_U64, KEY_DIMS };

struct key_desc {
    const char *name;
    enum key_type type;
    size_t off;
    unsigned min;
    unsigned max;
};

#define CFG_OFF(field) offsetof(struct fm_config, field)

static const struct key_desc key_table[] = {
    {"dim",            KEY_UINT, CFG_OFF(dim),            1, FM_MAX_DIM},
    {"latency_ms",     KEY_UINT, CFG_OFF(latency_ms),     0, 3600000},
    {"jitter_ms",      KEY_UINT, CFG_OFF(jitter_ms),      0, 3600000},
    {"fail_rate",      KEY_RATE, CFG_OFF(fail_rate),      0, 0},
    {"rate_429",       KEY_RATE, CFG_OFF(rate_429),       0, 0},
    {"retry_after",    KEY_UINT, CFG_OFF(retry_after),    0, 86400},
    {"hang_rate",      KEY_RATE, CFG_OFF(hang_rate),      0, 0},
    {"malformed_rate", KEY_RATE, CFG_OFF(malformed_rate), 0, 0},
    {"wrong_dim_rate", KEY_RATE, CFG_OFF(wrong_dim_rate), 0, 0},
    {"max_inputs",     KEY_UINT, CFG_OFF(max_inputs),     0, 100000000},
    {"shuffle_openai", KEY_BOOL, CFG_OFF(shuffle_openai), 0, 0},
    {"api_key",        KEY_STR,  CFG_OFF(api_key),        0, 0},
    {"seed",           KEY_U64,  CFG_OFF(seed),           0, 0},
    {"model_dims",     KEY_DIMS, CFG_OFF(model_dims),     0, 0},
};

const char *const fm_config_keys[] = {
    "dim", "latency_ms", "jitter_ms", "fail_rate", "rate_429", "retry_after", "hang_rate",
    "malformed_rate", "wrong_dim_rate", "max_inputs", "shuffle_openai", "api_key", "seed",
    NULL,
};

void fm_config_init(struct fm_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->dim = 8;
    cfg->retry_after = 1;
    cfg->seed = 1;
    cfg->model_dims = json_object();
}

void fm_config_copy(struct fm_config *dst, const struct fm_config *src)
{
    *dst = *src;
    /* Shallow is enough: the integer values are never mutated, only replaced. */
    dst->model_dims = json_copy(src->model_dims);
}

void fm_config_free(struct fm_config *cfg)
{
    json_decref(cfg->model_dims);
    cfg->model_dims = NULL;
}

static const struct key_desc *key_find(const char *name)
{
    char norm[64];
    size_t n = strlen(name);

    if (n >= sizeof norm)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    for (size_t i = 0; i < sizeof key_table / sizeof key_table[0]; i++)
        if (strcmp(key_table[i].name, norm) == 0)
            return &key_table[i];
    return NULL;
}

static int dims_check(json_t *dims, char *err, size_t errlen)
{
    const char *name;
    json_t *v;

    json_object_foreach(dims, name, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > FM_MAX_DIM) {
            snprintf(err, errlen, "model_dims.%s must be an integer in 1..%u", name,
                     FM_MAX_DIM);
            return -1;
        }
    }
    return 0;
}

/* Apply one JSON value to cfg; on error cfg is unchanged and err says why. */
static int key_set(struct fm_config *cfg, const struct key_desc *k, json_t *v, char *err,
                   size_t errlen)
{
    char *field = (char *)cfg + k->off;

    switch (k->type) {
    case KEY_UINT:
        if (!json_is_integer(v) || json_integer_value(v) < k->min ||
            json_integer_value(v) > k->max) {
            snprintf(err, errlen, "%s must be an integer in %u..%u", k->name, k->min, k->max);
            return -1;
        }
        *(unsigned *)field = (unsigned)json_integer_value(v);
        return 0;
    case KEY_RATE:
        if (!json_is_number(v) || json_number_value(v) < 0.0 || json_number_value(v) > 1.0) {
            snprintf(err, errlen, "%s must be a number in 0..1", k->name);
            return -1;
        }
        *(double *)field = json_number_value(v);
        return 0;
    case KEY_BOOL:
        if (!json_is_boolean(v)) {
            snprintf(err, errlen, "%s must be true or false", k->name);
            return -1;
        }
        *(bool *)field = json_is_true(v);
        return 0;
    case KEY_STR:
        if (json_is_null(v)) {
            cfg->api_key[0] = '\0';
            return 0;
        }
        if (!json_is_string(v) || json_string_length(v) >= sizeof cfg->api_key) {
            snprintf(err, errlen, "%s must be a string shorter than %zu bytes, or null", k->name,
                     sizeof cfg->api_key);
            return -1;
        }
        memcpy(cfg->api_key, json_string_value(v), json_string_length(v) + 1);
        return 0;
    case KEY_U64:
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(err, errlen, "%s must be a non-negative integer", k->name);
            return -1;
        }
        cfg->seed = (uint64_t)json_integer_value(v);
        return 0;
    case KEY_DIMS:
        if (json_is_null(v)) {
            json_object_clear(cfg->model_dims);
            return 0;
        }
        if (!json_is_object(v)) {
            snprintf(err, errlen, "model_dims must be an object {\"model\": dim} or null");
            return -1;
        }
        if (dims_check(v, err, errlen) < 0)
            return -1;
        json_decref(cfg->model_dims);
        cfg->model_dims = json_copy(v);
        return 0;
    }
    return -1;
}

int fm_config_set_arg(struct fm_config *cfg, const char *name, const char *arg, char *err,
                      size_t errlen)
{
    if (strcmp(name, "model-dim") == 0 || strcmp(name, "model_dim") == 0) {
        const char *eq = arg ? strrchr(arg, '=') : NULL;
        char *end;
        unsigned long d = eq ? strtoul(eq + 1, &end, 10) : 0;
        if (eq == NULL || eq == arg || *end != '\0' || d < 1 || d > FM_MAX_DIM) {
            snprintf(err, errlen, "--model-dim wants NAME=DIM with DIM in 1..%u", FM_MAX_DIM);
            return -1;
        }
        char model[256];
        snprintf(model, sizeof model, "%.*s", (int)(eq - arg), arg);
        json_object_set_new(cfg->model_dims, model, json_integer((json_int_t)d));
        return 0;
    }

    const struct key_desc *k = key_find(name);
    if (k == NULL || k->type == KEY_DIMS) {
        snprintf(err, errlen, "unknown flag --%s", name);
        return -1;
    }
    json_t *v = NULL;
    char *end = NULL;
    switch (k->type) {
    case KEY_UINT:
    case KEY_U64:
        if (arg && *arg && *arg != '-') {
            unsigned long long u = strtoull(arg, &end, 10);
            if (*end == '\0')
                v = json_integer((json_int_t)u);
        }
        break;
    case KEY_RATE:
        if (arg && *arg) {
            double d = strtod(arg, &end);
            if (*end == '\0')
                v = json_real(d);
        }
        break;
    case KEY_BOOL:
        if (arg == NULL || strcmp(arg, "true") == 0 || strcmp(arg, "1") == 0)
            v = json_true();
        else if (strcmp(arg, "false") == 0 || strcmp(arg, "0") == 0)
            v = json_false();
        break;
    case KEY_STR:
        v = json_string(arg ? arg : "");
        break;
    case KEY_DIMS:
        break;
    }
    if (v == NULL) {
        snprintf(err, errlen, "--%s: bad value '%s'", name, arg ? arg : "");
        return -1;
    }
    int rc = key_set(cfg, k, v, err, errlen);
    json_decref(v);
    return rc;
}

static json_t *config_to_json(const struct fm_config *cfg)
{
    return json_pack("{s:I, s:I, s:I, s:f, s:f, s:I, s:f, s:f, s:f, s:I, s:b, s:o, s:I, s:O}",
                     "dim", (json_int_t)cfg->dim,
                     "latency_ms", (json_int_t)cfg->latency_ms,
                     "jitter_ms", (json_int_t)cfg->jitter_ms,
                     "fail_rate", cfg->fail_rate,
                     "rate_429", cfg->rate_429,
                     "retry_after", (json_int_t)cfg->retry_after,
                     "hang_rate", cfg->hang_rate,
                     "malformed_rate", cfg->malformed_rate,
                     "wrong_dim_rate", cfg->wrong_dim_rate,
                     "max_inputs", (json_int_t)cfg->max_inputs,
                     "shuffle_openai", (int)cfg->shuffle_openai,
                     "api_key", cfg->api_key[0] ? json_string(cfg->api_key) : json_null(),
                     "seed", (json_int_t)cfg->seed,
                     "model_dims", cfg->model_dims);
}

/* ---------------------------------------------------------------------------------------
 * Randomness: splitmix64, one stream per server, reseeded when the seed is set.
 */

static double rand01(struct fm_server *srv)
{
    uint64_t z = (srv->rng += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* True with probability p. p == 0 draws nothing, so the PRNG sequence (and with it a test's
 * outcome for a given --seed) depends only on the faults that are switched on. */
static bool chance(struct fm_server *srv, double p)
{
    if (p <= 0.0)
        return false;
    return rand01(srv) < p;
}

/* ---------------------------------------------------------------------------------------
 * Embedding routes
 */

static const char *const route_names[FM_ROUTE_COUNT] = {
    "/api/embed", "/v1/embeddings", "/embed",
};

/* Rough token count: whitespace-separated words, at least one per input. */
static uint64_t count_tokens(const struct fm_text *t, size_t n)
{
    uint64_t total = 0;

    for (size_t i = 0; i < n; i++) {
        uint64_t words = 0;
        bool in_word = false;
        for (size_t j = 0; j < t[i].n; j++) {
            bool is_space = t[i].s[j] == ' ' || t[i].s[j] == '\n' || t[i].s[j] == '\t' ||
                            t[i].s[j] == '\r';
            if (!is_space && !in_word)
                words++;
            in_word = !is_space;
        }
        total += words ? words : 1;
    }
    return total;
}

/* Points srv->texts at the strings of v (a string or an array of strings); returns the count,
 * or -1 with a message. The pointers are borrowed from v. */
static long collect_texts(struct fm_server *srv, json_t *v, const char *key, char *err,
                          size_t errlen)
{
    size_t n = json_is_array(v) ? json_array_size(v) : 1;

    if (v == NULL) {
        snprintf(err, errlen, "\"%s\" is required", key);
        return -1;
    }
    if (!json_is_string(v) && !json_is_array(v)) {
        snprintf(err, errlen, "\"%s\" must be a string or an array of strings", key);
        return -1;
    }
    if (n == 0) {
        snprintf(err, errlen, "\"%s\" is empty", key);
        return -1;
    }
    if (srv->texts_cap < n) {
        srv->texts = fm_xrealloc(srv->texts, n * sizeof *srv->texts);
        srv->texts_cap = n;
    }
    if (json_is_string(v)) {
        srv->texts[0] = (struct fm_text){json_string_value(v), json_string_length(v)};
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s)) {
            snprintf(err, errlen, "\"%s\"[%zu] must be a string", key, i);
            return -1;
        }
        srv->texts[i] = (struct fm_text){json_string_value(s), json_string_length(s)};
    }
    return (long)n;
}

static void count_model(struct fm_server *srv, const char *model)
{
    json_t *c = json_object_get(srv->stats.by_model, model);

    if (c)
        json_integer_set(c, json_integer_value(c) + 1);
    else
        json_object_set_new(srv->stats.by_model, model, json_integer(1));
}

static void write_embeddings(struct fm_server *srv, struct fm_reply *rep, enum fm_route_id route,
                             const char *model, size_t n, unsigned dim, uint64_t tokens)
{
    struct fm_buf *b = &rep->buf;
    const struct fm_text *t = srv->texts;

    reply_begin(rep, 200);
    buf_reserve(b, n * ((size_t)dim * 12 + 64));
    switch (route) {
    case FM_ROUTE_OLLAMA:
        BUF_LIT(b, "{\"model\":");
        buf_put_json_str(b, model, strlen(model));
        BUF_LIT(b, ",\"embeddings\":[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                BUF_LIT(b, ",");
            buf_put_vector(srv, b, &t[i], dim);
        }
        BUF_LIT(b, "],\"total_duration\":0,\"load_duration\":0,\"prompt_eval_count\":");
        buf_put_u64(b, tokens);
        BUF_LIT(b, "}");
        break;
    case FM_ROUTE_OPENAI:
        BUF_LIT(b, "{\"object\":\"list\",\"data\":[");
        for (size_t k = 0; k < n; k++) {
            size_t i = srv->cfg.shuffle_openai ? n - 1 - k : k;
            if (k)
                BUF_LIT(b, ",");
            BUF_LIT(b, "{\"object\":\"embedding\",\"index\":");
            buf_put_u64(b, i);
            BUF_LIT(b, ",\"embedding\":");
            buf_put_vector(srv, b, &t[i], dim);
            BUF_LIT(b, "}");
        }
        BUF_LIT(b, "],\"model\":");
        buf_put_json_str(b, model, strlen(model));
        BUF_LIT(b, ",\"usage\":{\"prompt_tokens\":");
        buf_put_u64(b, tokens);
        BUF_LIT(b, ",\"total_tokens\":");
        buf_put_u64(b, tokens);
        BUF_LIT(b, "}}");
        break;
    default:
        BUF_LIT(b, "[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                BUF_LIT(b, ",");
            buf_put_vector(srv, b, &t[i], dim);
        }
        BUF_LIT(b, "]");
        break;
    }
}

static bool auth_ok(const struct fm_config *cfg, const struct fm_request *req)
{
    size_t klen = strlen(cfg->api_key);

    if (klen == 0)
        return true;
    return req->auth_len == 7 + klen && strncasecmp(req->auth, "Bearer ", 7) == 0 &&
           memcmp(req->auth + 7, cfg->api_key, klen) == 0;
}

/* Dimension for this request: OpenAI's "dimensions" field, else model_dims[model], else dim. */
static unsigned pick_dim(const struct fm_config *cfg, json_t *root, const char *model,
                         enum fm_route_id route)
{
    json_t *v;

    if (route == FM_ROUTE_OPENAI && (v = json_object_get(root, "dimensions")) &&
        json_is_integer(v) && json_integer_value(v) >= 1 &&
        json_integer_value(v) <= FM_MAX_DIM)
        return (unsigned)json_integer_value(v);
    if ((v = json_object_get(cfg->model_dims, model)) && json_is_integer(v))
        return (unsigned)json_integer_value(v);
    return cfg->dim;
}

static void handle_embed(struct fm_server *srv, const struct fm_request *req,
                         struct fm_reply *rep, enum fm_route_id route)
{
    struct fm_stats *st = &srv->stats;
    const struct fm_config *cfg = &srv->cfg;
    char err[256];
    json_error_t jerr;
    json_t *root = NULL;

    st->requests_total++;
    st->by_route[route]++;
    rep->is_embed = true;
    /* Every answer on an embedding route, errors included, pays the configured latency. */
    rep->delay_ms = cfg->latency_ms;
    if (cfg->jitter_ms)
        rep->delay_ms += (uint64_t)(rand01(srv) * (cfg->jitter_ms + 1));
    if (rep->delay_ms > cfg->latency_ms + (uint64_t)cfg->jitter_ms)
        rep->delay_ms = cfg->latency_ms + (uint64_t)cfg->jitter_ms;
    rep->when = rep->delay_ms ? FM_REPLY_DELAYED : FM_REPLY_NOW;

    if (!auth_ok(cfg, req)) {
        st->unauthorized_401++;
        reply_route_error(rep, route, 401, "invalid_request_error",
                          req->auth_len ? "Incorrect API key provided"
                                        : "You didn't provide an API key "
                                          "(Authorization: Bearer <key>)");
        return;
    }
    root = json_loadb(req->body, req->body_len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(root)) {
        snprintf(err, sizeof err, "request body is not a JSON object: %s",
                 root ? "wrong type" : jerr.text);
        goto bad_request;
    }

    json_t *jmodel = json_object_get(root, "model");
    const char *model = json_is_string(jmodel) ? json_string_value(jmodel) : NULL;
    if (model == NULL && route != FM_ROUTE_TEI) {
        snprintf(err, sizeof err, "\"model\" is required and must be a string");
        goto bad_request;
    }
    if (model == NULL)
        model = "(none)";
    count_model(srv, model);

    const char *key = route == FM_ROUTE_TEI ? "inputs" : "input";
    long n = collect_texts(srv, json_object_get(root, key), key, err, sizeof err);
    if (n < 0)
        goto bad_request;
    st->inputs_total += (uint64_t)n;
    if (cfg->max_inputs && (unsigned long)n > cfg->max_inputs) {
        snprintf(err, sizeof err, "too many inputs: %ld > max_inputs %u", n, cfg->max_inputs);
        goto bad_request;
    }
    unsigned dim = pick_dim(cfg, root, model, route);

    if (chance(srv, cfg->hang_rate)) {
        st->hangs++;
        rep->when = FM_REPLY_HANG;
        goto done;
    }
    if (chance(srv, cfg->rate_429)) {
        st->rate_limited_429++;
        reply_route_error(rep, route, 429, "rate_limit_exceeded",
                          "fake model: rate limited, retry later");
        rep->retry_after = cfg->retry_after;
        goto done;
    }
    if (chance(srv, cfg->fail_rate)) {
        st->errors_500++;
        reply_route_error(rep, route, 500, "server_error", "fake model: injected failure");
        goto done;
    }
    bool is_malformed = chance(srv, cfg->malformed_rate);
    if (chance(srv, cfg->wrong_dim_rate)) {
        st->wrong_dim++;
        dim = dim < FM_MAX_DIM ? dim + 1 : dim - 1;
    }
    write_embeddings(srv, rep, route, model, (size_t)n, dim, count_tokens(srv->texts, (size_t)n));
    if (is_malformed) {
        /* Half of a JSON document whose outermost value is an object or array can never
         * parse: its closing bracket is gone. */
        size_t body = rep->buf.len - FM_HEAD_RESERVE;
        rep->buf.len = FM_HEAD_RESERVE + (body / 2 ? body / 2 : 1);
        st->malformed++;
    }
    st->ok_200++;
    goto done;

bad_request:
    st->bad_request_400++;
    reply_route_error(rep, route, 400, "invalid_request_error", err);
done:
    json_decref(root);
}

/* ---------------------------------------------------------------------------------------
 * Admin routes
 */

static void handle_stats(struct fm_server *srv, struct fm_reply *rep)
{
    const struct fm_stats *st = &srv->stats;
    json_t *routes = json_object();

    for (int r = 0; r < FM_ROUTE_COUNT; r++)
        json_object_set_new(routes, route_names[r], json_integer((json_int_t)st->by_route[r]));
    json_t *o = json_pack(
        "{s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O}",
        "requests_total", (json_int_t)st->requests_total,
        "requests_by_route", routes,
        "inputs_total", (json_int_t)st->inputs_total,
        "in_flight", (json_int_t)st->in_flight,
        "max_in_flight", (json_int_t)st->max_in_flight,
        "ok_200", (json_int_t)st->ok_200,
        "bad_request_400", (json_int_t)st->bad_request_400,
        "unauthorized_401", (json_int_t)st->unauthorized_401,
        "errors_500", (json_int_t)st->errors_500,
        "rate_limited_429", (json_int_t)st->rate_limited_429,
        "hangs", (json_int_t)st->hangs,
        "malformed", (json_int_t)st->malformed,
        "wrong_dim", (json_int_t)st->wrong_dim,
        "disconnects", (json_int_t)st->disconnects,
        "not_found_404", (json_int_t)st->not_found_404,
        "by_model", st->by_model);
    reply_json(rep, 200, o);
}

static void handle_stats_reset(struct fm_server *srv, struct fm_reply *rep)
{
    struct fm_stats *st = &srv->stats;
    json_t *by_model = st->by_model;
    uint64_t in_flight = st->in_flight;

    json_object_clear(by_model);
    memset(st, 0, sizeof *st);
    st->by_model = by_model;
    /* Requests still pending stay in flight: their answers will decrement the counter. */
    st->in_flight = in_flight;
    st->max_in_flight = in_flight;
    reply_json(rep, 200, json_pack("{s:b}", "reset", 1));
}

/* POST /config: all keys apply or none do. {"reset":true} first restores the flags. */
static void handle_config_post(struct fm_server *srv, const struct fm_request *req,
                               struct fm_reply *rep)
{
    char err[256];
    json_error_t jerr;
    json_t *root = json_loadb(req->body, req->body_len, 0, &jerr);
    struct fm_config next;
    const char *key;
    json_t *v;

    if (!json_is_object(root)) {
        json_decref(root);
        fm_reply_error(rep, 400, "config body must be a JSON object");
        return;
    }
    json_t *reset = json_object_get(root, "reset");
    fm_config_copy(&next, json_is_true(reset) ? &srv->cfg_start : &srv->cfg);
    bool is_seeded = json_is_true(reset);
    json_object_foreach(root, key, v) {
        if (strcmp(key, "reset") == 0)
            continue;
        const struct key_desc *k = key_find(key);
        if (k == NULL) {
            snprintf(err, sizeof err, "unknown config key \"%s\"", key);
            goto fail;
        }
        if (key_set(&next, k, v, err, sizeof err) < 0)
            goto fail;
        if (k->type == KEY_U64)
            is_seeded = true;
    }
    fm_config_free(&srv->cfg);
    srv->cfg = next;
    if (is_seeded)
        srv->rng = srv->cfg.seed;
    json_decref(root);
    reply_json(rep, 200, config_to_json(&srv->cfg));
    return;

fail:
    fm_config_free(&next);
    json_decref(root);
    fm_reply_error(rep, 400, err);
}

static bool path_is(const struct fm_request *req, const char *path)
{
    size_t n = strlen(path);

    return req->path_len == n && memcmp(req->path, path, n) == 0;
}

void fm_handle(struct fm_server *srv, const struct fm_request *req, struct fm_reply *rep)
{
    bool is_get = req->method == HTTP_GET;
    bool is_post = req->method == HTTP_POST;

    for (int r = 0; r < FM_ROUTE_COUNT; r++) {
        if (path_is(req, route_names[r])) {
            if (is_post)
                handle_embed(srv, req, rep, (enum fm_route_id)r);
            else
                fm_reply_error(rep, 405, "use POST");
            return;
        }
    }
    if (path_is(req, "/stats") && is_get)
        handle_stats(srv, rep);
    else if (path_is(req, "/stats/reset") && is_post)
        handle_stats_reset(srv, rep);
    else if (path_is(req, "/config") && is_get)
        reply_json(rep, 200, config_to_json(&srv->cfg));
    else if (path_is(req, "/config") && is_post)
        handle_config_post(srv, req, rep);
    else if ((path_is(req, "/healthz") || path_is(req, "/health")) && is_get)
        reply_json(rep, 200, json_pack("{s:s}", "status", "ok"));
    else if (path_is(req, "/api/version") && is_get)
        reply_json(rep, 200, json_pack("{s:s}", "version", "0.0.0-fake"));
    else if (path_is(req, "/v1/models") && is_get)
        reply_json(rep, 200, json_pack("{s:s, s:[]}", "object", "list", "data"));
    else if (path_is(req, "/stats") || path_is(req, "/stats/reset") || path_is(req, "/config") ||
             path_is(req, "/healthz") || path_is(req, "/health"))
        fm_reply_error(rep, 405, "method not allowed");
    else {
        srv->stats.not_found_404++;
        fm_reply_error(rep, 404, "no such route");
    }
}
