/* multipart.c -- the incremental multipart/form-data parser (multipart.h).
 *
 * Owns each parser's delimiter and its one header buffer. No allocation after
 * bd_multipart_new; no I/O; any thread.  SPDX-License-Identifier: MIT
 *
 * The delimiter is CRLF "--" boundary. A boundary holds no CR, so a CR occurs only as the
 * delimiter's first byte: when a partial match fails, the bytes matched so far are content
 * and the only place a new match can start is the byte that failed it. That makes the
 * search a single pass without a failure table, and the matched prefix needs no copy: it
 * is delim[0..matched), which we hold anyway. The body's very start counts as if preceded
 * by a CRLF, so a first delimiter without one is found by the same matcher.
 */
#include "batchd/multipart.h"
#include "batchd/url.h"
#include "batchd/error.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MP_DEFAULT_HEADER_BYTES 8192
#define MP_DEFAULT_PARTS 16

enum mp_state {
    MP_PREAMBLE,       /* before the first delimiter: bytes dropped */
    MP_AFTER_DELIM,    /* "--" (close) or padding and CRLF */
    MP_HEADERS,        /* a part's header block */
    MP_DATA,           /* a part's content */
    MP_EPILOGUE,       /* after the close: bytes dropped */
    MP_FAILED
};

enum mp_after { AFTER_START, AFTER_DASH, AFTER_PAD, AFTER_CR };

struct bd_multipart {
    struct bd_multipart_cbs cbs;
    void *arg;
    size_t max_header_bytes;
    unsigned max_parts;
    enum mp_state state;
    enum mp_after after;
    char delim[4 + BD_MULTIPART_BOUNDARY_MAX];
    size_t delim_len;
    size_t matched;                   /* delim[0..matched) seen, possibly in earlier feeds */
    unsigned parts;
    bool is_in_part;
    int err;
    char why[160];
    size_t hdr_len;
    char hdr[];                       /* max_header_bytes + 1 */
};

static int mp_fail(struct bd_multipart *mp, int err, const char *why)
{
    mp->state = MP_FAILED;
    mp->err = err;
    snprintf(mp->why, sizeof(mp->why), "%s", why);
    return err;
}

