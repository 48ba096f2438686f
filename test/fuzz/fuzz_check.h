/* fuzz_check.h -- the one check macro of the fuzz targets: a failed property prints
 * "<target>: check failed: <condition>: <details>" and aborts, which libFuzzer and the
 * replay runner both report. Define FUZZ_NAME ("fuzz_http") before including it.
 */
#ifndef BD_FUZZ_CHECK_H
#define BD_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond, ...)                                                            \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, FUZZ_NAME ": check failed: %s: ", #cond);                    \
            fprintf(stderr, __VA_ARGS__);                                                \
            fputc('\n', stderr);                                                         \
            abort();                                                                     \
        }                                                                                \
    } while (0)

#endif
