/* batch.h -- OpenAI-compatible batches over batchd's jobs: creating one from an uploaded
 * JSON Lines file (batch_create.c), and the finalizer that expires, cancels and finishes
 * them and writes their output and error files (batch_final.c).
 *
 * A batch is a bulk_embed job: every input of every line is one item, in file order; the
 * batch's rows (batch_store.h) map lines to items. Nothing here holds a file whole: the
 * input is read chunk by chunk, the output written chunk by chunk (file_store.h).
 * Loop thread only. Callback contract of STYLE.md.
 */
#ifndef BATCHD_BATCH_H
#define BATCHD_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "batchd/batch_store.h"

struct bd_pg;
struct bd_job_engine;
struct bd_job_submit_deps;
struct bd_metrics;

/* The one endpoint batches run ("/v1/embeddings"), and the one completion window ("24h"). */
#define BD_BATCH_ENDPOINT "/v1/embeddings"
#define BD_BATCH_WINDOW "24h"

/* Validation errors kept per batch (OpenAI lists a batch's first errors, not all). */
#define BD_BATCH_MAX_ERRORS 100

/* A create request, validated by the API (endpoint and window checked; metadata an object's
 * JSON text or NULL; priority enum bd_priority). Strings borrowed for the call. */
struct bd_batch_request {
    uv_loop_t *loop;
    const char *input_file_id;
    const char *metadata_json;
    int priority;
};

/* status BD_OK: batch_id exists, in progress or, when its input failed validation, failed
 * (read it for its errors). Otherwise nothing was created: BD_ENOTFOUND (no such file;
 * message says so), BD_EINVAL (the file cannot be a batch's input, e.g. its purpose; message
 * says why), BD_EBUSY (the queue has no room for its items), BD_EPG, BD_EREDIS, BD_ENOMEM,
 * BD_ECANCELED. message borrowed during cb (may be NULL). */
typedef void (*bd_batch_created_cb)(int status, const char *batch_id, const char *message,
                                    void *arg);

/* Validate the file's lines (a first pass, nothing written), then create the job, its
 * batches, the batch's lines and its row in one transaction (a second pass), and queue it.
 * deps must outlive the call (the server's). *out (valid until cb) may be given to
 * bd_batch_create_abort. Allocates. */
struct bd_batch_create;
int bd_batch_create(const struct bd_job_submit_deps *deps, const struct bd_batch_request *r,
                    bd_batch_created_cb cb, void *arg, struct bd_batch_create **out);

/* The client went away (or the server stops): the create stops at its next step, rolls back
 * what it wrote, and calls back BD_ECANCELED -- unless its COMMIT is already on its way, in
 * which case the batch exists and cb says BD_OK. Only before cb. */
void bd_batch_create_abort(struct bd_batch_create *bc);

/* ---- the finalizer ------------------------------------------------------------------------
 * Every interval each process claims, one at a time, batches that need attention
 * (bd_batch_store_claim): an expired batch's job is cancelled; a recorded cancel whose job
 * cancel was lost is redone; a batch whose job ended gets its output and error files
 * written (two uploads, each one transaction, with ids derived from the batch's, so a
 * finalizer that dies midway is redone whole by the next holder of the lease) and then its
 * final row. */
struct bd_batch_final_deps {
    uv_loop_t *loop;
    struct bd_pg *pg;                 /* synchronous commit */
    struct bd_job_engine *jobs;
    const char *owner;                /* this process's worker id (leases) */
    double interval_s;                /* between sweeps when idle */
};

struct bd_batch_finalizer;

/* Create and start it. NULL on ENOMEM. deps copied (strings borrowed). */
struct bd_batch_finalizer *bd_batch_finalizer_start(const struct bd_batch_final_deps *deps);

/* Look now (a batch's job may have just ended, or a cancel was just recorded). */
void bd_batch_finalizer_kick(struct bd_batch_finalizer *f);

/* Stop: no new claim; cb once (async) after the work in flight has ended. */
void bd_batch_finalizer_stop(struct bd_batch_finalizer *f, void (*cb)(void *arg), void *arg);

/* The output and error file ids of batch_id into out[BD_FILE_ID_LEN + 1]: "file-" and 24
 * hex digits of SHA-256(batch id, kind). */
void bd_batch_file_id(const char *batch_id, bool is_error, char *out);

#endif
