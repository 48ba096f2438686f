/* api_jobs.c -- the write side of the job API: submit, cancel, retry.
 *
 * Owns each request's small state record from the handler to its response. Loop thread
 * only. Submit validates everything before anything is written, then records the job and
 * its batches in one PostgreSQL transaction (so a job is either wholly there or not at
 * all), then queues it in Redis. PostgreSQL holds the truth: a job whose enqueue failed is
 * still accepted and is queued by the engine's rebuild from PostgreSQL.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/api.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/job_engine.h"
#include "batchd/json_scan.h"
#include "batchd/log.h"
#include "batchd/pg_store.h"
#include "batchd/redis_queue.h"
#include "batchd/router.h"
#include "batchd/server.h"
#include "batchd/sha256.h"

#include <ctype.h>
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define API_ITEM_ID_MAX 256
#define API_TEXT_MAX (1u << 20)
#define API_TRIM_ABOVE (4u << 20)

/* ---- validation -------------------------------------------------------------------- */

struct api_invalid {
    char field[96];
    char message[256];
};

static int api_fail(struct api_invalid *inv, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int api_fail(struct api_invalid *inv, const char *field, const char *fmt, ...)
{
    va_list ap;
    snprintf(inv->field, sizeof(inv->field), "%s", field);
    va_start(ap, fmt);
    vsnprintf(inv->message, sizeof(inv->message), fmt, ap);
    va_end(ap);
    return BD_EINVAL;
}

static bool api_is_collection_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || !(islower((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

static bool api_is_item_id(const char *s, size_t n)
{
    if (n == 0 || n > API_ITEM_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* An open-addressed set of the job's item ids, to reject duplicates: the upsert of one
 * batch may not touch the same (collection, id) twice. Keys point into memory that lives
 * until validation ends (the body or a kept jansson tree). */
struct api_idkey {
    const char *s;
    size_t len;
};

struct api_idset {
    struct api_idkey *slots;
    size_t mask;
};

static uint64_t api_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* 1 if added, 0 if present, -1 on ENOMEM. */
static int api_idset_add(struct api_idset *set, size_t expected, const char *id, size_t len)
{
    if (set->slots == NULL) {
        size_t cap = 16;
        while (cap < expected * 2)
            cap <<= 1;
        set->slots = calloc(cap, sizeof(*set->slots));
        if (set->slots == NULL)
            return -1;
        set->mask = cap - 1;
    }
    for (size_t i = api_hash(id, len) & set->mask;; i = (i + 1) & set->mask) {
        struct api_idkey *k = &set->slots[i];
        if (k->s == NULL) {
            *k = (struct api_idkey){ id, len };
            return 1;
        }
        if (k->len == len && memcmp(k->s, id, len) == 0)
            return 0;
    }
}

struct api_submit {
    struct bd_http_request *req;
    struct bd_server *srv;
    json_t *body;                     /* the parsed request (owns the items) */
    size_t body_len;
    json_t *data;                     /* borrowed from body (the jansson path) */
    const char *data_raw;             /* fast path: the "data" array in the request body */
    const char *body_end;
    struct bd_pg_copybuf *packed;     /* fast path: bulk_insert batches, packed per batch */
    json_t *kept;                     /* fast path: items parsed by jansson (ids live here) */
    enum bd_job_operation op;
    const char *model;                /* borrowed from body; NULL for bulk_insert */
    char collection[64];
    int priority;
    unsigned batch_size;
    double timeout_s;
    int max_retries;
    unsigned items;
    unsigned batches;
    unsigned dim;
    const char *idem_key;             /* header, arena */
    char request_hash[65];
    char job_id[160];
    char created_at[32];
    double created_unix;
    long long seq;
    long long queue_position;
    long long queued_ahead;           /* items queued before this job (Redis counter) */
    json_t *metadata;                 /* {submitted_by, integration_pattern, ...} (owned) */
    struct bd_pg_conn *conn;
    struct bd_pg_copybuf copy;        /* the batches, as binary COPY rows */
};

static const char *const api_submit_keys[] = { "operation", "model", "collection", "data",
                                               "options", "metadata", NULL };
static const char *const api_option_keys[] = { "batch_size", "priority", "timeout_s",
                                               "max_retries", NULL };

static const char *api_unknown_key(json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok)
            return key;
    }
    return NULL;
}

/* One item i of n: shape, id (unique in the job), metadata, text or embedding. */
static int api_validate_item(struct api_submit *s, json_t *item, size_t i, size_t n,
                             struct api_idset *ids, struct api_invalid *inv)
{
    char field[64];

    snprintf(field, sizeof(field), "data[%zu]", i);
    if (!json_is_object(item))
        return api_fail(inv, field, "must be an object");
    const char *k;
    json_t *v;
    json_object_foreach(item, k, v) {
        if (strcmp(k, "id") && strcmp(k, "metadata") &&
            strcmp(k, s->op == BD_OP_BULK_EMBED ? "text" : "embedding")) {
            snprintf(field, sizeof(field), "data[%zu].%.32s", i, k);
            return api_fail(inv, field, "unknown field");
        }
    }
    json_t *id = json_object_get(item, "id");
    if (id) {
        snprintf(field, sizeof(field), "data[%zu].id", i);
        if (!json_is_string(id) || !api_is_item_id(json_string_value(id),
                                                   json_string_length(id)))
            return api_fail(inv, field, "must be a string of 1 to %d printable characters",
                            API_ITEM_ID_MAX);
        int added = api_idset_add(ids, n, json_string_value(id), json_string_length(id));
        if (added < 0)
            return BD_ENOMEM;
        if (added == 0)
            return api_fail(inv, field, "duplicate id '%s' in this job", json_string_value(id));
    } else if (s->op == BD_OP_BULK_INSERT) {
        snprintf(field, sizeof(field), "data[%zu].id", i);
        return api_fail(inv, field, "is required for bulk_insert");
    }
    json_t *meta = json_object_get(item, "metadata");
    if (meta && !json_is_object(meta) && !json_is_null(meta)) {
        snprintf(field, sizeof(field), "data[%zu].metadata", i);
        return api_fail(inv, field, "must be an object");
    }
    if (s->op == BD_OP_BULK_EMBED) {
        json_t *t = json_object_get(item, "text");
        snprintf(field, sizeof(field), "data[%zu].text", i);
        if (!json_is_string(t) || json_string_length(t) == 0)
            return api_fail(inv, field, "must be a non-empty string");
        if (json_string_length(t) > API_TEXT_MAX)
            return api_fail(inv, field, "is longer than %u bytes", API_TEXT_MAX);
        return BD_OK;
    }
    json_t *emb = json_object_get(item, "embedding");
    snprintf(field, sizeof(field), "data[%zu].embedding", i);
    if (!json_is_array(emb) || json_array_size(emb) == 0)
        return api_fail(inv, field, "must be a non-empty array of numbers");
    if (s->dim == 0) {
        if (json_array_size(emb) > 65536)
            return api_fail(inv, field, "has more than 65536 dimensions");
        s->dim = (unsigned)json_array_size(emb);
    } else if (json_array_size(emb) != s->dim) {
        return api_fail(inv, field, "has %zu dimensions; the job's first item has %u",
                        json_array_size(emb), s->dim);
    }
    size_t d;
    json_t *x;
    json_array_foreach(emb, d, x) {
        double f = json_number_value(x);
        if (!json_is_number(x) || !isfinite(f) || fabs(f) > 3.4e38) {
            snprintf(field, sizeof(field), "data[%zu].embedding[%zu]", i, d);
            return api_fail(inv, field, "must be a finite number in float range");
        }
    }
    return BD_OK;
}

static int api_validate_items(struct api_submit *s, struct api_invalid *inv)
{
    struct api_idset ids = { 0 };
    int rc = BD_OK;
    size_t i;
    json_t *item;

    json_array_foreach(s->data, i, item) {
        if ((rc = api_validate_item(s, item, i, json_array_size(s->data), &ids, inv)) < 0)
            break;
    }
    free(ids.slots);
    return rc;
}

/* bulk_insert items are stored packed, in the form the job engine writes them: per item
 * the id and the metadata JSON as text fields, then the embedding as a ready binary-COPY
 * real[] field. The floats are parsed once, at submit, and never formatted or parsed
 * again. row holds the item's floats; meta is scratch. */
static void api_pack_item(struct bd_pg_copybuf *out, const char *id, size_t id_len,
                          const char *meta, size_t meta_len, const float *row, unsigned dim)
{
    bd_pg_copybuf_text(out, id, id_len);
    bd_pg_copybuf_text(out, meta, meta_len);
    bd_pg_copybuf_float4_array(out, row, dim);
}

/* Pack a validated jansson item. */
static int api_pack_json_item(struct api_submit *s, json_t *item, struct bd_pg_copybuf *out,
                              float *row, struct bd_buf *meta)
{
    json_t *id = json_object_get(item, "id"), *m = json_object_get(item, "metadata");
    json_t *emb = json_object_get(item, "embedding");

    bd_buf_reset(meta);
    if (json_is_object(m)) {
        size_t need = json_dumpb(m, NULL, 0, JSON_COMPACT);
        if (bd_buf_reserve(meta, need) != BD_OK)
            return BD_ENOMEM;
        meta->len = json_dumpb(m, meta->data, need, JSON_COMPACT);
    } else {
        bd_buf_puts(meta, "{}");
    }
    for (unsigned d = 0; d < s->dim; d++)
        row[d] = (float)json_number_value(json_array_get(emb, d));
    api_pack_item(out, json_string_value(id), json_string_length(id), meta->data, meta->len,
                  row, s->dim);
    return meta->is_failed ? BD_ENOMEM : out->err;
}

/* The fast path for one bulk_insert item at p..end: no jansson tree for the embedding
 * (it is parsed straight into row). Returns BD_OK (packed), BD_EINVAL (inv filled),
 * BD_ENOMEM, or 1 when the item needs the jansson path (anything unusual: escapes in the
 * id, an unknown member, a bad number...), which then reports the precise error. */
static int api_fast_item(struct api_submit *s, const char *p, const char *end, size_t i,
                         size_t n, struct api_idset *ids, float *row, struct bd_buf *meta,
                         struct bd_pg_copybuf *out, struct api_invalid *inv,
                         const char **item_end)
{
    const char *id = NULL, *mv = NULL, *mend = NULL, *ev = NULL;
    size_t id_len = 0;
    unsigned count = 0, cap = s->dim ? s->dim : 65536;

    if (*p != '{')
        return 1;
    p = bd_json_skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *k = p + 1, *kend = memchr(k, '"', (size_t)(end - k));
        if (kend == NULL || memchr(k, '\\', (size_t)(kend - k)) != NULL)
            return 1;
        const char *colon = bd_json_skip_ws(kend + 1, end);
        if (colon == end || *colon != ':')
            return 1;
        const char *v = bd_json_skip_ws(colon + 1, end);
        size_t klen = (size_t)(kend - k);
        /* The embedding is parsed where it stands (one pass); other values are skipped. */
        const char *vend = klen == 9 && memcmp(k, "embedding", 9) == 0
                               ? bd_json_parse_float_array(v, end, row, cap, &count)
                               : bd_json_skip_value(v, end);
        if (vend == NULL)
            return 1;
        if (klen == 2 && memcmp(k, "id", 2) == 0) {
            if (*v != '"' || memchr(v + 1, '\\', (size_t)(vend - v - 1)) != NULL)
                return 1;
            id = v + 1;
            id_len = (size_t)(vend - v - 2);
        } else if (klen == 8 && memcmp(k, "metadata", 8) == 0) {
            mv = v;
            mend = vend;
        } else if (klen == 9 && memcmp(k, "embedding", 9) == 0) {
            ev = v;
        } else {
            return 1;
        }
        p = bd_json_skip_ws(vend, end);
        if (p < end && *p == ',')
            p = bd_json_skip_ws(p + 1, end);
        else
            break;                                  /* no comma: '}' or an error */
    }
    if (p == end || *p != '}')
        return 1;
    *item_end = p + 1;
    if (id == NULL || ev == NULL || !api_is_item_id(id, id_len) || count == 0 ||
        count > cap || (s->dim && count != s->dim))
        return 1;
    bd_buf_reset(meta);
    if (mv == NULL || *mv == 'n') {
        bd_buf_puts(meta, "{}");
    } else if (*mv == '{') {
        json_t *m = json_loadb(mv, (size_t)(mend - mv), 0, NULL);
        if (m == NULL)
            return 1;
        size_t need = json_dumpb(m, NULL, 0, JSON_COMPACT);
        if (bd_buf_reserve(meta, need) == BD_OK)
            meta->len = json_dumpb(m, meta->data, need, JSON_COMPACT);
        json_decref(m);
    } else {
        return 1;
    }
    int added = api_idset_add(ids, n, id, id_len);
    if (added < 0 || meta->is_failed)
        return BD_ENOMEM;
    if (added == 0) {
        char field[64];
        snprintf(field, sizeof(field), "data[%zu].id", i);
        return api_fail(inv, field, "duplicate id '%.*s' in this job", (int)id_len, id);
    }
    if (s->dim == 0)
        s->dim = count;
    api_pack_item(out, id, id_len, meta->data, meta->len, row, s->dim);
    return out->err;
}

/* bulk_insert's data array, straight from the request body: items are validated and
 * packed one at a time, so no tree of the whole job is ever built (peak memory is the body
 * plus the packed batches). */
static int api_fast_insert_items(struct api_submit *s, struct api_invalid *inv)
{
    const struct bd_config *cfg = s->srv->cfg;
    const char *p = s->data_raw, *end = s->body_end, *q;
    struct api_idset ids = { 0 };
    struct bd_buf meta;
    size_t n = 0;
    int rc = BD_OK;

    if (*p != '[')
        return api_fail(inv, "data", "must be a non-empty array");
    for (q = bd_json_skip_ws(p + 1, end); q < end && *q != ']';) {
        q = bd_json_skip_ws(bd_json_skip_value(q, end), end);   /* structure was checked */
        n++;
        if (q < end && *q == ',')
            q = bd_json_skip_ws(q + 1, end);
    }
    if (n == 0)
        return api_fail(inv, "data", "must be a non-empty array");
    if (n > cfg->max_items_per_job)
        return api_fail(inv, "data", "has %zu items; the limit is %u per job", n,
                        cfg->max_items_per_job);
    s->items = (unsigned)n;
    s->batches = (s->items + s->batch_size - 1) / s->batch_size;
    s->packed = calloc(s->batches, sizeof(*s->packed));
    s->kept = json_array();
    float *row = malloc(sizeof(float) * 65536);
    if (s->packed == NULL || s->kept == NULL || row == NULL) {
        free(row);
        return BD_ENOMEM;
    }
    bd_buf_init(&meta);
    q = bd_json_skip_ws(p + 1, end);
    for (size_t i = 0; i < n && rc == BD_OK; i++) {
        const char *item_end = NULL;
        struct bd_pg_copybuf *out = &s->packed[i / s->batch_size];
        rc = api_fast_item(s, q, end, i, n, &ids, row, &meta, out, inv, &item_end);
        if (rc == 1) {
            item_end = bd_json_skip_value(q, end);
            json_t *item = json_loadb(q, (size_t)(item_end - q), 0, NULL);
            char field[64];
            snprintf(field, sizeof(field), "data[%zu]", i);
            if (item == NULL) {
                rc = api_fail(inv, field, "is not valid JSON");
            } else if (json_array_append_new(s->kept, item) < 0) {
                rc = BD_ENOMEM;
            } else if ((rc = api_validate_item(s, item, i, n, &ids, inv)) == BD_OK) {
                rc = api_pack_json_item(s, item, out, row, &meta);
            }
        }
        q = bd_json_skip_ws(item_end, end);
        if (q < end && *q == ',')
            q = bd_json_skip_ws(q + 1, end);
    }
    free(row);
    free(ids.slots);
    bd_buf_free(&meta);
    return rc;
}

/* The fast path applies to well-formed bulk_insert bodies: the members other than "data"
 * become a small jansson object (validated as usual); "data" stays in the body. Returns
 * true when applied. */
static bool api_fast_body(struct api_submit *s, const char *body, size_t len)
{
    const char *end = body + len, *root = bd_json_skip_ws(body, end), *p;

    /* No separate structural pass over the whole body: every member value is skipped
     * (checked) below, and the closing brace and trailing space are checked at the end. */
    if (root == end || *root != '{')
        return false;
    p = bd_json_find_member(root, end, "operation");
    if (p == NULL || end - p < 13 || memcmp(p, "\"bulk_insert\"", 13) != 0)
        return false;
    json_t *obj = json_object();
    if (obj == NULL)
        return false;
    for (p = bd_json_skip_ws(root + 1, end); p < end && *p == '"';) {
        const char *k = p + 1, *kend = memchr(k, '"', (size_t)(end - k));
        if (kend == NULL || memchr(k, '\\', (size_t)(kend - k)) != NULL)
            goto fail;
        const char *colon = bd_json_skip_ws(kend + 1, end);
        if (colon == end || *colon != ':')
            goto fail;
        const char *v = bd_json_skip_ws(colon + 1, end);
        const char *vend = bd_json_skip_value(v, end);
        if (vend == NULL)
            goto fail;
        if (kend - k == 4 && memcmp(k, "data", 4) == 0) {
            s->data_raw = v;
        } else {
            json_t *val = json_loadb(v, (size_t)(vend - v), JSON_DECODE_ANY, NULL);
            if (val == NULL || json_object_setn_new(obj, k, (size_t)(kend - k), val) < 0)
                goto fail;
        }
        p = bd_json_skip_ws(vend, end);
        if (p < end && *p == ',') {
            p = bd_json_skip_ws(p + 1, end);
            if (p == end || *p != '"')
                goto fail;                          /* trailing comma */
        } else {
            break;                                  /* no comma: '}' or an error */
        }
    }
    if (p == end || *p != '}' || bd_json_skip_ws(p + 1, end) != end)
        goto fail;
    /* A repeated "operation" keeps its last value in the object: the fast path is only
     * for bodies that really are bulk_insert. */
    if (!json_is_string(json_object_get(obj, "operation")) ||
        strcmp(json_string_value(json_object_get(obj, "operation")), "bulk_insert") != 0)
        goto fail;
    s->body = obj;
    s->body_end = end;
    if (s->data_raw)
        json_object_set_new(obj, "data", json_true());    /* present; checked by the scan */
    return true;
fail:
    json_decref(obj);
    s->data_raw = NULL;
    return false;
}

/* Collections default to "<model>_embeddings" with the model name folded into
 * ^[a-z_][a-z0-9_]*$ (lower case; anything else becomes '_'). */
static void api_default_collection(const char *model, char *out, size_t outlen)
{
    size_t n = 0;
    if (!islower((unsigned char)tolower((unsigned char)model[0])))
        out[n++] = '_';
    for (const char *p = model; *p && n + 12 < outlen; p++) {
        unsigned char c = (unsigned char)tolower((unsigned char)*p);
        out[n++] = (islower(c) || isdigit(c)) ? (char)c : '_';
    }
    snprintf(out + n, outlen - n, "_embeddings");
}

static int api_validate_submit(struct api_submit *s, struct api_invalid *inv)
{
    const struct bd_config *cfg = s->srv->cfg;
    json_t *b = s->body, *v;
    const char *bad;

    if (!json_is_object(b))
        return api_fail(inv, "body", "must be a JSON object");
    if ((bad = api_unknown_key(b, api_submit_keys)) != NULL)
        return api_fail(inv, bad, "unknown field");
    v = json_object_get(b, "operation");
    if (!json_is_string(v))
        return api_fail(inv, "operation", "is required: bulk_embed or bulk_insert");
    if (bd_job_operation_parse(json_string_value(v), &s->op) != BD_OK)
        return api_fail(inv, "operation", "must be bulk_embed or bulk_insert");

    v = json_object_get(b, "model");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return api_fail(inv, "model", "must be a string");
        s->model = json_string_value(v);
    }
    if (s->op == BD_OP_BULK_EMBED) {
        if (s->model == NULL)
            return api_fail(inv, "model", "is required for bulk_embed");
        const struct bd_model_config *mc = bd_config_get_model(cfg, s->model);
        if (mc == NULL)
            return api_fail(inv, "model", "unknown model '%.64s'", s->model);
        s->dim = mc->dimensions;
    } else if (s->model && strlen(s->model) > 128) {
        return api_fail(inv, "model", "is longer than 128 characters");
    }

    v = json_object_get(b, "collection");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !api_is_collection_name(json_string_value(v)))
            return api_fail(inv, "collection", "must match ^[a-z_][a-z0-9_]{0,62}$");
        snprintf(s->collection, sizeof(s->collection), "%s", json_string_value(v));
    } else if (s->op == BD_OP_BULK_INSERT) {
        return api_fail(inv, "collection", "is required for bulk_insert");
    } else {
        api_default_collection(s->model, s->collection, sizeof(s->collection));
    }

    v = json_object_get(b, "metadata");
    if (v && !json_is_object(v) && !json_is_null(v))
        return api_fail(inv, "metadata", "must be an object");

    s->batch_size = cfg->default_batch_size;
    s->priority = BD_PRIO_NORMAL;
    s->timeout_s = cfg->job_timeout_s;
    s->max_retries = (int)cfg->retry_attempts;
    json_t *opt = json_object_get(b, "options");
    if (opt && !json_is_null(opt)) {
        if (!json_is_object(opt))
            return api_fail(inv, "options", "must be an object");
        if ((bad = api_unknown_key(opt, api_option_keys)) != NULL) {
            char f[96];
            snprintf(f, sizeof(f), "options.%.80s", bad);
            return api_fail(inv, f, "unknown option");
        }
        if ((v = json_object_get(opt, "batch_size")) != NULL) {
            if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                json_integer_value(v) > (json_int_t)cfg->max_batch_size)
                return api_fail(inv, "options.batch_size", "must be an integer from 1 to %u",
                                cfg->max_batch_size);
            s->batch_size = (unsigned)json_integer_value(v);
        }
        if ((v = json_object_get(opt, "priority")) != NULL) {
            if (!json_is_string(v) ||
                bd_job_priority_parse(json_string_value(v), &s->priority) != BD_OK)
                return api_fail(inv, "options.priority", "must be high, normal or low");
        }
        if ((v = json_object_get(opt, "timeout_s")) != NULL) {
            if (!json_is_number(v) || !(json_number_value(v) > 0) ||
                json_number_value(v) > 30 * 86400.0)
                return api_fail(inv, "options.timeout_s",
                                "must be a number of seconds above 0 and at most 2592000");
            s->timeout_s = json_number_value(v);
        }
        if ((v = json_object_get(opt, "max_retries")) != NULL) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100)
                return api_fail(inv, "options.max_retries", "must be an integer from 0 to 100");
            s->max_retries = (int)json_integer_value(v);
        }
    }

    if (s->data_raw)
        return api_fast_insert_items(s, inv);
    s->data = json_object_get(b, "data");
    if (!json_is_array(s->data) || json_array_size(s->data) == 0)
        return api_fail(inv, "data", "must be a non-empty array");
    if (json_array_size(s->data) > cfg->max_items_per_job)
        return api_fail(inv, "data", "has %zu items; the limit is %u per job",
                        json_array_size(s->data), cfg->max_items_per_job);
    s->items = (unsigned)json_array_size(s->data);
    s->batches = (s->items + s->batch_size - 1) / s->batch_size;
    return api_validate_items(s, inv);
}

