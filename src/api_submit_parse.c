/* api_submit_parse.c -- a POST /jobs body into a validated job: the bulk_insert fast
 * path (scan the "data" array straight from the body and pack each item, job_batch.h, with
 * no jansson tree), the jansson path for everything else, and UTF-8 checks that name the
 * offending item.
 *
 * Pure parsing over the request's memory; loop thread only (one request at a time per
 * call); no I/O. Anything unusual in the fast path falls back to jansson, so invalid
 * input still gets a precise error.  SPDX-License-Identifier: MIT
 */
#include "api_submit.h"

#include "batchd/buf.h"
#include "batchd/hashtab.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_batch.h"
#include "batchd/json_scan.h"
#include "batchd/redis_queue.h"
#include "batchd/server.h"
#include "batchd/submit_scan.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_ITEM_ID_MAX 256
#define API_TEXT_MAX (1u << 20)

/* ---- validation -------------------------------------------------------------------- */

static int api_fail(struct bd__api_invalid *inv, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int api_fail(struct bd__api_invalid *inv, const char *field, const char *fmt, ...)
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

/* The set of a job's (or a streamed batch's) item ids, to reject duplicates: the upsert of
 * one batch may not touch the same (collection, id) twice. Keys point into memory that
 * lives until validation ends (the body or a kept jansson tree), or, when is_copying (a
 * streamed batch, whose items are borrowed one at a time), into the set's own blocks. */
struct api_idblock {
    struct api_idblock *next;
    size_t used, cap;
    char data[];
};

struct api_idset {
    struct bd_htab index;
    bool is_copying;
    struct api_idblock *blocks;       /* the copies (is_copying), newest first */
};

static const char *api_idset_copy(struct api_idset *set, const char *id, size_t len)
{
    struct api_idblock *b = set->blocks;
    if (b == NULL || b->cap - b->used < len) {
        size_t cap = len > 65536 ? len : 65536;
        if ((b = malloc(sizeof(*b) + cap)) == NULL)
            return NULL;
        *b = (struct api_idblock){ set->blocks, 0, cap };
        set->blocks = b;
    }
    char *d = b->data + b->used;
    memcpy(d, id, len);
    b->used += len;
    return d;
}

/* Empty the set (its memory goes; is_copying stays). */
static void api_idset_clear(struct api_idset *set)
{
    while (set->blocks) {
        struct api_idblock *b = set->blocks;
        set->blocks = b->next;
        free(b);
    }
    bd_htab_free(&set->index);
    set->blocks = NULL;
}

/* 1 if added, 0 if present, -1 on ENOMEM. expected sizes the set on first use. */
static int api_idset_add(struct api_idset *set, size_t expected, const char *id, size_t len)
{
    bool is_new = false;

    if (set->index.cap == 0 && bd_htab_reset(&set->index, expected) != BD_OK)
        return -1;
    if (set->is_copying) {
        if (bd_htab_get(&set->index, id, len))
            return 0;
        if ((id = api_idset_copy(set, id, len)) == NULL)
            return -1;
    }
    if (bd_htab_put(&set->index, id, len, &is_new) == NULL)
        return -1;
    return is_new ? 1 : 0;
}

/* ---- UTF-8: naming the field that is not ----------------------------------------------- */

/* The member of the object at p..end whose key or value is not valid UTF-8: its raw key
 * goes to key (empty when the bad bytes are in the key itself). False when every member is
 * valid or the text is not a well-formed object. */
static bool api_find_bad_utf8_member(const char *p, const char *end, char *key, size_t keylen)
{
    if (p == end || *p != '{')
        return false;
    p = bd_json_skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *k = p + 1, *kend = bd_json_skip_value(p, end);
        if (kend == NULL)
            return false;
        const char *colon = bd_json_skip_ws(kend, end);
        if (colon == end || *colon != ':')
            return false;
        const char *v = bd_json_skip_ws(colon + 1, end), *vend = bd_json_skip_value(v, end);
        if (vend == NULL)
            return false;
        size_t klen = (size_t)(kend - 1 - k);
        if (!bd_utf8_is_valid(k, klen)) {
            key[0] = '\0';
            return true;
        }
        if (!bd_utf8_is_valid(v, (size_t)(vend - v))) {
            snprintf(key, keylen, "%.*s", (int)klen, k);
            return true;
        }
        p = bd_json_skip_ws(vend, end);
        if (p < end && *p == ',')
            p = bd_json_skip_ws(p + 1, end);
        else
            break;
    }
    return false;
}

