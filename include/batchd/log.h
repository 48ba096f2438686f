/* log.h -- one key=value line per event to stderr.
 *
 * The level is set once before uv_run and never changed after; bd_log() checks it
 * before evaluating its arguments (redis serverLog).
 */
#ifndef BATCHD_LOG_H
#define BATCHD_LOG_H

#include <stddef.h>

enum bd_log_level { BD_LOG_DEBUG = 0, BD_LOG_INFO, BD_LOG_WARN, BD_LOG_ERROR, BD_LOG_OFF };

/* The one mutable file static allowed by STYLE.md: set at startup only. */
extern enum bd_log_level bd_log_min_level;

/* Set the level (before uv_run). */
void bd_log_set_level(enum bd_log_level level);

/* Parse "debug"/"info"/"warn"/"error"/"off". Returns BD_OK or BD_EINVAL (level unchanged). */
int bd_log_level_parse(const char *s, enum bd_log_level *level);

/* Write one line: "ts=... level=... mod=<module> <fmt...>". Use the bd_log macro. */
void bd_log_write(enum bd_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define bd_log(level, module, ...)                                     \
    do {                                                               \
        if ((level) >= bd_log_min_level)                               \
            bd_log_write((level), (module), __VA_ARGS__);              \
    } while (0)

/* Copy url into out (size outlen) with any password replaced by "***"
 * ("redis://:secret@h:1" -> "redis://:***@h:1", "postgresql://u:pw@h/db" ->
 * "postgresql://u:***@h/db", "password=x" in a conninfo -> "password=***").
 * Always NUL-terminates; returns out. */
char *bd_log_redact_url(const char *url, char *out, size_t outlen);

/* unix_ms as an RFC 3339 UTC time of whole seconds ("2025-07-15T14:30:00Z") into out: the
 * one time formatter of the API and the job module. Returns the length, 0 when out is too
 * small or the time cannot be represented. */
size_t bd_time_rfc3339(long long unix_ms, char *out, size_t outlen);

/* Look again at whether stderr is systemd's journal stream (JOURNAL_STREAM; lines then
 * carry their syslog priority, "<4>ts=..."). Tests, after changing stderr. */
void bd_log_reset_journal(void);

#endif
