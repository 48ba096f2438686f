/* pg_schema.c -- the versioned PostgreSQL schema that bd_pg_migrate applies, in order.
 *
 * Owns nothing but constant tables. Each entry is applied once, in its own transaction,
 * and recorded in schema_migrations (see bd_pg_migrate in pg_store.c). Never edit an entry
 * that has shipped: add a new version instead.  SPDX-License-Identifier: MIT
 */
#include "batchd/pg_store.h"

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

const struct bd__pg_migration bd__pg_migrations[] = {
    { 1, "initial", pg_schema_v1_initial },
    { 2, "embedding_cache", pg_schema_v2_embedding_cache },
    { 3, "packed_batches", pg_schema_v3_packed_batches },
};

const unsigned bd__pg_migrations_count =
    (unsigned)(sizeof(bd__pg_migrations) / sizeof(bd__pg_migrations[0]));
