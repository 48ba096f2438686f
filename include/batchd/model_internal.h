/* model_internal.h -- functions shared by the model client's files (model_client.c,
 * model_wire.c, model_hashing.c) and their unit tests. Not for other modules.
 *
 * The wire functions are pure: no I/O, no state, loop thread or any other.
 */
#ifndef BATCHD_MODEL_INTERNAL_H
#define BATCHD_MODEL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "batchd/buf.h"
#include "batchd/config.h"

/* The path appended to base_url: "/api/embed", "/v1/embeddings", "/embed"; NULL for
 * hashing. */
const char *bd__model_wire_path(enum bd_model_provider p);

/* Build a request body into b (appends; the caller resets b first): begin, then one add per
 * text (is_first on the first), then end. remote_model is JSON-escaped (ignored by tei).
 * Texts are escaped straight into b: no allocation per text beyond b's growth. On ENOMEM
 * b->is_failed is set. */
void bd__model_wire_begin(struct bd_buf *b, enum bd_model_provider p, const char *remote_model);
void bd__model_wire_add(struct bd_buf *b, const char *text, size_t len, bool is_first);
void bd__model_wire_end(struct bd_buf *b, enum bd_model_provider p);

/* Parse an embedding response body[0..len) of provider p for n inputs of dim numbers each
 * into out[0..n*dim), row i for input i (openai: placed by data[].index). Validates: valid
 * JSON of the provider's shape, exactly n vectors, each exactly dim numbers, all finite as
 * float. Returns BD_OK, or BD_EMODELBAD with a one-line reason in msg ("model returned 3
 * vectors for 4 inputs", "vector 2 has 385 dimensions, expected 384", "response is not valid
 * JSON: ..."); out is then partly written. BD_ENOMEM when jansson cannot allocate.
 * Allocates (jansson's tree) and frees it before returning. */
int bd__model_wire_parse(enum bd_model_provider p, const char *body, size_t len, unsigned n,
                         unsigned dim, float *out, char *msg, size_t msglen);

/* The error text of a non-2xx answer: a JSON "error" string, "error"."message", "message" or
 * "detail", else the start of the body with control bytes as spaces; at most outlen-1 bytes,
 * cut at a UTF-8 boundary, "(empty body)" when there is nothing. Always NUL-terminates. */
void bd__model_wire_error_text(const char *body, size_t len, char *out, size_t outlen);

/* The length of the longest prefix of text[0..len) that is at most max bytes and does not
 * end inside a UTF-8 sequence. */
size_t bd__model_utf8_cut(const char *text, size_t len, size_t max);

#endif
