/* bench_hostile.c -- hostile clients against one batchd: keep-alive clients doing a realistic
 * mix of reads while slowloris connections hold sockets open, a job that must still finish,
 * and batchd's RSS and open descriptors sampled every second.
 *
 * Owns its loop, every connection it opens, the check job's record and the samples. Single
 * thread; libuv callbacks only. Timeline: at 0 the check job (a small bulk_embed) is
 * submitted and the slow connections open (they are the attack already under way); after
 * --head-start the keep-alive clients connect, spread over a second, and each loops: one
 * request (GET /healthz, a job's status, the queue status, round robin), its answer, a think
 * time, the next. Every second a fresh connection asks /healthz, and batchd's VmRSS and
 * /proc/<pid>/fd are read. At --duration everything stops; one more fresh connection must get
 * its 200. With --sigterm batchd then gets SIGTERM while every connection is still open and
 * the slow ones still trickle, and must exit within 10 s.
 *
 * Slow connections, each kind reconnecting one second after the server closed it (so their
 * number stays up, and how long the server lets each live is measured):
 *   header       a request header sent a byte every --trickle-ms, never finished
 *   body_json    a whole header (Content-Length 1 MB) then a JSON body a byte at a time
 *   body_ndjson  the same with a JSON Lines submit (holds an upload slot once it has one)
 *   noread       pipelined requests, one more every tick, answers never read (small receive
 *                buffer): what a client that stops reading does to the server's buffers
 *
 * Also a small JSON Lines submit a third of the way in (its status and time: the streamed
 * submits' slots held by slow bodies show as a 503 or a wait).
 *
 * A 503 whose body says server_busy (over max_connections) is "refused", not an error. A
 * request unanswered after --req-timeout is a "timeout". Always bounded: --duration, then at
 * most 5 s for the final probe and (--sigterm) 20 s for the exit. Prints one JSON object on
 * stdout, a short summary on stderr; exits 1 when /healthz failed (a keep-alive /healthz
 * error, a failed or refused fresh probe, or the final check), batchd's descriptors reached
 * its limit, batchd died, the check job did not complete, or (--sigterm) batchd took more
 * than 10 s to exit. The generator raises its own soft RLIMIT_NOFILE to fit every
 * connection, and scales both populations down (saying so) when the hard limit is too low.
 * Bench code only.  SPDX-License-Identifier: MIT
 */
#include "bench_common.h"
#include "bench_http.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define API "/api/v1/batch"
#define MAX_STATUS_URLS 4096
#define FRESH_TIMEOUT_MS 5000

enum ep { EP_HEALTHZ, EP_STATUS, EP_QUEUE, EP_COUNT };
static const char *const ep_names[EP_COUNT] = { "healthz", "status", "queue_status" };

enum err_kind { ERR_HTTP_4XX, ERR_HTTP_5XX, ERR_RESET, ERR_TIMEOUT, ERR_CONNECT, ERR_OTHER,
                ERR_COUNT };
static const char *const err_names[ERR_COUNT] = { "http_4xx", "http_5xx", "reset", "timeout",
                                                  "connect", "other" };

enum slow_kind { SK_HEADER, SK_BODY_JSON, SK_BODY_NDJSON, SK_NOREAD, SK_COUNT };
static const char *const sk_names[SK_COUNT] = { "header", "body_json", "body_ndjson",
                                                "noread" };

struct ep_stats {
    uint64_t requests, ok, refused, errors[ERR_COUNT];
    struct bb_lat lat;                 /* ms, 2xx only */
};

struct hs;

struct kclient {                       /* one keep-alive client */
    struct hs *hs;
    struct bh_conn *http;
    uv_timer_t timer;                  /* think time, or the request's timeout while busy */
    unsigned n;                        /* requests sent: picks the endpoint */
    int ep;
    uint64_t sent_ns;
    bool is_busy;
};

struct slow {                          /* one slowloris connection */
    struct hs *hs;
    enum slow_kind kind;
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_timer_t timer;                  /* the next byte, or the reconnect */
    bool is_open;                      /* tcp initialised and not yet closed */
    bool is_connected;
    bool is_closing;
    bool by_server;                    /* closed because the server closed or reset it */
    uint64_t opened_ns;
    char head[16];                     /* the first bytes of the server's answer */
    size_t head_len;
};

struct slow_stats {
    unsigned want;
    uint64_t connects, connect_errors, closed_by_server, blocked_writes, bytes_sent;
    unsigned open_now, open_peak;
    uint64_t status[6];                /* first answer's class: [0] none, [4] 4xx ... */
    uint64_t s408, s503;
    struct bb_lat life;                /* seconds from connect to the server's close */
};

struct probe {                         /* a fresh connection asking /healthz once */
    struct hs *hs;
    struct probe *next;                /* every probe, freed after the loop ends */
    struct bh_conn *http;
    uv_timer_t timer;                  /* its timeout, then its deferred free */
    uint64_t sent_ns;
    bool is_final;
    bool is_done;
};

struct hs {
    uv_loop_t *loop;
    struct sockaddr_in addr;
    const char *label;
    double duration_s, head_start_s, think_ms, trickle_ms, req_timeout_ms;
    unsigned nclients;
    int pid;
    const char *model, *noread_path, *ts_path;
    unsigned job_items;
    char nonce[32];

    char *status_urls[MAX_STATUS_URLS];
    unsigned nstatus;

    struct kclient *clients;
    struct slow *slows;
    unsigned nslow;
    struct ep_stats ep[EP_COUNT];
    struct slow_stats sk[SK_COUNT];

    uv_timer_t start_timer, end_timer, sample_timer;   /* end_timer closes itself */
    uint64_t t0;
    bool is_stopping;
    bool is_draining;                  /* --sigterm: SIGTERM sent, waiting for batchd to exit */
    bool do_sigterm;
    bool is_scaled;                    /* populations cut to fit the descriptor limit */
    uint64_t t_term;
    double shutdown_s;                 /* SIGTERM to exit; -1 if it did not exit in time */
    uint64_t shutdown_slow_open;       /* slow connections open when SIGTERM was sent */
    bool is_started;                   /* the keep-alive clients were started */

    /* fresh probes */
    uint64_t probes, probes_ok, probes_refused;
    struct bb_lat probe_lat;
    struct probe *final_probe;
    struct probe *all_probes;
    int final_status;
    double final_ms;

    /* the check job */
    struct bh_conn *watch;
    uv_timer_t watch_timer;
    struct bb_buf job_body;
    char job_id[128];
    int submit_status;
    char job_state[32];
    long long job_processed, job_total;
    double job_done_s;                 /* -1 until completed */
    bool is_watch_busy;

