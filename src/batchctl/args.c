/* args.c -- batchctl's command line: a table of options, each with the commands it applies
 * to, checked here so that a command never sees an option it would ignore.
 *
 * Owns nothing: every string in struct bctl_args points into argv or the environment.
 * No I/O.  SPDX-License-Identifier: MIT
 */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CMD_BIT(c) (1u << (c))
#define ALL_CMDS   0xffffffffu
#define ID_CMDS    (CMD_BIT(BCTL_CMD_STATUS) | CMD_BIT(BCTL_CMD_WATCH) | \
                    CMD_BIT(BCTL_CMD_CANCEL) | CMD_BIT(BCTL_CMD_RETRY) | \
                    CMD_BIT(BCTL_CMD_RESULTS))

enum opt_key {
    OPT_URL, OPT_API_KEY, OPT_TIMEOUT, OPT_JSON, OPT_QUIET, OPT_HELP, OPT_VERSION,
    OPT_FORMAT, OPT_GZIP, OPT_WAIT, OPT_MODEL, OPT_OPERATION, OPT_COLLECTION, OPT_BATCH_SIZE,
    OPT_PRIORITY, OPT_IDEMPOTENCY_KEY, OPT_STATUS, OPT_LIMIT, OPT_ALL, OPT_OUTPUT,
    OPT_MAX_RETRIES, OPT_JOB_TIMEOUT,
};

struct opt {
    const char *name;            /* without the leading "--" */
    char short_name;             /* 0: none */
    bool has_arg;
    unsigned cmds;               /* CMD_BITs of the commands it applies to */
    enum opt_key key;
};

static const struct opt opts[] = {
    {"url", 0, true, ALL_CMDS, OPT_URL},
    {"api-key", 0, true, ALL_CMDS, OPT_API_KEY},
    {"timeout", 0, true, ALL_CMDS, OPT_TIMEOUT},
    {"json", 0, false, ALL_CMDS, OPT_JSON},
    {"quiet", 'q', false, ALL_CMDS, OPT_QUIET},
    {"help", 'h', false, ALL_CMDS, OPT_HELP},
    {"version", 0, false, ALL_CMDS, OPT_VERSION},
    {"format", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_FORMAT},
    {"gzip", 0, false, CMD_BIT(BCTL_CMD_SUBMIT), OPT_GZIP},
    {"wait", 'w', false, CMD_BIT(BCTL_CMD_SUBMIT), OPT_WAIT},
    {"model", 0, true,
     CMD_BIT(BCTL_CMD_SUBMIT) | CMD_BIT(BCTL_CMD_LIST) | CMD_BIT(BCTL_CMD_PAUSE) |
         CMD_BIT(BCTL_CMD_RESUME),
     OPT_MODEL},
    {"operation", 0, true, CMD_BIT(BCTL_CMD_SUBMIT) | CMD_BIT(BCTL_CMD_LIST), OPT_OPERATION},
    {"collection", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_COLLECTION},
    {"batch-size", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_BATCH_SIZE},
    {"priority", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_PRIORITY},
    {"idempotency-key", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_IDEMPOTENCY_KEY},
    {"max-retries", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_MAX_RETRIES},
    {"job-timeout", 0, true, CMD_BIT(BCTL_CMD_SUBMIT), OPT_JOB_TIMEOUT},
    {"status", 0, true, CMD_BIT(BCTL_CMD_LIST), OPT_STATUS},
    {"limit", 0, true, CMD_BIT(BCTL_CMD_LIST), OPT_LIMIT},
    {"all", 'a', false, CMD_BIT(BCTL_CMD_LIST), OPT_ALL},
    {"output", 'o', true, CMD_BIT(BCTL_CMD_RESULTS), OPT_OUTPUT},
};

struct cmd_info {
    const char *name;
    enum bctl_cmd cmd;
    int operands;                /* 0, 1 (required), or -1 (optional one: help) */
    const char *usage;
};

