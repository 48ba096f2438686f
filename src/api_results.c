/* api_results.c -- per-item outcomes and stored results of a job: GET /jobs/{id}/items and
 * GET /jobs/{id}/results, the latter as paged JSON or streamed as JSON Lines.
 *
 * Owns the per-request state of its handlers: the paged ones keep theirs in the request's
 * arena; the JSON Lines stream mallocs its own and frees it once the stream has ended and
 * no query is in flight. Loop thread only; never blocks. Reads PostgreSQL only through
 * job_store.h; never writes anything.  SPDX-License-Identifier: MIT
 */
#include "api_internal.h"

#include "batchd/buf.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_ITEMS_DEFAULT    100
#define API_RESULTS_DEFAULT  100
#define API_STREAM_PAGE      500            /* rows per query while streaming results */
/* Stored bytes per page (JSON is 3 to 4 times more): a paged answer stays under ~4 MiB and
 * a streamed page under ~1 MiB, whatever the vectors' dimension; the page is cut (has_more,
 * next_cursor) at the row that reaches it. */
#define API_PAGE_STORED_BYTES   (1u << 20)
#define API_STREAM_STORED_BYTES (256u * 1024)
#define API_STREAM_CHUNK     (64u * 1024)   /* JSON Lines bytes per stream write */
#define API_STREAM_HIGH      (1u << 20)     /* pending bytes above which we wait to drain */

/* A paged item request (items, or results as JSON); in req's arena. */
struct api_page_call {
    struct bd_http_request *req;
    const char *job_id;               /* req's arena */
    unsigned limit;
    long long cursor;                 /* first item index asked for */
    bool has_cursor;
};

/* Common prologue: auth, {id}, limit= and cursor=. NULL when already answered. */
static struct api_page_call *api_page_begin(struct bd_http_request *req, struct bd_server *srv,
                                            unsigned def_limit)
{
    struct api_page_call *call;
    const char *id;

    if (!bd__api_check_auth(req, srv) || (id = bd__api_job_id(req)) == NULL)
        return NULL;
    if ((call = bd_http_alloc(req, sizeof(*call))) == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return NULL;
    }
    memset(call, 0, sizeof(*call));
    call->req = req;
    call->job_id = id;
    if (!bd__api_get_limit(req, def_limit, &call->limit) ||
        !bd__api_get_cursor(req, 'i', INT32_MAX, &call->has_cursor, &call->cursor))
        return NULL;
    return call;
}

/* next_cursor of a page whose last row has index last (count rows). While the job can
 * still produce items it stays set, so a client can keep polling from where it is; it is
 * null only once the job is terminal and everything was read. */
static json_t *api_page_next(const struct api_page_call *call, enum bd_job_state job_status,
                             size_t count, long long last, bool has_more)
{
    long long next = call->has_cursor ? call->cursor : 0;

    if (count > 0)
        next = last + 1;
    if (has_more || !bd__api_is_terminal(job_status))
        return bd__api_cursor_json('i', next);
    return json_null();
}

/* ---- GET /jobs/{id}/items?status=all|failed|succeeded&limit=&cursor= -------------------- */

static const char *const api_item_filter_names[] = {
    [BD_ITEMS_ALL] = "all", [BD_ITEMS_FAILED] = "failed", [BD_ITEMS_SUCCEEDED] = "succeeded",
};

static void api_on_item_rows(int status, const struct bd_item_page *page,
                             const char *pg_message, void *arg)
{
    struct api_page_call *call = arg;
    json_t *doc, *items;
    bool is_failed = false;

    if (status < 0) {
        bd__api_fail_store(call->req, call->job_id, status, pg_message);
        return;
    }
    items = json_array();
    for (size_t i = 0; i < page->count; i++) {
        const struct bd_item_row *r = &page->rows[i];
        json_t *item = json_object();

        bd__api_set(item, "index", json_integer(r->index), &is_failed);
        bd__api_set(item, "id", r->id ? json_string(r->id) : json_null(), &is_failed);
        bd__api_set(item, "status", json_string(r->error_code ? "failed" : "succeeded"),
                    &is_failed);
        if (r->error_code) {
            json_t *err = json_object();
            bd__api_set(err, "code", json_string(r->error_code), &is_failed);
            bd__api_set(err, "message",
                        r->error_message ? json_string(r->error_message) : json_null(),
                        &is_failed);
            bd__api_set(item, "error", err, &is_failed);
        }
        if (json_array_append_new(items, item) < 0)
            is_failed = true;
    }
    doc = json_object();
    bd__api_set(doc, "job_id", json_string(call->job_id), &is_failed);
    bd__api_set(doc, "items", items, &is_failed);
    bd__api_set(doc, "count", json_integer((json_int_t)page->count), &is_failed);
    bd__api_set(doc, "has_more", json_boolean(page->has_more), &is_failed);
    bd__api_set(doc, "next_cursor",
                api_page_next(call, page->job_status, page->count,
                              page->count ? page->rows[page->count - 1].index : 0,
                              page->has_more),
                &is_failed);
    if (is_failed) {
        json_decref(doc);
        doc = NULL;
    }
    bd__api_respond_json(call->req, 200, doc, NULL);
}