    /* batchd samples */
    long rss_start, rss_peak, rss_end, rss_mid;
    long fds_start, fds_peak, fds_end;
    long fd_limit;
    unsigned samples;
    bool is_pid_gone;
    FILE *ts;
    uint64_t ts_requests_prev;
    double sec_max_ms[EP_COUNT];       /* the slowest answer per endpoint since the last sample */

    /* a small JSON Lines submit in the middle of the storm (streamed submits' slots) */
    struct bh_conn *nd;
    uv_timer_t nd_timer;
    uint64_t nd_sent_ns;
    int nd_status;
    double nd_ms;
};

static void client_send(struct kclient *kc);
static void slow_on_reconnect(uv_timer_t *t);

static double since_s(const struct hs *hs)
{
    return (double)(uv_hrtime() - hs->t0) / 1e9;
}

static int rand_jitter(unsigned range)
{
    return range ? (int)((unsigned)rand() % range) : 0;
}

/* ---- batchd's process ---------------------------------------------------------------- */

static long proc_fd_count(int pid)
{
    char path[64];
    long n = 0;
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static long proc_fd_limit(int pid)
{
    char path[64], line[256];
    long v = -1;
    snprintf(path, sizeof(path), "/proc/%d/limits", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "Max open files", 14) == 0) {
            v = strtol(line + 14, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Exited: no such process, or a zombie its parent has not reaped yet. (Not "no VmRSS line":
 * an exiting process loses its memory map before it has finished exiting.) */
static bool proc_is_gone(int pid)
{
    char path[64], line[256];
    bool is_gone = true;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return true;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "State:", 6) == 0) {
            const char *v = line + 6;
            while (*v == ' ' || *v == '\t')
                v++;
            is_gone = *v == 'Z' || *v == 'X';
            break;
        }
    fclose(f);
    return is_gone;
}

static uint64_t total_requests(const struct hs *hs)
{
    uint64_t n = 0;
    for (int e = 0; e < EP_COUNT; e++)
        n += hs->ep[e].requests;
    return n;
}

static void sample(struct hs *hs)
{
    if (hs->pid <= 0 || hs->is_draining)
        return;
    long rss = bb_proc_status_kb(hs->pid, "VmRSS");
    long fds = proc_fd_count(hs->pid);
    if (rss < 0 || fds < 0) {
        if (!hs->is_pid_gone)
            fprintf(stderr, "bench_hostile: batchd (pid %d) is gone at %.1f s\n", hs->pid,
                    since_s(hs));
        hs->is_pid_gone = true;
        return;
    }
    if (hs->samples == 0) {
        hs->rss_start = rss;
        hs->fds_start = fds;
    }
    hs->samples++;
    hs->rss_end = rss;
    hs->fds_end = fds;
    if (rss > hs->rss_peak)
        hs->rss_peak = rss;
    if (fds > hs->fds_peak)
        hs->fds_peak = fds;
    if (hs->rss_mid == 0 && since_s(hs) >= hs->duration_s / 2)
        hs->rss_mid = rss;
    if (hs->ts) {
        unsigned open = 0;
        for (int k = 0; k < SK_COUNT; k++)
            open += hs->sk[k].open_now;
        uint64_t req = total_requests(hs);
        fprintf(hs->ts, "%.1f\t%ld\t%ld\t%llu\t%u\t%.1f\t%.1f\t%.1f\n", since_s(hs), rss, fds,
                (unsigned long long)(req - hs->ts_requests_prev), open,
                hs->sec_max_ms[EP_HEALTHZ], hs->sec_max_ms[EP_STATUS], hs->sec_max_ms[EP_QUEUE]);
        hs->ts_requests_prev = req;
        memset(hs->sec_max_ms, 0, sizeof(hs->sec_max_ms));
    }
}

/* ---- fresh probes --------------------------------------------------------------------- */

/* A probe's record is freed only after the loop ends: its bh_conn may still call back from a
 * close callback after the probe is done (one probe a second: a few KB in all). */
static void probe_on_free_timer(uv_timer_t *t)
{
    struct probe *p = t->data;
    bh_conn_free(p->http);
    uv_close((uv_handle_t *)&p->timer, NULL);
}

static void probe_finish(struct probe *p, int status)
{
    struct hs *hs = p->hs;
    double ms = (double)(uv_hrtime() - p->sent_ns) / 1e6;

    if (p->is_done)
        return;
    p->is_done = true;
    if (p->is_final) {
        hs->final_status = status;
        hs->final_ms = ms;
        hs->final_probe = NULL;
    } else if (status == 200) {
        hs->probes_ok++;
        bb_lat_add(&hs->probe_lat, ms);
    } else if (status == 503) {
        hs->probes_refused++;
    }
    /* Freeing a bh_conn from inside its callback is not allowed: defer it a turn. */
    uv_timer_start(&p->timer, probe_on_free_timer, 0, 0);
}

static void probe_on_response(struct bh_conn *c, int status, const char *body, size_t len,
                              void *arg)
{
    (void)c;
    (void)body;
    (void)len;
    probe_finish(arg, status);
}

static void probe_on_timeout(uv_timer_t *t)
{
    probe_finish(t->data, UV_ETIMEDOUT);
}

static void probe_start(struct hs *hs, bool is_final)
{
    struct probe *p = bb_xmalloc(sizeof(*p));
    memset(p, 0, sizeof(*p));
    p->hs = hs;
    p->is_final = is_final;
    p->next = hs->all_probes;
    hs->all_probes = p;
    p->http = bh_conn_new(hs->loop, &hs->addr);
    uv_timer_init(hs->loop, &p->timer);
    p->timer.data = p;
    p->sent_ns = uv_hrtime();
    if (!is_final)
        hs->probes++;
    else
        hs->final_probe = p;
    bh_conn_request(p->http, "GET", "/healthz", NULL, NULL, 0, false, probe_on_response, p);
    uv_timer_start(&p->timer, probe_on_timeout, FRESH_TIMEOUT_MS, 0);
}

/* ---- the check job ---------------------------------------------------------------------- */

static void watch_on_status(struct bh_conn *c, int status, const char *body, size_t len,
                            void *arg)
{
    struct hs *hs = arg;
    (void)c;
    (void)len;
    hs->is_watch_busy = false;
    if (status != 200 || body == NULL)
        return;
    json_t *root = json_loads(body, 0, NULL);
    if (root == NULL)
        return;
    const char *st = json_string_value(json_object_get(root, "status"));
    if (st)
        snprintf(hs->job_state, sizeof(hs->job_state), "%s", st);
    json_t *prog = json_object_get(root, "progress");
    if (prog) {
        hs->job_processed = json_integer_value(json_object_get(prog, "processed_items"));
        hs->job_total = json_integer_value(json_object_get(prog, "total_items"));
    }
    if (st && hs->job_done_s < 0 &&
        (strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 ||
         strcmp(st, "cancelled") == 0))
        hs->job_done_s = since_s(hs);
    json_decref(root);
}

static void watch_on_submitted(struct bh_conn *c, int status, const char *body, size_t len,
                               void *arg)
{
    struct hs *hs = arg;
    (void)c;
    (void)len;
    hs->is_watch_busy = false;
    hs->submit_status = status;
    if (status != 202 || body == NULL) {
        fprintf(stderr, "bench_hostile: the check job was not accepted (status %d): %.300s\n",
                status, body ? body : "");
        return;
    }
    json_t *root = json_loads(body, 0, NULL);
    const char *id = root ? json_string_value(json_object_get(root, "job_id")) : NULL;
    if (id)
        snprintf(hs->job_id, sizeof(hs->job_id), "%s", id);
    json_decref(root);
}

static void on_watch_timer(uv_timer_t *t)
{
    struct hs *hs = t->data;
    char path[256];

    if (hs->is_watch_busy || hs->job_id[0] == '\0' || hs->job_done_s >= 0 || hs->is_draining)
        return;
    snprintf(path, sizeof(path), API "/jobs/%s/status", hs->job_id);
    if (bh_conn_request(hs->watch, "GET", path, NULL, NULL, 0, true, watch_on_status, hs) == 0)
        hs->is_watch_busy = true;
}

static void job_submit(struct hs *hs)
{
    struct bb_buf *b = &hs->job_body;
    bb_printf(b, "{\"operation\":\"bulk_embed\",\"model\":\"%s\",\"collection\":\"hostile_%s\","
                 "\"data\":[", hs->model, hs->nonce);
    for (unsigned i = 0; i < hs->job_items; i++)
        bb_printf(b, "%s{\"id\":\"h%u\",\"text\":\"hostile check %s item %u\"}", i ? "," : "",
                  i, hs->nonce, i);
    bb_printf(b, "],\"options\":{\"batch_size\":%u}}", hs->job_items < 50 ? hs->job_items : 50);
    hs->watch = bh_conn_new(hs->loop, &hs->addr);
    if (bh_conn_request(hs->watch, "POST", API "/jobs", "application/json", b->p, b->len, true,
                        watch_on_submitted, hs) == 0)
        hs->is_watch_busy = true;
    uv_timer_init(hs->loop, &hs->watch_timer);
    hs->watch_timer.data = hs;
    uv_timer_start(&hs->watch_timer, on_watch_timer, 1000, 1000);
}

/* A client's small JSON Lines submit while slow bodies hold the streamed submits' slots:
 * its status and time are reported (a 503 or a long wait shows the slots are held). */
static void nd_on_response(struct bh_conn *c, int status, const char *body, size_t len,
                           void *arg)
{
    struct hs *hs = arg;
    (void)c;
    (void)body;
    (void)len;
    if (hs->nd_status != 0)
        return;
    hs->nd_status = status;
    hs->nd_ms = (double)(uv_hrtime() - hs->nd_sent_ns) / 1e6;
}

static void on_nd_timer(uv_timer_t *t)
{
    struct hs *hs = t->data;
    static char body[256];
    char path[256];

    if (hs->nd == NULL) {
        int n = snprintf(body, sizeof(body), "{\"id\":\"a\",\"embedding\":[0.1,0.2,0.3,0.4]}\n"
                                             "{\"id\":\"b\",\"embedding\":[0.5,0.6,0.7,0.8]}\n");
        snprintf(path, sizeof(path), API "/jobs?operation=bulk_insert&collection=hostile_nd_%s",
                 hs->nonce);
        hs->nd = bh_conn_new(hs->loop, &hs->addr);
        hs->nd_sent_ns = uv_hrtime();
        bh_conn_request(hs->nd, "POST", path, "application/x-ndjson", body, (size_t)n, false,
                        nd_on_response, hs);
        uv_timer_start(t, on_nd_timer, (uint64_t)hs->req_timeout_ms, 0);
        return;
    }
    if (hs->nd_status == 0) {          /* no answer within --req-timeout */
        hs->nd_status = UV_ETIMEDOUT;
        hs->nd_ms = (double)(uv_hrtime() - hs->nd_sent_ns) / 1e6;
    }
}

/* ---- keep-alive clients ---------------------------------------------------------------- */

static void client_count_error(struct ep_stats *es, int status)
{
    if (status >= 400 && status < 500)
        es->errors[ERR_HTTP_4XX]++;
    else if (status >= 500)
        es->errors[ERR_HTTP_5XX]++;
    else if (status == UV_ECONNRESET || status == UV_EPIPE || status == UV_EOF)
        es->errors[ERR_RESET]++;
    else if (status == UV_ETIMEDOUT)
        es->errors[ERR_TIMEOUT]++;
    else if (status == UV_ECONNREFUSED || status == UV_EADDRNOTAVAIL || status == UV_EMFILE)
        es->errors[ERR_CONNECT]++;
    else
        es->errors[ERR_OTHER]++;
}

static void client_on_think(uv_timer_t *t)
{
    struct kclient *kc = t->data;
    if (kc->is_busy) {                 /* the request's timeout */
        struct hs *hs = kc->hs;
        hs->ep[kc->ep].requests++;
        hs->ep[kc->ep].errors[ERR_TIMEOUT]++;
        kc->is_busy = false;
        bh_conn_free(kc->http);        /* its callback comes later and is ignored */
        kc->http = bh_conn_new(hs->loop, &hs->addr);
    }
    client_send(kc);
}

static void client_on_response(struct bh_conn *c, int status, const char *body, size_t len,
                               void *arg)
{
    struct kclient *kc = arg;
    struct hs *hs = kc->hs;
    struct ep_stats *es;
    uint64_t delay;

    (void)len;
    if (c != kc->http || !kc->is_busy || hs->is_stopping || hs->is_draining)
        return;                        /* a connection given up on, or the end */
    kc->is_busy = false;
    uv_timer_stop(&kc->timer);
    es = &hs->ep[kc->ep];
    es->requests++;
    delay = (uint64_t)(hs->think_ms / 2) + (uint64_t)rand_jitter((unsigned)hs->think_ms + 1);
    if (status >= 200 && status < 300) {
        double ms = (double)(uv_hrtime() - kc->sent_ns) / 1e6;
        es->ok++;
        bb_lat_add(&es->lat, ms);
        if (ms > hs->sec_max_ms[kc->ep])
            hs->sec_max_ms[kc->ep] = ms;
    } else if (status == 503 && body && strstr(body, "server_busy")) {
        es->refused++;                 /* over max_connections: come back after Retry-After */
        delay = 1000;
    } else {
        client_count_error(es, status);
        if (status < 0)
            delay = 1000;
    }
    uv_timer_start(&kc->timer, client_on_think, delay, 0);
}

static void client_send(struct kclient *kc)
{
    struct hs *hs = kc->hs;
    char path[256];

    if (hs->is_stopping || hs->is_draining)
        return;
    kc->ep = (int)(kc->n++ % EP_COUNT);
    if (kc->ep == EP_STATUS && hs->nstatus == 0)
        kc->ep = EP_HEALTHZ;
    if (kc->ep == EP_HEALTHZ)
        snprintf(path, sizeof(path), "/healthz");
    else if (kc->ep == EP_QUEUE)
        snprintf(path, sizeof(path), API "/queue/status");
    else
        snprintf(path, sizeof(path), "%s", hs->status_urls[(unsigned)rand() % hs->nstatus]);
    kc->sent_ns = uv_hrtime();
    kc->is_busy = true;
    int rc = bh_conn_request(kc->http, "GET", path, NULL, NULL, 0, true, client_on_response, kc);
    if (rc < 0) {
        kc->is_busy = false;
        hs->ep[kc->ep].requests++;
        hs->ep[kc->ep].errors[ERR_OTHER]++;
        uv_timer_start(&kc->timer, client_on_think, 1000, 0);
        return;
    }
    uv_timer_start(&kc->timer, client_on_think, (uint64_t)hs->req_timeout_ms, 0);
}

static void on_start_clients(uv_timer_t *t)
{
    struct hs *hs = t->data;
    hs->is_started = true;
    for (unsigned i = 0; i < hs->nclients; i++) {
        struct kclient *kc = &hs->clients[i];
        kc->hs = hs;
        kc->n = i;                     /* spread the endpoints from the first request */
        kc->http = bh_conn_new(hs->loop, &hs->addr);
        uv_timer_init(hs->loop, &kc->timer);
        kc->timer.data = kc;
        uv_timer_start(&kc->timer, client_on_think, (uint64_t)rand_jitter(1000), 0);
    }
}

/* ---- slowloris connections -------------------------------------------------------------- */

static void slow_on_tcp_closed(uv_handle_t *h)
{
    struct slow *s = h->data;
    struct slow_stats *st = &s->hs->sk[s->kind];

    s->is_open = false;
    s->is_closing = false;
    if (s->hs->is_draining) {          /* batchd is shutting down: not the storm's figures */
        s->is_connected = false;
        return;
    }
    if (s->is_connected) {
        st->open_now--;
        if (s->by_server) {
            st->closed_by_server++;
            bb_lat_add(&st->life, (double)(uv_hrtime() - s->opened_ns) / 1e9);
            int cls = 0;
            if (s->head_len >= 12 && strncmp(s->head, "HTTP/1.", 7) == 0) {
                cls = s->head[9] - '0';
                if (strncmp(s->head + 9, "408", 3) == 0)
                    st->s408++;
                if (strncmp(s->head + 9, "503", 3) == 0)
                    st->s503++;
            }
            st->status[cls >= 1 && cls <= 5 ? cls : 0]++;
        }
    }
    s->is_connected = false;
    if (!s->hs->is_stopping)
        uv_timer_start(&s->timer, slow_on_reconnect, 1000, 0);
}

static void slow_close(struct slow *s, bool by_server)
{
    if (!s->is_open || s->is_closing)
        return;
    s->is_closing = true;
    s->by_server = by_server;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->tcp, slow_on_tcp_closed);
}

