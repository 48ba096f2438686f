/* commands.c -- the short commands: status, list, cancel, retry, queue, pause, resume; and
 * what the commands share for printing a job.
 *
 * Owns nothing beyond a call. Blocking CLI code. Reaches batchd only through http.h.
 * SPDX-License-Identifier: MIT
 */
#include "commands.h"

#include "bctl.h"
#include "progress.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared ------------------------------------------------------------------------- */

static long long jint(json_t *o, const char *path)
{
    json_t *v = o;
    char key[64];

    while (v != NULL && *path != '\0') {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        snprintf(key, sizeof(key), "%.*s", (int)n, path);
        v = json_object_get(v, key);
        path += n + (dot ? 1 : 0);
    }
    return json_is_integer(v) ? (long long)json_integer_value(v)
                              : json_is_real(v) ? (long long)json_real_value(v) : -1;
}

static double jnum(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(o, a), b);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *jstr(json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static const char *jstr2(json_t *o, const char *a, const char *b, const char *dflt)
{
    const char *s = json_string_value(json_object_get(json_object_get(o, a), b));
    return s ? s : dflt;
}

int bctl_cmd_job_exit(const char *state)
{
    if (state == NULL)
        return -1;
    if (strcmp(state, "completed") == 0)
        return BCTL_EXIT_OK;
    if (strcmp(state, "failed") == 0)
        return BCTL_EXIT_JOB_FAILED;
    if (strcmp(state, "cancelled") == 0)
        return BCTL_EXIT_JOB_CANCELLED;
    return -1;
}

void bctl_cmd_job_path(char *out, size_t outlen, const char *id, const char *suffix)
{
    snprintf(out, outlen, "/jobs/%s%s", id, suffix ? suffix : "");
}

void bctl_cmd_job_progress_text(json_t *st, char *out, size_t outlen, double *fraction)
{
    long long total = jint(st, "progress.total_items");
    long long done = jint(st, "progress.processed_items");
    long long failed = jint(st, "progress.failed_items");
    long long batch = jint(st, "progress.current_batch");
    long long batches = jint(st, "progress.total_batches");
    double pct = jnum(st, "progress", "percentage");

    *fraction = isnan(pct) ? -1 : pct / 100.0;
    snprintf(out, outlen, "%lld/%lld items, %lld failed, batch %lld/%lld", done < 0 ? 0 : done,
             total < 0 ? 0 : total, failed < 0 ? 0 : failed, batch < 0 ? 0 : batch,
             batches < 0 ? 0 : batches);
}

void bctl_cmd_print_job_end(json_t *st)
{
    char took[32];
    long long ms = jint(st, "timing.total_processing_time_ms");

    bctl_progress_fmt_duration(took, sizeof(took), ms < 0 ? -1 : (double)ms / 1000);
    printf("%s %s: %lld/%lld items, %lld failed, in %s", jstr(st, "job_id", "?"),
           jstr(st, "status", "?"), jint(st, "progress.processed_items"),
           jint(st, "progress.total_items"), jint(st, "progress.failed_items"), took);
    json_t *err = json_object_get(st, "error");
    if (json_is_object(err))
        printf(" (%s: %s)", jstr(err, "code", "?"), jstr(err, "message", ""));
    putchar('\n');
}

void bctl_cmd_print_body(const struct bctl_http_resp *r)
{
    if (r->body.len == 0)
        return;
    fwrite(r->body.data, 1, r->body.len, stdout);
    if (r->body.data[r->body.len - 1] != '\n')
        putchar('\n');
}

/* GET or body-less POST/DELETE on path; the parsed answer (caller decrefs) or NULL with
 * *exit_code set (reported). */
static json_t *cmd_call(struct bctl_ctx *c, const char *method, const char *path,
                        const char *const *query, const char *what, struct bctl_http_resp *resp,
                        int *exit_code)
{
    char *url = bctl_http_url(&c->http, path, query);
    json_t *doc;

    memset(resp, 0, sizeof(*resp));
    if (url == NULL) {
        fprintf(stderr, "batchctl: %s: cannot build a URL from '%s'\n", what, c->args->url);
        *exit_code = BCTL_EXIT_USAGE;
        return NULL;
    }
    doc = bctl_http_json(&c->http, method, url, what, resp, exit_code);
    curl_free(url);
    return doc;
}

/* ---- status ------------------------------------------------------------------------- */

static void print_status(json_t *st)
{
    char text[160], bar[48], took[32];
    double fraction;
    json_t *timing = json_object_get(st, "timing");
    json_t *results = json_object_get(st, "results");
    json_t *err = json_object_get(st, "error");
    long long ms = jint(timing, "total_processing_time_ms");

    if (ms < 0)
        ms = jint(timing, "processing_time_ms");
    bctl_cmd_job_progress_text(st, text, sizeof(text), &fraction);
    printf("%s  %s%s\n", jstr(st, "job_id", "?"), jstr(st, "status", "?"),
           json_is_true(json_object_get(st, "cancel_requested")) ? " (cancel requested)" : "");
    printf("  operation   %s", jstr(st, "operation", "?"));
    if (json_is_string(json_object_get(st, "model")))
        printf("   model %s", jstr(st, "model", ""));
    printf("   collection %s\n", jstr(results, "output_collection", "?"));
    printf("  progress    %s %5.1f%%  %s\n", bctl_progress_bar(bar, sizeof(bar), 20, fraction),
           fraction < 0 ? 0.0 : fraction * 100, text);
    printf("  created     %s", jstr(timing, "created_at", "-"));
    printf("   started %s", jstr(timing, "started_at", "-"));
    if (json_is_string(json_object_get(timing, "completed_at")))
        printf("   completed %s", jstr(timing, "completed_at", ""));
    else if (json_is_string(json_object_get(timing, "estimated_completion")))
        printf("   estimated %s", jstr(timing, "estimated_completion", ""));
    putchar('\n');
    printf("  time        %s   success %.1f%%   stored %lld   cache hits %lld\n",
           bctl_progress_fmt_duration(took, sizeof(took), ms < 0 ? -1 : (double)ms / 1000),
           jnum(st, "results", "success_rate"), jint(results, "stored_vectors"),
           jint(results, "cache_hits") < 0 ? 0 : jint(results, "cache_hits"));
    if (json_is_object(err))
        printf("  error       %s: %s\n", jstr(err, "code", "?"), jstr(err, "message", ""));
}

int bctl_cmd_status(struct bctl_ctx *c)
{
    char path[192], what[192];
    struct bctl_http_resp resp;
    int rc;

    bctl_cmd_job_path(path, sizeof(path), c->args->id, "/status");
    snprintf(what, sizeof(what), "status %s", c->args->id);
    json_t *st = cmd_call(c, "GET", path, NULL, what, &resp, &rc);
    if (st != NULL) {
        if (c->args->is_json)
            bctl_cmd_print_body(&resp);
        else if (!c->args->is_quiet)
            print_status(st);
        json_decref(st);
    }
    bctl_http_resp_free(&resp);
    return rc;
}

/* ---- list --------------------------------------------------------------------------- */

static void print_jobs(json_t *jobs)
{
    size_t i, w = 6;
    json_t *j;
    char pct[16], items[48];

    json_array_foreach(jobs, i, j) {
        size_t n = strlen(jstr(j, "job_id", ""));
        if (n > w)
            w = n;
    }
    printf("%-*s  %-10s  %-11s  %-16s  %6s  %-15s  %s\n", (int)w, "JOB ID", "STATUS",
           "OPERATION", "MODEL", "DONE", "ITEMS", "CREATED");
    json_array_foreach(jobs, i, j) {
        double p = jnum(j, "progress", "percentage");
        long long failed = jint(j, "progress.failed_items");
        snprintf(pct, sizeof(pct), "%.1f%%", isnan(p) ? 0.0 : p);
        if (failed > 0)
            snprintf(items, sizeof(items), "%lld/%lld (%lld!)", jint(j, "progress.processed_items"),
                     jint(j, "progress.total_items"), failed);
        else
            snprintf(items, sizeof(items), "%lld/%lld", jint(j, "progress.processed_items"),
                     jint(j, "progress.total_items"));
        printf("%-*s  %-10s  %-11s  %-16s  %6s  %-15s  %s\n", (int)w, jstr(j, "job_id", "?"),
               jstr(j, "status", "?"), jstr(j, "operation", "?"), jstr(j, "model", "-"), pct,
               items, jstr2(j, "timing", "created_at", "-"));
    }
}

int bctl_cmd_list(struct bctl_ctx *c)
{
    const struct bctl_args *a = c->args;
    char limit[24];
    json_t *all = json_array();
    char *cursor = NULL;
    int rc = BCTL_EXIT_OK;

    snprintf(limit, sizeof(limit), "%ld", a->limit);
    if (all == NULL)
        return BCTL_EXIT_LOCAL;
    for (;;) {
        const char *query[] = {"status",    a->status,  "model",  a->model,
                               "operation", a->operation, "limit", a->limit ? limit : NULL,
                               "cursor",    cursor,      NULL};
        struct bctl_http_resp resp;
        json_t *page = cmd_call(c, "GET", "/jobs", query, "list", &resp, &rc);
        if (page == NULL) {
            bctl_http_resp_free(&resp);
            break;
        }
        if (!a->is_all && a->is_json)
            bctl_cmd_print_body(&resp);
        bctl_http_resp_free(&resp);
        json_array_extend(all, json_object_get(page, "jobs"));
        const char *next = json_string_value(json_object_get(page, "next_cursor"));
        free(cursor);
        cursor = next != NULL && a->is_all ? strdup(next) : NULL;
        json_decref(page);
        if (cursor == NULL)
            break;
    }
    free(cursor);
    if (rc == BCTL_EXIT_OK && a->is_json && a->is_all) {
        json_t *doc = json_pack("{s:O,s:I,s:n}", "jobs", all, "count",
                                (json_int_t)json_array_size(all), "next_cursor");
        if (doc != NULL)
            json_dumpf(doc, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(doc);
    } else if (rc == BCTL_EXIT_OK && !a->is_json && !a->is_quiet) {
        print_jobs(all);
    }
    json_decref(all);
    return rc;
}

/* ---- cancel, retry ------------------------------------------------------------------ */

int bctl_cmd_cancel(struct bctl_ctx *c)
{
    char path[192], what[192];
    struct bctl_http_resp resp;
    int rc;

    bctl_cmd_job_path(path, sizeof(path), c->args->id, NULL);
    snprintf(what, sizeof(what), "cancel %s", c->args->id);
    json_t *st = cmd_call(c, "DELETE", path, NULL, what, &resp, &rc);
    if (st != NULL) {
        if (c->args->is_json)
            bctl_cmd_print_body(&resp);
        else if (!c->args->is_quiet && json_is_true(json_object_get(st, "cancel_requested")))
            printf("%s: cancel requested; it stops after the batch in flight\n", c->args->id);
        else if (!c->args->is_quiet)
            printf("%s %s\n", c->args->id, jstr(st, "status", "?"));
        json_decref(st);
    }
    bctl_http_resp_free(&resp);
    return rc;
}

int bctl_cmd_retry(struct bctl_ctx *c)
{
    char path[192], what[192];
    struct bctl_http_resp resp;
    int rc;

    bctl_cmd_job_path(path, sizeof(path), c->args->id, "/retry");
    snprintf(what, sizeof(what), "retry %s", c->args->id);
    json_t *st = cmd_call(c, "POST", path, NULL, what, &resp, &rc);
    if (st != NULL) {
        if (c->args->is_json)
            bctl_cmd_print_body(&resp);
        else if (!c->args->is_quiet && jint(st, "run_attempt") > 0)
            printf("%s %s again (run %lld)\n", c->args->id, jstr(st, "status", "?"),
                   jint(st, "run_attempt"));
        else if (!c->args->is_quiet)
            printf("%s %s again\n", c->args->id, jstr(st, "status", "?"));
        json_decref(st);
    }
    bctl_http_resp_free(&resp);
    return rc;
}

/* ---- queue -------------------------------------------------------------------------- */

/* "paused" as the server shows it (a boolean, or an object such as {"all": .., "models":
 * [..]}), or "no" when it says nothing. */
static void print_paused(json_t *v)
{
    if (v == NULL)
        return;
    if (json_is_boolean(v)) {
        printf("paused    %s\n", json_is_true(v) ? "yes" : "no");
        return;
    }
    char *s = json_dumps(v, JSON_COMPACT);
    printf("paused    %s\n", s ? s : "?");
    free(s);
}

static void print_queue(json_t *q)
{
    json_t *qs = json_object_get(q, "queue_status");
    json_t *cap = json_object_get(q, "processing_capacity");
    json_t *depth = json_object_get(q, "queue_depth");
    json_t *models = json_object_get(q, "model_queues");
    const char *name;
    json_t *m;

    printf("jobs      total %lld  queued %lld  processing %lld  completed %lld  failed %lld"
           "  cancelled %lld\n",
           jint(qs, "total_jobs"), jint(qs, "pending_jobs"), jint(qs, "processing_jobs"),
           jint(qs, "completed_jobs"), jint(qs, "failed_jobs"), jint(qs, "cancelled_jobs"));
    printf("workers   %lld of %lld busy (this process)\n", jint(cap, "active_workers"),
           jint(cap, "max_concurrent_jobs"));
    printf("health    wait %.1fs  processing %.1fs  throughput %.1f items/min  success %.1f%%\n",
           jnum(q, "queue_health", "average_wait_time_seconds"),
           jnum(q, "queue_health", "average_processing_time_seconds"),
           jnum(q, "queue_health", "throughput_items_per_minute"),
           jnum(q, "queue_health", "success_rate"));
    if (json_is_object(depth))
        printf("redis     high %lld  normal %lld  low %lld  in flight %lld  queued items %lld\n",
               jint(depth, "high"), jint(depth, "normal"), jint(depth, "low"),
               jint(depth, "in_flight"), jint(depth, "queued_items"));
    else
        printf("redis     unreachable\n");
    print_paused(json_object_get(q, "paused"));
    if (json_object_size(models) == 0)
        return;
    printf("\n%-20s  %7s  %10s  %8s  %9s\n", "MODEL", "QUEUED", "PROCESSING", "AVG (s)",
           "SLOTS");
    json_object_foreach(models, name, m) {
        json_t *slots = json_object_get(m, "slots");
        char sl[32] = "-";
        double avg = json_number_value(json_object_get(m, "avg_time_seconds"));
        if (json_is_object(slots))
            snprintf(sl, sizeof(sl), "%lld/%lld", jint(slots, "in_flight"), jint(slots, "limit"));
        printf("%-20s  %7lld  %10lld  %8.1f  %9s%s\n", name, jint(m, "pending"),
               jint(m, "processing"), avg, sl,
               json_is_true(json_object_get(m, "paused")) ? "  paused" : "");
    }
}

int bctl_cmd_queue(struct bctl_ctx *c)
{
    struct bctl_http_resp resp;
    int rc;

    json_t *q = cmd_call(c, "GET", "/queue/status", NULL, "queue", &resp, &rc);
    if (q != NULL) {
        if (c->args->is_json)
            bctl_cmd_print_body(&resp);
        else if (!c->args->is_quiet)
            print_queue(q);
        json_decref(q);
    }
    bctl_http_resp_free(&resp);
    return rc;
}

/* ---- pause, resume ------------------------------------------------------------------ */

int bctl_cmd_pause(struct bctl_ctx *c, bool is_pause)
{
    const struct bctl_args *a = c->args;
    const char *verb = is_pause ? "pause" : "resume";
    const char *query[] = {"model", a->model, NULL};
    char path[32];
    struct bctl_http_resp resp;
    int rc = BCTL_EXIT_OK;
    char *url;

    snprintf(path, sizeof(path), "/queue/%s", verb);
    url = bctl_http_url(&c->http, path, query);
    if (url == NULL) {
        fprintf(stderr, "batchctl: %s: cannot build a URL from '%s'\n", verb, a->url);
        return BCTL_EXIT_USAGE;
    }
    struct bctl_xfer x = {.method = "POST", .url = url};
    int sent = bctl_http_perform(&c->http, &x, &resp);
    /* A batchd from before pause/resume has no such route: its router answers 404 "no such
     * route" (a 404 of the endpoint itself, e.g. an unknown model, says something else). */
    if (sent == 0 && (resp.status == 404 || resp.status == 405) && resp.body.len > 0 &&
        strstr(resp.body.data, "no such route") != NULL) {
        fprintf(stderr, "batchctl: %s: this batchd has no POST %s (it predates pause and "
                        "resume; upgrade the server)\n", verb, path);
        rc = BCTL_EXIT_UNSUPPORTED;
    } else if (sent < 0 || resp.status < 200 || resp.status >= 300 ||
               resp.curl_code != CURLE_OK) {
        bool is_cut = sent == 0 && resp.status >= 200 && resp.status < 300;
        rc = bctl_http_fail(&c->http, verb, is_cut ? -1 : sent, &resp);
    } else if (a->is_json) {
        bctl_cmd_print_body(&resp);
    } else if (!a->is_quiet) {
        if (a->model != NULL)
            printf("model %s %s\n", a->model, is_pause ? "paused" : "resumed");
        else
            printf("queue %s\n", is_pause ? "paused" : "resumed");
    }
    bctl_http_resp_free(&resp);
    curl_free(url);
    return rc;
}
