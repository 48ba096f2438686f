/* file_store.c -- every statement on files and file_chunks (file_store.h): an upload's
 * transaction, a file's row, a page of files, the delete, and one chunk's content.
 *
 * Owns each upload's record (its leased connection) from open to the callback of its close
 * or abort, and each read's small call record until its callback. Loop thread only; never
 * blocks. Reaches PostgreSQL only through pg_store.h.  SPDX-License-Identifier: MIT
 */
#include "batchd/file_store.h"

#include "batchd/error.h"
#include "batchd/pg_store.h"
#include "batchd/random_id.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* The row's columns, by the names the decoder looks up. */
#define FILE_COLUMNS                                                                       \
    "id, purpose, filename, status, bytes, lines, chunks, "                                \
    "extract(epoch FROM created_at)::bigint AS created_at"

enum file_col { FC_ID, FC_PURPOSE, FC_FILENAME, FC_STATUS, FC_BYTES, FC_LINES, FC_CHUNKS,
                FC_CREATED, FC_COUNT };
static const char *const file_col_names[FC_COUNT] = {
    "id", "purpose", "filename", "status", "bytes", "lines", "chunks", "created_at",
};

int bd_file_new_id(char *out)
{
    memcpy(out, "file-", 5);
    return bd_random_hex(out + 5, (BD_FILE_ID_LEN - 5) / 2);
}

static const char *file_message(const PGresult *res)
{
    const char *m = res ? PQresultErrorMessage(res) : NULL;
    return m && *m ? m : "connection lost";
}

static int file_status(int status)
{
    return status == BD_ECANCELED ? BD_ECANCELED : status < 0 ? BD_EPG : BD_OK;
}

/* Rows of res decoded into rows[0..n) (strings point into res). BD_EINTERNAL when a
 * column is missing. */
static int file_rows(const PGresult *res, struct bd_file_row *rows, int n)
{
    int cols[FC_COUNT];

    for (int i = 0; i < FC_COUNT; i++)
        if ((cols[i] = PQfnumber(res, file_col_names[i])) < 0)
            return BD_EINTERNAL;
    for (int r = 0; r < n; r++) {
        rows[r] = (struct bd_file_row){
            .id = PQgetvalue(res, r, cols[FC_ID]),
            .purpose = PQgetvalue(res, r, cols[FC_PURPOSE]),
            .filename = PQgetvalue(res, r, cols[FC_FILENAME]),
            .status = PQgetvalue(res, r, cols[FC_STATUS]),
            .bytes = strtoll(PQgetvalue(res, r, cols[FC_BYTES]), NULL, 10),
            .lines = strtoll(PQgetvalue(res, r, cols[FC_LINES]), NULL, 10),
            .chunks = (unsigned)strtoul(PQgetvalue(res, r, cols[FC_CHUNKS]), NULL, 10),
            .created_at = strtoll(PQgetvalue(res, r, cols[FC_CREATED]), NULL, 10),
        };
    }
    return BD_OK;
}

/* ---- an upload -------------------------------------------------------------------------- */

struct bd_file_upload {
    struct bd_pg *pg;
    struct bd_pg_conn *conn;          /* leased from open's acquire to the free */
    char id[BD_FILE_ID_LEN + 1];
    unsigned chunks;
    bool is_open;                     /* BEGIN done */
    bool is_busy;                     /* an acquire or a statement is in flight */
    bool is_aborted;
    bool is_closing;
    bd_file_store_done_cb cb;
    void *arg;
};

static void upload_free(struct bd_file_upload *up)
{
    if (up->conn)
        bd_pg_release(up->conn);      /* rolls back what did not commit */
    free(up);
}

/* The operation in flight ended. An aborted upload tells its caller BD_ECANCELED and goes;
 * a closed one, or one whose pool is closing (BD_ECANCELED), goes after its callback.
 * Otherwise cb may abort the upload (then it goes at once) or go on with it. */
