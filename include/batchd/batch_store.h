/* batch_store.h -- every statement on batches and batch_lines (OpenAI-compatible batches),
 * with typed rows.
 *
 * A batch is a bulk_embed job plus its batches row: the input file, the lines (per line
 * its custom_id and the job's items it became), the cancel and expiry requests, and what
 * the finalizer wrote (final status, output and error files, per-line counts). Its OpenAI
 * status is derived here from both rows (bd_batch_status), the one place that knows it.
 *
 * The one owner of these tables' SQL text: batch_create.c, batch_final.c and the API call
 * these and write no SQL. Runs on the nonblocking pool of pg_store.h (or, for the rows a
 * batch is created with, on the connection of its job's transaction); every function that
 * takes a callback follows the callback contract. Loop thread only.
 */
#ifndef BATCHD_BATCH_STORE_H
#define BATCHD_BATCH_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bd_pg;
struct bd_pg_conn;
struct bd_buf;

/* "batch_" and 24 hex digits. */
#define BD_BATCH_ID_LEN 30

/* A new batch id into out[BD_BATCH_ID_LEN + 1]. BD_OK or the error of uv_random. */
int bd_batch_new_id(char *out);

/* A batch's row with its job's figures. Strings borrowed during the callback; NULL where
 * the column is NULL. Times are unix seconds, 0 where NULL. */
struct bd_batch_row {
    const char *id;
    const char *input_file_id;
    const char *endpoint;
    const char *completion_window;
    const char *model;
    const char *metadata_json;        /* the metadata object's text, or NULL */
    const char *errors_json;          /* validation errors, a JSON array's text, or NULL */
    const char *job_id;
    const char *final_status;         /* completed | failed | expired | cancelled, or NULL */
    const char *output_file_id;
    const char *error_file_id;
    int64_t lines;
    int64_t created_at, expires_at, cancelling_at, expired_at, finalizing_at, finalized_at;
    int64_t request_completed, request_failed;   /* -1 until finalized */
    /* the job's (when job_id is set) */
    const char *job_status;           /* "queued", ... */
    int64_t job_items, job_processed, job_failed;
};

/* The batch's OpenAI status: "validating", "in_progress", "finalizing", "completed",
 * "failed", "expired", "cancelling" or "cancelled". Constant string. */
const char *bd_batch_status(const struct bd_batch_row *b);

/* request_counts {total, completed, failed} per input line: exact once finalized; while the
 * job runs, from the job's item counters (exact when every line has one input, else in
 * proportion to the items). */
void bd_batch_request_counts(const struct bd_batch_row *b, int64_t *total, int64_t *completed,
                             int64_t *failed);

/* status BD_OK, BD_ENOTFOUND, BD_EPG (message: the server's or libpq's text), BD_ENOMEM,
 * BD_ECANCELED (the pool is closing). */
typedef void (*bd_batch_store_done_cb)(int status, const char *message, void *arg);
typedef void (*bd_batch_store_row_cb)(int status, const struct bd_batch_row *row,
                                      const char *message, void *arg);
typedef void (*bd_batch_store_list_cb)(int status, const struct bd_batch_row *rows, unsigned n,
                                       bool has_more, const char *message, void *arg);

/* ---- creation ------------------------------------------------------------------------- */

/* A new batch's fields. Strings borrowed for the call. */
struct bd_batch_new {
    const char *id;
    const char *input_file_id;
    const char *endpoint;
    const char *completion_window;
    const char *model;                /* NULL when validation failed before knowing it */
    const char *metadata_json;        /* NULL: none */
    int64_t lines;
    double window_s;                  /* expires_at = created_at + window_s */
};

/* The row of a batch whose job is job_id, on conn (the job's transaction, so the batch
 * exists exactly when the job does). cb: BD_OK or BD_EPG. */
int bd_batch_store_insert(struct bd_pg_conn *conn, const struct bd_batch_new *b,
                          const char *job_id, bd_batch_store_done_cb cb, void *arg);

/* The row of a batch that failed validation (no job): final at once, status failed, with
 * errors_json (a JSON array of {code, message, param, line}). cb: BD_OK or BD_EPG. */
int bd_batch_store_insert_failed(struct bd_pg *pg, const struct bd_batch_new *b,
                                 const char *errors_json, bd_batch_store_done_cb cb, void *arg);

/* Append one batch_lines row to a binary COPY stream (bd_pg_copy_begin before the first,
 * bd_pg_copy_end after the last): line ord (from 0, in file order), at file line `line`
 * (from 1), its custom_id, and the job's items first_item .. first_item + items - 1. */
void bd_batch_store_put_line(struct bd_buf *copy, const char *batch_id, int32_t ord,
                             int32_t line, const char *custom_id, size_t custom_id_len,
                             int32_t first_item, int32_t items, bool is_base64);

/* COPY those rows on conn. cb: BD_OK or BD_EPG. */
int bd_batch_store_copy_lines(struct bd_pg_conn *conn, const struct bd_buf *copy,
                              bd_batch_store_done_cb cb, void *arg);

