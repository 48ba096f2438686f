/* submit_scan.c -- the resumable framing scanner for POST /jobs bodies (submit_scan.h).
 *
 * One byte-driven state machine checks the whole body's JSON syntax (a container stack of
 * object/array bits, string, escape, \u and number states) and keeps its state between
 * feeds, so a piece split across feeds is never re-scanned. Framing rides on the depth: in
 * the JSON form the root object is depth 0 -> 1, its member values start at depth 1 and
 * data's items at depth 2; in NDJSON every value at depth 0 is an item. The bytes of the
 * piece in progress are copied into one reused buffer in runs (at the end of a feed or of
 * the piece), not byte by byte.
 *
 * Owns the scanner and its piece buffer. Pure C, no I/O, any thread; calls back
 * synchronously. Knows nothing of items' fields (the per-item code checks those) and builds
 * no JSON tree.  SPDX-License-Identifier: MIT
 */
#include "batchd/submit_scan.h"

#include "batchd/buf.h"
#include "batchd/error.h"

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum scan_state {
    ST_VALUE,      /* a value is expected */
    ST_OBJ_FIRST,  /* after '{': a key or '}' */
    ST_OBJ_KEY,    /* after ',' in an object: a key */
    ST_COLON,      /* after a key: ':' */
    ST_ARR_FIRST,  /* after '[': a value or ']' */
    ST_AFTER,      /* after a value inside a container: ',' or the closing bracket */
    ST_STR,        /* inside a string */
    ST_ESC,        /* after a backslash */
    ST_U,          /* inside \uXXXX (u_n digits read) */
    ST_SURR_BS,    /* after a high surrogate: '\' of its low half */
    ST_SURR_U,     /* after a high surrogate and '\': 'u' */
    ST_LIT,        /* inside true, false or null */
    ST_N_MINUS,    /* number states, RFC 8259: -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)? */
    ST_N_ZERO,
    ST_N_INT,
    ST_N_DOT,
    ST_N_FRAC,
    ST_N_E,
    ST_N_ESIGN,
    ST_N_EXP,
    ST_TRAILER,    /* JSON form: after the root object, whitespace only */
    ST_LINE_START, /* NDJSON: between lines' values (blank lines) */
    ST_LINE_END,   /* NDJSON: after a line's value, whitespace then '\n' */
};

#define IS_NUM_STATE(st) ((st) >= ST_N_MINUS && (st) <= ST_N_EXP)
/* The number states in which the number may end here. */
#define IS_NUM_END(st)                                                                     \
    ((st) == ST_N_ZERO || (st) == ST_N_INT || (st) == ST_N_FRAC || (st) == ST_N_EXP)

enum cap_kind { CAP_MEMBER, CAP_ITEM };

struct bd_submit_scan {
    enum bd_submit_format fmt;
    size_t max;                    /* max_value_bytes */
    struct bd_submit_scan_cbs cbs;
    void *arg;
    int err;                       /* sticky verdict, BD_OK while scanning */
    bool is_ended;

    enum scan_state state;
    uint64_t base;                 /* body offset of this feed's first byte */
    unsigned depth;                /* open containers */
    uint64_t obj_bits;             /* bit d-1 set: the container at depth d is an object */

    /* The string in progress. */
    bool str_is_key;               /* an object's key: ':' follows */
    bool str_decode;               /* a root member's name: unescaped into key[] */
    uint64_t str_off;              /* its opening quote */
    unsigned u_n;                  /* hex digits of \uXXXX read */
    uint32_t u_acc;
    uint32_t u_high;               /* pending high surrogate, 0 if none */
    const char *lit;               /* the literal in progress ("true", ...) */
    unsigned lit_i;

    /* The piece in progress (one member value or item). */
    bool capturing;
    enum cap_kind cap_kind;
    unsigned cap_depth;            /* depth at which the piece's value sits */
    uint64_t cap_off;              /* its first byte */
    size_t cap_from;               /* index in this feed where the piece's unbuffered bytes start */
    size_t cap_stop;               /* index in this feed of the byte that would pass the limit */
    bool cap_high;                 /* a byte >= 0x80 was seen (UTF-8 to check) */
    struct bd_buf piece;

