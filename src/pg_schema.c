/* pg_schema.c -- the versioned PostgreSQL schema, and bd_pg_migrate that applies it.
 *
 * Owns the constant migration table and, while bd_pg_migrate runs, one leased connection.
 * Each entry is applied once, in its own transaction, and recorded in schema_migrations.
 * Never edit an entry that has shipped: add a new version instead. Reaches PostgreSQL only
 * through the public pool API (pg_store.h). Loop thread only.  SPDX-License-Identifier: MIT
 */
#include "batchd/pg_store.h"
#include "batchd/error.h"
#include "batchd/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_MIGRATE_LOCK_KEY "7236281245920100001"   /* pg_advisory_xact_lock key (bigint) */

struct pg_migration {
    int version;
    const char *name;
    const char *sql;                  /* may hold several statements */
};

/* Large values (batch items, embeddings) are stored uncompressed out of line
 * (STORAGE EXTERNAL): they are written once, read whole, and compress poorly, so pglz
 * would cost CPU on every write for little gain. */
static const char pg_schema_v1_initial[] =
    "CREATE TABLE jobs (\n"
    "  id text PRIMARY KEY, seq bigint NOT NULL, operation text NOT NULL, model text,\n"
    "  collection text NOT NULL, status text NOT NULL, priority smallint NOT NULL,\n"
    "  batch_size int NOT NULL, total_items int NOT NULL, total_batches int NOT NULL,\n"
    "  next_batch int NOT NULL DEFAULT 0, processed_items int NOT NULL DEFAULT 0,\n"
    "  failed_items int NOT NULL DEFAULT 0, stored_vectors int NOT NULL DEFAULT 0,\n"
    "  cache_hits int NOT NULL DEFAULT 0, run_attempt int NOT NULL DEFAULT 1,\n"
    "  timeout_s double precision, max_retries int,\n"
    "  options jsonb NOT NULL DEFAULT '{}', metadata jsonb NOT NULL DEFAULT '{}',\n"
    "  idempotency_key text UNIQUE, request_hash text,\n"
    "  error_code text, error_message text,\n"
    "  cancel_requested boolean NOT NULL DEFAULT false,\n"
    "  lease_owner text, processing_ms bigint NOT NULL DEFAULT 0,\n"
    "  created_at timestamptz NOT NULL DEFAULT now(), started_at timestamptz,\n"
    "  completed_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now());\n"
    "CREATE INDEX jobs_seq_idx ON jobs (seq DESC);\n"
    "CREATE INDEX jobs_status_seq_idx ON jobs (status, seq DESC);\n"
    "CREATE INDEX jobs_completed_idx ON jobs (completed_at) WHERE completed_at IS NOT NULL;\n"
    "CREATE TABLE job_batches (\n"
    "  job_id text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, batch_no int NOT NULL,\n"
    "  first_index int NOT NULL, item_count int NOT NULL,\n"
    "  items text NOT NULL,\n" /* the batch's input items, one compact JSON array */
    "  status text NOT NULL DEFAULT 'pending', attempts int NOT NULL DEFAULT 0,\n"
    "  processed int NOT NULL DEFAULT 0, failed int NOT NULL DEFAULT 0,\n"
    "  last_error text, duration_ms int, updated_at timestamptz,\n"
    "  PRIMARY KEY (job_id, batch_no));\n"
    "ALTER TABLE job_batches ALTER COLUMN items SET STORAGE EXTERNAL;\n"
    "CREATE TABLE job_item_errors (\n"
    "  job_id text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, item_index int NOT NULL,\n"
    "  item_id text, code text NOT NULL, message text NOT NULL,\n"
    "  run_attempt int NOT NULL DEFAULT 1,\n"
    "  PRIMARY KEY (job_id, item_index));\n"
    "CREATE TABLE collections (name text PRIMARY KEY, dimension int NOT NULL,\n"
    "  created_at timestamptz NOT NULL DEFAULT now());\n"
    "CREATE TABLE vectors (\n"
    "  collection text NOT NULL REFERENCES collections(name), id text NOT NULL,\n"
    "  embedding real[] NOT NULL, metadata jsonb NOT NULL DEFAULT '{}',\n"
    "  job_id text, item_index int,\n"
    "  created_at timestamptz NOT NULL DEFAULT now(),\n"
    "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
    "  PRIMARY KEY (collection, id));\n"
    "ALTER TABLE vectors ALTER COLUMN embedding SET STORAGE EXTERNAL;\n"
    "CREATE INDEX vectors_job_idx ON vectors (job_id, item_index);\n";