static void slow_send(struct slow *s, const char *p, size_t n)
{
    struct slow_stats *st = &s->hs->sk[s->kind];
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int rc = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);

    if (rc == UV_EAGAIN || rc == UV_ENOBUFS) {
        st->blocked_writes++;
        return;
    }
    if (rc < 0) {                      /* the server closed (EPIPE) or reset it */
        slow_close(s, true);
        return;
    }
    st->bytes_sent += (uint64_t)rc;
    if ((size_t)rc < n)
        st->blocked_writes++;
}

static void slow_noread_request(struct slow *s)
{
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                     s->hs->noread_path);
    slow_send(s, req, (size_t)n);
}

static void slow_on_tick(uv_timer_t *t)
{
    struct slow *s = t->data;
    if (!s->is_connected || s->is_closing || s->hs->is_stopping)
        return;
    switch (s->kind) {
    case SK_HEADER: slow_send(s, "a", 1); break;
    case SK_BODY_JSON: slow_send(s, " ", 1); break;
    case SK_BODY_NDJSON: slow_send(s, "0,", 2); break;
    case SK_NOREAD: slow_noread_request(s); break;
    case SK_COUNT: break;
    }
}

static void slow_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char sink[4096];            /* what the server says is only glanced at */
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(sink, sizeof(sink));
}

