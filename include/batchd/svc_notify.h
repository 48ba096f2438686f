/* svc_notify.h -- tells systemd how batchd is doing (sd_notify, Type=notify units).
 *
 * READY=1 once batchd is ready as /readyz means it (listening, Redis and PostgreSQL
 * reachable, schema migrated), STATUS= while it waits for one of them (and whenever that
 * changes later), STOPPING=1 when shutdown begins, WATCHDOG=1 from a loop timer at half of
 * $WATCHDOG_USEC, so a loop that stalls stops the pings and systemd restarts the process.
 * Without $NOTIFY_SOCKET (not started by systemd, or not Type=notify) all of it is a
 * no-op. Loop thread only.
 */
#ifndef BATCHD_SVC_NOTIFY_H
#define BATCHD_SVC_NOTIFY_H

#include <uv.h>

struct bd_svc_notify;

/* What the process still waits for: NULL when it is ready, else a short text for STATUS=
 * ("waiting for PostgreSQL"), borrowed until the next call. Called from a loop timer. */
typedef const char *(*bd_svc_notify_wait_fn)(void *arg);

/* Start reporting to systemd: the first STATUS= (or READY=1) goes out at once, then a
 * timer polls wait (every 100 ms until ready, every second after) and sends STATUS= when
 * its text changes and READY=1 (with STATUS=ready_status, copied) the first time it
 * returns NULL; with the watchdog enabled a second timer sends WATCHDOG=1. Both timers
 * are unreferenced: they never keep uv_run from returning. Returns NULL when there is
 * nothing to tell ($NOTIFY_SOCKET unset) or memory ran out -- batchd runs the same either
 * way. Free with bd_svc_notify_close(). */
struct bd_svc_notify *bd_svc_notify_start(uv_loop_t *loop, bd_svc_notify_wait_fn wait,
                                          void *arg, const char *ready_status);

/* Send STOPPING=1 (shutdown has begun). Needs no bd_svc_notify: callable from the
 * shutdown path whether or not reporting started; a no-op without $NOTIFY_SOCKET. */
void bd_svc_notify_stopping(void);

/* Stop the timers; the memory is freed in their close callbacks, so run the loop once
 * more before uv_loop_close(). NULL is accepted. Never calls wait again. */
void bd_svc_notify_close(struct bd_svc_notify *n);

#endif