static const struct cmd_info cmds[] = {
    {"submit", BCTL_CMD_SUBMIT, 1,
     "batchctl submit FILE [--format json|jsonl] [--gzip] [--wait]\n"
     "                [--model M] [--operation bulk_embed|bulk_insert] [--collection C]\n"
     "                [--batch-size N] [--priority high|normal|low] [--idempotency-key K]\n"
     "                [--max-retries N] [--job-timeout SECONDS]\n"
     "    Submit a job from FILE (\"-\": standard input), streamed. A .jsonl or .ndjson file\n"
     "    is JSON Lines: one item per line, the job's fields from the options. A .gz file\n"
     "    is sent as it is, compressed; --gzip compresses on the fly. --wait follows the\n"
     "    job to its end.\n"},
    {"status", BCTL_CMD_STATUS, 1, "batchctl status ID\n    Show a job's status.\n"},
    {"watch", BCTL_CMD_WATCH, 1,
     "batchctl watch ID\n    Follow a job's progress live until it ends.\n"},
    {"list", BCTL_CMD_LIST, 0,
     "batchctl list [--status all|queued|processing|completed|failed|cancelled]\n"
     "              [--model M] [--operation O] [--limit N] [--all]\n"
     "    List jobs, newest first; --all follows every page.\n"},
    {"cancel", BCTL_CMD_CANCEL, 1, "batchctl cancel ID\n    Cancel a job.\n"},
    {"retry", BCTL_CMD_RETRY, 1,
     "batchctl retry ID\n    Run the failed items of a finished job again.\n"},
    {"results", BCTL_CMD_RESULTS, 1,
     "batchctl results ID [-o FILE]\n"
     "    Write the job's stored vectors as JSON Lines to FILE (default: standard output).\n"},
    {"queue", BCTL_CMD_QUEUE, 0, "batchctl queue\n    Show the queue's status.\n"},
    {"pause", BCTL_CMD_PAUSE, 0,
     "batchctl pause [--model M]\n    Stop claiming new work (the whole queue, or one model).\n"},
    {"resume", BCTL_CMD_RESUME, 0,
     "batchctl resume [--model M]\n    Claim work again after a pause.\n"},
    {"help", BCTL_CMD_HELP, -1, "batchctl help [COMMAND]\n    Show this help.\n"},
    {"version", BCTL_CMD_VERSION, 0, "batchctl version\n    Show batchctl's version.\n"},
};

#define N_OPTS (sizeof(opts) / sizeof(opts[0]))
#define N_CMDS (sizeof(cmds) / sizeof(cmds[0]))

static const char usage_all[] =
    "usage: batchctl [GLOBAL OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  submit FILE     submit a job (JSON or JSON Lines), optionally --wait for it\n"
    "  status ID       show a job's status\n"
    "  watch ID        follow a job's progress until it ends\n"
    "  list            list jobs (--status, --model, --operation, --limit, --all)\n"
    "  cancel ID       cancel a job\n"
    "  retry ID        run a finished job's failed items again\n"
    "  results ID      write a job's vectors as JSON Lines (-o FILE)\n"
    "  queue           show the queue's status\n"
    "  pause, resume   stop / restart claiming work (--model M: one model)\n"
    "  help [COMMAND]  this help, or a command's\n"
    "\n"
    "global options:\n"
    "  --url URL       batchd's address (env BATCHD_URL; default " BCTL_DEFAULT_URL ")\n"
    "  --api-key KEY   API key (env BATCHD_API_KEY)\n"
    "  --timeout S     seconds to connect and per request; idle limit of streams (30)\n"
    "  --json          print the server's JSON, for scripts\n"
    "  -q, --quiet     print nothing but errors\n"
    "\n"
    "exit codes: 0 ok (job completed), 1 usage, 2 connection, 3 refused (4xx), 4 not found,\n"
    "5 server error, 6 job failed, 7 job cancelled, 8 unauthorized, 9 local file,\n"
    "10 unsupported by the server. See batchctl(1).\n";