static void slow_on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    struct slow *s = stream->data;
    if (n < 0) {
        slow_close(s, true);
        return;
    }
    if (n > 0 && s->head_len < sizeof(s->head)) {
        size_t k = sizeof(s->head) - s->head_len;
        if ((size_t)n < k)
            k = (size_t)n;
        memcpy(s->head + s->head_len, buf->base, k);
        s->head_len += k;
    }
}

static void slow_on_connected(uv_connect_t *req, int status)
{
    struct slow *s = req->data;
    struct hs *hs = s->hs;
    struct slow_stats *st = &hs->sk[s->kind];
    char head[512];
    int n = 0;

    if (status < 0) {
        if (!hs->is_stopping)
            st->connect_errors++;
        s->by_server = false;
        if (!s->is_closing) {
            s->is_closing = true;
            uv_close((uv_handle_t *)&s->tcp, slow_on_tcp_closed);
        }
        return;
    }
    if (s->is_closing)
        return;
    s->is_connected = true;
    s->opened_ns = uv_hrtime();
    st->connects++;
    if (++st->open_now > st->open_peak)
        st->open_peak = st->open_now;
    if (s->kind != SK_NOREAD)
        uv_read_start((uv_stream_t *)&s->tcp, slow_on_alloc, slow_on_read);
    switch (s->kind) {
    case SK_HEADER:
        n = snprintf(head, sizeof(head), "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        break;
    case SK_BODY_JSON:
        n = snprintf(head, sizeof(head),
                     "POST " API "/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
                     "{\"operation\":\"bulk_insert\",\"collection\":\"hostile_slow_%s\",\"data\":[",
                     hs->nonce);
        break;
    case SK_BODY_NDJSON:
        n = snprintf(head, sizeof(head),
                     "POST " API "/jobs?operation=bulk_insert&collection=hostile_slownd_%s "
                     "HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
                     "Content-Length: 1000000\r\n\r\n{\"id\":\"s\",\"embedding\":[", hs->nonce);
        break;
    case SK_NOREAD:
        n = 0;
        break;
    case SK_COUNT: break;
    }
    if (n > 0)
        slow_send(s, head, (size_t)n);
    else if (s->kind == SK_NOREAD)
        for (int i = 0; i < 16 && !s->is_closing; i++)   /* a full pipeline at once */
            slow_noread_request(s);
    if (!s->is_closing)
        uv_timer_start(&s->timer, slow_on_tick,
                       (uint64_t)rand_jitter((unsigned)hs->trickle_ms) + 1,
                       (uint64_t)hs->trickle_ms);
}

static void slow_connect(struct slow *s)
{
    struct hs *hs = s->hs;
    int rc;

    if (hs->is_stopping || hs->is_draining || s->is_open)
        return;
    uv_tcp_init(hs->loop, &s->tcp);
    s->tcp.data = s;
    s->creq.data = s;
    s->is_open = true;
    s->is_connected = false;
    s->is_closing = false;
    s->by_server = false;
    s->head_len = 0;
    if (s->kind == SK_NOREAD) {
        /* A small receive window: the server's answers back up into its own buffers. */
        uv_os_fd_t fd;
        int small = 4096;
        if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    }
    rc = uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&hs->addr,
                        slow_on_connected);
    if (rc < 0) {
        hs->sk[s->kind].connect_errors++;
        s->is_closing = true;
        uv_close((uv_handle_t *)&s->tcp, slow_on_tcp_closed);
    }
}

