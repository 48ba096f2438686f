/* commands.h -- batchctl's request-and-answer commands, one function each, and what every
 * command shares for showing a job (follow.h has the two streaming ones).
 *
 * Each command returns its exit code (bctl.h) and reports its own errors on stderr; the
 * answer goes to stdout: compact lines and tables for people, the server's JSON with
 * --json. commands.c has the short ones and the shared helpers, submit.c the upload.
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_COMMANDS_H
#define BATCHCTL_COMMANDS_H

#include "args.h"
#include "http.h"

#include <jansson.h>
#include <stddef.h>

struct bctl_ctx {
    const struct bctl_args *args;     /* borrowed */
    struct bctl_http http;
};

int bctl_cmd_submit(struct bctl_ctx *c);
int bctl_cmd_status(struct bctl_ctx *c);
int bctl_cmd_list(struct bctl_ctx *c);
int bctl_cmd_cancel(struct bctl_ctx *c);
int bctl_cmd_retry(struct bctl_ctx *c);
int bctl_cmd_queue(struct bctl_ctx *c);
int bctl_cmd_pause(struct bctl_ctx *c, bool is_pause);

/* The exit code of a job's final state name: 0 completed, BCTL_EXIT_JOB_FAILED,
 * BCTL_EXIT_JOB_CANCELLED; -1 when state is not terminal (or NULL). */
int bctl_cmd_job_exit(const char *state);

/* "4530/10000 items, 12 failed, batch 45/100" from a status object, into out; its fraction
 * done (0..1, -1 unknown) into *fraction. */
void bctl_cmd_job_progress_text(json_t *st, char *out, size_t outlen, double *fraction);

/* One line for a job that ended: "<id> completed: 3 items (0 failed) in 2m30s". */
void bctl_cmd_print_job_end(json_t *st);

/* Write the answer's raw body to stdout, ending with a newline (--json). */
void bctl_cmd_print_body(const struct bctl_http_resp *r);

/* The status path of a job ("/jobs/<id>/status") into out. */
void bctl_cmd_job_path(char *out, size_t outlen, const char *id, const char *suffix);

#endif
