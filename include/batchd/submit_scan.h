/* submit_scan.h -- a resumable (push) scanner that splits a POST /jobs body, fed in chunks
 * of any size as the bytes arrive, into bounded pieces: the top-level members of the JSON
 * form, and the items (one element of "data", or one JSON Lines line).
 *
 * It checks JSON syntax (RFC 8259) as it goes, so every piece it hands out is one complete,
 * well-formed JSON value that the per-item code can give to jansson or to json_scan.h with
 * confidence. It never holds the body: it buffers at most the piece in progress (at most
 * max_value_bytes) and keeps its position between feeds, so each byte is looked at once
 * (amortised O(1) per byte however the body is split). It builds no JSON tree.
 *
 * This is a parser, not an async API: the callbacks run synchronously, from inside
 * bd_submit_scan_feed() or bd_submit_scan_end(), in body order, and the same body gives the
 * same callbacks with the same arguments and the same verdict however it is split into
 * feeds. A callback must not call feed, end or free on its own scanner.
 *
 * Pure C, no I/O; any thread (one scanner per thread at a time). Allocates: the scanner and
 * its piece buffer (reused from piece to piece).
 */
#ifndef BATCHD_SUBMIT_SCAN_H
#define BATCHD_SUBMIT_SCAN_H

#include <stddef.h>

enum bd_submit_format {
    BD_SUBMIT_JSON,   /* one JSON object with a "data" array (application/json) */
    BD_SUBMIT_NDJSON  /* one JSON value per line (application/x-ndjson, application/jsonl) */
};

/* Longest top-level member name, in bytes after unescaping (a longer one is BD_EINVAL). */
#define BD_SUBMIT_SCAN_KEY_MAX 256

/* Nesting limit for the whole body: the JSON form's object counts as one level, "data" as
 * another, so an item may nest BD_SUBMIT_SCAN_DEPTH_MAX - 2 levels (as json_scan.h allows
 * 64, every item passed can also be walked with it). */
#define BD_SUBMIT_SCAN_DEPTH_MAX 64

/* Every value/key is borrowed for the call only (copy what you keep); it is NUL-terminated
 * (value[value_len] == '\0'; a value holds no NUL byte: raw control bytes and \u0000 are
 * refused). A callback returns >= 0 to go on, or < 0 to stop the scan: feed/end then
 * return that code, and so does every later feed/end (sticky). */
struct bd_submit_scan_cbs {
    /* JSON form: a top-level member other than "data": its name (unescaped, valid UTF-8)
     * and its whole value as JSON text (any JSON type). Called when the value ends, in body
     * order; a repeated name is passed again (the consumer decides). May be NULL. */
    int (*on_member)(void *arg, const char *key, const char *value, size_t value_len);
    /* An item: one element of the top-level "data" array (JSON form) or the value of one
     * non-blank line (NDJSON; the piece is the value's text without the surrounding
     * whitespace or the line's \r). index counts items from 0; line is the item's 1-based
     * line number in NDJSON, 0 in the JSON form. Items may be any JSON type: checking that
     * an item is an object is the consumer's job. Required. */
    int (*on_item)(void *arg, size_t index, size_t line, const char *value, size_t value_len);
    /* JSON form: "data" opens (after the members before it, before its first item) and
     * closes (after its last item; items = how many). Either may be NULL. */
    int (*on_data_begin)(void *arg);
    int (*on_data_end)(void *arg, size_t items);
};

struct bd_submit_scan;

/* A scanner for one body. max_value_bytes bounds each piece (member value or item), >= 1.
 * cbs is copied; arg is passed to every callback. Returns NULL on ENOMEM. Caller frees with
 * bd_submit_scan_free(). */
struct bd_submit_scan *bd_submit_scan_new(enum bd_submit_format fmt, size_t max_value_bytes,
                                          const struct bd_submit_scan_cbs *cbs, void *arg);

/* Scan the next len bytes of the body (data borrowed for the call; len may be 0). Calls the
 * callbacks for every piece that ends in these bytes. Returns BD_OK, or (sticky):
 *   BD_EINVAL    the body is not well-formed (see bd_submit_scan_why()): JSON syntax, a
 *                string that is not UTF-8, the JSON form's shape (not an object, "data"
 *                missing, repeated or not an array, bytes after the closing brace), a
 *                member name over BD_SUBMIT_SCAN_KEY_MAX, nesting over
 *                BD_SUBMIT_SCAN_DEPTH_MAX, two values on one NDJSON line;
 *   BD_ETOOLARGE a piece is longer than max_value_bytes: reported at the byte that passes
 *                the limit, not when the piece ends;
 *   BD_ENOMEM    the piece buffer could not grow;
 *   < 0          what a callback returned to stop the scan. */
int bd_submit_scan_feed(struct bd_submit_scan *s, const char *data, size_t len);

/* The body has ended: finishes a value the end completes (an NDJSON last line without a
 * newline, or a number at its end) and checks that nothing is left open. Returns BD_OK
 * (the body was complete and every callback has run), or as feed (BD_EINVAL for a
 * truncated body). Later feeds return BD_EINVAL. */
int bd_submit_scan_end(struct bd_submit_scan *s);

/* Why the scan failed: one line naming where, e.g. "data[70000]: unterminated string at
 * byte 123456", "line 7: expected ',' or '}' at byte 80", "member \"options\": value longer
 * than 1024 bytes at byte 2000"; byte offsets count from 0 in the (decoded) body. "" while
 * no error. Borrowed, valid until the next call on s. */
const char *bd_submit_scan_why(const struct bd_submit_scan *s);

/* Bytes the scanner holds now (its struct and its piece buffer's capacity): bounded by
 * about 2 * max_value_bytes whatever the body's size. */
size_t bd_submit_scan_get_memory(const struct bd_submit_scan *s);

/* Frees s (NULL is fine). Never from inside one of s's callbacks. */
void bd_submit_scan_free(struct bd_submit_scan *s);

#endif