/* The embedding cache (SPEC §3): text_hash is SHA-256 over the model name, its configured
 * version and input limit, and the text, so a model or version change never serves stale
 * vectors. Entries expire with the retention sweep (created_at). */
static const char pg_schema_v2_embedding_cache[] =
    "CREATE TABLE embedding_cache (\n"
    "  text_hash text PRIMARY KEY, embedding real[] NOT NULL,\n"
    "  created_at timestamptz NOT NULL DEFAULT now());\n"
    "ALTER TABLE embedding_cache ALTER COLUMN embedding SET STORAGE EXTERNAL;\n"
    "CREATE INDEX embedding_cache_created_idx ON embedding_cache (created_at);\n";

/* bulk_insert batches are stored packed (job_batches.payload): per item the id and the
 * metadata JSON as binary-COPY text fields and the embedding as a ready binary real[]
 * field, so vectors are parsed once at submit and copied, not re-parsed, when the batch
 * runs. bulk_embed batches keep their texts as a JSON array in items. */
static const char pg_schema_v3_packed_batches[] =
    "ALTER TABLE job_batches ADD COLUMN payload bytea;\n"
    "ALTER TABLE job_batches ALTER COLUMN payload SET STORAGE EXTERNAL;\n"
    "ALTER TABLE job_batches ALTER COLUMN items DROP NOT NULL;\n";

/* A packed bulk_insert batch split into its items (ord from 0, each item's three fields as
 * they are), for statements that regroup a job's items (a streamed JSON body whose
 * batch_size came after its data). The value is copied into memory first: get_byte on the
 * stored, out-of-line value would fetch it from TOAST on every call. */
static const char pg_schema_v4_packed_items[] =
    "CREATE OR REPLACE FUNCTION batchd_packed_items(p bytea)\n"
    "RETURNS TABLE (ord int, item bytea) LANGUAGE plpgsql IMMUTABLE STRICT AS $$\n"
    "DECLARE\n"
    "  v bytea := p || ''::bytea;\n"
    "  n int := length(p);\n"
    "  pos int := 0;\n"
    "  start int;\n"
    "  len int;\n"
    "BEGIN\n"
    "  ord := 0;\n"
    "  WHILE pos < n LOOP\n"
    "    start := pos;\n"
    "    FOR f IN 1..3 LOOP\n"
    "      IF pos + 4 > n THEN\n"
    "        RAISE EXCEPTION 'packed batch truncated at byte %', pos;\n"
    "      END IF;\n"
    "      len := (get_byte(v, pos) << 24) | (get_byte(v, pos + 1) << 16)\n"
    "             | (get_byte(v, pos + 2) << 8) | get_byte(v, pos + 3);\n"
    "      IF len < 0 OR len > n - pos - 4 THEN\n"
    "        RAISE EXCEPTION 'packed batch field out of bounds at byte %', pos;\n"
    "      END IF;\n"
    "      pos := pos + 4 + len;\n"
    "    END LOOP;\n"
    "    item := substring(v FROM start + 1 FOR pos - start);\n"
    "    RETURN NEXT;\n"
    "    ord := ord + 1;\n"
    "  END LOOP;\n"
    "END\n"
    "$$;\n";

/* Vectors are never filtered on, so ANALYZE keeps no statistics of them: for a real[]
 * column it would hash every element of every sampled row (autovacuum's ANALYZE of a busy
 * vectors table took a sixth of the CPU during the embed bench). And a row of a few
 * thousand dimensions stays in its heap page (toast_tuple_target at its maximum) instead
 * of going to the TOAST table: one heap and one index insert per vector, not three. */
static const char pg_schema_v5_vector_storage[] =
    "ALTER TABLE vectors ALTER COLUMN embedding SET STATISTICS 0;\n"
    "ALTER TABLE embedding_cache ALTER COLUMN embedding SET STATISTICS 0;\n"
    "ALTER TABLE job_batches ALTER COLUMN payload SET STATISTICS 0;\n"
    "ALTER TABLE job_batches ALTER COLUMN items SET STATISTICS 0;\n"
    "ALTER TABLE vectors SET (toast_tuple_target = 8160);\n"
    "ALTER TABLE embedding_cache SET (toast_tuple_target = 8160);\n";

/* OpenAI-compatible files (file_store.c): a file's row, and its content in chunks of up to
 * BD_FILE_CHUNK_BYTES in order (seq from 0), so a file is written and read as a stream and
 * never held whole. line_start is the number of newlines before the chunk, so a reader can
 * start at a given line without reading the chunks before it. The chunks of a file under
 * upload are written before its row (one transaction): the foreign key is checked at the
 * COMMIT. Uploads that do not commit leave nothing. */