static int args_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int args_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static bool is_one_of(const char *s, const char *const *set)
{
    for (size_t i = 0; set[i] != NULL; i++)
        if (strcmp(s, set[i]) == 0)
            return true;
    return false;
}

/* A whole decimal number in [min, max]. */
static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    long v;

    if (*s == '\0')
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool bctl_args_is_job_id(const char *id)
{
    size_t n;

    for (n = 0; id[n] != '\0'; n++) {
        char c = id[n];
        bool is_ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                     (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!is_ok || n >= 128)
            return false;
    }
    return n > 0;
}

const char *bctl_args_cmd_name(enum bctl_cmd cmd)
{
    for (size_t i = 0; i < N_CMDS; i++)
        if (cmds[i].cmd == cmd)
            return cmds[i].name;
    return "";
}

const char *bctl_args_usage(const char *topic)
{
    for (size_t i = 0; topic != NULL && i < N_CMDS; i++)
        if (strcmp(cmds[i].name, topic) == 0)
            return cmds[i].usage;
    return usage_all;
}

static const struct cmd_info *find_cmd(const char *name)
{
    for (size_t i = 0; i < N_CMDS; i++)
        if (strcmp(cmds[i].name, name) == 0)
            return &cmds[i];
    return NULL;
}

static const struct opt *find_opt(const char *arg, const char **value)
{
    *value = NULL;
    if (arg[1] != '-') {         /* -x */
        for (size_t i = 0; i < N_OPTS; i++)
            if (opts[i].short_name != 0 && arg[1] == opts[i].short_name && arg[2] == '\0')
                return &opts[i];
        return NULL;
    }
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    for (size_t i = 0; i < N_OPTS; i++) {
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0) {
            if (eq != NULL)
                *value = eq + 1;
            return &opts[i];
        }
    }
    return NULL;
}

