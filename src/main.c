/* main.c -- command line, configuration, and the one libuv loop.
 *
 * Loads and validates the configuration before uv_run (the only file reads), sets the log
 * level once, then hands everything to bd_server, and tells systemd (svc_notify.h) when it
 * is ready.  SPDX-License-Identifier: MIT
 */
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/server.h"
#include "batchd/svc_notify.h"

#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static void main_usage(FILE *out)
{
    fprintf(out,
            "usage: batchd [--config FILE] [--check-config] [--debug] [--verbose]\n"
            "              [--version] [--help]\n"
            "\n"
            "  -c, --config FILE   configuration (default conf/batchd.yaml)\n"
            "      --check-config  validate the configuration and exit (0 valid, 1 not)\n"
            "  -d, --debug         log at debug level\n"
            "  -v, --verbose       log at info level (overrides a quieter config)\n"
            "  -V, --version       print the version and exit\n"
            "  -h, --help          this text\n"
            "\n"
            "Environment overrides: BATCH_REDIS_URL, BATCH_POSTGRES_URL, BATCH_LISTEN,\n"
            "BATCH_MAX_CONCURRENT_JOBS, BATCH_DEFAULT_SIZE, BATCH_PROCESSING_INTERVAL,\n"
            "BATCH_RETRY_ATTEMPTS, BATCH_RETRY_DELAY, BATCH_JOB_TIMEOUT, BATCH_CLEANUP_INTERVAL,\n"
            "BATCH_METRICS_ENABLED, BATCH_PROGRESS_UPDATE_INTERVAL, BATCH_API_KEYS\n"
            "(see docs/configuration.md).\n");
}

/* What batchd still waits for before it is ready, for systemd's STATUS= (NULL: ready). The
 * same conditions as GET /readyz (api_admin.c). */
static const char *main_waiting_for(void *arg)
{
    return bd_server_waiting_for(arg);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, 'C' },
        { "debug", no_argument, NULL, 'd' },
        { "verbose", no_argument, NULL, 'v' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *config_path = "conf/batchd.yaml";
    int check_only = 0, debug = 0, verbose = 0, c;
    struct bd_config *cfg = NULL;
    char err[1024];

    while ((c = getopt_long(argc, argv, "c:dvVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'C': check_only = 1; break;
        case 'd': debug = 1; break;
        case 'v': verbose = 1; break;
        case 'V': printf("batchd %s\n", BATCHD_VERSION); return 0;
        case 'h': main_usage(stdout); return 0;
        default: main_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "batchd: unexpected argument '%s'\n", argv[optind]);
        main_usage(stderr);
        return 2;
    }

    /* batchd's big allocations are batches (a packed batch, its COPY stream, a model's
     * answer): mapped on their own and unmapped when freed, so what a big upload or job
     * used goes back to the system at once. A fixed threshold also stops glibc from
     * raising it after such a free and growing the heap with them instead. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);

    if (bd_config_load(config_path, NULL, NULL, &cfg, err, sizeof(err)) != BD_OK) {
        fprintf(stderr, "batchd: invalid configuration: %s\n", err);
        return 1;
    }
    if (check_only) {
        printf("%s: configuration is valid (%u models)\n", config_path, cfg->models_count);
        bd_config_free(cfg);
        return 0;
    }

    enum bd_log_level level = BD_LOG_INFO;
    if (cfg->log_level)
        (void)bd_log_level_parse(cfg->log_level, &level);
    if (verbose && level > BD_LOG_INFO)
        level = BD_LOG_INFO;
    if (debug)
        level = BD_LOG_DEBUG;
    bd_log_set_level(level);

    uv_loop_t *loop = uv_default_loop();
    struct bd_server srv;
    int rc = bd_server_start(&srv, loop, cfg);
    if (rc != BD_OK) {
        uv_run(loop, UV_RUN_DEFAULT);        /* let the partial start-up close its handles */
        uv_loop_close(loop);
        bd_config_free(cfg);
        return 1;
    }
    char ready[320];
    const char *host = cfg->listen_host;
    snprintf(ready, sizeof(ready), "ready, listening on http://%s%s%s:%d",
             strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
             bd_http_server_get_port(srv.http));
    struct bd_svc_notify *notify = bd_svc_notify_start(loop, main_waiting_for, &srv, ready);
    uv_run(loop, UV_RUN_DEFAULT);
    rc = srv.exit_code;
    bd_svc_notify_close(notify);
    uv_run(loop, UV_RUN_NOWAIT);             /* the notify timers' close callbacks */
    if (uv_loop_close(loop) != 0)
        bd_log(BD_LOG_WARN, "main", "event=loop_close_busy");
    bd_config_free(cfg);
    return rc;
}
