/* it_stream.c -- streamed submits end to end (real batchd, Redis, PostgreSQL): JSON Lines
 * bodies uploaded chunked as they are generated, gzip, a big body in bounded memory, bad
 * input mid-stream (400 naming the line, nothing stored), a client that leaves mid-upload
 * (nothing stored), a gzip bomb (413), and a gzip JSON body.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <zlib.h>

#include "bd_it.h"
#include "batchd/buf.h"

static const char *it_config =
    "jobs:\n"
    "  max_concurrent_jobs: 2\n"
    "  processing_interval: 0.1\n"
    "  retry_delay: 0.05\n"
    "  lease: 5\n"
    "  reaper_interval: 0.5\n"
    "models:\n"
    "  - name: hashmodel\n"
    "    provider: hashing\n"
    "    dimensions: 16\n";

static char it_prefix[64];
static struct bd_it_proc it_proc;
static bool it_started;

/* ---- a body generated as curl asks for it ----------------------------------------------- */

enum gen_kind { GEN_EMBED, GEN_INSERT };

struct gen {
    enum gen_kind kind;
    size_t lines, next;               /* lines to make, next to make */
    size_t bad_line;                  /* 0-based line given a wrong dimension; SIZE_MAX: none */
    unsigned dim;
    size_t abort_after;               /* bytes sent before the client goes away; 0: never */
    size_t sent;
    bool is_gzip;
    z_stream z;
    bool is_z_done;
    struct bd_buf out;                /* bytes ready to hand to curl */
    size_t out_pos;
    size_t pad;                       /* text padding per embed line (a bigger body) */
    const char *head, *tail;          /* a JSON body: items joined by ',' between these */
};

static void gen_line(struct gen *g, struct bd_buf *b)
{
    size_t i = g->next++;
    const char *end = g->head ? "" : "\n";
    if (g->head && i == 0)
        bd_buf_puts(b, g->head);
    else if (g->head)
        bd_buf_puts(b, ",\n ");
    if (g->kind == GEN_EMBED) {
        bd_buf_printf(b, "{\"id\":\"%s-%zu\",\"text\":\"document %zu ", it_prefix, i, i);
        for (size_t k = 0; k < g->pad; k++)
            bd_buf_append(b, "lorem ", 6);
        bd_buf_printf(b, "\"}%s", end);
        if (i % 1000 == 7 && !g->head)
            bd_buf_puts(b, "\r\n \n");        /* blank lines are skipped, CRLF accepted */
    } else {
        unsigned d = i == g->bad_line ? g->dim + 1 : g->dim;
        bd_buf_printf(b, "{\"id\":\"v%zu\",\"embedding\":[", i);
        for (unsigned k = 0; k < d; k++)
            bd_buf_printf(b, "%s%.3f", k ? "," : "", (double)((i + k) % 97) / 97.0);
        bd_buf_printf(b, "],\"metadata\":{\"n\":1}}%s", end);
    }
    if (g->tail && g->next == g->lines)
        bd_buf_puts(b, g->tail);
}

/* Refill g->out with the next piece of the body (compressed when is_gzip). */
static void gen_fill(struct gen *g)
{
    struct bd_buf plain;
    bd_buf_init(&plain);
    bd_buf_reset(&g->out);
    g->out_pos = 0;
    while (plain.len < 64 * 1024 && g->next < g->lines)
        gen_line(g, &plain);
    if (!g->is_gzip) {
        bd_buf_append(&g->out, plain.data, plain.len);
    } else if (!g->is_z_done && plain.len > 0 && g->next < g->lines) {
        /* Compress this piece; the output may be empty for now (deflate buffers), which
         * is why gen_read asks again until it has bytes or the stream ended. */
        g->z.next_in = (unsigned char *)plain.data;
        g->z.avail_in = (unsigned)plain.len;
        unsigned char buf[16384];
        do {
            g->z.next_out = buf;
            g->z.avail_out = sizeof(buf);
            assert_true(deflate(&g->z, Z_NO_FLUSH) != Z_STREAM_ERROR);
            bd_buf_append(&g->out, buf, sizeof(buf) - g->z.avail_out);
        } while (g->z.avail_out == 0);
    } else if (!g->is_z_done) {
        bool is_last = g->next >= g->lines;
        unsigned char buf[16384];
        g->z.next_in = (unsigned char *)plain.data;
        g->z.avail_in = (unsigned)plain.len;
        do {
            g->z.next_out = buf;
            g->z.avail_out = sizeof(buf);
            int rc = deflate(&g->z, is_last ? Z_FINISH : Z_NO_FLUSH);
            assert_true(rc != Z_STREAM_ERROR);
            bd_buf_append(&g->out, buf, sizeof(buf) - g->z.avail_out);
            if (rc == Z_STREAM_END)
                g->is_z_done = true;
        } while (g->z.avail_out == 0 || (is_last && !g->is_z_done));
    }
    bd_buf_free(&plain);
}

static size_t gen_read(char *dst, size_t size, size_t nmemb, void *arg)
{
    struct gen *g = arg;
    size_t room = size * nmemb;

    if (g->abort_after && g->sent >= g->abort_after)
        return CURL_READFUNC_ABORT;
    while (g->out_pos == g->out.len && !(g->is_gzip ? g->is_z_done : g->next >= g->lines))
        gen_fill(g);                           /* 0 bytes would tell curl the body ended */
    size_t n = g->out.len - g->out_pos;
    if (n > room)
        n = room;
    if (n == 0)
        return 0;                              /* everything was sent: the end */
    memcpy(dst, g->out.data + g->out_pos, n);
    g->out_pos += n;
    g->sent += n;
    return n;                                  /* 0 once everything was sent: the end */
}

