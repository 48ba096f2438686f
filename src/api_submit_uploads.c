/* api_submit_uploads.c -- the line of streamed submits: each upload holds a connection of
 * the API's PostgreSQL pool until its COMMIT, at most half the pool; the others wait here,
 * first come first served, their bodies paused, and start as a slot frees.
 *
 * Works on the streamed request's record (api_submit_stream.h) and the server's line
 * (srv->uploads_waiting); loop thread only.  SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"
#include "api_submit.h"
#include "api_internal.h"
#include "api_submit_stream.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/log.h"
#include "batchd/server.h"
#include "batchd/submit_scan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How many streamed uploads may run at once: each holds one connection of the API's pool
 * for its whole upload, so at most half of the pool goes to them and status reads and
 * small submits keep working. The others wait in line, their bodies paused. */
unsigned bd__stream_max_uploads(const struct bd_server *srv)
{
    return srv->cfg->postgres_pool_size / 2 ? srv->cfg->postgres_pool_size / 2 : 1;
}

bool bd__stream_has_room(const struct bd_server *srv)
{
    return srv->submit_streams < bd__stream_max_uploads(srv) ||
           srv->uploads_waiting_count < STREAM_WAITING_MAX;
}

/* The job's first statement, once st holds a slot: its key's earlier job, or the job. */
void bd__stream_begin(struct bd__api_stream *st)
{
    if (st->idem_key)
        bd__stream_find_key(st);
    else
        bd__stream_open_job(st);
}

/* A slot for st (counted: go on), or a place in line: BD_OK, 1 (waiting: bd__stream_begin runs
 * when a slot frees), or BD_EUPLOADS (the line is full too). */
int bd__stream_take_slot(struct bd__api_stream *st)
{
    struct bd_server *srv = st->srv;
    struct bd__api_stream **tail = &srv->uploads_waiting;

    if (srv->submit_streams < bd__stream_max_uploads(srv) && srv->uploads_waiting == NULL) {
        st->is_counted = true;
        srv->submit_streams++;
        return BD_OK;
    }
    if (srv->uploads_waiting_count >= STREAM_WAITING_MAX)
        return BD_EUPLOADS;
    while (*tail)
        tail = &(*tail)->wait_next;
    *tail = st;
    st->wait_next = NULL;
    st->is_waiting = true;
    srv->uploads_waiting_count++;
    bd_log(BD_LOG_DEBUG, "api", "event=submit_stream_waiting waiting=%u",
           srv->uploads_waiting_count);
    return 1;
}

void bd__stream_unwait(struct bd__api_stream *st)
{
    struct bd__api_stream **p = &st->srv->uploads_waiting;

    while (*p && *p != st)
        p = &(*p)->wait_next;
    if (*p)
        *p = st->wait_next;
    st->is_waiting = false;
    st->srv->uploads_waiting_count--;
}

/* A slot freed: the uploads first in line go on. */
void bd__stream_release_slot(struct bd_server *srv)
{
    while (srv->uploads_waiting && srv->submit_streams < bd__stream_max_uploads(srv)) {
        struct bd__api_stream *w = srv->uploads_waiting;
        bd__stream_unwait(w);
        w->is_counted = true;
        srv->submit_streams++;
        w->is_in_body = true;                  /* w stays while we look at it */
        bd__stream_begin(w);
        bd__stream_flow(w);
        w->is_in_body = false;
        bd__stream_maybe_free(w);
    }
}

void bd__stream_refuse_upload(struct bd_http_request *req)
{
    bd_http_respond_error_ex(req, bd_err_http_status(BD_EUPLOADS), "Retry-After: 5\r\n",
                             bd_err_api_code(BD_EUPLOADS), bd_strerror(BD_EUPLOADS), NULL);
}