static const char pg_schema_v6_files[] =
    "CREATE TABLE files (\n"
    "  id text PRIMARY KEY, seq bigserial NOT NULL UNIQUE,\n"
    "  purpose text NOT NULL, filename text NOT NULL,\n"
    "  bytes bigint NOT NULL, lines bigint NOT NULL, chunks int NOT NULL,\n"
    "  status text NOT NULL DEFAULT 'processed',\n"
    "  created_at timestamptz NOT NULL DEFAULT now());\n"
    "CREATE INDEX files_purpose_seq_idx ON files (purpose, seq);\n"
    "CREATE TABLE file_chunks (\n"
    "  file_id text NOT NULL REFERENCES files(id) ON DELETE CASCADE\n"
    "    DEFERRABLE INITIALLY DEFERRED,\n"
    "  seq int NOT NULL, line_start bigint NOT NULL, data bytea NOT NULL,\n"
    "  PRIMARY KEY (file_id, seq));\n"
    "ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;\n"
    "ALTER TABLE file_chunks ALTER COLUMN data SET STATISTICS 0;\n";

/* OpenAI-compatible batches (batch_store.c). A batch is a bulk_embed job (job_id; NULL when
 * its input failed validation, or once retention deleted the job) plus what the OpenAI shape
 * needs: the input file, its lines (batch_lines: per line its custom_id and the job's items
 * it became, first_item .. first_item + items - 1), the cancel and expiry requests, and the
 * outcome written by the finalizer in one transaction: final_status (completed, failed,
 * expired, cancelled), finalized_at, the output and error files and the per-line counts.
 * Until then the status is derived from the job's (batch_store.c, one place). lease_owner /
 * lease_until let one process finalize a batch while others skip it. A batch's lines are
 * written before its row (one transaction, the row's figures known last): the foreign key
 * is checked at the COMMIT. */
static const char pg_schema_v7_batches[] =
    "CREATE TABLE batches (\n"
    "  id text PRIMARY KEY, seq bigserial NOT NULL UNIQUE,\n"
    "  job_id text UNIQUE REFERENCES jobs(id) ON DELETE SET NULL,\n"
    "  input_file_id text NOT NULL, endpoint text NOT NULL,\n"
    "  completion_window text NOT NULL, model text, metadata jsonb,\n"
    "  lines int NOT NULL DEFAULT 0, errors jsonb,\n"
    "  created_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz NOT NULL,\n"
    "  cancelling_at timestamptz, expired_at timestamptz, finalizing_at timestamptz,\n"
    "  final_status text, finalized_at timestamptz,\n"
    "  output_file_id text, error_file_id text,\n"
    "  request_completed int, request_failed int,\n"
    "  lease_owner text, lease_until timestamptz);\n"
    "CREATE INDEX batches_open_idx ON batches (expires_at) WHERE finalized_at IS NULL;\n"
    "CREATE TABLE batch_lines (\n"
    "  batch_id text NOT NULL REFERENCES batches(id) ON DELETE CASCADE\n"
    "    DEFERRABLE INITIALLY DEFERRED,\n"
    "  ord int NOT NULL, line int NOT NULL, custom_id text NOT NULL,\n"
    "  first_item int NOT NULL, items int NOT NULL, is_base64 boolean NOT NULL,\n"
    "  PRIMARY KEY (batch_id, ord));\n";
/* The queue's pause state (POST /queue/pause, /queue/resume), shared by every process and
 * surviving restarts: one row per pause in force. model '' is the whole queue, any other
 * value one model. Every process reads the table twice a second (job_pause.c). */
static const char pg_schema_v8_queue_pauses[] =
    "CREATE TABLE queue_pauses (\n"
    "  model text PRIMARY KEY, paused_at timestamptz NOT NULL DEFAULT now());\n";

/* Webhooks' outbox (webhook.c; docs/webhooks.md). Events are written by triggers, in the
 * transaction that changes the state, so an event exists exactly when the change committed:
 *   jobs: status becomes completed, failed or cancelled (and differs from before), for a
 *     job that is not an OpenAI batch's (no batches row names it) -> job.<status>;
 *   batches: finalized_at set, by an UPDATE from NULL or an INSERT with it (a batch whose
 *     input failed validation) -> batch.<final_status>.
 * body is the JSON that is sent, fixed at the event (retries send the same bytes; receivers
 * dedupe by its id, the webhook-id header). Each process's worker copies new events into
 * webhook_deliveries, one row per configured endpoint that wants the type (dispatched_at
 * marks an event done so), then claims due rows with FOR UPDATE SKIP LOCKED, pushing
 * next_attempt_at past the send's timeout as a lease, and records each outcome there.
 * The triggers fire only in sessions with batchd.webhooks = on (set on every connection of
 * a process that has endpoints, bd_pg_options.is_webhooks_on): without webhooks configured,
 * finishing a job costs no event row. */
