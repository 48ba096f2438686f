/* pg_store.h -- PostgreSQL through nonblocking libpq: a pool, async queries, COPY IN,
 * and the versioned schema.
 *
 * Each connection is connected with PQconnectStart/PQconnectPoll and watched with a
 * uv_poll on PQsocket; nothing here ever blocks the loop (no PQexec, no PQconnectdb).
 * Broken connections are reconnected with backoff. Loop thread only.
 *
 * Sources: pg_store.c (pool, operations, error classes), pg_conn.c (one connection),
 * pg_copy.c (binary COPY encoder), pg_schema.c (schema and bd_pg_migrate); the first two
 * share src/pg_internal.h.
 *
 * Callback contract (STYLE.md): a function that takes a callback returns < 0 and never
 * calls it, or returns BD_OK and calls it exactly once, asynchronously -- with BD_EPG when
 * the connection broke and BD_ECANCELED when the pool is closing.
 */
#ifndef BATCHD_PG_STORE_H
#define BATCHD_PG_STORE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct bd_pg;        /* the pool */
struct bd_pg_conn;   /* one pooled connection, leased to one caller at a time */

struct bd_pg_options {
    const char *conninfo;            /* URL or key=value conninfo; copied */
    unsigned pool_size;              /* connections kept open, >= 1 */
    double acquire_timeout_s;        /* bd_pg_acquire waits at most this, then BD_EPG */
    double statement_timeout_s;      /* SET statement_timeout on each new connection; 0 = none */
    bool is_async_commit;            /* SET synchronous_commit = off on each connection: commits
                                      * return before the WAL is flushed. Only for work that is
                                      * safe to redo after a PostgreSQL crash (job checkpoints). */
    bool is_webhooks_on;             /* SET batchd.webhooks = on on each connection: the
                                      * webhook triggers (schema v9) write events only for
                                      * sessions that say so, i.e. processes with endpoints */
};

/* Called once when a pool-level operation completes (connect, migrate, close). */
typedef void (*bd_pg_done_cb)(int status, void *arg);

/* Called with a leased connection (status BD_OK) or with NULL and an error. */
typedef void (*bd_pg_conn_cb)(int status, struct bd_pg_conn *conn, void *arg);

/* Called with a statement's result. status BD_OK: res is the last result (tuples or command
 * ok). status BD_EPG: res is the error result when the server sent one (inspect it with
 * PQresultErrorField, e.g. PG_DIAG_SQLSTATE "23505"), or NULL when the connection broke.
 * res is borrowed and PQclear'ed when the callback returns. */
typedef void (*bd_pg_result_cb)(int status, PGresult *res, void *arg);

/* Create the pool and start connecting every connection (async). Returns BD_OK and *out,
 * or a negative error with nothing created. Connections that fail are retried forever with
 * backoff (100 ms doubling to 5 s); bd_pg_is_up tells whether one is connected. */
int bd_pg_new(uv_loop_t *loop, const struct bd_pg_options *opt, struct bd_pg **out);

/* Fail everything pending with BD_ECANCELED, close every connection, free the pool, then
 * call cb (async, may be NULL). Waiters and operations in flight are called back (with
 * BD_ECANCELED) from inside bd_pg_close. A connection still leased stays valid until its
 * holder calls bd_pg_release (every other call on it returns BD_ECANCELED): the pool is
 * freed, and cb called, only once every lease has been released. */
void bd_pg_close(struct bd_pg *pg, bd_pg_done_cb cb, void *arg);

/* Apply the versioned schema migrations (the table in src/pg_schema.c) that are not yet in
 * schema_migrations, each in its own transaction under an advisory lock so several
 * processes may start at once. Running it twice is a no-op. Waits for a connection (so
 * fails with BD_EPG after acquire_timeout_s when PostgreSQL is down). A failing statement's
 * server message is logged here (level error), since only this function sees it. */
int bd_pg_migrate(struct bd_pg *pg, bd_pg_done_cb cb, void *arg);

