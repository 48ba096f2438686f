/* it_files.c -- OpenAI-compatible files end to end (POST/GET/DELETE /v1/files,
 * GET /v1/files/{id}/content) against the real batchd binary and the test stack: uploads
 * with a Content-Length (libcurl's mime, as curl -F sends) and chunked (as the Node SDK
 * streams them) with the multipart boundary cut at odd places; a 20 MB file whose upload
 * and download leave batchd's memory far below the file's size, read back byte for byte;
 * paging; delete then 404; 413 over a small limit and a body cut midway, leaving nothing in
 * PostgreSQL; bad multipart answered 400 in OpenAI's shape; 401 without a Bearer key.
 *
 * Isolation: a PostgreSQL schema of its own ("itfiles_<pid>", through search_path in the
 * URL) and a Redis database of its own (BD_IT_FILES_REDIS_DB, default 16). A second batchd
 * on the same schema has API keys and a 1000-byte file limit.
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bd_it.h"

#define KEY "sk-itfiles-key"
#define AUTH "Authorization: Bearer " KEY

static struct bd_it_proc g_proc;       /* no keys, the default limit */
static struct bd_it_proc g_small;      /* API keys, openai.max_file_bytes: 1000 */
static bool g_started, g_small_started;
static struct bd_it_scratch g_scr;   /* own schema and Redis db */

/* ---- helpers ------------------------------------------------------------------------- */

#define psql_long(...) bd_it_psql_long_url(g_scr.pg_url, __VA_ARGS__)

/* A peak or current memory figure of batchd in KiB ("VmHWM", "VmRSS"), from /proc. */
static long proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    long v = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if ((f = fopen(path, "r")) == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, strlen(field)) == 0 && line[strlen(field)] == ':')
            v = strtol(line + strlen(field) + 1, NULL, 10);
    fclose(f);
    return v;
}

/* Upload data as file "name" with purpose, through libcurl's mime (Content-Length).
 * Returns the answer's JSON (caller decrefs); the status in *status, the answer in *resp
 * when resp is not NULL (caller frees). */
static json_t *upload_mime(struct bd_it_proc *p, const char *data, size_t len, const char *name,
                           const char *purpose, const char *auth, long *status,
                           struct bd_it_resp *resp)
{
    char url[256], errbuf[CURL_ERROR_SIZE] = "";
    struct bd_it_resp r = { 0 };
    CURL *h = bd_it_easy_new("POST", (snprintf(url, sizeof(url), "%s/v1/files", p->base), url),
                             NULL, NULL, 60000, &r);
    curl_mime *mime = curl_mime_init(h);
    curl_mimepart *part;
    struct curl_slist *hdrs = NULL;
    json_t *j;

