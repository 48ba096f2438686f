/* bd_it_pg.c -- SQL on the test database for integration tests, through psql.
 *
 * Test code only (blocking). The SQL is written to a file and run with psql -f, so no
 * statement text passes through the shell.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bd_it.h"

const char *bd_it_pg_url(void)
{
    return bd_it_env("BATCH_POSTGRES_URL", "postgresql://batchd@127.0.0.1:15433/batchd");
}

void bd_it_pg_schema_url(char *out, size_t outlen, const char *base, const char *schema)
{
    if (strstr(base, "://") != NULL)
        snprintf(out, outlen, "%s%coptions=-c%%20search_path%%3D%s", base,
                 strchr(base, '?') != NULL ? '&' : '?', schema);
    else
        snprintf(out, outlen, "%s options='-c search_path=%s'", base, schema);
}

static char *pg_vrun(const char *url, const char *psql_args, const char *fmt, va_list ap)
{
    static unsigned counter;
    char path[128], cmd[4096];
    FILE *f;
    char *out = NULL;
    size_t len = 0, cap = 0;
    char chunk[4096];
    size_t n;

    snprintf(path, sizeof(path), "/tmp/bd_it_%d_%u.sql", (int)getpid(), counter++);
    f = fopen(path, "w");
    if (f == NULL)
        return NULL;
    vfprintf(f, fmt, ap);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "psql '%s' -X -q -A -t -v ON_ERROR_STOP=1 %s -f %s",
             url ? url : bd_it_pg_url(), psql_args ? psql_args : "", path);
    f = popen(cmd, "r");
    if (f == NULL) {
        unlink(path);
        return NULL;
    }
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            out = realloc(out, cap);
            if (out == NULL)
                break;
        }
        memcpy(out + len, chunk, n);
        len += n;
    }
    int status = pclose(f);
    unlink(path);
    if (out == NULL && status == 0)
        out = calloc(1, 1);
    else if (out)
        out[len] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

char *bd_it_psql_url(const char *url, const char *psql_args, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = pg_vrun(url, psql_args, fmt, ap);
    va_end(ap);
    return out;
}

int bd_it_psql_exec(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = pg_vrun(NULL, NULL, fmt, ap);
    va_end(ap);
    int rc = out ? 0 : -1;
    free(out);
    return rc;
}

long bd_it_psql_long(const char *fmt, ...)
{
    va_list ap;
    char *end;
    va_start(ap, fmt);
    char *out = pg_vrun(NULL, NULL, fmt, ap);
    va_end(ap);
    long v = out ? strtol(out, &end, 10) : -1;
    if (out && end == out)
        v = -1;
    free(out);
    return v;
}

long bd_it_psql_long_url(const char *url, const char *fmt, ...)
{
    va_list ap;
    char *end;
    va_start(ap, fmt);
    char *out = pg_vrun(url, NULL, fmt, ap);
    va_end(ap);
    long v = out ? strtol(out, &end, 10) : -1;
    if (out && end == out)
        v = -1;
    free(out);
    return v;
}

int bd_it_psql_str(char *out, size_t outlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *all = pg_vrun(NULL, NULL, fmt, ap);
    va_end(ap);
    if (outlen)
        out[0] = '\0';
    if (all == NULL)
        return -1;
    size_t n = strcspn(all, "\n");
    if (n >= outlen)
        n = outlen ? outlen - 1 : 0;
    if (outlen) {
        memcpy(out, all, n);
        out[n] = '\0';
    }
    free(all);
    return 0;
}

json_t *bd_it_psql_json_rows(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *all = pg_vrun(NULL, NULL, fmt, ap);
    va_end(ap);
    if (all == NULL)
        fail_msg("psql failed");
    json_t *rows = json_array();
    for (char *line = all; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        json_error_t err;
        json_t *row = json_loadb(line, n, 0, &err);
        if (row == NULL) {
            fprintf(stderr, "psql row is not JSON (%s): %.200s\n", err.text, line);
            free(all);
            json_decref(rows);
            fail();
        }
        json_array_append_new(rows, row);
        line = nl ? nl + 1 : line + n;
    }
    free(all);
    return rows;
}
