/* bench_upload.c -- one big streamed submit: a bulk_insert job of about --bytes bytes,
 * generated on the fly and sent with Transfer-Encoding: chunked, while batchd's memory is
 * watched.
 *
 * The body is never held whole, neither in memory nor on disk: items are generated into
 * one chunk buffer (~256 KiB) at a time as the socket can take them, so the client stays
 * a few hundred KiB whatever the size. Two forms: JSON Lines (--form ndjson: the job's
 * fields in the query string, one item object per line, application/x-ndjson) and the
 * JSON document (--form json: {"operation","collection","options"} first, then "data").
 * Vectors come from bench_common.h's generator (job --job, items 0, 1, ...).
 *
 * With --rss-pid it resets that process's peak RSS (clear_refs 5) just before the first
 * byte, samples its VmRSS every 20 ms while sending, and reads VmHWM the moment the answer
 * arrives: the peak of accepting this one request. An answer that comes before the body
 * is sent (413, 400) ends the upload at once. Single thread, one nonblocking socket and
 * poll(2). Always bounded: --timeout (default 600 s). Prints one JSON object on stdout.
 * Bench code only.  SPDX-License-Identifier: MIT
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE                    /* strcasestr */
#endif
#include "bench_common.h"
#include "bench_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK_TARGET (256u << 10)      /* generate about this much per chunk */
#define SAMPLE_MS 20

struct up {
    const char *form, *collection, *label;
    unsigned long long target;         /* body bytes wanted (at least) */
    unsigned dim, batch_size, job;
    uint32_t seed;
    int rss_pid;
    double timeout_s;

    struct bb_rng rng;
    unsigned long long items;          /* items generated */
    unsigned long long body_bytes;     /* body bytes generated (excluding chunk framing) */
    bool is_body_done;                 /* the last item and the closing bytes are out */
    bool is_last_chunk_queued;         /* the 0-length chunk is in out */

    struct bb_buf chunk;               /* one chunk's body, reused */
    struct bb_buf out;                 /* framed bytes waiting for the socket */
    size_t out_off;
    unsigned long long written;        /* bytes written to the socket, request head included */

    struct bb_buf resp;                /* the answer, as it arrives */
    int status;
    long rss_start_kb, rss_max_kb, hwm_kb;
};

static void up_sample(struct up *u)
{
    long rss = bb_proc_status_kb(u->rss_pid, "VmRSS");
    if (rss > u->rss_max_kb)
        u->rss_max_kb = rss;
}

/* ---- the body --------------------------------------------------------------------------- */

static void put_item(struct up *u, struct bb_buf *b)
{
    bool is_ndjson = strcmp(u->form, "ndjson") == 0;

    if (!is_ndjson && u->items > 0)
        bb_put(b, ",", 1);
    bb_puts(b, "{\"id\":\"");
    bb_put_item_id(b, u->job, (unsigned)u->items);
    bb_puts(b, "\",\"embedding\":[");
    for (unsigned k = 0; k < u->dim; k++) {
        if (k)
            bb_put(b, ",", 1);
        bb_put_component(b, bb_rng_component(&u->rng));
    }
    bb_puts(b, is_ndjson ? "]}\n" : "]}");
    u->items++;
}

/* Appends the next chunk (its size line, about CHUNK_TARGET bytes of body, CRLF) to
 * u->out, or the last (empty) chunk once the body is done. */
static void up_next_chunk(struct up *u)
{
    struct bb_buf *body = &u->chunk;
    char head[32];

    if (u->is_body_done) {
        bb_puts(&u->out, "0\r\n\r\n");
        u->is_last_chunk_queued = true;
        return;
    }
    body->len = 0;
    if (u->body_bytes == 0 && strcmp(u->form, "json") == 0)
        bb_printf(body, "{\"operation\":\"bulk_insert\",\"collection\":\"%s\","
                         "\"options\":{\"batch_size\":%u},\"data\":[",
                  u->collection, u->batch_size);
    while (body->len < CHUNK_TARGET && u->body_bytes + body->len < u->target)
        put_item(u, body);
    if (u->body_bytes + body->len >= u->target) {
        if (strcmp(u->form, "json") == 0)
            bb_puts(body, "]}");
        u->is_body_done = true;
    }
    u->body_bytes += body->len;
    int n = snprintf(head, sizeof(head), "%zx\r\n", body->len);
    bb_put(&u->out, head, (size_t)n);
    bb_put(&u->out, body->p, body->len);
    bb_put(&u->out, "\r\n", 2);
}

/* ---- the answer ------------------------------------------------------------------------- */

