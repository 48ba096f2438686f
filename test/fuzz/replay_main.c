/* replay_main.c -- a main() for the fuzz targets when libFuzzer is not linked (gcc, the
 * normal build): runs LLVMFuzzerTestOneInput once over every file given, or over every
 * regular file of every directory given (not recursive, in name order, so a failure names
 * the same file every time).
 *
 * Each input is copied into a buffer of exactly its size, as libFuzzer does, so a read past
 * the end shows up under ASan. Exits 1 when nothing was replayed (a wrong corpus path must
 * not pass silently), 2 when an argument cannot be read; a failing input aborts in the
 * target. Not part of batchd.  SPDX-License-Identifier: MIT
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* Read path whole into a malloc'ed buffer of exactly its size (one byte for an empty file,
 * so the pointer is never NULL). Returns 0, or -1 with errno set. */
static int read_file(const char *path, uint8_t **data, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    struct stat st;
    uint8_t *buf;
    size_t n;

    if (fp == NULL)
        return -1;
    if (fstat(fileno(fp), &st) != 0) {
        fclose(fp);
        return -1;
    }
    if ((buf = malloc(st.st_size > 0 ? (size_t)st.st_size : 1)) == NULL) {
        fclose(fp);
        errno = ENOMEM;
        return -1;
    }
    n = fread(buf, 1, (size_t)st.st_size, fp);
    if (ferror(fp) || n != (size_t)st.st_size) {
        fclose(fp);
        free(buf);
        errno = EIO;
        return -1;
    }
    fclose(fp);
    *data = buf;
    *size = n;
    return 0;
}

static int run_file(const char *path, unsigned *count)
{
    uint8_t *data;
    size_t size;

    if (read_file(path, &data, &size) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (getenv("BD_FUZZ_VERBOSE") != NULL)
        fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    ++*count;
    return 0;
}

static int is_not_dotfile(const struct dirent *e)
{
    return e->d_name[0] != '.';
}

static int run_dir(const char *dir, unsigned *count)
{
    struct dirent **names;
    int n = scandir(dir, &names, is_not_dotfile, alphasort);
    int rc = 0;

    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;

        snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
        if (rc == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode))
            rc = run_file(path, count);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    unsigned count = 0;

    if (LLVMFuzzerInitialize != NULL)
        LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 1; i < argc; i++) {
        struct stat st;
        int rc;

        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        rc = S_ISDIR(st.st_mode) ? run_dir(argv[i], &count) : run_file(argv[i], &count);
        if (rc != 0)
            return 2;
    }
    printf("replay: %u inputs\n", count);
    if (count == 0) {
        fprintf(stderr, "replay: no inputs (usage: %s DIR_OR_FILE...)\n", argv[0]);
        return 1;
    }
    return 0;
}
