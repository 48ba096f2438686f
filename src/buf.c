/* buf.c -- growable byte buffer.  Owns nothing beyond each buffer's memory. Any thread.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/buf.h"
#include "batchd/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bd_buf_init(struct bd_buf *b)
{
    memset(b, 0, sizeof(*b));
}

void bd_buf_free(struct bd_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

void bd_buf_reset(struct bd_buf *b)
{
    b->len = 0;
    b->is_failed = 0;
    if (b->data)
        b->data[0] = '\0';
}

int bd_buf_reserve(struct bd_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return BD_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) {
        b->is_failed = 1;
        return BD_ENOMEM;
    }
    b->data = d;
    b->cap = cap;
    return BD_OK;
}

void bd_buf_append(struct bd_buf *b, const void *data, size_t len)
{
    if (bd_buf_reserve(b, len) != BD_OK)
        return;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void bd_buf_puts(struct bd_buf *b, const char *s)
{
    bd_buf_append(b, s, strlen(s));
}

void bd_buf_printf(struct bd_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (bd_buf_reserve(b, 64) != BD_OK)
        return;
    va_start(ap, fmt);
    n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= b->cap - b->len) {
        if (bd_buf_reserve(b, (size_t)n) != BD_OK)
            return;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

char *bd_buf_steal(struct bd_buf *b, size_t *len)
{
    char *d = b->data;
    if (len)
        *len = b->len;
    bd_buf_init(b);
    return d;
}

/* ---- JSON strings with UTF-8 repair ------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is not one (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). s[0] >= 0x80. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;

    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < need + 1 || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i <= need; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return need + 1;
}

size_t bd_utf8_count(const char *s, size_t n)
{
    size_t count = 0;

    for (size_t i = 0; i < n; i++)
        count += ((unsigned char)s[i] & 0xC0) != 0x80;
    return count;
}

bool bd_utf8_is_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_seq_len(p + i, n - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* One reservation for the worst case (6 bytes per input byte), then a tight loop. Moved
 * here from model_wire.c, whose request bodies must always be valid JSON (a server rejects
 * the whole request otherwise, failing the batch for one byte). */
void bd_buf_json_string(struct bd_buf *b, const char *text, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)text;

    if (bd_buf_reserve(b, len * 6 + 2) != BD_OK)
        return;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
        } else if (c < 0x80) {
            *o++ = '\\';
            switch (c) {
            case '"':  *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            }
            i++;
        } else {
            size_t n = utf8_seq_len(s + i, len - i);
            if (n == 0) {
                memcpy(o, "\\ufffd", 6);
                o += 6;
                i++;
            } else {
                memcpy(o, s + i, n);
                o += n;
                i += n;
            }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}
