/* args.h -- batchctl's command line: the command, its operand and its options.
 *
 * Pure: no I/O, no allocation (every string points into argv or the environment values
 * passed in), so it is unit-tested as it is (test/test_batchctl_args.c).
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_ARGS_H
#define BATCHCTL_ARGS_H

#include <stdbool.h>
#include <stddef.h>

#define BCTL_DEFAULT_URL     "http://127.0.0.1:8000"   /* batchd's server.listen default */
#define BCTL_DEFAULT_TIMEOUT 30.0

enum bctl_cmd {
    BCTL_CMD_NONE = 0,
    BCTL_CMD_SUBMIT,
    BCTL_CMD_STATUS,
    BCTL_CMD_WATCH,
    BCTL_CMD_LIST,
    BCTL_CMD_CANCEL,
    BCTL_CMD_RETRY,
    BCTL_CMD_RESULTS,
    BCTL_CMD_QUEUE,
    BCTL_CMD_PAUSE,
    BCTL_CMD_RESUME,
    BCTL_CMD_HELP,
    BCTL_CMD_VERSION,
};

enum bctl_format {
    BCTL_FORMAT_AUTO = 0,        /* from the file name: .jsonl / .ndjson, else JSON */
    BCTL_FORMAT_JSON,
    BCTL_FORMAT_JSONL,
};

struct bctl_args {
    enum bctl_cmd cmd;
    /* global */
    const char *url;             /* --url, $BATCHD_URL, else BCTL_DEFAULT_URL; no trailing '/' */
    size_t url_len;              /* url's length without a trailing '/' */
    const char *api_key;         /* --api-key, $BATCHD_API_KEY; NULL: none */
    double timeout_s;            /* --timeout: connect, and each request (streams: idle) */
    bool is_json;
    bool is_quiet;
    /* the operand */
    const char *id;              /* status, watch, cancel, retry, results */
    const char *file;            /* submit ("-": standard input) */
    const char *help_topic;      /* help [command] */
    /* submit */
    enum bctl_format format;
    bool is_gzip;
    bool is_wait;
    const char *model;           /* also list, pause, resume */
    const char *operation;       /* also list */
    const char *collection;
    const char *priority;
    const char *idempotency_key;
    long batch_size;             /* 0: not given */
    long max_retries;            /* as given in max_retries_s */
    const char *max_retries_s;   /* NULL: not given (the server's retry_attempts) */
    const char *job_timeout;     /* seconds, NULL: not given (the server's job_timeout) */
    /* list */
    const char *status;
    long limit;                  /* 0: not given */
    bool is_all;
    /* results */
    const char *output;          /* NULL or "-": standard output */
};

/* Parse argv (argv[0] is the program) into a. env_url and env_key are $BATCHD_URL and
 * $BATCHD_API_KEY (NULL or "" when unset); options win over them. Options may come before
 * or after the command, as "--name value" or "--name=value". Returns 0, or -1 with a
 * one-line reason in err (a usage error: exit code BCTL_EXIT_USAGE). */
int bctl_args_parse(struct bctl_args *a, int argc, char **argv, const char *env_url,
                    const char *env_key, char *err, size_t errlen);

/* The command's name ("submit"); "" for none. Borrowed, static. */
const char *bctl_args_cmd_name(enum bctl_cmd cmd);

/* The usage text: of one command (topic, e.g. "submit"), or of all when topic is NULL or
 * unknown. Borrowed, static. */
const char *bctl_args_usage(const char *topic);

/* True when id is a batchd job id (^[A-Za-z0-9_-]{1,128}$). */
bool bctl_args_is_job_id(const char *id);

#endif