static void upload_done(struct bd_file_upload *up, int status, const char *message)
{
    bd_file_store_done_cb cb = up->cb;
    void *arg = up->arg;

    up->is_busy = false;
    up->cb = NULL;
    if (up->is_aborted) {
        cb(BD_ECANCELED, NULL, arg);
        upload_free(up);
        return;
    }
    if (up->is_closing || status == BD_ECANCELED) {   /* closed, or the pool is closing */
        cb(status, message, arg);
        upload_free(up);
        return;
    }
    cb(status, message, arg);
}

static void upload_on_result(int status, PGresult *res, void *arg)
{
    struct bd_file_upload *up = arg;
    int st = file_status(status);

    if (st == BD_OK && !up->is_open)
        up->is_open = true;
    upload_done(up, st, st == BD_EPG ? file_message(res) : NULL);
}

static void upload_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct bd_file_upload *up = arg;
    int rc;

    if (status < 0) {
        upload_done(up, file_status(status), "no PostgreSQL connection");
        return;
    }
    up->conn = conn;
    if (up->is_aborted) {
        upload_done(up, BD_ECANCELED, NULL);
        return;
    }
    rc = bd_pg_conn_query(conn, "BEGIN", 0, NULL, NULL, NULL, 0, upload_on_result, up);
    if (rc < 0)
        upload_done(up, file_status(rc), bd_pg_conn_get_error(conn));
}

int bd_file_upload_open(struct bd_pg *pg, const char *file_id, bd_file_store_done_cb cb,
                        void *arg, struct bd_file_upload **out)
{
    struct bd_file_upload *up = calloc(1, sizeof(*up));
    int rc;

    if (up == NULL)
        return BD_ENOMEM;
    up->pg = pg;
    snprintf(up->id, sizeof(up->id), "%s", file_id);
    up->is_busy = true;
    up->cb = cb;
    up->arg = arg;
    if ((rc = bd_pg_acquire(pg, upload_on_conn, up)) < 0) {
        free(up);
        return rc == BD_ECANCELED ? rc : BD_EPG;
    }
    *out = up;
    return BD_OK;
}

int bd_file_upload_put(struct bd_file_upload *up, const char *data, size_t len,
                       int64_t line_start, bd_file_store_done_cb cb, void *arg)
{
    static const char sql[] =
        "INSERT INTO file_chunks (file_id, seq, line_start, data) "
        "VALUES ($1, $2::int, $3::bigint, $4::bytea)";
    char seq[16], start[24];
    const char *values[4] = { up->id, seq, start, data };
    int lengths[4] = { 0, 0, 0, (int)len };
    int formats[4] = { 0, 0, 0, 1 };
    int rc;

    if (up->is_busy || !up->is_open || up->is_aborted || len == 0 || len > BD_FILE_CHUNK_BYTES)
        return BD_EINVAL;
    snprintf(seq, sizeof(seq), "%u", up->chunks);
    snprintf(start, sizeof(start), "%" PRId64, line_start);
    rc = bd_pg_conn_query(up->conn, sql, 4, values, lengths, formats, 0, upload_on_result, up);
    if (rc < 0)
        return rc == BD_ENOMEM || rc == BD_ECANCELED ? rc : BD_EPG;
    up->chunks++;
    up->is_busy = true;
    up->cb = cb;
    up->arg = arg;
    return BD_OK;
}

int bd_file_upload_close(struct bd_file_upload *up, const struct bd_file_new *f,
                         bd_file_store_done_cb cb, void *arg)
{
    static const char *const sqls[2] = {
        "INSERT INTO files (id, purpose, filename, bytes, lines, chunks, created_at) "
        "VALUES ($1, $2, $3, $4::bigint, $5::bigint, $6::int, to_timestamp($7::bigint))",
        "COMMIT",
    };
    static const int nparams[2] = { 7, 0 };
    char bytes[24], lines[24], chunks[16], created[24];
    const char *const row[7] = { up->id, f->purpose, f->filename, bytes, lines, chunks,
                                 created };
    const char *const *const params[2] = { row, NULL };
    int rc;

    if (up->is_busy || !up->is_open || up->is_aborted)
        return BD_EINVAL;
    snprintf(bytes, sizeof(bytes), "%" PRId64, f->bytes);
    snprintf(lines, sizeof(lines), "%" PRId64, f->lines);
    snprintf(chunks, sizeof(chunks), "%u", up->chunks);
    snprintf(created, sizeof(created), "%" PRId64, f->created_at);
    rc = bd_pg_conn_pipeline(up->conn, 2, sqls, nparams, params, upload_on_result, up);
    if (rc < 0)
        return rc == BD_ENOMEM || rc == BD_ECANCELED ? rc : BD_EPG;
    up->is_busy = true;
    up->is_closing = true;
    up->cb = cb;
    up->arg = arg;
    return BD_OK;
}

