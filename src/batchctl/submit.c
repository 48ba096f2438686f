/* submit.c -- submit: a job file streamed to POST /jobs as it is read (never held whole),
 * compressed on the fly with zlib when asked, with a progress bar of the file read; then,
 * with --wait, the job followed to its end.
 *
 * Owns the open file, the deflate stream and one input buffer for the command's length.
 * Blocking CLI code.  SPDX-License-Identifier: MIT
 */
#include "commands.h"
#include "follow.h"

#include "bctl.h"
#include "progress.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define UPLOAD_CHUNK (64 * 1024)

struct upload {
    FILE *f;
    const char *name;
    bool is_deflate;                  /* --gzip on a file that is not gzip already */
    bool is_eof;
    bool is_z_done;
    bool is_z_init;
    z_stream z;
    long long size;                   /* the file's size, -1 unknown (a pipe) */
    long long read;                   /* bytes of the file read so far */
    long long sent;                   /* bytes handed to curl */
    int read_errno;
    struct bctl_progress bar;
    unsigned char in[UPLOAD_CHUNK];
};

/* Read the next piece of the file; false when none is left or reading failed. */
static size_t upload_fread(struct upload *u, void *buf, size_t cap)
{
    size_t n = fread(buf, 1, cap, u->f);

    if (n == 0 && ferror(u->f))
        u->read_errno = errno ? errno : EIO;
    else if (n == 0)
        u->is_eof = true;
    u->read += (long long)n;
    return n;
}

/* curl's read callback: the file's next bytes, deflated into gzip when asked. 0 = the end. */
static size_t upload_on_read(char *buf, size_t size, size_t nitems, void *arg)
{
    struct upload *u = arg;
    size_t cap = size * nitems;

    if (!u->is_deflate) {
        size_t n = upload_fread(u, buf, cap);
        if (u->read_errno != 0)
            return CURL_READFUNC_ABORT;
        u->sent += (long long)n;
        return n;
    }
    if (u->is_z_done)
        return 0;
    u->z.next_out = (unsigned char *)buf;
    u->z.avail_out = (uInt)cap;
    /* Deflate until curl's buffer is full or the stream has ended: a return of 0 would end
     * the upload, so one that has consumed input without output yet reads on. */
    while (u->z.avail_out > 0) {
        if (u->z.avail_in == 0 && !u->is_eof) {
            size_t n = upload_fread(u, u->in, sizeof(u->in));
            if (u->read_errno != 0)
                return CURL_READFUNC_ABORT;
            u->z.next_in = u->in;
            u->z.avail_in = (uInt)n;
        }
        int zr = deflate(&u->z, u->is_eof ? Z_FINISH : Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            u->is_z_done = true;
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            u->read_errno = ENOMEM;
            return CURL_READFUNC_ABORT;
        }
    }
    u->sent += (long long)(cap - u->z.avail_out);
    return cap - u->z.avail_out;
}

