/* url.h -- the one URL parser (libcurl's URL API) and the one percent-decoder.
 *
 * bd_url_parse() splits a configured URL (redis.url, postgres.url, a model's base_url)
 * with curl_url()/curl_url_set()/curl_url_get(), so every module reads URLs the same way
 * and the config check rejects what the modules would reject later. bd_url_decode() is the
 * strict percent-decoder for request paths and query strings (router, http server).
 * Startup and loop thread alike; no statics.
 */
#ifndef BATCHD_URL_H
#define BATCHD_URL_H

#include <stddef.h>

/* One parsed URL. Every string is heap memory owned by the struct (free with
 * bd_url_free()); a part the URL does not have is "" (never NULL after a successful
 * parse). user and password are percent-decoded; path and query are as written. */
struct bd_url {
    char *scheme;                     /* lower case: "redis", "https", ... */
    char *host;                       /* IPv6 without brackets */
    int port;                         /* as written, else the scheme's default (table in url.c) */
    char *user;
    char *password;
    char *path;                       /* "/3" for redis://h/3; "" or "/" when none */
    char *query;                      /* without '?' */
};

/* Schemes accepted for each kind of configured URL (NULL-terminated lists). */
extern const char *const bd_url_redis_schemes[];     /* redis */
extern const char *const bd_url_postgres_schemes[];  /* postgres, postgresql */
extern const char *const bd_url_http_schemes[];      /* http, https */

/* Parse url (NUL-terminated) whose scheme must be one of allowed_schemes (NULL-terminated,
 * lower case). On success fills *out (caller frees with bd_url_free()) and returns BD_OK.
 * On failure returns BD_EINVAL (bad URL: why names the problem, e.g. "bad port number
 * (got "notaport")", "scheme must be one of redis (got "http")", "no host") or BD_ENOMEM,
 * and *out holds nothing to free. A fragment, a port of 0, or whitespace is refused. why
 * (whylen bytes) may be NULL; the URL's password is never copied into it. */
int bd_url_parse(const char *url, const char *const *allowed_schemes, struct bd_url *out,
                 char *why, size_t whylen);

/* Free what bd_url_parse() filled; u itself is the caller's. NULL-safe, idempotent. */
void bd_url_free(struct bd_url *u);

/* The path of u read as one decimal number ("/3" → 3): BD_OK with *out = 0 when the path
 * is "" or "/", BD_EINVAL when it is anything but digits or exceeds max. For redis://h/db. */
int bd_url_path_uint(const struct bd_url *u, unsigned max, unsigned *out);

/* Percent-decode in[0..len) into out (outlen bytes, NUL-terminated). plus_is_space turns
 * '+' into ' ' (query strings). Returns the decoded length, or -1 on a bad escape ("%4",
 * "%zz"), an encoded NUL, or when out is too small (outlen 0 included). Strict on purpose:
 * a request path with a bad escape is refused, not guessed at. */
long bd_url_decode(const char *in, size_t len, char *out, size_t outlen, int plus_is_space);

#endif
