/* metrics.h -- counters and histograms of what this process did, and their exposition.
 *
 * Recording is cheap: fixed arrays, no allocation and no formatting per event. Rendering
 * (Prometheus text 0.0.4) happens only on a scrape. Loop thread only.
 */
#ifndef BATCHD_METRICS_H
#define BATCHD_METRICS_H

#include <stdint.h>

struct bd_buf;
struct bd_metrics;

#define BD_HIST_MAX_BUCKETS 16

struct bd_hist {
    const double *bounds;             /* upper bounds (seconds), ascending; +Inf implicit */
    unsigned bounds_count;
    uint64_t buckets[BD_HIST_MAX_BUCKETS + 1]; /* non-cumulative; last is +Inf */
    uint64_t count;
    double sum;
};

/* New metrics store. NULL on ENOMEM. Free with bd_metrics_free. */
struct bd_metrics *bd_metrics_new(void);
void bd_metrics_free(struct bd_metrics *m);

/* One HTTP response. route is the matched pattern (a pointer constant after start-up, or
 * NULL for unmatched requests); method is copied by kind, not kept. */
void bd_metrics_observe_http(struct bd_metrics *m, const char *route, const char *method,
                             int status, double seconds);

/* One loop-lag sample (how late the lag probe ran), seconds. */
void bd_metrics_observe_loop_lag(struct bd_metrics *m, double seconds);

/* Largest loop lag seen, seconds (for /debug and tests). */
double bd_metrics_get_max_loop_lag(const struct bd_metrics *m);

/* Record v into h. */
void bd_hist_observe(struct bd_hist *h, double v);

/* Append h as a Prometheus histogram family (name, help, labels may be "" or
 * "model=\"x\"") to out. with_header writes # HELP / # TYPE first. */
void bd_hist_render(const struct bd_hist *h, struct bd_buf *out, const char *name,
                    const char *help, const char *labels, int with_header);

/* Append this process's families (HTTP, loop lag, process CPU/RSS/fds/start time) in
 * Prometheus text format to out. start_time_unix is the process start. */
void bd_metrics_render(const struct bd_metrics *m, struct bd_buf *out, uint64_t start_time_unix);

/* Escape a Prometheus label value into out (backslash, quote, newline). */
void bd_metrics_escape_label(struct bd_buf *out, const char *v);

#endif