/* ---- submit: the async chain ---------------------------------------------------------- */

static void api_submit_free(struct api_submit *s)
{
    bd_pg_copybuf_free(&s->copy);
    for (unsigned b = 0; s->packed && b < s->batches; b++)
        bd_pg_copybuf_free(&s->packed[b]);
    free(s->packed);
    json_decref(s->kept);
    if (s->conn)
        bd_pg_release(s->conn);
    json_decref(s->metadata);
    json_decref(s->body);
    /* A big job's parsed body is millions of small jansson allocations; hand the freed
     * heap back to the system so the process does not keep the submit's peak as its RSS
     * while it works through the job batch by batch. */
    if (s->body_len > API_TRIM_ABOVE)
        malloc_trim(0);
    free(s);
}

static void api_submit_error(struct api_submit *s, int err, const char *message)
{
    if (err == BD_EPG || err == BD_EREDIS)
        bd_log(BD_LOG_WARN, "api", "event=submit_failed err=%s msg=\"%s\"", bd_err_name(err),
               message ? message : "");
    bd_http_respond_err(s->req, err, message, NULL);
    api_submit_free(s);
}

static void api_format_time(double unix_s, char *out, size_t outlen)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void api_submit_respond(struct api_submit *s, int status)
{
    const char *prio = bd_job_priority_name(s->priority);
    double tput = bd_job_engine_get_throughput(s->srv->jobs);
    json_t *eta = json_null();

    /* Completion estimate from observed throughput (items/s over recent jobs, all
     * processes): the items queued ahead of this job plus its own. Unknown until some job
     * has finished. */
    if (tput > 0 && s->queue_position > 0) {
        char when[32];
        double ahead = (double)s->queued_ahead;
        api_format_time(s->created_unix + (ahead + s->items) / tput, when, sizeof(when));
        eta = json_string(when);
    }
    json_t *j = json_pack("{s:s,s:s,s:s,s:s?,s:s,s:i,s:i,s:s,s:o,s:o,s:s,s:O}",
                          "job_id", s->job_id, "status", "queued",
                          "operation", bd_job_operation_name(s->op), "model", s->model,
                          "collection", s->collection, "items_count", (int)s->items,
                          "batch_size", (int)s->batch_size, "priority", prio,
                          "estimated_completion", eta,
                          "queue_position",
                          s->queue_position > 0 ? json_integer(s->queue_position) : json_null(),
                          "created_at", s->created_at, "metadata", s->metadata);
    char loc[256];
    snprintf(loc, sizeof(loc), "Location: " BD_API_PREFIX "/jobs/%s\r\n", s->job_id);
    bd__api_respond_json(s->req, status, j, loc);
    api_submit_free(s);
}

