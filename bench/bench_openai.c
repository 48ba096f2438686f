/* bench_openai.c -- the same N embedding inputs through the OpenAI-compatible Batch API and
 * through the native streamed job, timed phase by phase (bench/run.sh --only openai_batch).
 *
 *   --path openai: upload the JSON Lines file (POST /v1/files, multipart), create the batch
 *     (POST /v1/batches), poll GET /v1/batches/{id} until it is final, download the output
 *     file whole (GET /v1/files/{id}/content). Phases: upload, create, job (until the batch
 *     shows finalizing, i.e. its job ended), finalize (until completed), download.
 *   --path native: submit the same inputs as JSON Lines (POST /api/v1/batch/jobs?
 *     operation=bulk_embed, application/x-ndjson, sent chunked), poll the job's status until
 *     it is final, download every result as NDJSON (GET /jobs/{id}/results, Accept:
 *     application/x-ndjson), resuming at cursor=i<last+1> if a stream ends early. Phases:
 *     submit, job, download.
 *
 * Line i's text is bb_put_embed_text(nonce, 0, i) in both paths; a new nonce per run keeps
 * the embedding cache out of it. Bodies are generated before the clock; downloads are
 * counted (bytes, lines) and dropped. With --rss-pid it resets that process's peak RSS
 * before the first byte, samples VmRSS at every poll and reads VmHWM at the end. Loop lag:
 * batchd_loop_lag_seconds from /metrics at the start, when the job ended and at the end;
 * the largest lag and the p99 over the whole run and over the finalize come from the
 * bucket deltas (upper bounds). Blocking libcurl on one connection (a bench client; no
 * loop to keep). Always bounded: --timeout (default 600 s). Prints one JSON object.
 * Bench code only.  SPDX-License-Identifier: MIT
 */
#include "bench_common.h"

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LAG_MAX_BUCKETS 32

struct lag {
    int n;
    double le[LAG_MAX_BUCKETS];       /* upper bounds; the last is +Inf */
    double count[LAG_MAX_BUCKETS];    /* cumulative */
};

struct bo {
    const char *base, *path, *model, *nonce, *label;
    unsigned lines;
    int rss_pid;
    double poll_ms, timeout_s;
    CURL *curl;
    struct curl_slist *auth;
    uint64_t deadline;
    long rss_start_kb, rss_max_kb, hwm_kb;
    const char *error;
    bool is_timed_out;
};

/* ---- HTTP ------------------------------------------------------------------------------- */

struct sink {
    struct bb_buf *keep;              /* NULL: count only */
    unsigned long long bytes, newlines;
    char last[256];                   /* the start of the last line seen (NDJSON results) */
    size_t last_len;
    bool is_at_line_start;
};

static size_t sink_write(char *p, size_t size, size_t n, void *arg)
{
    struct sink *s = arg;
    size_t len = size * n;

    if (s->keep)
        bb_put(s->keep, p, len);
    s->bytes += len;
    for (size_t i = 0; i < len; i++) {
        if (s->is_at_line_start) {
            s->last_len = 0;
            s->is_at_line_start = false;
        }
        if (p[i] == '\n') {
            s->newlines++;
            s->is_at_line_start = true;
        } else if (s->last_len < sizeof(s->last) - 1) {
            s->last[s->last_len++] = p[i];
        }
    }
    s->last[s->last_len] = '\0';
    return len;
}

struct source {
    const char *p;
    size_t len, off;
    bool is_sized;                    /* send a Content-Length (else chunked) */
};

static size_t source_read(char *dst, size_t size, size_t n, void *arg)
{
    struct source *s = arg;
    size_t k = size * n;

    if (k > s->len - s->off)
        k = s->len - s->off;
    memcpy(dst, s->p + s->off, k);
    s->off += k;
    return k;
}

/* One request on the shared handle. Returns the HTTP status (0 when the transfer failed).
 * hdrs (may be NULL) is appended after the Authorization header for this call only. */
static long bo_request(struct bo *b, const char *method, const char *url_path,
                       struct curl_slist *hdrs, curl_mime *mime, struct source *body, struct sink *out)
{
    char url[1024];
    CURL *c = b->curl;
    long status = 0;
    double left = (double)(b->deadline - bb_now_ns()) / 1e9;

