/* curl_loop.h -- libcurl multi driven by the libuv loop: one uv_poll per socket curl
 * watches and one uv_timer for curl's timeouts (curl_multi_socket_action). The one place
 * batchd glues curl to libuv; the model client and the webhook sender each own one.
 *
 * Its owner adds and removes easy handles on bd_curl_loop_get_multi() itself and hears of
 * each finished transfer through the done callback. Loop thread only; never blocks.
 */
#ifndef BATCHD_CURL_LOOP_H
#define BATCHD_CURL_LOOP_H

#include <curl/curl.h>
#include <uv.h>

struct bd_curl_loop;

/* A transfer finished with result (CURLMSG_DONE). Runs from a uv callback, after curl's
 * socket action returned, so it may call into curl (remove the handle, add others). The
 * handle is still in the multi: the owner removes it. arg is bd_curl_loop_new's. */
typedef void (*bd_curl_done_cb)(CURL *easy, CURLcode result, void *arg);

/* After bd_curl_loop_close: every handle closed and the struct freed. */
typedef void (*bd_curl_closed_cb)(void *arg);

/* Create the multi and its timer. NULL with *err (BD_ENOMEM) on failure. curl_global_init
 * must have succeeded. Allocates. */
struct bd_curl_loop *bd_curl_loop_new(uv_loop_t *loop, bd_curl_done_cb on_done, void *arg,
                                      int *err);

/* The multi, to add and remove easy handles on. Borrowed until bd_curl_loop_close. */
CURLM *bd_curl_loop_get_multi(struct bd_curl_loop *cl);

/* Clean the multi up (the owner has removed every easy handle first; cached connections
 * close here), close the timer and every socket poll, free cl, then call cb (async, may be
 * NULL). No done callback runs after this call. */
void bd_curl_loop_close(struct bd_curl_loop *cl, bd_curl_closed_cb cb, void *arg);

#endif