static void api_on_enqueued(int status, long long position, void *arg)
{
    struct api_submit *s = arg;

    if (status == BD_OK)
        s->queue_position = position;
    else
        bd_log(BD_LOG_WARN, "api", "job=%s event=enqueue_failed err=%s "
               "note=queued_by_rebuild_from_postgres", s->job_id, bd_strerror(status));
    bd_job_engine_kick(s->srv->jobs);
    bd_log(BD_LOG_INFO, "api", "job=%s event=submitted operation=%s items=%u batches=%u "
           "priority=%s", s->job_id, bd_job_operation_name(s->op), s->items, s->batches,
           bd_job_priority_name(s->priority));
    api_submit_respond(s, 202);
}

static void api_submit_step_existing(struct api_submit *s);

/* The transaction's last step answered: COMMIT done (or anything before it failed). */
static void api_on_job_written(int status, PGresult *res, void *arg)
{
    struct api_submit *s = arg;

    bd_pg_release(s->conn);                 /* rolls back when something failed */
    s->conn = NULL;
    bd_pg_copybuf_free(&s->copy);
    if (status < 0) {
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (state && strcmp(state, "23505") == 0 && s->idem_key) {
            /* Another request with this key won the race: answer as for a repeat. */
            api_submit_step_existing(s);
            return;
        }
        api_submit_error(s, BD_EPG, res ? PQresultErrorMessage(res) : "connection lost");
        return;
    }
    if (bd_rq_enqueue(s->srv->rq, s->job_id, (enum bd_priority)s->priority, s->seq,
                      s->model ? s->model : "", s->items, api_on_enqueued, s) < 0)
        api_on_enqueued(BD_EREDIS, 0, s);
}

