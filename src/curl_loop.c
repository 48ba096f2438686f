/* curl_loop.c -- libcurl multi on the libuv loop: the socket and timer callbacks.
 *
 * Owns the CURLM, one uv_poll per socket curl asks to watch (freed in its close callback)
 * and one uv_timer. Loop thread only; never blocks (curl resolves names asynchronously).
 * Finished transfers are reported to the owner from the uv callbacks, once curl's socket
 * action has returned. Knows nothing of what the transfers are for.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/curl_loop.h"
#include "batchd/error.h"

#include <stdbool.h>
#include <stdlib.h>

struct curl_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct bd_curl_loop *cl;
    struct curl_sock *prev, *next; /* cl->socks */
};

struct bd_curl_loop {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct curl_sock *socks;
    bd_curl_done_cb on_done;
    void *arg;
    unsigned pending_closes;
    bool is_closing;
    bd_curl_closed_cb closed_cb;
    void *closed_arg;
};

static void curl_loop_check_info(struct bd_curl_loop *cl)
{
    CURLMsg *msg;
    int left;

    while (!cl->is_closing && (msg = curl_multi_info_read(cl->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        /* msg dies at the next curl call: copy what the owner needs first. */
        CURL *easy = msg->easy_handle;
        CURLcode result = msg->data.result;
        cl->on_done(easy, result, cl->arg);
    }
}

static void curl_loop_on_closed(struct bd_curl_loop *cl)
{
    if (--cl->pending_closes > 0 || !cl->is_closing)
        return; /* a socket closed while in use: not the end */
    bd_curl_closed_cb cb = cl->closed_cb;
    void *arg = cl->closed_arg;
    free(cl);
    if (cb != NULL)
        cb(arg);
}

static void sock_on_close(uv_handle_t *h)
{
    struct curl_sock *s = h->data;
    struct bd_curl_loop *cl = s->cl;

    free(s);
    curl_loop_on_closed(cl);
}

static void sock_close(struct bd_curl_loop *cl, struct curl_sock *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        cl->socks = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    cl->pending_closes++;
    uv_close((uv_handle_t *)&s->poll, sock_on_close);
}

static void sock_on_poll(uv_poll_t *h, int status, int events)
{
    struct curl_sock *s = h->data;
    struct bd_curl_loop *cl = s->cl;
    int flags = 0;
    int running;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    /* s may be closed during the action (CURL_POLL_REMOVE); only cl is used after. */
    curl_multi_socket_action(cl->multi, s->fd, flags, &running);
    curl_loop_check_info(cl);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching fd. Must not call back into
 * curl beyond curl_multi_assign. */
static int curl_loop_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct bd_curl_loop *cl = userp;
    struct curl_sock *s = socketp;
    int events = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL)
            sock_close(cl, s); /* curl drops its entry (and socketp) itself */
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return -1;
        if (uv_poll_init_socket(cl->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->cl = cl;
        s->poll.data = s;
        s->next = cl->socks;
        if (cl->socks != NULL)
            cl->socks->prev = s;
        cl->socks = s;
        curl_multi_assign(cl->multi, fd, s);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, sock_on_poll);
    return 0;
}

static void curl_loop_on_timeout(uv_timer_t *t)
{
    struct bd_curl_loop *cl = t->data;
    int running;

    curl_multi_socket_action(cl->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    curl_loop_check_info(cl);
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer; 0 means "as soon as possible", which must
 * still be a later loop turn (curl may not be re-entered from here). */
static int curl_loop_on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct bd_curl_loop *cl = userp;

    (void)multi;
    if (cl->is_closing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&cl->timer);
    else
        uv_timer_start(&cl->timer, curl_loop_on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

struct bd_curl_loop *bd_curl_loop_new(uv_loop_t *loop, bd_curl_done_cb on_done, void *arg, int *err)
{
    struct bd_curl_loop *cl = calloc(1, sizeof(*cl));

    if (cl == NULL || (cl->multi = curl_multi_init()) == NULL) {
        free(cl);
        if (err != NULL)
            *err = BD_ENOMEM;
        return NULL;
    }
    cl->loop = loop;
    cl->on_done = on_done;
    cl->arg = arg;
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETFUNCTION, curl_loop_on_socket);
    curl_multi_setopt(cl->multi, CURLMOPT_SOCKETDATA, cl);
    curl_multi_setopt(cl->multi, CURLMOPT_TIMERFUNCTION, curl_loop_on_timer);
    curl_multi_setopt(cl->multi, CURLMOPT_TIMERDATA, cl);
    uv_timer_init(loop, &cl->timer);
    cl->timer.data = cl;
    return cl;
}

CURLM *bd_curl_loop_get_multi(struct bd_curl_loop *cl)
{
    return cl->multi;
}

static void curl_loop_on_timer_close(uv_handle_t *h)
{
    curl_loop_on_closed(h->data);
}

void bd_curl_loop_close(struct bd_curl_loop *cl, bd_curl_closed_cb cb, void *arg)
{
    cl->is_closing = true;
    cl->closed_cb = cb;
    cl->closed_arg = arg;
    cl->pending_closes++; /* held until every close below is queued */
    /* Cached keep-alive connections close here; curl may report CURL_POLL_REMOVE for them,
     * and any poll it does not report is closed just after. */
    curl_multi_cleanup(cl->multi);
    cl->multi = NULL;
    while (cl->socks != NULL)
        sock_close(cl, cl->socks);
    cl->pending_closes++;
    uv_close((uv_handle_t *)&cl->timer, curl_loop_on_timer_close);
    curl_loop_on_closed(cl); /* drop the hold; frees once all have closed */
}