/* True when at least one connection is established. */
bool bd_pg_is_up(const struct bd_pg *pg);

/* Established connections / configured pool size / callers waiting for a connection. */
unsigned bd_pg_get_connected(const struct bd_pg *pg);
unsigned bd_pg_get_pool_size(const struct bd_pg *pg);
unsigned bd_pg_get_waiting(const struct bd_pg *pg);

/* Lease a connection (FIFO among waiters). cb gets it once one is free and connected, or
 * BD_EPG after acquire_timeout_s (0 = wait for ever). The caller must bd_pg_release it
 * exactly once. Allocates one small waiter record. */
int bd_pg_acquire(struct bd_pg *pg, bd_pg_conn_cb cb, void *arg);

/* Give conn back. If it is inside a transaction (failed or not) it is rolled back before
 * reuse; if it is broken it is reconnected. Must not be called while an operation on conn
 * is in flight. */
void bd_pg_release(struct bd_pg_conn *conn);

/* Operations on a leased conn fail with BD_EPG (the connection is dropped) when PostgreSQL
 * sends nothing for the pool's statement timeout plus a grace (a stopped server, a half
 * open link). A holder that raises statement_timeout for its transaction (SET LOCAL) gives
 * the lease a longer deadline here, in seconds, until bd_pg_release. */
void bd_pg_conn_set_deadline(struct bd_pg_conn *conn, double seconds);

/* Send one statement with parameters (PQsendQueryParams; params are copied into libpq's
 * buffer before return, so they are borrowed only for the call). values[i] NULL = SQL NULL;
 * lengths/formats may be NULL (all text). result_binary asks for binary results.
 * sql may hold several ';'-separated statements only when nparams is 0 (then PQsendQuery):
 * the callback gets the last result, or the first error. One operation per conn at a time. */
int bd_pg_conn_query(struct bd_pg_conn *conn, const char *sql, int nparams,
                     const char *const *values, const int *lengths, const int *formats,
                     int result_binary, bd_pg_result_cb cb, void *arg);

/* Run copy_sql ("COPY t (...) FROM STDIN [WITH (FORMAT binary)]") and feed data[0..len)
 * with PQputCopyData without blocking (resumes on writability), then PQputCopyEnd.
 * data is borrowed until cb. cb gets the COPY's command result ("COPY n"). */
int bd_pg_conn_copy_in(struct bd_pg_conn *conn, const char *copy_sql, const char *data,
                       size_t len, bd_pg_result_cb cb, void *arg);

/* Send several statements in one round trip using libpq pipeline mode; results are
 * delivered to cb once: status BD_OK with the LAST statement's result, or BD_EPG with the
 * first error result (statements after an error are skipped by the server).
 * Each statement is sqls[i] with nparams[i] text parameters params[i][0..] (nparams may be
 * NULL: no parameters anywhere). Each sqls[i] must be ONE statement (extended protocol).
 * Outside an explicit BEGIN the statements run as one implicit transaction: an error rolls
 * back the ones before it too. */
int bd_pg_conn_pipeline(struct bd_pg_conn *conn, unsigned count, const char *const *sqls,
                        const int *nparams, const char *const *const *params,
                        bd_pg_result_cb cb, void *arg);

/* Convenience: acquire, run one bd_pg_conn_query, release. Same callback rules. */
int bd_pg_query(struct bd_pg *pg, const char *sql, int nparams, const char *const *values,
                const int *lengths, const int *formats, int result_binary,
                bd_pg_result_cb cb, void *arg);

