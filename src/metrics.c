/* metrics.c -- fixed-size counters and histograms, rendered as Prometheus text on scrape.
 *
 * Owns struct bd_metrics. Loop thread only. Recording never allocates or formats; the
 * HTTP counter is a small open-addressed table keyed by (route pointer, method, status),
 * whose cardinality is bounded by the route table. Process figures (CPU, RSS, fds) are
 * read from getrusage and /proc only when scraped.  SPDX-License-Identifier: MIT
 */
#include "batchd/metrics.h"

#include "batchd/buf.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define METRICS_HTTP_SLOTS 512

/* Latency buckets (seconds): 100 us .. 10 s, roughly x2.5 apart. */
static const double metrics_latency_bounds[] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                 0.005,  0.01,    0.025,  0.05,  0.1,
                                                 0.25,   0.5,     1,      2.5,   10 };
/* Loop-lag buckets (seconds): 1 ms .. 1 s. */
static const double metrics_lag_bounds[] = { 0.001, 0.002, 0.005, 0.01, 0.025,
                                             0.05,  0.1,   0.25,  0.5,  1 };

static const char *const metrics_methods[] = { "GET", "POST", "DELETE", "HEAD", "PUT",
                                               "PATCH", "OPTIONS", "OTHER" };
#define METRICS_METHODS_COUNT (sizeof(metrics_methods) / sizeof(metrics_methods[0]))

struct metrics_http_slot {
    const char *route;                /* NULL route is stored as the "unmatched" sentinel */
    uint16_t status;                  /* 0 = empty slot */
    uint8_t method;
    uint64_t count;
};

struct bd_metrics {
    struct metrics_http_slot http[METRICS_HTTP_SLOTS];
    uint64_t http_dropped;            /* table full (cannot happen with bounded routes) */
    struct bd_hist http_duration;
    struct bd_hist loop_lag;
    double max_loop_lag;
};

static const char metrics_unmatched[] = "unmatched";

static void metrics_hist_init(struct bd_hist *h, const double *bounds, unsigned n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->bounds_count = n;
}

struct bd_metrics *bd_metrics_new(void)
{
    struct bd_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    metrics_hist_init(&m->http_duration, metrics_latency_bounds,
                      sizeof(metrics_latency_bounds) / sizeof(double));
    metrics_hist_init(&m->loop_lag, metrics_lag_bounds,
                      sizeof(metrics_lag_bounds) / sizeof(double));
    return m;
}

void bd_metrics_free(struct bd_metrics *m)
{
    free(m);
}

void bd_hist_observe(struct bd_hist *h, double v)
{
    unsigned i = 0;
    while (i < h->bounds_count && v > h->bounds[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum += v;
}

static uint8_t metrics_method_index(const char *method)
{
    if (method == NULL)
        return METRICS_METHODS_COUNT - 1;
    for (uint8_t i = 0; i < METRICS_METHODS_COUNT - 1; i++)
        if (strcmp(method, metrics_methods[i]) == 0)
            return i;
    return METRICS_METHODS_COUNT - 1;
}

void bd_metrics_observe_http(struct bd_metrics *m, const char *route, const char *method,
                             int status, double seconds)
{
    const char *key = route ? route : metrics_unmatched;
    uint8_t mi = metrics_method_index(method);
    uintptr_t h = ((uintptr_t)key >> 3) * 31u + mi * 7u + (unsigned)status;

    bd_hist_observe(&m->http_duration, seconds);
    for (unsigned probe = 0; probe < METRICS_HTTP_SLOTS; probe++) {
        struct metrics_http_slot *s = &m->http[(h + probe) % METRICS_HTTP_SLOTS];
        if (s->status == 0) {
            s->route = key;
            s->method = mi;
            s->status = (uint16_t)status;
            s->count = 1;
            return;
        }
        if (s->route == key && s->method == mi && s->status == status) {
            s->count++;
            return;
        }
    }
    m->http_dropped++;
}

void bd_metrics_observe_loop_lag(struct bd_metrics *m, double seconds)
{
    bd_hist_observe(&m->loop_lag, seconds);
    if (seconds > m->max_loop_lag)
        m->max_loop_lag = seconds;
}

double bd_metrics_get_max_loop_lag(const struct bd_metrics *m)
{
    return m->max_loop_lag;
}

void bd_metrics_escape_label(struct bd_buf *out, const char *v)
{
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            bd_buf_append(out, "\\\\", 2);
        else if (*p == '"')
            bd_buf_append(out, "\\\"", 2);
        else if (*p == '\n')
            bd_buf_append(out, "\\n", 2);
        else
            bd_buf_append(out, p, 1);
    }
}

void bd_hist_render(const struct bd_hist *h, struct bd_buf *out, const char *name,
                    const char *help, const char *labels, int with_header)
{
    const char *sep = (labels && *labels) ? "," : "";
    uint64_t cum = 0;

    if (labels == NULL)
        labels = "";
    if (with_header)
        bd_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (unsigned i = 0; i < h->bounds_count; i++) {
        cum += h->buckets[i];
        bd_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->bounds[i],
                      (unsigned long long)cum);
    }
    cum += h->buckets[h->bounds_count];
    bd_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                  (unsigned long long)cum);
    if (*labels) {
        bd_buf_printf(out, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name,
                      labels, (unsigned long long)h->count);
    } else {
        bd_buf_printf(out, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name,
                      (unsigned long long)h->count);
    }
}

static long metrics_rss_bytes(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = -1;
    fclose(f);
    return rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE);
}

static long metrics_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long n = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1;                     /* the directory handle itself */
}

void bd_metrics_render(const struct bd_metrics *m, struct bd_buf *out, uint64_t start_time_unix)
{
    struct rusage ru;

    bd_buf_puts(out, "# HELP batchd_http_requests_total HTTP responses by route pattern, "
                     "method and status code.\n# TYPE batchd_http_requests_total counter\n");
    for (unsigned i = 0; i < METRICS_HTTP_SLOTS; i++) {
        const struct metrics_http_slot *s = &m->http[i];
        if (s->status == 0)
            continue;
        bd_buf_puts(out, "batchd_http_requests_total{route=\"");
        bd_metrics_escape_label(out, s->route);
        bd_buf_printf(out, "\",method=\"%s\",code=\"%u\"} %llu\n", metrics_methods[s->method],
                      s->status, (unsigned long long)s->count);
    }
    bd_hist_render(&m->http_duration, out, "batchd_http_request_duration_seconds",
                   "Time from a request's first byte to its response being queued.", "", 1);
    bd_hist_render(&m->loop_lag, out, "batchd_loop_lag_seconds",
                   "How late a 100 ms loop timer fired: time the loop spent blocked.", "", 1);

    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    bd_buf_printf(out, "# HELP process_cpu_seconds_total User and system CPU time spent.\n"
                       "# TYPE process_cpu_seconds_total counter\n"
                       "process_cpu_seconds_total %.6f\n", cpu);
    bd_buf_printf(out, "# HELP process_resident_memory_bytes Resident memory size.\n"
                       "# TYPE process_resident_memory_bytes gauge\n"
                       "process_resident_memory_bytes %ld\n", metrics_rss_bytes());
    bd_buf_printf(out, "# HELP process_open_fds Open file descriptors.\n"
                       "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n",
                  metrics_open_fds());
    bd_buf_printf(out, "# HELP process_start_time_seconds Start time since the epoch.\n"
                       "# TYPE process_start_time_seconds gauge\n"
                       "process_start_time_seconds %llu\n",
                  (unsigned long long)start_time_unix);
}
