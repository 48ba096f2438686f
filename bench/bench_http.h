/* bench_http.h -- a minimal HTTP/1.1 keep-alive client connection on libuv + llhttp, for
 * the load generator and the job driver.
 *
 * One request at a time per connection (no pipelining), so a connection is either idle or
 * busy. Bench code only. Loop thread only.  SPDX-License-Identifier: MIT
 */
#ifndef BENCH_HTTP_H
#define BENCH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <uv.h>

struct bh_conn;

/* Called exactly once per bh_conn_request, never from inside bh_conn_request. status is
 * the HTTP status code, or a negative libuv error when the connection failed or closed
 * before a whole response arrived. body is the response body when keep_body was set
 * (borrowed: valid until the callback returns), else NULL; body_len is its length either
 * way. The connection is idle again when the callback runs and may be reused at once. */
typedef void (*bh_response_cb)(struct bh_conn *c, int status, const char *body,
                               size_t body_len, void *arg);

/* Creates an unconnected connection to addr (copied). It connects on first use and again
 * after the server closed it. Never fails (allocation failure aborts the bench). */
struct bh_conn *bh_conn_new(uv_loop_t *loop, const struct sockaddr_in *addr);

/* Sends one request. method and path are copied; body (may be NULL) is borrowed until the
 * callback runs. content_type may be NULL (no Content-Type header). Returns 0, or
 * UV_EBUSY when a request is already in flight (the callback is then never called). */
int bh_conn_request(struct bh_conn *c, const char *method, const char *path,
                    const char *content_type, const void *body, size_t body_len,
                    bool keep_body, bh_response_cb cb, void *arg);

bool bh_conn_is_busy(const struct bh_conn *c);

/* Closes the connection and frees it once libuv is done with it. A request in flight gets
 * its callback with UV_ECANCELED. */
void bh_conn_free(struct bh_conn *c);

/* Resolves "127.0.0.1" and port into addr (numeric loopback only). */
int bh_addr(const char *host, int port, struct sockaddr_in *addr);

#endif
