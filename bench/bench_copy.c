/* bench_copy.c -- the insert ceilings: the same rows batchd writes, straight into an empty
 * table shaped like `vectors`, with COPY.
 *
 *   bench_copy --conninfo URL --table T --format binary [rows options]   timed binary COPY
 *   bench_copy --format text --out FILE [rows options]                   text COPY file
 *
 * Rows options: --jobs J --items N --dim D --seed S --collection C, the same generator as
 * bench_jobs (bench_common.h), so job j's item i has the same id and the same float4
 * vector. Columns: (collection, id, embedding, job_id, item_index); metadata and the
 * timestamps take their defaults, as in batchd's upsert. The binary payload is encoded with
 * batchd's own encoder (bd_pg_copy_*) before the clock starts, so the figure is what
 * PostgreSQL can ingest over one connection, and it is sent as one COPY in one transaction
 * with blocking libpq (fine in a bench tool). The text file is timed by bench/run.sh
 * around `psql -c "\copy T (...) FROM FILE"`.
 *
 * Prints one JSON object on stdout. Bench code only.  SPDX-License-Identifier: MIT
 */
#include "bench_common.h"

#include "batchd/buf.h"
#include "batchd/pg_store.h"

#include <getopt.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COPY_CHUNK (1u << 20)

struct rows {
    unsigned jobs, items, dim;
    uint32_t seed;
    const char *collection;
};

static int write_text(const struct rows *r, const char *path)
{
    FILE *f = fopen(path, "w");
    struct bb_buf b = {0};

    if (f == NULL) {
        perror(path);
        return 1;
    }
    for (unsigned j = 0; j < r->jobs; j++) {
        struct bb_rng rng;
        bb_rng_seed_job(&rng, r->seed, j);
        for (unsigned i = 0; i < r->items; i++) {
            b.len = 0;
            bb_printf(&b, "%s\t", r->collection);
            bb_put_item_id(&b, j, i);
            bb_put(&b, "\t{", 2);
            for (unsigned k = 0; k < r->dim; k++) {
                if (k)
                    bb_put(&b, ",", 1);
                bb_put_component(&b, bb_rng_component(&rng));
            }
            bb_printf(&b, "}\tbench_j%u\t%u\n", j, i);
            fwrite(b.p, 1, b.len, f);
        }
    }
    bb_free(&b);
    return fclose(f) == 0 ? 0 : 1;
}

static int encode_binary(const struct rows *r, struct bd_buf *cb)
{
    float *v = bb_xmalloc(r->dim * sizeof(float));
    char id[64], job[32];

    bd_buf_init(cb);
    bd_pg_copy_begin(cb);
    for (unsigned j = 0; j < r->jobs; j++) {
        struct bb_rng rng;
        bb_rng_seed_job(&rng, r->seed, j);
        int jl = snprintf(job, sizeof(job), "bench_j%u", j);
        for (unsigned i = 0; i < r->items; i++) {
            /* k / 1e6 as a double, then to float: what strtod + (float) gives for "I.DDDDDD". */
            for (unsigned k = 0; k < r->dim; k++)
                v[k] = (float)((double)bb_rng_component(&rng) / 1e6);
            int il = snprintf(id, sizeof(id), "j%u-%u", j, i);
            bd_pg_copy_row(cb, 5);
            bd_pg_copy_text(cb, r->collection, strlen(r->collection));
            bd_pg_copy_text(cb, id, (size_t)il);
            bd_pg_copy_float4_array(cb, v, r->dim);
            bd_pg_copy_text(cb, job, (size_t)jl);
            bd_pg_copy_int4(cb, (int32_t)i);
        }
    }
    free(v);
    return bd_pg_copy_end(cb);
}

static int copy_binary(const struct rows *r, const char *conninfo, const char *table)
{
    struct bd_buf cb;
    char sql[256];
    PGresult *res;

    if (encode_binary(r, &cb) < 0) {
        fprintf(stderr, "bench_copy: encoding failed\n");
        return 1;
    }
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "bench_copy: %s", PQerrorMessage(pg));
        return 1;
    }
    snprintf(sql, sizeof(sql),
             "COPY %s (collection, id, embedding, job_id, item_index) FROM STDIN "
             "WITH (FORMAT binary)", table);

    uint64_t t0 = bb_now_ns();
    res = PQexec(pg, sql);
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        fprintf(stderr, "bench_copy: %s", PQerrorMessage(pg));
        return 1;
    }
    PQclear(res);
    for (size_t off = 0; off < cb.len; off += COPY_CHUNK) {
        size_t n = cb.len - off < COPY_CHUNK ? cb.len - off : COPY_CHUNK;
        if (PQputCopyData(pg, cb.data + off, (int)n) != 1) {
            fprintf(stderr, "bench_copy: %s", PQerrorMessage(pg));
            return 1;
        }
    }
    if (PQputCopyEnd(pg, NULL) != 1) {
        fprintf(stderr, "bench_copy: %s", PQerrorMessage(pg));
        return 1;
    }
    int rc = 0;
    while ((res = PQgetResult(pg)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            fprintf(stderr, "bench_copy: %s", PQresultErrorMessage(res));
            rc = 1;
        }
        PQclear(res);
    }
    double s = (double)(bb_now_ns() - t0) / 1e9;
    unsigned long long rows = (unsigned long long)r->jobs * r->items;
    if (rc == 0)
        printf("{\"label\":\"copy_binary\",\"rows\":%llu,\"dim\":%u,\"bytes\":%zu,"
               "\"total_s\":%.3f,\"items_per_s\":%.1f}\n",
               rows, r->dim, cb.len, s, s > 0 ? (double)rows / s : 0.0);
    PQfinish(pg);
    bd_buf_free(&cb);
    return rc;
}

int main(int argc, char **argv)
{
    struct rows r = { 1, 1000, 768, 42, "bench" };
    const char *conninfo = NULL, *table = "bench_copy", *format = "binary", *out = NULL;
    static const struct option opts[] = {
        { "conninfo", required_argument, NULL, 'c' }, { "table", required_argument, NULL, 't' },
        { "format", required_argument, NULL, 'f' }, { "out", required_argument, NULL, 'o' },
        { "jobs", required_argument, NULL, 'j' }, { "items", required_argument, NULL, 'n' },
        { "dim", required_argument, NULL, 'D' }, { "seed", required_argument, NULL, 's' },
        { "collection", required_argument, NULL, 'C' }, { "help", no_argument, NULL, 'h' },
        { 0, 0, 0, 0 },
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': conninfo = optarg; break;
        case 't': table = optarg; break;
        case 'f': format = optarg; break;
        case 'o': out = optarg; break;
        case 'j': r.jobs = (unsigned)bb_arg_num("--jobs", optarg, 1, 1e7); break;
        case 'n': r.items = (unsigned)bb_arg_num("--items", optarg, 1, 1e8); break;
        case 'D': r.dim = (unsigned)bb_arg_num("--dim", optarg, 1, 65536); break;
        case 's': r.seed = (uint32_t)bb_arg_num("--seed", optarg, 0, 4294967295.0); break;
        case 'C': r.collection = optarg; break;
        default:
            fprintf(stderr, "usage: bench_copy --format binary --conninfo URL --table T | "
                            "--format text --out FILE; rows: --jobs --items --dim --seed "
                            "--collection\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (strcmp(format, "text") == 0 && out)
        return write_text(&r, out);
    if (strcmp(format, "binary") == 0 && conninfo)
        return copy_binary(&r, conninfo, table);
    fprintf(stderr, "bench_copy: need --format text --out FILE or --format binary "
                    "--conninfo URL\n");
    return 2;
}