/* Item i (p..end) that jansson refused: say which member is not UTF-8, else that the item
 * is not JSON. Returns BD_EINVAL with inv filled. */
static int api_fail_item_json(const char *p, const char *end, size_t i, struct bd__api_invalid *inv)
{
    char key[48], field[96];

    if (!bd_utf8_is_valid(p, (size_t)(end - p)) &&
        api_find_bad_utf8_member(p, end, key, sizeof(key))) {
        if (key[0])
            snprintf(field, sizeof(field), "data[%zu].%s", i, key);
        else
            snprintf(field, sizeof(field), "data[%zu]", i);
        return api_fail(inv, field, "is not valid UTF-8");
    }
    snprintf(field, sizeof(field), "data[%zu]", i);
    return api_fail(inv, field, "is not valid JSON");
}

/* A body jansson refused: when the reason is text that is not UTF-8, name the item and its
 * member (data[3].id) or the top-level member, so the client can find it in a big job.
 * Returns true with inv filled, false when the body's problem is something else. */
static bool api_locate_bad_utf8(const char *body, size_t len, struct bd__api_invalid *inv)
{
    const char *end = body + len, *root = bd_json_skip_ws(body, end);
    char key[48];

    if (bd_utf8_is_valid(body, len))
        return false;
    const char *data = bd_json_find_member(root, end, "data");
    if (data && *data == '[') {
        const char *q = bd_json_skip_ws(data + 1, end);
        for (size_t i = 0; q < end && *q != ']'; i++) {
            const char *qend = bd_json_skip_value(q, end);
            if (qend == NULL)
                break;
            if (!bd_utf8_is_valid(q, (size_t)(qend - q))) {
                (void)api_fail_item_json(q, qend, i, inv);
                return true;
            }
            q = bd_json_skip_ws(qend, end);
            if (q < end && *q == ',')
                q = bd_json_skip_ws(q + 1, end);
            else
                break;
        }
    }
    if (api_find_bad_utf8_member(root, end, key, sizeof(key)) && key[0]) {
        api_fail(inv, key, "is not valid UTF-8");
        return true;
    }
    api_fail(inv, "body", "is not valid UTF-8");
    return true;
}

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
static int api_validate_item(struct bd__api_submit *s, json_t *item, size_t i, size_t n,
                             struct api_idset *ids, struct bd__api_invalid *inv)
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
        if (json_array_size(emb) > BD_JOB_BATCH_DIM_MAX)
            return api_fail(inv, field, "has more than %u dimensions", BD_JOB_BATCH_DIM_MAX);
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

static int api_validate_items(struct bd__api_submit *s, struct bd__api_invalid *inv)
{
    struct api_idset ids = { 0 };
    int rc = BD_OK;
    size_t i;
    json_t *item;

    json_array_foreach(s->data, i, item) {
        if ((rc = api_validate_item(s, item, i, json_array_size(s->data), &ids, inv)) < 0)
            break;
    }
    api_idset_clear(&ids);
    return rc;
}

/* Pack a validated jansson item. */
static int api_pack_json_item(struct bd__api_submit *s, json_t *item, struct bd_buf *out,
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
    if (meta->is_failed)
        return BD_ENOMEM;
    return bd_job_batch_put(out, json_string_value(id), json_string_length(id), meta->data,
                            meta->len, row, s->dim);
}

