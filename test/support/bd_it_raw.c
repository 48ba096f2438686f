/* bd_it_raw.c -- a raw HTTP client on one blocking socket, for streams and timing tests.
 *
 * Test code only. Sends one request and appends whatever arrives to a buffer; the test looks
 * for the bytes it expects (headers, chunks, SSE events) with bd_it_raw_wait.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bd_it.h"

void bd_it_raw_open(struct bd_it_raw *c, int port, const char *method, const char *path,
                    const char *extra_headers, int rcvbuf)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    char req[2048];
    int n;

    memset(c, 0, sizeof(*c));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        fail_msg("socket failed");
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        fail_msg("connect to port %d failed", port);
    n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", method, path,
                 extra_headers ? extra_headers : "");
    assert_true(n > 0 && (size_t)n < sizeof(req));
    if (send(c->fd, req, (size_t)n, 0) != n)
        fail_msg("send of %s %s failed", method, path);
}

void bd_it_raw_send(struct bd_it_raw *c, const char *data)
{
    size_t n = strlen(data);

    if (send(c->fd, data, n, MSG_NOSIGNAL) != (ssize_t)n)
        fail_msg("send of %zu bytes failed", n);
}

int bd_it_raw_read(struct bd_it_raw *c, int timeout_ms, size_t max)
{
    struct pollfd p = { .fd = c->fd, .events = POLLIN };
    ssize_t n;

    if (c->is_eof)
        return 1;
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    if (c->cap - c->len < 65537) {
        c->cap = c->cap ? c->cap * 2 : 1 << 20;
        c->buf = realloc(c->buf, c->cap);
        assert_non_null(c->buf);
    }
    if (max == 0 || max > c->cap - c->len - 1)
        max = c->cap - c->len - 1;
    n = recv(c->fd, c->buf + c->len, max, 0);
    if (n <= 0) {
        c->is_eof = true;
        return 1;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return 0;
}

long bd_it_raw_wait(struct bd_it_raw *c, const char *needle, size_t from, double timeout_s)
{
    double deadline = bd_it_now() + timeout_s;

    for (;;) {
        if (c->buf != NULL && from <= c->len) {
            const char *hit = strstr(c->buf + from, needle);
            if (hit)
                return (long)(hit - c->buf);
        }
        if (bd_it_now() > deadline || c->is_eof)
            return -1;
        bd_it_raw_read(c, 50, 0);
    }
}

size_t bd_it_raw_unread(const struct bd_it_raw *c)
{
    int n = 0;

    if (ioctl(c->fd, FIONREAD, &n) != 0 || n < 0)
        return 0;
    return (size_t)n;
}

void bd_it_raw_close(struct bd_it_raw *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

size_t bd_it_count(const char *hay, const char *needle)
{
    size_t n = 0, len = strlen(needle);
    for (const char *p = hay; p && (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}