static size_t gen_collect(char *p, size_t size, size_t nmemb, void *arg)
{
    bd_buf_append(arg, p, size * nmemb);
    return size * nmemb;
}

/* POST a generated body to /jobs?query, chunked; the answer's status, its JSON in *out. */
static long gen_post(struct gen *g, const char *query, const char *content_type, json_t **out)
{
    char url[512], ct[96];
    struct curl_slist *h = NULL;
    struct bd_buf resp;
    long status = 0;

    bd_buf_init(&g->out);
    bd_buf_init(&resp);
    if (g->is_gzip)
        assert_int_equal(deflateInit2(&g->z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY),
                         Z_OK);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs?%s", it_proc.base, query);
    snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
    h = curl_slist_append(h, ct);
    h = curl_slist_append(h, "Transfer-Encoding: chunked");
    if (g->is_gzip)
        h = curl_slist_append(h, "Content-Encoding: gzip");
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, gen_read);
    curl_easy_setopt(c, CURLOPT_READDATA, g);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, gen_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    if (g->is_gzip)
        deflateEnd(&g->z);
    bd_buf_free(&g->out);
    if (out)
        *out = resp.len ? json_loadb(resp.data, resp.len, 0, NULL) : NULL;
    bd_buf_free(&resp);
    return status;
}

/* POST len bytes (binary safe, Content-Length) to url; the answer's body into resp (the
 * caller's, initialised). Returns the status, 0 when no answer came. */
static long post_bytes(const char *url, const char *content_type, bool is_gzip,
                       const void *data, size_t len, struct bd_buf *resp)
{
    char ct[96];
    long status = 0;
    CURL *c = curl_easy_init();
    struct curl_slist *hl = NULL;

    snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
    hl = curl_slist_append(hl, ct);
    if (is_gzip)
        hl = curl_slist_append(hl, "Content-Encoding: gzip");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, gen_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hl);
    return status;
}

/* batchd's peak resident memory so far (VmHWM), KiB. */
static long it_hwm_kb(void)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)it_proc.pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

/* Assert that batchd's peak RSS grew by less than limit_kb since before_kb. */
static void it_assert_grew_less(long before_kb, long limit_kb, const char *what)
{
    long grew_kb = it_hwm_kb() - before_kb;
    print_message("%s: batchd's peak RSS grew by %ld KiB\n", what, grew_kb);
    if (BD_IT_RSS_IS_MEANINGFUL && grew_kb >= limit_kb)
        fail_msg("%s: peak RSS grew by %ld KiB, limit %ld KiB", what, grew_kb, limit_kb);
}

static void it_need_batchd(void)
{
    if (!it_started) {
        assert_int_equal(bd_it_start(&it_proc, it_config, NULL), 0);
        it_started = true;
    }
}

/* A batchd of its own for a memory measurement: its peak so far is its start's. */
static void it_fresh_batchd(void)
{
    if (it_started)
        assert_int_equal(bd_it_stop(&it_proc, SIGTERM, 20), 0);
    it_started = false;
    it_need_batchd();
}

static long it_jobs_of(const char *coll)
{
    return bd_it_psql_long("SELECT count(*) FROM jobs WHERE collection = '%s'", coll);
}

/* A gauge's value from batchd's /metrics (-1 when missing). */
static long it_gauge(const char *name)
{
    char url[256], needle[128];
    struct bd_it_resp r;
    long n = -1;
    snprintf(url, sizeof(url), "%s/metrics", it_proc.base);
    snprintf(needle, sizeof(needle), "\n%s ", name);
    if (bd_it_http("GET", url, NULL, NULL, &r) == 0 && r.body) {
        const char *p = strstr(r.body, needle);
        if (p)
            n = strtol(p + strlen(needle), NULL, 10);
    }
    bd_it_resp_free(&r);
    return n;
}

/* body_a with its Idempotency-Key (in headers) is a new job (202); body_a again is the same
 * job (200, idempotent_replay); body_b with the key is 409; one job in coll in all. */
static void it_check_key_replay(const char *url, const char *const *headers,
                                const char *body_a, const char *body_b, const char *coll)
{
    struct bd_it_resp r;

    assert_int_equal(bd_it_http("POST", url, body_a, headers, &r), 0);
    if (r.status != 202)
        fail_msg("first: %ld %s", r.status, r.body);
    json_t *first = json_loads(r.body, 0, NULL);
    bd_it_resp_free(&r);
    assert_int_equal(bd_it_http("POST", url, body_a, headers, &r), 0);
    if (r.status != 200)
        fail_msg("replay: %ld %s", r.status, r.body);
    json_t *again = json_loads(r.body, 0, NULL);
    bd_it_resp_free(&r);
    assert_string_equal(bd_it_str(again, "job_id"), bd_it_str(first, "job_id"));
    assert_true(json_is_true(bd_it_at(again, "idempotent_replay")));
    assert_int_equal(bd_it_http("POST", url, body_b, headers, &r), 0);
    assert_int_equal(r.status, 409);
    bd_it_resp_free(&r);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE collection = '%s'", coll),
                     1);
    json_decref(first);
    json_decref(again);
}

static void it_cancel(const char *id)
{
    char path[256];
    long st;
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s", id);
    json_decref(bd_it_json(&it_proc, "DELETE", path, NULL, &st));
}

