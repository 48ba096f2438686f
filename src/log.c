/* log.c -- leveled key=value lines to stderr, with secrets redacted by the callers' helper.
 *
 * Owns nothing but the start-up level. Loop thread (and tests); a line is written with one
 * fwrite so concurrent processes sharing stderr do not interleave mid-line.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/log.h"
#include "batchd/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

enum bd_log_level bd_log_min_level = BD_LOG_INFO;

static const char *const log_level_names[] = { "debug", "info", "warn", "error", "off" };

void bd_log_set_level(enum bd_log_level level)
{
    bd_log_min_level = level;
}

int bd_log_level_parse(const char *s, enum bd_log_level *level)
{
    for (int i = 0; i <= BD_LOG_OFF; i++) {
        if (strcasecmp(s, log_level_names[i]) == 0) {
            *level = (enum bd_log_level)i;
            return BD_OK;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *level = BD_LOG_WARN;
        return BD_OK;
    }
    return BD_EINVAL;
}

void bd_log_write(enum bd_log_level level, const char *module, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                 tm.tm_sec, (long)(tv.tv_usec / 1000), log_level_names[level], module);
    if (n < 0)
        return;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;           /* truncated lines still end in a newline */
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
}

char *bd_log_redact_url(const char *url, char *out, size_t outlen)
{
    if (outlen == 0)
        return out;
    if (url == NULL) {
        snprintf(out, outlen, "(null)");
        return out;
    }
    const char *scheme = strstr(url, "://");
    const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    if (scheme && at) {
        const char *colon = memchr(scheme + 3, ':', (size_t)(at - (scheme + 3)));
        if (colon) {
            snprintf(out, outlen, "%.*s:***%s", (int)(colon - url), url, at);
            return out;
        }
        snprintf(out, outlen, "%s", url);
        return out;
    }
    /* conninfo "key=value ..." form: hide the password value. */
    const char *pw = strstr(url, "password=");
    if (pw) {
        const char *end = pw + strlen("password=");
        while (*end && *end != ' ')
            end++;
        snprintf(out, outlen, "%.*spassword=***%s", (int)(pw - url), url, end);
        return out;
    }
    snprintf(out, outlen, "%s", url);
    return out;
}

size_t bd_time_rfc3339(long long unix_ms, char *out, size_t outlen)
{
    /* Floor division, so that a time before 1970 is not rounded towards it. */
    time_t t = (time_t)(unix_ms >= 0 ? unix_ms / 1000 : -((-unix_ms + 999) / 1000));
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL)
        return 0;
    return strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}