/* ---- groups: calls made close together, sent as one statement --------------------------
 * A caller that can answer many requests with one statement (UPDATE ... WHERE id =
 * ANY($1)) queues each request as an item under a kind it owns (0 .. BD_PG_GROUP_KINDS-1)
 * with bd_pg_group_add; the first item queued arms a zero timer, and on the next loop turn
 * flush is called once with every item queued under that kind since (the list in queue
 * order, n of them), and the kind starts empty again. From then on the items are flush's:
 * it sends the statement and calls each request's owner back (the callback contract is
 * the caller's to keep). A kind whose statement is still in flight keeps collecting, and
 * is flushed on the first turn after bd_pg_group_done(kind) -- so under load each
 * statement carries what arrived while the previous one ran (group commit), and an idle
 * pool adds one loop turn. When bd_pg_close runs, every kind with items is flushed from
 * inside it (pg is closing then, so flush's bd_pg_query returns BD_ECANCELED and flush
 * answers each item with it). */
#define BD_PG_GROUP_KINDS 4
struct bd_pg_link {
    struct bd_pg_link *next;
};
typedef void (*bd_pg_group_flush_cb)(struct bd_pg *pg, struct bd_pg_link *items, unsigned n);
/* BD_OK, or BD_ECANCELED (closing) / BD_EINVAL, and the item was not taken. */
int bd_pg_group_add(struct bd_pg *pg, unsigned kind, struct bd_pg_link *item,
                    bd_pg_group_flush_cb flush);
/* The statement a flush of kind sent has answered: items queued since go on the next turn.
 * A flush that sent nothing (its send failed) calls it too. */
void bd_pg_group_done(struct bd_pg *pg, unsigned kind);

/* As bd_pg_query, for a statement sent often: it is prepared once on each connection
 * (PQsendPrepare, pipelined with its first execution there) and then executed by name, so
 * the server neither parses nor plans it from scratch on every call. name is a constant
 * string (the pool keeps the pointer) naming this sql and nothing else; the parameters'
 * types come from the statement's casts. At most a few names per pool (beyond them, the
 * statement simply runs unprepared). */
int bd_pg_query_prepared(struct bd_pg *pg, const char *name, const char *sql, int nparams,
                         const char *const *values, const int *lengths, const int *formats,
                         int result_binary, bd_pg_result_cb cb, void *arg);

/* Error text of the connection (PQerrorMessage, trailing newline removed), for logs.
 * Borrowed until the next operation on conn. */
const char *bd_pg_conn_get_error(struct bd_pg_conn *conn);

/* The backend's process id of a connected conn (PQbackendPID), 0 when not connected. For
 * logs and tests (pg_terminate_backend). */
int bd_pg_conn_get_backend_pid(const struct bd_pg_conn *conn);

/* ---- binary COPY encoder (src/pg_copy.c) ------------------------------------------------
 * Builds a "COPY t (...) FROM STDIN WITH (FORMAT binary)" payload in a struct bd_buf (buf.h,
 * the one growable buffer) for bd_pg_conn_copy_in:
 *     bd_buf_reset(&b); bd_pg_copy_begin(&b);
 *     for each row: bd_pg_copy_row(&b, ncols); then one field call per column, in order;
 *     bd_pg_copy_end(&b);
 *     bd_pg_conn_copy_in(conn, sql, b.data, b.len, cb, arg);
 * All integers go out in network byte order. The buffer grows by doubling (it allocates);
 * bd_buf_reset keeps the memory for the next payload. Errors are sticky: the call that
 * fails returns BD_ENOMEM (or BD_EINVAL for a value the format cannot hold) and sets
 * b->is_failed, after which every call returns BD_ENOMEM and writes nothing, so a caller
 * may check only the result of bd_pg_copy_end (or b->is_failed). */