/* The first connect, and each reconnect a second after a close. */
static void slow_on_reconnect(uv_timer_t *t)
{
    slow_connect(t->data);
}

/* ---- the end ------------------------------------------------------------------------------ */

static void stop_all(struct hs *hs)
{
    hs->is_stopping = true;
    uv_close((uv_handle_t *)&hs->start_timer, NULL);
    uv_close((uv_handle_t *)&hs->sample_timer, NULL);
    uv_close((uv_handle_t *)&hs->watch_timer, NULL);
    bh_conn_free(hs->watch);
    uv_close((uv_handle_t *)&hs->nd_timer, NULL);
    if (hs->nd)
        bh_conn_free(hs->nd);
    if (hs->is_started)
        for (unsigned i = 0; i < hs->nclients; i++) {
            bh_conn_free(hs->clients[i].http);
            uv_close((uv_handle_t *)&hs->clients[i].timer, NULL);
        }
    for (unsigned i = 0; i < hs->nslow; i++) {
        struct slow *s = &hs->slows[i];
        uv_timer_stop(&s->timer);
        uv_close((uv_handle_t *)&s->timer, NULL);
        if (s->is_open && !s->is_closing) {
            s->is_closing = true;
            uv_close((uv_handle_t *)&s->tcp, NULL);
        }
    }
}

/* The storm is over: one last fresh connection (at most FRESH_TIMEOUT_MS); with --sigterm,
 * SIGTERM and wait for batchd's exit (at most 20 s); then close everything. */
static void on_end(uv_timer_t *t)
{
    struct hs *hs = t->data;

    if (hs->final_probe == NULL && hs->final_status == 0) {
        if (hs->nd != NULL && hs->nd_status == 0) {   /* still unanswered at the end */
            hs->nd_status = UV_ETIMEDOUT;
            hs->nd_ms = (double)(uv_hrtime() - hs->nd_sent_ns) / 1e6;
        }
        sample(hs);
        probe_start(hs, true);
        uv_timer_start(t, on_end, 50, 0);
        return;
    }
    if (hs->final_probe != NULL)
        return (void)uv_timer_start(t, on_end, 50, 0);
    if (hs->do_sigterm && !hs->is_draining) {
        /* Every connection is still open and the slow ones still trickle: batchd must exit
         * within 10 s all the same (issue 12). */
        for (int k = 0; k < SK_COUNT; k++)
            hs->shutdown_slow_open += hs->sk[k].open_now;
        hs->is_draining = true;
        hs->t_term = uv_hrtime();
        hs->shutdown_s = -1;
        if (kill(hs->pid, SIGTERM) < 0)
            perror("bench_hostile: kill");
        uv_timer_start(t, on_end, 50, 0);
        return;
    }
    if (hs->is_draining) {
        double s = (double)(uv_hrtime() - hs->t_term) / 1e9;
        if (proc_is_gone(hs->pid))
            hs->shutdown_s = s;
        else if (s < 20)
            return (void)uv_timer_start(t, on_end, 50, 0);
    }
    uv_close((uv_handle_t *)t, NULL);
    stop_all(hs);
}

static void on_second(uv_timer_t *t)
{
    struct hs *hs = t->data;
    sample(hs);
    if (!hs->is_stopping && !hs->is_draining)
        probe_start(hs, false);
}

/* ---- output -------------------------------------------------------------------------------- */

static void put_lat(struct bb_buf *b, struct bb_lat *l)
{
    bb_printf(b, "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f", bb_lat_quantile(l, 0.5),
              bb_lat_quantile(l, 0.99), bb_lat_quantile(l, 1.0));
}

static uint64_t ep_errors(const struct ep_stats *es)
{
    uint64_t n = 0;
    for (int k = 0; k < ERR_COUNT; k++)
        n += es->errors[k];
    return n;
}