static void api_on_items(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_page_call *call;
    const char *filter_s = bd_http_query_get(req, "status");
    int filter = -1;
    int err;

    if ((call = api_page_begin(req, srv, API_ITEMS_DEFAULT)) == NULL)
        return;
    /* SPEC §2: every item by default. */
    if (filter_s == NULL || *filter_s == '\0')
        filter = BD_ITEMS_ALL;
    for (int i = 0; filter < 0 && i <= BD_ITEMS_SUCCEEDED; i++)
        if (strcmp(filter_s, api_item_filter_names[i]) == 0)
            filter = i;
    if (filter < 0) {
        bd_http_respond_err(req, BD_EINVAL, "status must be all, failed or succeeded", "status");
        return;
    }
    err = bd_job_store_list_items(srv->pg, call->job_id, (enum bd_item_filter)filter,
                              call->has_cursor ? call->cursor : 0, call->limit,
                              api_on_item_rows, call);
    if (err < 0)
        bd__api_fail_store(req, call->job_id, err, NULL);
}

/* ---- results: one JSON object per stored vector --------------------------------------- */

/* {"index":N,"id":"..","embedding":[..],"metadata":{..}}. The metadata is jsonb's own text
 * output, already JSON: it is copied, not parsed. */
static void api_put_result(struct bd_buf *b, const struct bd_result_row *r)
{
    bd_buf_printf(b, "{\"index\":%lld,\"id\":", r->index);
    bd_buf_json_string(b, r->id, r->id_len);
    bd_buf_puts(b, ",\"embedding\":");
    if (r->embedding == NULL)
        bd_buf_puts(b, "null");
    else
        bd_pg_real_array_to_json(b, r->embedding, r->embedding_len);
    bd_buf_puts(b, ",\"metadata\":");
    if (r->metadata_json == NULL)
        bd_buf_puts(b, "null");
    else
        bd_buf_append(b, r->metadata_json, r->metadata_len);
    bd_buf_puts(b, "}");
}

/* A JSON value (stolen) appended to b in compact form. */
static void api_put_json(struct bd_buf *b, json_t *v)
{
    char *s = v ? json_dumps(v, BD__API_JSON_FLAGS | JSON_ENCODE_ANY) : NULL;

    json_decref(v);
    if (s == NULL) {
        b->is_failed = 1;
        return;
    }
    bd_buf_puts(b, s);
    free(s);
}

/* The paged answer is written by hand, not through jansson: a page may hold 1000 vectors of
 * thousands of floats, and building a json_t per float would cost far more than copying
 * PostgreSQL's text. */
static void api_on_result_rows(int status, const struct bd_result_page *page,
                               const char *pg_message, void *arg)
{
    struct api_page_call *call = arg;
    struct bd_buf b;

    if (status < 0) {
        bd__api_fail_store(call->req, call->job_id, status, pg_message);
        return;
    }
    bd_buf_init(&b);
    bd_buf_reserve(&b, 256 + page->count * 64);
    bd_buf_puts(&b, "{\"job_id\":");
    bd_buf_json_string(&b, call->job_id, strlen(call->job_id));
    bd_buf_puts(&b, ",\"status\":");
    bd_buf_json_string(&b, bd_job_state_name(page->job_status),
                       strlen(bd_job_state_name(page->job_status)));
    bd_buf_puts(&b, ",\"collection\":");
    bd_buf_json_string(&b, page->collection, strlen(page->collection));
    bd_buf_puts(&b, ",\"results\":[");
    for (size_t i = 0; i < page->count; i++) {
        if (i > 0)
            bd_buf_append(&b, ",", 1);
        api_put_result(&b, &page->rows[i]);
    }
    bd_buf_printf(&b, "],\"count\":%zu,\"has_more\":%s,\"next_cursor\":", page->count,
                  page->has_more ? "true" : "false");
    api_put_json(&b, api_page_next(call, page->job_status, page->count,
                                   page->count ? page->rows[page->count - 1].index : 0,
                                   page->has_more));
    bd_buf_puts(&b, "}");
    if (b.is_failed)
        bd_http_respond_err(call->req, BD_ENOMEM, "out of memory building the response", NULL);
    else
        bd_http_respond(call->req, 200, "application/json", NULL, b.data, b.len);
    bd_buf_free(&b);
}

