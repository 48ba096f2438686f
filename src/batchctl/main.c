/* main.c -- batchctl, the command-line client of batchd: parse the command line, run the
 * command, exit with the code that says what happened (bctl.h, batchctl(1)).
 *
 * Owns the process: libcurl's global state and the one HTTP handle. Single-threaded.
 * SPDX-License-Identifier: MIT
 */
#include "args.h"
#include "bctl.h"
#include "commands.h"
#include "follow.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>

static int run(struct bctl_ctx *c)
{
    switch (c->args->cmd) {
    case BCTL_CMD_SUBMIT:
        return bctl_cmd_submit(c);
    case BCTL_CMD_STATUS:
        return bctl_cmd_status(c);
    case BCTL_CMD_WATCH:
        return bctl_cmd_watch(c);
    case BCTL_CMD_LIST:
        return bctl_cmd_list(c);
    case BCTL_CMD_CANCEL:
        return bctl_cmd_cancel(c);
    case BCTL_CMD_RETRY:
        return bctl_cmd_retry(c);
    case BCTL_CMD_RESULTS:
        return bctl_cmd_results(c);
    case BCTL_CMD_QUEUE:
        return bctl_cmd_queue(c);
    case BCTL_CMD_PAUSE:
        return bctl_cmd_pause(c, true);
    case BCTL_CMD_RESUME:
        return bctl_cmd_pause(c, false);
    default:
        return BCTL_EXIT_USAGE;       /* help and version never get here */
    }
}

int main(int argc, char **argv)
{
    struct bctl_args args;
    struct bctl_ctx ctx = {.args = &args};
    char err[256];
    int rc;

    if (bctl_args_parse(&args, argc, argv, getenv("BATCHD_URL"), getenv("BATCHD_API_KEY"), err,
                        sizeof(err)) < 0) {
        fprintf(stderr, "batchctl: %s\n", err);
        return BCTL_EXIT_USAGE;
    }
    if (args.cmd == BCTL_CMD_HELP) {
        fputs(bctl_args_usage(args.help_topic), stdout);
        return BCTL_EXIT_OK;
    }
    if (args.cmd == BCTL_CMD_VERSION) {
        printf("batchctl %s\n", BATCHD_VERSION);
        return BCTL_EXIT_OK;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || bctl_http_init(&ctx.http, &args) < 0) {
        fprintf(stderr, "batchctl: libcurl could not start\n");
        return BCTL_EXIT_LOCAL;
    }
    rc = run(&ctx);
    bctl_http_close(&ctx.http);
    curl_global_cleanup();
    if (fflush(stdout) != 0 && rc == BCTL_EXIT_OK)
        rc = BCTL_EXIT_LOCAL;         /* stdout is a full disk or a closed pipe */
    return rc;
}