static int report(struct hs *hs)
{
    struct bb_buf b = {0}, why = {0};
    uint64_t refused = 0;
    bool is_ok = true;

    for (int e = 0; e < EP_COUNT; e++)
        refused += hs->ep[e].refused;
    uint64_t hz_err = ep_errors(&hs->ep[EP_HEALTHZ]);
    uint64_t probe_fail = hs->probes - hs->probes_ok;
    bool is_job_ok = hs->job_done_s >= 0 && strcmp(hs->job_state, "completed") == 0;
    bool is_fd_hit = hs->fd_limit > 0 && hs->fds_peak >= hs->fd_limit;

    if (hz_err > 0 || probe_fail > 0 || hs->final_status != 200) {
        is_ok = false;
        bb_printf(&why, "%s\"healthz failed\"", why.len ? "," : "");
    }
    if (is_fd_hit) {
        is_ok = false;
        bb_printf(&why, "%s\"fd limit reached\"", why.len ? "," : "");
    }
    if (!is_job_ok) {
        is_ok = false;
        bb_printf(&why, "%s\"check job did not complete\"", why.len ? "," : "");
    }
    if (hs->do_sigterm && !(hs->shutdown_s >= 0 && hs->shutdown_s <= 10)) {
        is_ok = false;
        bb_printf(&why, "%s\"shutdown under load over 10 s\"", why.len ? "," : "");
    }
    if (hs->is_pid_gone) {
        is_ok = false;
        bb_printf(&why, "%s\"batchd died\"", why.len ? "," : "");
    }

    bb_printf(&b, "{\"label\":\"%s\",\"duration_s\":%.0f,\"clients\":%u,\"think_ms\":%.0f,"
                  "\"trickle_ms\":%.0f,\"slow\":%u,", hs->label, hs->duration_s, hs->nclients,
              hs->think_ms, hs->trickle_ms, hs->nslow);
    bb_puts(&b, "\"endpoints\":{");
    for (int e = 0; e < EP_COUNT; e++) {
        struct ep_stats *es = &hs->ep[e];
        bb_printf(&b, "%s\"%s\":{\"requests\":%llu,\"ok\":%llu,\"refused\":%llu,", e ? "," : "",
                  ep_names[e], (unsigned long long)es->requests, (unsigned long long)es->ok,
                  (unsigned long long)es->refused);
        put_lat(&b, &es->lat);
        bb_puts(&b, ",\"errors\":{");
        for (int k = 0; k < ERR_COUNT; k++)
            bb_printf(&b, "%s\"%s\":%llu", k ? "," : "", err_names[k],
                      (unsigned long long)es->errors[k]);
        bb_puts(&b, "}}");
    }
    bb_printf(&b, "},\"healthz_ok\":%llu,\"healthz_total\":%llu,",
              (unsigned long long)hs->ep[EP_HEALTHZ].ok,
              (unsigned long long)(hs->ep[EP_HEALTHZ].requests - hs->ep[EP_HEALTHZ].refused));
    bb_printf(&b, "\"status_p50_ms\":%.3f,\"status_p99_ms\":%.3f,\"status_max_ms\":%.3f,",
              bb_lat_quantile(&hs->ep[EP_STATUS].lat, 0.5),
              bb_lat_quantile(&hs->ep[EP_STATUS].lat, 0.99),
              bb_lat_quantile(&hs->ep[EP_STATUS].lat, 1.0));
    bb_printf(&b, "\"refused\":%llu,", (unsigned long long)refused);
    bb_printf(&b, "\"fresh_probes\":{\"total\":%llu,\"ok\":%llu,\"refused\":%llu,",
              (unsigned long long)hs->probes, (unsigned long long)hs->probes_ok,
              (unsigned long long)hs->probes_refused);
    put_lat(&b, &hs->probe_lat);
    bb_printf(&b, "},\"final_fresh\":{\"status\":%d,\"ms\":%.3f},", hs->final_status,
              hs->final_ms);
    bb_printf(&b, "\"ndjson_submit\":{\"status\":%d,\"ms\":%.3f},", hs->nd_status, hs->nd_ms);
    if (hs->do_sigterm)
        bb_printf(&b, "\"shutdown\":{\"slow_open\":%llu,\"exit_s\":%.2f},",
                  (unsigned long long)hs->shutdown_slow_open, hs->shutdown_s);
    bb_puts(&b, "\"slowloris\":{");
    for (int k = 0; k < SK_COUNT; k++) {
        struct slow_stats *st = &hs->sk[k];
        bb_printf(&b, "%s\"%s\":{\"want\":%u,\"connects\":%llu,\"connect_errors\":%llu,"
                      "\"open_peak\":%u,\"open_at_end\":%u,\"closed_by_server\":%llu,"
                      "\"answered_408\":%llu,\"answered_503\":%llu,\"closed_silently\":%llu,"
                      "\"lifetime_p50_s\":%.1f,\"lifetime_max_s\":%.1f,\"blocked_writes\":%llu,"
                      "\"bytes_sent\":%llu}",
                  k ? "," : "", sk_names[k], st->want, (unsigned long long)st->connects,
                  (unsigned long long)st->connect_errors, st->open_peak, st->open_now,
                  (unsigned long long)st->closed_by_server, (unsigned long long)st->s408,
                  (unsigned long long)st->s503, (unsigned long long)st->status[0],
                  bb_lat_quantile(&st->life, 0.5), bb_lat_quantile(&st->life, 1.0),
                  (unsigned long long)st->blocked_writes, (unsigned long long)st->bytes_sent);
    }
    bb_printf(&b, "},\"batchd\":{\"pid\":%d,\"fd_limit\":%ld,\"fds_start\":%ld,\"fds_peak\":%ld,"
                  "\"fds_end\":%ld,\"rss_start_kb\":%ld,\"rss_mid_kb\":%ld,\"rss_peak_kb\":%ld,"
                  "\"rss_end_kb\":%ld,\"samples\":%u,\"alive\":%s},",
              hs->pid, hs->fd_limit, hs->fds_start, hs->fds_peak, hs->fds_end, hs->rss_start,
              hs->rss_mid, hs->rss_peak, hs->rss_end, hs->samples,
              hs->is_pid_gone ? "false" : "true");
    bb_printf(&b, "\"job\":{\"id\":\"%s\",\"submit_status\":%d,\"status\":\"%s\","
                  "\"processed\":%lld,\"total\":%lld,\"completed_after_s\":%.1f,"
                  "\"completed\":%s},",
              hs->job_id, hs->submit_status, hs->job_state, hs->job_processed, hs->job_total,
              hs->job_done_s, is_job_ok ? "true" : "false");
    bb_printf(&b, "\"scaled_down\":%s,\"ok\":%s,\"failures\":[%s]}\n",
              hs->is_scaled ? "true" : "false", is_ok ? "true" : "false",
              why.p ? why.p : "");
    fputs(b.p, stdout);
    fflush(stdout);

    fprintf(stderr,
            "hostile: %u keep-alive clients + %u slow connections for %.0f s: %s\n"
            "  /healthz %llu/%llu ok; fresh probes %llu/%llu ok; final fresh %d in %.1f ms\n"
            "  status p50 %.1f ms, p99 %.1f ms, max %.1f ms; refused (503 server_busy) %llu\n"
            "  slow: header closed %llu (408: %llu, life p50 %.1f s), body_json closed %llu, "
            "body_ndjson closed %llu, noread closed %llu\n"
            "  batchd fds %ld -> peak %ld (limit %ld); RSS %.1f -> peak %.1f MiB (end %.1f)\n"
            "  check job %s: %s after %.1f s; a small JSON Lines submit mid-storm: %d in %.0f ms\n"
            "  SIGTERM with every connection open: %s %.2f s\n",
            hs->nclients, hs->nslow, hs->duration_s, is_ok ? "OK" : "FAILED",
            (unsigned long long)hs->ep[EP_HEALTHZ].ok,
            (unsigned long long)(hs->ep[EP_HEALTHZ].requests - hs->ep[EP_HEALTHZ].refused),
            (unsigned long long)hs->probes_ok, (unsigned long long)hs->probes,
            hs->final_status, hs->final_ms, bb_lat_quantile(&hs->ep[EP_STATUS].lat, 0.5),
            bb_lat_quantile(&hs->ep[EP_STATUS].lat, 0.99),
            bb_lat_quantile(&hs->ep[EP_STATUS].lat, 1.0), (unsigned long long)refused,
            (unsigned long long)hs->sk[SK_HEADER].closed_by_server,
            (unsigned long long)hs->sk[SK_HEADER].s408, bb_lat_quantile(&hs->sk[SK_HEADER].life, 0.5),
            (unsigned long long)hs->sk[SK_BODY_JSON].closed_by_server,
            (unsigned long long)hs->sk[SK_BODY_NDJSON].closed_by_server,
            (unsigned long long)hs->sk[SK_NOREAD].closed_by_server, hs->fds_start,
            hs->fds_peak, hs->fd_limit, (double)hs->rss_start / 1024,
            (double)hs->rss_peak / 1024, (double)hs->rss_end / 1024,
            hs->job_id[0] ? hs->job_id : "(not submitted)", hs->job_state, hs->job_done_s,
            hs->nd_status, hs->nd_ms,
            !hs->do_sigterm ? "not sent" : hs->shutdown_s >= 0 ? "exited after" : "NOT EXITED after",
            hs->do_sigterm ? (hs->shutdown_s >= 0 ? hs->shutdown_s : 20.0) : 0.0);
    bb_free(&b);
    bb_free(&why);
    return is_ok ? 0 : 1;
}

