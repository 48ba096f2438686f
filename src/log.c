/* log.c -- leveled key=value lines to stderr, with secrets redacted by the callers' helper.
 *
 * Owns nothing but the start-up level. Loop thread (and tests); a line is written with one
 * fwrite so concurrent processes sharing stderr do not interleave mid-line.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/log.h"
#include "batchd/error.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <stdlib.h>
#include <sys/stat.h>
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

/* 1 when stderr is the journal's stream (systemd sets JOURNAL_STREAM to its device and
 * inode): lines then start with their syslog priority ("<4>" for warn), which journald
 * takes off and keeps as the entry's priority, so `journalctl -p warning` works. 0 when
 * not; -1 until first looked at (bd_log_reset_journal looks again). */
static int log_is_journal = -1;

void bd_log_reset_journal(void)
{
    log_is_journal = -1;
}

static bool log_to_journal(void)
{
    const char *js;
    struct stat st;
    unsigned long long dev, ino;

    if (log_is_journal < 0) {
        js = getenv("JOURNAL_STREAM");
        log_is_journal = js != NULL && sscanf(js, "%llu:%llu", &dev, &ino) == 2 &&
                         fstat(fileno(stderr), &st) == 0 &&
                         (unsigned long long)st.st_dev == dev &&
                         (unsigned long long)st.st_ino == ino;
    }
    return log_is_journal == 1;
}

void bd_log_write(enum bd_log_level level, const char *module, const char *fmt, ...)
{
    /* syslog priorities: debug 7, info 6, warning 4, err 3 */
    static const char *const journal_prefix[] = { "<7>", "<6>", "<4>", "<3>", "" };
    char line[2048];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = snprintf(line, sizeof(line), "%sts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s ",
                 log_to_journal() ? journal_prefix[level] : "", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
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

/* Append src[0..n) to out at *len (always NUL-terminated, cut at outlen). */
static void redact_put(char *out, size_t outlen, size_t *len, const char *src, size_t n)
{
    if (*len + 1 >= outlen)
        return;
    if (n > outlen - 1 - *len)
        n = outlen - 1 - *len;
    memcpy(out + *len, src, n);
    *len += n;
    out[*len] = '\0';
}

/* Every "password=" value in s[0..n) replaced with ***: a query parameter (up to '&') or a
 * conninfo keyword (up to a space; a quoted value up to its closing quote, \' escapes). */
static void redact_passwords(const char *s, size_t n, char *out, size_t outlen, size_t *len)
{
    static const char key[] = "password=";
    const size_t klen = sizeof(key) - 1;
    size_t i = 0, from = 0;

    while (i + klen <= n) {
        bool at_key_start = i == 0 || s[i - 1] == '?' || s[i - 1] == '&' || s[i - 1] == ' ';
        if (!at_key_start || strncasecmp(s + i, key, klen) != 0) {
            i++;
            continue;
        }
        size_t v = i + klen, end = v;
        if (end < n && s[end] == '\'') {
            for (end++; end < n && s[end] != '\''; end++)
                if (s[end] == '\\' && end + 1 < n)
                    end++;
            if (end < n)
                end++;                          /* the closing quote */
        } else {
            while (end < n && s[end] != '&' && s[end] != ' ')
                end++;
        }
        redact_put(out, outlen, len, s + from, v - from);
        redact_put(out, outlen, len, "***", 3);
        i = from = end;
    }
    redact_put(out, outlen, len, s + from, n - from);
}

char *bd_log_redact_url(const char *url, char *out, size_t outlen)
{
    size_t len = 0;

    if (outlen == 0)
        return out;
    out[0] = '\0';
    if (url == NULL) {
        snprintf(out, outlen, "(null)");
        return out;
    }
    size_t n = strlen(url);
    const char *scheme = strstr(url, "://");
    if (scheme != NULL) {
        /* The authority runs to the first '/', '?' or '#'; its userinfo to the LAST '@' in
         * it (a password may hold an '@' of its own). */
        const char *auth = scheme + 3;
        const char *end = auth + strcspn(auth, "/?#");
        const char *at = NULL;
        for (const char *p = auth; p < end; p++)
            if (*p == '@')
                at = p;
        if (at != NULL) {
            const char *colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon != NULL) {
                redact_put(out, outlen, &len, url, (size_t)(colon + 1 - url));
                redact_put(out, outlen, &len, "***", 3);
                redact_put(out, outlen, &len, at, (size_t)(end - at));
            } else {
                redact_put(out, outlen, &len, url, (size_t)(end - url));
            }
        } else {
            redact_put(out, outlen, &len, url, (size_t)(end - url));
        }
        redact_passwords(end, n - (size_t)(end - url), out, outlen, &len);
        return out;
    }
    /* conninfo "key=value ..." form. */
    redact_passwords(url, n, out, outlen, &len);
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