static int upload_on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow,
                              curl_off_t ultotal, curl_off_t ulnow)
{
    struct upload *u = arg;
    char text[160], a[32], b[32], rate[32];
    double elapsed = bctl_progress_elapsed(&u->bar);
    bool is_read = u->is_eof || (u->size >= 0 && u->read >= u->size);

    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    if (!u->bar.is_enabled)
        return 0;
    bctl_progress_fmt_bytes(a, sizeof(a), (double)u->read);
    bctl_progress_fmt_bytes(rate, sizeof(rate), elapsed > 0 ? (double)u->read / elapsed : 0);
    if (u->size >= 0)
        snprintf(text, sizeof(text), "%s / %s, %s/s%s", a, bctl_progress_fmt_bytes(b, sizeof(b),
                 (double)u->size), rate, is_read ? ", waiting for the server" : "");
    else
        snprintf(text, sizeof(text), "%s, %s/s%s", a, rate,
                 is_read ? ", waiting for the server" : "");
    if (u->is_deflate) {
        size_t n = strlen(text);
        snprintf(text + n, sizeof(text) - n, " (%s sent)",
                 bctl_progress_fmt_bytes(b, sizeof(b), (double)u->sent));
    }
    bctl_progress_draw(&u->bar, u->size > 0 ? (double)u->read / (double)u->size : -1, text,
                       false);
    return 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

/* Print the 202 (or the 200 of an idempotent replay) as the user asked. */
static void submit_print(const struct bctl_args *a, const struct bctl_http_resp *resp, json_t *doc)
{
    const char *id = json_string_value(json_object_get(doc, "job_id"));
    json_t *pos = json_object_get(doc, "queue_position");

    if (a->is_json) {
        bctl_cmd_print_body(resp);
    } else if (a->is_quiet) {
        printf("%s\n", id);           /* the one thing a script needs */
    } else if (json_is_true(json_object_get(doc, "idempotent_replay"))) {
        printf("%s already submitted with this idempotency key (%s)\n", id,
               json_string_value(json_object_get(doc, "status")));
    } else {
        printf("%s queued: %lld items, batch size %lld, priority %s", id,
               (long long)json_integer_value(json_object_get(doc, "items_count")),
               (long long)json_integer_value(json_object_get(doc, "batch_size")),
               json_string_value(json_object_get(doc, "priority")));
        if (json_is_integer(pos))
            printf(", queue position %lld", (long long)json_integer_value(pos));
        putchar('\n');
    }
    fflush(stdout);
}

int bctl_cmd_submit(struct bctl_ctx *c)
{
    const struct bctl_args *a = c->args;
    bool is_stdin = strcmp(a->file, "-") == 0;
    bool is_gz_file = has_suffix(a->file, ".gz");
    struct upload *u = calloc(1, sizeof(*u));
    char batch[24], idem[300];
    const char *headers[4];
    size_t nh = 0;
    struct bctl_http_resp resp;
    struct stat sb;
    char *url = NULL;
    int rc = BCTL_EXIT_OK;

    if (u == NULL)
        return BCTL_EXIT_LOCAL;
    u->name = a->file;
    u->size = -1;
    u->f = is_stdin ? stdin : fopen(a->file, "rb");
    if (u->f == NULL) {
        fprintf(stderr, "batchctl: %s: %s\n", a->file, strerror(errno));
        free(u);
        return BCTL_EXIT_LOCAL;
    }
    if (fstat(fileno(u->f), &sb) == 0 && S_ISREG(sb.st_mode))
        u->size = (long long)sb.st_size;
    u->is_deflate = a->is_gzip && !is_gz_file;
    if (u->is_deflate) {
        /* windowBits 15 + 16: a gzip member, as Content-Encoding: gzip means. */
        if (deflateInit2(&u->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            rc = BCTL_EXIT_LOCAL;
            goto done;
        }
        u->is_z_init = true;
    }

    snprintf(batch, sizeof(batch), "%ld", a->batch_size);
    {
        bool is_lines = a->format == BCTL_FORMAT_JSONL;
        const char *query[] = {"operation",  is_lines ? a->operation : NULL,
                               "model",      is_lines ? a->model : NULL,
                               "collection", is_lines ? a->collection : NULL,
                               "batch_size", is_lines && a->batch_size ? batch : NULL,
                               "priority",   is_lines ? a->priority : NULL,
                               "max_retries", is_lines ? a->max_retries_s : NULL,
                               "timeout_s",  is_lines ? a->job_timeout : NULL,
                               NULL};
        url = bctl_http_url(&c->http, "/jobs", query);
    }
    if (url == NULL) {
        fprintf(stderr, "batchctl: submit: cannot build a URL from '%s'\n", a->url);
        rc = BCTL_EXIT_USAGE;
        goto done;
    }
    headers[nh++] = "Accept: application/json";
    if (a->is_gzip || is_gz_file)
        headers[nh++] = "Content-Encoding: gzip";
    if (a->idempotency_key != NULL) {
        snprintf(idem, sizeof(idem), "Idempotency-Key: %s", a->idempotency_key);
        headers[nh++] = idem;
    }
    headers[nh] = NULL;

    bctl_progress_init(&u->bar, !a->is_quiet && !a->is_json);
    struct bctl_xfer x = {
        .method = "POST",
        .url = url,
        .content_type = a->format == BCTL_FORMAT_JSONL ? "application/x-ndjson"
                                                       : "application/json",
        .headers = headers,
        .read = upload_on_read,
        .read_arg = u,
        /* A plain file goes with its length (batchd can refuse a too large body before
         * reading it); a pipe or a body deflated on the fly goes chunked. */
        .upload_size = u->is_deflate ? -1 : u->size,
        .is_stream = true,
        .progress = upload_on_progress,
        .progress_arg = u,
    };
    int sent = bctl_http_perform(&c->http, &x, &resp);
    bctl_progress_end(&u->bar);
    if (u->read_errno != 0) {
        fprintf(stderr, "batchctl: %s: %s\n", a->file, strerror(u->read_errno));
        rc = BCTL_EXIT_LOCAL;
    } else if (sent < 0 || resp.status < 200 || resp.status >= 300) {
        rc = bctl_http_fail(&c->http, "submit", sent, &resp);
    } else {
        json_t *doc = json_loadb(resp.body.data ? resp.body.data : "", resp.body.len, 0, NULL);
        const char *id = json_string_value(json_object_get(doc, "job_id"));
        if (id == NULL) {
            fprintf(stderr, "batchctl: submit: HTTP %ld without a job_id: %.200s\n",
                    resp.status, resp.body.len ? resp.body.data : "");
            rc = BCTL_EXIT_SERVER;
        } else {
            submit_print(a, &resp, doc);
            if (a->is_wait)
                rc = bctl_cmd_follow_job(c, id);
        }
        json_decref(doc);
    }
    bctl_http_resp_free(&resp);
done:
    curl_free(url);
    if (u->is_z_init)
        deflateEnd(&u->z);
    if (!is_stdin)
        fclose(u->f);
    free(u);
    return rc;
}