static bool mp_is_boundary_ok(const char *b, size_t n)
{
    if (n == 0 || n > BD_MULTIPART_BOUNDARY_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (b[i] == '\r' || b[i] == '\n' || b[i] == '\0')
            return false;
    return true;
}

struct bd_multipart *bd_multipart_new(const char *boundary,
                                      const struct bd_multipart_limits *limits,
                                      const struct bd_multipart_cbs *cbs, void *arg)
{
    size_t n = boundary ? strlen(boundary) : 0;
    size_t max_hdr = limits && limits->max_header_bytes ? limits->max_header_bytes
                                                        : MP_DEFAULT_HEADER_BYTES;
    struct bd_multipart *mp;

    if (!mp_is_boundary_ok(boundary, n))
        return NULL;
    if ((mp = calloc(1, sizeof(*mp) + max_hdr + 1)) == NULL)
        return NULL;
    if (cbs)
        mp->cbs = *cbs;
    mp->arg = arg;
    mp->max_header_bytes = max_hdr;
    mp->max_parts = limits && limits->max_parts ? limits->max_parts : MP_DEFAULT_PARTS;
    memcpy(mp->delim, "\r\n--", 4);
    memcpy(mp->delim + 4, boundary, n);
    mp->delim_len = 4 + n;
    mp->state = MP_PREAMBLE;
    mp->matched = 2;                  /* the body's start counts as after a CRLF */
    return mp;
}

void bd_multipart_free(struct bd_multipart *mp)
{
    free(mp);
}

const char *bd_multipart_why(const struct bd_multipart *mp)
{
    return mp->why;
}

unsigned bd_multipart_get_parts(const struct bd_multipart *mp)
{
    return mp->parts;
}

/* Content of the current part (dropped in the preamble). */
static int mp_emit(struct bd_multipart *mp, const char *p, size_t n)
{
    int rc;

    if (n == 0 || mp->state != MP_DATA || mp->cbs.on_part_data == NULL)
        return BD_OK;
    rc = mp->cbs.on_part_data(mp->arg, p, n);
    return rc < 0 ? mp_fail(mp, rc, "stopped by the reader") : BD_OK;
}

/* ---- a part's headers ------------------------------------------------------------------ */

static bool mp_is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static char *mp_trim(char *s)
{
    size_t n;

    while (*s == ' ' || *s == '\t')
        s++;
    n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* RFC 8187 ext-value ("UTF-8''na%C3%AFve.jsonl") decoded in place with the one
 * percent-decoder (it writes behind where it reads); false when malformed. */
static bool mp_ext_value(char *v)
{
    char *q = strstr(v, "''");

    return q != NULL && bd_url_decode(q + 2, strlen(q + 2), v, strlen(v) + 1, 0) >= 0;
}

/* Content-Disposition's value, parsed in place: its type, then name, filename (filename*
 * when filename is absent). */
static bool mp_disposition(char *v, struct bd_multipart_part *part)
{
    char *p = v;
    char *ext_filename = NULL;

    while (*p && *p != ';')
        p++;
    if (*p)
        *p++ = '\0';
    part->disposition = mp_trim(v);
    while (*p) {
        char *key, *val;
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        if (*p == '\0')
            break;
        key = p;
        while (mp_is_tchar(*p))
            p++;
        if (p == key)
            return false;
        char *key_end = p;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '=')
            return false;
        *key_end = '\0';
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '"') {                       /* quoted-string, unquoted in place */
            char *w = ++p;
            val = w;
            for (;;) {
                if (*p == '\0')
                    return false;              /* no closing quote */
                if (*p == '"')
                    break;
                if (*p == '\\' && p[1] != '\0')
                    p++;
                *w++ = *p++;
            }
            p++;                               /* past the quote; w <= p - 1 */
            *w = '\0';
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p != '\0' && *p != ';')
                return false;
        } else {
            val = p;
            while (*p && *p != ';' && *p != ' ' && *p != '\t')
                p++;
            char *end = p;
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p != '\0' && *p != ';')
                return false;
            if (*p == ';')
                p++;
            *end = '\0';
        }
        if (strcasecmp(key, "name") == 0)
            part->name = val;
        else if (strcasecmp(key, "filename") == 0)
            part->filename = val;
        else if (strcasecmp(key, "filename*") == 0)
            ext_filename = val;
    }
    if (part->filename == NULL && ext_filename != NULL) {
        if (!mp_ext_value(ext_filename))
            return false;
        part->filename = ext_filename;
    }
    return true;
}

/* The header block hdr[0..hdr_len), which ends with CRLF CRLF (or is just CRLF). */
static int mp_headers_done(struct bd_multipart *mp)
{
    struct bd_multipart_part part = { .index = mp->parts - 1 };
    char *p = mp->hdr;
    char *end = mp->hdr + mp->hdr_len - 2;     /* the last line's CRLF */
    int rc;

    *end = '\0';
    while (p < end) {
        char *eol = strstr(p, "\r\n");
        char *line = p, *colon;
        if (eol == NULL)
            eol = end;
        *eol = '\0';
        p = eol + 2;
        if (memchr(line, '\r', (size_t)(eol - line)) || strchr(line, '\n'))
            return mp_fail(mp, BD_EINVAL, "a part's header holds a bare CR or LF");
        if (line[0] == ' ' || line[0] == '\t')
            return mp_fail(mp, BD_EINVAL, "a part's header is folded over lines");
        colon = line;
        while (mp_is_tchar(*colon))
            colon++;
        if (colon == line || *colon != ':')
            return mp_fail(mp, BD_EINVAL, "a part's header line is not \"Name: value\"");
        *colon = '\0';
        char *value = mp_trim(colon + 1);
        if (strcasecmp(line, "Content-Disposition") == 0) {
            if (!mp_disposition(value, &part))
                return mp_fail(mp, BD_EINVAL, "a part's Content-Disposition is malformed");
        } else if (strcasecmp(line, "Content-Type") == 0) {
            part.content_type = value;
        }
    }
    mp->state = MP_DATA;
    mp->matched = 0;
    mp->is_in_part = true;
    if (mp->cbs.on_part_begin && (rc = mp->cbs.on_part_begin(mp->arg, &part)) < 0)
        return mp_fail(mp, rc, "stopped by the reader");
    return BD_OK;
}