/* ---- reads and the cancel -------------------------------------------------------------- */

int bd_batch_store_get(struct bd_pg *pg, const char *id, bd_batch_store_row_cb cb, void *arg);

/* Newest first; after: a batch id (NULL: from the newest); an after that names no batch
 * gives an empty page. At most limit rows; has_more when more follow. */
int bd_batch_store_list(struct bd_pg *pg, const char *after, unsigned limit,
                        bd_batch_store_list_cb cb, void *arg);

/* Record a cancel request (cancelling_at, kept if already set) on a batch not yet final
 * whose job has not ended (or ended cancelled). cb: BD_OK, or BD_ENOTFOUND when there is
 * no such batch, it is final already or finalizing (read it to tell which). */
int bd_batch_store_request_cancel(struct bd_pg *pg, const char *id, bd_batch_store_done_cb cb,
                                  void *arg);

/* ---- the finalizer ---------------------------------------------------------------------- */

/* A batch claimed for the finalizer's attention. Strings borrowed during the callback. */
struct bd_batch_claim {
    const char *id;
    const char *job_id;
    const char *model;
    const char *job_status;
    const char *job_error_code;       /* NULL when none */
    const char *job_error_message;
    int64_t lines;
    bool is_job_terminal;             /* else: the batch expired while its job runs */
    bool is_expired;                  /* expired_at is set (now or before) */
    bool is_cancelling;
};
/* claim NULL when no batch needs attention (status BD_OK). */
typedef void (*bd_batch_store_claim_cb)(int status, const struct bd_batch_claim *claim,
                                        const char *message, void *arg);

/* Claim one unfinalized batch whose job has ended, or whose expires_at has passed, and
 * that no live lease holds: lease it to owner for lease_s, record finalizing_at (job ended)
 * or expired_at (past expires_at). Several processes may call it at once: each batch goes
 * to one (FOR UPDATE SKIP LOCKED). */
int bd_batch_store_claim(struct bd_pg *pg, const char *owner, double lease_s,
                         bd_batch_store_claim_cb cb, void *arg);

/* Give owner's lease on a batch back: at once (retry_after_s 0: an expired batch waits for
 * its job to stop), or for another claim only after retry_after_s (a finalize that failed:
 * the other batches go first). */
int bd_batch_store_release(struct bd_pg *pg, const char *id, const char *owner,
                           double retry_after_s, bd_batch_store_done_cb cb, void *arg);

/* Extend owner's lease on a batch not yet final to lease_s from now (a long finalize).
 * BD_ENOTFOUND when owner no longer holds it. */
int bd_batch_store_renew(struct bd_pg *pg, const char *id, const char *owner, double lease_s,
                         bd_batch_store_done_cb cb, void *arg);

/* One line as the finalizer reads it, with its first item error if any. */
struct bd_batch_line {
    int32_t ord, line;
    const char *custom_id;
    int32_t first_item, items;
    bool is_base64;
    int32_t vectors;                  /* its items that have a stored vector */
    const char *error_code;           /* its first failed item's, or NULL */
    const char *error_message;
};
typedef void (*bd_batch_store_lines_cb)(int status, const struct bd_batch_line *lines,
                                        unsigned n, const char *message, void *arg);

/* Lines from ord on, in order: at most max_lines, and no more once a line would start
 * max_items items or more past the first line's first item (always at least one line).
 * On conn when it is not NULL (a connection the caller holds: the finalizer reads on its
 * upload's, never waiting for a second one of the pool), else on pg. */
int bd_batch_store_read_lines(struct bd_pg *pg, struct bd_pg_conn *conn, const char *batch_id,
                              const char *job_id, int32_t from_ord, unsigned max_lines,
                              unsigned max_items, bd_batch_store_lines_cb cb, void *arg);

/* A stored vector of the job's items [from, to), in PostgreSQL's text form of real[]
 * ("{0.1,-2e-05}"), by item index. */
struct bd_batch_vector {
    int32_t item_index;
    const char *text;
    size_t len;
};
typedef void (*bd_batch_store_vectors_cb)(int status, const struct bd_batch_vector *v,
                                          unsigned n, const char *message, void *arg);
int bd_batch_store_read_vectors(struct bd_pg *pg, struct bd_pg_conn *conn, const char *job_id,
                                int32_t from, int32_t to, bd_batch_store_vectors_cb cb,
                                void *arg);

/* The finalizer's outcome, written at once (only by the lease's owner, only once). */
struct bd_batch_final {
    const char *id;
    const char *owner;
    const char *final_status;
    const char *output_file_id;       /* NULL: none */
    const char *error_file_id;        /* NULL: none */
    const char *errors_json;          /* NULL: keep */
    int64_t request_completed, request_failed;
};
/* BD_ENOTFOUND when the batch is final already or owner no longer holds its lease. */
int bd_batch_store_finish(struct bd_pg *pg, const struct bd_batch_final *f,
                          bd_batch_store_done_cb cb, void *arg);

#endif