/* Store one option's value; -1 with err when the value is not valid. */
static int apply_opt(struct bctl_args *a, const struct opt *o, const char *v, char *err,
                     size_t errlen)
{
    static const char *const formats[] = {"json", "jsonl", "ndjson", NULL};
    static const char *const ops[] = {"bulk_embed", "bulk_insert", NULL};
    static const char *const prios[] = {"high", "normal", "low", NULL};
    static const char *const states[] = {"all", "queued", "processing", "completed",
                                         "failed", "cancelled", NULL};
    char *end;

    switch (o->key) {
    case OPT_URL:
        a->url = v;
        break;
    case OPT_API_KEY:
        a->api_key = v;
        break;
    case OPT_TIMEOUT:
        errno = 0;
        a->timeout_s = strtod(v, &end);
        if (errno != 0 || *v == '\0' || *end != '\0' || !(a->timeout_s > 0) ||
            a->timeout_s > 86400 || isnan(a->timeout_s))
            return args_fail(err, errlen, "--timeout: '%s' is not a number of seconds in "
                                          "(0, 86400]", v);
        break;
    case OPT_JSON:
        a->is_json = true;
        break;
    case OPT_QUIET:
        a->is_quiet = true;
        break;
    case OPT_HELP:
        a->cmd = BCTL_CMD_HELP;
        break;
    case OPT_VERSION:
        a->cmd = BCTL_CMD_VERSION;
        break;
    case OPT_FORMAT:
        if (!is_one_of(v, formats))
            return args_fail(err, errlen, "--format: '%s' is not json, jsonl or ndjson", v);
        a->format = strcmp(v, "json") == 0 ? BCTL_FORMAT_JSON : BCTL_FORMAT_JSONL;
        break;
    case OPT_GZIP:
        a->is_gzip = true;
        break;
    case OPT_WAIT:
        a->is_wait = true;
        break;
    case OPT_MODEL:
        if (*v == '\0')
            return args_fail(err, errlen, "--model: empty");
        a->model = v;
        break;
    case OPT_OPERATION:
        if (!is_one_of(v, ops))
            return args_fail(err, errlen, "--operation: '%s' is not bulk_embed or bulk_insert",
                             v);
        a->operation = v;
        break;
    case OPT_COLLECTION:
        if (*v == '\0')
            return args_fail(err, errlen, "--collection: empty");
        a->collection = v;
        break;
    case OPT_BATCH_SIZE:
        if (!parse_long(v, 1, 1000000, &a->batch_size))
            return args_fail(err, errlen, "--batch-size: '%s' is not a number from 1", v);
        break;
    case OPT_PRIORITY:
        if (!is_one_of(v, prios))
            return args_fail(err, errlen, "--priority: '%s' is not high, normal or low", v);
        a->priority = v;
        break;
    case OPT_MAX_RETRIES:
        if (!parse_long(v, 0, 100, &a->max_retries))
            return args_fail(err, errlen, "--max-retries: '%s' is not a number from 0 to 100", v);
        a->max_retries_s = v;
        break;
    case OPT_JOB_TIMEOUT: {
        char *t_end;
        double t = strtod(v, &t_end);
        if (*v == '\0' || *t_end != '\0' || !(t > 0) || t > 604800)
            return args_fail(err, errlen, "--job-timeout: '%s' is not a number of seconds "
                                          "above 0 (at most 604800)", v);
        a->job_timeout = v;
        break;
    }
    case OPT_IDEMPOTENCY_KEY:
        if (*v == '\0' || strlen(v) > 255)
            return args_fail(err, errlen, "--idempotency-key: 1 to 255 characters");
        a->idempotency_key = v;
        break;
    case OPT_STATUS:
        if (!is_one_of(v, states))
            return args_fail(err, errlen, "--status: '%s' is not all, queued, processing, "
                                          "completed, failed or cancelled", v);
        a->status = v;
        break;
    case OPT_LIMIT:
        if (!parse_long(v, 1, 1000, &a->limit))
            return args_fail(err, errlen, "--limit: '%s' is not a number from 1 to 1000", v);
        break;
    case OPT_ALL:
        a->is_all = true;
        break;
    case OPT_OUTPUT:
        if (*v == '\0')
            return args_fail(err, errlen, "--output: empty");
        a->output = v;
        break;
    }
    return 0;
}

/* The checks that need the whole command line. */
static int args_check(struct bctl_args *a, const struct cmd_info *ci, unsigned given,
                      char *err, size_t errlen)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if ((given & (1u << opts[i].key)) && !(opts[i].cmds & CMD_BIT(ci->cmd)))
            return args_fail(err, errlen, "--%s does not apply to '%s'", opts[i].name,
                             ci->name);
    if (strncmp(a->url, "http://", 7) != 0 && strncmp(a->url, "https://", 8) != 0)
        return args_fail(err, errlen, "--url: '%s' is not an http:// or https:// URL", a->url);
    a->url_len = strlen(a->url);
    while (a->url_len > 0 && a->url[a->url_len - 1] == '/')
        a->url_len--;
    if (a->id != NULL && !bctl_args_is_job_id(a->id))
        return args_fail(err, errlen, "'%s' is not a job id (^[A-Za-z0-9_-]{1,128}$)", a->id);
    if (a->cmd == BCTL_CMD_SUBMIT) {
        const char *f = a->file;
        size_t n = strlen(f);
        bool is_gz = n > 3 && strcmp(f + n - 3, ".gz") == 0;
        size_t stem = is_gz ? n - 3 : n;
        if (a->format == BCTL_FORMAT_AUTO) {
            bool is_lines = (stem > 6 && strncmp(f + stem - 6, ".jsonl", 6) == 0) ||
                            (stem > 7 && strncmp(f + stem - 7, ".ndjson", 7) == 0);
            a->format = is_lines ? BCTL_FORMAT_JSONL : BCTL_FORMAT_JSON;
        }
        if (a->format == BCTL_FORMAT_JSON &&
            (a->model || a->operation || a->collection || a->priority || a->batch_size ||
             a->max_retries_s || a->job_timeout))
            return args_fail(err, errlen, "--model, --operation, --collection, --batch-size, "
                                          "--priority, --max-retries and --job-timeout are for "
                                          "JSON Lines; a JSON file carries the job's fields "
                                          "itself");
        if (a->format == BCTL_FORMAT_JSONL && a->operation == NULL)
            a->operation = a->model != NULL || a->collection == NULL ? "bulk_embed"
                                                                     : "bulk_insert";
    }
    return 0;
}