    if (left <= 0) {
        b->is_timed_out = true;
        b->error = "timed out";
        return 0;
    }
    snprintf(url, sizeof(url), "%s%s", b->base, url_path);
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)(left * 1000) + 1);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    struct curl_slist *h = NULL;
    for (struct curl_slist *a = b->auth; a; a = a->next)
        h = curl_slist_append(h, a->data);
    for (struct curl_slist *a = hdrs; a; a = a->next)
        h = curl_slist_append(h, a->data);
    h = curl_slist_append(h, "Expect:");          /* no 100-continue round trip */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (mime) {
        curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    } else if (body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, source_read);
        curl_easy_setopt(c, CURLOPT_READDATA, body);
        /* no size given: libcurl sends it chunked (Transfer-Encoding in hdrs) */
        if (body->is_sized)
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else if (rc == CURLE_OPERATION_TIMEDOUT) {
        b->is_timed_out = true;
        b->error = "timed out";
    } else {
        fprintf(stderr, "bench_openai: %s %s: %s\n", method, url_path, curl_easy_strerror(rc));
    }
    curl_slist_free_all(h);
    return status;
}

static long bo_post_json(struct bo *b, const char *url_path, const char *json, struct bb_buf *resp)
{
    struct source src = { json, strlen(json), 0, true };
    struct sink out = { .keep = resp };
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    long st = bo_request(b, "POST", url_path, h, NULL, &src, &out);
    curl_slist_free_all(h);
    return st;
}

static long bo_get(struct bo *b, const char *url_path, struct curl_slist *hdrs, struct sink *out)
{
    return bo_request(b, "GET", url_path, hdrs, NULL, NULL, out);
}

static json_t *bo_get_json(struct bo *b, const char *url_path, long *status)
{
    struct bb_buf resp = {0};
    struct sink out = { .keep = &resp };
    json_error_t err;

    *status = bo_get(b, url_path, NULL, &out);
    json_t *j = resp.p ? json_loadb(resp.p, resp.len, 0, &err) : NULL;
    bb_free(&resp);
    return j;
}

/* ---- batchd's RSS and loop lag --------------------------------------------------------- */

static void bo_sample_rss(struct bo *b)
{
    long rss = bb_proc_status_kb(b->rss_pid, "VmRSS");
    if (rss > b->rss_max_kb)
        b->rss_max_kb = rss;
}

static void bo_lag(struct bo *b, struct lag *l)
{
    struct bb_buf resp = {0};
    struct sink out = { .keep = &resp };

    l->n = 0;
    if (bo_get(b, "/metrics", NULL, &out) != 200 || resp.p == NULL) {
        bb_free(&resp);
        return;
    }
    for (char *p = resp.p; p && *p; ) {
        char *nl = strchr(p, '\n');
        if (strncmp(p, "batchd_loop_lag_seconds_bucket{le=\"", 35) == 0 && l->n < LAG_MAX_BUCKETS) {
            char *q = p + 35;
            l->le[l->n] = strncmp(q, "+Inf", 4) == 0 ? 1e300 : strtod(q, NULL);
            char *sp = strchr(q, ' ');
            l->count[l->n] = sp ? strtod(sp + 1, NULL) : 0;
            l->n++;
        }
        p = nl ? nl + 1 : NULL;
    }
    bb_free(&resp);
}

/* The bucket bound (ms) below which quantile q of the lags observed between a and b lie;
 * -1 with no observation, 1e9 past the last finite bound. */
static double lag_quantile_ms(const struct lag *a, const struct lag *b, double q)
{
    if (a->n == 0 || a->n != b->n)
        return -1;
    double total = b->count[b->n - 1] - a->count[a->n - 1];
    if (total <= 0)
        return -1;
    for (int i = 0; i < b->n; i++)
        if (b->count[i] - a->count[i] >= q * total - 1e-9)
            return b->le[i] >= 1e299 ? 1e9 : b->le[i] * 1000.0;
    return 1e9;
}

static void print_lag(const char *name, const struct lag *a, const struct lag *b)
{
    double mx = lag_quantile_ms(a, b, 1.0), p99 = lag_quantile_ms(a, b, 0.99);
    printf(",\"%s_max_ms\":", name);
    mx < 0 ? printf("null") : mx >= 1e9 ? printf("\">%g\"", a->n > 1 ? a->le[a->n - 2] * 1000 : 0) : printf("%g", mx);
    printf(",\"%s_p99_ms\":", name);
    p99 < 0 ? printf("null") : p99 >= 1e9 ? printf("\">%g\"", a->n > 1 ? a->le[a->n - 2] * 1000 : 0) : printf("%g", p99);
}