/* ---- cases ------------------------------------------------------------------------------ */

static void stream_embeds_json_lines_when_uploaded_chunked(void **state)
{
    struct gen g = { .kind = GEN_EMBED, .lines = 2500, .bad_line = SIZE_MAX };
    char q[256], coll[96];
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_nd", it_prefix);
    snprintf(q, sizeof(q), "operation=bulk_embed&model=hashmodel&collection=%s&batch_size=100"
             "&priority=high", coll);
    long st = gen_post(&g, q, "application/x-ndjson", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    assert_int_equal(bd_it_int(j, "items_count"), 2500);
    assert_int_equal(bd_it_int(j, "batch_size"), 100);
    assert_string_equal(bd_it_str(j, "priority"), "high");
    assert_non_null(bd_it_str(j, "estimated_completion"));
    char *id = strdup(bd_it_str(j, "job_id"));
    json_decref(j);
    assert_int_equal(bd_it_psql_long("SELECT total_batches FROM jobs WHERE id = '%s'", id), 25);
    json_decref(bd_it_expect_status(&it_proc, id, "completed", 60));
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'",
                                     coll), 2500);
    /* Items keep their ids and order. */
    assert_int_equal(bd_it_psql_long("SELECT item_index FROM vectors WHERE collection = '%s' "
                                     "AND id = '%s-1234'", coll, it_prefix), 1234);
    free(id);
}

static void stream_inserts_gzip_json_lines_when_compressed(void **state)
{
    struct gen g = { .kind = GEN_INSERT, .lines = 3000, .dim = 8, .bad_line = SIZE_MAX,
                     .is_gzip = true };
    char q[256], coll[96];
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_gz", it_prefix);
    snprintf(q, sizeof(q), "operation=bulk_insert&collection=%s&batch_size=500", coll);
    long st = gen_post(&g, q, "application/jsonl", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    char *id = strdup(bd_it_str(j, "job_id"));
    json_decref(j);
    json_decref(bd_it_expect_status(&it_proc, id, "completed", 60));
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s' "
                                     "AND array_length(embedding, 1) = 8", coll), 3000);
    free(id);
}

/* Item 70,000 of 100,000 has a wrong dimension: 400 naming its line, and nothing of the
 * job is stored although 69,999 items were already written in its transaction. */
static void stream_rolls_back_when_item_is_bad_mid_stream(void **state)
{
    struct gen g = { .kind = GEN_INSERT, .lines = 100000, .dim = 4, .bad_line = 69999 };
    char q[256], coll[96];
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_bad", it_prefix);
    snprintf(q, sizeof(q), "operation=bulk_insert&collection=%s&batch_size=1000", coll);
    long st = gen_post(&g, q, "application/x-ndjson", &j);
    assert_int_equal(st, 400);
    const char *msg = bd_it_str(j, "error.message");
    if (strstr(msg, "line 70000") == NULL || strstr(msg, "dimensions") == NULL)
        fail_msg("message does not name the line and the problem: %s", msg);
    assert_string_equal(bd_it_str(j, "error.field"), "data[69999].embedding");
    json_decref(j);
    assert_int_equal(it_jobs_of(coll), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches b WHERE NOT EXISTS "
                                     "(SELECT 1 FROM jobs j WHERE j.id = b.job_id)"), 0);
    /* The server is fine for the next request. */
    json_decref(bd_it_get_ok(&it_proc, "/api/v1/batch/queue/status"));
}

static void stream_stores_nothing_when_client_leaves_mid_upload(void **state)
{
    struct gen g = { .kind = GEN_INSERT, .lines = 100000, .dim = 4, .bad_line = SIZE_MAX,
                     .abort_after = 3u << 20 };
    char q[256], coll[96];
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_gone", it_prefix);
    snprintf(q, sizeof(q), "operation=bulk_insert&collection=%s&batch_size=500", coll);
    assert_int_equal(gen_post(&g, q, "application/x-ndjson", NULL), 0);   /* no answer */
    /* The transaction rolls back when batchd notices; wait for it, generously. */
    double deadline = bd_it_now() + 20;
    while (bd_it_psql_long("SELECT count(*) FROM pg_stat_activity WHERE state LIKE "
                           "'idle in transaction%%' AND datname = current_database()") > 0 &&
           bd_it_now() < deadline)
        bd_it_sleep_ms(100);
    assert_int_equal(it_jobs_of(coll), 0);
    json_decref(bd_it_get_ok(&it_proc, "/api/v1/batch/queue/status"));
}

/* A 1 GiB line (one string), gzipped to ~1 MiB, as a JSON Lines body: 413 long before
 * batchd could hold it (the line is over its limit), with bounded memory, and no job. */