static void api_on_batches_copied(int status, PGresult *res, void *arg)
{
    struct api_submit *s = arg;
    int rc;

    if (status < 0) {
        api_on_job_written(status, res, s);
        return;
    }
    rc = bd_pg_conn_query(s->conn, "COMMIT", 0, NULL, NULL, NULL, 0, api_on_job_written, s);
    if (rc < 0)
        api_on_job_written(BD_EPG, NULL, s);
}

/* The jansson path's bulk_insert batch (bodies the fast path did not take). */
static int api_pack_insert_batch(struct api_submit *s, unsigned first, unsigned count,
                                 struct bd_pg_copybuf *out, float *row, struct bd_buf *meta)
{
    int rc = BD_OK;
    for (unsigned i = first; i < first + count && rc == BD_OK; i++)
        rc = api_pack_json_item(s, json_array_get(s->data, i), out, row, meta);
    return rc;
}

/* One row per batch: (job_id, batch_no, first_index, item_count, items, payload), where
 * bulk_embed batches keep their items as a compact JSON array and bulk_insert batches as
 * the packed payload above. */
static int api_build_batches(struct api_submit *s)
{
    struct bd_pg_copybuf packed;
    struct bd_buf meta;
    float *row = NULL;
    int rc = BD_OK;

    bd_pg_copybuf_init(&packed);
    bd_buf_init(&meta);
    if (s->op == BD_OP_BULK_INSERT && !s->packed &&
        (row = malloc(sizeof(float) * s->dim)) == NULL)
        return BD_ENOMEM;
    bd_pg_copybuf_begin(&s->copy);
    for (unsigned b = 0; b < s->batches && rc == BD_OK; b++) {
        unsigned first = b * s->batch_size;
        unsigned cnt = s->items - first < s->batch_size ? s->items - first : s->batch_size;
        bd_pg_copybuf_row(&s->copy, 6);
        bd_pg_copybuf_text(&s->copy, s->job_id, strlen(s->job_id));
        bd_pg_copybuf_int4(&s->copy, (int32_t)b);
        bd_pg_copybuf_int4(&s->copy, (int32_t)first);
        bd_pg_copybuf_int4(&s->copy, (int32_t)cnt);
        if (s->op == BD_OP_BULK_INSERT && s->packed) {
            bd_pg_copybuf_null(&s->copy);
            bd_pg_copybuf_bytes(&s->copy, s->packed[b].data, s->packed[b].len);
            bd_pg_copybuf_free(&s->packed[b]);     /* copied: keep the peak at one copy */
        } else if (s->op == BD_OP_BULK_INSERT) {
            bd_pg_copybuf_reset(&packed);
            rc = api_pack_insert_batch(s, first, cnt, &packed, row, &meta);
            bd_pg_copybuf_null(&s->copy);
            bd_pg_copybuf_bytes(&s->copy, packed.data, packed.len);
        } else {
            json_t *slice = json_array();
            for (unsigned i = 0; slice && i < cnt; i++)
                json_array_append(slice, json_array_get(s->data, first + i));
            char *text = slice ? json_dumps(slice, JSON_COMPACT) : NULL;
            json_decref(slice);
            if (text == NULL) {
                rc = BD_ENOMEM;
                break;
            }
            bd_pg_copybuf_text(&s->copy, text, strlen(text));
            bd_pg_copybuf_null(&s->copy);
            free(text);
        }
    }
    if (rc == BD_OK)
        rc = bd_pg_copybuf_end(&s->copy);
    free(row);
    bd_buf_free(&meta);
    bd_pg_copybuf_free(&packed);
    return rc;
}