void bd_file_upload_abort(struct bd_file_upload *up)
{
    if (up->is_busy) {
        up->is_aborted = true;        /* freed when the operation calls back */
        return;
    }
    upload_free(up);
}

/* ---- reads and the delete --------------------------------------------------------------- */

/* One read's record: the typed callback and its argument. */
struct file_call {
    union {
        bd_file_store_row_cb row;
        bd_file_store_list_cb list;
        bd_file_store_done_cb done;
        bd_file_store_chunk_cb chunk;
    } cb;
    void *arg;
    unsigned limit;                   /* list: the page size asked for */
};

static struct file_call *file_call_new(void *arg)
{
    struct file_call *c = calloc(1, sizeof(*c));
    if (c)
        c->arg = arg;
    return c;
}

/* On the pool, or on conn when it is not NULL (a connection the caller holds). */
static int file_query_on(struct bd_pg *pg, struct bd_pg_conn *conn, const char *sql, int n,
                         const char *const *values, int binary, bd_pg_result_cb on,
                         struct file_call *c)
{
    int rc = conn ? bd_pg_conn_query(conn, sql, n, values, NULL, NULL, binary, on, c)
                  : bd_pg_query(pg, sql, n, values, NULL, NULL, binary, on, c);

    if (rc < 0) {
        free(c);
        return rc == BD_ENOMEM || rc == BD_ECANCELED ? rc : BD_EPG;
    }
    return BD_OK;
}

static int file_query(struct bd_pg *pg, const char *sql, int n, const char *const *values,
                      int binary, bd_pg_result_cb on, struct file_call *c)
{
    return file_query_on(pg, NULL, sql, n, values, binary, on, c);
}

static void file_on_row(int status, PGresult *res, void *arg)
{
    struct file_call *c = arg;
    struct bd_file_row row;
    int st = file_status(status);

    if (st == BD_OK && PQntuples(res) == 0)
        st = BD_ENOTFOUND;
    if (st == BD_OK)
        st = file_rows(res, &row, 1);
    c->cb.row(st, st == BD_OK ? &row : NULL, st == BD_EPG ? file_message(res) : NULL, c->arg);
    free(c);
}

int bd_file_store_get(struct bd_pg *pg, const char *file_id, bd_file_store_row_cb cb,
                      void *arg)
{
    static const char sql[] = "SELECT " FILE_COLUMNS " FROM files WHERE id = $1";
    const char *values[1] = { file_id };
    struct file_call *c = file_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.row = cb;
    return file_query(pg, sql, 1, values, 0, file_on_row, c);
}

static void file_on_list(int status, PGresult *res, void *arg)
{
    struct file_call *c = arg;
    int st = file_status(status);
    int n = st == BD_OK ? PQntuples(res) : 0;
    bool has_more = (unsigned)n > c->limit;
    struct bd_file_row *rows = NULL;

    if (has_more)
        n = (int)c->limit;
    if (st == BD_OK && n > 0 && (rows = malloc((size_t)n * sizeof(*rows))) == NULL)
        st = BD_ENOMEM;
    if (st == BD_OK)
        st = file_rows(res, rows, n);
    c->cb.list(st, rows, st == BD_OK ? (unsigned)n : 0, has_more,
               st == BD_EPG ? file_message(res) : NULL, c->arg);
    free(rows);
    free(c);
}

