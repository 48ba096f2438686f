/* inflate.c -- streaming gzip inflate with a limit on the inflated size (zlib's inflate,
 * gzip wrapper only, concatenated members accepted).
 *
 * Owns one z_stream, its gz_header record and one fixed output buffer per body. Pure
 * computation, any thread; output goes synchronously to the caller's callback. Must not
 * buffer output or grow: the limit check is the only defence against a gzip bomb.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/inflate.h"
#include "batchd/error.h"

#include <assert.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* windowBits 15 (the largest window, which any gzip encoder may use) + 16: gzip wrapper
 * only. Not +32 (auto-detect): a zlib stream is not what Content-Encoding: gzip names. */
#define INFLATE_WINDOW_BITS (15 + 16)

struct bd_inflate {
    z_stream strm;
    gz_header head;            /* head.done == 1 once the current member's header is read */
    size_t max_out;
    size_t total_out;          /* delivered to the callback, all members */
    unsigned members;          /* members read to their end (trailer checked) */
    int err;                   /* BD_OK or the first error (sticky) */
    bool is_in_member;         /* a member has begun and has not yet ended */
    bool is_pending;           /* the last inflate filled its output: more may be waiting */
    bool is_again;             /* feed_some answered BD_INFLATE_AGAIN; not yet called again */
    bool is_in_cb;             /* the callback is running (re-entry is a programmer error) */
    char why[160];
    unsigned char out[BD_INFLATE_CHUNK];
};