static void api_on_job_row(int status, PGresult *res, void *arg)
{
    struct api_submit *s = arg;
    int rc;

    if (status < 0) {
        api_on_job_written(status, res, s);
        return;
    }
    rc = api_build_batches(s);
    if (rc == BD_OK)
        rc = bd_pg_conn_copy_in(s->conn,
                                "COPY job_batches (job_id, batch_no, first_index, item_count, "
                                "items, payload) FROM STDIN WITH (FORMAT binary)",
                                s->copy.data, s->copy.len, api_on_batches_copied, s);
    if (rc < 0) {
        bd_pg_release(s->conn);
        s->conn = NULL;
        bd_pg_copybuf_free(&s->copy);
        api_submit_error(s, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG, NULL);
    }
}

/* One transaction: BEGIN and the job row (pipelined), the batches (binary COPY), COMMIT.
 * The job is therefore wholly there or not at all. */
static void api_on_conn(int status, struct bd_pg_conn *conn, void *arg)
{
    struct api_submit *s = arg;
    int rc = BD_ENOMEM;

    if (status < 0) {
        api_submit_error(s, BD_EPG, "no database connection available");
        return;
    }
    s->conn = conn;
    char prio[8], bs[16], items[16], nb[16], seq[24], created[32], timeout[32], retries[16];
    snprintf(prio, sizeof(prio), "%d", s->priority);
    snprintf(bs, sizeof(bs), "%u", s->batch_size);
    snprintf(items, sizeof(items), "%u", s->items);
    snprintf(nb, sizeof(nb), "%u", s->batches);
    snprintf(seq, sizeof(seq), "%lld", s->seq);
    snprintf(created, sizeof(created), "%.3f", s->created_unix);
    snprintf(timeout, sizeof(timeout), "%.3f", s->timeout_s);
    snprintf(retries, sizeof(retries), "%d", s->max_retries);
    char *metadata = json_dumps(s->metadata, JSON_COMPACT);
    json_t *opt = json_pack("{s:i,s:s,s:f,s:i,s:i}", "batch_size", (int)s->batch_size,
                            "priority", bd_job_priority_name(s->priority), "timeout_s",
                            s->timeout_s, "max_retries", s->max_retries, "dimension",
                            (int)s->dim);
    char *options = opt ? json_dumps(opt, JSON_COMPACT) : NULL;
    json_decref(opt);
    if (metadata && options) {
        const char *jparams[16] = { s->job_id, seq, bd_job_operation_name(s->op), s->model,
                                    s->collection, prio, bs, items, nb, timeout, retries,
                                    options, metadata, s->idem_key,
                                    s->idem_key ? s->request_hash : NULL,
                                    created };
        const char *const sqls[2] = {
            "BEGIN",
            "INSERT INTO jobs (id, seq, operation, model, collection, status, priority, "
            "batch_size, total_items, total_batches, timeout_s, max_retries, options, "
            "metadata, idempotency_key, request_hash, created_at, updated_at) VALUES "
            "($1, $2::int8, $3, $4, $5, 'queued', $6::int2, $7::int, $8::int, $9::int, "
            "$10::float8, $11::int, $12::jsonb, $13::jsonb, $14, $15, "
            "to_timestamp($16::float8), now())",
        };
        const int np[2] = { 0, 16 };
        const char *const *params[2] = { NULL, jparams };
        rc = bd_pg_conn_pipeline(conn, 2, sqls, np, params, api_on_job_row, s);
    }
    free(metadata);
    free(options);
    if (rc < 0) {
        bd_pg_release(s->conn);
        s->conn = NULL;
        api_submit_error(s, rc == BD_ENOMEM ? BD_ENOMEM : BD_EPG, NULL);
    }
}

