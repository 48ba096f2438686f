/* follow.h -- batchctl's streaming commands: watch (a job's Server-Sent Events, drawn as a
 * progress bar) and results (the job's vectors as JSON Lines into a file), and the job
 * follower that submit --wait shares with watch.
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_FOLLOW_H
#define BATCHCTL_FOLLOW_H

#include "commands.h"

/* Follow job id's events until it ends, with a progress bar; the exit code of how it ended
 * (completed 0, failed BCTL_EXIT_JOB_FAILED, cancelled BCTL_EXIT_JOB_CANCELLED) or of what
 * went wrong. */
int bctl_cmd_follow_job(struct bctl_ctx *c, const char *id);

int bctl_cmd_watch(struct bctl_ctx *c);
int bctl_cmd_results(struct bctl_ctx *c);

#endif
