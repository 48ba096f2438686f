/* buf.h -- a growable byte buffer, reused rather than reallocated on hot paths.
 *
 * Owns its memory; bd_buf_reset keeps the capacity for the next use (redis's reusable
 * query buffer). Any thread, no locking.
 */
#ifndef BATCHD_BUF_H
#define BATCHD_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bd_buf {
    char *data;           /* text appends keep it NUL-terminated; binary (COPY) may not */
    size_t len;
    size_t cap;
    int is_failed;        /* an allocation failed: contents are incomplete */
};

void bd_buf_init(struct bd_buf *b);
void bd_buf_free(struct bd_buf *b);
void bd_buf_reset(struct bd_buf *b);               /* len = 0, keeps the memory */
int bd_buf_reserve(struct bd_buf *b, size_t extra); /* BD_OK or BD_ENOMEM (is_failed set) */
void bd_buf_append(struct bd_buf *b, const void *data, size_t len);
void bd_buf_puts(struct bd_buf *b, const char *s);
void bd_buf_printf(struct bd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a JSON string literal (quotes and escapes) -- the one JSON escaper. Every
 * byte sequence that is not valid UTF-8 (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF) becomes \ufffd, so the result is always valid JSON whatever s holds.
 * Reserves 6 * len + 2 bytes once (no growth per character); on ENOMEM is_failed is set. */
void bd_buf_json_string(struct bd_buf *b, const char *s, size_t len);
/* True when s[0..n) is valid UTF-8 (RFC 3629), the one validator. */
bool bd_utf8_is_valid(const char *s, size_t n);
/* Characters (code points) in valid UTF-8 s[0..n): the bytes that do not continue one. */
size_t bd_utf8_count(const char *s, size_t n);
/* Take the memory out (caller frees); b is left empty. */
char *bd_buf_steal(struct bd_buf *b, size_t *len);

#endif
