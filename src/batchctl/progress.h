/* progress.h -- progress bars on stderr, and the small formatters they use.
 *
 * A bar is drawn only when stderr is a terminal (and not --quiet): redrawn in place with
 * '\r', at most ten times a second, and ended with a newline. Elsewhere nothing is drawn,
 * so logs and pipes get no control characters. The formatters are pure and unit-tested.
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_PROGRESS_H
#define BATCHCTL_PROGRESS_H

#include <stdbool.h>
#include <stddef.h>

struct bctl_progress {
    bool is_enabled;             /* stderr is a terminal and not --quiet */
    bool is_drawn;               /* a bar is on the line now */
    double last_draw;            /* monotonic seconds */
    double started;
    int width;                   /* the terminal's columns */
    int cells;                   /* the bar's width */
};

/* Set p up: enabled when want and stderr is a terminal. Allocates nothing. */
void bctl_progress_init(struct bctl_progress *p, bool want);

/* Draw the bar at fraction (0..1; < 0: unknown, drawn as an empty bar) followed by text,
 * unless the last draw was under 100 ms ago and !force. No-op when disabled. */
void bctl_progress_draw(struct bctl_progress *p, double fraction, const char *text, bool force);

/* End the bar's line (a newline when one is drawn). */
void bctl_progress_end(struct bctl_progress *p);

/* Seconds since bctl_progress_init. */
double bctl_progress_elapsed(const struct bctl_progress *p);

/* The bar itself: "[#####     ]" of width cells (plus the brackets) into out, NUL-terminated
 * and truncated to outlen. fraction is clamped to 0..1. Returns out. */
char *bctl_progress_bar(char *out, size_t outlen, int width, double fraction);

/* "512 B", "1.5 KiB", "20.0 MiB", "3.2 GiB". Returns out. */
char *bctl_progress_fmt_bytes(char *out, size_t outlen, double bytes);

/* "45s", "3m05s", "2h10m". Negative or NaN: "?". Returns out. */
char *bctl_progress_fmt_duration(char *out, size_t outlen, double seconds);

/* Monotonic seconds. */
double bctl_progress_now(void);

#endif