    /* Framing. */
    char key[BD_SUBMIT_SCAN_KEY_MAX + 1];
    size_t key_len;
    uint64_t key_off;
    bool has_data;                 /* JSON form: "data" has begun */
    bool in_data;                  /* JSON form: inside data's array */
    size_t items;                  /* items passed so far */
    size_t line;                   /* NDJSON: current line, 1-based */

    char why[512];
};

/* Bytes that go on a plain string run: not '"', '\\', a control byte. */
static const unsigned char str_plain[256] = {
#define R16(v) v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v
    R16(0), R16(0),
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x22 '"' */
    R16(1), R16(1),
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x5c '\\' */
    R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1), R16(1),
#undef R16
};

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_num_char(unsigned char c)
{
    return is_digit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-';
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The number starting at u[i], when it is well-formed and ends inside u[0..len) (the byte
 * after it is there and not a number byte): returns the index of that byte. Returns 0
 * otherwise; the byte-by-byte states then take the number (and name any error). A fast path
 * for embeddings, which are mostly numbers. */
static size_t num_scan(const unsigned char *u, size_t i, size_t len)
{
    size_t j = i;

    if (u[j] == '-' && ++j == len)
        return 0;
    if (u[j] == '0') {
        j++;
    } else if (u[j] >= '1' && u[j] <= '9') {
        for (j++; j < len && is_digit(u[j]); j++)
            ;
    } else {
        return 0;
    }
    if (j < len && u[j] == '.') {
        if (++j == len || !is_digit(u[j]))
            return 0;
        for (j++; j < len && is_digit(u[j]); j++)
            ;
    }
    if (j < len && (u[j] == 'e' || u[j] == 'E')) {
        if (++j < len && (u[j] == '+' || u[j] == '-'))
            j++;
        if (j >= len || !is_digit(u[j]))
            return 0;
        for (j++; j < len && is_digit(u[j]); j++)
            ;
    }
    if (j >= len || is_num_char(u[j]))
        return 0;
    return j;
}

/* ---- errors ------------------------------------------------------------------------ */

/* Where the scanner is, for a message: the piece, the line, or the body. */
static void scan_where(const struct bd_submit_scan *s, char *out, size_t n)
{
    if (s->capturing && s->cap_kind == CAP_MEMBER)
        snprintf(out, n, "member \"%s\"", s->key);
    else if (s->fmt == BD_SUBMIT_NDJSON)
        snprintf(out, n, "line %zu", s->line);
    else if (s->capturing)
        snprintf(out, n, "data[%zu]", s->items);
    else if (s->in_data)
        snprintf(out, n, "data");
    else
        snprintf(out, n, "body");
}

static int scan_fail(struct bd_submit_scan *s, int err, uint64_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int scan_fail(struct bd_submit_scan *s, int err, uint64_t off, const char *fmt, ...)
{
    char where[BD_SUBMIT_SCAN_KEY_MAX + 32];
    char what[160];
    va_list ap;

    scan_where(s, where, sizeof(where));
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(s->why, sizeof(s->why), "%s: %s at byte %llu", where, what, (unsigned long long)off);
    s->err = err;
    return err;
}

/* "unexpected 'x'" / "unexpected byte 0x01" */
static int scan_unexpected(struct bd_submit_scan *s, uint64_t off, unsigned char c,
                           const char *expected)
{
    if (c >= 0x20 && c < 0x7f)
        return scan_fail(s, BD_EINVAL, off, "unexpected '%c', expected %s", c, expected);
    return scan_fail(s, BD_EINVAL, off, "unexpected byte 0x%02x, expected %s", c, expected);
}

static int scan_stopped(struct bd_submit_scan *s, int rc, uint64_t off)
{
    return scan_fail(s, rc, off, "stopped by the consumer (%s)", bd_err_name(rc));
}

/* ---- pieces ------------------------------------------------------------------------ */

static void piece_start(struct bd_submit_scan *s, enum cap_kind kind, size_t i)
{
    s->capturing = true;
    s->cap_kind = kind;
    s->cap_depth = s->depth;
    s->cap_off = s->base + i;
    s->cap_from = i;
    s->cap_stop = s->max > SIZE_MAX - i ? SIZE_MAX : i + s->max;
    s->cap_high = false;
    bd_buf_reset(&s->piece);
}

/* Buffer this feed's bytes [cap_from, to) of the piece. */
static int piece_flush(struct bd_submit_scan *s, const char *d, size_t to)
{
    if (to > s->cap_from)
        bd_buf_append(&s->piece, d + s->cap_from, to - s->cap_from);
    s->cap_from = to;
    if (s->piece.is_failed)
        return scan_fail(s, BD_ENOMEM, s->cap_off, "out of memory buffering a value");
    return BD_OK;
}

/* The piece ends before index to of this feed (d may be NULL with to 0, at the end). */
static int piece_emit(struct bd_submit_scan *s, const char *d, size_t to)
{
    int rc = piece_flush(s, d, to);

    if (rc < 0)
        return rc;
    if (s->cap_high && !bd_utf8_is_valid(s->piece.data, s->piece.len))
        return scan_fail(s, BD_EINVAL, s->cap_off, "a string is not valid UTF-8 in the value");
    if (s->cap_kind == CAP_MEMBER)
        rc = s->cbs.on_member ? s->cbs.on_member(s->arg, s->key, s->piece.data, s->piece.len)
                              : BD_OK;
    else
        rc = s->cbs.on_item(s->arg, s->items, s->fmt == BD_SUBMIT_NDJSON ? s->line : 0,
                            s->piece.data, s->piece.len);
    if (rc < 0)
        return scan_stopped(s, rc, s->base + to);
    if (s->cap_kind == CAP_ITEM)
        s->items++;
    s->capturing = false;
    return BD_OK;
}

/* A value has just ended before index i: pass the piece it completes, then say what may
 * follow it. */
static int scan_value_end(struct bd_submit_scan *s, const char *d, size_t i)
{
    if (s->capturing && s->depth == s->cap_depth) {
        int rc = piece_emit(s, d, i);
        if (rc < 0)
            return rc;
    }
    if (s->depth == 0)
        s->state = s->fmt == BD_SUBMIT_NDJSON ? ST_LINE_END : ST_TRAILER;
    else
        s->state = ST_AFTER;
    return BD_OK;
}

/* ---- framing ----------------------------------------------------------------------- */

/* A value begins at d[i] and no piece is in progress: decide what it is. */
static int frame_value_start(struct bd_submit_scan *s, size_t i, unsigned char c)
{
    uint64_t off = s->base + i;

    if (s->fmt == BD_SUBMIT_NDJSON) {
        piece_start(s, CAP_ITEM, i);
        return BD_OK;
    }
    if (s->depth == 0) {
        if (c != '{')
            return scan_fail(s, BD_EINVAL, off, "the body must be a JSON object");
        return BD_OK;
    }
    if (s->depth == 1) {
        if (s->key_len != 4 || memcmp(s->key, "data", 4) != 0) {
            piece_start(s, CAP_MEMBER, i);
            return BD_OK;
        }
        if (s->has_data)
            return scan_fail(s, BD_EINVAL, s->key_off, "\"data\" appears twice");
        if (c != '[')
            return scan_fail(s, BD_EINVAL, off, "\"data\" must be an array");
        s->has_data = true;
        s->in_data = true;
        if (s->cbs.on_data_begin) {
            int rc = s->cbs.on_data_begin(s->arg);
            if (rc < 0)
                return scan_stopped(s, rc, off);
        }
        return BD_OK;
    }
    piece_start(s, CAP_ITEM, i); /* depth 2 outside a piece: an element of data */
    return BD_OK;
}

/* The container just closed at d[i - 1]; depth is already decremented. */
static int frame_container_end(struct bd_submit_scan *s, const char *d, size_t i)
{
    if (!s->capturing && s->fmt == BD_SUBMIT_JSON) {
        if (s->depth == 1) {         /* data's array */
            s->in_data = false;
            s->state = ST_AFTER;
            if (s->cbs.on_data_end) {
                int rc = s->cbs.on_data_end(s->arg, s->items);
                if (rc < 0)
                    return scan_stopped(s, rc, s->base + i);
            }
            return BD_OK;
        }
        if (!s->has_data)
            return scan_fail(s, BD_EINVAL, s->base + i - 1, "no \"data\" array in the body");
        s->state = ST_TRAILER;
        return BD_OK;
    }
    return scan_value_end(s, d, i);
}

/* ---- strings ----------------------------------------------------------------------- */

/* Append p[0..n) to the key: a run of raw bytes from body offset off (is_run: the error
 * names the byte that passes the limit), or one escape's bytes (ending at off). */
static int key_append(struct bd_submit_scan *s, const char *p, size_t n, uint64_t off,
                      bool is_run)
{
    if (s->key_len + n > BD_SUBMIT_SCAN_KEY_MAX)
        return scan_fail(s, BD_EINVAL, is_run ? off + (BD_SUBMIT_SCAN_KEY_MAX - s->key_len) : off,
                         "member name longer than %d bytes", BD_SUBMIT_SCAN_KEY_MAX);
    memcpy(s->key + s->key_len, p, n);
    s->key_len += n;
    return BD_OK;
}

/* A code point from an escape, into the key being unescaped (cp is valid: no surrogate,
 * not 0). */
static int key_append_cp(struct bd_submit_scan *s, uint32_t cp, uint64_t off)
{
    char u[4];
    size_t n;

    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xc0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xe0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (char)(0xf0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return key_append(s, u, n, off, false);
}

/* The closing quote was d[i - 1]. */
static int scan_string_end(struct bd_submit_scan *s, const char *d, size_t i)
{
    if (!s->str_is_key)
        return scan_value_end(s, d, i);
    if (s->str_decode) {
        s->key[s->key_len] = '\0';
        if (!bd_utf8_is_valid(s->key, s->key_len))
            return scan_fail(s, BD_EINVAL, s->key_off, "member name is not valid UTF-8");
    }
    s->state = ST_COLON;
    return BD_OK;
}

/* A complete \uXXXX (in u_acc) at d[i]. */
static int scan_unicode(struct bd_submit_scan *s, size_t i)
{
    uint32_t u = s->u_acc;
    uint64_t off = s->base + i;

    if (s->u_high) {
        uint32_t hi = s->u_high;
        s->u_high = 0;
        if (u < 0xdc00 || u > 0xdfff)
            return scan_fail(s, BD_EINVAL, off, "\\u%04X is not followed by a low surrogate",
                             (unsigned)hi);
        s->state = ST_STR;
        return s->str_decode ? key_append_cp(s, 0x10000 + ((hi - 0xd800) << 10) + (u - 0xdc00),
                                             off)
                             : BD_OK;
    }
    if (u >= 0xd800 && u <= 0xdbff) {
        s->u_high = u;
        s->state = ST_SURR_BS;
        return BD_OK;
    }
    if (u >= 0xdc00 && u <= 0xdfff)
        return scan_fail(s, BD_EINVAL, off, "lone low surrogate \\u%04X", (unsigned)u);
    /* jansson refuses \u0000 (the consumer's strings are C strings); so do we. */
    if (u == 0)
        return scan_fail(s, BD_EINVAL, off, "\\u0000 is not allowed in a string");
    s->state = ST_STR;
    return s->str_decode ? key_append_cp(s, u, off) : BD_OK;
}

/* ---- the machine ------------------------------------------------------------------- */

static int scan_push(struct bd_submit_scan *s, uint64_t off, bool is_object)
{
    if (s->depth == BD_SUBMIT_SCAN_DEPTH_MAX)
        return scan_fail(s, BD_EINVAL, off, "nested deeper than %d levels",
                         BD_SUBMIT_SCAN_DEPTH_MAX);
    if (is_object)
        s->obj_bits |= (uint64_t)1 << s->depth;
    else
        s->obj_bits &= ~((uint64_t)1 << s->depth);
    s->depth++;
    s->state = is_object ? ST_OBJ_FIRST : ST_ARR_FIRST;
    return BD_OK;
}

static bool scan_in_object(const struct bd_submit_scan *s)
{
    return (s->obj_bits >> (s->depth - 1)) & 1;
}

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Whitespace between tokens at d[i]: '\n' ends an NDJSON line, so inside a value it is an
 * error there. Returns 1 when c was whitespace (consumed), 0 when not, < 0 on error. */
static int scan_ws(struct bd_submit_scan *s, unsigned char c, size_t i)
{
    if (c == ' ' || c == '\t' || c == '\r')
        return 1;
    if (c != '\n')
        return 0;
    if (s->fmt == BD_SUBMIT_NDJSON)
        return scan_fail(s, BD_EINVAL, s->base + i, "the line ends inside a value");
    return 1;
}

/* Scan d[0..len). Returns BD_OK or the (sticky) error. */
static int scan_run(struct bd_submit_scan *s, const char *d, size_t len)
{
    const unsigned char *u = (const unsigned char *)d;
    size_t i = 0;
    int rc;

    while (i < len) {
        unsigned char c = u[i];

        /* The byte at cap_stop would make the piece max + 1 bytes long, unless it is the
         * byte that ends a number (not part of the piece). */
        if (s->capturing && i >= s->cap_stop && !(IS_NUM_STATE(s->state) && !is_num_char(c)))
            return scan_fail(s, BD_ETOOLARGE, s->base + i, "value longer than %zu bytes",
                             s->max);
        switch (s->state) {
        case ST_VALUE:
            if ((rc = scan_ws(s, c, i)) != 0) {
                if (rc < 0)
                    return rc;
                i++;
                break;
            }
            if (!s->capturing && (rc = frame_value_start(s, i, c)) < 0)
                return rc;
            if (c == '-' || is_digit(c)) {
                size_t j = num_scan(u, i, len);
                if (j != 0 && (!s->capturing || j <= s->cap_stop)) {
                    i = j;
                    if ((rc = scan_value_end(s, d, i)) < 0)
                        return rc;
                    break;
                }
            }
            switch (c) {
            case '{':
            case '[':
                if ((rc = scan_push(s, s->base + i, c == '{')) < 0)
                    return rc;
                i++;
                break;
            case '"':
                s->str_is_key = false;
                s->str_decode = false;
                s->str_off = s->base + i;
                s->state = ST_STR;
                i++;
                break;
            case '-':
                s->state = ST_N_MINUS;
                i++;
                break;
            case '0':
                s->state = ST_N_ZERO;
                i++;
                break;
            case 't':
                s->lit = "true";
                goto literal;
            case 'f':
                s->lit = "false";
                goto literal;
            case 'n':
                s->lit = "null";
            literal:
                s->lit_i = 1;
                s->state = ST_LIT;
                i++;
                break;
            default:
                if (c >= '1' && c <= '9') {
                    s->state = ST_N_INT;
                    i++;
                    break;
                }
                return scan_unexpected(s, s->base + i, c, "a value");
            }
            break;

        case ST_OBJ_FIRST:
        case ST_OBJ_KEY:
            if ((rc = scan_ws(s, c, i)) != 0) {
                if (rc < 0)
                    return rc;
                i++;
                break;
            }
            if (c == '}' && s->state == ST_OBJ_FIRST) {
                s->depth--;
                i++;
                if ((rc = frame_container_end(s, d, i)) < 0)
                    return rc;
                break;
            }
            if (c != '"')
                return scan_unexpected(s, s->base + i, c,
                                       s->state == ST_OBJ_FIRST ? "a member name or '}'"
                                                                : "a member name");
            s->str_is_key = true;
            s->str_decode = !s->capturing && s->fmt == BD_SUBMIT_JSON && s->depth == 1;
            s->str_off = s->base + i;
            if (s->str_decode) {
                s->key_len = 0;
                s->key_off = s->base + i;
            }
            s->state = ST_STR;
            i++;
            break;

        case ST_COLON:
            if ((rc = scan_ws(s, c, i)) != 0) {
                if (rc < 0)
                    return rc;
                i++;
                break;
            }
            if (c != ':')
                return scan_unexpected(s, s->base + i, c, "':'");
            s->state = ST_VALUE;
            i++;
            break;

        case ST_ARR_FIRST:
            if ((rc = scan_ws(s, c, i)) != 0) {
                if (rc < 0)
                    return rc;
                i++;
                break;
            }
            if (c == ']') {
                s->depth--;
                i++;
                if ((rc = frame_container_end(s, d, i)) < 0)
                    return rc;
                break;
            }
            s->state = ST_VALUE; /* this byte again, as a value */
            break;

        case ST_AFTER:
            if ((rc = scan_ws(s, c, i)) != 0) {
                if (rc < 0)
                    return rc;
                i++;
                break;
            }
            if (c == ',') {
                s->state = scan_in_object(s) ? ST_OBJ_KEY : ST_VALUE;
                i++;
                break;
            }
            if (c != (scan_in_object(s) ? '}' : ']'))
                return scan_unexpected(s, s->base + i, c,
                                       scan_in_object(s) ? "',' or '}'" : "',' or ']'");
            s->depth--;
            i++;
            if ((rc = frame_container_end(s, d, i)) < 0)
                return rc;
            break;

        case ST_STR: {
            size_t stop = len, from = i;
            unsigned char high = 0;

            if (s->capturing && s->cap_stop < stop)
                stop = s->cap_stop;
            while (i < stop && str_plain[u[i]])
                high |= u[i++];
            if (high & 0x80)
                s->cap_high = true;
            if (s->str_decode && i > from &&
                (rc = key_append(s, d + from, i - from, s->base + from, true)) < 0)
                return rc;
            if (i == stop)
                break;
            c = u[i];
            if (c == '"') {
                i++;
                if ((rc = scan_string_end(s, d, i)) < 0)
                    return rc;
            } else if (c == '\\') {
                s->state = ST_ESC;
                i++;
            } else {
                return scan_fail(s, BD_EINVAL, s->base + i,
                                 "control byte 0x%02x in a string (escape it)", c);
            }
            break;
        }

        case ST_ESC: {
            char out;

            switch (c) {
            case '"': out = '"'; break;
            case '\\': out = '\\'; break;
            case '/': out = '/'; break;
            case 'b': out = '\b'; break;
            case 'f': out = '\f'; break;
            case 'n': out = '\n'; break;
            case 'r': out = '\r'; break;
            case 't': out = '\t'; break;
            case 'u':
                s->u_n = 0;
                s->u_acc = 0;
                s->state = ST_U;
                i++;
                continue;
            default:
                if (c >= 0x20 && c < 0x7f)
                    return scan_fail(s, BD_EINVAL, s->base + i, "invalid escape '\\%c'", c);
                return scan_fail(s, BD_EINVAL, s->base + i, "invalid escape (byte 0x%02x)", c);
            }
            if (s->str_decode && (rc = key_append(s, &out, 1, s->base + i, false)) < 0)
                return rc;
            s->state = ST_STR;
            i++;
            break;
        }

        case ST_U: {
            int h = hex_value(c);

            if (h < 0)
                return scan_unexpected(s, s->base + i, c, "a hex digit in \\uXXXX");
            s->u_acc = s->u_acc << 4 | (uint32_t)h;
            if (++s->u_n == 4 && (rc = scan_unicode(s, i)) < 0)
                return rc;
            i++;
            break;
        }

        case ST_SURR_BS:
        case ST_SURR_U:
            if (c != (s->state == ST_SURR_BS ? '\\' : 'u'))
                return scan_fail(s, BD_EINVAL, s->base + i,
                                 "\\u%04X is not followed by a low surrogate",
                                 (unsigned)s->u_high);
            if (s->state == ST_SURR_BS) {
                s->state = ST_SURR_U;
            } else {
                s->u_n = 0;
                s->u_acc = 0;
                s->state = ST_U;
            }
            i++;
            break;

        case ST_LIT:
            if (c != (unsigned char)s->lit[s->lit_i])
                return scan_fail(s, BD_EINVAL, s->base + i, "invalid literal (expected '%s')",
                                 s->lit);
            i++;
            if (s->lit[++s->lit_i] == '\0' && (rc = scan_value_end(s, d, i)) < 0)
                return rc;
            break;

        case ST_N_MINUS:
            if (c == '0')
                s->state = ST_N_ZERO;
            else if (c >= '1' && c <= '9')
                s->state = ST_N_INT;
            else
                return scan_unexpected(s, s->base + i, c, "a digit after '-'");
            i++;
            break;

        case ST_N_INT:
        case ST_N_FRAC:
        case ST_N_EXP:
            while (i < len && is_digit(u[i]))
                i++;
            /* The run may pass the limit: the byte at cap_stop was a digit of the piece. */
            if (s->capturing && i > s->cap_stop)
                return scan_fail(s, BD_ETOOLARGE, s->base + s->cap_stop,
                                 "value longer than %zu bytes", s->max);
            if (i == len)
                break;
            c = u[i]; /* the first byte after the digits */
            if (s->capturing && i >= s->cap_stop && is_num_char(c)) /* as at the loop's top */
                return scan_fail(s, BD_ETOOLARGE, s->base + i, "value longer than %zu bytes",
                                 s->max);
            /* fall through */
        case ST_N_ZERO:
            if (c == '.' && (s->state == ST_N_ZERO || s->state == ST_N_INT)) {
                s->state = ST_N_DOT;
                i++;
            } else if ((c == 'e' || c == 'E') && s->state != ST_N_EXP) {
                s->state = ST_N_E;
                i++;
            } else if (is_num_char(c)) {
                return scan_unexpected(s, s->base + i, c, "the number to end");
            } else if ((rc = scan_value_end(s, d, i)) < 0) { /* c is not consumed */
                return rc;
            }
            break;

        case ST_N_DOT:
            if (!is_digit(c))
                return scan_unexpected(s, s->base + i, c, "a digit after '.'");
            s->state = ST_N_FRAC;
            i++;
            break;

        case ST_N_E:
            if (c == '+' || c == '-') {
                s->state = ST_N_ESIGN;
                i++;
                break;
            }
            /* fall through */
        case ST_N_ESIGN:
            if (!is_digit(c))
                return scan_unexpected(s, s->base + i, c, "a digit in the exponent");
            s->state = ST_N_EXP;
            i++;
            break;

        case ST_TRAILER:
            if (!is_ws(c))
                return scan_unexpected(s, s->base + i, c, "nothing after the body's object");
            i++;
            break;

        case ST_LINE_START:
            if (c == '\n') {
                s->line++;
                i++;
            } else if (c == ' ' || c == '\t' || c == '\r') {
                i++;
            } else {
                s->state = ST_VALUE; /* this byte again, as the line's value */
            }
            break;

        case ST_LINE_END:
            if (c == '\n') {
                s->line++;
                s->state = ST_LINE_START;
            } else if (c != ' ' && c != '\t' && c != '\r') {
                return scan_unexpected(s, s->base + i, c, "the end of the line (one value a line)");
            }
            i++;
            break;
        }
    }
    if (s->capturing)
        return piece_flush(s, d, len);
    return BD_OK;
}

/* ---- API --------------------------------------------------------------------------- */

struct bd_submit_scan *bd_submit_scan_new(enum bd_submit_format fmt, size_t max_value_bytes,
                                          const struct bd_submit_scan_cbs *cbs, void *arg)
{
    struct bd_submit_scan *s;

    assert(cbs->on_item != NULL && max_value_bytes >= 1);
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return NULL;
    s->fmt = fmt;
    s->max = max_value_bytes;
    s->cbs = *cbs;
    s->arg = arg;
    s->state = fmt == BD_SUBMIT_NDJSON ? ST_LINE_START : ST_VALUE;
    s->line = 1;
    bd_buf_init(&s->piece);
    return s;
}

int bd_submit_scan_feed(struct bd_submit_scan *s, const char *data, size_t len)
{
    int rc;

    if (s->err < 0)
        return s->err;
    if (s->is_ended)
        return scan_fail(s, BD_EINVAL, s->base, "bytes fed after the end");
    s->cap_from = 0;
    if (s->capturing)
        s->cap_stop = s->max - s->piece.len; /* the limit's check keeps len <= max */
    rc = scan_run(s, data, len);
    s->base += len;
    return rc;
}

int bd_submit_scan_end(struct bd_submit_scan *s)
{
    int rc;

    if (s->err < 0)
        return s->err;
    if (s->is_ended)
        return BD_OK;
    /* A number ends where the body ends (its bytes are all in the piece buffer). */
    s->cap_from = 0;
    if (IS_NUM_END(s->state) && s->depth == 0 && (rc = scan_value_end(s, NULL, 0)) < 0)
        return rc;
    switch (s->state) {
    case ST_TRAILER:
    case ST_LINE_START:
    case ST_LINE_END:
        s->is_ended = true;
        return BD_OK;
    case ST_STR:
    case ST_ESC:
    case ST_U:
    case ST_SURR_BS:
    case ST_SURR_U:
        return scan_fail(s, BD_EINVAL, s->str_off, "unterminated string");
    default:
        if (s->fmt == BD_SUBMIT_JSON && s->depth == 0 && s->state == ST_VALUE)
            return scan_fail(s, BD_EINVAL, s->base, "empty body (expected a JSON object)");
        return scan_fail(s, BD_EINVAL, s->base, "unexpected end of body");
    }
}

const char *bd_submit_scan_why(const struct bd_submit_scan *s)
{
    return s->why;
}

size_t bd_submit_scan_get_memory(const struct bd_submit_scan *s)
{
    return sizeof(*s) + s->piece.cap;
}

void bd_submit_scan_free(struct bd_submit_scan *s)
{
    if (s == NULL)
        return;
    bd_buf_free(&s->piece);
    free(s);
}