/* ---- setup ------------------------------------------------------------------------------- */

static void read_status_urls(struct hs *hs, const char *file)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        perror(file);
        exit(2);
    }
    while ((n = getline(&line, &cap, f)) > 0 && hs->nstatus < MAX_STATUS_URLS) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n > 0)
            hs->status_urls[hs->nstatus++] = bb_xstrdup(line);
    }
    free(line);
    fclose(f);
}

/* The generator's own descriptors: raise the soft limit to the hard one; if even that is too
 * few, scale both populations down (and say so) rather than fail half-way with EMFILE. */
static void fit_fd_limit(unsigned *clients, unsigned *slow, bool *is_scaled)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)*clients + *slow + 64;

    *is_scaled = false;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        struct rlimit up = rl;
        up.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need * 2 ? need * 2
                                                                              : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &up) == 0)
            rl = up;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return;
    double f = (double)(rl.rlim_cur > 128 ? rl.rlim_cur - 64 : 64) / (double)(need - 64);
    fprintf(stderr, "bench_hostile: only %llu descriptors (hard limit); scaling %u clients + "
                    "%u slow connections down by %.2f\n", (unsigned long long)rl.rlim_cur,
            *clients, *slow, f);
    *clients = (unsigned)(*clients * f);
    *slow = (unsigned)(*slow * f);
    *is_scaled = true;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_hostile --base http://127.0.0.1:PORT --pid PID [options]\n"
            "  -c, --clients N        keep-alive clients (default 1000)\n"
            "  -s, --slow N           slowloris connections (default 1000)\n"
            "      --slow-mix H,J,N,R header/body_json/body_ndjson/noread shares (default 5,2,1,2)\n"
            "  -d, --duration S       seconds (default 60)\n"
            "      --think-ms MS      mean pause between a client's requests (default 1000)\n"
            "      --trickle-ms MS    a slow connection's byte interval (default 3000)\n"
            "      --req-timeout MS   a client gives a request up after MS (default 10000)\n"
            "      --head-start S     slow connections open S s before the clients (default 2)\n"
            "      --status-urls F    job status paths, one per line\n"
            "      --model M          the check job's model (default fake)\n"
            "      --job-items N      the check job's texts (default 200)\n"
            "      --noread-path P    what noread connections ask for (default " API "/jobs?limit=100)\n"
            "      --timeseries F     per second: t rss_kb fds requests slow_open and the\n"
            "                         slowest healthz, status, queue_status answer (ms)\n"
            "      --sigterm          at the end, SIGTERM batchd with every connection still open\n"
            "                         and time its exit (must be within 10 s)\n"
            "      --label L\n");
}