/* The fast path for one bulk_insert item at p..end: no jansson tree for the embedding
 * (it is parsed straight into row). Returns BD_OK (packed), BD_EINVAL (inv filled),
 * BD_ENOMEM, or 1 when the item needs the jansson path (anything unusual: escapes in the
 * id, an unknown member, a bad number...), which then reports the precise error. */
static int api_fast_item(struct bd__api_submit *s, const char *p, const char *end, size_t i,
                         size_t n, struct api_idset *ids, float *row, struct bd_buf *meta,
                         struct bd_buf *out, struct bd__api_invalid *inv,
                         const char **item_end)
{
    const char *id = NULL, *mv = NULL, *mend = NULL, *ev = NULL;
    size_t id_len = 0;
    unsigned count = 0, cap = s->dim ? s->dim : BD_JOB_BATCH_DIM_MAX;

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
        /* A repeated member goes to jansson (its last value wins there): the fast path
         * checks only the values it keeps, so an earlier one would go unchecked. */
        if (klen == 2 && memcmp(k, "id", 2) == 0) {
            if (id || *v != '"' || memchr(v + 1, '\\', (size_t)(vend - v - 1)) != NULL)
                return 1;
            id = v + 1;
            id_len = (size_t)(vend - v - 2);
        } else if (klen == 8 && memcmp(k, "metadata", 8) == 0) {
            if (mv)
                return 1;
            mv = v;
            mend = vend;
        } else if (klen == 9 && memcmp(k, "embedding", 9) == 0) {
            if (ev)
                return 1;
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
    if (!bd_utf8_is_valid(id, id_len)) {
        /* jansson would refuse the whole item; name the id instead (bug 1: such an id was
         * accepted here and then failed every write of its batch). */
        char field[64];
        snprintf(field, sizeof(field), "data[%zu].id", i);
        return api_fail(inv, field, "is not valid UTF-8");
    }
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
    return bd_job_batch_put(out, id, id_len, meta->data, meta->len, row, s->dim);
}

/* bulk_insert's data array, straight from the request body: items are validated and
 * packed one at a time, so no tree of the whole job is ever built (peak memory is the body
 * plus the packed batches). */
static int api_fast_insert_items(struct bd__api_submit *s, struct bd__api_invalid *inv)
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
    s->batches = bd_job_batch_count(s->items, s->batch_size);
    s->packed = calloc(s->batches, sizeof(*s->packed));
    s->kept = json_array();
    float *row = malloc(sizeof(float) * BD_JOB_BATCH_DIM_MAX);
    if (s->packed == NULL || s->kept == NULL || row == NULL) {
        free(row);
        return BD_ENOMEM;
    }
    bd_buf_init(&meta);
    q = bd_json_skip_ws(p + 1, end);
    for (size_t i = 0; i < n && rc == BD_OK; i++) {
        const char *item_end = NULL;
        struct bd_buf *out = &s->packed[i / s->batch_size];
        rc = api_fast_item(s, q, end, i, n, &ids, row, &meta, out, inv, &item_end);
        if (rc == 1) {
            item_end = bd_json_skip_value(q, end);
            json_t *item = json_loadb(q, (size_t)(item_end - q), 0, NULL);
            char field[64];
            snprintf(field, sizeof(field), "data[%zu]", i);
            if (item == NULL) {
                rc = api_fail_item_json(q, item_end, i, inv);
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
    api_idset_clear(&ids);
    bd_buf_free(&meta);
    return rc;
}

/* The fast path applies to well-formed bulk_insert bodies: the members other than "data"
 * become a small jansson object (validated as usual); "data" stays in the body. Returns
 * true when applied. */
static bool api_fast_body(struct bd__api_submit *s, const char *body, size_t len)
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
        /* A key must be a plain JSON string (no control characters) in UTF-8: anything
         * else is jansson's to refuse precisely. */
        const char *k = p + 1, *kend = bd_json_skip_value(p, end);
        if (kend == NULL || memchr(k, '\\', (size_t)(kend - k)) != NULL ||
            !bd_utf8_is_valid(k, (size_t)(kend - k)))
            goto fail;
        kend--;                                     /* at the closing quote */
        const char *colon = bd_json_skip_ws(kend + 1, end);
        if (colon == end || *colon != ':')
            goto fail;
        const char *v = bd_json_skip_ws(colon + 1, end);
        const char *vend = bd_json_skip_value(v, end);
        if (vend == NULL)
            goto fail;
        if (kend - k == 4 && memcmp(k, "data", 4) == 0) {
            if (s->data_raw)
                goto fail;                          /* repeated: jansson's last one wins */
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

/* The job's fields of b (everything but "data"): operation, model, collection, metadata,
 * options. Fills s. */
static int api_validate_fields(struct bd__api_submit *s, json_t *b, struct bd__api_invalid *inv)
{
    const struct bd_config *cfg = s->srv->cfg;
    json_t *v;
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
    } else if (s->model && bd_config_get_model(cfg, s->model) == NULL) {
        /* Each model name has its own queue counters: only configured ones (bug 7). */
        return api_fail(inv, "model", "unknown model '%.64s'; give a configured model or none",
                        s->model);
    }

    v = json_object_get(b, "collection");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || !api_is_collection_name(json_string_value(v)))
            return api_fail(inv, "collection", "must match ^[a-z_][a-z0-9_]{0,62}$");
        snprintf(s->collection, sizeof(s->collection), "%s", json_string_value(v));
    } else if (s->op == BD_OP_BULK_INSERT) {
        return api_fail(inv, "collection", "is required for bulk_insert");
    } else {
        bd_job_default_collection(s->model, s->collection, sizeof(s->collection));
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
    return BD_OK;
}

static int api_validate_submit(struct bd__api_submit *s, struct bd__api_invalid *inv)
{
    const struct bd_config *cfg = s->srv->cfg;
    json_t *b = s->body;
    int rc = api_validate_fields(s, b, inv);

    if (rc < 0)
        return rc;
    if (s->data_raw)
        return api_fast_insert_items(s, inv);
    s->data = json_object_get(b, "data");
    if (!json_is_array(s->data) || json_array_size(s->data) == 0)
        return api_fail(inv, "data", "must be a non-empty array");
    if (json_array_size(s->data) > cfg->max_items_per_job)
        return api_fail(inv, "data", "has %zu items; the limit is %u per job",
                        json_array_size(s->data), cfg->max_items_per_job);
    s->items = (unsigned)json_array_size(s->data);
    s->batches = bd_job_batch_count(s->items, s->batch_size);
    return api_validate_items(s, inv);
}

/* ---- the batches, in their stored form --------------------------------------------------- */

/* Hand the packed bulk_insert batches over as payloads (no copy: the buffers move). */
static int api_take_packed(struct bd__api_submit *s, struct bd_job_payload *out)
{
    for (unsigned b = 0; b < s->batches; b++) {
        if (s->packed[b].is_failed)
            return BD_ENOMEM;
        out[b] = (struct bd_job_payload){ s->packed[b].data, s->packed[b].len };
        bd_buf_init(&s->packed[b]);
    }
    return BD_OK;
}

/* The jansson path's bulk_insert batches (bodies the fast path did not take). */
static int api_pack_json_batches(struct bd__api_submit *s)
{
    struct bd_buf meta;
    float *row = malloc(sizeof(float) * (s->dim ? s->dim : 1));
    int rc = BD_OK;

    s->packed = calloc(s->batches, sizeof(*s->packed));
    if (row == NULL || s->packed == NULL) {
        free(row);
        return BD_ENOMEM;
    }
    bd_buf_init(&meta);
    for (unsigned i = 0; i < s->items && rc == BD_OK; i++)
        rc = api_pack_json_item(s, json_array_get(s->data, i), &s->packed[i / s->batch_size],
                                row, &meta);
    free(row);
    bd_buf_free(&meta);
    return rc;
}

/* bulk_embed batches keep their items as a compact JSON array. */
static int api_embed_batches(struct bd__api_submit *s, struct bd_job_payload *out)
{
    for (unsigned b = 0; b < s->batches; b++) {
        unsigned first = b * s->batch_size;
        unsigned cnt = s->items - first < s->batch_size ? s->items - first : s->batch_size;
        json_t *slice = json_array();
        for (unsigned i = 0; slice && i < cnt; i++)
            json_array_append(slice, json_array_get(s->data, first + i));
        char *text = slice ? json_dumps(slice, JSON_COMPACT) : NULL;
        json_decref(slice);
        if (text == NULL)
            return BD_ENOMEM;
        out[b] = (struct bd_job_payload){ text, strlen(text) };
    }
    return BD_OK;
}

struct bd_job_payload *bd__api_submit_payloads(struct bd__api_submit *s)
{
    struct bd_job_payload *out = calloc(s->batches, sizeof(*out));
    int rc = out ? BD_OK : BD_ENOMEM;

    if (rc == BD_OK && s->op == BD_OP_BULK_INSERT && s->packed == NULL)
        rc = api_pack_json_batches(s);
    if (rc == BD_OK)
        rc = s->op == BD_OP_BULK_INSERT ? api_take_packed(s, out) : api_embed_batches(s, out);
    if (rc < 0 && out) {
        for (unsigned b = 0; b < s->batches; b++)
            free(out[b].data);
        free(out);
        out = NULL;
    }
    return out;
}

/* ---- a first look at a body before jansson sees it whole ------------------------------- */

/* A member or item longer than this is refused before any tree is built. */
#define API_PIECE_MAX (8u << 20)

struct api_look {
    json_t *fields;                   /* the top-level members but "data", parsed one by one */
    size_t items;
    bool is_failed;                   /* out of memory */
    char refused[JSON_ERROR_TEXT_LENGTH + BD_SUBMIT_SCAN_KEY_MAX + 8]; /* jansson's "why" */
};

static int api_look_member(void *arg, const char *key, const char *value, size_t len)
{
    struct api_look *l = arg;
    json_error_t jerr;
    /* The scanner checked the grammar; jansson still refuses what it cannot hold, e.g. an
     * integer over 64 bits: the body is then not JSON to batchd, as on the jansson path. */
    json_t *v = json_loadb(value, len, JSON_DECODE_ANY, &jerr);
    if (v == NULL && json_error_code(&jerr) != json_error_out_of_memory) {
        snprintf(l->refused, sizeof(l->refused), "\"%s\": %s", key, jerr.text);
        return BD_EJSON;
    }
    if (v == NULL || json_object_set_new(l->fields, key, v) != 0) {
        l->is_failed = true;
        return BD_ENOMEM;
    }
    return BD_OK;
}

static int api_look_item(void *arg, size_t index, size_t line, const char *value, size_t len)
{
    struct api_look *l = arg;
    (void)index;
    (void)line;
    (void)value;
    (void)len;
    l->items++;
    return BD_OK;
}

/* The body's shape, its fields and its item count, with the submit scanner and no tree of
 * the whole body: a body that is not JSON, whose fields are wrong, or that holds more
 * items than a job may (ten million empty objects, say) is refused here, in memory that
 * does not grow with it. Returns BD_OK (then jansson may parse it: its tree is bounded by
 * max_items_per_job valid items), or the refusal with inv filled. */
static int api_look_first(struct bd__api_submit *s, const char *body, size_t len,
                          struct bd__api_invalid *inv)
{
    static const struct bd_submit_scan_cbs cbs = { .on_member = api_look_member,
                                                   .on_item = api_look_item };
    struct api_look l = { .fields = json_object() };
    struct bd_submit_scan *scan = l.fields
        ? bd_submit_scan_new(BD_SUBMIT_JSON, API_PIECE_MAX, &cbs, &l) : NULL;
    int rc = scan ? bd_submit_scan_feed(scan, body, len) : BD_ENOMEM;
    const char *why;

    if (rc == BD_OK)
        rc = bd_submit_scan_end(scan);
    why = scan ? bd_submit_scan_why(scan) : "";
    if (rc == BD_ENOMEM || l.is_failed) {
        rc = BD_ENOMEM;
    } else if (l.refused[0] != '\0') {
        snprintf(inv->field, sizeof(inv->field), "body");
        snprintf(inv->message, sizeof(inv->message), "body is not valid JSON: %.200s",
                 l.refused);
        rc = BD_EJSON;
    } else if (rc < 0 && api_locate_bad_utf8(body, len, inv)) {
        rc = BD_EINVAL;
    } else if (rc < 0 && strstr(why, "must be a JSON object")) {
        rc = api_fail(inv, "body", "must be a JSON object");
    } else if (rc < 0 && strstr(why, "\"data\" appears twice")) {
        rc = api_fail(inv, "data", "appears twice");
    } else if (rc < 0 && strstr(why, "\"data\"") && !strstr(why, "data[")) {
        /* No usable "data": the fields seen so far are judged first, as for any body. */
        rc = api_validate_fields(s, l.fields, inv);
        if (rc == BD_OK)
            rc = api_fail(inv, "data", "must be a non-empty array");
    } else if (rc == BD_ETOOLARGE) {
        rc = api_fail(inv, "body", "holds a value longer than %u bytes (%s)", API_PIECE_MAX,
                      why);
    } else if (rc < 0) {
        snprintf(inv->field, sizeof(inv->field), "body");
        snprintf(inv->message, sizeof(inv->message), "body is not valid JSON: %s", why);
        rc = BD_EJSON;
    } else if ((rc = api_validate_fields(s, l.fields, inv)) == BD_OK &&
               l.items > s->srv->cfg->max_items_per_job) {
        rc = api_fail(inv, "data", "has %zu items; the limit is %u per job", l.items,
                      s->srv->cfg->max_items_per_job);
    }
    bd_submit_scan_free(scan);
    json_decref(l.fields);
    return rc;
}

int bd__api_submit_parse(struct bd__api_submit *s, const char *body, size_t len,
                         struct bd__api_invalid *inv)
{
    json_error_t jerr;
    int rc;

    if (!api_fast_body(s, body, len)) {
        if ((rc = api_look_first(s, body, len, inv)) < 0)
            return rc;
        s->model = NULL;                /* the look's fields are gone: validated again below */
        s->body = json_loadb(body, len, 0, &jerr);
    }
    if (s->body == NULL) {
        if (api_locate_bad_utf8(body, len, inv))
            return BD_EINVAL;
        snprintf(inv->field, sizeof(inv->field), "body");
        snprintf(inv->message, sizeof(inv->message),
                 "body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return BD_EJSON;
    }
    return api_validate_submit(s, inv);
}

void bd__api_submit_parse_free(struct bd__api_submit *s)
{
    for (unsigned b = 0; s->packed && b < s->batches; b++)
        bd_buf_free(&s->packed[b]);
    free(s->packed);
    s->packed = NULL;
    json_decref(s->kept);
    s->kept = NULL;
    json_decref(s->body);
    s->body = NULL;
}

/* ---- a streamed job's items, one batch at a time ------------------------------------------ */

int bd__api_submit_fields(struct bd__api_submit *s, json_t *fields, struct bd__api_invalid *inv)
{
    return api_validate_fields(s, fields, inv);
}

/* The batch being built: a bulk_embed batch's items' trees (it is stored as their JSON
 * array), a bulk_insert batch packed as it grows, and the batch's ids (copied). Everything
 * here is bounded by one batch. */
struct bd__api_batch {
    unsigned count;
    json_t *items;                    /* bulk_embed */
    struct api_idset ids;
    struct bd_buf packed;
    struct bd_buf meta;
    float *row;
};

struct bd__api_batch *bd__api_batch_new(const struct bd__api_submit *s)
{
    struct bd__api_batch *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->items = json_array();
    b->ids.is_copying = true;                 /* the items are borrowed one at a time */
    b->row = malloc(sizeof(float) * BD_JOB_BATCH_DIM_MAX);
    bd_buf_init(&b->packed);
    bd_buf_init(&b->meta);
    if (b->items == NULL || b->row == NULL) {
        bd__api_batch_free(b);
        return NULL;
    }
    (void)s;
    return b;
}

void bd__api_batch_free(struct bd__api_batch *b)
{
    if (b == NULL)
        return;
    json_decref(b->items);
    api_idset_clear(&b->ids);
    bd_buf_free(&b->packed);
    bd_buf_free(&b->meta);
    free(b->row);
    free(b);
}

unsigned bd__api_batch_count(const struct bd__api_batch *b)
{
    return b->count;
}

int bd__api_batch_add(struct bd__api_submit *s, struct bd__api_batch *b, const char *text,
                      size_t len, size_t index, struct bd__api_invalid *inv)
{
    json_error_t jerr;
    json_t *item;
    int rc;

    /* A plain bulk_insert item is checked and packed where it stands (no tree). */
    if (s->op == BD_OP_BULK_INSERT) {
        const char *item_end = NULL;
        rc = api_fast_item(s, text, text + len, index, s->batch_size, &b->ids, b->row,
                           &b->meta, &b->packed, inv, &item_end);
        if (rc != 1) {
            b->count += rc == BD_OK;
            return rc;
        }
    }
    if ((item = json_loadb(text, len, 0, &jerr)) == NULL) {
        snprintf(inv->field, sizeof(inv->field), "data[%zu]", index);
        if (!bd_utf8_is_valid(text, len))
            snprintf(inv->message, sizeof(inv->message), "is not valid UTF-8");
        else
            snprintf(inv->message, sizeof(inv->message), "is not valid JSON: %s", jerr.text);
        return BD_EINVAL;
    }
    /* Ids are unique within a batch (one upsert may not touch a row twice); across the
     * batches of a streamed job a repeated id overwrites, as in two jobs: a set of every id
     * would make memory grow with the job instead of the batch. */
    rc = api_validate_item(s, item, index, s->batch_size, &b->ids, inv);
    if (rc == BD_OK && s->op == BD_OP_BULK_EMBED && json_array_append(b->items, item) != 0)
        rc = BD_ENOMEM;
    if (rc == BD_OK && s->op == BD_OP_BULK_INSERT)
        rc = api_pack_json_item(s, item, &b->packed, b->row, &b->meta);
    json_decref(item);                    /* the batch's array keeps a bulk_embed item */
    b->count += rc == BD_OK;
    return rc;
}

int bd__api_batch_take(struct bd__api_submit *s, struct bd__api_batch *b,
                       struct bd_job_payload *out)
{
    if (s->op == BD_OP_BULK_INSERT) {
        if (b->packed.is_failed)
            return BD_ENOMEM;
        *out = (struct bd_job_payload){ b->packed.data, b->packed.len };
        bd_buf_init(&b->packed);
    } else {
        char *text = json_dumps(b->items, JSON_COMPACT);
        if (text == NULL)
            return BD_ENOMEM;
        *out = (struct bd_job_payload){ text, strlen(text) };
    }
    json_array_clear(b->items);
    b->count = 0;
    api_idset_clear(&b->ids);
    return BD_OK;
}
