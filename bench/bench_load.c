/* bench_load.c -- HTTP load generator: closed loop (N connections, each sends its next
 * request when the last one answered) or open loop (a fixed offered rate, wrk2-style).
 *
 * Owns its loop, connections, schedule and samples. Single thread; everything is a libuv
 * callback. In open-loop mode each request has an intended start time t0 + i / rate and
 * its latency is measured from that time, not from when a connection became free, so a
 * slow server cannot hide its queueing (no coordinated omission). The schedule is driven by
 * a timerfd (nanosecond deadlines) so that latencies well under a millisecond are not
 * rounded up to libuv's millisecond timers. Always bounded: stops after --requests or
 * --duration, and gives up in-flight requests after --drain seconds.
 *
 * Prints one JSON object on stdout:
 *   {"label","mode","rate","connections","requests","ok","errors","status":{"2xx":..},
 *    "duration_s","rps","p50_ms","p90_ms","p99_ms","p999_ms","max_ms","mean_ms","bytes_in"}
 * Bench code only.  SPDX-License-Identifier: MIT
 */
#include "bench_common.h"
#include "bench_http.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define TS_BUCKET_NS 100000000ull      /* time series resolution: 100 ms */

struct item {                          /* one request shape: a path and an optional body */
    char *path;
    char *body;
    size_t body_len;
};

struct load_conn {
    struct bh_conn *http;
    struct load *ld;
    uint64_t intended_ns;              /* latency is measured from here */
};

struct load {
    uv_loop_t *loop;
    struct sockaddr_in addr;
    const char *method;
    const char *content_type;
    const char *label;
    struct item *items;
    size_t nitems;
    size_t next_item;

    struct load_conn *conns;
    unsigned nconns;
    unsigned *idle;                    /* stack of idle connection indexes */
    unsigned nidle;

    double rate;                       /* 0: closed loop */
    double duration_s;
    double warmup_s;
    double drain_s;
    uint64_t max_requests;             /* 0: no count limit */

    uint64_t t0;
    uint64_t t_measure;                /* t0 + warmup */
    uint64_t t_end_issue;              /* no request is started after this */
    uint64_t t_last_done;
    uint64_t scheduled;                /* open loop: requests whose intended time passed */
    uint64_t issued;
    uint64_t done;
    uint64_t ok;
    uint64_t errors;
    uint64_t status_class[6];
    uint64_t bytes_in;
    uint64_t measured;                 /* completions counted in the figures */
    struct bb_lat lat;
    double lat_sum;

    /* open loop: intended start times of requests waiting for a connection */
    uint64_t *queue;
    size_t qhead, qlen, qcap;

    int tfd;
    uv_poll_t tpoll;
    uv_timer_t stop_timer;
    uv_signal_t sigint;
    bool is_stopping;

    uint64_t *ts_done;                 /* completions per 100 ms bucket */
    double *ts_lat_sum;
    size_t ts_n;
    const char *ts_path;
};

static void load_issue(struct load *ld, unsigned ci, uint64_t intended);

static void load_stop(struct load *ld)
{
    if (ld->is_stopping)
        return;
    ld->is_stopping = true;
    if (ld->tfd >= 0) {
        uv_poll_stop(&ld->tpoll);
        uv_close((uv_handle_t *)&ld->tpoll, NULL);
    }
    uv_timer_stop(&ld->stop_timer);
    uv_close((uv_handle_t *)&ld->stop_timer, NULL);
    uv_close((uv_handle_t *)&ld->sigint, NULL);
    for (unsigned i = 0; i < ld->nconns; i++)
        bh_conn_free(ld->conns[i].http);
}

static bool load_may_issue(const struct load *ld, uint64_t now)
{
    if (ld->is_stopping)
        return false;
    if (ld->max_requests && ld->issued >= ld->max_requests)
        return false;
    return now < ld->t_end_issue;
}

static void load_maybe_finished(struct load *ld)
{
    if (ld->is_stopping || ld->issued != ld->done)
        return;
    uint64_t now = uv_hrtime();
    if (!load_may_issue(ld, now) || (ld->rate > 0 && ld->qlen == 0 && now >= ld->t_end_issue))
        load_stop(ld);
}