static void stream_refuses_gzip_bomb_when_it_inflates_past_limit(void **state)
{
    char url[512], coll[96];
    struct bd_buf z;
    z_stream zs = { 0 };
    static unsigned char fill[65536], buf[65536];
    static const char head[] = "{\"id\":\"x\",\"text\":\"";
    (void)state;

    it_fresh_batchd();
    snprintf(coll, sizeof(coll), "%s_bomb", it_prefix);
    bd_buf_init(&z);
    memset(fill, 'a', sizeof(fill));
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    zs.next_in = (unsigned char *)head;
    zs.avail_in = sizeof(head) - 1;
    zs.next_out = buf;
    zs.avail_out = sizeof(buf);
    deflate(&zs, Z_NO_FLUSH);
    bd_buf_append(&z, buf, sizeof(buf) - zs.avail_out);
    for (int i = 0; i < 16384; i++) {              /* 1 GiB of one string */
        zs.next_in = fill;
        zs.avail_in = sizeof(fill);
        do {
            zs.next_out = buf;
            zs.avail_out = sizeof(buf);
            deflate(&zs, i == 16383 ? Z_FINISH : Z_NO_FLUSH);
            bd_buf_append(&z, buf, sizeof(buf) - zs.avail_out);
        } while (zs.avail_out == 0);
    }
    deflateEnd(&zs);
    long before = it_hwm_kb();
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs?operation=bulk_insert&collection=%s",
             it_proc.base, coll);
    struct bd_buf resp;
    bd_buf_init(&resp);
    long status = post_bytes(url, "application/x-ndjson", true, z.data, z.len, &resp);
    bd_buf_free(&z);
    if (status != 413)
        fail_msg("gzip bomb: status %ld %.*s", status, (int)resp.len, resp.data ? resp.data : "");
    bd_buf_free(&resp);
    it_assert_grew_less(before, 200 * 1024, "gzip bomb");      /* far below 1 GiB */
    assert_int_equal(it_jobs_of(coll), 0);
}

/* A body of ~1 GB streamed (long texts) costs batchd a few batches of memory. */
static void stream_keeps_memory_bounded_when_body_is_large(void **state)
{
    struct gen g = { .kind = GEN_EMBED, .lines = 175000, .bad_line = SIZE_MAX, .pad = 1000 };
    char q[256], coll[96];
    json_t *j = NULL;
    (void)state;

    it_fresh_batchd();
    snprintf(coll, sizeof(coll), "%s_big", it_prefix);
    snprintf(q, sizeof(q), "operation=bulk_embed&model=hashmodel&collection=%s&batch_size=200"
             "&priority=low", coll);
    long before = it_hwm_kb();
    long st = gen_post(&g, q, "application/x-ndjson", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    assert_true(g.sent > (1000u << 20));
    it_assert_grew_less(before, 96 * 1024, "1 GB streamed");    /* batches, not the body */
    it_cancel(bd_it_str(j, "job_id"));
    json_decref(j);
}

static void stream_names_field_when_query_is_wrong(void **state)
{
    struct gen g = { .kind = GEN_EMBED, .lines = 10, .bad_line = SIZE_MAX };
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    assert_int_equal(gen_post(&g, "model=hashmodel", "application/x-ndjson", &j), 400);
    assert_string_equal(bd_it_str(j, "error.field"), "operation");
    json_decref(j);
    g = (struct gen){ .kind = GEN_EMBED, .lines = 10, .bad_line = SIZE_MAX };
    assert_int_equal(gen_post(&g, "operation=bulk_embed&model=hashmodel&batch_size=many",
                              "application/x-ndjson", &j), 400);
    assert_string_equal(bd_it_str(j, "error.field"), "options.batch_size");
    json_decref(j);
    g = (struct gen){ .kind = GEN_EMBED, .lines = 0, .bad_line = SIZE_MAX };
    assert_int_equal(gen_post(&g, "operation=bulk_embed&model=hashmodel",
                              "application/x-ndjson", &j), 400);
    assert_string_equal(bd_it_str(j, "error.field"), "data");
    json_decref(j);
}

static void stream_accepts_gzip_json_body_when_encoded(void **state)
{
    char coll[96], url[512], body[1024];
    unsigned char zb[2048];
    uLongf zlen = sizeof(zb);
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_gzjson", it_prefix);
    snprintf(body, sizeof(body), "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
             "\"data\":[{\"id\":\"a\",\"embedding\":[1,2]},{\"id\":\"b\",\"embedding\":[3,4]}]}",
             coll);
    z_stream zs = { 0 };
    assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    zs.next_in = (unsigned char *)body;
    zs.avail_in = (unsigned)strlen(body);
    zs.next_out = zb;
    zs.avail_out = (unsigned)zlen;
    assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
    zlen = zs.total_out;
    deflateEnd(&zs);
    struct bd_buf resp;
    bd_buf_init(&resp);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", it_proc.base);
    long status = post_bytes(url, "application/json", true, zb, zlen, &resp);
    if (status != 202)
        fail_msg("gzip JSON: %ld %.*s", status, (int)resp.len, resp.data);
    json_t *j = json_loadb(resp.data, resp.len, 0, NULL);
    bd_buf_free(&resp);
    json_decref(bd_it_expect_status(&it_proc, bd_it_str(j, "job_id"), "completed", 30));
    json_decref(j);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'",
                                     coll), 2);
}

/* A 30 MB JSON body of ten million empty objects: refused at its first item (streamed, no
 * tree of it is built). Before, jansson's tree of it took 2.3 GB. */
static void stream_refuses_ten_million_items_when_json_body_is_huge(void **state)
{
    char url[512];
    struct bd_buf body, resp;
    long status = 0;
    (void)state;

    it_fresh_batchd();
    bd_buf_init(&body);
    bd_buf_init(&resp);
    bd_buf_puts(&body, "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\",\"data\":[");
    assert_int_equal(bd_buf_reserve(&body, 30u << 20), 0);
    for (unsigned i = 0; i < 10000000; i++)
        bd_buf_append(&body, i ? ",{}" : "{}", i ? 3 : 2);
    bd_buf_puts(&body, "]}");
    long before = it_hwm_kb();
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", it_proc.base);
    status = post_bytes(url, "application/json", false, body.data, body.len, &resp);
    bd_buf_free(&body);
    json_t *j = json_loadb(resp.data, resp.len, 0, NULL);
    bd_buf_free(&resp);
    assert_int_equal(status, 400);
    assert_string_equal(bd_it_str(j, "error.field"), "data[0].text");
    json_decref(j);
    it_assert_grew_less(before, 200 * 1024, "ten million empty objects");  /* the 30 MB body */
}