/* ---- results streamed as JSON Lines ----------------------------------------------------- */

/* Streaming state. malloc'ed: it outlives a single callback and may outlive the request
 * itself by one query (freed when that query's callback arrives). */
struct api_ndjson {
    struct bd_http_request *req;      /* NULL once finished */
    struct bd_server *srv;
    struct bd_buf out;                /* lines not yet handed to the stream, reused */
    long long next_index;             /* keyset: next page starts at this item index */
    unsigned long long rows;
    bool is_started;                  /* bd_http_stream_begin called */
    bool is_finished;                 /* stream ended / request answered */
    bool is_aborted;                  /* client went away */
    bool is_query_in_flight;
    bool is_head;                     /* HEAD: headers only, so one page decides the status */
    char job_id[BD__API_JOB_ID_MAX + 1];
};

static void api_ndjson_maybe_free(struct api_ndjson *st)
{
    if (!st->is_finished || st->is_query_in_flight)
        return;
    bd_buf_free(&st->out);
    free(st);
}

/* End the request exactly once. err < 0: before the stream started it becomes the HTTP
 * error; after, a last line {"error":{...}} tells the client the stream is incomplete. */
static void api_ndjson_finish(struct api_ndjson *st, int err, const char *pg_message)
{
    struct bd_http_request *req = st->req;

    if (st->is_finished)
        return;
    st->is_finished = true;
    st->req = NULL;
    if (!st->is_started && err == BD_ESHUTDOWN) {
        bd_http_respond_err(req, err, NULL, NULL);
    } else if (!st->is_started) {
        bd__api_fail_store(req, st->job_id, err < 0 ? err : BD_EINTERNAL, pg_message);
    } else {
        if (err < 0 && err != BD_ENOTFOUND && err != BD_ESHUTDOWN)
            bd_log(BD_LOG_WARN, "api", "job=%s event=store_failed route=results err=%s "
                   "pg=\"%s\"", st->job_id, bd_err_name(err), pg_message ? pg_message : "");
        if (err < 0 && !st->is_aborted) {
            char line[160];
            int n = snprintf(line, sizeof(line),
                             "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                             bd_err_api_code(err), bd_strerror(err));
            bd_http_stream_write(req, line, (size_t)n);
        }
        bd_http_stream_end(req);
    }
    bd_log(BD_LOG_DEBUG, "api", "job=%s event=results_stream_end rows=%llu err=%s",
           st->job_id, st->rows, bd_err_name(err));
    api_ndjson_maybe_free(st);
}

static void api_ndjson_on_rows(int status, const struct bd_result_page *page,
                               const char *pg_message, void *arg);

static void api_ndjson_next(struct api_ndjson *st)
{
    int err;

    if (st->srv->is_stopping) {
        api_ndjson_finish(st, BD_ESHUTDOWN, NULL);
        return;
    }
    err = bd_job_store_list_results(st->srv->pg, st->job_id, st->next_index, API_STREAM_PAGE,
                                    API_STREAM_STORED_BYTES, api_ndjson_on_rows, st);
    if (err < 0) {
        api_ndjson_finish(st, err == BD_ENOMEM ? err : BD_EPG, NULL);
        return;
    }
    st->is_query_in_flight = true;
}

/* Hand the buffered lines to the stream. False when the stream is finished (client gone or
 * out of memory). */
static bool api_ndjson_flush(struct api_ndjson *st)
{
    if (st->out.is_failed) {
        api_ndjson_finish(st, BD_ENOMEM, NULL);
        return false;
    }
    if (st->out.len == 0)
        return true;
    if (bd_http_stream_write(st->req, st->out.data, st->out.len) < 0) {
        st->is_aborted = true;
        api_ndjson_finish(st, BD_OK, NULL);
        return false;
    }
    bd_buf_reset(&st->out);
    return true;
}

static void api_ndjson_on_drain(struct bd_http_request *req, void *arg)
{
    (void)req;
    api_ndjson_next(arg);
}

static void api_ndjson_on_abort(struct bd_http_request *req, void *arg)
{
    struct api_ndjson *st = arg;

    (void)req;
    st->is_aborted = true;
    /* Before the stream started the first page's callback answers (the server discards
     * it); after, end now -- a query in flight then only frees st. A drain callback cannot
     * follow: ending the stream drops it. */
    if (st->is_started)
        api_ndjson_finish(st, BD_OK, NULL);
}

static void api_ndjson_on_rows(int status, const struct bd_result_page *page,
                               const char *pg_message, void *arg)
{
    struct api_ndjson *st = arg;

    st->is_query_in_flight = false;
    if (st->is_finished) {
        api_ndjson_maybe_free(st);
        return;
    }
    if (status < 0) {                  /* also: no such job, or deleted while we streamed */
        api_ndjson_finish(st, status, pg_message);
        return;
    }
    if (!st->is_started) {
        st->is_started = true;
        if (bd_http_stream_begin(st->req, 200, "application/x-ndjson",
                                 "Cache-Control: no-cache\r\n") < 0) {
            st->is_aborted = true;
            api_ndjson_finish(st, BD_OK, NULL);
            return;
        }
    }
    for (size_t i = 0; i < page->count; i++) {
        api_put_result(&st->out, &page->rows[i]);
        bd_buf_append(&st->out, "\n", 1);
        if (st->out.len >= API_STREAM_CHUNK && !api_ndjson_flush(st))
            return;
    }
    if (!api_ndjson_flush(st))
        return;
    st->rows += page->count;
    if (!page->has_more || st->is_head) {
        api_ndjson_finish(st, BD_OK, NULL);
        return;
    }
    st->next_index = page->rows[page->count - 1].index + 1;
    /* Backpressure: a slow reader holds at most ~1 MiB plus one page (~1 MiB, a page being
     * cut by bytes too) here, whatever the
     * size of the job. */
    if (bd_http_stream_get_pending(st->req) > API_STREAM_HIGH) {
        bd_log(BD_LOG_DEBUG, "api", "job=%s event=results_stream_wait pending=%zu rows=%llu",
               st->job_id, bd_http_stream_get_pending(st->req), st->rows);
        bd_http_stream_set_drain_cb(st->req, api_ndjson_on_drain, st);
        return;
    }
    api_ndjson_next(st);
}

static void api_ndjson_start(struct api_page_call *call, struct bd_server *srv)
{
    struct api_ndjson *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        bd_http_respond_err(call->req, BD_ENOMEM, NULL, NULL);
        return;
    }
    st->req = call->req;
    st->srv = srv;
    st->next_index = call->has_cursor ? call->cursor : 0;
    st->is_head = strcmp(call->req->method, "HEAD") == 0;
    snprintf(st->job_id, sizeof(st->job_id), "%s", call->job_id);
    bd_buf_init(&st->out);
    bd_http_set_abort_cb(st->req, api_ndjson_on_abort, st);
    api_ndjson_next(st);
}