/* True once a whole response is in u->resp (Content-Length framed, or the peer closed). */
static bool resp_is_complete(struct up *u, bool is_eof)
{
    char *end = u->resp.p ? strstr(u->resp.p, "\r\n\r\n") : NULL;
    if (end == NULL)
        return is_eof;
    if (u->status == 0 && sscanf(u->resp.p, "HTTP/1.%*d %d", &u->status) != 1)
        u->status = -1;
    const char *cl = strcasestr(u->resp.p, "\r\ncontent-length:");
    if (cl == NULL || cl > end)
        return is_eof;
    size_t want = strtoull(cl + 17, NULL, 10);
    return is_eof || u->resp.len - (size_t)(end + 4 - u->resp.p) >= want;
}

static const char *resp_body(const struct up *u)
{
    char *end = u->resp.p ? strstr(u->resp.p, "\r\n\r\n") : NULL;
    return end ? end + 4 : "";
}

/* ---- main ------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_upload --base http://127.0.0.1:PORT --form ndjson|json --bytes N\n"
            "   [--dim D] [--batch-size B] [--collection NAME] [--job J] [--seed S]\n"
            "   [--rss-pid PID] [--timeout S] [--label L]\n");
}

static void print_json_string(const char *s, size_t max)
{
    putchar('"');
    for (size_t i = 0; s[i] && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    struct up u;
    const char *base = NULL;
    static const struct option opts[] = {
        { "base", required_argument, NULL, 'b' }, { "form", required_argument, NULL, 'f' },
        { "bytes", required_argument, NULL, 'n' }, { "dim", required_argument, NULL, 'D' },
        { "batch-size", required_argument, NULL, 'B' },
        { "collection", required_argument, NULL, 'C' }, { "job", required_argument, NULL, 'j' },
        { "seed", required_argument, NULL, 's' }, { "rss-pid", required_argument, NULL, 'r' },
        { "timeout", required_argument, NULL, 't' }, { "label", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' }, { 0, 0, 0, 0 },
    };
    int ch;

    memset(&u, 0, sizeof(u));
    u.form = "ndjson";
    u.collection = "bench";
    u.label = "upload";
    u.target = 1u << 20;
    u.dim = 768;
    u.batch_size = 500;
    u.seed = 42;
    u.timeout_s = 600;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'b': base = optarg; break;
        case 'f': u.form = optarg; break;
        case 'n': u.target = (unsigned long long)bb_arg_num("--bytes", optarg, 1, 1e13); break;
        case 'D': u.dim = (unsigned)bb_arg_num("--dim", optarg, 1, 65536); break;
        case 'B': u.batch_size = (unsigned)bb_arg_num("--batch-size", optarg, 1, 1e6); break;
        case 'C': u.collection = optarg; break;
        case 'j': u.job = (unsigned)bb_arg_num("--job", optarg, 0, 1e8); break;
        case 's': u.seed = (uint32_t)bb_arg_num("--seed", optarg, 0, 4294967295.0); break;
        case 'r': u.rss_pid = (int)bb_arg_num("--rss-pid", optarg, 1, 1e9); break;
        case 't': u.timeout_s = bb_arg_num("--timeout", optarg, 1, 7200); break;
        case 'l': u.label = optarg; break;
        default: usage(); return ch == 'h' ? 0 : 2;
        }
    }
    if (base == NULL || (strcmp(u.form, "ndjson") != 0 && strcmp(u.form, "json") != 0)) {
        usage();
        return 2;
    }
    char host[64];
    int port;
    struct sockaddr_in addr;
    bb_parse_base(base, host, sizeof(host), &port);
    if (bh_addr(host, port, &addr) < 0) {
        fprintf(stderr, "bench_upload: bad address %s\n", base);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    bb_rng_seed_job(&u.rng, u.seed, u.job);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("bench_upload: connect");
        return 1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);

    if (strcmp(u.form, "ndjson") == 0)
        bb_printf(&u.out, "POST /api/v1/batch/jobs?operation=bulk_insert&collection=%s"
                          "&batch_size=%u HTTP/1.1\r\nHost: %s:%d\r\n"
                          "Content-Type: application/x-ndjson\r\n", u.collection, u.batch_size,
                  host, port);
    else
        bb_printf(&u.out, "POST /api/v1/batch/jobs HTTP/1.1\r\nHost: %s:%d\r\n"
                          "Content-Type: application/json\r\n", host, port);
    bb_puts(&u.out, "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");

    if (u.rss_pid > 0) {
        bb_proc_reset_hwm(u.rss_pid);
        u.rss_start_kb = bb_proc_status_kb(u.rss_pid, "VmRSS");
        u.rss_max_kb = u.rss_start_kb;
    }
    uint64_t t0 = bb_now_ns(), t_sent = 0, t_answer = 0, next_sample = t0;
    uint64_t deadline = t0 + (uint64_t)(u.timeout_s * 1e9);
    bool is_sending = true, is_done = false, is_timed_out = false, is_all_sent = false;
    const char *error = NULL;
    size_t head_len = u.out.len;

    while (!is_done) {
        uint64_t now = bb_now_ns();
        if (now >= deadline) {
            is_timed_out = true;
            error = "timed out";
            break;
        }
        if (u.rss_pid > 0 && now >= next_sample) {
            up_sample(&u);
            next_sample = now + SAMPLE_MS * 1000000ull;
        }
        struct pollfd p = { .fd = fd, .events = POLLIN | (is_sending ? POLLOUT : 0) };
        if (poll(&p, 1, SAMPLE_MS) < 0 && errno != EINTR) {
            error = "poll failed";
            break;
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            bb_reserve(&u.resp, 65536);
            ssize_t n = read(fd, u.resp.p + u.resp.len, u.resp.cap - u.resp.len - 1);
            if (n > 0) {
                u.resp.len += (size_t)n;
                u.resp.p[u.resp.len] = '\0';
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                n = 0;                     /* a reset: whatever arrived is the answer */
            }
            if (n >= 0 && resp_is_complete(&u, n == 0)) {
                t_answer = bb_now_ns();
                if (u.rss_pid > 0) {
                    u.hwm_kb = bb_proc_status_kb(u.rss_pid, "VmHWM");
                    up_sample(&u);
                }
                is_done = true;
                if (n == 0 && u.resp.len == 0)
                    error = "the connection closed without an answer";
                break;
            }
            if (n > 0)
                is_sending = false;        /* answered early: the body is not wanted */
        }
        if (is_sending && (p.revents & POLLOUT)) {
            if (u.out_off == u.out.len) {
                u.out.len = 0;
                u.out_off = 0;
                up_next_chunk(&u);
            }
            ssize_t n = write(fd, u.out.p + u.out_off, u.out.len - u.out_off);
            if (n > 0) {
                u.out_off += (size_t)n;
                u.written += (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                is_sending = false;        /* the server closed: read what it said */
            }
            if (u.is_last_chunk_queued && u.out_off == u.out.len) {
                is_sending = false;
                is_all_sent = true;
                t_sent = bb_now_ns();
            }
        }
    }
    close(fd);
    if (t_answer == 0)
        t_answer = bb_now_ns();
    if (t_sent == 0)
        t_sent = t_answer;

    /* The job id, when there is one (the answer is small: no JSON parser needed). */
    char job_id[128] = "";
    const char *jb = resp_body(&u);
    const char *idp = strstr(jb, "\"job_id\"");
    if (idp && (idp = strchr(idp + 8, '"')) != NULL) {
        const char *e = strchr(idp + 1, '"');
        if (e && (size_t)(e - idp - 1) < sizeof(job_id)) {
            memcpy(job_id, idp + 1, (size_t)(e - idp - 1));
            job_id[e - idp - 1] = '\0';
        }
    }
    double total = (double)(t_answer - t0) / 1e9;
    double send = (double)(t_sent - t0) / 1e9;
    /* Framed bytes after the request head: the body plus the chunks' size lines. */
    unsigned long long sent = u.written > head_len ? u.written - head_len : 0;
    printf("{\"label\":\"%s\",\"form\":\"%s\",\"target_bytes\":%llu,\"body_bytes\":%llu,"
           "\"sent_bytes\":%llu,\"items\":%llu,\"dim\":%u,\"batch_size\":%u,\"status\":%d,"
           "\"job_id\":\"%s\",\"is_all_sent\":%s,\"send_s\":%.3f,\"total_s\":%.3f,"
           "\"upload_mb_s\":%.1f,\"rss_start_kb\":%ld,\"hwm_submit_kb\":%ld,"
           "\"rss_max_sampled_kb\":%ld,\"timed_out\":%s,\"answer\":",
           u.label, u.form, u.target, u.body_bytes, sent, u.items, u.dim, u.batch_size,
           u.status, job_id, is_all_sent ? "true" : "false", send, total,
           total > 0 ? (double)(is_all_sent ? u.body_bytes : sent) / 1e6 / total : 0.0,
           u.rss_start_kb, u.hwm_kb, u.rss_max_kb, is_timed_out ? "true" : "false");
    print_json_string(jb, 300);
    printf(",\"error\":");
    print_json_string(error ? error : "", 100);
    printf("}\n");
    bb_free(&u.chunk);
    bb_free(&u.out);
    bb_free(&u.resp);
    return is_timed_out || u.status <= 0 ? 1 : 0;
}
