/* job_names.c -- names of job states, operations and priorities, both ways.
 *
 * Part of the job engine module; constant tables only.  SPDX-License-Identifier: MIT
 */
#include "batchd/error.h"
#include "batchd/job_types.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

static const char *const job_state_names[BD_JOB_STATE_COUNT] = {
    "queued", "processing", "completed", "failed", "cancelled",
};
static const char *const job_op_names[] = { "bulk_embed", "bulk_insert" };
static const char *const job_prio_names[] = { "high", "normal", "low" };

static int job_names_find(const char *const *names, int n, const char *s)
{
    for (int i = 0; s && i < n; i++)
        if (strcmp(names[i], s) == 0)
            return i;
    return -1;
}

const char *bd_job_state_name(enum bd_job_state s)
{
    return (unsigned)s < BD_JOB_STATE_COUNT ? job_state_names[s] : "unknown";
}

int bd_job_state_parse(const char *s, enum bd_job_state *out)
{
    int i = job_names_find(job_state_names, BD_JOB_STATE_COUNT, s);
    if (i < 0)
        return BD_EINVAL;
    *out = (enum bd_job_state)i;
    return BD_OK;
}

const char *bd_job_operation_name(enum bd_job_operation op)
{
    return (unsigned)op < 2 ? job_op_names[op] : "unknown";
}

int bd_job_operation_parse(const char *s, enum bd_job_operation *out)
{
    int i = job_names_find(job_op_names, 2, s);
    if (i < 0)
        return BD_EINVAL;
    *out = (enum bd_job_operation)i;
    return BD_OK;
}

const char *bd_job_priority_name(int prio)
{
    return (unsigned)prio < 3 ? job_prio_names[prio] : "normal";
}

int bd_job_priority_parse(const char *s, int *out)
{
    int i = job_names_find(job_prio_names, 3, s);
    if (i < 0)
        return BD_EINVAL;
    *out = i;
    return BD_OK;
}

void bd_job_default_collection(const char *model, char *out, size_t outlen)
{
    size_t n = 0;
    if (!islower((unsigned char)tolower((unsigned char)model[0])))
        out[n++] = '_';
    for (const char *p = model; *p && n + 12 < outlen; p++) {
        unsigned char c = (unsigned char)tolower((unsigned char)*p);
        out[n++] = (islower(c) || isdigit(c)) ? (char)c : '_';
    }
    snprintf(out + n, outlen - n, "_embeddings");
}