static void ts_record(struct load *ld, uint64_t now, double ms)
{
    size_t b = (size_t)((now - ld->t0) / TS_BUCKET_NS);
    if (b >= ld->ts_n) {
        size_t n = b + 64;
        ld->ts_done = bb_xrealloc(ld->ts_done, n * sizeof(uint64_t));
        ld->ts_lat_sum = bb_xrealloc(ld->ts_lat_sum, n * sizeof(double));
        memset(ld->ts_done + ld->ts_n, 0, (n - ld->ts_n) * sizeof(uint64_t));
        memset(ld->ts_lat_sum + ld->ts_n, 0, (n - ld->ts_n) * sizeof(double));
        ld->ts_n = n;
    }
    ld->ts_done[b]++;
    ld->ts_lat_sum[b] += ms;
}

static void load_on_response(struct bh_conn *c, int status, const char *body, size_t len,
                             void *arg)
{
    struct load_conn *lc = arg;
    struct load *ld = lc->ld;
    uint64_t now = uv_hrtime();
    double ms = (double)(now - lc->intended_ns) / 1e6;

    (void)c;
    (void)body;
    ld->done++;
    ld->t_last_done = now;
    ld->bytes_in += len;
    if (status < 0) {
        ld->errors++;
    } else {
        ld->status_class[status / 100 < 6 ? status / 100 : 0]++;
        if (status >= 200 && status < 300)
            ld->ok++;
        else
            ld->errors++;
    }
    if (lc->intended_ns >= ld->t_measure && status >= 200 && status < 300) {
        bb_lat_add(&ld->lat, ms);
        ld->lat_sum += ms;
        ld->measured++;
    }
    ts_record(ld, now, ms);
    if (ld->is_stopping)
        return;

    unsigned ci = (unsigned)(lc - ld->conns);
    if (ld->rate > 0) {
        if (ld->qlen > 0) {            /* a request has been waiting for a connection */
            uint64_t t = ld->queue[ld->qhead];
            ld->qhead = (ld->qhead + 1) % ld->qcap;
            ld->qlen--;
            load_issue(ld, ci, t);
            return;
        }
        ld->idle[ld->nidle++] = ci;
    } else if (load_may_issue(ld, now)) {
        load_issue(ld, ci, now);
        return;
    }
    load_maybe_finished(ld);
}

static void load_issue(struct load *ld, unsigned ci, uint64_t intended)
{
    struct load_conn *lc = &ld->conns[ci];
    const struct item *it = &ld->items[ld->next_item];

    ld->next_item = (ld->next_item + 1) % ld->nitems;
    lc->intended_ns = intended;
    ld->issued++;
    int rc = bh_conn_request(lc->http, ld->method, it->path,
                             it->body_len ? ld->content_type : NULL, it->body, it->body_len,
                             false, load_on_response, lc);
    if (rc < 0) {
        fprintf(stderr, "bench_load: request failed to start: %s\n", uv_strerror(rc));
        ld->issued--;
        ld->errors++;
    }
}

static void queue_push(struct load *ld, uint64_t t)
{
    if (ld->qlen == ld->qcap) {
        size_t ncap = ld->qcap ? ld->qcap * 2 : 1024;
        uint64_t *q = bb_xmalloc(ncap * sizeof(uint64_t));
        for (size_t i = 0; i < ld->qlen; i++)
            q[i] = ld->queue[(ld->qhead + i) % ld->qcap];
        free(ld->queue);
        ld->queue = q;
        ld->qhead = 0;
        ld->qcap = ncap;
    }
    ld->queue[(ld->qhead + ld->qlen) % ld->qcap] = t;
    ld->qlen++;
}

