/* sse.h -- an incremental parser of Server-Sent Events (the WHATWG "text/event-stream"
 * format): bytes go in as they arrive, in pieces of any size, and each complete event comes
 * out through a callback.
 *
 * Lines end with LF, CRLF or CR (a CR at the end of one piece and an LF at the start of the
 * next are one line end). "event:" names the event (default "message"), "data:" lines are
 * joined with LF, one space after the colon is dropped, lines starting with ':' are comments
 * (keepalives), "id:" and "retry:" and unknown fields are ignored; a blank line dispatches
 * the event if it has data. A UTF-8 byte order mark at the very start is skipped.
 *
 * Memory: two growable buffers (the current line and the event's data), bounded by
 * max_event bytes; a longer line or event is an error, so a broken server costs no more.
 * A filter, not an async API: the callback runs synchronously inside bctl_sse_feed.
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_SSE_H
#define BATCHCTL_SSE_H

#include "batchd/buf.h"

#include <stdbool.h>
#include <stddef.h>

/* The default bound of one event (and one line). */
#define BCTL_SSE_MAX_EVENT (16u << 20)

/* One event: type is its name ("progress", "final", "message" when unnamed), data its data
 * lines joined by '\n' (NUL-terminated, len bytes). Both borrowed for the call. Return 0
 * to go on, anything else to stop: bctl_sse_feed returns that value, and every later feed
 * does too. */
typedef int (*bctl_sse_event_cb)(const char *type, const char *data, size_t len, void *arg);

struct bctl_sse {
    struct bd_buf line;          /* the line being read, without its end */
    struct bd_buf data;          /* the event's data so far */
    struct bd_buf type;          /* the event's name so far; empty: "message" */
    size_t max_event;
    bool is_after_cr;            /* the last byte seen was a CR: skip an LF that follows */
    bool is_started;             /* past the byte order mark check */
    unsigned bom_matched;        /* bytes of a byte order mark seen at the start */
    int stopped;                 /* the callback's non-zero answer, or -1: too large, ENOMEM */
    bctl_sse_event_cb cb;
    void *arg;
};

/* Set p up; max_event 0 means BCTL_SSE_MAX_EVENT. Allocates nothing yet. */
void bctl_sse_init(struct bctl_sse *p, size_t max_event, bctl_sse_event_cb cb, void *arg);

/* Parse n more bytes, calling cb for each event they complete. Returns 0, the callback's
 * non-zero answer (then p is stopped), or -1 when a line or event passed max_event or
 * memory ran out (stopped too). A stopped parser returns the same value without reading. */
int bctl_sse_feed(struct bctl_sse *p, const char *buf, size_t n);

/* Free p's buffers. An event not ended by a blank line is dropped, as the format says. */
void bctl_sse_free(struct bctl_sse *p);

#endif