/* A gzip body that inflates ~1000 to 1 (72 MB from a few hundred KB): inflated a slice per
 * loop turn, each slice's items batched and written before the next; all arrive. */
static void stream_inflates_in_slices_when_gzip_ratio_is_high(void **state)
{
    struct gen g = { .kind = GEN_EMBED, .lines = 300, .bad_line = SIZE_MAX, .pad = 40000,
                     .is_gzip = true };
    char q[256], coll[96];
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_ratio", it_prefix);
    snprintf(q, sizeof(q), "operation=bulk_embed&model=hashmodel&collection=%s&batch_size=4",
             coll);
    long st = gen_post(&g, q, "application/x-ndjson", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    assert_true(g.sent < (4u << 20));
    assert_int_equal(bd_it_int(j, "items_count"), 300);
    const char *id = bd_it_str(j, "job_id");
    assert_int_equal(bd_it_psql_long("SELECT sum(item_count) FROM job_batches WHERE job_id = "
                                     "'%s'", id), 300);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                                     "length(items) < 4 * 240000", id), 0);
    it_cancel(id);
    json_decref(j);
}

/* Clients that send a whole JSON Lines body and hang up at once (half of them with a
 * reset): batchd's close of each job (totals, room, COMMIT, enqueue) is under way when it
 * learns the client left. Before, that aborted the job under its own statements (an
 * assertion in Debug builds, a use-after-free otherwise). Each job is whole or absent. */
static void stream_survives_clients_leaving_during_commit(void **state)
{
    char coll[96], head[512];
    struct bd_buf body;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_leave", it_prefix);
    bd_buf_init(&body);
    for (int i = 0; i < 200; i++)
        bd_buf_printf(&body, "{\"text\":\"t%d\"}\n", i);
    snprintf(head, sizeof(head), "POST /api/v1/batch/jobs?operation=bulk_embed&model=hashmodel"
             "&collection=%s&batch_size=50 HTTP/1.1\r\nHost: t\r\nContent-Type: "
             "application/x-ndjson\r\nContent-Length: %zu\r\n\r\n", coll, body.len);
    for (int i = 0; i < 40; i++) {
        struct bd_it_raw c;
        bd_it_raw_connect(&c, it_proc.port);
        bd_it_raw_send_n(&c, head, strlen(head));
        bd_it_raw_send_n(&c, body.data, body.len);
        if (i % 2) {                              /* a reset rather than a FIN */
            struct linger lg = { 1, 0 };
            setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        bd_it_sleep_ms(i % 5);
        bd_it_raw_close(&c);
    }
    bd_buf_free(&body);
    double deadline = bd_it_now() + 20;
    while (it_gauge("batchd_submit_uploads") != 0 && bd_it_now() < deadline)
        bd_it_sleep_ms(100);
    assert_int_equal(it_gauge("batchd_submit_uploads"), 0);    /* alive, and nothing stuck */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs j WHERE collection = '%s' AND "
                                     "(total_items <> 200 OR (SELECT count(*) FROM job_batches b "
                                     "WHERE b.job_id = j.id) <> 4)", coll), 0);
}

/* A gzip JSON Lines body sent again with its Idempotency-Key, its body arriving after the
 * key's lookup: the replay is answered 200 (before: 400, the inflater was never fed). */
static void stream_replays_gzip_job_when_body_comes_after_lookup(void **state)
{
    char coll[96], head[768];
    unsigned char gz[4096];
    static const char plain[] = "{\"text\":\"one\"}\n{\"text\":\"two\"}\n";
    z_stream z = { 0 };
    long status[2];
    (void)state;

    it_need_batchd();
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = (unsigned char *)plain;
    z.avail_in = sizeof(plain) - 1;
    z.next_out = gz;
    z.avail_out = sizeof(gz);
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    size_t gz_len = sizeof(gz) - z.avail_out;
    deflateEnd(&z);
    snprintf(coll, sizeof(coll), "%s_gzidem", it_prefix);
    snprintf(head, sizeof(head), "POST /api/v1/batch/jobs?operation=bulk_embed&model=hashmodel"
             "&collection=%s HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\n"
             "Content-Encoding: gzip\r\nIdempotency-Key: %s-gz\r\nContent-Length: %zu\r\n\r\n",
             coll, it_prefix, gz_len);
    for (int i = 0; i < 2; i++) {
        struct bd_it_raw c;
        struct bd_it_resp r;
        bd_it_raw_connect(&c, it_proc.port);
        bd_it_raw_send_n(&c, head, strlen(head));
        bd_it_sleep_ms(300);                      /* the key's lookup is done by now */
        bd_it_raw_send_n(&c, gz, gz_len);
        assert_int_equal(bd_it_raw_response(&c, &r, false, 10000), 0);
        status[i] = r.status;
        if (r.status != (i ? 200 : 202))
            fail_msg("request %d: %ld %s", i, r.status, r.body);
        bd_it_resp_free(&r);
        bd_it_raw_close(&c);
    }
    assert_int_equal(status[1], 200);
    assert_int_equal(it_jobs_of(coll), 1);
}

