/* bctl.h -- what every module of batchctl shares: its exit codes.
 *
 * batchctl is a command-line client of batchd's REST API (src/batchctl/, built as its own
 * executable; nothing here is part of batchd_core). Exit codes say what happened, so that
 * scripts can branch on them; docs/batchctl.1 documents this table and must change with it.
 * SPDX-License-Identifier: MIT
 */
#ifndef BATCHCTL_BCTL_H
#define BATCHCTL_BCTL_H

enum bctl_exit {
    BCTL_EXIT_OK = 0,            /* done; for submit --wait and watch: the job completed */
    BCTL_EXIT_USAGE = 1,         /* bad command line */
    BCTL_EXIT_CONNECT = 2,       /* no answer: connection refused, timeout, transfer cut */
    BCTL_EXIT_REFUSED = 3,       /* the server refused the request: a 4xx not listed below */
    BCTL_EXIT_NOT_FOUND = 4,     /* 404: no such job */
    BCTL_EXIT_SERVER = 5,        /* 5xx (or an answer batchctl cannot read) */
    BCTL_EXIT_JOB_FAILED = 6,    /* the job ended failed */
    BCTL_EXIT_JOB_CANCELLED = 7, /* the job ended cancelled */
    BCTL_EXIT_AUTH = 8,          /* 401/403: API key missing or wrong */
    BCTL_EXIT_LOCAL = 9,         /* a local file could not be read or written; out of memory */
    BCTL_EXIT_UNSUPPORTED = 10,  /* the server has no such endpoint (an older batchd) */
};

#endif