/* ---- polling ---------------------------------------------------------------------------- */

static void bo_sleep_ms(double ms)
{
    struct timespec ts = { (time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6) };
    nanosleep(&ts, NULL);
}

/* Between two polls: true (b->error set) once the run's deadline passed, else sleep. */
static bool bo_poll_wait(struct bo *b)
{
    if (b->is_timed_out || bb_now_ns() >= b->deadline) {
        b->is_timed_out = true;
        b->error = "timed out";
        return true;
    }
    bo_sleep_ms(b->poll_ms);
    return false;
}

static bool bo_is_terminal(const char *st, bool is_batch)
{
    if (st == NULL)
        return false;
    return strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 ||
           strcmp(st, "cancelled") == 0 || (is_batch && strcmp(st, "expired") == 0);
}

/* ---- inputs ----------------------------------------------------------------------------- */

static void gen_openai(struct bo *b, struct bb_buf *f)
{
    for (unsigned i = 0; i < b->lines; i++) {
        bb_printf(f, "{\"custom_id\":\"r%u\",\"method\":\"POST\",\"url\":\"/v1/embeddings\","
                     "\"body\":{\"model\":\"%s\",\"input\":\"", i, b->model);
        bb_put_embed_text(f, b->nonce, 0, i);
        bb_puts(f, "\"}}\n");
    }
}

static void gen_native(struct bo *b, struct bb_buf *f)
{
    for (unsigned i = 0; i < b->lines; i++) {
        bb_printf(f, "{\"id\":\"r%u\",\"text\":\"", i);
        bb_put_embed_text(f, b->nonce, 0, i);
        bb_puts(f, "\"}\n");
    }
}

/* ---- the two paths ---------------------------------------------------------------------- */

struct result {
    double t_upload, t_create, t_job, t_finalize, t_download, total;
    unsigned long long in_bytes, out_bytes, out_lines;
    long long completed, failed;
    const char *final_status;
    char status_buf[32];
    char id[128], job_id[128];
    struct lag lag0, lag_up, lag_create, lag_job, lag_fin, lag_end;
};

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* A run's start: the input's size, the lag histogram and batchd's RSS as they are now
 * (its peak reset). Returns the start time. */
static uint64_t run_begin(struct bo *b, struct result *r, const struct bb_buf *in)
{
    r->in_bytes = in->len;
    bo_lag(b, &r->lag0);
    if (b->rss_pid > 0) {
        bb_proc_reset_hwm(b->rss_pid);
        b->rss_start_kb = b->rss_max_kb = bb_proc_status_kb(b->rss_pid, "VmRSS");
    }
    return bb_now_ns();
}

