/* job_store.c -- the write side of the schema: every statement that creates or changes a
 * row of jobs, job_batches, job_item_errors or the embedding cache.
 *
 * Owns the SQL text and the column order of what it reads back (named, never by bare
 * number). Loop thread only; runs statements on the nonblocking pool of pg_store.h and
 * never blocks. Knows nothing of HTTP or of the job state machine's rules: it stores
 * what the state machine decided.  SPDX-License-Identifier: MIT
 */
#include "batchd/job_store.h"

#include "batchd/error.h"
#include "batchd/pg_store.h"

/* ---- job start, checkpoint, finish --------------------------------------------------- */


/* ---- cancel and retry ----------------------------------------------------------------- */


/* ---- maintenance: reap, rebuild, retention, throughput -------------------------------- */


/* ---- submit: the job row, its batches, idempotency ------------------------------------ */


/* ---- embedding cache ------------------------------------------------------------------ */

