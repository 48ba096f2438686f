/* sse.c -- incremental Server-Sent Events parser (see sse.h).
 *
 * Owns its three buffers. Any thread; one parser per stream. No I/O.
 * SPDX-License-Identifier: MIT
 */
#include "sse.h"

#include <string.h>

void bctl_sse_init(struct bctl_sse *p, size_t max_event, bctl_sse_event_cb cb, void *arg)
{
    memset(p, 0, sizeof(*p));
    bd_buf_init(&p->line);
    bd_buf_init(&p->data);
    bd_buf_init(&p->type);
    p->max_event = max_event ? max_event : BCTL_SSE_MAX_EVENT;
    p->cb = cb;
    p->arg = arg;
}

void bctl_sse_free(struct bctl_sse *p)
{
    bd_buf_free(&p->line);
    bd_buf_free(&p->data);
    bd_buf_free(&p->type);
}

/* Dispatch the event gathered so far (if it has data) and start the next. */
static int sse_dispatch(struct bctl_sse *p)
{
    int rc = 0;

    if (p->data.len > 0) {
        size_t len = p->data.len - 1;             /* the last data line's '\n' goes */
        p->data.data[len] = '\0';
        rc = p->cb(p->type.len > 0 ? p->type.data : "message", p->data.data, len, p->arg);
    }
    bd_buf_reset(&p->data);
    bd_buf_reset(&p->type);
    return rc;
}

/* One complete line (without its end). */
static int sse_line(struct bctl_sse *p, const char *s, size_t n)
{
    const char *colon;
    size_t name_len;
    const char *value;
    size_t value_len;

    if (n == 0)
        return sse_dispatch(p);
    if (s[0] == ':')
        return 0;                                 /* a comment: keepalive */
    colon = memchr(s, ':', n);
    name_len = colon ? (size_t)(colon - s) : n;
    value = colon ? colon + 1 : s + n;
    value_len = colon ? n - name_len - 1 : 0;
    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }
    if (name_len == 4 && memcmp(s, "data", 4) == 0) {
        if (p->data.len + value_len + 1 > p->max_event)
            return -1;
        bd_buf_append(&p->data, value, value_len);
        bd_buf_append(&p->data, "\n", 1);
        return p->data.is_failed ? -1 : 0;
    }
    if (name_len == 5 && memcmp(s, "event", 5) == 0) {
        bd_buf_reset(&p->type);
        bd_buf_append(&p->type, value, value_len);
        return p->type.is_failed ? -1 : 0;
    }
    return 0;                                     /* id, retry, unknown fields */
}

/* Skip a UTF-8 byte order mark at the very start of the stream, which may arrive split
 * across pieces; bytes that turn out not to be one go to the line as they are. Returns how
 * many bytes of buf were consumed. */
static size_t sse_skip_bom(struct bctl_sse *p, const char *buf, size_t n)
{
    static const char bom[3] = {'\xef', '\xbb', '\xbf'};
    size_t i = 0;

    while (i < n && p->bom_matched < 3 && buf[i] == bom[p->bom_matched]) {
        p->bom_matched++;
        i++;
    }
    if (p->bom_matched == 3) {
        p->is_started = true;
    } else if (i < n) {                           /* a mismatch: the prefix was content */
        bd_buf_append(&p->line, bom, p->bom_matched);
        p->is_started = true;
    }
    return i;
}

int bctl_sse_feed(struct bctl_sse *p, const char *buf, size_t n)
{
    size_t i = 0;

    if (p->stopped != 0)
        return p->stopped;
    if (!p->is_started)
        i = sse_skip_bom(p, buf, n);
    while (i < n && p->stopped == 0) {
        if (p->is_after_cr && buf[i] == '\n') {   /* the LF of a CRLF split across pieces */
            p->is_after_cr = false;
            i++;
            continue;
        }
        p->is_after_cr = false;
        const char *start = buf + i;
        size_t left = n - i, k = 0;
        while (k < left && start[k] != '\n' && start[k] != '\r')
            k++;
        if (p->line.len + k > p->max_event) {
            p->stopped = -1;
            break;
        }
        if (k == left) {                          /* no line end in this piece: keep it */
            bd_buf_append(&p->line, start, k);
            if (p->line.is_failed)
                p->stopped = -1;
            break;
        }
        const char *s = start;                    /* a whole line in buf: no copy */
        size_t len = k;
        if (p->line.len > 0) {
            bd_buf_append(&p->line, start, k);
            if (p->line.is_failed) {
                p->stopped = -1;
                break;
            }
            s = p->line.data;
            len = p->line.len;
        }
        p->is_after_cr = start[k] == '\r';
        i += k + 1;
        int rc = sse_line(p, s, len);
        bd_buf_reset(&p->line);
        if (rc != 0)
            p->stopped = rc;
    }
    return p->stopped;
}