/* ---- GET /jobs/{id}/results?limit=&cursor=&format=json|ndjson ------------------------- */

/* Accept: application/x-ndjson (or application/jsonl), or ?format=ndjson. */
static bool api_wants_ndjson(struct bd_http_request *req, bool *is_bad)
{
    const char *accept = bd_http_header_get(req, "Accept");
    const char *format = bd_http_query_get(req, "format");

    *is_bad = false;
    if (format != NULL && *format != '\0') {
        if (strcmp(format, "ndjson") == 0 || strcmp(format, "jsonl") == 0)
            return true;
        if (strcmp(format, "json") != 0)
            *is_bad = true;
        return false;
    }
    return accept != NULL &&
           (strstr(accept, "application/x-ndjson") != NULL ||
            strstr(accept, "application/jsonl") != NULL);
}

static void api_on_results(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_page_call *call;
    bool is_ndjson, is_bad;
    int err;

    if ((call = api_page_begin(req, srv, API_RESULTS_DEFAULT)) == NULL)
        return;
    is_ndjson = api_wants_ndjson(req, &is_bad);
    if (is_bad) {
        bd_http_respond_err(req, BD_EINVAL, "format must be json or ndjson", "format");
        return;
    }
    if (is_ndjson) {
        api_ndjson_start(call, srv);
        return;
    }
    err = bd_job_store_list_results(srv->pg, call->job_id, call->has_cursor ? call->cursor : 0,
                                    call->limit, API_PAGE_STORED_BYTES, api_on_result_rows,
                                    call);
    if (err < 0)
        bd__api_fail_store(req, call->job_id, err, NULL);
}

int bd__api_register_results(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;

    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/jobs/{id}/items", api_on_items, srv);
    rc = rc ? rc : bd_router_add(r, "GET", BD_API_PREFIX "/jobs/{id}/results", api_on_results,
                                 srv);
    return rc;
}