static int run_openai(struct bo *b, struct result *r)
{
    struct bb_buf in = {0}, resp = {0};
    gen_openai(b, &in);
    uint64_t t0 = run_begin(b, r, &in);

    /* upload */
    curl_mime *mime = curl_mime_init(b->curl);
    curl_mimepart *part = curl_mime_addpart(mime);
    curl_mime_name(part, "purpose");
    curl_mime_data(part, "batch", CURL_ZERO_TERMINATED);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "file");
    curl_mime_filename(part, "bench.jsonl");
    curl_mime_type(part, "application/jsonl");
    struct source src = { in.p, in.len, 0, true };
    curl_mime_data_cb(part, (curl_off_t)in.len, source_read, NULL, NULL, &src);
    struct sink out = { .keep = &resp };
    long st = bo_request(b, "POST", "/v1/files", NULL, mime, NULL, &out);
    curl_mime_free(mime);
    json_error_t jerr;
    json_t *j = st == 200 ? json_loadb(resp.p, resp.len, 0, &jerr) : NULL;
    if (j == NULL || jstr(j, "id") == NULL) {
        fprintf(stderr, "bench_openai: upload: status %ld: %.300s\n", st, resp.p ? resp.p : "");
        b->error = b->error ? b->error : "upload failed";
        json_decref(j);
        bb_free(&in);
        bb_free(&resp);
        return 1;
    }
    char file_id[128], body[512];
    snprintf(file_id, sizeof(file_id), "%s", jstr(j, "id"));
    json_decref(j);
    bb_free(&in);
    uint64_t t1 = bb_now_ns();
    bo_sample_rss(b);
    bo_lag(b, &r->lag_up);

    /* create */
    resp.len = 0;
    snprintf(body, sizeof(body), "{\"input_file_id\":\"%s\",\"endpoint\":\"/v1/embeddings\","
                                 "\"completion_window\":\"24h\"}", file_id);
    st = bo_post_json(b, "/v1/batches", body, &resp);
    j = st == 200 ? json_loadb(resp.p, resp.len, 0, &jerr) : NULL;
    if (j == NULL || jstr(j, "id") == NULL || strcmp(jstr(j, "status") ? jstr(j, "status") : "", "failed") == 0) {
        fprintf(stderr, "bench_openai: create: status %ld: %.500s\n", st, resp.p ? resp.p : "");
        b->error = b->error ? b->error : "create failed";
        json_decref(j);
        bb_free(&resp);
        return 1;
    }
    snprintf(r->id, sizeof(r->id), "%s", jstr(j, "id"));
    snprintf(r->job_id, sizeof(r->job_id), "%s", jstr(j, "batchd_job_id") ? jstr(j, "batchd_job_id") : "");
    json_decref(j);
    bb_free(&resp);
    uint64_t t2 = bb_now_ns(), t3 = 0, t4 = 0;
    bo_sample_rss(b);
    bo_lag(b, &r->lag_create);

    /* poll: in_progress -> finalizing (the job ended) -> completed */
    char path[256], out_id[128] = "";
    snprintf(path, sizeof(path), "/v1/batches/%s", r->id);
    for (;;) {
        j = bo_get_json(b, path, &st);
        uint64_t now = bb_now_ns();
        bo_sample_rss(b);
        const char *s = jstr(j, "status");
        if (s && t3 == 0 && (strcmp(s, "finalizing") == 0 || bo_is_terminal(s, true))) {
            t3 = now;
            bo_lag(b, &r->lag_job);
        }
        if (bo_is_terminal(s, true)) {
            t4 = now;
            bo_lag(b, &r->lag_fin);
            snprintf(r->status_buf, sizeof(r->status_buf), "%s", s);
            json_t *rc = json_object_get(j, "request_counts");
            r->completed = json_integer_value(json_object_get(rc, "completed"));
            r->failed = json_integer_value(json_object_get(rc, "failed"));
            if (jstr(j, "output_file_id"))
                snprintf(out_id, sizeof(out_id), "%s", jstr(j, "output_file_id"));
            json_decref(j);
            break;
        }
        json_decref(j);
        if (bo_poll_wait(b))
            return 1;
    }
    r->final_status = r->status_buf;

    /* download */
    if (out_id[0]) {
        struct sink dl = {0};
        snprintf(path, sizeof(path), "/v1/files/%s/content", out_id);
        st = bo_get(b, path, NULL, &dl);
        if (st != 200) {
            fprintf(stderr, "bench_openai: download: status %ld\n", st);
            b->error = "download failed";
        }
        r->out_bytes = dl.bytes;
        r->out_lines = dl.newlines;
    }
    uint64_t t5 = bb_now_ns();
    bo_sample_rss(b);
    bo_lag(b, &r->lag_end);
    r->t_upload = (double)(t1 - t0) / 1e9;
    r->t_create = (double)(t2 - t1) / 1e9;
    r->t_job = (double)(t3 - t2) / 1e9;
    r->t_finalize = (double)(t4 - t3) / 1e9;
    r->t_download = (double)(t5 - t4) / 1e9;
    r->total = (double)(t5 - t0) / 1e9;
    return b->error ? 1 : 0;
}

