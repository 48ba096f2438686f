/* multipart.h -- an incremental multipart/form-data parser (RFC 7578 over RFC 2046 framing).
 *
 * Fed the body in slices of any size (a delimiter or a header may be split across calls),
 * it calls back for each part: its headers once (name, filename, Content-Type), then its
 * content as it comes, then its end. Content is handed over zero-copy as slices of the
 * input wherever it can be; only the bytes that looked like the start of a delimiter and
 * were not one come from the parser's own memory. Memory is one header block per part
 * (at most max_header_bytes), whatever the size of the body. Knows nothing of HTTP or of
 * the parts' meaning. No allocation after bd_multipart_new. Any thread, one parser per
 * thread at a time.
 *
 * Framing accepted: an optional preamble, then "--boundary" at the very start of the body
 * or after a CRLF; after each delimiter either "--" (the close: what follows is epilogue,
 * ignored) or optional spaces/tabs and CRLF, then the part's header lines ending with an
 * empty line (CRLF only; no folded lines), then the content up to the next CRLF
 * "--boundary". Refused with a reason (bd_multipart_why): no delimiter at all, other bytes
 * after a delimiter, a header block over max_header_bytes or a malformed header line, more
 * than max_parts parts, and (at bd_multipart_end) a body that ends before the close.
 */
#ifndef BATCHD_MULTIPART_H
#define BATCHD_MULTIPART_H

#include <stddef.h>

struct bd_multipart;

/* Longest boundary (RFC 2046: 1 to 70 characters). */
#define BD_MULTIPART_BOUNDARY_MAX 70

/* A part's headers, borrowed during on_part_begin only. Each field is NULL when absent.
 * name and filename are the Content-Disposition parameters, quoted strings unquoted
 * (backslash escapes removed). */
struct bd_multipart_part {
    unsigned index;                   /* 0 for the first part */
    const char *disposition;          /* the disposition type ("form-data") */
    const char *name;
    const char *filename;
    const char *content_type;
};

/* The callbacks (each may be NULL). A callback returning < 0 stops the parser: the feed
 * that called it returns that value and every later call returns it again. data is
 * borrowed for the call and never empty. */
struct bd_multipart_cbs {
    int (*on_part_begin)(void *arg, const struct bd_multipart_part *part);
    int (*on_part_data)(void *arg, const char *data, size_t len);
    int (*on_part_end)(void *arg);
};

struct bd_multipart_limits {
    size_t max_header_bytes;          /* one part's header block, CRLFs included [8 KiB] */
    unsigned max_parts;               /* [16] */
};

/* The boundary parameter of a Content-Type header value ("multipart/form-data;
 * boundary=xyz" or boundary="x y z"), copied to out (NUL-terminated, out has room for
 * BD_MULTIPART_BOUNDARY_MAX + 1). Returns BD_OK, BD_EMEDIATYPE when the type is not
 * multipart/form-data, or BD_EINVAL when the boundary is missing, empty, longer than 70
 * characters or holds a CR, LF or NUL. */
int bd_multipart_boundary(const char *content_type, char *out);

/* A parser for boundary (copied; 1 to 70 bytes, no CR or LF). limits NULL: the defaults.
 * NULL on ENOMEM or a bad boundary. Free with bd_multipart_free. */
struct bd_multipart *bd_multipart_new(const char *boundary,
                                      const struct bd_multipart_limits *limits,
                                      const struct bd_multipart_cbs *cbs, void *arg);
void bd_multipart_free(struct bd_multipart *mp);

/* Parse data[0..len). Returns BD_OK, BD_EINVAL (malformed; see bd_multipart_why), or what a
 * callback returned when < 0. Errors are sticky. */
int bd_multipart_feed(struct bd_multipart *mp, const char *data, size_t len);

/* The body has ended: BD_OK when the closing delimiter was seen, else BD_EINVAL (or the
 * sticky error). */
int bd_multipart_end(struct bd_multipart *mp);

/* Why the parser refused the body ("" when it did not). Borrowed from mp. */
const char *bd_multipart_why(const struct bd_multipart *mp);

/* Parts begun so far. */
unsigned bd_multipart_get_parts(const struct bd_multipart *mp);

#endif
