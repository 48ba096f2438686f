/* file_store.h -- every statement on files and file_chunks (OpenAI-compatible files), with
 * typed rows and named columns.
 *
 * A file is its row (id, purpose, filename, bytes, lines, chunks) and its content in
 * chunks of at most BD_FILE_CHUNK_BYTES, numbered from 0, each with the count of newlines
 * before it. An upload is one transaction on one leased connection: chunks as they come,
 * then the row and the COMMIT; anything short of the COMMIT leaves nothing. Reads go chunk
 * by chunk, so neither direction ever holds a file whole.
 *
 * The one owner of the files tables' SQL text: API handlers call these and write no SQL.
 * Runs on the nonblocking pool of pg_store.h; every function that takes a callback follows
 * the callback contract (returns < 0 and never calls back, or returns BD_OK and calls back
 * exactly once, asynchronously; BD_ECANCELED when the pool is closing). Loop thread only.
 */
#ifndef BATCHD_FILE_STORE_H
#define BATCHD_FILE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bd_pg;

/* A chunk's most bytes: large enough that a 200 MB file is 200 rows, small enough that an
 * upload or a download holds about two of them. */
#define BD_FILE_CHUNK_BYTES (1u << 20)

/* "file-" and 24 hex digits. */
#define BD_FILE_ID_LEN 29

/* A file's row. Strings borrowed during the callback. */
struct bd_file_row {
    const char *id;
    const char *purpose;
    const char *filename;
    const char *status;               /* "processed" */
    int64_t bytes;
    int64_t lines;                    /* newlines, plus one when the last line has none */
    unsigned chunks;
    int64_t created_at;               /* unix seconds */
};

/* status BD_OK, or BD_ENOTFOUND (the statement's target is not there), BD_EPG (message
 * then holds the server's or libpq's text, else NULL), BD_ENOMEM, BD_ECANCELED. */
typedef void (*bd_file_store_done_cb)(int status, const char *message, void *arg);
/* row NULL unless status is BD_OK. */
typedef void (*bd_file_store_row_cb)(int status, const struct bd_file_row *row,
                                     const char *message, void *arg);

/* A new file id into out[BD_FILE_ID_LEN + 1] ("file-" + 24 random hex digits). BD_OK or
 * the error of uv_random. */
int bd_file_new_id(char *out);

/* ---- an upload -------------------------------------------------------------------------- */

struct bd_file_upload;

/* After a callback with BD_ECANCELED (an abort, or the pool closing) the upload is gone:
 * never call anything on it again. After any other error it stays open for an abort. */

/* Lease a connection and BEGIN. *out is set before the call returns (for abort); cb once
 * the transaction is open. Allocates the upload's record. */
int bd_file_upload_open(struct bd_pg *pg, const char *file_id, bd_file_store_done_cb cb,
                        void *arg, struct bd_file_upload **out);

/* Write the next chunk (seq = number of chunks put before): data[0..len), 0 < len <=
 * BD_FILE_CHUNK_BYTES, with line_start newlines before it in the file. data is borrowed for
 * the call only (libpq copies it). BD_EINVAL when an operation is in flight or the upload
 * is not open. */
int bd_file_upload_put(struct bd_file_upload *up, const char *data, size_t len,
                       int64_t line_start, bd_file_store_done_cb cb, void *arg);

/* The file's row with the given figures (chunks: those put), then COMMIT. cb gets BD_OK
 * once the file is durable; the upload's record is freed after cb returns, whatever the
 * status. */
struct bd_file_new {
    const char *purpose;
    const char *filename;
    int64_t bytes, lines;
    int64_t created_at;               /* unix seconds */
};
int bd_file_upload_close(struct bd_file_upload *up, const struct bd_file_new *f,
                         bd_file_store_done_cb cb, void *arg);

/* Give the upload up: nothing of it stays. With an operation in flight, its callback gets
 * BD_ECANCELED later and the record is freed after it; otherwise it is freed now and no
 * callback comes. Never call it after close returned BD_OK. */
void bd_file_upload_abort(struct bd_file_upload *up);

/* ---- reads and the delete --------------------------------------------------------------- */

/* One file's row; BD_ENOTFOUND when there is none. */
int bd_file_store_get(struct bd_pg *pg, const char *file_id, bd_file_store_row_cb cb,
                      void *arg);

/* A page of files by creation order (seq): after (an id, NULL: from the start) and purpose
 * (NULL: any) narrow it; at most limit rows; is_asc oldest first. has_more: rows beyond.
 * An after that names no file gives an empty page. rows borrowed during cb. */
struct bd_file_list_query {
    const char *after;
    const char *purpose;
    unsigned limit;
    bool is_asc;
};
typedef void (*bd_file_store_list_cb)(int status, const struct bd_file_row *rows, unsigned n,
                                      bool has_more, const char *message, void *arg);
int bd_file_store_list(struct bd_pg *pg, const struct bd_file_list_query *q,
                       bd_file_store_list_cb cb, void *arg);

/* Delete a file and its chunks; BD_ENOTFOUND when there is none. */
int bd_file_store_delete(struct bd_pg *pg, const char *file_id, bd_file_store_done_cb cb,
                         void *arg);

/* Chunk seq of a file: data[0..len) borrowed during cb. BD_ENOTFOUND when the chunk is not
 * there (the file was deleted meanwhile). */
typedef void (*bd_file_store_chunk_cb)(int status, const char *data, size_t len,
                                       const char *message, void *arg);
int bd_file_store_read_chunk(struct bd_pg *pg, const char *file_id, unsigned seq,
                             bd_file_store_chunk_cb cb, void *arg);

/* The same on a connection the caller holds (leased, idle), e.g. inside its own
 * transaction: a caller that holds one connection of a pool must not wait for a second
 * (with a small pool, two such callers wait on each other). BD_EINVAL when conn is NULL. */
struct bd_pg_conn;
int bd_file_store_read_chunk_on(struct bd_pg_conn *conn, const char *file_id, unsigned seq,
                                bd_file_store_chunk_cb cb, void *arg);

/* The upload's connection, inside its transaction, for reads between its operations (see
 * above); NULL while an operation is in flight or when it is not open. Borrowed. */
struct bd_pg_conn *bd_file_upload_get_conn(struct bd_file_upload *up);

#endif
