/* fuzz_submit.c -- fuzz target for the submit parser (src/api_submit_parse.c): the
 * bulk_insert fast path (its scanner and packing) and the jansson path, through
 * bd__api_submit_parse, with no loop, no Redis and no PostgreSQL.
 *
 * Input: a POST /jobs body, as is. Config: one hashing model "m" (dimension 4), small
 * limits. Checks, for every input:
 *   1. the parser answers BD_OK, BD_EINVAL or BD_EJSON (with a reason), nothing else;
 *   2. an accepted body is JSON to jansson too (the fast path accepts nothing jansson
 *      refuses, invalid UTF-8 included; integers beyond int64 excepted, jansson's limit);
 *   3. an accepted job's batches are what it says: bulk_insert payloads decode with the
 *      packed-batch codec into exactly the job's items, each of the job's dimension, with an
 *      id and metadata that are valid UTF-8 and metadata that is a JSON object; bulk_embed
 *      payloads are JSON arrays with the batch's item count.
 * SPDX-License-Identifier: MIT
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_submit.h"

#include "batchd/buf.h"
#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/job_batch.h"
#include "batchd/json_scan.h"
#include "batchd/server.h"

#define FUZZ_NAME "fuzz_submit"
#include "fuzz_check.h"

static char model_name[] = "m";

static void check_batches(struct bd__api_submit *s)
{
    struct bd_job_payload *p = bd__api_submit_payloads(s);
    unsigned total = 0;

    FUZZ_CHECK(p != NULL, "payloads of an accepted job");
    for (unsigned b = 0; b < s->batches; b++) {
        unsigned first = b * s->batch_size;
        unsigned cnt = s->items - first < s->batch_size ? s->items - first : s->batch_size;
        if (s->op == BD_OP_BULK_INSERT) {
            struct bd_job_batch_item *it = calloc(cnt, sizeof(*it));
            const char *why = NULL;
            FUZZ_CHECK(it != NULL, "alloc");
            FUZZ_CHECK(bd_job_batch_unpack(p[b].data, p[b].len, cnt, s->dim, it, &why) == BD_OK,
                       "batch %u does not decode: %s", b, why ? why : "");
            for (unsigned i = 0; i < cnt; i++) {
                FUZZ_CHECK(bd_utf8_is_valid(it[i].id, it[i].id_len), "item %u id not UTF-8", i);
                FUZZ_CHECK(bd_utf8_is_valid(it[i].meta, it[i].meta_len), "item %u meta", i);
                json_t *m = json_loadb(it[i].meta, it[i].meta_len, 0, NULL);
                FUZZ_CHECK(json_is_object(m), "item %u metadata is not an object", i);
                json_decref(m);
            }
            free(it);
        } else {
            json_t *a = json_loadb(p[b].data, p[b].len, 0, NULL);
            FUZZ_CHECK(json_is_array(a) && json_array_size(a) == cnt, "embed batch %u", b);
            json_decref(a);
        }
        total += cnt;
        free(p[b].data);
    }
    free(p);
    FUZZ_CHECK(total == s->items, "%u items in batches, %u in the job", total, s->items);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct bd_model_config model = {
        .name = model_name,
        .provider = BD_PROVIDER_HASHING,
        .dimensions = 4,
        .max_inputs_per_request = 32,
        .concurrency = 1,
        .timeout_s = 30,
    };
    struct bd_config cfg = {
        .default_batch_size = 3,
        .max_batch_size = 100,
        .retry_attempts = 3,
        .job_timeout_s = 3600,
        .max_items_per_job = 1000,
        .models = &model,
        .models_count = 1,
    };
    struct bd_server srv = { .cfg = &cfg };
    struct bd__api_submit s = { .srv = &srv };
    struct bd__api_invalid inv = { { 0 }, { 0 } };
    const char *body = (const char *)data;

    int rc = bd__api_submit_parse(&s, body, size, &inv);
    FUZZ_CHECK(rc == BD_OK || rc == BD_EINVAL || rc == BD_EJSON, "rc %d", rc);
    if (rc != BD_OK) {
        /* (The field may be empty: an unknown member whose key is "".) */
        FUZZ_CHECK(inv.message[0] != '\0', "a refusal says why (rc %d)", rc);
    } else {
        json_error_t err;
        json_t *j = json_loadb(body, size, 0, &err);
        /* jansson refuses integers beyond int64 that JSON allows (and the fast path reads
         * as floats): the one refusal that is jansson's limit, not the body's fault. */
        FUZZ_CHECK(j != NULL || json_error_code(&err) == json_error_numeric_overflow,
                   "accepted a body jansson refuses: %s", err.text);
        json_decref(j);
        FUZZ_CHECK(s.items > 0 && s.batches == (s.items + s.batch_size - 1) / s.batch_size,
                   "items %u batches %u", s.items, s.batches);
        check_batches(&s);
    }
    bd__api_submit_parse_free(&s);
    return 0;
}