static void tfd_arm(struct load *ld, uint64_t at_ns)
{
    struct itimerspec its = { { 0, 0 }, { (time_t)(at_ns / 1000000000u),
                                          (long)(at_ns % 1000000000u) } };
    if (timerfd_settime(ld->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        perror("bench_load: timerfd_settime");
        exit(1);
    }
}

/* Open loop: start every request whose intended time has come; arm for the next one. */
static void load_on_tick(uv_poll_t *p, int status, int events)
{
    struct load *ld = p->data;
    uint64_t expirations;
    (void)status;
    (void)events;

    if (read(ld->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        perror("bench_load: read timerfd");
    if (ld->is_stopping)
        return;
    uint64_t now = uv_hrtime();
    double interval_ns = 1e9 / ld->rate;
    for (;;) {
        uint64_t intended = ld->t0 + (uint64_t)((double)ld->scheduled * interval_ns);
        if (intended > now)
            break;
        if (intended >= ld->t_end_issue ||
            (ld->max_requests && ld->scheduled >= ld->max_requests)) {
            uv_poll_stop(&ld->tpoll);
            load_maybe_finished(ld);
            return;
        }
        ld->scheduled++;
        if (ld->nidle > 0)
            load_issue(ld, ld->idle[--ld->nidle], intended);
        else
            queue_push(ld, intended);
    }
    tfd_arm(ld, ld->t0 + (uint64_t)((double)ld->scheduled * interval_ns));
}

static void load_on_stop_timer(uv_timer_t *t)
{
    struct load *ld = t->data;
    uint64_t now = uv_hrtime();

    if (now < ld->t_end_issue) {
        uv_timer_start(t, load_on_stop_timer, 1 + (ld->t_end_issue - now) / 1000000, 0);
        return;
    }
    if (ld->issued == ld->done && ld->qlen == 0) {
        load_stop(ld);
        return;
    }
    /* The drain deadline: count what is still open as errors and stop. */
    if (now >= ld->t_end_issue + (uint64_t)(ld->drain_s * 1e9)) {
        fprintf(stderr, "bench_load: %llu requests unanswered after the %.1f s drain\n",
                (unsigned long long)(ld->issued - ld->done + ld->qlen), ld->drain_s);
        ld->errors += ld->issued - ld->done + ld->qlen;
        ld->qlen = 0;
        ld->issued = ld->done;
        load_stop(ld);
        return;
    }
    uv_timer_start(t, load_on_stop_timer, 50, 0);
}

static void load_on_sigint(uv_signal_t *s, int signum)
{
    (void)signum;
    load_stop(s->data);
}

static void read_items(struct load *ld, const char *urls_file, const char *path,
                       const char *bodies_file, const char *body_file)
{
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;

    if (urls_file) {
        FILE *f = fopen(urls_file, "r");
        if (f == NULL) {
            perror(urls_file);
            exit(2);
        }
        while ((n = getline(&line, &lcap, f)) > 0) {
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                line[--n] = '\0';
            if (n == 0)
                continue;
            if (ld->nitems == cap) {
                cap = cap ? cap * 2 : 64;
                ld->items = bb_xrealloc(ld->items, cap * sizeof(struct item));
            }
            ld->items[ld->nitems++] = (struct item){ bb_xstrdup(line), NULL, 0 };
        }
        fclose(f);
    } else if (bodies_file) {
        FILE *f = fopen(bodies_file, "r");
        if (f == NULL) {
            perror(bodies_file);
            exit(2);
        }
        while ((n = getline(&line, &lcap, f)) > 0) {
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
                line[--n] = '\0';
            if (n == 0)
                continue;
            if (ld->nitems == cap) {
                cap = cap ? cap * 2 : 64;
                ld->items = bb_xrealloc(ld->items, cap * sizeof(struct item));
            }
            ld->items[ld->nitems++] = (struct item){ bb_xstrdup(path), bb_xstrdup(line),
                                                     (size_t)n };
        }
        fclose(f);
    } else {
        struct item it = { bb_xstrdup(path), NULL, 0 };
        if (body_file) {
            FILE *f = fopen(body_file, "rb");
            struct bb_buf b = {0};
            char tmp[65536];
            size_t r;
            if (f == NULL) {
                perror(body_file);
                exit(2);
            }
            while ((r = fread(tmp, 1, sizeof(tmp), f)) > 0)
                bb_put(&b, tmp, r);
            fclose(f);
            it.body = b.p;
            it.body_len = b.len;
        }
        ld->items = bb_xmalloc(sizeof(struct item));
        ld->items[0] = it;
        ld->nitems = 1;
    }
    free(line);
    if (ld->nitems == 0) {
        fprintf(stderr, "bench_load: no requests to send\n");
        exit(2);
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_load --url http://127.0.0.1:PORT/path [options]\n"
            "  -c, --connections N   keep-alive connections (default 16)\n"
            "  -n, --requests N      stop after N requests\n"
            "  -d, --duration S      stop issuing after S seconds (default 10)\n"
            "  -r, --rate R          open loop at R requests/s (default: closed loop)\n"
            "      --warmup S        leave the first S seconds out of the figures\n"
            "      --drain S         wait at most S s for answers at the end (default 5)\n"
            "  -m, --method M        GET (default) or POST\n"
            "      --body-file F     one body for every request\n"
            "      --bodies-file F   one body per line, sent round robin (NDJSON)\n"
            "      --urls-file F     one path per line, sent round robin\n"
            "      --content-type T  (default application/json)\n"
            "      --label L         name for the JSON output\n"
            "      --timeseries F    write 't_s rps mean_ms' per 100 ms to F\n");
}

int main(int argc, char **argv)
{
    struct load ld;
    const char *url = NULL, *body_file = NULL, *bodies_file = NULL, *urls_file = NULL;
    char host[64];
    int port = 0;
    static const struct option opts[] = {
        { "url", required_argument, NULL, 'u' },
        { "connections", required_argument, NULL, 'c' },
        { "requests", required_argument, NULL, 'n' },
        { "duration", required_argument, NULL, 'd' },
        { "rate", required_argument, NULL, 'r' },
        { "warmup", required_argument, NULL, 'w' },
        { "drain", required_argument, NULL, 'D' },
        { "method", required_argument, NULL, 'm' },
        { "body-file", required_argument, NULL, 'b' },
        { "bodies-file", required_argument, NULL, 'B' },
        { "urls-file", required_argument, NULL, 'U' },
        { "content-type", required_argument, NULL, 'T' },
        { "label", required_argument, NULL, 'l' },
        { "timeseries", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { 0, 0, 0, 0 },
    };
    int ch;

    memset(&ld, 0, sizeof(ld));
    ld.nconns = 16;
    ld.duration_s = 10;
    ld.drain_s = 5;
    ld.method = "GET";
    ld.content_type = "application/json";
    ld.label = "load";
    ld.tfd = -1;
    while ((ch = getopt_long(argc, argv, "u:c:n:d:r:m:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'u': url = optarg; break;
        case 'c': ld.nconns = (unsigned)bb_arg_num("--connections", optarg, 1, 10000); break;
        case 'n': ld.max_requests = (uint64_t)bb_arg_num("--requests", optarg, 1, 1e10); break;
        case 'd': ld.duration_s = bb_arg_num("--duration", optarg, 0.01, 3600); break;
        case 'r': ld.rate = bb_arg_num("--rate", optarg, 0.001, 1e7); break;
        case 'w': ld.warmup_s = bb_arg_num("--warmup", optarg, 0, 3600); break;
        case 'D': ld.drain_s = bb_arg_num("--drain", optarg, 0, 600); break;
        case 'm': ld.method = optarg; break;
        case 'b': body_file = optarg; break;
        case 'B': bodies_file = optarg; break;
        case 'U': urls_file = optarg; break;
        case 'T': ld.content_type = optarg; break;
        case 'l': ld.label = optarg; break;
        case 's': ld.ts_path = optarg; break;
        default: usage(); return ch == 'h' ? 0 : 2;
        }
    }
    if (url == NULL) {
        usage();
        return 2;
    }
    bb_parse_base(url, host, sizeof(host), &port);
    const char *path = strchr(url + (strncmp(url, "http://", 7) == 0 ? 7 : 0), '/');
    read_items(&ld, urls_file, path ? path : "/", bodies_file, body_file);
    if (bh_addr(host, port, &ld.addr) < 0) {
        fprintf(stderr, "bench_load: bad address %s:%d\n", host, port);
        return 2;
    }

    ld.loop = uv_default_loop();
    ld.conns = bb_xmalloc(ld.nconns * sizeof(struct load_conn));
    ld.idle = bb_xmalloc(ld.nconns * sizeof(unsigned));
    for (unsigned i = 0; i < ld.nconns; i++) {
        ld.conns[i] = (struct load_conn){ bh_conn_new(ld.loop, &ld.addr), &ld, 0 };
        ld.idle[ld.nidle++] = ld.nconns - 1 - i;
    }
    uv_timer_init(ld.loop, &ld.stop_timer);
    ld.stop_timer.data = &ld;
    uv_signal_init(ld.loop, &ld.sigint);
    ld.sigint.data = &ld;
    uv_signal_start(&ld.sigint, load_on_sigint, SIGINT);

    ld.t0 = uv_hrtime();
    ld.t_measure = ld.t0 + (uint64_t)(ld.warmup_s * 1e9);
    ld.t_end_issue = ld.t0 + (uint64_t)((ld.warmup_s + ld.duration_s) * 1e9);
    uv_timer_start(&ld.stop_timer, load_on_stop_timer,
                   (uint64_t)((ld.warmup_s + ld.duration_s) * 1000) + 1, 0);
    if (ld.rate > 0) {
        ld.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (ld.tfd < 0) {
            perror("bench_load: timerfd_create");
            return 1;
        }
        uv_poll_init(ld.loop, &ld.tpoll, ld.tfd);
        ld.tpoll.data = &ld;
        uv_poll_start(&ld.tpoll, UV_READABLE, load_on_tick);
        tfd_arm(&ld, ld.t0);
    } else {
        while (ld.nidle > 0 && load_may_issue(&ld, ld.t0))
            load_issue(&ld, ld.idle[--ld.nidle], ld.t0);
    }
    uv_run(ld.loop, UV_RUN_DEFAULT);
    if (ld.tfd >= 0)
        close(ld.tfd);

    uint64_t t_stop = ld.t_last_done ? ld.t_last_done : uv_hrtime();
    uint64_t t_from = ld.t_measure;
    double dur = t_stop > t_from ? (double)(t_stop - t_from) / 1e9 : 0;
    /* Throughput: open loop over the scheduled window, closed loop until the last answer. */
    if (ld.rate > 0)
        dur = ld.duration_s;
    double rps = dur > 0 ? (double)ld.measured / dur : 0;
    printf("{\"label\":\"%s\",\"mode\":\"%s\",\"rate\":%.1f,\"connections\":%u,"
           "\"requests\":%llu,\"ok\":%llu,\"errors\":%llu,"
           "\"status\":{\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu},"
           "\"duration_s\":%.3f,\"rps\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"mean_ms\":%.3f,"
           "\"bytes_in\":%llu}\n",
           ld.label, ld.rate > 0 ? "open" : "closed", ld.rate, ld.nconns,
           (unsigned long long)ld.done, (unsigned long long)ld.ok,
           (unsigned long long)ld.errors, (unsigned long long)ld.status_class[2],
           (unsigned long long)ld.status_class[3], (unsigned long long)ld.status_class[4],
           (unsigned long long)ld.status_class[5], dur, rps, bb_lat_quantile(&ld.lat, 0.50),
           bb_lat_quantile(&ld.lat, 0.90), bb_lat_quantile(&ld.lat, 0.99),
           bb_lat_quantile(&ld.lat, 0.999), bb_lat_quantile(&ld.lat, 1.0),
           ld.measured ? ld.lat_sum / (double)ld.measured : 0.0,
           (unsigned long long)ld.bytes_in);
    if (ld.ts_path) {
        FILE *f = fopen(ld.ts_path, "w");
        if (f) {
            for (size_t i = 0; i < ld.ts_n; i++) {
                if ((uint64_t)i * TS_BUCKET_NS > t_stop - ld.t0 + TS_BUCKET_NS)
                    break;
                fprintf(f, "%.1f\t%.0f\t%.3f\n", (double)i * TS_BUCKET_NS / 1e9 + 0.05,
                        (double)ld.ts_done[i] * 1e9 / TS_BUCKET_NS,
                        ld.ts_done[i] ? ld.ts_lat_sum[i] / (double)ld.ts_done[i] : 0.0);
            }
            fclose(f);
        }
    }
    int rc = uv_loop_close(ld.loop);
    (void)rc;
    bb_lat_free(&ld.lat);
    return 0;
}
