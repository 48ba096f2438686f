/* error.h -- batchd's error codes: libuv's negative codes pass through, ours sit in -2xxxx.
 *
 * One X-macro table maps each code to a name, a message and an HTTP status, so the API
 * layer has a single place that turns an error into a response.
 */
#ifndef BATCHD_ERROR_H
#define BATCHD_ERROR_H

#define BD_OK 0

/*  X(name,       code,   http, message) */
#define BD_ERRNO_MAP(X)                                                          \
    X(EINVAL,      -20001, 400, "invalid request")                               \
    X(ENOTFOUND,   -20002, 404, "not found")                                     \
    X(ECONFLICT,   -20003, 409, "conflict")                                      \
    X(EMETHOD,     -20004, 405, "method not allowed")                            \
    X(ETOOLARGE,   -20005, 413, "request body too large")                        \
    X(EMEDIATYPE,  -20006, 415, "unsupported media type")                        \
    X(ELENGTH,     -20007, 411, "length required")                               \
    X(EUNAUTH,     -20008, 401, "missing or invalid API key")                    \
    X(EBUSY,       -20009, 429, "queue is full")                                 \
    X(EREDIS,      -20010, 503, "queue unavailable")                             \
    X(EPG,         -20011, 503, "store unavailable")                             \
    X(EURITOOLONG, -20012, 414, "request URI too long")                          \
    X(EHDRTOOLARGE,-20013, 431, "request header fields too large")               \
    X(ETIMEOUT,    -20014, 408, "request timeout")                               \
    X(ESHUTDOWN,   -20015, 503, "server is shutting down")                       \
    X(ENOTREADY,   -20016, 503, "not ready")                                     \
    X(EUPLOADS,    -20017, 503, "too many streamed submits in progress")         \
    X(ESTREAMS,    -20018, 503, "too many event streams open; poll /status instead") \
    X(EMODEL,      -20020, 502, "model request failed")                          \
    X(EMODELTIMEOUT,-20021, 504, "model request timed out")                      \
    X(EMODELCONN,  -20022, 502, "model connection failed")                       \
    X(EMODELRATE,  -20023, 429, "model rate limited")                            \
    X(EMODELBAD,   -20024, 502, "model response invalid")                        \
    X(EFATAL,      -20025, 422, "job cannot run")                                \
    X(ECANCELED,   -20030, 0,   "cancelled")                                     \
    X(EJSON,       -20040, 400, "body is not valid JSON")                        \
    X(EINTERNAL,   -20099, 500, "internal error")

enum bd_errno {
#define BD__ERR_ENUM(name, code, http, msg) BD_##name = (code),
    BD_ERRNO_MAP(BD__ERR_ENUM)
#undef BD__ERR_ENUM
    BD_ENOMEM = -12 /* same value as UV_ENOMEM */
};

/* Message for err: ours, libuv's, or "unknown error". Never NULL; static storage. */
const char *bd_strerror(int err);

/* Short stable name for err ("EINVAL", "ENOTFOUND", libuv's name for UV_E*). Never NULL. */
const char *bd_err_name(int err);

/* HTTP status that answers err: our table, 500 for anything else, 0 for internal-only codes. */
int bd_err_http_status(int err);

/* The API's error "code" string for err ("validation_error", "not_found", ...). Never NULL. */
const char *bd_err_api_code(int err);

#endif
