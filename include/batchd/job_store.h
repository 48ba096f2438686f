/* job_store.h -- every statement on jobs, job_batches, job_item_errors and the embedding
 * cache, with typed rows and named columns.
 *
 * The one owner of the schema's SQL text: API handlers and the job state machine call the
 * functions here and never write SQL themselves. Statements run on the nonblocking pool of
 * pg_store.h; each function that takes a callback follows the callback contract (returns
 * < 0 and never calls back, or returns 0 and calls back exactly once, asynchronously).
 * Loop thread only. Write side in job_store.c, read side in job_store_read.c.
 */
#ifndef BATCHD_JOB_STORE_H
#define BATCHD_JOB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

struct bd_pg;
struct bd_pg_conn;

/* ------------------------------------------------------------------------------------
 * Writes: start, checkpoint, finish, cancel, retry, maintenance.
 * ------------------------------------------------------------------------------------ */

/* (engine write side: declarations follow) */


/* ------------------------------------------------------------------------------------
 * Writes: submit (the job row, its batches, idempotency lookups).
 * ------------------------------------------------------------------------------------ */

/* (submit: declarations follow) */


/* ------------------------------------------------------------------------------------
 * Reads: status, job document, list, items, results, events, debug.
 * ------------------------------------------------------------------------------------ */

/* (read side: declarations follow) */


#endif