int main(int argc, char **argv)
{
    static struct hs hs;
    const char *base = NULL, *urls = NULL, *mix = "5,2,1,2";
    char host[64];
    int port = 0, ch;
    unsigned nslow = 1000;
    static const struct option opts[] = {
        { "base", required_argument, NULL, 'b' },
        { "pid", required_argument, NULL, 'p' },
        { "clients", required_argument, NULL, 'c' },
        { "slow", required_argument, NULL, 's' },
        { "slow-mix", required_argument, NULL, 'M' },
        { "duration", required_argument, NULL, 'd' },
        { "think-ms", required_argument, NULL, 'k' },
        { "trickle-ms", required_argument, NULL, 't' },
        { "req-timeout", required_argument, NULL, 'T' },
        { "head-start", required_argument, NULL, 'H' },
        { "status-urls", required_argument, NULL, 'U' },
        { "model", required_argument, NULL, 'm' },
        { "job-items", required_argument, NULL, 'j' },
        { "noread-path", required_argument, NULL, 'N' },
        { "timeseries", required_argument, NULL, 'S' },
        { "label", required_argument, NULL, 'l' },
        { "sigterm", no_argument, NULL, 'K' },
        { "help", no_argument, NULL, 'h' },
        { 0, 0, 0, 0 },
    };

    hs.label = "hostile";
    hs.nclients = 1000;
    hs.duration_s = 60;
    hs.think_ms = 1000;
    hs.trickle_ms = 3000;
    hs.req_timeout_ms = 10000;
    hs.head_start_s = 2;
    hs.model = "fake";
    hs.job_items = 200;
    hs.noread_path = API "/jobs?limit=100";
    hs.job_done_s = -1;
    while ((ch = getopt_long(argc, argv, "b:p:c:s:d:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'b': base = optarg; break;
        case 'p': hs.pid = (int)bb_arg_num("--pid", optarg, 1, 1e9); break;
        case 'c': hs.nclients = (unsigned)bb_arg_num("--clients", optarg, 0, 100000); break;
        case 's': nslow = (unsigned)bb_arg_num("--slow", optarg, 0, 100000); break;
        case 'M': mix = optarg; break;
        case 'd': hs.duration_s = bb_arg_num("--duration", optarg, 1, 3600); break;
        case 'k': hs.think_ms = bb_arg_num("--think-ms", optarg, 0, 60000); break;
        case 't': hs.trickle_ms = bb_arg_num("--trickle-ms", optarg, 10, 60000); break;
        case 'T': hs.req_timeout_ms = bb_arg_num("--req-timeout", optarg, 100, 600000); break;
        case 'H': hs.head_start_s = bb_arg_num("--head-start", optarg, 0, 60); break;
        case 'U': urls = optarg; break;
        case 'm': hs.model = optarg; break;
        case 'j': hs.job_items = (unsigned)bb_arg_num("--job-items", optarg, 1, 100000); break;
        case 'N': hs.noread_path = optarg; break;
        case 'S': hs.ts_path = optarg; break;
        case 'l': hs.label = optarg; break;
        case 'K': hs.do_sigterm = true; break;
        default: usage(); return ch == 'h' ? 0 : 2;
        }
    }
    if (base == NULL || hs.pid <= 0) {
        usage();
        return 2;
    }
    bb_parse_base(base, host, sizeof(host), &port);
    if (bh_addr(host, port, &hs.addr) < 0) {
        fprintf(stderr, "bench_hostile: bad address %s:%d\n", host, port);
        return 2;
    }
    if (urls)
        read_status_urls(&hs, urls);
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)uv_hrtime());
    snprintf(hs.nonce, sizeof(hs.nonce), "%d_%llu", (int)getpid(),
             (unsigned long long)(uv_hrtime() % 1000000));

    fit_fd_limit(&hs.nclients, &nslow, &hs.is_scaled);
    unsigned shares[SK_COUNT] = { 0 }, total_share = 0;
    if (sscanf(mix, "%u,%u,%u,%u", &shares[0], &shares[1], &shares[2], &shares[3]) != 4) {
        fprintf(stderr, "bench_hostile: --slow-mix wants four numbers, e.g. 5,2,1,2\n");
        return 2;
    }
    for (int k = 0; k < SK_COUNT; k++)
        total_share += shares[k];
    hs.nslow = 0;
    for (int k = 0; k < SK_COUNT; k++) {
        hs.sk[k].want = total_share ? nslow * shares[k] / total_share : 0;
        hs.nslow += hs.sk[k].want;
    }

    hs.loop = uv_default_loop();
    hs.fd_limit = proc_fd_limit(hs.pid);
    if (hs.ts_path && (hs.ts = fopen(hs.ts_path, "w")) == NULL)
        perror(hs.ts_path);
    hs.clients = bb_xmalloc((hs.nclients ? hs.nclients : 1) * sizeof(struct kclient));
    memset(hs.clients, 0, (hs.nclients ? hs.nclients : 1) * sizeof(struct kclient));
    hs.slows = bb_xmalloc((hs.nslow ? hs.nslow : 1) * sizeof(struct slow));
    memset(hs.slows, 0, (hs.nslow ? hs.nslow : 1) * sizeof(struct slow));

    hs.t0 = uv_hrtime();
    sample(&hs);                       /* the baseline, before any load */
    job_submit(&hs);
    {
        unsigned i = 0;
        for (int k = 0; k < SK_COUNT; k++)
            for (unsigned j = 0; j < hs.sk[k].want; j++, i++) {
                struct slow *s = &hs.slows[i];
                s->hs = &hs;
                s->kind = (enum slow_kind)k;
                uv_timer_init(hs.loop, &s->timer);
                s->timer.data = s;
                /* Spread the connects over the head start (or half a second). */
                double spread = hs.head_start_s > 0.5 ? hs.head_start_s * 500 : 500;
                uv_timer_start(&s->timer, slow_on_reconnect,
                               (uint64_t)((double)i / (hs.nslow ? hs.nslow : 1) * spread), 0);
            }
    }
    uv_timer_init(hs.loop, &hs.start_timer);
    hs.start_timer.data = &hs;
    uv_timer_start(&hs.start_timer, on_start_clients, (uint64_t)(hs.head_start_s * 1000), 0);
    uv_timer_init(hs.loop, &hs.sample_timer);
    hs.sample_timer.data = &hs;
    uv_timer_start(&hs.sample_timer, on_second, 1000, 1000);
    uv_timer_init(hs.loop, &hs.nd_timer);
    hs.nd_timer.data = &hs;
    uv_timer_start(&hs.nd_timer, on_nd_timer,
                   (uint64_t)((hs.head_start_s + (hs.duration_s - hs.head_start_s) / 3) * 1000), 0);
    uv_timer_init(hs.loop, &hs.end_timer);
    hs.end_timer.data = &hs;
    uv_timer_start(&hs.end_timer, on_end, (uint64_t)(hs.duration_s * 1000), 0);

    uv_run(hs.loop, UV_RUN_DEFAULT);
    if (hs.ts)
        fclose(hs.ts);
    if (hs.is_scaled)
        fprintf(stderr, "bench_hostile: NOTE: scaled down for the descriptor limit\n");
    int rc = report(&hs);

    /* Every handle is closed and every callback has run: free the rest (LSan runs this). */
    if (uv_loop_close(hs.loop) != 0)
        fprintf(stderr, "bench_hostile: handles left open at the end\n");
    while (hs.all_probes) {
        struct probe *p = hs.all_probes;
        hs.all_probes = p->next;
        free(p);
    }
    for (int e = 0; e < EP_COUNT; e++)
        bb_lat_free(&hs.ep[e].lat);
    for (int k = 0; k < SK_COUNT; k++)
        bb_lat_free(&hs.sk[k].life);
    bb_lat_free(&hs.probe_lat);
    for (unsigned i = 0; i < hs.nstatus; i++)
        free(hs.status_urls[i]);
    bb_free(&hs.job_body);
    free(hs.clients);
    free(hs.slows);
    return rc;
}