static void api_on_seq(int status, long long seq, void *arg)
{
    struct api_submit *s = arg;
    char stamp[32], model[64];
    struct tm tm;
    time_t t;

    if (status < 0) {
        api_submit_error(s, BD_EREDIS, "could not allocate a job id");
        return;
    }
    s->seq = seq;
    s->created_unix = (double)time(NULL);
    t = (time_t)s->created_unix;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%d_%H%M%S", &tm);
    api_format_time(s->created_unix, s->created_at, sizeof(s->created_at));
    if (s->op == BD_OP_BULK_INSERT) {
        snprintf(s->job_id, sizeof(s->job_id), "batch_insert_%s_%03lld", stamp, seq);
    } else {
        size_t n = 0;
        for (const char *p = s->model; *p && n + 1 < sizeof(model); p++)
            model[n++] = (isalnum((unsigned char)*p) || *p == '-' || *p == '_') ? *p : '_';
        model[n] = '\0';
        snprintf(s->job_id, sizeof(s->job_id), "batch_%s_%s_%03lld", model, stamp, seq);
    }
    if (bd_pg_acquire(s->srv->pg, api_on_conn, s) < 0)
        api_submit_error(s, BD_EPG, NULL);
}

static void api_on_counts(int status, const struct bd_rq_counts *c, void *arg)
{
    struct api_submit *s = arg;
    unsigned max = s->srv->cfg->max_queued_items;

    if (status < 0) {
        api_submit_error(s, BD_EREDIS, NULL);
        return;
    }
    s->queued_ahead = c->queued_items;
    if ((unsigned long long)c->queued_items + s->items > max) {
        char msg[160];
        snprintf(msg, sizeof(msg), "queue is full: %lld items queued, limit %u; retry later",
                 c->queued_items, max);
        bd_log(BD_LOG_INFO, "api", "event=backpressure queued_items=%lld items=%u limit=%u",
               c->queued_items, s->items, max);
        json_t *j = json_pack("{s:{s:s,s:s}}", "error", "code", "queue_full", "message", msg);
        bd__api_respond_json(s->req, 429, j, "Retry-After: 5\r\n");
        api_submit_free(s);
        return;
    }
    if (bd_rq_next_seq(s->srv->rq, api_on_seq, s) < 0)
        api_submit_error(s, BD_EREDIS, NULL);
}

