/* random_id.c -- random hex ids (random_id.h).  SPDX-License-Identifier: MIT */
#include "batchd/random_id.h"

#include "batchd/error.h"

#include <stdint.h>
#include <stdio.h>
#include <uv.h>

int bd_random_hex(char *out, size_t nbytes)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char r[64];
    int rc;

    if (nbytes > sizeof(r)) {
        out[0] = '\0';
        return BD_EINVAL;
    }
    rc = uv_random(NULL, NULL, r, nbytes, 0, NULL);       /* getrandom(2): no wait */
    if (rc < 0) {
        out[0] = '\0';
        return rc;
    }
    for (size_t i = 0; i < nbytes; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[2 * nbytes] = '\0';
    return BD_OK;
}

void bd_random_hex_or_clock(char *out, size_t nbytes)
{
    static uint64_t counter;
    char clock[40];
    size_t n;

    if (bd_random_hex(out, nbytes) == BD_OK)
        return;
    n = (size_t)snprintf(clock, sizeof(clock), "%016llx%016llx",
                         (unsigned long long)uv_hrtime(), (unsigned long long)++counter);
    for (size_t i = 0; i < 2 * nbytes; i++)   /* the clock's low digits first */
        out[i] = clock[(n - 1 - i % n)];
    out[2 * nbytes] = '\0';
}
