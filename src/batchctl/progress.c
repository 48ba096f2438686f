/* progress.c -- progress bars on stderr (see progress.h).
 *
 * Owns nothing but the terminal line it draws on, and SIGINT/SIGTERM while a bar may be
 * drawn (to end its line first). Single-threaded CLI code.
 * SPDX-License-Identifier: MIT
 */
#include "progress.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define BAR_CELLS_MAX 40

/* The one mutable file static, because a signal handler can reach nothing else: true while
 * a bar is on the terminal's line, so that Ctrl-C ends that line before the shell's prompt
 * comes back. */
static volatile sig_atomic_t progress_is_line_open;

static void progress_on_signal(int sig)
{
    if (progress_is_line_open) {
        ssize_t n = write(STDERR_FILENO, "\n", 1);
        (void)n;
    }
    signal(sig, SIG_DFL);
    raise(sig);                                   /* die of it, as the shell expects */
}

double bctl_progress_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bctl_progress_init(struct bctl_progress *p, bool want)
{
    struct winsize ws;

    memset(p, 0, sizeof(*p));
    p->is_enabled = want && isatty(STDERR_FILENO);
    p->started = bctl_progress_now();
    p->width = 80;
    if (p->is_enabled && ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
        p->width = ws.ws_col;
    /* The bar keeps one width while its text changes: 10 to BAR_CELLS_MAX cells. */
    p->cells = p->width >= 120 ? BAR_CELLS_MAX : p->width >= 100 ? 30 : p->width >= 80 ? 16
                                                                                 : 10;
    if (p->is_enabled) {
        signal(SIGINT, progress_on_signal);
        signal(SIGTERM, progress_on_signal);
    }
}

double bctl_progress_elapsed(const struct bctl_progress *p)
{
    return bctl_progress_now() - p->started;
}

char *bctl_progress_bar(char *out, size_t outlen, int width, double fraction)
{
    char cells[BAR_CELLS_MAX + 1];
    int filled;

    if (width > BAR_CELLS_MAX)
        width = BAR_CELLS_MAX;
    if (width < 1)
        width = 1;
    if (!(fraction > 0))                          /* negative, zero or NaN */
        fraction = 0;
    if (fraction > 1)
        fraction = 1;
    filled = (int)floor(fraction * width + 1e-9);
    for (int i = 0; i < width; i++)
        cells[i] = i < filled ? '#' : ' ';
    cells[width] = '\0';
    snprintf(out, outlen, "[%s]", cells);
    return out;
}

char *bctl_progress_fmt_bytes(char *out, size_t outlen, double bytes)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
    int u = -1;

    if (bytes < 1024) {
        snprintf(out, outlen, "%.0f B", bytes < 0 ? 0 : bytes);
        return out;
    }
    while (bytes >= 1024 && u < 3) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, outlen, "%.1f %s", bytes, units[u]);
    return out;
}

char *bctl_progress_fmt_duration(char *out, size_t outlen, double seconds)
{
    long s;

    if (!(seconds >= 0) || seconds > 1e9) {
        snprintf(out, outlen, "?");
        return out;
    }
    s = (long)(seconds + 0.5);
    if (s < 60)
        snprintf(out, outlen, "%lds", s);
    else if (s < 3600)
        snprintf(out, outlen, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(out, outlen, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
    return out;
}

void bctl_progress_draw(struct bctl_progress *p, double fraction, const char *text, bool force)
{
    char bar[BAR_CELLS_MAX + 3];
    char pct[16];
    double now;
    int cells;

    if (!p->is_enabled)
        return;
    now = bctl_progress_now();
    if (!force && p->is_drawn && now - p->last_draw < 0.1)
        return;
    p->last_draw = now;
    cells = p->cells;
    if (fraction >= 0)
        snprintf(pct, sizeof(pct), "%5.1f%%", fraction > 1 ? 100.0 : fraction * 100);
    else
        snprintf(pct, sizeof(pct), "    ?");
    /* "\033[K" clears what a longer earlier line left behind. */
    fprintf(stderr, "\r%s %s %.*s\033[K", bctl_progress_bar(bar, sizeof(bar), cells, fraction),
            pct, p->width > cells + 12 ? p->width - cells - 12 : 0, text);
    fflush(stderr);
    p->is_drawn = true;
    progress_is_line_open = 1;
}

void bctl_progress_end(struct bctl_progress *p)
{
    if (p->is_enabled && p->is_drawn) {
        fputc('\n', stderr);
        fflush(stderr);
    }
    p->is_drawn = false;
    progress_is_line_open = 0;
}