static int run_native(struct bo *b, struct result *r)
{
    struct bb_buf in = {0}, resp = {0};
    gen_native(b, &in);
    uint64_t t0 = run_begin(b, r, &in);

    /* submit, streamed */
    char path[512];
    snprintf(path, sizeof(path), "/api/v1/batch/jobs?operation=bulk_embed&model=%s", b->model);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/x-ndjson");
    h = curl_slist_append(h, "Transfer-Encoding: chunked");
    struct source src = { in.p, in.len, 0, false };
    struct sink out = { .keep = &resp };
    long st = bo_request(b, "POST", path, h, NULL, &src, &out);
    curl_slist_free_all(h);
    bb_free(&in);
    json_error_t jerr;
    json_t *j = st == 202 ? json_loadb(resp.p, resp.len, 0, &jerr) : NULL;
    if (j == NULL || jstr(j, "job_id") == NULL) {
        fprintf(stderr, "bench_openai: native submit: status %ld: %.300s\n", st, resp.p ? resp.p : "");
        b->error = b->error ? b->error : "submit failed";
        json_decref(j);
        bb_free(&resp);
        return 1;
    }
    snprintf(r->job_id, sizeof(r->job_id), "%s", jstr(j, "job_id"));
    json_decref(j);
    bb_free(&resp);
    uint64_t t1 = bb_now_ns(), t2 = 0;
    bo_sample_rss(b);
    bo_lag(b, &r->lag_up);
    r->lag_create = r->lag_up;

    /* poll the job */
    snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/status", r->job_id);
    for (;;) {
        j = bo_get_json(b, path, &st);
        bo_sample_rss(b);
        const char *s = jstr(j, "status");
        if (bo_is_terminal(s, false)) {
            t2 = bb_now_ns();
            snprintf(r->status_buf, sizeof(r->status_buf), "%s", s);
            json_t *pr = json_object_get(j, "progress");
            r->completed = json_integer_value(json_object_get(pr, "processed_items"));
            r->failed = json_integer_value(json_object_get(pr, "failed_items"));
            json_decref(j);
            break;
        }
        json_decref(j);
        if (bo_poll_wait(b))
            return 1;
    }
    r->final_status = r->status_buf;
    bo_lag(b, &r->lag_job);

    /* download every result, following the cursor if a stream ends early */
    long long next = 0;
    h = curl_slist_append(NULL, "Accept: application/x-ndjson");
    for (int tries = 0; tries < 100; tries++) {
        struct sink dl = { .is_at_line_start = true };
        int k = snprintf(path, sizeof(path), "/api/v1/batch/jobs/%s/results", r->job_id);
        if (next > 0 && k > 0 && (size_t)k < sizeof(path))
            snprintf(path + k, sizeof(path) - (size_t)k, "?cursor=i%lld", next);
        st = bo_get(b, path, h, &dl);
        r->out_bytes += dl.bytes;
        r->out_lines += dl.newlines;
        if (st != 200) {
            fprintf(stderr, "bench_openai: results: status %ld\n", st);
            b->error = "download failed";
            break;
        }
        /* the last line: a result ({"index":N,...}) or the stream's error line */
        const char *ix = strstr(dl.last, "\"index\":");
        if (dl.newlines == 0 || ix != NULL)
            break;
        r->out_lines--;                     /* the error line is not a result */
        next = r->out_lines;                /* in index order from 0: the next index */
        fprintf(stderr, "bench_openai: results stream ended early (%s); resuming at i%lld\n",
                dl.last, next);
    }
    curl_slist_free_all(h);
    uint64_t t3 = bb_now_ns();
    bo_sample_rss(b);
    bo_lag(b, &r->lag_end);
    r->t_upload = (double)(t1 - t0) / 1e9;
    r->t_job = (double)(t2 - t1) / 1e9;
    r->t_download = (double)(t3 - t2) / 1e9;
    r->total = (double)(t3 - t0) / 1e9;
    return b->error ? 1 : 0;
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_openai --base http://127.0.0.1:PORT --path openai|native --lines N\n"
            "   [--model M] [--nonce X] [--rss-pid PID] [--poll-ms P] [--timeout S] [--label L]\n");
}