/* Header bytes from p[0..n); *used says how many were taken (all, or up to the block's end). */
static int mp_headers(struct bd_multipart *mp, const char *p, size_t n, size_t *used)
{
    for (size_t i = 0; i < n; i++) {
        if (mp->hdr_len >= mp->max_header_bytes) {
            char why[120];
            snprintf(why, sizeof(why), "a part's headers are over %zu bytes",
                     mp->max_header_bytes);
            return mp_fail(mp, BD_EINVAL, why);
        }
        mp->hdr[mp->hdr_len++] = p[i];
        if (p[i] != '\n')
            continue;
        if (mp->hdr_len < 2 || mp->hdr[mp->hdr_len - 2] != '\r')
            return mp_fail(mp, BD_EINVAL, "a part's header line ends without CRLF");
        if (mp->hdr_len == 2 ||
            (mp->hdr_len >= 4 && memcmp(mp->hdr + mp->hdr_len - 4, "\r\n\r\n", 4) == 0)) {
            *used = i + 1;
            mp->hdr[mp->hdr_len] = '\0';
            return mp_headers_done(mp);
        }
    }
    *used = n;
    return BD_OK;
}

/* ---- delimiters and content ------------------------------------------------------------ */

/* The delimiter just ended: close the part it ended. */
static int mp_delimiter(struct bd_multipart *mp)
{
    int rc;

    mp->state = MP_AFTER_DELIM;
    mp->after = AFTER_START;
    mp->matched = 0;
    if (mp->is_in_part) {
        mp->is_in_part = false;
        if (mp->cbs.on_part_end && (rc = mp->cbs.on_part_end(mp->arg)) < 0)
            return mp_fail(mp, rc, "stopped by the reader");
    }
    return BD_OK;
}

/* Content (or preamble) from p[0..n) up to and including the next delimiter; *used says how
 * far it went. Content before a delimiter is handed on in as few slices as possible. */
static int mp_scan(struct bd_multipart *mp, const char *p, size_t n, size_t *used)
{
    size_t start = 0;                 /* content not handed on yet begins here */
    size_t match_at = (size_t)-1;     /* where the current match began in p; -1: earlier */
    size_t i = 0;
    int rc;

    while (i < n) {
        if (mp->matched == 0) {
            const char *cr = memchr(p + i, '\r', n - i);
            if (cr == NULL) {
                i = n;
                break;
            }
            i = (size_t)(cr - p);
            match_at = i;
            mp->matched = 1;
            i++;
            continue;
        }
        if (p[i] == mp->delim[mp->matched]) {
            mp->matched++;
            i++;
            if (mp->matched < mp->delim_len)
                continue;
            /* A delimiter: what came before it is the part's content. */
            if (match_at != (size_t)-1 && (rc = mp_emit(mp, p + start, match_at - start)) < 0)
                return rc;
            *used = i;
            return mp_delimiter(mp);
        }
        /* Not a delimiter after all: the matched bytes are content. Those matched in an
         * earlier feed were not handed on: they are delim[0..matched). */
        if (match_at == (size_t)-1) {
            if ((rc = mp_emit(mp, mp->delim, mp->matched - i)) < 0)
                return rc;
        }
        mp->matched = 0;
        match_at = (size_t)-1;
        /* p[i] is looked at again: it may be a CR that starts the next match. */
    }
    /* The end of this slice. Content up to a match in progress goes on now; the matched
     * bytes wait to see whether they are a delimiter. */
    size_t stop = mp->matched > 0 ? (match_at == (size_t)-1 ? start : match_at) : n;
    if ((rc = mp_emit(mp, p + start, stop - start)) < 0)
        return rc;
    *used = n;
    return BD_OK;
}