/* ---- the JSON form, streamed ------------------------------------------------------------- */

/* A bulk_insert JSON body of 50,000 items (3 MB) in the seed's order, "options" after
 * "data": streamed with the default batch size (100), then cut again at batch_size (inside
 * PostgreSQL), the late metadata and priority on the job; it runs to completion with every
 * vector where it belongs. */
static void it_check_late_options_insert(unsigned batch_size)
{
    char head[256], tail[256], coll[96];
    struct gen g = { .kind = GEN_INSERT, .lines = 50000, .dim = 4, .bad_line = SIZE_MAX,
                     .head = head, .tail = tail };
    unsigned batches = (50000 + batch_size - 1) / batch_size;
    json_t *j = NULL;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_late%u", it_prefix, batch_size);
    snprintf(head, sizeof(head), "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
             "\"data\":[", coll);
    snprintf(tail, sizeof(tail), "],\n\"options\":{\"batch_size\":%u,\"priority\":\"high\"},"
             "\"metadata\":{\"source\":\"late\"}}", batch_size);
    long st = gen_post(&g, "", "application/json", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    assert_true(g.sent > (2u << 20));                   /* past the gathered start */
    assert_int_equal(bd_it_int(j, "batch_size"), batch_size);
    assert_int_equal(bd_it_int(j, "items_count"), 50000);
    assert_string_equal(bd_it_str(j, "priority"), "high");
    assert_string_equal(bd_it_str(j, "metadata.source"), "late");
    const char *id = bd_it_str(j, "job_id");
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s'", id),
                     batches);
    /* Every batch holds the batch_size items that follow the one before it. */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                     "AND (first_index <> batch_no * %u OR item_count <> "
                                     "least(%u, 50000 - batch_no * %u))", id, batch_size,
                                     batch_size, batch_size), 0);
    assert_int_equal(bd_it_psql_long("SELECT total_batches FROM jobs WHERE id = '%s'", id),
                     batches);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE id = '%s' AND "
                                     "metadata->>'source' = 'late' AND batch_size = %u", id,
                                     batch_size), 1);
    json_decref(bd_it_expect_status(&it_proc, id, "completed", 60));
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'",
                                     coll), 50000);
    /* Item 12345 is the vector it was sent as. */
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s' "
                                     "AND id = 'v12345' AND item_index = 12345 AND "
                                     "abs(embedding[2] - %.3f) < 0.001", coll,
                                     (double)((12345 + 1) % 97) / 97.0), 1);
    json_decref(j);
}

/* 300: three stored batches joined into one; 250: every item split out and regrouped. */
static void stream_json_rebatches_when_options_come_after_data(void **state)
{
    (void)state;
    it_check_late_options_insert(300);
    it_check_late_options_insert(250);
}

/* The same for bulk_embed's JSON-array batches, joined (100 -> 200). */
static void stream_json_joins_embed_batches_when_late_size_is_a_multiple(void **state)
{
    char head[256], coll[96];
    struct gen g = { .kind = GEN_EMBED, .lines = 3000, .bad_line = SIZE_MAX, .pad = 100,
                     .head = head, .tail = "],\"options\":{\"batch_size\":200}}" };
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_joinjson", it_prefix);
    snprintf(head, sizeof(head), "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\","
             "\"collection\":\"%s\",\"data\":[", coll);
    long st = gen_post(&g, "", "application/json", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    const char *id = bd_it_str(j, "job_id");
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                                     "json_array_length(items::json) = 200 AND item_count = 200 "
                                     "AND first_index = batch_no * 200", id), 15);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                                     "batch_no = 7 AND items::json->13->>'id' = '%s-1413'", id,
                                     it_prefix), 1);
    json_decref(bd_it_expect_status(&it_proc, id, "completed", 60));
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM vectors WHERE collection = '%s'",
                                     coll), 3000);
    json_decref(j);
}

/* A ~290 MB bulk_embed JSON body, fields first: streamed in a few batches of memory; its
 * late batch_size (7) cuts the JSON-array batches again. */
static void stream_json_keeps_memory_bounded_when_body_is_large(void **state)
{
    char head[256], coll[96];
    struct gen g = { .kind = GEN_EMBED, .lines = 50000, .bad_line = SIZE_MAX, .pad = 1000,
                     .head = head, .tail = "],\"options\":{\"batch_size\":7}}" };
    json_t *j = NULL;
    (void)state;

    it_fresh_batchd();
    snprintf(coll, sizeof(coll), "%s_bigjson", it_prefix);
    snprintf(head, sizeof(head), "{\"operation\":\"bulk_embed\",\"model\":\"hashmodel\","
             "\"collection\":\"%s\",\"data\":[", coll);
    long before = it_hwm_kb();
    long st = gen_post(&g, "", "application/json", &j);
    if (st != 202)
        fail_msg("status %ld: %s", st, j ? json_dumps(j, 0) : "(no JSON)");
    assert_true(g.sent > (250u << 20));
    it_assert_grew_less(before, 96 * 1024, "288 MB JSON streamed");
    const char *id = bd_it_str(j, "job_id");
    it_cancel(id);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s'", id),
                     (50000 + 6) / 7);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' "
                                     "AND json_array_length(items::json) <> item_count", id), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches WHERE job_id = '%s' AND "
                                     "batch_no = 1000 AND items::json->0->>'id' = '%s-7000'",
                                     id, it_prefix), 1);
    json_decref(j);
}

/* Item 70,000 of 100,000 of a JSON body has a bad dimension: 400 naming data[69999], and
 * nothing stored. */
