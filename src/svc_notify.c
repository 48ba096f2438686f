/* svc_notify.c -- systemd's notification protocol for batchd (libsystemd's sd_notify).
 *
 * Owns two unreferenced uv timers: one polls the readiness the caller defines and sends
 * READY=1 / STATUS=, one sends WATCHDOG=1. sd_notify is one non-blocking datagram on a
 * local socket, so it is safe on the loop. Loop thread only; knows nothing of the other
 * modules (readiness comes through a callback).  SPDX-License-Identifier: MIT
 */
#include "batchd/svc_notify.h"

#include "batchd/log.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#define SVC_POLL_STARTING_MS 100        /* until READY=1: answer systemd quickly */
#define SVC_POLL_RUNNING_MS 1000        /* after: STATUS= changes only */

struct bd_svc_notify {
    uv_timer_t status_timer;
    uv_timer_t watchdog_timer;
    bd_svc_notify_wait_fn wait;
    void *arg;
    char *ready_status;
    char last_status[256];              /* the STATUS= text sent last ("" none yet) */
    unsigned pending_closes;
    bool is_ready;                      /* READY=1 sent */
    bool has_watchdog;
};

static void svc_send(const char *msg)
{
    int rc = sd_notify(0, msg);
    if (rc < 0)
        bd_log(BD_LOG_DEBUG, "notify", "event=sd_notify_failed err=%s", strerror(-rc));
}

/* Send STATUS=text unless it is the text sent last (systemd keeps the last one). */
static void svc_status(struct bd_svc_notify *n, const char *prefix, const char *text)
{
    char msg[320];

    if (prefix[0] == '\0' && strcmp(text, n->last_status) == 0)
        return;
    snprintf(n->last_status, sizeof(n->last_status), "%s", text);
    snprintf(msg, sizeof(msg), "%sSTATUS=%s", prefix, n->last_status);
    svc_send(msg);
}

static void svc_poll(struct bd_svc_notify *n)
{
    const char *waiting = n->wait(n->arg);

    if (waiting != NULL) {
        svc_status(n, "", waiting);
        return;
    }
    if (!n->is_ready) {
        n->is_ready = true;
        svc_status(n, "READY=1\n", n->ready_status);
        bd_log(BD_LOG_INFO, "notify", "event=ready_notified");
        uv_timer_set_repeat(&n->status_timer, SVC_POLL_RUNNING_MS);
        return;
    }
    svc_status(n, "", n->ready_status);  /* ready again after a store came back */
}

static void svc_on_status_timer(uv_timer_t *t)
{
    svc_poll(t->data);
}

static void svc_on_watchdog_timer(uv_timer_t *t)
{
    (void)t;
    svc_send("WATCHDOG=1");
}

struct bd_svc_notify *bd_svc_notify_start(uv_loop_t *loop, bd_svc_notify_wait_fn wait,
                                          void *arg, const char *ready_status)
{
    const char *sock = getenv("NOTIFY_SOCKET");
    uint64_t watchdog_us = 0;

    if (sock == NULL || sock[0] == '\0')
        return NULL;
    struct bd_svc_notify *n = calloc(1, sizeof(*n));
    if (n == NULL || (n->ready_status = strdup(ready_status)) == NULL) {
        free(n);
        bd_log(BD_LOG_WARN, "notify", "event=sd_notify_disabled err=out_of_memory");
        return NULL;
    }
    n->wait = wait;
    n->arg = arg;
    /* > 0 only when $WATCHDOG_USEC is set and $WATCHDOG_PID, if set, is this process. */
    n->has_watchdog = sd_watchdog_enabled(0, &watchdog_us) > 0 && watchdog_us > 0;

    uv_timer_init(loop, &n->status_timer);
    uv_timer_init(loop, &n->watchdog_timer);
    n->status_timer.data = n->watchdog_timer.data = n;
    uv_unref((uv_handle_t *)&n->status_timer);
    uv_unref((uv_handle_t *)&n->watchdog_timer);
    if (n->has_watchdog) {
        uint64_t every_ms = watchdog_us / 2000 > 0 ? watchdog_us / 2000 : 1;
        svc_send("WATCHDOG=1");
        uv_timer_start(&n->watchdog_timer, svc_on_watchdog_timer, every_ms, every_ms);
    }
    bd_log(BD_LOG_INFO, "notify", "event=sd_notify_started watchdog_ms=%llu",
           (unsigned long long)(watchdog_us / 1000));
    svc_poll(n);
    uv_timer_start(&n->status_timer, svc_on_status_timer,
                   n->is_ready ? SVC_POLL_RUNNING_MS : SVC_POLL_STARTING_MS,
                   n->is_ready ? SVC_POLL_RUNNING_MS : SVC_POLL_STARTING_MS);
    return n;
}

void bd_svc_notify_stopping(void)
{
    svc_send("STOPPING=1\nSTATUS=stopping");
}

static void svc_on_closed(uv_handle_t *h)
{
    struct bd_svc_notify *n = h->data;

    if (--n->pending_closes == 0) {
        free(n->ready_status);
        free(n);
    }
}

void bd_svc_notify_close(struct bd_svc_notify *n)
{
    if (n == NULL)
        return;
    n->pending_closes = 2;
    uv_close((uv_handle_t *)&n->status_timer, svc_on_closed);
    uv_close((uv_handle_t *)&n->watchdog_timer, svc_on_closed);
}
