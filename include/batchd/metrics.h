/* metrics.h -- counters and histograms of what this process did, and their exposition.
 *
 * Recording is cheap: fixed arrays, no allocation and no formatting per event. Rendering
 * (Prometheus text 0.0.4) happens only on a scrape. Loop thread only.
 */
#ifndef BATCHD_METRICS_H
#define BATCHD_METRICS_H

#include <stdbool.h>
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

/* Record v into h. */
void bd_hist_observe(struct bd_hist *h, double v);

/* Append h as a Prometheus histogram family (name, help, labels may be "" or
 * "model=\"x\"") to out. with_header writes # HELP / # TYPE first. */
void bd_hist_render(const struct bd_hist *h, struct bd_buf *out, const char *name,
                    const char *help, const char *labels, int with_header);

/* ---- jobs, batches, items ---------------------------------------------------------------
 * Recorded by the job engine for the work done in this process; indexed by fixed arrays
 * (operation x model slot x state), so recording is a few additions. A model slot is the
 * model's index in the config (cfg->models), or one of the values below. */
#define BD_METRICS_MAX_MODELS 64      /* config models beyond this share the "_other" slot */
#define BD_METRICS_MODEL_NONE (-1)    /* no model: bulk_insert */
#define BD_METRICS_MODEL_UNKNOWN (-2) /* a model name this process's config does not know */

/* The slot of model (NULL or "" = BD_METRICS_MODEL_NONE). A linear scan of cfg->models with
 * strcmp: no allocation. */
struct bd_config;
int bd_metrics_model_slot(const struct bd_config *cfg, const char *model);

/* A job ended in this process (its terminal row was written here). op is an
 * enum bd_job_operation, state the terminal status as stored ("completed", "failed",
 * "cancelled"; anything else is ignored), seconds the time from started_at to now.
 * m may be NULL (nothing is recorded). No allocation, no formatting. */
void bd_metrics_job_finished(struct bd_metrics *m, int op, int model_slot, const char *state,
                             double seconds);

/* A batch was checkpointed in this process (its transaction committed): items_ok items
 * stored, items_failed recorded as failed, cache_hits served from the embedding cache;
 * seconds from loading the batch to the commit. m may be NULL. No allocation. */
void bd_metrics_batch_done(struct bd_metrics *m, int op, int model_slot, double seconds,
                           unsigned items_ok, unsigned items_failed, unsigned cache_hits);

/* Totals since start, summed over operations and models (for the JSON metrics and tests). */
struct bd_metrics_job_totals {
    uint64_t jobs[5];                 /* by enum bd_job_state (queued/processing stay 0) */
    uint64_t batches;
    uint64_t items_ok, items_failed, cache_hits;
};
void bd_metrics_get_job_totals(const struct bd_metrics *m, struct bd_metrics_job_totals *out);

/* Append batchd_jobs_total, batchd_items_total, batchd_batches_total,
 * batchd_cache_hits_total, the pause gauges and the job and batch duration histograms to out (allocates a
 * small label buffer; scrape time only). Model labels come from cfg->models (borrowed). Label
 * combinations never recorded are not written (a counter absent from a scrape is 0). */
void bd_metrics_render_jobs(const struct bd_metrics *m, struct bd_buf *out,
                            const struct bd_config *cfg);

/* The queue's pause state as the job engine last read it (all processes share it):
 * batchd_queue_paused (the whole queue, always written) and batchd_model_paused{model}
 * (a configured model, by its index in cfg->models; written once the model has been
 * paused, 0 again after its resume, absent before, as unrecorded counters; indexes from
 * BD_METRICS_MAX_MODELS on are not kept), by bd_metrics_render_jobs. m may be NULL. No
 * allocation. */
void bd_metrics_set_queue_paused(struct bd_metrics *m, bool is_paused);
void bd_metrics_set_model_paused(struct bd_metrics *m, unsigned model_index, bool is_paused);
/* ---- webhooks (webhook.c) ----------------------------------------------------------------
 * Each delivery attempt of this process by result; the outbox's pending deliveries (all
 * processes; -1 until first counted); time from event to delivery. Rendered by
 * bd_metrics_render as batchd_webhook_deliveries_total{result}, batchd_webhook_pending and
 * batchd_webhook_delivery_seconds. m may be NULL (nothing recorded). No allocation. */
enum bd_metrics_webhook_result {
    BD_METRICS_WEBHOOK_DELIVERED = 0,  /* 2xx */
    BD_METRICS_WEBHOOK_FAILED_ATTEMPT, /* not 2xx or no answer; will be retried */
    BD_METRICS_WEBHOOK_GAVE_UP,        /* the last attempt failed: marked failed */
    BD_METRICS_WEBHOOK_RESULTS
};
struct bd_metrics_webhooks {
    uint64_t results[BD_METRICS_WEBHOOK_RESULTS];
    int64_t pending;
    struct bd_hist delivery_seconds;  /* observed for delivered ones */
};
void bd_metrics_webhook_result(struct bd_metrics *m, enum bd_metrics_webhook_result r,
                               double seconds);
void bd_metrics_webhook_set_pending(struct bd_metrics *m, int64_t pending);
/* Borrowed from m. */
const struct bd_metrics_webhooks *bd_metrics_get_webhooks(const struct bd_metrics *m);

/* ---- this process ---------------------------------------------------------------------- */

/* CPU use of this process in percent of one core, over the last 5 to 10 seconds: the
 * window runs from a sample kept in m (refreshed when it is older than 5 s) to now; the
 * first window starts at bd_metrics_new. Reads getrusage; no allocation. */
double bd_metrics_sample_cpu_percent(struct bd_metrics *m);

/* Resident memory of this process in bytes (/proc/self/statm), -1 when unknown. */
long bd_metrics_get_rss_bytes(void);

/* Append this process's families (HTTP, loop lag, process CPU/RSS/fds/start time) in
 * Prometheus text format to out. start_time_unix is the process start. */
void bd_metrics_render(const struct bd_metrics *m, struct bd_buf *out, uint64_t start_time_unix);

/* Escape a Prometheus label value into out (backslash, quote, newline). */
void bd_metrics_escape_label(struct bd_buf *out, const char *v);

#endif