static void stream_json_rolls_back_when_item_is_bad_mid_stream(void **state)
{
    char head[256], coll[96];
    struct gen g = { .kind = GEN_INSERT, .lines = 100000, .dim = 4, .bad_line = 69999,
                     .head = head, .tail = "]}" };
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_badjson", it_prefix);
    snprintf(head, sizeof(head), "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
             "\"options\":{\"batch_size\":1000},\"data\":[", coll);
    assert_int_equal(gen_post(&g, "", "application/json", &j), 400);
    assert_string_equal(bd_it_str(j, "error.field"), "data[69999].embedding");
    if (strstr(bd_it_str(j, "error.message"), "dimensions") == NULL)
        fail_msg("message: %s", bd_it_str(j, "error.message"));
    json_decref(j);
    assert_int_equal(it_jobs_of(coll), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches b WHERE NOT EXISTS "
                                     "(SELECT 1 FROM jobs j WHERE j.id = b.job_id)"), 0);
}

/* A streamed JSON body (2 MB, options last) with an Idempotency-Key: the same body again is
 * the same job (200, replay); another body with the key is 409; one job in all. */
static void stream_json_replays_job_when_idempotency_key_repeats(void **state)
{
    char url[256], coll[96], key[128];
    struct bd_buf a, b;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_idemjson", it_prefix);
    snprintf(key, sizeof(key), "Idempotency-Key: %s-json-key", it_prefix);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", it_proc.base);
    bd_buf_init(&a);
    bd_buf_init(&b);
    for (int v = 0; v < 2; v++) {
        struct bd_buf *o = v ? &b : &a;
        bd_buf_printf(o, "{\"operation\":\"bulk_insert\",\"collection\":\"%s\",\"data\":[",
                      coll);
        for (int i = 0; i < 30000; i++)
            bd_buf_printf(o, "%s{\"id\":\"v%d\",\"embedding\":[%d,1,2,%d]}", i ? "," : "", i,
                          i % 7, v && i == 29999 ? 9 : 3);
        bd_buf_puts(o, "],\"options\":{\"batch_size\":300}}");
        assert_false(o->is_failed);
    }
    assert_true(a.len > (1u << 20));                 /* streamed, not gathered */
    const char *h[] = { "Content-Type: application/json", key, NULL };
    it_check_key_replay(url, h, a.data, b.data, coll);
    bd_buf_free(&a);
    bd_buf_free(&b);
}

/* A client that leaves in the middle of a big JSON body leaves nothing behind. */
static void stream_json_stores_nothing_when_client_leaves_mid_upload(void **state)
{
    char head[256], coll[96];
    struct gen g = { .kind = GEN_INSERT, .lines = 100000, .dim = 4, .bad_line = SIZE_MAX,
                     .abort_after = 3u << 20, .head = head, .tail = "]}" };
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_gonejson", it_prefix);
    snprintf(head, sizeof(head), "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
             "\"data\":[", coll);
    assert_int_equal(gen_post(&g, "", "application/json", NULL), 0);    /* no answer */
    double deadline = bd_it_now() + 20;
    while (it_gauge("batchd_submit_uploads") != 0 && bd_it_now() < deadline)
        bd_it_sleep_ms(100);
    assert_int_equal(it_gauge("batchd_submit_uploads"), 0);
    assert_int_equal(it_jobs_of(coll), 0);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM job_batches b WHERE NOT EXISTS "
                                     "(SELECT 1 FROM jobs j WHERE j.id = b.job_id)"), 0);
}

/* A big JSON body whose operation comes after its data: told what a streamed body needs. */
static void stream_json_explains_when_operation_comes_after_data(void **state)
{
    char tail[256], coll[96];
    struct gen g = { .kind = GEN_INSERT, .lines = 30000, .dim = 4, .bad_line = SIZE_MAX,
                     .head = "{\"data\":[", .tail = tail };
    json_t *j = NULL;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_late_op", it_prefix);
    snprintf(tail, sizeof(tail), "],\"operation\":\"bulk_insert\",\"collection\":\"%s\"}",
             coll);
    assert_int_equal(gen_post(&g, "", "application/json", &j), 400);
    assert_string_equal(bd_it_str(j, "error.field"), "operation");
    if (strstr(bd_it_str(j, "error.message"), "before \"data\"") == NULL)
        fail_msg("message: %s", bd_it_str(j, "error.message"));
    json_decref(j);
    assert_int_equal(it_jobs_of(coll), 0);
}

/* Each streamed submit holds one of the API pool's connections for its whole upload: with
 * the default pool of 4, two uploads in progress are the most; a third waits in line, its
 * body unread, and goes on (202) as soon as one of the two leaves. */
