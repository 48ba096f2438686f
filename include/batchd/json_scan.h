/* json_scan.h -- a small scanner over JSON text that is already in memory, for the hot
 * paths where building a jansson tree would cost an allocation per number: model
 * responses (hundreds of thousands of floats per batch) and bulk_insert embeddings.
 *
 * It checks structure (balanced brackets, terminated strings, number syntax), not every
 * rule of JSON; callers fall back to jansson for anything the fast path does not accept,
 * so invalid input still gets jansson's precise error. Pure functions; any thread; no
 * allocation.
 */
#ifndef BATCHD_JSON_SCAN_H
#define BATCHD_JSON_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* First non-whitespace byte at or after p (end if none). */
const char *bd_json_skip_ws(const char *p, const char *end);

/* p at a value (after whitespace): returns the byte after it, or NULL when the text is not
 * a well-formed value. */
const char *bd_json_skip_value(const char *p, const char *end);

/* p at '{': finds member key (compared byte for byte with the raw, unescaped key text) and
 * returns a pointer to its value, or NULL when absent or malformed. */
const char *bd_json_find_member(const char *p, const char *end, const char *key);

/* p at a number: parses it into *out (as a double, correctly rounded for up to 19
 * significant digits and decimal exponents within +-22, else via strtod) and returns the
 * byte after it, or NULL when it is not a JSON number. */
const char *bd_json_parse_number(const char *p, const char *end, double *out);

/* p at '[': parses an array of numbers into out[0..max) and returns the byte after ']'.
 * *count gets how many numbers the array held (which may exceed max: only max are
 * stored). Returns NULL when the array is malformed, holds a non-number, or a number is
 * not finite as a float. */
const char *bd_json_parse_float_array(const char *p, const char *end, float *out, unsigned max,
                                      unsigned *count);


#endif