static void api_submit_step_counts(struct api_submit *s)
{
    if (bd_rq_get_counts(s->srv->rq, api_on_counts, s) < 0)
        api_submit_error(s, BD_EREDIS, NULL);
}

/* An earlier submit with the same Idempotency-Key: same body -> the same job (200),
 * another body -> 409. */
static void api_on_existing(int status, PGresult *res, void *arg)
{
    struct api_submit *s = arg;

    if (status < 0) {
        api_submit_error(s, BD_EPG, NULL);
        return;
    }
    if (PQntuples(res) == 0) {
        api_submit_step_counts(s);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, BD__API_JOB_NCOLUMNS), s->request_hash) != 0) {
        api_submit_error(s, BD_ECONFLICT,
                         "Idempotency-Key was already used with a different request body");
        return;
    }
    json_t *j = bd__api_job_status_json(res, 0);
    if (j == NULL) {
        api_submit_error(s, BD_ENOMEM, NULL);
        return;
    }
    json_object_set_new(j, "idempotent_replay", json_true());
    char loc[256];
    snprintf(loc, sizeof(loc), "Location: " BD_API_PREFIX "/jobs/%s\r\n",
             PQgetvalue(res, 0, 0));
    bd__api_respond_json(s->req, 200, j, loc);
    api_submit_free(s);
}

static void api_submit_step_existing(struct api_submit *s)
{
    const char *params[1] = { s->idem_key };
    if (bd_pg_query(s->srv->pg,
                    "SELECT " BD__API_JOB_COLUMNS ", request_hash FROM jobs "
                    "WHERE idempotency_key = $1",
                    1, params, NULL, NULL, 0, api_on_existing, s) < 0)
        api_submit_error(s, BD_EPG, NULL);
}

static void api_on_collection(int status, PGresult *res, void *arg)
{
    struct api_submit *s = arg;

    if (status < 0) {
        api_submit_error(s, BD_EPG, NULL);
        return;
    }
    if (PQntuples(res) > 0) {
        long have = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        if (have != (long)s->dim) {
            char msg[200];
            snprintf(msg, sizeof(msg), "collection '%s' holds %ld-dimensional vectors; this "
                     "job's are %u-dimensional", s->collection, have, s->dim);
            bd_http_respond_error(s->req, 400, "validation_error", msg,
                                  s->op == BD_OP_BULK_INSERT ? "data[0].embedding"
                                                             : "collection");
            api_submit_free(s);
            return;
        }
    }
    if (s->idem_key)
        api_submit_step_existing(s);
    else
        api_submit_step_counts(s);
}

static void api_on_submit(struct bd_http_request *req, void *arg)
{
    struct bd_server *srv = arg;
    struct api_invalid inv = { { 0 }, { 0 } };
    json_error_t jerr;

    if (!bd__api_check_auth(req, srv))
        return;
    if (srv->is_stopping) {
        bd_http_respond_err(req, BD_ESHUTDOWN, NULL, NULL);
        return;
    }
    if (!bd_job_engine_is_ready(srv->jobs)) {
        bd_http_respond(req, 503, "application/json", "Retry-After: 1\r\n",
                        "{\"error\":{\"code\":\"not_ready\",\"message\":\"the store is not "
                        "ready yet\"}}",
                        strlen("{\"error\":{\"code\":\"not_ready\",\"message\":\"the store is "
                               "not ready yet\"}}"));
        return;
    }
    const char *ct = bd_http_header_get(req, "Content-Type");
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0) {
        bd_http_respond_err(req, BD_EMEDIATYPE, "Content-Type must be application/json", NULL);
        return;
    }
    const char *key = bd_http_header_get(req, "Idempotency-Key");
    if (key && (strlen(key) == 0 || strlen(key) > 255)) {
        bd_http_respond_error(req, 400, "validation_error",
                              "Idempotency-Key must be 1 to 255 characters", "Idempotency-Key");
        return;
    }

    struct api_submit *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return;
    }
    s->req = req;
    s->srv = srv;
    s->idem_key = key;
    s->body_len = req->body_len;
    if (!api_fast_body(s, req->body, req->body_len))
        s->body = json_loadb(req->body, req->body_len, 0, &jerr);
    if (s->body == NULL) {
        char msg[256];
        snprintf(msg, sizeof(msg), "body is not valid JSON: %s (line %d, column %d)",
                 jerr.text, jerr.line, jerr.column);
        bd_http_respond_error(req, 400, "invalid_json", msg, "body");
        api_submit_free(s);
        return;
    }
    int rc = api_validate_submit(s, &inv);
    if (rc == BD_EINVAL) {
        char msg[400];
        snprintf(msg, sizeof(msg), "%s %s", inv.field, inv.message);
        bd_http_respond_error(req, 400, "validation_error", msg, inv.field);
        api_submit_free(s);
        return;
    }
    if (rc < 0) {
        api_submit_error(s, rc, NULL);
        return;
    }
    /* Only an Idempotency-Key needs the body's hash (to tell a replay from a conflict);
     * hashing a big body costs more than parsing it. */
    if (key)
        bd_sha256_hex(req->body, req->body_len, s->request_hash);

    json_t *meta = json_object_get(s->body, "metadata");
    s->metadata = json_is_object(meta) ? json_deep_copy(meta) : json_object();
    if (json_object_get(s->metadata, "submitted_by") == NULL) {
        const char *by = bd_http_header_get(req, "X-Submitted-By");
        json_object_set_new(s->metadata, "submitted_by", json_string(by ? by : "api"));
    }
    if (json_object_get(s->metadata, "integration_pattern") == NULL)
        json_object_set_new(s->metadata, "integration_pattern", json_string("bulk_only"));

    const char *params[1] = { s->collection };
    if (bd_pg_query(srv->pg, "SELECT dimension FROM collections WHERE name = $1", 1, params,
                    NULL, NULL, 0, api_on_collection, s) < 0)
        api_submit_error(s, BD_EPG, NULL);
}