static void stream_waits_for_upload_slot_when_pool_is_taken(void **state)
{
    struct bd_it_raw up[3];
    char head[512], coll[96];
    static const char chunk[] = "d\r\n{\"text\":\"a\"}\n\r\n";
    struct bd_it_resp r;
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_cap", it_prefix);
    snprintf(head, sizeof(head), "POST /api/v1/batch/jobs?operation=bulk_embed&model=hashmodel"
             "&collection=%s HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\n"
             "Transfer-Encoding: chunked\r\n\r\n", coll);
    for (int i = 0; i < 2; i++) {
        bd_it_raw_connect(&up[i], it_proc.port);
        bd_it_raw_send_n(&up[i], head, strlen(head));
        bd_it_raw_send_n(&up[i], chunk, sizeof(chunk) - 1);
    }
    /* Both uploads are under way once batchd counts them (and their rows are written). */
    double deadline = bd_it_now() + 10;
    while (it_gauge("batchd_submit_uploads") < 2 && bd_it_now() < deadline)
        bd_it_sleep_ms(50);
    if (it_gauge("batchd_submit_uploads") != 2) {      /* say what the uploads were told */
        bd_it_raw_read(&up[0], 200, 0);
        bd_it_raw_read(&up[1], 200, 0);
        fail_msg("%ld uploads counted; the first got \"%s\", the second \"%s\"",
                 it_gauge("batchd_submit_uploads"), up[0].buf ? up[0].buf : "",
                 up[1].buf ? up[1].buf : "");
    }
    /* A third, whole: it waits (no answer, the waiting gauge says so). */
    bd_it_raw_connect(&up[2], it_proc.port);
    bd_it_raw_send_n(&up[2], head, strlen(head));
    bd_it_raw_send_n(&up[2], chunk, sizeof(chunk) - 1);
    bd_it_raw_send(&up[2], "0\r\n\r\n");
    deadline = bd_it_now() + 10;
    while (it_gauge("batchd_submit_uploads_waiting") < 1 && bd_it_now() < deadline)
        bd_it_sleep_ms(50);
    assert_int_equal(it_gauge("batchd_submit_uploads_waiting"), 1);
    assert_int_equal(bd_it_raw_read(&up[2], 300, 0), -1);   /* nothing yet */
    bd_it_raw_close(&up[0]);                      /* one client leaves: its job rolls back */
    assert_int_equal(bd_it_raw_response(&up[2], &r, false, 10000), 0);
    if (r.status != 202)
        fail_msg("the waiting upload: %ld %s", r.status, r.body);
    bd_it_resp_free(&r);
    assert_int_equal(it_gauge("batchd_submit_uploads_waiting"), 0);
    bd_it_raw_close(&up[2]);
    bd_it_raw_close(&up[1]);
    assert_int_equal(bd_it_psql_long("SELECT count(*) FROM jobs WHERE collection = '%s'", coll),
                     1);
}

/* Idempotency-Key on a JSON Lines body: the hash is taken as the body streams; the same key
 * and body again is the same job (200, idempotent_replay), another body is 409. */
static void stream_replays_job_when_idempotency_key_repeats(void **state)
{
    char url[512], coll[96], key[128], body_a[256], body_b[256];
    (void)state;

    it_need_batchd();
    snprintf(coll, sizeof(coll), "%s_idem", it_prefix);
    snprintf(key, sizeof(key), "Idempotency-Key: %s-key", it_prefix);
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs?operation=bulk_embed&model=hashmodel"
             "&collection=%s", it_proc.base, coll);
    snprintf(body_a, sizeof(body_a), "{\"text\":\"one\"}\n{\"text\":\"two\"}\n");
    snprintf(body_b, sizeof(body_b), "{\"text\":\"one\"}\n{\"text\":\"three\"}\n");
    const char *h[] = { "Content-Type: application/x-ndjson", key, NULL };
    it_check_key_replay(url, h, body_a, body_b, coll);
}

static int it_stop_batchd(void **state)
{
    (void)state;
    if (it_started)
        assert_int_equal(bd_it_stop(&it_proc, SIGTERM, 20), 0);
    it_started = false;
    return 0;
}

int main(void)
{
    snprintf(it_prefix, sizeof(it_prefix), "st%d", (int)getpid());
    curl_global_init(CURL_GLOBAL_ALL);
    bd_it_apply_filter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stream_embeds_json_lines_when_uploaded_chunked),
        cmocka_unit_test(stream_inserts_gzip_json_lines_when_compressed),
        cmocka_unit_test(stream_names_field_when_query_is_wrong),
        cmocka_unit_test(stream_accepts_gzip_json_body_when_encoded),
        cmocka_unit_test(stream_rolls_back_when_item_is_bad_mid_stream),
        cmocka_unit_test(stream_stores_nothing_when_client_leaves_mid_upload),
        cmocka_unit_test(stream_refuses_gzip_bomb_when_it_inflates_past_limit),
        cmocka_unit_test(stream_keeps_memory_bounded_when_body_is_large),
        cmocka_unit_test(stream_refuses_ten_million_items_when_json_body_is_huge),
        cmocka_unit_test(stream_waits_for_upload_slot_when_pool_is_taken),
        cmocka_unit_test(stream_replays_job_when_idempotency_key_repeats),
        cmocka_unit_test(stream_inflates_in_slices_when_gzip_ratio_is_high),
        cmocka_unit_test(stream_survives_clients_leaving_during_commit),
        cmocka_unit_test(stream_replays_gzip_job_when_body_comes_after_lookup),
        cmocka_unit_test(stream_json_rebatches_when_options_come_after_data),
        cmocka_unit_test(stream_json_joins_embed_batches_when_late_size_is_a_multiple),
        cmocka_unit_test(stream_json_keeps_memory_bounded_when_body_is_large),
        cmocka_unit_test(stream_json_rolls_back_when_item_is_bad_mid_stream),
        cmocka_unit_test(stream_json_explains_when_operation_comes_after_data),
        cmocka_unit_test(stream_json_replays_job_when_idempotency_key_repeats),
        cmocka_unit_test(stream_json_stores_nothing_when_client_leaves_mid_upload),
    };
    int rc = cmocka_run_group_tests(tests, NULL, it_stop_batchd);
    curl_global_cleanup();
    return rc;
}
