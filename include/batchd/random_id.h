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

#endif