/* ---- cancel and retry: the engine changes the job, the handler renders it ------------ */

struct api_job_call {
    struct bd_http_request *req;
    struct bd_server *srv;
    char id[BD__API_JOB_ID_MAX + 1];
    enum bd_job_event ev;
    bool is_cancel_requested;
    enum bd_job_state state;
};

static struct api_job_call *api_call_new(struct bd_http_request *req, struct bd_server *srv)
{
    if (!bd__api_check_auth(req, srv))
        return NULL;
    const char *id = req->params_count > 0 ? req->params[0] : "";
    if (!bd__api_is_job_id_valid(id)) {
        bd_http_respond_err(req, BD_EINVAL, "job_id must match ^[A-Za-z0-9_-]{1,128}$",
                            "job_id");
        return NULL;
    }
    struct api_job_call *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        bd_http_respond_err(req, BD_ENOMEM, NULL, NULL);
        return NULL;
    }
    c->req = req;
    c->srv = srv;
    snprintf(c->id, sizeof(c->id), "%s", id);
    return c;
}

/* INTEGRATION: the status document comes from the read side of the job store. */
static void api_on_rendered(int status, PGresult *res, void *arg)
{
    struct api_job_call *c = arg;

    if (status < 0 || PQntuples(res) == 0) {
        bd_http_respond_err(c->req, status < 0 ? BD_EPG : BD_ENOTFOUND, NULL, NULL);
        free(c);
        return;
    }
    json_t *j = bd__api_job_status_json(res, 0);
    if (c->ev == BD_JOB_EV_CANCEL && c->state == BD_JOB_PROCESSING) {
        json_object_set_new(j, "cancel_requested", json_true());
        json_object_set_new(j, "message", json_string("cancellation requested; the job stops "
                                                      "before its next batch"));
    }
    bd__api_respond_json(c->req, c->ev == BD_JOB_EV_RETRY ? 202 : 200, j, NULL);
    free(c);
}

static void api_on_changed(int status, enum bd_job_state state, bool is_cancel_requested,
                           void *arg)
{
    struct api_job_call *c = arg;
    char msg[160];

    c->state = state;
    c->is_cancel_requested = is_cancel_requested;
    if (status == BD_ECONFLICT) {
        if (c->ev == BD_JOB_EV_CANCEL)
            snprintf(msg, sizeof(msg), "job is %s; only queued or processing jobs can be "
                     "cancelled", state == BD_JOB_PROCESSING ? "already being cancelled"
                                                             : bd_job_state_name(state));
        else
            snprintf(msg, sizeof(msg), "job is %s; only a finished job with failed or "
                     "unfinished items can be retried", bd_job_state_name(state));
        bd_http_respond_err(c->req, BD_ECONFLICT, msg, NULL);
        free(c);
        return;
    }
    if (status < 0) {
        bd_http_respond_err(c->req, status, status == BD_ENOTFOUND ? "no such job" : NULL, NULL);
        free(c);
        return;
    }
    bd__api_status_cache_drop(c->srv, c->id);
    const char *params[1] = { c->id };
    if (bd_pg_query(c->srv->pg, "SELECT " BD__API_JOB_COLUMNS " FROM jobs WHERE id = $1", 1,
                    params, NULL, NULL, 0, api_on_rendered, c) < 0) {
        bd_http_respond_err(c->req, BD_EPG, NULL, NULL);
        free(c);
    }
}

static void api_on_change(struct bd_http_request *req, struct bd_server *srv,
                          enum bd_job_event ev)
{
    struct api_job_call *c = api_call_new(req, srv);
    if (c == NULL)
        return;
    c->ev = ev;
    int rc = ev == BD_JOB_EV_CANCEL ? bd_job_cancel(srv->jobs, c->id, api_on_changed, c)
                                    : bd_job_retry(srv->jobs, c->id, api_on_changed, c);
    if (rc < 0) {
        bd_http_respond_err(req, rc, NULL, NULL);
        free(c);
    }
}

static void api_on_cancel(struct bd_http_request *req, void *arg)
{
    api_on_change(req, arg, BD_JOB_EV_CANCEL);
}

static void api_on_retry(struct bd_http_request *req, void *arg)
{
    api_on_change(req, arg, BD_JOB_EV_RETRY);
}

int bd__api_register_jobs(struct bd_router *r, struct bd_server *srv)
{
    int rc = BD_OK;
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/jobs", api_on_submit, srv);
    rc = rc ? rc : bd_router_add(r, "DELETE", BD_API_PREFIX "/jobs/{id}", api_on_cancel, srv);
    rc = rc ? rc : bd_router_add(r, "POST", BD_API_PREFIX "/jobs/{id}/retry", api_on_retry,
                                 srv);
    return rc;
}
