/* job_submit_internal.h -- private to job_submit.c (a job's creation, group commit) and
 * job_submit_stream.c (a streamed job): the submit's record and the steps both use.
 * Loop thread only.
 */
#ifndef BATCHD_JOB_SUBMIT_INTERNAL_H
#define BATCHD_JOB_SUBMIT_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "batchd/buf.h"
#include "batchd/job_store.h"
#include "batchd/job_submit.h"
#include "batchd/pg_store.h"

struct bd_pg_conn;

/* One submit (or streamed job) from its start to its callback. */
struct bd__job_submit {
    struct bd_job_submit_deps deps;
    enum bd_job_operation op;
    char *model;                      /* NULL: none */
    char *collection;
    char *metadata_json;
    char *idem_key;                   /* NULL: none */
    char request_hash[65];
    int priority;
    unsigned batch_size, items, batches, dim;
    double timeout_s;
    int max_retries;
    struct bd_job_payload *batch;     /* [batches]; each freed once copied */
    bd_job_submitted_cb cb;
    void *arg;

    char job_id[160];
    char created_at[32];
    double created_unix;
    long long seq;
    long long queued_items;
    long long queue_position;
    struct bd_pg_conn *conn;
    struct bd_buf copy;        /* the batches as one binary COPY */
    bool is_commit_sent;              /* from here on, a failure may hide a committed job */
    bool is_reserved;                 /* items reserved in Redis, not yet taken by enqueue */

    /* A streamed job (bd_job_stream_*): its row first, then one batch at a time. */
    bool is_stream;
    bool is_busy;                     /* open or put in flight */
    bool is_aborted;                  /* abort asked while busy: free when it returns */
    bool is_closed;                   /* close was called: it ends the job, not abort */
    bd_job_stream_cb stream_cb;       /* the open's or put's callback */
    void *stream_arg;
    unsigned next_index;              /* first item index of the next batch */

    /* Group commit: a small job waits in the pool's group (bd_pg_group_add), then rides in
     * a group's statement. */
    struct bd_pg_link group_link;
    struct bd__job_submit *group_next;
};

/* A record from a spec (strings copied), or NULL on ENOMEM. */
struct bd__job_submit *bd__job_submit_new(const struct bd_job_submit_deps *deps,
                                          const struct bd_job_spec *spec);
/* Gives reserved items back, releases the connection (rolling back), frees js. */
void bd__job_submit_free(struct bd__job_submit *js);
/* The id and (a buffered job) the room in one Redis call: job_submit.c's first step (BD_OK,
 * or < 0 and nothing started). */
int bd__job_submit_start(struct bd__job_submit *js);
/* Answer the submit's callback with status (a stream still opening: its open's) and free. */
void bd__job_submit_finish(struct bd__job_submit *js, int status);
/* Log a PostgreSQL failure of step (its text goes to the log only). */
void bd__job_submit_log_pg(struct bd__job_submit *js, const char *step, const PGresult *res);
/* The transaction's last writes are in (status): COMMIT, or roll back and answer. */
void bd__job_submit_on_written(int status, PGresult *res, void *arg);
/* bd_rq_reserve_items's callback: the room was checked; go on to the job's rows. */
void bd__job_submit_on_reserved(int status, bool is_granted, long long queued_after, void *arg);
/* The job row's options object (malloc'ed JSON text), or NULL on ENOMEM. */
char *bd__job_submit_options(const struct bd__job_submit *js);
/* The job's row as the store writes it (strings borrowed from js and options). */
struct bd_job_store_new_job bd__job_submit_row(const struct bd__job_submit *js,
                                               const char *options);
/* job_submit_stream.c: a streamed job's open or put finished with status. */
void bd__job_stream_done(struct bd__job_submit *js, int status);

#endif
