/* bench_common.h -- what the bench tools share: a growing byte buffer, the clock, the
 * deterministic data generator, percentiles and a tiny argument helper.
 *
 * Bench code only (never linked into batchd). The generator is the contract between the
 * tools: bench_jobs (JSON job bodies), bench_copy (binary and text COPY rows) and the
 * BullMQ peer (bench/peers/bullmq/common.js, a line-for-line port) must produce the same
 * rows from the same seed, so every ceiling and peer writes exactly what batchd writes.
 * SPDX-License-Identifier: MIT
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- buffer: aborts on out of memory (a bench tool has nothing better to do) ---------- */
struct bb_buf {
    char *p;
    size_t len;
    size_t cap;
};

void bb_reserve(struct bb_buf *b, size_t extra);
void bb_put(struct bb_buf *b, const void *s, size_t n);
void bb_puts(struct bb_buf *b, const char *s);
void bb_printf(struct bb_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bb_free(struct bb_buf *b);
void *bb_xmalloc(size_t n);
void *bb_xrealloc(void *p, size_t n);
char *bb_xstrdup(const char *s);

/* ---- time ---------------------------------------------------------------------------- */
uint64_t bb_now_ns(void);                    /* CLOCK_MONOTONIC, same clock as uv_hrtime */
double bb_wall_s(void);                      /* CLOCK_REALTIME seconds (for other processes) */

/* ---- data generator -------------------------------------------------------------------
 * Job j (0-based) of a run with seed S draws from xorshift32 seeded with
 * (S + 0x9E3779B9 * (j + 1)) | 1. Each vector component is k / 1e6 with
 * k = next() % 2000001 - 1000000, printed as [-]I.DDDDDD (exactly representable in
 * decimal, so text and binary COPY and JSON all store the same float4). Item i of job j
 * has the id "j<j>-<i>". */
struct bb_rng {
    uint32_t s;
};

void bb_rng_seed_job(struct bb_rng *r, uint32_t seed, unsigned job);
uint32_t bb_rng_next(struct bb_rng *r);
int32_t bb_rng_component(struct bb_rng *r);  /* k in [-1000000, 1000000] */
void bb_put_component(struct bb_buf *b, int32_t k);   /* "[-]I.DDDDDD" */
void bb_put_item_id(struct bb_buf *b, unsigned job, unsigned item);
/* The text of item i of job j for bulk_embed: unique per nonce, ~70 characters. */
void bb_put_embed_text(struct bb_buf *b, const char *nonce, unsigned job, unsigned item);

/* ---- latency statistics ---------------------------------------------------------------- */
struct bb_lat {
    float *v;                                /* milliseconds */
    size_t n;
    size_t cap;
    bool is_sorted;
};

void bb_lat_add(struct bb_lat *l, double ms);
/* Sorts in place; q in [0, 1]; 0 when empty. */
double bb_lat_quantile(struct bb_lat *l, double q);
void bb_lat_free(struct bb_lat *l);

/* ---- command line ---------------------------------------------------------------------- */
/* Parses a non-negative number or dies with a message naming the option. */
double bb_arg_num(const char *opt, const char *v, double min, double max);
/* "http://127.0.0.1:8000" (path ignored) -> host and port; dies when it is not loopback
 * http: the bench never sends traffic anywhere else. */
void bb_parse_base(const char *url, char *host, size_t host_len, int *port);

/* ---- /proc ------------------------------------------------------------------------------ */
/* A "Key:   N kB" line of /proc/<pid>/status (VmRSS, VmHWM), in KiB; -1 when unreadable. */
long bb_proc_status_kb(int pid, const char *key);
/* Reset the process's peak RSS (VmHWM) to its current RSS (clear_refs 5); says so on stderr
 * when it cannot. */
void bb_proc_reset_hwm(int pid);

#endif