static int mp_after_delim(struct bd_multipart *mp, char c)
{
    switch (mp->after) {
    case AFTER_START:
        if (c == '-')
            mp->after = AFTER_DASH;
        else if (c == ' ' || c == '\t')
            mp->after = AFTER_PAD;
        else if (c == '\r')
            mp->after = AFTER_CR;
        else
            return mp_fail(mp, BD_EINVAL, "a boundary delimiter is followed by other bytes "
                           "than CRLF or \"--\"");
        return BD_OK;
    case AFTER_DASH:
        if (c != '-')
            return mp_fail(mp, BD_EINVAL, "a boundary delimiter is followed by a single '-'");
        mp->state = MP_EPILOGUE;
        return BD_OK;
    case AFTER_PAD:
        if (c == '\r')
            mp->after = AFTER_CR;
        else if (c != ' ' && c != '\t')
            return mp_fail(mp, BD_EINVAL, "a boundary delimiter is followed by other bytes "
                           "than CRLF or \"--\"");
        return BD_OK;
    case AFTER_CR:
        if (c != '\n')
            return mp_fail(mp, BD_EINVAL, "a boundary delimiter's line ends without CRLF");
        if (mp->parts >= mp->max_parts) {
            char why[80];
            snprintf(why, sizeof(why), "the body has more than %u parts", mp->max_parts);
            return mp_fail(mp, BD_EINVAL, why);
        }
        mp->parts++;
        mp->hdr_len = 0;
        mp->state = MP_HEADERS;
        return BD_OK;
    }
    return BD_OK;
}

int bd_multipart_feed(struct bd_multipart *mp, const char *data, size_t len)
{
    size_t off = 0;
    int rc = BD_OK;

    while (off < len && rc == BD_OK) {
        size_t used = 0;
        switch (mp->state) {
        case MP_PREAMBLE:
        case MP_DATA:
            rc = mp_scan(mp, data + off, len - off, &used);
            break;
        case MP_AFTER_DELIM:
            rc = mp_after_delim(mp, data[off]);
            used = 1;
            break;
        case MP_HEADERS:
            rc = mp_headers(mp, data + off, len - off, &used);
            break;
        case MP_EPILOGUE:
            used = len - off;
            break;
        case MP_FAILED:
            return mp->err;
        }
        off += used;
    }
    return mp->state == MP_FAILED ? mp->err : rc;
}

int bd_multipart_end(struct bd_multipart *mp)
{
    switch (mp->state) {
    case MP_EPILOGUE:
        return BD_OK;
    case MP_FAILED:
        return mp->err;
    case MP_PREAMBLE:
        return mp_fail(mp, BD_EINVAL, "the body holds no boundary delimiter");
    default:
        return mp_fail(mp, BD_EINVAL, "the body ends before the closing boundary");
    }
}

/* ---- the Content-Type header ----------------------------------------------------------- */

int bd_multipart_boundary(const char *ct, char *out)
{
    static const char type[] = "multipart/form-data";
    const char *p;
    size_t n = 0;

    if (ct == NULL)
        return BD_EMEDIATYPE;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, type, sizeof(type) - 1) != 0 ||
        (ct[sizeof(type) - 1] != '\0' && ct[sizeof(type) - 1] != ';' &&
         ct[sizeof(type) - 1] != ' ' && ct[sizeof(type) - 1] != '\t'))
        return BD_EMEDIATYPE;
    p = ct + sizeof(type) - 1;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        const char *key = p;
        while (*p && *p != '=' && *p != ';')
            p++;
        size_t klen = (size_t)(p - key);
        while (klen > 0 && (key[klen - 1] == ' ' || key[klen - 1] == '\t'))
            klen--;
        if (*p != '=')
            continue;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        bool is_boundary = klen == 8 && strncasecmp(key, "boundary", 8) == 0;
        n = 0;
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (is_boundary && n < BD_MULTIPART_BOUNDARY_MAX + 1)
                    out[n++] = *p;
                else if (is_boundary)
                    return BD_EINVAL;
            }
            if (*p != '"')
                return BD_EINVAL;
            p++;
        } else {
            for (; *p && *p != ';' && *p != ' ' && *p != '\t'; p++) {
                if (is_boundary && n < BD_MULTIPART_BOUNDARY_MAX + 1)
                    out[n++] = *p;
                else if (is_boundary)
                    return BD_EINVAL;
            }
        }
        if (is_boundary) {
            out[n < BD_MULTIPART_BOUNDARY_MAX + 1 ? n : BD_MULTIPART_BOUNDARY_MAX] = '\0';
            return mp_is_boundary_ok(out, n) ? BD_OK : BD_EINVAL;
        }
    }
    return BD_EINVAL;
}
