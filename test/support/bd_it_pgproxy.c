/* bd_it_pgproxy.c -- a TCP proxy in front of PostgreSQL, on its own thread, that can lose the
 * answer to a write that commits (a COMMIT, or the one statement that creates a group of
 * submitted jobs): it reaches the server and is applied, and the connection is dropped when
 * the server answers that its transaction has ended, so batchd never hears of it (see
 * bd_it.h).
 */
#define _GNU_SOURCE
#include "bd_it.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROXY_PAIRS 64

struct proxy_pair {
    int c, s;                       /* client (batchd) and server sockets; -1 when unused */
    bool is_doomed;                 /* lose the answer that ends the transaction in flight */
};

static struct {
    int listen_fd;
    int port;
    struct sockaddr_in target;
    struct proxy_pair pairs[PROXY_PAIRS];
    char marker[128];               /* set before start, read-only after */
    atomic_int is_armed;            /* the next commit's answer is lost */
    atomic_int fired;               /* how many answers were lost */
    atomic_int is_stopping;
    bool is_started;
    pthread_t thread;
} g_px;

/* The simple-protocol message "COMMIT": 'Q', int32 length 11, "COMMIT\0". */
static const char px_commit[] = { 'Q', 0, 0, 0, 11, 'C', 'O', 'M', 'M', 'I', 'T', 0 };
/* The name of the statement that writes a group of submitted jobs (job_store_submit.c):
 * its Bind carries it on every execution. */
static const char px_submit_stmt[] = "bd_submit_jobs";
/* ReadyForQuery, idle: the server's last word on a transaction that has ended. */
static const char px_ready_idle[] = { 'Z', 0, 0, 0, 5, 'I' };

static void px_close_pair(struct proxy_pair *p)
{
    close(p->c);
    close(p->s);
    *p = (struct proxy_pair){ -1, -1, false };
}

static bool px_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        buf += n;
        len -= (size_t)n;
    }
    return true;
}

static void px_accept(void)
{
    int c = accept(g_px.listen_fd, NULL, NULL);
    int s = c >= 0 ? socket(AF_INET, SOCK_STREAM, 0) : -1;
    if (s >= 0 && connect(s, (struct sockaddr *)&g_px.target, sizeof(g_px.target)) == 0) {
        int i = 0;
        while (i < PROXY_PAIRS && g_px.pairs[i].c >= 0)
            i++;
        if (i < PROXY_PAIRS) {
            g_px.pairs[i] = (struct proxy_pair){ c, s, false };
            return;
        }
    }
    if (c >= 0)
        close(c);
    if (s >= 0)
        close(s);
}

/* A client's bytes: is the answer to the transaction they belong to to be lost? Yes when
 * they carry the marker, or when armed and they commit (a COMMIT, or the group statement,
 * which is a transaction of its own). */
static void px_inspect(struct proxy_pair *p, const char *buf, size_t len)
{
    size_t mlen = strlen(g_px.marker);
    if (mlen && memmem(buf, len, g_px.marker, mlen))
        p->is_doomed = true;
    if (p->is_doomed || (memmem(buf, len, px_commit, sizeof(px_commit)) == NULL &&
                         memmem(buf, len, px_submit_stmt, strlen(px_submit_stmt)) == NULL))
        return;
    if (atomic_exchange(&g_px.is_armed, 0))
        p->is_doomed = true;
}

static void *px_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_px.is_stopping)) {
        struct pollfd fds[1 + 2 * PROXY_PAIRS];
        int map[1 + 2 * PROXY_PAIRS];
        nfds_t n = 0;
        fds[n] = (struct pollfd){ g_px.listen_fd, POLLIN, 0 };
        map[n++] = -1;
        for (int i = 0; i < PROXY_PAIRS; i++) {
            if (g_px.pairs[i].c < 0)
                continue;
            fds[n] = (struct pollfd){ g_px.pairs[i].c, POLLIN, 0 };
            map[n++] = 2 * i;
            fds[n] = (struct pollfd){ g_px.pairs[i].s, POLLIN, 0 };
            map[n++] = 2 * i + 1;
        }
        if (poll(fds, n, 100) <= 0)
            continue;
        if (fds[0].revents & POLLIN)
            px_accept();
        for (nfds_t k = 1; k < n; k++) {
            struct proxy_pair *p = &g_px.pairs[map[k] / 2];
            bool from_client = map[k] % 2 == 0;
            char buf[65536];
            if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR)) || p->c < 0)
                continue;
            ssize_t got = recv(from_client ? p->c : p->s, buf, sizeof(buf), 0);
            if (got <= 0) {
                px_close_pair(p);
                continue;
            }
            if (!from_client && p->is_doomed &&
                memmem(buf, (size_t)got, px_ready_idle, sizeof(px_ready_idle)) != NULL) {
                /* The transaction ended (committed) and the server said so; the client
                 * never hears of it. */
                atomic_fetch_add(&g_px.fired, 1);
                px_close_pair(p);
                continue;
            }
            if (from_client)
                px_inspect(p, buf, (size_t)got);
            if (!px_write_all(from_client ? p->s : p->c, buf, (size_t)got))
                px_close_pair(p);
        }
    }
    for (int i = 0; i < PROXY_PAIRS; i++)
        if (g_px.pairs[i].c >= 0)
            px_close_pair(&g_px.pairs[i]);
    close(g_px.listen_fd);
    return NULL;
}

int bd_it_pgproxy_start(const char *pg_url, const char *marker)
{
    const char *at = strchr(pg_url, '@'), *hp = at ? at + 1 : pg_url + strlen("postgresql://");
    const char *colon = strchr(hp, ':');
    char host[64];
    struct sockaddr_in a = { 0 };
    socklen_t alen = sizeof(a);

    if (g_px.is_started || colon == NULL || (size_t)(colon - hp) >= sizeof(host))
        return -1;
    snprintf(host, sizeof(host), "%.*s", (int)(colon - hp), hp);
    snprintf(g_px.marker, sizeof(g_px.marker), "%s", marker ? marker : "");
    g_px.target.sin_family = AF_INET;
    g_px.target.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &g_px.target.sin_addr) != 1)
        return -1;
    for (int i = 0; i < PROXY_PAIRS; i++)
        g_px.pairs[i] = (struct proxy_pair){ -1, -1, false };
    g_px.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (g_px.listen_fd < 0 || bind(g_px.listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(g_px.listen_fd, 64) != 0 ||
        getsockname(g_px.listen_fd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    g_px.port = ntohs(a.sin_port);
    if (pthread_create(&g_px.thread, NULL, px_main, NULL) != 0)
        return -1;
    g_px.is_started = true;
    return g_px.port;
}

void bd_it_pgproxy_arm(void)
{
    atomic_store(&g_px.is_armed, 1);
}

void bd_it_pgproxy_disarm(void)
{
    atomic_store(&g_px.is_armed, 0);
}

int bd_it_pgproxy_fired(void)
{
    return atomic_load(&g_px.fired);
}

void bd_it_pgproxy_stop(void)
{
    if (!g_px.is_started)
        return;
    atomic_store(&g_px.is_stopping, 1);
    pthread_join(g_px.thread, NULL);
    g_px.is_started = false;
}