static const char pg_schema_v9_webhooks[] =
    "CREATE TABLE webhook_events (\n"
    "  id text PRIMARY KEY, seq bigserial NOT NULL UNIQUE, type text NOT NULL,\n"
    "  subject_id text NOT NULL, body text NOT NULL,\n"
    "  created_at timestamptz NOT NULL DEFAULT now(), dispatched_at timestamptz);\n"
    "CREATE INDEX webhook_events_new_idx ON webhook_events (seq) WHERE dispatched_at IS NULL;\n"
    "CREATE INDEX webhook_events_created_idx ON webhook_events (created_at);\n"
    "CREATE TABLE webhook_deliveries (\n"
    "  event_id text NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,\n"
    "  endpoint text NOT NULL, state text NOT NULL DEFAULT 'pending',\n"
    "  attempts int NOT NULL DEFAULT 0, next_attempt_at timestamptz NOT NULL DEFAULT now(),\n"
    "  last_attempt_at timestamptz, delivered_at timestamptz, last_status int,\n"
    "  last_error text, PRIMARY KEY (event_id, endpoint));\n"
    "CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)\n"
    "  WHERE state = 'pending';\n"
    "CREATE FUNCTION webhook_event_add(etype text, subject text, data json) RETURNS void\n"
    "LANGUAGE plpgsql AS $$\n"
    "DECLARE eid text := 'evt_' || replace(gen_random_uuid()::text, '-', '');\n"
    "BEGIN\n"
    "  INSERT INTO webhook_events (id, type, subject_id, body) VALUES (eid, etype, subject,\n"
    "    json_build_object('id', eid, 'object', 'event',\n"
    "      'created_at', floor(extract(epoch FROM now()))::bigint, 'type', etype,\n"
    "      'data', data)::text);\n"
    "END $$;\n"
    "CREATE FUNCTION webhook_on_job_status() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  IF NOT EXISTS (SELECT 1 FROM batches WHERE job_id = NEW.id) THEN\n"
    "    PERFORM webhook_event_add('job.' || NEW.status, NEW.id, json_build_object(\n"
    "      'id', NEW.id, 'status', NEW.status, 'operation', NEW.operation,\n"
    "      'total_items', NEW.total_items, 'processed_items', NEW.processed_items,\n"
    "      'failed_items', NEW.failed_items));\n"
    "  END IF;\n"
    "  RETURN NULL;\n"
    "END $$;\n"
    "CREATE TRIGGER jobs_webhook AFTER UPDATE OF status ON jobs FOR EACH ROW\n"
    "  WHEN (current_setting('batchd.webhooks', true) = 'on'\n"
    "        AND NEW.status IN ('completed', 'failed', 'cancelled')\n"
    "        AND NEW.status IS DISTINCT FROM OLD.status)\n"
    "  EXECUTE FUNCTION webhook_on_job_status();\n"
    "CREATE FUNCTION webhook_on_batch_final() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  PERFORM webhook_event_add('batch.' || NEW.final_status, NEW.id,\n"
    "    json_build_object('id', NEW.id));\n"
    "  RETURN NULL;\n"
    "END $$;\n"
    "CREATE TRIGGER batches_webhook_insert AFTER INSERT ON batches FOR EACH ROW\n"
    "  WHEN (current_setting('batchd.webhooks', true) = 'on' AND NEW.finalized_at IS NOT NULL\n"
    "        AND NEW.final_status IN ('completed', 'failed', 'expired', 'cancelled'))\n"
    "  EXECUTE FUNCTION webhook_on_batch_final();\n"
    "CREATE TRIGGER batches_webhook_update AFTER UPDATE OF finalized_at ON batches\n"
    "  FOR EACH ROW WHEN (current_setting('batchd.webhooks', true) = 'on'\n"
    "        AND OLD.finalized_at IS NULL AND NEW.finalized_at IS NOT NULL\n"
    "        AND NEW.final_status IN ('completed', 'failed', 'expired', 'cancelled'))\n"
    "  EXECUTE FUNCTION webhook_on_batch_final();\n";

