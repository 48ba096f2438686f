/* bench_common.c -- buffer, clock, deterministic data, percentiles and argument helpers
 * shared by the bench tools. Bench code only; see bench_common.h.
 * SPDX-License-Identifier: MIT
 */
#include "bench_common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void *bb_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", n);
        exit(3);
    }
    return p;
}

void *bb_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", n);
        exit(3);
    }
    return q;
}

char *bb_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(bb_xmalloc(n), s, n);
}

void bb_reserve(struct bb_buf *b, size_t extra)
{
    if (b->cap - b->len > extra)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len <= extra)
        cap *= 2;
    b->p = bb_xrealloc(b->p, cap);
    b->cap = cap;
}

void bb_put(struct bb_buf *b, const void *s, size_t n)
{
    bb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void bb_puts(struct bb_buf *b, const char *s)
{
    bb_put(b, s, strlen(s));
}

void bb_printf(struct bb_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    bb_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void bb_free(struct bb_buf *b)
{
    free(b->p);
    *b = (struct bb_buf){0};
}

uint64_t bb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

double bb_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bb_rng_seed_job(struct bb_rng *r, uint32_t seed, unsigned job)
{
    r->s = (seed + 0x9E3779B9u * (uint32_t)(job + 1)) | 1u;
}

uint32_t bb_rng_next(struct bb_rng *r)
{
    uint32_t x = r->s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    r->s = x;
    return x;
}

int32_t bb_rng_component(struct bb_rng *r)
{
    return (int32_t)(bb_rng_next(r) % 2000001u) - 1000000;
}

void bb_put_component(struct bb_buf *b, int32_t k)
{
    char tmp[16];
    char *p = tmp;
    uint32_t a = k < 0 ? (uint32_t)(-k) : (uint32_t)k;
    uint32_t frac = a % 1000000u;

    if (k < 0)
        *p++ = '-';
    *p++ = (char)('0' + a / 1000000u);
    *p++ = '.';
    for (int i = 5; i >= 0; i--) {
        p[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    p += 6;
    bb_put(b, tmp, (size_t)(p - tmp));
}

void bb_put_item_id(struct bb_buf *b, unsigned job, unsigned item)
{
    bb_printf(b, "j%u-%u", job, item);
}

void bb_put_embed_text(struct bb_buf *b, const char *nonce, unsigned job, unsigned item)
{
    bb_printf(b, "bench %s job %u item %u: the quick brown fox jumps over the lazy dog", nonce,
              job, item);
}

void bb_lat_add(struct bb_lat *l, double ms)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = bb_xrealloc(l->v, l->cap * sizeof(float));
    }
    l->v[l->n++] = (float)ms;
    l->is_sorted = false;
}

static int lat_cmp(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

double bb_lat_quantile(struct bb_lat *l, double q)
{
    if (l->n == 0)
        return 0;
    if (!l->is_sorted) {
        qsort(l->v, l->n, sizeof(float), lat_cmp);
        l->is_sorted = true;
    }
    /* Nearest rank: the smallest value with at least q of the samples at or below it. */
    size_t rank = (size_t)(q * (double)l->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > l->n)
        rank = l->n;
    return l->v[rank - 1];
}

void bb_lat_free(struct bb_lat *l)
{
    free(l->v);
    *l = (struct bb_lat){0};
}

double bb_arg_num(const char *opt, const char *v, double min, double max)
{
    char *end;
    double d = v ? strtod(v, &end) : 0;
    if (v == NULL || end == v || *end != '\0' || d < min || d > max) {
        fprintf(stderr, "bench: %s: expected a number in [%g, %g], got '%s'\n", opt, min, max,
                v ? v : "");
        exit(2);
    }
    return d;
}

void bb_parse_base(const char *url, char *host, size_t host_len, int *port)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    const char *colon = strchr(p, ':');
    const char *slash = strchr(p, '/');
    if (colon == NULL || (slash && slash < colon) || (size_t)(colon - p) >= host_len) {
        fprintf(stderr, "bench: '%s': expected http://127.0.0.1:PORT\n", url);
        exit(2);
    }
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    if (strcmp(host, "localhost") == 0)
        snprintf(host, host_len, "127.0.0.1");
    /* Loopback only: load is never sent to another machine. */
    if (strncmp(host, "127.", 4) != 0) {
        fprintf(stderr, "bench: '%s': only loopback (127.0.0.0/8) targets are allowed\n", url);
        exit(2);
    }
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end != '\0' && *end != '/') || v < 1 || v > 65535) {
        fprintf(stderr, "bench: '%s': bad port\n", url);
        exit(2);
    }
    *port = (int)v;
}

/* ---- /proc ------------------------------------------------------------------------------ */

long bb_proc_status_kb(int pid, const char *key)
{
    char path[64], line[256];
    size_t klen = strlen(key);
    long v = -1;

    if (pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

void bb_proc_reset_hwm(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/clear_refs", pid);
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs("5", f) < 0)
        fprintf(stderr, "bench: cannot reset the peak RSS of pid %d\n", pid);
    if (f)
        fclose(f);
}