int main(int argc, char **argv)
{
    struct bo b;
    struct result r;
    static const struct option opts[] = {
        { "base", required_argument, NULL, 'b' }, { "path", required_argument, NULL, 'p' },
        { "lines", required_argument, NULL, 'n' }, { "model", required_argument, NULL, 'm' },
        { "nonce", required_argument, NULL, 'N' }, { "rss-pid", required_argument, NULL, 'r' },
        { "poll-ms", required_argument, NULL, 'P' }, { "timeout", required_argument, NULL, 't' },
        { "label", required_argument, NULL, 'l' }, { "help", no_argument, NULL, 'h' },
        { 0, 0, 0, 0 },
    };
    int ch;

    memset(&b, 0, sizeof(b));
    memset(&r, 0, sizeof(r));
    b.path = "openai";
    b.model = "hash";
    b.nonce = "n0";
    b.label = "openai_batch";
    b.lines = 1000;
    b.poll_ms = 50;
    b.timeout_s = 600;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'b': b.base = optarg; break;
        case 'p': b.path = optarg; break;
        case 'n': b.lines = (unsigned)bb_arg_num("--lines", optarg, 1, 1e7); break;
        case 'm': b.model = optarg; break;
        case 'N': b.nonce = optarg; break;
        case 'r': b.rss_pid = (int)bb_arg_num("--rss-pid", optarg, 1, 1e9); break;
        case 'P': b.poll_ms = bb_arg_num("--poll-ms", optarg, 1, 10000); break;
        case 't': b.timeout_s = bb_arg_num("--timeout", optarg, 1, 7200); break;
        case 'l': b.label = optarg; break;
        default: usage(); return ch == 'h' ? 0 : 2;
        }
    }
    bool is_openai = strcmp(b.path, "openai") == 0;
    if (b.base == NULL || (!is_openai && strcmp(b.path, "native") != 0)) {
        usage();
        return 2;
    }
    char host[64];
    int port;
    bb_parse_base(b.base, host, sizeof(host), &port);   /* loopback only */
    char base[128];
    snprintf(base, sizeof(base), "http://%s:%d", host, port);
    b.base = base;

    curl_global_init(CURL_GLOBAL_DEFAULT);
    b.curl = curl_easy_init();
    b.auth = curl_slist_append(NULL, "Authorization: Bearer x");
    b.deadline = bb_now_ns() + (uint64_t)(b.timeout_s * 1e9);
    int rc = is_openai ? run_openai(&b, &r) : run_native(&b, &r);
    if (b.rss_pid > 0)
        b.hwm_kb = bb_proc_status_kb(b.rss_pid, "VmHWM");

    printf("{\"label\":\"%s\",\"path\":\"%s\",\"lines\":%u,\"model\":\"%s\",\"input_bytes\":%llu,"
           "\"batch_id\":\"%s\",\"job_id\":\"%s\",\"status\":\"%s\",\"completed\":%lld,"
           "\"failed\":%lld,\"output_bytes\":%llu,\"output_lines\":%llu,\"total_s\":%.3f,"
           "\"upload_s\":%.3f,\"job_s\":%.3f,\"download_s\":%.3f",
           b.label, b.path, b.lines, b.model, r.in_bytes, r.id, r.job_id,
           r.final_status ? r.final_status : "", r.completed, r.failed, r.out_bytes,
           r.out_lines, r.total, r.t_upload, r.t_job, r.t_download);
    if (is_openai)
        printf(",\"create_s\":%.3f,\"finalize_s\":%.3f,\"finalize_mb_s\":%.1f", r.t_create,
               r.t_finalize, r.t_finalize > 0 ? (double)r.out_bytes / 1e6 / r.t_finalize : 0.0);
    printf(",\"items_per_s\":%.1f,\"rss_start_kb\":%ld,\"hwm_kb\":%ld,\"rss_max_sampled_kb\":%ld",
           r.total > 0 ? b.lines / r.total : 0.0, b.rss_start_kb, b.hwm_kb, b.rss_max_kb);
    /* the whole run, then phase by phase (the lag scrapes take a few ms of a phase) */
    print_lag("loop_lag", &r.lag0, &r.lag_end);
    print_lag("upload_loop_lag", &r.lag0, &r.lag_up);
    if (is_openai)
        print_lag("create_loop_lag", &r.lag_up, &r.lag_create);
    print_lag("job_loop_lag", &r.lag_create, &r.lag_job);
    if (is_openai)
        print_lag("finalize_loop_lag", &r.lag_job, &r.lag_fin);
    print_lag("download_loop_lag", is_openai ? &r.lag_fin : &r.lag_job, &r.lag_end);
    printf(",\"ok\":%s,\"timed_out\":%s,\"error\":\"%s\"}\n",
           rc == 0 && r.out_lines == b.lines && r.final_status &&
           strcmp(r.final_status, "completed") == 0 ? "true" : "false",
           b.is_timed_out ? "true" : "false", b.error ? b.error : "");
    curl_slist_free_all(b.auth);
    curl_easy_cleanup(b.curl);
    curl_global_cleanup();
    return rc;
}
