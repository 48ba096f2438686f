/* inflate.h -- streaming gzip inflate (zlib) for request bodies, with a limit on the
 * decompressed size, so a gzip bomb costs a clean BD_ETOOLARGE (HTTP 413), never memory.
 *
 * A filter, not an async API: compressed bytes go in by bd_inflate_feed as they arrive,
 * and the inflated bytes come out, synchronously and in order, through the caller's
 * callback before feed returns. The async callback contract (STYLE.md) does not apply.
 * Any thread; one struct bd_inflate is used by one thread at a time.
 *
 * Accepted input (RFC 1952): one gzip member, or several concatenated (`cat a.gz b.gz`,
 * what gzip and curl produce for appended files); the output is the members' data one
 * after the other. Each member's CRC-32 and length are checked. Refused with BD_EINVAL:
 * an empty body (no gzip member at all), a zlib or raw deflate stream, anything after the
 * last member that is not a complete gzip member (trailing garbage, including the zero
 * padding GNU gzip tolerates with a warning), a corrupt header or data, a CRC or length
 * mismatch, and a body that ends inside a member (truncated).
 *
 * Output is not verified when it is delivered: a member's CRC-32 and length are checked only
 * at its end, and a body can always turn out truncated. So a caller treats what cb received
 * as provisional (it may parse and stage it, as COPY inside a transaction) and commits only
 * when bd_inflate_end has returned BD_OK.
 *
 * Memory: bd_inflate_new allocates once, about 110 KiB (zlib's 32 KiB window and state, and
 * one BD_INFLATE_CHUNK output buffer); nothing grows after that, whatever the input.
 */
#ifndef BATCHD_INFLATE_H
#define BATCHD_INFLATE_H

#include <stddef.h>

/* The most bytes the output callback receives in one call. */
#define BD_INFLATE_CHUNK (64 * 1024)

/* bd_inflate_feed_some's answer when it stopped at its output budget with work left. */
#define BD_INFLATE_AGAIN 1

struct bd_inflate;

/* Receives n (1..BD_INFLATE_CHUNK) inflated bytes; out is borrowed for the call (the
 * inflater's own buffer, overwritten by the next piece). Return BD_OK to go on, or a
 * negative code to stop: the feed returns that code, and so does every later feed and
 * bd_inflate_end (sticky). Must not call bd_inflate_feed* or bd_inflate_free on the same
 * inflater (asserted). Called synchronously, from inside bd_inflate_feed*, only. */
typedef int (*bd_inflate_data_cb)(void *arg, const char *out, size_t n);

/* A new inflater for one body. max_out: total inflated bytes allowed over all members (0
 * allows an empty payload only; SIZE_MAX means no limit). Returns NULL with *err =
 * BD_ENOMEM (err may be NULL) on failure. Caller frees with bd_inflate_free. Allocates. */
struct bd_inflate *bd_inflate_new(size_t max_out, int *err);

/* Feed len compressed bytes (in may be NULL when len is 0), all of them: every byte the
 * data yields is passed to cb before this returns. Returns:
 *   BD_OK        everything so far inflated and delivered; feed more, or call end;
 *   BD_EINVAL    the input is not valid gzip (bd_inflate_why says what and where);
 *   BD_ETOOLARGE the output would pass max_out: cb received exactly the first max_out bytes,
 *                never more;
 *   BD_ENOMEM    zlib could not allocate (it allocates only in bd_inflate_new, in practice);
 *   or the first negative value cb returned.
 * Every error is sticky: later feeds do nothing and return it, as does bd_inflate_end.
 * The work done is proportional to the output, which one small input can make large (about
 * 1000x for deflate); to bound the work per loop turn use bd_inflate_feed_some. */
int bd_inflate_feed(struct bd_inflate *z, const void *in, size_t len, bd_inflate_data_cb cb,
                    void *arg);

/* Like bd_inflate_feed, but passes at most out_budget (> 0) bytes to cb in this call, then
 * stops. *used is set to the input bytes consumed (also on error). Returns BD_OK when all
 * of in was consumed and all its output delivered, BD_INFLATE_AGAIN when the budget ran
 * out first: call again with the rest, in + *used and len - *used, which may be empty --
 * zlib can hold output for input it has already consumed, so AGAIN with *used == len still
 * means "call again" (that call may then deliver nothing and return BD_OK). Errors as for
 * bd_inflate_feed. The caller keeps the unconsumed input; the inflater copies none. */
int bd_inflate_feed_some(struct bd_inflate *z, const void *in, size_t len, size_t out_budget,
                         size_t *used, bd_inflate_data_cb cb, void *arg);

/* The body has ended. Returns BD_OK when at least one gzip member was read and the input
 * ended exactly at the end of a member, BD_EINVAL when the body was empty or ends inside a
 * member (truncated, or trailing bytes that begin no complete member), or the sticky error
 * of an earlier feed. Must not be called while a feed_some answer of BD_INFLATE_AGAIN is
 * outstanding (asserted). Delivers nothing; call it once, after the last feed. */
int bd_inflate_end(struct bd_inflate *z);

/* Why the last BD_EINVAL (or other error) happened, e.g. "gzip member 1: incorrect data
 * check" or "gzip body ends inside member 2 (truncated)"; "" when there was none. Borrowed,
 * valid until the next feed, end or free on z. */
const char *bd_inflate_why(const struct bd_inflate *z);

/* Inflated bytes delivered to cb so far (at most max_out). */
size_t bd_inflate_total_out(const struct bd_inflate *z);

/* Complete gzip members read so far. */
unsigned bd_inflate_members(const struct bd_inflate *z);

/* Free z and zlib's state (NULL is a no-op). Not from inside its own callback. */
void bd_inflate_free(struct bd_inflate *z);

#endif