static int inflate_fail(struct bd_inflate *z, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int inflate_fail(struct bd_inflate *z, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(z->why, sizeof z->why, fmt, ap);
    va_end(ap);
    z->err = err;
    return err;
}

struct bd_inflate *bd_inflate_new(size_t max_out, int *err)
{
    struct bd_inflate *z = calloc(1, sizeof *z);

    if (z == NULL)
        goto fail_alloc;
    z->max_out = max_out;
    /* zalloc/zfree/opaque are Z_NULL (calloc): zlib's malloc/free. */
    if (inflateInit2(&z->strm, INFLATE_WINDOW_BITS) != Z_OK)
        goto fail_zlib;
    if (inflateGetHeader(&z->strm, &z->head) != Z_OK)
        goto fail_header;
    if (err != NULL)
        *err = BD_OK;
    return z;

fail_header:
    inflateEnd(&z->strm);
fail_zlib:
    free(z);
fail_alloc:
    if (err != NULL)
        *err = BD_ENOMEM;
    return NULL;
}

/* Start the next member after the end of the last one. inflateReset forgets the header
 * record, so it is given again (extra/name/comment stay NULL: zlib skips them, no copy). */
static int inflate_next_member(struct bd_inflate *z)
{
    if (z->members > 0) {
        if (inflateReset(&z->strm) != Z_OK)
            return inflate_fail(z, BD_EINTERNAL, "zlib refused to reset its stream");
        memset(&z->head, 0, sizeof z->head);
        if (inflateGetHeader(&z->strm, &z->head) != Z_OK)
            return inflate_fail(z, BD_EINTERNAL, "zlib refused its header record");
    }
    z->is_in_member = true;
    return BD_OK;
}

/* Pass n bytes of z->out to cb, cut at max_out. */
static int inflate_deliver(struct bd_inflate *z, size_t n, bd_inflate_data_cb cb, void *arg)
{
    size_t room = z->max_out - z->total_out;
    size_t give = n < room ? n : room;
    int rc = BD_OK;

    if (give > 0) {
        z->is_in_cb = true;
        rc = cb(arg, (const char *)z->out, give);
        z->is_in_cb = false;
        z->total_out += give;
    }
    if (rc < 0)
        return inflate_fail(z, rc, "the inflated body was refused by its reader (%s)",
                            bd_err_name(rc));
    if (n > room)
        return inflate_fail(z, BD_ETOOLARGE, "inflated body is larger than %zu bytes",
                            z->max_out);
    return BD_OK;
}

/* zlib refused the data (Z_DATA_ERROR): say where, in the client's terms. */
static int inflate_fail_data(struct bd_inflate *z)
{
    const char *msg = z->strm.msg != NULL ? z->strm.msg : "invalid data";

    if (z->head.done == 1)
        return inflate_fail(z, BD_EINVAL, "gzip member %u: %s", z->members + 1, msg);
    if (z->members == 0)
        return inflate_fail(z, BD_EINVAL, "not a gzip body: %s", msg);
    return inflate_fail(z, BD_EINVAL, "data after gzip member %u is not a gzip member: %s",
                        z->members, msg);
}

int bd_inflate_feed_some(struct bd_inflate *z, const void *in, size_t len, size_t out_budget,
                         size_t *used, bd_inflate_data_cb cb, void *arg)
{
    const unsigned char *p = in;
    size_t left = len;
    size_t given = 0;                  /* bytes passed to cb in this call */
    int rc = BD_OK;

    assert(!z->is_in_cb && "bd_inflate_feed from inside its own callback");
    assert(out_budget > 0);
    assert(in != NULL || len == 0);
    z->is_again = false;
    *used = 0;
    if (z->err < 0)
        return z->err;

    for (;;) {
        if (left == 0 && !z->is_pending)
            break;
        if (!z->is_in_member) {
            /* Between members, pending output is impossible: Z_STREAM_END comes only
             * after the member's last byte was written out. So left > 0 here. */
            rc = inflate_next_member(z);
            if (rc < 0)
                break;
        }
        if (given == out_budget) {
            z->is_again = true;
            rc = BD_INFLATE_AGAIN;
            break;
        }

        size_t room = out_budget - given < BD_INFLATE_CHUNK ? out_budget - given
                                                            : BD_INFLATE_CHUNK;
        uInt take = left < UINT_MAX ? (uInt)left : UINT_MAX;
        z->strm.next_in = (Bytef *)p;  /* zlib does not write through next_in */
        z->strm.avail_in = take;
        z->strm.next_out = z->out;
        z->strm.avail_out = (uInt)room;
        int zrc = inflate(&z->strm, Z_NO_FLUSH);
        size_t consumed = take - z->strm.avail_in;
        size_t n = room - z->strm.avail_out;
        p += consumed;
        left -= consumed;
        z->is_pending = z->strm.avail_out == 0 && zrc != Z_STREAM_END;

        /* Output made before an error is delivered too: it is what the input said up to
         * there, and the error still reaches the caller (the header says output is
         * provisional until end). */
        if (n > 0) {
            given += n;
            rc = inflate_deliver(z, n, cb, arg);
            if (rc < 0)
                break;
        }
        if (zrc == Z_OK)
            continue;
        if (zrc == Z_STREAM_END) {
            z->members++;
            z->is_in_member = false;
            continue;
        }
        if (zrc == Z_BUF_ERROR && left == 0) {
            /* No progress possible: zlib wants more input. Nothing is pending. */
            z->is_pending = false;
            continue;
        }
        if (zrc == Z_DATA_ERROR || zrc == Z_NEED_DICT)
            rc = inflate_fail_data(z);
        else if (zrc == Z_MEM_ERROR)
            rc = inflate_fail(z, BD_ENOMEM, "zlib is out of memory");
        else
            rc = inflate_fail(z, BD_EINTERNAL, "zlib inflate failed (%d)", zrc);
        break;
    }
    *used = len - left;
    return rc;
}

int bd_inflate_feed(struct bd_inflate *z, const void *in, size_t len, bd_inflate_data_cb cb,
                    void *arg)
{
    size_t used;
    int rc = bd_inflate_feed_some(z, in, len, SIZE_MAX, &used, cb, arg);

    assert(rc != BD_INFLATE_AGAIN);    /* a budget of SIZE_MAX bytes is never reached */
    return rc;
}

int bd_inflate_end(struct bd_inflate *z)
{
    assert(!z->is_in_cb);
    assert(!z->is_again && "bd_inflate_end while feed_some has output waiting");
    if (z->err < 0)
        return z->err;
    if (z->is_in_member) {
        if (z->members > 0 && z->head.done != 1)
            return inflate_fail(z, BD_EINVAL,
                                "%lu bytes after gzip member %u do not make a gzip member",
                                z->strm.total_in, z->members);
        return inflate_fail(z, BD_EINVAL, "gzip body ends inside member %u (truncated)",
                            z->members + 1);
    }
    if (z->members == 0)
        return inflate_fail(z, BD_EINVAL, "empty body: no gzip member");
    return BD_OK;
}

const char *bd_inflate_why(const struct bd_inflate *z)
{
    return z->why;
}

size_t bd_inflate_total_out(const struct bd_inflate *z)
{
    return z->total_out;
}

unsigned bd_inflate_members(const struct bd_inflate *z)
{
    return z->members;
}

void bd_inflate_free(struct bd_inflate *z)
{
    if (z == NULL)
        return;
    assert(!z->is_in_cb && "bd_inflate_free from inside its own callback");
    inflateEnd(&z->strm);
    free(z);
}
