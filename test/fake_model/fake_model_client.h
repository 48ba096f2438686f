/* fake_model_client.h -- start and stop the fake model server from a test (header-only).
 *
 * Test code only: fork/exec and blocking reads are fine here, never in src/. Linux-only
 * (PR_SET_PDEATHSIG, so a crashed test does not leave a fake server behind).
 * SPDX-License-Identifier: MIT
 *
 *     pid_t pid;
 *     int port;
 *     const char *const args[] = {"--dim", "16", "--latency-ms", "5", NULL};
 *     if (fake_model_spawn(NULL, args, &pid, &port) < 0)     // NULL: $BD_FAKE_MODEL_BIN
 *         fail();
 *     ... talk to http://127.0.0.1:<port>/api/embed, /v1/embeddings, /embed,
 *         GET /stats, POST /stats/reset, POST /config {"reset":true, "fail_rate":1} ...
 *     assert(fake_model_stop(pid) == 0);                      // exit status 0 = clean
 */
#ifndef FAKE_MODEL_CLIENT_H
#define FAKE_MODEL_CLIENT_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FAKE_MODEL_MAX_ARGS 64

static inline double fake_model__now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Start the fake model server bin (NULL: the BD_FAKE_MODEL_BIN environment variable) on
 * 127.0.0.1 with an ephemeral port, plus args (NULL or a NULL-terminated list of flags,
 * e.g. {"--fail-rate", "0.5", NULL}; a "--port" in args overrides the ephemeral one). Waits
 * up to 10 s for its "fake_model listening port=N" line. On success returns 0 and sets *pid
 * and *port; stop it with fake_model_stop(). On failure returns -1 (message on stderr) and
 * leaves no process behind. Its stderr stays the test's stderr. */
static inline int fake_model_spawn(const char *bin, const char *const *args, pid_t *pid,
                                   int *port)
{
    const char *argv[FAKE_MODEL_MAX_ARGS + 4];
    size_t argc = 0;
    int fds[2];
    char line[256];
    size_t len = 0;

    if (bin == NULL)
        bin = getenv("BD_FAKE_MODEL_BIN");
    if (bin == NULL || *bin == '\0') {
        fprintf(stderr, "fake_model_spawn: no binary (set BD_FAKE_MODEL_BIN)\n");
        return -1;
    }
    argv[argc++] = bin;
    argv[argc++] = "--port";
    argv[argc++] = "0";
    for (size_t i = 0; args && args[i]; i++) {
        if (argc >= FAKE_MODEL_MAX_ARGS + 3) {
            fprintf(stderr, "fake_model_spawn: too many args\n");
            return -1;
        }
        argv[argc++] = args[i];
    }
    argv[argc] = NULL;

    if (pipe(fds) < 0) {
        perror("fake_model_spawn: pipe");
        return -1;
    }
    fflush(NULL);                      /* do not let the child inherit unflushed output */
    pid_t child = fork();
    if (child < 0) {
        perror("fake_model_spawn: fork");
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(bin, (char *const *)argv);
        fprintf(stderr, "fake_model_spawn: exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    close(fds[1]);

    double deadline = fake_model__now() + 10.0;
    *port = -1;
    while (*port < 0) {
        double left = deadline - fake_model__now();
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)(left * 1000) + 1) == 0) {
            fprintf(stderr, "fake_model_spawn: no port line from %s within 10 s\n", bin);
            break;
        }
        ssize_t n = read(fds[0], line + len, sizeof line - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "fake_model_spawn: %s exited before listening\n", bin);
            break;
        }
        len += (size_t)n;
        line[len] = '\0';
        const char *p = strstr(line, "fake_model listening port=");
        if (p && strchr(p, '\n'))
            *port = atoi(p + strlen("fake_model listening port="));
        else if (len == sizeof line - 1)
            len = 0;                   /* not our line and no room: drop it */
    }
    /* The server prints nothing else on stdout, so the pipe can go; a stray write would get
     * EPIPE (it ignores SIGPIPE). */
    close(fds[0]);
    if (*port <= 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        return -1;
    }
    *pid = child;
    return 0;
}

/* SIGTERM pid and wait up to 5 s (then SIGKILL). Returns its exit status (0 = clean
 * shutdown), 128 + signal if a signal killed it, or -1 if it had to be killed or was not
 * our child. */
static inline int fake_model_stop(pid_t pid)
{
    int status;

    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    double deadline = fake_model__now() + 5.0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (fake_model__now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

#endif
