/* follow.c -- the two streaming reads: watch (a job's Server-Sent Events, parsed as they
 * arrive, drawn as a progress bar) and results (the job's vectors as JSON Lines, written to
 * a file line by line, resumed with the cursor if the stream breaks).
 *
 * Owns each stream's state for the length of the command. Blocking CLI code. Memory is one
 * event or one line at a time, never the stream.  SPDX-License-Identifier: MIT
 */
#include "commands.h"
#include "follow.h"

#include "bctl.h"
#include "progress.h"
#include "sse.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WATCH_IDLE_MIN_S   45.0   /* batchd sends a keepalive every 15 s on a quiet stream */
#define WATCH_RECONNECTS   5      /* attempts in a row that bring no event */
#define WATCH_LINE_EVERY_S 5.0    /* without a terminal: a progress line at most this often */
#define RESULTS_RESUMES    3
#define RESULTS_LINE_MAX   (64u << 20)

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static long long jint2(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

/* ---- watch -------------------------------------------------------------------------- */

struct watch {
    struct bctl_ctx *c;
    const char *id;
    struct bctl_progress bar;
    struct bctl_sse sse;
    json_t *final;                    /* the terminal status object */
    char error[300];                  /* the message of an "error" event */
    bool has_error_event;
    unsigned events;
    double t0;                        /* when the first count was seen, for the ETA */
    long long ended0;
    bool has_t0;
    unsigned lines;                   /* progress lines written (no terminal) */
    double last_line;
};

/* Show one status object: the bar on a terminal, else a line on stderr. */
static void watch_show(struct watch *w, json_t *st)
{
    const struct bctl_args *a = w->c->args;
    char counts[160], text[240], eta[48] = "", dur[32];
    double fraction, now = bctl_progress_now();
    long long total = jint2(st, "progress", "total_items");
    long long ended = jint2(st, "progress", "processed_items") +
                      jint2(st, "progress", "failed_items");
    const char *state = json_string_value(json_object_get(st, "status"));

    bctl_cmd_job_progress_text(st, counts, sizeof(counts), &fraction);
    /* The ETA from the rate seen here (items ended since the first event / time). */
    if (!w->has_t0 || ended < w->ended0) {
        w->has_t0 = true;
        w->t0 = now;
        w->ended0 = ended;
    } else if (ended > w->ended0 && total > ended && now > w->t0) {
        double rate = (double)(ended - w->ended0) / (now - w->t0);
        snprintf(eta, sizeof(eta), "ETA %s, ",
                 bctl_progress_fmt_duration(dur, sizeof(dur), (double)(total - ended) / rate));
    }
    /* "processing 4530/10000 items, 12 failed, ETA 1m20s, batch 45/100": what a narrow
     * terminal cuts off comes last. */
    char *batch = strstr(counts, ", batch ");
    if (batch != NULL)
        *batch = '\0';
    snprintf(text, sizeof(text), "%s %s, %s%s", state ? state : "?", counts, eta,
             batch ? batch + 2 : "");
    bool is_end = bctl_cmd_job_exit(state) >= 0;
    if (w->bar.is_enabled) {
        bctl_progress_draw(&w->bar, fraction, text, is_end);
    } else if (!a->is_quiet && !a->is_json &&
               (is_end || w->lines == 0 || now - w->last_line >= WATCH_LINE_EVERY_S)) {
        /* A log gets a line now and then, not one per checkpoint. */
        fprintf(stderr, "%s: %.1f%% %s\n", w->id, fraction < 0 ? 0.0 : fraction * 100, text);
        w->lines++;
        w->last_line = now;
    }
}

static int watch_on_event(const char *type, const char *data, size_t len, void *arg)
{
    struct watch *w = arg;
    const struct bctl_args *a = w->c->args;
    bool is_final = strcmp(type, "final") == 0;

    w->events++;
    if (a->is_json) {                 /* every event's status object, one per line */
        fwrite(data, 1, len, stdout);
        putchar('\n');
        fflush(stdout);
    }
    if (strcmp(type, "error") == 0) {
        json_t *doc = json_loadb(data, len, 0, NULL);
        const char *m = json_string_value(
            json_object_get(json_object_get(doc, "error"), "message"));
        snprintf(w->error, sizeof(w->error), "%s", m ? m : "stream error");
        w->has_error_event = true;
        json_decref(doc);
        return 1;
    }
    if (!is_final && strcmp(type, "progress") != 0)
        return 0;                     /* an event this batchctl does not know */
    json_t *st = json_loadb(data, len, 0, NULL);
    if (st == NULL)
        return 0;
    watch_show(w, st);
    if (is_final) {
        w->final = st;
        return 1;                     /* the stream ends here: stop reading */
    }
    json_decref(st);
    return 0;
}

static int watch_on_data(const char *data, size_t n, void *arg)
{
    struct watch *w = arg;
    return bctl_sse_feed(&w->sse, data, n);
}

/* Too many streams on the server (503): poll the status once a second instead. */
static int watch_poll(struct watch *w)
{
    struct bctl_ctx *c = w->c;
    char path[192];
    char *url;
    int rc = BCTL_EXIT_OK;

    bctl_cmd_job_path(path, sizeof(path), w->id, "/status");
    url = bctl_http_url(&c->http, path, NULL);
    if (url == NULL)
        return BCTL_EXIT_USAGE;
    for (;;) {
        struct bctl_http_resp resp;
        json_t *st = bctl_http_json(&c->http, "GET", url, w->id, &resp, &rc);
        bctl_http_resp_free(&resp);
        if (st == NULL)
            break;
        if (c->args->is_json) {
            char *s = json_dumps(st, JSON_COMPACT);
            if (s != NULL)
                puts(s);
            free(s);
            fflush(stdout);
        }
        watch_show(w, st);
        if (bctl_cmd_job_exit(json_string_value(json_object_get(st, "status"))) >= 0) {
            w->final = st;
            break;
        }
        json_decref(st);
        sleep_s(1.0);
    }
    curl_free(url);
    return rc;
}

int bctl_cmd_follow_job(struct bctl_ctx *c, const char *id)
{
    const struct bctl_args *a = c->args;
    static const char *const headers[] = {"Accept: text/event-stream", NULL};
    struct watch w = {.c = c, .id = id};
    char path[192];
    unsigned fruitless = 0;
    int rc = BCTL_EXIT_OK;
    char *url;

    bctl_cmd_job_path(path, sizeof(path), id, "/events");
    url = bctl_http_url(&c->http, path, NULL);
    if (url == NULL) {
        fprintf(stderr, "batchctl: cannot build a URL from '%s'\n", a->url);
        return BCTL_EXIT_USAGE;
    }
    bctl_progress_init(&w.bar, !a->is_quiet && !a->is_json);
    for (;;) {
        struct bctl_xfer x = {.method = "GET", .url = url, .headers = headers,
                              .is_stream = true, .on_data = watch_on_data, .data_arg = &w};
        struct bctl_http_resp resp;
        unsigned before = w.events;

        x.idle_s = a->timeout_s > WATCH_IDLE_MIN_S ? a->timeout_s : WATCH_IDLE_MIN_S;
        bctl_sse_init(&w.sse, 0, watch_on_event, &w);
        int sent = bctl_http_perform(&c->http, &x, &resp);
        bctl_sse_free(&w.sse);
        bool is_ok_status = sent == 0 && resp.status >= 200 && resp.status < 300;

        if (w.final != NULL || w.has_error_event) {
            bctl_http_resp_free(&resp);
            break;
        }
        if (sent == 0 && resp.status == 503 && w.events == 0) {
            bctl_http_resp_free(&resp);
            rc = watch_poll(&w);     /* the server's cap on streams: poll instead */
            break;
        }
        /* After the stream worked, a 5xx is a server on its way down or up: retried below
         * like a refused connection. */
        bool is_retryable = w.events > 0 && (sent < 0 || resp.status >= 500);
        if (sent == 0 && !is_ok_status && !is_retryable) {
            bctl_progress_end(&w.bar);
            rc = bctl_http_fail(&c->http, id, sent, &resp);
            bctl_http_resp_free(&resp);
            break;
        }
        if (resp.stopped < 0) {
            bctl_progress_end(&w.bar);
            fprintf(stderr, "batchctl: %s: the event stream is not Server-Sent Events\n", id);
            bctl_http_resp_free(&resp);
            rc = BCTL_EXIT_SERVER;
            break;
        }
        /* The stream ended without a final event (the server stopped, a proxy cut it):
         * reconnect as an EventSource would, while that brings events; a stream that never
         * worked is reported at once. */
        fruitless = w.events > before ? 0 : fruitless + 1;
        if (w.events == 0 || fruitless > WATCH_RECONNECTS) {
            bctl_progress_end(&w.bar);
            if (sent < 0 || !is_ok_status)
                rc = bctl_http_fail(&c->http, id, sent, &resp);
            else {
                fprintf(stderr, "batchctl: %s: the event stream ended before the job did\n",
                        id);
                rc = BCTL_EXIT_CONNECT;
            }
            bctl_http_resp_free(&resp);
            break;
        }
        bctl_http_resp_free(&resp);
        sleep_s(fruitless > 0 ? fruitless : 0.2);
    }
    bctl_progress_end(&w.bar);
    if (w.final != NULL) {
        const char *state = json_string_value(json_object_get(w.final, "status"));
        rc = bctl_cmd_job_exit(state);
        if (rc < 0)
            rc = BCTL_EXIT_SERVER;
        if (!a->is_json && !a->is_quiet)
            bctl_cmd_print_job_end(w.final);
        json_decref(w.final);
    } else if (w.has_error_event) {
        fprintf(stderr, "batchctl: %s: %s\n", id, w.error);
        rc = BCTL_EXIT_NOT_FOUND;
    }
    curl_free(url);
    return rc;
}

int bctl_cmd_watch(struct bctl_ctx *c)
{
    return bctl_cmd_follow_job(c, c->args->id);
}

/* ---- results ------------------------------------------------------------------------ */

struct results {
    FILE *out;
    struct bd_buf line;               /* a line split across pieces */
    long long count;
    long long next_index;             /* where a resumed stream starts */
    long long total;                  /* the job's processed items, for the bar; -1 unknown */
    double bytes;
    int write_errno;
    bool has_error;
    char error[300];
    struct bctl_progress bar;
};

/* One complete line of the stream. A result goes to the file; a line without "index" is the
 * server saying the stream is cut short ({"error": ...}). */
static int results_line(struct results *r, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (n > 9 && memcmp(s, "{\"index\":", 9) == 0) {
        long long idx = strtoll(s + 9, NULL, 10);
        if (fwrite(s, 1, n, r->out) != n || fputc('\n', r->out) == EOF) {
            r->write_errno = errno;
            return -1;
        }
        r->count++;
        r->next_index = idx + 1;
        return 0;
    }
    json_t *doc = json_loadb(s, n, 0, NULL);
    const char *m = json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
    snprintf(r->error, sizeof(r->error), "%s",
             m ? m : "the stream sent a line that is not a result");
    r->has_error = true;
    json_decref(doc);
    return 0;
}

static int results_on_data(const char *data, size_t n, void *arg)
{
    struct results *r = arg;
    const char *end = data + n;
    char text[96], sz[32];

    r->bytes += (double)n;
    while (data < end) {
        const char *nl = memchr(data, '\n', (size_t)(end - data));
        if (nl == NULL) {
            if (r->line.len + (size_t)(end - data) > RESULTS_LINE_MAX)
                return -2;
            bd_buf_append(&r->line, data, (size_t)(end - data));
            if (r->line.is_failed)
                return -2;
            break;
        }
        int rc;
        if (r->line.len > 0) {
            bd_buf_append(&r->line, data, (size_t)(nl - data));
            rc = r->line.is_failed ? -2 : results_line(r, r->line.data, r->line.len);
            bd_buf_reset(&r->line);
        } else {
            rc = results_line(r, data, (size_t)(nl - data));
        }
        if (rc != 0)
            return rc;
        data = nl + 1;
    }
    snprintf(text, sizeof(text), "%lld/%lld results, %s", r->count, r->total < 0 ? 0 : r->total,
             bctl_progress_fmt_bytes(sz, sizeof(sz), r->bytes));
    bctl_progress_draw(&r->bar, r->total > 0 ? (double)r->count / (double)r->total : -1, text,
                       false);
    return 0;
}

int bctl_cmd_results(struct bctl_ctx *c)
{
    const struct bctl_args *a = c->args;
    static const char *const headers[] = {"Accept: application/x-ndjson", NULL};
    bool is_stdout = a->output == NULL || strcmp(a->output, "-") == 0;
    struct results r = {.total = -1};
    char path[192], cursor[32];
    struct bctl_http_resp resp;
    int rc = BCTL_EXIT_OK;

    /* The status first: a 404 before a file is made, and the count to expect. */
    bctl_cmd_job_path(path, sizeof(path), a->id, "/status");
    char *url = bctl_http_url(&c->http, path, NULL);
    if (url == NULL)
        return BCTL_EXIT_USAGE;
    json_t *st = bctl_http_json(&c->http, "GET", url, a->id, &resp, &rc);
    curl_free(url);
    bctl_http_resp_free(&resp);
    if (st == NULL)
        return rc;
    r.total = jint2(st, "progress", "processed_items");
    json_decref(st);

    r.out = is_stdout ? stdout : fopen(a->output, "w");
    if (r.out == NULL) {
        fprintf(stderr, "batchctl: %s: %s\n", a->output, strerror(errno));
        return BCTL_EXIT_LOCAL;
    }
    bd_buf_init(&r.line);
    bctl_progress_init(&r.bar, !a->is_quiet);
    bctl_cmd_job_path(path, sizeof(path), a->id, "/results");
    for (int attempt = 0;; attempt++) {
        const char *query[] = {"cursor", NULL, NULL};
        if (r.next_index > 0) {
            snprintf(cursor, sizeof(cursor), "i%lld", r.next_index);
            query[1] = cursor;
        }
        url = bctl_http_url(&c->http, path, query);
        if (url == NULL) {
            rc = BCTL_EXIT_USAGE;
            break;
        }
        struct bctl_xfer x = {.method = "GET", .url = url, .headers = headers,
                              .is_stream = true, .on_data = results_on_data, .data_arg = &r};
        r.has_error = false;
        bd_buf_reset(&r.line);
        int sent = bctl_http_perform(&c->http, &x, &resp);
        curl_free(url);
        if (sent == 0 && (resp.status < 200 || resp.status >= 300)) {
            bctl_progress_end(&r.bar);
            rc = bctl_http_fail(&c->http, a->id, sent, &resp);
            bctl_http_resp_free(&resp);
            break;
        }
        if (resp.stopped == -1) {
            bctl_progress_end(&r.bar);
            fprintf(stderr, "batchctl: %s: %s\n", is_stdout ? "stdout" : a->output,
                    strerror(r.write_errno));
            bctl_http_resp_free(&resp);
            rc = BCTL_EXIT_LOCAL;
            break;
        }
        if (resp.stopped != 0) {
            bctl_progress_end(&r.bar);
            fprintf(stderr, "batchctl: %s: a result line is over %u MiB or memory ran out\n",
                    a->id, RESULTS_LINE_MAX >> 20);
            bctl_http_resp_free(&resp);
            rc = BCTL_EXIT_SERVER;
            break;
        }
        bool is_cut = sent < 0 || resp.curl_code != CURLE_OK || r.has_error;
        if (!is_cut) {
            bctl_http_resp_free(&resp);
            break;
        }
        /* The stream broke (the server's error line, or the connection): go on from the
         * first result not written, as the API says. */
        if (attempt >= RESULTS_RESUMES) {
            bctl_progress_end(&r.bar);
            if (r.has_error)
                fprintf(stderr, "batchctl: %s: results incomplete: %s\n", a->id, r.error);
            else
                bctl_http_fail(&c->http, a->id, -1, &resp);
            rc = r.has_error ? BCTL_EXIT_SERVER : BCTL_EXIT_CONNECT;
            bctl_http_resp_free(&resp);
            break;
        }
        bctl_http_resp_free(&resp);
        sleep_s(1.0);
    }
    bctl_progress_end(&r.bar);
    bd_buf_free(&r.line);
    if (fflush(r.out) != 0 || (!is_stdout && fclose(r.out) != 0)) {
        fprintf(stderr, "batchctl: %s: %s\n", is_stdout ? "stdout" : a->output, strerror(errno));
        if (rc == BCTL_EXIT_OK)
            rc = BCTL_EXIT_LOCAL;
    }
    if (rc == BCTL_EXIT_OK && !is_stdout) {
        if (a->is_json) {
            json_t *doc = json_pack("{s:s,s:I,s:s}", "job_id", a->id, "results",
                                    (json_int_t)r.count, "output", a->output);
            if (doc != NULL)
                json_dumpf(doc, stdout, JSON_COMPACT);
            putchar('\n');
            json_decref(doc);
        } else if (!a->is_quiet) {
            fprintf(stderr, "%lld results written to %s\n", r.count, a->output);
        }
    }
    return rc;
}
