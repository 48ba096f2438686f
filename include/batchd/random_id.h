/* random_id.h -- the one source of random ids: lowercase hex of bytes from the system's
 * random source (getrandom(2) through uv_random, never waiting). File, batch and request
 * ids, rebuild tokens and the default worker id's suffix. Any thread.
 */
#ifndef BATCHD_RANDOM_ID_H
#define BATCHD_RANDOM_ID_H

#include <stddef.h>

/* 2 * nbytes hex digits of random bytes, NUL-terminated, into out (2 * nbytes + 1 bytes).
 * BD_OK, or the error of uv_random (out is then "" ). */
int bd_random_hex(char *out, size_t nbytes);

/* bd_random_hex for ids that need only differ within this process and from run to run
 * (request ids, rebuild tokens, the worker id's suffix): when the random source fails
 * (a sandbox without getrandom), hex of the monotonic clock and a counter instead. Never
 * fails; nbytes at most 64. */
void bd_random_hex_or_clock(char *out, size_t nbytes);

#endif