int bd_file_store_list(struct bd_pg *pg, const struct bd_file_list_query *q,
                       bd_file_store_list_cb cb, void *arg)
{
    static const char sql_asc[] = "SELECT " FILE_COLUMNS
        " FROM files WHERE ($1::text IS NULL OR purpose = $1)"
        " AND ($2::text IS NULL OR seq > (SELECT seq FROM files WHERE id = $2))"
        " ORDER BY seq ASC LIMIT $3::int";
    static const char sql_desc[] = "SELECT " FILE_COLUMNS
        " FROM files WHERE ($1::text IS NULL OR purpose = $1)"
        " AND ($2::text IS NULL OR seq < (SELECT seq FROM files WHERE id = $2))"
        " ORDER BY seq DESC LIMIT $3::int";
    char limit[16];
    const char *values[3] = { q->purpose, q->after, limit };
    struct file_call *c;

    if (q->limit == 0)
        return BD_EINVAL;
    if ((c = file_call_new(arg)) == NULL)
        return BD_ENOMEM;
    c->cb.list = cb;
    c->limit = q->limit;
    snprintf(limit, sizeof(limit), "%u", q->limit + 1);   /* one more tells has_more */
    return file_query(pg, q->is_asc ? sql_asc : sql_desc, 3, values, 0, file_on_list, c);
}

static void file_on_deleted(int status, PGresult *res, void *arg)
{
    struct file_call *c = arg;
    int st = file_status(status);

    if (st == BD_OK && PQntuples(res) == 0)
        st = BD_ENOTFOUND;
    c->cb.done(st, st == BD_EPG ? file_message(res) : NULL, c->arg);
    free(c);
}

int bd_file_store_delete(struct bd_pg *pg, const char *file_id, bd_file_store_done_cb cb,
                         void *arg)
{
    static const char sql[] = "DELETE FROM files WHERE id = $1 RETURNING id";
    const char *values[1] = { file_id };
    struct file_call *c = file_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    c->cb.done = cb;
    return file_query(pg, sql, 1, values, 0, file_on_deleted, c);
}

static void file_on_chunk(int status, PGresult *res, void *arg)
{
    struct file_call *c = arg;
    int st = file_status(status);
    int col = st == BD_OK ? PQfnumber(res, "data") : -1;

    if (st == BD_OK && PQntuples(res) == 0)
        st = BD_ENOTFOUND;
    else if (st == BD_OK && col < 0)
        st = BD_EINTERNAL;
    if (st == BD_OK)
        c->cb.chunk(BD_OK, PQgetvalue(res, 0, col), (size_t)PQgetlength(res, 0, col), NULL,
                    c->arg);
    else
        c->cb.chunk(st, NULL, 0, st == BD_EPG ? file_message(res) : NULL, c->arg);
    free(c);
}

static int file_read_chunk(struct bd_pg *pg, struct bd_pg_conn *conn, const char *file_id,
                           unsigned seq, bd_file_store_chunk_cb cb, void *arg)
{
    static const char sql[] = "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2::int";
    char s[16];
    const char *values[2] = { file_id, s };
    struct file_call *c = file_call_new(arg);

    if (c == NULL)
        return BD_ENOMEM;
    snprintf(s, sizeof(s), "%u", seq);
    c->cb.chunk = cb;
    return file_query_on(pg, conn, sql, 2, values, 1, file_on_chunk, c);
}

int bd_file_store_read_chunk(struct bd_pg *pg, const char *file_id, unsigned seq,
                             bd_file_store_chunk_cb cb, void *arg)
{
    return file_read_chunk(pg, NULL, file_id, seq, cb, arg);
}

int bd_file_store_read_chunk_on(struct bd_pg_conn *conn, const char *file_id, unsigned seq,
                                bd_file_store_chunk_cb cb, void *arg)
{
    return conn ? file_read_chunk(NULL, conn, file_id, seq, cb, arg) : BD_EINVAL;
}

struct bd_pg_conn *bd_file_upload_get_conn(struct bd_file_upload *up)
{
    return up->is_busy || !up->is_open || up->is_aborted ? NULL : up->conn;
}