static const struct pg_migration pg_migrations[] = {
    { 1, "initial", pg_schema_v1_initial },
    { 2, "embedding_cache", pg_schema_v2_embedding_cache },
    { 3, "packed_batches", pg_schema_v3_packed_batches },
    { 4, "packed_items", pg_schema_v4_packed_items },
    { 5, "vector_storage", pg_schema_v5_vector_storage },
    { 6, "files", pg_schema_v6_files },
    { 7, "batches", pg_schema_v7_batches },
    { 8, "queue_pauses", pg_schema_v8_queue_pauses },
    { 9, "webhooks", pg_schema_v9_webhooks },
};

#define PG_MIGRATIONS_COUNT (sizeof(pg_migrations) / sizeof(pg_migrations[0]))

/* bd_pg_migrate's state: one leased connection walking the table above, one step at a time. */
enum pg_mig_step { MIG_CHECK, MIG_APPLY, MIG_RECORD, MIG_COMMIT };

struct pg_migrate {
    struct bd_pg_conn *conn;
    bd_pg_done_cb cb;
    void *arg;
    unsigned index;
    enum pg_mig_step step;
};

static void migrate_on_result(int status, PGresult *res, void *arg);

static void migrate_finish(struct pg_migrate *m, int status)
{
    bd_pg_done_cb cb = m->cb;
    void *arg = m->arg;

    if (m->conn != NULL)
        bd_pg_release(m->conn);      /* rolls back a failed migration */
    free(m);
    cb(status, arg);
}

static void migrate_send(struct pg_migrate *m, enum pg_mig_step step, const char *sql,
                         int nparams, const char *const *values)
{
    int err;

    m->step = step;
    err = bd_pg_conn_query(m->conn, sql, nparams, values, NULL, NULL, 0, migrate_on_result, m);
    if (err < 0)
        migrate_finish(m, err);
}

/* Each migration: BEGIN, take the advisory lock (held to COMMIT, so a second process
 * waits here and then sees the version recorded), make sure schema_migrations exists,
 * look the version up; then apply and record it, or just commit. */
static void migrate_next(struct pg_migrate *m)
{
    char sql[768];

    if (m->index >= PG_MIGRATIONS_COUNT) {
        migrate_finish(m, BD_OK);
        return;
    }
    snprintf(sql, sizeof(sql),
             "BEGIN; SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK_KEY ");"
             " CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
             " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());"
             " SELECT count(*) FROM schema_migrations WHERE version = %d",
             pg_migrations[m->index].version);
    migrate_send(m, MIG_CHECK, sql, 0, NULL);
}

static void migrate_on_result(int status, PGresult *res, void *arg)
{
    struct pg_migrate *m = arg;
    const struct pg_migration *mig = &pg_migrations[m->index];
    char version[16];
    const char *values[2];

    if (status < 0) {
        /* Only this function has the server's message, so it is logged here. */
        bd_log(BD_LOG_ERROR, "pg", "migration failed version=%d name=%s step=%d err=\"%s\"",
               mig->version, mig->name, (int)m->step,
               res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                           : bd_strerror(status));
        migrate_finish(m, status);
        return;
    }
    switch (m->step) {
    case MIG_CHECK:
        if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0) {
            migrate_send(m, MIG_COMMIT, "COMMIT", 0, NULL);
            return;
        }
        migrate_send(m, MIG_APPLY, mig->sql, 0, NULL);
        return;
    case MIG_APPLY:
        snprintf(version, sizeof(version), "%d", mig->version);
        values[0] = version;
        values[1] = mig->name;
        migrate_send(m, MIG_RECORD,
                     "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", 2, values);
        return;
    case MIG_RECORD:
        bd_log(BD_LOG_INFO, "pg", "migration applied version=%d name=%s", mig->version,
               mig->name);
        migrate_send(m, MIG_COMMIT, "COMMIT", 0, NULL);
        return;
    case MIG_COMMIT:
        m->index++;
        migrate_next(m);
        return;
    }
}

static void migrate_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct pg_migrate *m = arg;

    if (status < 0) {
        migrate_finish(m, status);
        return;
    }
    m->conn = conn;
    migrate_next(m);
}

int bd_pg_migrate(struct bd_pg *pg, bd_pg_done_cb cb, void *arg)
{
    struct pg_migrate *m;
    int err;

    if (pg == NULL || cb == NULL)
        return BD_EINVAL;
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return BD_ENOMEM;
    m->cb = cb;
    m->arg = arg;
    err = bd_pg_acquire(pg, migrate_on_conn, m);
    if (err < 0)
        free(m);
    return err;
}

