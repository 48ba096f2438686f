/* job_store_read.h -- reads of job_store_read.c not (yet) in include/batchd/job_store.h.
 *
 * Kept apart only because job_store.h has another owner this round: fold into job_store.h
 * next to bd_job_store_get_job. Loop thread only.  SPDX-License-Identifier: MIT
 */
#ifndef BATCHD_JOB_STORE_READ_H
#define BATCHD_JOB_STORE_READ_H

#include "batchd/job_store.h"

#include <stddef.h>

/* Most ids bd_job_store_get_jobs takes at once. */
#define BD_JOB_STORE_GET_JOBS_MAX 256

/* The rows of the jobs ids[0..count) that exist, in no particular order, in one statement
 * (the status cache's refreshes). An id without a row is simply absent from rows; cb's
 * has_more is always false. ids are borrowed for this call only. BD_EINVAL for count 0 or
 * over BD_JOB_STORE_GET_JOBS_MAX, BD_ENOMEM, or the pool's error: then cb is never called;
 * else cb is called once, asynchronously, with rows borrowed for the callback. */
int bd_job_store_get_jobs(struct bd_pg *pg, const char *const *ids, size_t count,
                          bd_job_store_jobs_cb cb, void *arg);

/* The queue rebuild, page by page (instead of bd_job_store_list_active's one result of
 * every active job, decoded in one loop turn): up to limit jobs of status (queued or
 * processing) in priority bucket prio_bucket (0: priority <= 0, 1: priority 1, 2: >= 2)
 * with seq > after_seq, by seq; max_seq is the largest seq of any job (0 for none). A page
 * shorter than limit is the bucket's last. Rows are borrowed for the callback. BD_EINVAL
 * (another status, limit 0) or the pool's error: cb never called; else once, later. */
int bd_job_store_list_active_page(struct bd_pg *pg, enum bd_job_state status, int prio_bucket,
                                  long long after_seq, unsigned limit,
                                  bd_job_store_active_cb cb, void *arg);

#endif
