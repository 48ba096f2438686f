/* error.c -- names, messages and HTTP statuses for batchd's error codes.
 *
 * Constant tables only; any thread.  SPDX-License-Identifier: MIT
 */
#include "batchd/error.h"

#include <uv.h>

const char *bd_strerror(int err)
{
    switch (err) {
    case BD_OK:
        return "ok";
#define BD__ERR_MSG(name, code, http, msg) case BD_##name: return msg;
        BD_ERRNO_MAP(BD__ERR_MSG)
#undef BD__ERR_MSG
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return uv_strerror(err);
    return "unknown error";
}

const char *bd_err_name(int err)
{
    switch (err) {
    case BD_OK:
        return "OK";
#define BD__ERR_NAME(name, code, http, msg) case BD_##name: return #name;
        BD_ERRNO_MAP(BD__ERR_NAME)
#undef BD__ERR_NAME
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return uv_err_name(err);
    return "EUNKNOWN";
}

int bd_err_http_status(int err)
{
    switch (err) {
#define BD__ERR_HTTP(name, code, http, msg) case BD_##name: return http;
        BD_ERRNO_MAP(BD__ERR_HTTP)
#undef BD__ERR_HTTP
    default:
        return 500;
    }
}

const char *bd_err_api_code(int err)
{
    switch (err) {
    case BD_EINVAL:        return "validation_error";
    case BD_ENOTFOUND:     return "not_found";
    case BD_ECONFLICT:     return "conflict";
    case BD_EMETHOD:       return "method_not_allowed";
    case BD_ETOOLARGE:     return "payload_too_large";
    case BD_EMEDIATYPE:    return "unsupported_media_type";
    case BD_ELENGTH:       return "length_required";
    case BD_EUNAUTH:       return "unauthorized";
    case BD_EBUSY:         return "queue_full";
    case BD_EREDIS:        return "queue_unavailable";
    case BD_EPG:           return "store_unavailable";
    case BD_EURITOOLONG:   return "uri_too_long";
    case BD_EHDRTOOLARGE:  return "header_too_large";
    case BD_ETIMEOUT:      return "request_timeout";
    case BD_ESHUTDOWN:     return "shutting_down";
    case BD_ENOTREADY:     return "not_ready";
    case BD_EUPLOADS:      return "too_many_uploads";
    case BD_ESTREAMS:      return "too_many_streams";
    case BD_EMODEL:        return "processing_error";
    case BD_EMODELTIMEOUT: return "timeout_error";
    case BD_EMODELCONN:    return "connection_error";
    case BD_EMODELRATE:    return "rate_limited";
    case BD_EMODELBAD:     return "processing_error";
    case BD_EFATAL:        return "fatal_error";
    case BD_ECANCELED:     return "cancelled";
    case BD_EJSON:         return "invalid_json";
    default:               return "internal_error";
    }
}
