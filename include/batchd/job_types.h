/* job_types.h -- the job's states, operations and priorities, and their names.
 *
 * Shared by the job engine, the store, the API and metrics (which must not depend on the
 * engine itself). Constant tables only (src/job_names.c).
 */
#ifndef BATCHD_JOB_TYPES_H
#define BATCHD_JOB_TYPES_H

#include <stddef.h>

/* Job states as stored in jobs.status. */
enum bd_job_state {
    BD_JOB_QUEUED = 0,
    BD_JOB_PROCESSING,
    BD_JOB_COMPLETED,
    BD_JOB_FAILED,
    BD_JOB_CANCELLED,
};
#define BD_JOB_STATE_COUNT 5

enum bd_job_operation { BD_OP_BULK_EMBED = 0, BD_OP_BULK_INSERT };

/* "queued", "processing", ... / "bulk_embed", "bulk_insert" / "high", "normal", "low". */
const char *bd_job_state_name(enum bd_job_state s);
int bd_job_state_parse(const char *s, enum bd_job_state *out);       /* BD_OK / BD_EINVAL */
const char *bd_job_operation_name(enum bd_job_operation op);
int bd_job_operation_parse(const char *s, enum bd_job_operation *out);
const char *bd_job_priority_name(int prio);
int bd_job_priority_parse(const char *s, int *out);

/* A bulk_embed job's default collection: "<model>_embeddings" with the model name folded
 * into ^[a-z_][a-z0-9_]*$ (lower case; anything else becomes '_'), into out[outlen]. */
void bd_job_default_collection(const char *model, char *out, size_t outlen);

#endif