struct bd_buf;
int bd_pg_copy_begin(struct bd_buf *b);                 /* signature + header */
int bd_pg_copy_row(struct bd_buf *b, unsigned ncols);   /* starts a tuple */
int bd_pg_copy_null(struct bd_buf *b);                  /* SQL NULL field */
int bd_pg_copy_text(struct bd_buf *b, const char *s, size_t len); /* text, UTF-8 */
int bd_pg_copy_bytes(struct bd_buf *b, const void *p, size_t len); /* bytea */
int bd_pg_copy_int4(struct bd_buf *b, int32_t v);
int bd_pg_copy_int8(struct bd_buf *b, int64_t v);
int bd_pg_copy_float8(struct bd_buf *b, double v);
int bd_pg_copy_bool(struct bd_buf *b, bool v);
/* real[] with one dimension (lower bound 1, no NULLs); n == 0 writes '{}'. */
int bd_pg_copy_float4_array(struct bd_buf *b, const float *v, size_t n);
/* jsonb from JSON text (the server validates it). */
int bd_pg_copy_jsonb(struct bd_buf *b, const char *json, size_t len);
int bd_pg_copy_end(struct bd_buf *b);                   /* trailer */

/* Decode a binary real[] value (a binary-format result column, or a field written by
 * bd_pg_copy_float4_array without its length word) of exactly n elements into out[0..n).
 * Returns BD_OK, or BD_EINVAL when p[0..len) is not a one-dimensional float4 array of n
 * non-NULL elements (out may then be partly written). n == 0 accepts '{}'. No allocation. */
int bd_pg_float4_array_decode(const char *p, size_t len, size_t n, float *out);

/* Append PostgreSQL's text form of a real[] ("{0.1,-2e-05,NaN}") to b as a JSON array
 * ("[0.1,-2e-05,null]"): float4out's shortest exact decimals copied as they are; NaN,
 * Infinity and NULL elements, which JSON cannot express, become null. */
void bd_pg_real_array_to_json(struct bd_buf *b, const char *s, size_t len);

/* ---- binary array parameters (src/pg_store.c) -------------------------------------------
 * A one-dimensional array in PostgreSQL's binary format, for a statement parameter sent
 * with format 1 (cast in the statement: $3::int4[]):
 *     bd_pg_array_begin(&b, BD_PG_TEXT_OID, n); then n calls of bd_pg_array_elem;
 * n == 0 writes the empty array. Elements go out as they are: their binary form (int4 in
 * network order, text as UTF-8 bytes, float4 as its IEEE bits in network order); p NULL
 * is SQL NULL. Appends to b (the growable buffer; several arrays may share one buffer,
 * each at its own offset); errors are sticky in b->is_failed, as for the COPY encoder. */
#define BD_PG_INT4_OID 23u
#define BD_PG_TEXT_OID 25u
#define BD_PG_FLOAT4_OID 700u
int bd_pg_array_begin(struct bd_buf *b, uint32_t elem_oid, unsigned n);
int bd_pg_array_elem(struct bd_buf *b, const void *p, size_t len);
/* An int4 element. */
int bd_pg_array_int4(struct bd_buf *b, int32_t v);

/* ---- error classes ------------------------------------------------------------------------
 * Whether a failed statement is worth running again. TRANSIENT: the connection was lost
 * (NULL result, or an error libpq made itself, which has no SQLSTATE), class 08 (connection
 * exception), class 40 (transaction rollback: 40001 serialization failure, 40P01 deadlock),
 * class 53 (insufficient resources: out of memory, disk full, too many connections) except
 * 53400 configuration_limit_exceeded, class 57 (operator intervention: 57P01..57P03 admin or
 * crash shutdown, 57014 query cancelled or statement_timeout) and 55P03 lock_not_available.
 * PERMANENT: everything else (22021 bad UTF-8, 23xxx constraints, 42xxx bad SQL, ...): the
 * same statement with the same data fails the same way. Pure functions; any thread. */
enum bd_pg_error_class {
    BD_PG_ERR_TRANSIENT,
    BD_PG_ERR_PERMANENT,
};

/* Class of an error result as delivered to a bd_pg_result_cb with BD_EPG; res may be NULL
 * (connection lost). Borrowed; not cleared. */
enum bd_pg_error_class bd_pg_classify_error(const PGresult *res);

/* Class of a five-character SQLSTATE ("40P01"); NULL or malformed counts as transient. */
enum bd_pg_error_class bd_pg_classify_sqlstate(const char *sqlstate);

#endif
