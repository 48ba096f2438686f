/* job_pause.c -- the queue's pause state in the engine: read from PostgreSQL every
 * BD_JOB_PAUSE_POLL_MS, changed by bd_job_pause, applied to the claim (job_engine.c) and to
 * the running jobs (job_run.c).
 *
 * Why a poll of PostgreSQL and no Redis mirror: PostgreSQL is the truth that survives
 * restarts of batchd and of Redis, one tiny statement twice a second per process costs
 * nothing measurable, and the claim path reads only this process's copy (no extra round
 * trip, and with nothing paused the same Redis script call as without this feature). A
 * mirror in Redis would be one more copy to keep right across Redis flushes for a gain of
 * at most half a second in another process.
 *
 * Owns the engine's pause copy and skip list (struct bd_job_engine). Loop thread only;
 * never blocks. SPDX-License-Identifier: MIT
 */
#include "job_internal.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_store.h"
#include "batchd/log.h"
#include "batchd/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct bd_job_pause_state *bd_job_engine_get_pause(const struct bd_job_engine *e)
{
    return &e->pause;
}

long long bd_job_pause_model_at(const struct bd_job_pause_state *p, const char *model)
{
    if (model == NULL || *model == '\0')
        return 0;
    for (unsigned i = 0; i < p->models_count; i++)
        if (strcmp(p->models[i].name, model) == 0)
            return p->models[i].paused_at_ms > 0 ? p->models[i].paused_at_ms : 1;
    return 0;
}

static bool pause_differs(const struct bd_job_pause_state *a, const struct bd_job_pause_state *b)
{
    if (a->is_known != b->is_known || a->is_paused != b->is_paused ||
        a->models_count != b->models_count)
        return true;
    for (unsigned i = 0; i < a->models_count; i++)
        if (strcmp(a->models[i].name, b->models[i].name) != 0)
            return true;
    return false;
}

/* The rows PostgreSQL gave become this process's state: the claim's skip list, the
 * metrics, and the running jobs the change concerns. */
static void pause_apply(struct bd_job_engine *e, const struct bd_job_pause_row *rows,
                        unsigned count)
{
    struct bd_job_pause_state next = { .is_known = true };
    const struct bd_config *cfg = e->d.cfg;

    for (unsigned i = 0; i < count; i++) {
        if (rows[i].model[0] == '\0') {
            next.is_paused = true;
            next.paused_at_ms = rows[i].paused_at_ms;
        } else if (next.models_count < BD_JOB_PAUSED_MODELS_MAX &&
                   strlen(rows[i].model) < sizeof(next.models[0].name)) {
            struct bd_job_paused_model *m = &next.models[next.models_count++];
            snprintf(m->name, sizeof(m->name), "%s", rows[i].model);
            m->paused_at_ms = rows[i].paused_at_ms;
        }
    }
    bool is_changed = pause_differs(&e->pause, &next);
    e->pause = next;
    for (unsigned i = 0; i < e->pause.models_count; i++)
        e->skip_models[i] = e->pause.models[i].name;
    bd_metrics_set_queue_paused(e->d.metrics, e->pause.is_paused);
    for (unsigned i = 0; i < cfg->models_count; i++)
        bd_metrics_set_model_paused(e->d.metrics, i,
                                    bd_job_pause_model_at(&e->pause, cfg->models[i].name) != 0);
    if (!is_changed)
        return;
    bd_log(BD_LOG_INFO, "job", "event=pause_state paused=%d paused_models=%u",
           e->pause.is_paused, e->pause.models_count);
    for (struct bd_job *j = e->jobs, *nx; j; j = nx) {
        nx = j->next;                         /* a hand-back leaves the list only later */
        bd__job_pause_check(j);
    }
    bd__engine_pump(e);                       /* resumed: claim now, not at the next tick */
}

/* ---- the poll ----------------------------------------------------------------------------- */

static void pause_on_read(int status, const struct bd_job_pause_row *rows, unsigned count,
                          const struct bd_job_store_err *err, void *arg)
{
    struct bd_job_engine *e = arg;

    e->pending_ops--;
    e->is_pause_reading = false;
    if (e->is_stopping) {
        bd__engine_maybe_stopped(e);
        return;
    }
    if (status < 0) {
        /* The last state read stays in force (a restart claims nothing until one read). */
        bd_log(BD_LOG_DEBUG, "job", "event=pause_read_failed err=\"%s\"", err->message);
        return;
    }
    pause_apply(e, rows, count);
}

static void pause_on_timer(uv_timer_t *t)
{
    struct bd_job_engine *e = t->data;

    if (e->is_stopping || e->is_pause_reading)
        return;
    e->pending_ops++;
    e->is_pause_reading = true;
    if (bd_job_store_get_pauses(e->d.pg, pause_on_read, e) < 0) {
        e->pending_ops--;
        e->is_pause_reading = false;
    }
}

void bd__engine_pause_start(struct bd_job_engine *e)
{
    uv_timer_start(&e->pause_timer, pause_on_timer, 0, BD_JOB_PAUSE_POLL_MS);
}

/* ---- pause and resume ------------------------------------------------------------------- */

struct pause_call {
    struct bd_job_engine *e;
    char model[129];                  /* "" = the whole queue */
    bool is_paused;
    bool is_changed;
    bd_job_pause_cb cb;
    void *arg;
};

static void pause_done(struct pause_call *c, int status)
{
    struct bd_job_engine *e = c->e;

    c->cb(status, &e->pause, c->is_changed, c->arg);
    free(c);
    e->pending_ops--;
    if (e->is_stopping)
        bd__engine_maybe_stopped(e);
}

static void pause_on_read_back(int status, const struct bd_job_pause_row *rows, unsigned count,
                               const struct bd_job_store_err *err, void *arg)
{
    struct pause_call *c = arg;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "event=pause_read_failed err=\"%s\" note=written_polled_later",
               err->message);
        pause_done(c, BD_EPG);
        return;
    }
    if (!c->e->is_stopping)
        pause_apply(c->e, rows, count);
    pause_done(c, BD_OK);
}

static void pause_on_written(int status, long long n, const struct bd_job_store_err *err,
                             void *arg)
{
    struct pause_call *c = arg;

    if (status < 0) {
        bd_log(BD_LOG_WARN, "job", "event=%s_failed model=%s err=\"%s\"",
               c->is_paused ? "pause" : "resume", *c->model ? c->model : "-", err->message);
        pause_done(c, BD_EPG);
        return;
    }
    c->is_changed = n > 0;
    if (c->is_changed)
        bd_log(BD_LOG_INFO, "job", "event=%s model=%s", c->is_paused ? "pause" : "resume",
               *c->model ? c->model : "-");
    if (bd_job_store_get_pauses(c->e->d.pg_sync, pause_on_read_back, c) < 0)
        pause_done(c, BD_EPG);
}

int bd_job_pause(struct bd_job_engine *e, const char *model, bool is_paused,
                 bd_job_pause_cb cb, void *arg)
{
    struct pause_call *c;
    int err;

    if (cb == NULL || (model != NULL && (*model == '\0' || strlen(model) > 128)))
        return BD_EINVAL;
    if (e->is_stopping)
        return BD_ESHUTDOWN;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return BD_ENOMEM;
    *c = (struct pause_call){ .e = e, .is_paused = is_paused, .cb = cb, .arg = arg };
    snprintf(c->model, sizeof(c->model), "%s", model ? model : "");
    e->pending_ops++;
    err = bd_job_store_set_pause(e->d.pg_sync, c->model, is_paused, pause_on_written, c);
    if (err < 0) {
        e->pending_ops--;
        free(c);
    }
    return err;
}