    assert_non_null(h);
    if (purpose) {
        part = curl_mime_addpart(mime);
        curl_mime_name(part, "purpose");
        curl_mime_data(part, purpose, CURL_ZERO_TERMINATED);
    }
    if (data) {
        part = curl_mime_addpart(mime);
        curl_mime_name(part, "file");
        curl_mime_filename(part, name);
        curl_mime_type(part, "application/jsonl");
        curl_mime_data(part, data, len);
    }
    curl_easy_setopt(h, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (auth)
        hdrs = curl_slist_append(hdrs, auth);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    int rc = bd_it_easy_finish(h, curl_easy_perform(h));
    curl_mime_free(mime);
    curl_slist_free_all(hdrs);
    if (rc != 0)
        fail_msg("upload: no answer (curl %d %s)", r.curl_code, errbuf);
    *status = r.status;
    j = json_loads(r.body, 0, NULL);
    if (j == NULL)
        fprintf(stderr, "answer is not JSON: %ld %s\n", r.status, r.body);
    if (resp)
        *resp = r;
    else
        bd_it_resp_free(&r);
    return j;
}

/* A multipart body with purpose then file (boundary b), as the Node SDK builds it. */
static char *multipart_body(const char *b, const char *purpose, const char *data, size_t len,
                            size_t *out_len)
{
    char head[512], tail[128];
    int hn = snprintf(head, sizeof(head),
                      "--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n%s\r\n"
                      "--%s\r\nContent-Disposition: form-data; name=\"file\"; "
                      "filename=\"input.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                      b, purpose, b);
    int tn = snprintf(tail, sizeof(tail), "\r\n--%s--\r\n", b);
    char *body = malloc((size_t)hn + len + (size_t)tn);

    assert_non_null(body);
    memcpy(body, head, (size_t)hn);
    memcpy(body + hn, data, len);
    memcpy(body + hn + len, tail, (size_t)tn);
    *out_len = (size_t)hn + len + (size_t)tn;
    return body;
}

/* Send body chunked on a raw connection, in HTTP chunks whose sizes cycle through odd
 * numbers (1, 3, 5, ... 997, then big ones), so the boundary and the part headers are cut
 * at many places. cut > 0: stop after that many body bytes and close (no answer read). */
static void send_chunked(struct bd_it_raw *c, int port, const char *boundary, const char *body,
                         size_t len, const char *auth, size_t cut)
{
    char hdrs[512];
    size_t off = 0, step = 1;

    snprintf(hdrs, sizeof(hdrs),
             "Content-Type: multipart/form-data; boundary=%s\r\nTransfer-Encoding: chunked\r\n"
             "%s%s", boundary, auth ? auth : "", auth ? "\r\n" : "");
    bd_it_raw_open(c, port, "POST", "/v1/files", hdrs, 0);
    while (off < len && (cut == 0 || off < cut)) {
        size_t n = step < len - off ? step : len - off;
        char sz[32];
        snprintf(sz, sizeof(sz), "%zx\r\n", n);
        bd_it_raw_send(c, sz);
        bd_it_raw_send_n(c, body + off, n);
        bd_it_raw_send(c, "\r\n");
        off += n;
        step = step < 999 ? step + 2 : step * 3 + 1;
        if (step > (1u << 20))
            step = (1u << 20) + 7;
    }
    if (cut == 0)
        bd_it_raw_send(c, "0\r\n\r\n");
}

/* Upload chunked and read the answer; returns its JSON (caller decrefs), status in *status. */
static json_t *upload_chunked(struct bd_it_proc *p, const char *boundary, const char *body,
                              size_t len, const char *auth, long *status,
                              struct bd_it_resp *resp)
{
    struct bd_it_raw c;
    struct bd_it_resp r;
    json_t *j;

    send_chunked(&c, p->port, boundary, body, len, auth, 0);
    assert_int_equal(bd_it_raw_response(&c, &r, false, 60000), 0);
    bd_it_raw_close(&c);
    *status = r.status;
    j = json_loads(r.body, 0, NULL);
    if (j == NULL)
        fprintf(stderr, "answer is not JSON: %ld %s\n", r.status, r.body);
    if (resp)
        *resp = r;
    else
        bd_it_resp_free(&r);
    return j;
}

/* The file's content through GET /v1/files/{id}/content, compared byte for byte. */
static void expect_content(struct bd_it_proc *p, const char *id, const char *data, size_t len)
{
    char url[256];
    struct bd_it_resp r;

    snprintf(url, sizeof(url), "%s/v1/files/%s/content", p->base, id);
    assert_int_equal(bd_it_http_ex("GET", url, NULL, NULL, 120000, &r), 0);
    assert_int_equal(r.status, 200);
    if (r.len != len)
        fail_msg("content of %s: %zu bytes, uploaded %zu", id, r.len, len);
    assert_memory_equal(r.body, data, len);
    bd_it_resp_free(&r);
}

/* An OpenAI error answer: status, type, param (NULL: null), x-should-retry: false, and an
 * x-request-id. */
static void expect_error(long status, const struct bd_it_resp *r, json_t *j, long want,
                         const char *param)
{
    char buf[128];

    if (status != want || j == NULL)
        fail_msg("expected %ld, got %ld: %s", want, status, r ? r->body : "");
    assert_string_equal(bd_it_str(j, "error.type"),
                        want >= 500 ? "server_error" : "invalid_request_error");
    assert_non_null(bd_it_str(j, "error.message"));
    assert_non_null(bd_it_at(j, "error.code"));
    if (param)
        assert_string_equal(bd_it_str(j, "error.param"), param);
    else
        assert_true(json_is_null(bd_it_at(j, "error.param")));
    if (r) {
        assert_non_null(bd_it_resp_header(r, "x-request-id", buf, sizeof(buf)));
        assert_int_equal(strncmp(buf, "req_", 4), 0);
        if (want >= 400 && want < 500 && want != 408 && want != 409 && want != 429) {
            assert_non_null(bd_it_resp_header(r, "x-should-retry", buf, sizeof(buf)));
            assert_string_equal(buf, "false");
        }
    }
}

static json_t *v1(struct bd_it_proc *p, const char *method, const char *path, long *status,
                  struct bd_it_resp *resp)
{
    char url[512];
    struct bd_it_resp r;
    json_t *j;

    snprintf(url, sizeof(url), "%s%s", p->base, path);
    if (bd_it_http(method, url, NULL, NULL, &r) != 0)
        fail_msg("%s %s: no answer", method, path);
    *status = r.status;
    j = json_loads(r.body, 0, NULL);
    if (resp)
        *resp = r;
    else
        bd_it_resp_free(&r);
    return j;
}

static long files_rows(void)
{
    return psql_long("SELECT count(*) FROM files");
}

static long chunk_rows(void)
{
    return psql_long("SELECT count(*) FROM file_chunks");
}

/* ---- cases ------------------------------------------------------------------------------ */

static void test_files_uploads_with_content_length_and_reads_it_back(void **state)
{
    static const char data[] =
        "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":"
        "{\"model\":\"m\",\"input\":\"x\"}}\n"
        "{\"custom_id\":\"b\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":"
        "{\"model\":\"m\",\"input\":\"y\\r\\n--\"}}";      /* no newline at the end */
    struct bd_it_resp r;
    long status;
    char path[128], buf[128];
    (void)state;

    json_t *f = upload_mime(&g_proc, data, sizeof(data) - 1, "my input.jsonl", "batch", AUTH,
                            &status, &r);
    if (status != 200)
        fail_msg("upload: %ld %s", status, r.body);
    assert_non_null(bd_it_resp_header(&r, "x-request-id", buf, sizeof(buf)));
    assert_null(bd_it_resp_header(&r, "x-should-retry", buf, sizeof(buf)));
    bd_it_resp_free(&r);
    const char *id = bd_it_str(f, "id");
    assert_non_null(id);
    assert_int_equal(strncmp(id, "file-", 5), 0);
    assert_string_equal(bd_it_str(f, "object"), "file");
    assert_int_equal(bd_it_int(f, "bytes"), sizeof(data) - 1);
    assert_string_equal(bd_it_str(f, "filename"), "my input.jsonl");
    assert_string_equal(bd_it_str(f, "purpose"), "batch");
    assert_string_equal(bd_it_str(f, "status"), "processed");
    assert_true(json_is_null(bd_it_at(f, "status_details")));
    long long created = bd_it_int(f, "created_at");
    assert_true(created > 1700000000);

    snprintf(path, sizeof(path), "/v1/files/%s", id);
    json_t *g = v1(&g_proc, "GET", path, &status, NULL);
    assert_int_equal(status, 200);
    assert_true(json_equal(f, g));
    json_decref(g);
    expect_content(&g_proc, id, data, sizeof(data) - 1);
    assert_int_equal(psql_long("SELECT lines FROM files WHERE id = '%s'", id), 2);
    assert_int_equal(psql_long("SELECT count(*) FROM file_chunks WHERE file_id = '%s'", id), 1);
    json_decref(f);
}

static void test_files_uploads_chunked_with_boundary_cut_anywhere(void **state)
{
    /* Content that nearly holds the delimiter, CRs and LFs everywhere. */
    struct bd_it_raw c;
    char data[6000];
    size_t len = 0, blen;
    long status;
    (void)state;

    while (len + 64 < sizeof(data))
        len += (size_t)snprintf(data + len, sizeof(data) - len,
                                "{\"i\":%zu}\r\n--openai-12345\n\r\r\n--openai-1234\n", len);
    char *body = multipart_body("openai-123456", "batch", data, len, &blen);
    json_t *f = upload_chunked(&g_proc, "openai-123456", body, blen, AUTH, &status, NULL);
    assert_int_equal(status, 200);
    assert_int_equal(bd_it_int(f, "bytes"), len);
    assert_string_equal(bd_it_str(f, "filename"), "input.jsonl");
    expect_content(&g_proc, bd_it_str(f, "id"), data, len);
    json_decref(f);

    /* Keep-alive: the connection serves the next request after an upload. */
    send_chunked(&c, g_proc.port, "openai-123456", body, blen, AUTH, 0);
    struct bd_it_resp r;
    assert_int_equal(bd_it_raw_response(&c, &r, false, 30000), 0);
    assert_int_equal(r.status, 200);
    bd_it_resp_free(&r);
    bd_it_raw_send(&c, "GET /v1/files?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(bd_it_raw_response(&c, &r, false, 30000), 0);
    assert_int_equal(r.status, 200);
    bd_it_resp_free(&r);
    bd_it_raw_close(&c);
    free(body);
}

/* A 20 MB file streamed in and out: batchd's peak memory grows by far less than the file. */
static void test_files_streams_20mb_file_when_memory_stays_flat(void **state)
{
    size_t len = 20u * 1000u * 1000u, blen, off = 0;
    char *data = malloc(len);
    long status;
    (void)state;

    assert_non_null(data);
    for (unsigned i = 0; off < len; i++) {
        int n = snprintf(data + off, len - off, "{\"custom_id\":\"r%u\",\"method\":\"POST\","
                         "\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"m\",\"input\":"
                         "\"line %u of a big file\"}}\n", i, i);
        off += (size_t)n < len - off ? (size_t)n : len - off;
    }
    data[len - 1] = '\n';
    char *body = multipart_body("openai-bigfile", "batch", data, len, &blen);
    long hwm_before = proc_kib(g_proc.pid, "VmHWM");
    long rss_before = proc_kib(g_proc.pid, "VmRSS");
    json_t *f = upload_chunked(&g_proc, "openai-bigfile", body, blen, AUTH, &status, NULL);
    long hwm_up = proc_kib(g_proc.pid, "VmHWM");
    assert_int_equal(status, 200);
    assert_int_equal(bd_it_int(f, "bytes"), len);
    const char *id = bd_it_str(f, "id");
    assert_int_equal(psql_long("SELECT chunks FROM files WHERE id = '%s'", id), 20);
    assert_int_equal(psql_long("SELECT sum(length(data)) FROM file_chunks WHERE file_id = '%s'",
                               id), (long)len);
    long nl = 0, nl_before_last = 0;
    for (size_t i = 0; i < len; i++) {
        nl += data[i] == '\n';
        if (i + 1 == 19u * (1u << 20))
            nl_before_last = nl;
    }
    assert_int_equal(psql_long("SELECT lines FROM files WHERE id = '%s'", id), nl);
    assert_int_equal(psql_long("SELECT line_start FROM file_chunks WHERE file_id = '%s' "
                               "AND seq = 19", id), nl_before_last);
    expect_content(&g_proc, id, data, len);
    long hwm_down = proc_kib(g_proc.pid, "VmHWM");
    fprintf(stderr, "# 20 MB file: batchd RSS before %ld KiB, peak after upload %ld KiB, "
            "after download %ld KiB (peak before %ld KiB)\n", rss_before, hwm_up, hwm_down,
            hwm_before);
    /* Peak growth under 8 MiB (two chunks, libpq's copy, socket buffers) for 20 MB. Not
     * under ASan, whose quarantine keeps every freed chunk's memory for a while. */
    if (BD_IT_RSS_IS_MEANINGFUL) {
        assert_true(hwm_up - rss_before < 8 * 1024 || hwm_up == hwm_before);
        assert_true(hwm_down - rss_before < 8 * 1024 || hwm_down == hwm_before);
    }
    json_decref(f);
    free(body);
    free(data);
}

static void test_files_pages_with_after_limit_and_order(void **state)
{
    char ids[3][64], path[256];
    long status;
    (void)state;

    for (int i = 0; i < 3; i++) {
        char d[32];
        int n = snprintf(d, sizeof(d), "{\"n\":%d}\n", i);
        json_t *f = upload_mime(&g_proc, d, (size_t)n, "p.jsonl", "batch", AUTH, &status, NULL);
        assert_int_equal(status, 200);
        snprintf(ids[i], sizeof(ids[i]), "%s", bd_it_str(f, "id"));
        json_decref(f);
    }
    /* Newest first by default: the first page of 2 is ids[2], ids[1]. */
    json_t *p = v1(&g_proc, "GET", "/v1/files?limit=2", &status, NULL);
    assert_int_equal(status, 200);
    assert_string_equal(bd_it_str(p, "object"), "list");
    assert_int_equal(json_array_size(bd_it_at(p, "data")), 2);
    assert_string_equal(bd_it_str(p, "data.0.id"), ids[2]);
    assert_string_equal(bd_it_str(p, "data.1.id"), ids[1]);
    assert_string_equal(bd_it_str(p, "first_id"), ids[2]);
    assert_string_equal(bd_it_str(p, "last_id"), ids[1]);
    assert_true(json_is_true(bd_it_at(p, "has_more")));
    json_decref(p);
    /* Oldest first after ids[0]: ids[1], ids[2], nothing more. */
    snprintf(path, sizeof(path), "/v1/files?order=asc&limit=2&after=%s&purpose=batch", ids[0]);
    p = v1(&g_proc, "GET", path, &status, NULL);
    assert_int_equal(status, 200);
    assert_int_equal(json_array_size(bd_it_at(p, "data")), 2);
    assert_string_equal(bd_it_str(p, "data.0.id"), ids[1]);
    assert_string_equal(bd_it_str(p, "data.1.id"), ids[2]);
    assert_true(json_is_false(bd_it_at(p, "has_more")));
    json_decref(p);
    /* Another purpose: nothing; a bad limit or order: 400. */
    p = v1(&g_proc, "GET", "/v1/files?purpose=fine-tune", &status, NULL);
    assert_int_equal(status, 200);
    assert_int_equal(json_array_size(bd_it_at(p, "data")), 0);
    assert_true(json_is_null(bd_it_at(p, "first_id")));
    json_decref(p);
    struct bd_it_resp r;
    p = v1(&g_proc, "GET", "/v1/files?limit=0", &status, &r);
    expect_error(status, &r, p, 400, "limit");
    bd_it_resp_free(&r);
    json_decref(p);
    p = v1(&g_proc, "GET", "/v1/files?order=up", &status, &r);
    expect_error(status, &r, p, 400, "order");
    bd_it_resp_free(&r);
    json_decref(p);
}

static void test_files_deletes_then_answers_404(void **state)
{
    struct bd_it_resp r;
    char path[128], cpath[160];
    long status;
    (void)state;

    json_t *f = upload_mime(&g_proc, "{}\n", 3, "d.jsonl", "batch", AUTH, &status, NULL);
    assert_int_equal(status, 200);
    char id[64];
    snprintf(id, sizeof(id), "%s", bd_it_str(f, "id"));
    json_decref(f);
    snprintf(path, sizeof(path), "/v1/files/%s", id);
    snprintf(cpath, sizeof(cpath), "/v1/files/%s/content", id);
    json_t *d = v1(&g_proc, "DELETE", path, &status, NULL);
    assert_int_equal(status, 200);
    assert_string_equal(bd_it_str(d, "id"), id);
    assert_string_equal(bd_it_str(d, "object"), "file");
    assert_true(json_is_true(bd_it_at(d, "deleted")));
    json_decref(d);
    assert_int_equal(psql_long("SELECT count(*) FROM file_chunks WHERE file_id = '%s'", id), 0);
    static const char *const methods[] = { "GET", "DELETE", "GET" };
    const char *paths[] = { path, path, cpath };
    for (int i = 0; i < 3; i++) {
        json_t *e = v1(&g_proc, methods[i], paths[i], &status, &r);
        expect_error(status, &r, e, 404, "id");
        bd_it_resp_free(&r);
        json_decref(e);
    }
    json_t *e = v1(&g_proc, "GET", "/v1/files/not-a-file-id", &status, &r);
    expect_error(status, &r, e, 404, "id");
    bd_it_resp_free(&r);
    json_decref(e);
}

static void test_files_refuses_bad_multipart_in_openai_shape(void **state)
{
    struct bd_it_resp r;
    size_t blen;
    long status;
    char url[256];
    long before = files_rows();
    (void)state;

    /* Cut before the closing boundary. */
    char *body = multipart_body("openai-bad", "batch", "{}\n", 3, &blen);
    json_t *e = upload_chunked(&g_proc, "openai-bad", body, blen - 8, AUTH, &status, &r);
    expect_error(status, &r, e, 400, NULL);
    assert_non_null(strstr(bd_it_str(e, "error.message"), "closing boundary"));
    bd_it_resp_free(&r);
    json_decref(e);
    free(body);
    /* Another purpose. */
    body = multipart_body("openai-bad", "fine-tune", "{}\n", 3, &blen);
    e = upload_chunked(&g_proc, "openai-bad", body, blen, AUTH, &status, &r);
    expect_error(status, &r, e, 400, "purpose");
    bd_it_resp_free(&r);
    json_decref(e);
    free(body);
    /* No file, no purpose. */
    e = upload_mime(&g_proc, NULL, 0, NULL, "batch", AUTH, &status, &r);
    expect_error(status, &r, e, 400, "file");
    bd_it_resp_free(&r);
    json_decref(e);
    e = upload_mime(&g_proc, "{}\n", 3, "x.jsonl", NULL, AUTH, &status, &r);
    expect_error(status, &r, e, 400, "purpose");
    bd_it_resp_free(&r);
    json_decref(e);
    /* Not multipart: 415. */
    const char *hdrs[] = { "Content-Type: application/json", AUTH, NULL };
    snprintf(url, sizeof(url), "%s/v1/files", g_proc.base);
    assert_int_equal(bd_it_http("POST", url, "{}", hdrs, &r), 0);
    e = json_loads(r.body, 0, NULL);
    expect_error(r.status, &r, e, 415, NULL);
    bd_it_resp_free(&r);
    json_decref(e);
    assert_int_equal(files_rows(), before);
}

/* Over the limit (1000 bytes on g_small), by Content-Length and chunked; a body cut midway:
 * nothing of them stays in PostgreSQL, and batchd goes on serving. */
static void test_files_leaves_nothing_when_too_large_or_cut(void **state)
{
    struct bd_it_resp r;
    struct bd_it_raw c;
    char big[1500];
    size_t blen;
    long status;
    (void)state;

    long files = files_rows(), chunks = chunk_rows();
    memset(big, 'x', sizeof(big));
    big[sizeof(big) - 1] = '\n';
    json_t *e = upload_mime(&g_small, big, sizeof(big), "big.jsonl", "batch", AUTH, &status, &r);
    expect_error(status, &r, e, 413, "file");
    bd_it_resp_free(&r);
    json_decref(e);
    char *body = multipart_body("openai-413", "batch", big, sizeof(big), &blen);
    e = upload_chunked(&g_small, "openai-413", body, blen, AUTH, &status, &r);
    expect_error(status, &r, e, 413, "file");
    bd_it_resp_free(&r);
    json_decref(e);
    free(body);
    /* Exactly at the limit passes. */
    e = upload_mime(&g_small, big, 1000, "ok.jsonl", "batch", AUTH, &status, NULL);
    assert_int_equal(status, 200);
    assert_int_equal(bd_it_int(e, "bytes"), 1000);
    json_decref(e);
    files++;
    chunks++;

    /* Cut midway through a 3 MB body (chunks already written in the open transaction). */
    size_t len = 3u << 20;
    char *data = malloc(len);
    assert_non_null(data);
    memset(data, 'y', len);
    body = multipart_body("openai-cut", "batch", data, len, &blen);
    send_chunked(&c, g_proc.port, "openai-cut", body, blen, AUTH, blen / 2 + 3);
    bd_it_sleep_ms(300);
    bd_it_raw_close(&c);
    /* The transaction rolls back once batchd notices; until then its rows are invisible
     * anyway. Wait until no session is left inside one on our schema's tables. */
    double until = bd_it_now() + 10;
    while (bd_it_now() < until &&
           psql_long("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                     "WHERE c.relname = 'file_chunks' AND l.pid <> pg_backend_pid()") > 0)
        bd_it_sleep_ms(50);
    assert_int_equal(files_rows(), files);
    assert_int_equal(chunk_rows(), chunks);
    /* And batchd still serves, with every API connection back. */
    e = upload_mime(&g_proc, "{}\n", 3, "after.jsonl", "batch", AUTH, &status, NULL);
    assert_int_equal(status, 200);
    json_decref(e);
    free(body);
    free(data);
}

static void test_files_answers_401_when_keys_set_and_no_bearer(void **state)
{
    struct bd_it_resp r;
    char url[256], buf[64];
    (void)state;

    snprintf(url, sizeof(url), "%s/v1/files", g_small.base);
    assert_int_equal(bd_it_http("GET", url, NULL, NULL, &r), 0);
    json_t *e = json_loads(r.body, 0, NULL);
    expect_error(r.status, &r, e, 401, NULL);
    assert_string_equal(bd_it_str(e, "error.code"), "invalid_api_key");
    assert_non_null(bd_it_resp_header(&r, "WWW-Authenticate", buf, sizeof(buf)));
    bd_it_resp_free(&r);
    json_decref(e);
    const char *wrong[] = { "Authorization: Bearer sk-wrong", NULL };
    assert_int_equal(bd_it_http("GET", url, NULL, wrong, &r), 0);
    assert_int_equal(r.status, 401);
    bd_it_resp_free(&r);
    /* An upload without a key: refused from its headers, before the body. */
    long status;
    e = upload_mime(&g_small, "{}\n", 3, "k.jsonl", "batch", NULL, &status, &r);
    expect_error(status, &r, e, 401, NULL);
    bd_it_resp_free(&r);
    json_decref(e);
    const char *right[] = { AUTH, NULL };
    assert_int_equal(bd_it_http("GET", url, NULL, right, &r), 0);
    assert_int_equal(r.status, 200);
    bd_it_resp_free(&r);
}

/* File uploads share the long-upload slots with streamed job submits (half the API pool: 2
 * here). A submit waiting in line for a slot goes on when a file upload gives its slot
 * back, not only when another submit does. */
static void test_files_hands_slot_to_waiting_submit_when_upload_ends(void **state)
{
    struct bd_it_raw up1, up2, sub;
    struct bd_it_resp r;
    size_t blen;
    (void)state;

    char *body = multipart_body("openai-slot", "batch", "{}\n", 3, &blen);
    send_chunked(&up1, g_proc.port, "openai-slot", body, blen, AUTH, 10);
    send_chunked(&up2, g_proc.port, "openai-slot", body, blen, AUTH, 10);
    bd_it_sleep_ms(200);               /* both hold a slot now */
    static const char line[] = "{\"text\": \"waiting for a slot\", \"id\": \"w1\"}\n";
    char hdrs[256];
    snprintf(hdrs, sizeof(hdrs), "Content-Type: application/x-ndjson\r\n"
             "Content-Length: %zu\r\n", sizeof(line) - 1);
    bd_it_raw_open(&sub, g_proc.port, "POST",
                   "/api/v1/batch/jobs?operation=bulk_embed&model=hashmodel", hdrs, 0);
    bd_it_raw_send(&sub, line);
    /* In line: no answer while both uploads hold their slots. */
    assert_int_equal(bd_it_raw_read(&sub, 300, 0), -1);
    bd_it_raw_close(&up1);             /* the upload goes away: its slot frees */
    assert_int_equal(bd_it_raw_response(&sub, &r, false, 5000), 0);
    if (r.status != 202)
        fail_msg("waiting submit: %ld %s", r.status, r.body);
    bd_it_resp_free(&r);
    bd_it_raw_close(&sub);
    bd_it_raw_close(&up2);
    free(body);
}

/* ---- setup ------------------------------------------------------------------------------ */

/* The official openai npm package (test/openai/package.json pins it; `npm ci` installs it
 * from the lock file on first use), unchanged but for baseURL and the key, drives the Files
 * API: a 30,000-line file streamed with fs.createReadStream (chunked multipart) and one
 * made with toFile, read back byte for byte, listed with the SDK's auto-pagination,
 * deleted, then 404 (NotFoundError) and a refused purpose (BadRequestError). */
static void test_files_work_with_the_official_openai_sdk(void **state)
{
    char env[256];

    (void)state;
    snprintf(env, sizeof(env), "BATCHD_URL='%s' BATCHD_KEY=sk-anything", g_proc.base);
    assert_int_equal(bd_it_openai_sdk("files.mjs", env), 0);
}

static int it_setup(void **state)
{
    static const char *const small_env[] = { "BATCH_API_KEYS=" KEY, NULL };

    (void)state;
    if (bd_it_scratch_open(&g_scr, "itfiles", "BD_IT_FILES_REDIS_DB", "16") != 0)
        return -1;
    if (bd_it_start(&g_proc, "models:\n  - name: hashmodel\n    provider: hashing\n"
                             "    dimensions: 4\n", NULL) != 0)
        return -1;
    g_started = true;
    if (bd_it_start(&g_small, "openai:\n  max_file_bytes: 1000\n", small_env) != 0)
        return -1;
    g_small_started = true;
    return 0;
}

static int it_teardown(void **state)
{
    int rc = 0;
    (void)state;
    rc |= bd_it_stop_started(&g_proc, &g_started);
    rc |= bd_it_stop_started(&g_small, &g_small_started);
    bd_it_scratch_close(&g_scr);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files_uploads_with_content_length_and_reads_it_back),
        cmocka_unit_test(test_files_uploads_chunked_with_boundary_cut_anywhere),
        cmocka_unit_test(test_files_streams_20mb_file_when_memory_stays_flat),
        cmocka_unit_test(test_files_pages_with_after_limit_and_order),
        cmocka_unit_test(test_files_deletes_then_answers_404),
        cmocka_unit_test(test_files_refuses_bad_multipart_in_openai_shape),
        cmocka_unit_test(test_files_leaves_nothing_when_too_large_or_cut),
        cmocka_unit_test(test_files_answers_401_when_keys_set_and_no_bearer),
        cmocka_unit_test(test_files_hands_slot_to_waiting_submit_when_upload_ends),
        cmocka_unit_test(test_files_work_with_the_official_openai_sdk),
    };
    bd_it_apply_filter();
    return cmocka_run_group_tests(tests, it_setup, it_teardown);
}
