/* bd_it_raw.c -- a raw HTTP client on one blocking socket, for streams and timing tests.
 *
 * Test code only. Sends one request and appends whatever arrives to a buffer; the test looks
 * for the bytes it expects (headers, chunks, SSE events) with bd_it_raw_wait, or takes whole
 * responses off the front of the buffer with bd_it_raw_response (pipelining, framing).
 */
#define _GNU_SOURCE                    /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bd_it.h"

static void raw_connect(struct bd_it_raw *c, int port, int rcvbuf, bool is_nodelay)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int one = 1;

    memset(c, 0, sizeof(*c));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        fail_msg("socket failed");
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (is_nodelay)
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        fail_msg("connect to port %d failed", port);
}

void bd_it_raw_connect(struct bd_it_raw *c, int port)
{
    raw_connect(c, port, 0, true);
}

void bd_it_raw_open(struct bd_it_raw *c, int port, const char *method, const char *path,
                    const char *extra_headers, int rcvbuf)
{
    char req[2048];
    int n;

    raw_connect(c, port, rcvbuf, false);
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

void bd_it_raw_send_n(struct bd_it_raw *c, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail_msg("send failed with %zu bytes left", len);
        p += n;
        len -= (size_t)n;
    }
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

/* Remove the first n bytes of c->buf. */
static void raw_consume(struct bd_it_raw *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}

/* Read more into c->buf, waiting at most timeout_ms: true when bytes arrived. */
static bool raw_more(struct bd_it_raw *c, int timeout_ms)
{
    size_t before = c->len;

    return bd_it_raw_read(c, timeout_ms, 0) == 0 && c->len > before;
}

/* The chunked body that starts at c->buf + start: 1 when it is complete, with its bytes in
 * out->body (NUL-terminated) and out->len and the offset just past it in *end; 0 when more
 * bytes are needed. Chunk extensions are ignored; trailers are not expected. */
static int raw_dechunk(const struct bd_it_raw *c, size_t start, struct bd_it_resp *out,
                       size_t *end)
{
    size_t off = start, body_len = 0;

    for (;;) {                         /* first pass: is the last chunk here yet? */
        const char *line_end = memmem(c->buf + off, c->len - off, "\r\n", 2);
        size_t size, data;

        if (line_end == NULL)
            return 0;
        size = strtoul(c->buf + off, NULL, 16);
        data = (size_t)(line_end + 2 - c->buf);
        if (data + size + 2 > c->len)
            return 0;
        off = data + size + 2;
        if (size == 0)
            break;
        body_len += size;
    }
    *end = off;
    out->body = malloc(body_len + 1);
    assert_non_null(out->body);
    out->len = 0;
    for (off = start; out->len < body_len;) {  /* second pass: copy the chunks' data */
        const char *line_end = memmem(c->buf + off, c->len - off, "\r\n", 2);
        size_t size = strtoul(c->buf + off, NULL, 16);

        memcpy(out->body + out->len, line_end + 2, size);
        out->len += size;
        off = (size_t)(line_end + 2 - c->buf) + size + 2;
    }
    out->body[out->len] = '\0';
    return 1;
}

int bd_it_raw_response(struct bd_it_raw *c, struct bd_it_resp *out, bool is_head,
                       int timeout_ms)
{
    double t0 = bd_it_now();
    const char *end;
    char value[64];
    size_t head_len;

    memset(out, 0, sizeof(*out));
    while (c->buf == NULL || (end = memmem(c->buf, c->len, "\r\n\r\n", 4)) == NULL) {
        if (!raw_more(c, timeout_ms))
            return -1;
    }
    head_len = (size_t)(end - c->buf) + 4;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0 || c->buf[8] != ' ')
        fail_msg("not an HTTP/1.x status line: %.40s", c->buf);
    out->headers = strndup(c->buf, head_len);
    assert_non_null(out->headers);
    out->status = strtol(c->buf + 9, NULL, 10);

    if (is_head || out->status < 200 || out->status == 204 || out->status == 304) {
        raw_consume(c, head_len);
        out->body = strdup("");
    } else if (bd_it_resp_header(out, "Content-Length", value, sizeof(value)) != NULL) {
        size_t len = strtoul(value, NULL, 10);

        while (c->len < head_len + len) {
            if (!raw_more(c, timeout_ms))
                goto fail;
        }
        out->body = malloc(len + 1);
        assert_non_null(out->body);
        memcpy(out->body, c->buf + head_len, len);
        out->body[len] = '\0';
        out->len = len;
        raw_consume(c, head_len + len);
    } else if (bd_it_resp_header(out, "Transfer-Encoding", value, sizeof(value)) != NULL) {
        size_t body_end = 0;

        while (!raw_dechunk(c, head_len, out, &body_end)) {
            if (!raw_more(c, timeout_ms))
                goto fail;
        }
        raw_consume(c, body_end);
    } else {                                        /* delimited by the end of the connection */
        while (raw_more(c, timeout_ms))
            ;
        out->len = c->len - head_len;
        out->body = malloc(out->len + 1);
        assert_non_null(out->body);
        memcpy(out->body, c->buf + head_len, out->len);
        out->body[out->len] = '\0';
        raw_consume(c, c->len);
    }
    out->seconds = bd_it_now() - t0;
    return 0;

fail:
    bd_it_resp_free(out);
    return -1;
}

bool bd_it_raw_sees_close(struct bd_it_raw *c, int timeout_ms)
{
    double deadline = bd_it_now() + timeout_ms / 1000.0;

    for (;;) {
        int left = (int)((deadline - bd_it_now()) * 1000);

        if (c->is_eof)
            return true;
        if (left <= 0 || bd_it_raw_read(c, left, 0) < 0)
            return false;
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