int bctl_args_parse(struct bctl_args *a, int argc, char **argv, const char *env_url,
                    const char *env_key, char *err, size_t errlen)
{
    const struct cmd_info *ci = NULL;
    const char *operand = NULL;
    int n_operands = 0;
    unsigned given = 0;
    bool is_help = false, is_version = false, is_end_of_opts = false;

    memset(a, 0, sizeof(*a));
    a->url = env_url != NULL && *env_url != '\0' ? env_url : BCTL_DEFAULT_URL;
    a->api_key = env_key != NULL && *env_key != '\0' ? env_key : NULL;
    a->timeout_s = BCTL_DEFAULT_TIMEOUT;
    if (errlen > 0)
        err[0] = '\0';

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!is_end_of_opts && strcmp(arg, "--") == 0) {
            is_end_of_opts = true;
            continue;
        }
        if (!is_end_of_opts && arg[0] == '-' && arg[1] != '\0') {
            const char *value;
            const struct opt *o = find_opt(arg, &value);
            if (o == NULL)
                return args_fail(err, errlen, "unknown option '%s'", arg);
            if (o->has_arg && value == NULL) {
                if (i + 1 >= argc)
                    return args_fail(err, errlen, "--%s needs a value", o->name);
                value = argv[++i];
            } else if (!o->has_arg && value != NULL) {
                return args_fail(err, errlen, "--%s takes no value", o->name);
            }
            given |= 1u << o->key;
            if (o->key == OPT_HELP) {
                is_help = true;
                continue;
            }
            if (o->key == OPT_VERSION) {
                is_version = true;
                continue;
            }
            if (apply_opt(a, o, value, err, errlen) < 0)
                return -1;
            continue;
        }
        if (ci == NULL) {
            ci = find_cmd(arg);
            if (ci == NULL)
                return args_fail(err, errlen, "unknown command '%s' (see batchctl help)", arg);
            continue;
        }
        n_operands++;
        operand = arg;
    }

    if (is_version) {
        a->cmd = BCTL_CMD_VERSION;
        return 0;
    }
    if (is_help || (ci != NULL && ci->cmd == BCTL_CMD_HELP)) {
        a->cmd = BCTL_CMD_HELP;
        a->help_topic = ci != NULL && ci->cmd != BCTL_CMD_HELP ? ci->name : operand;
        return 0;
    }
    if (ci == NULL)
        return args_fail(err, errlen, "no command given (see batchctl help)");
    a->cmd = ci->cmd;
    if (ci->operands == 0 && n_operands > 0)
        return args_fail(err, errlen, "'%s' takes no argument ('%s')", ci->name, operand);
    if (ci->operands == 1 && n_operands != 1)
        return args_fail(err, errlen, "'%s' needs exactly one %s", ci->name,
                         ci->cmd == BCTL_CMD_SUBMIT ? "FILE" : "job ID");
    if (ci->operands == 1) {
        if (ci->cmd == BCTL_CMD_SUBMIT)
            a->file = operand;
        else
            a->id = operand;
    }
    return args_check(a, ci, given, err, errlen);
}
