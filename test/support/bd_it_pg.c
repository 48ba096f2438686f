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

int bd_it_scratch_open(struct bd_it_scratch *s, const char *prefix, const char *db_env,
                       const char *db_default)
{
    const char *redis = bd_it_env("BATCH_REDIS_URL", "redis://127.0.0.1:16380/0");
    const char *db = bd_it_env(db_env, db_default);
    const char *slash = strchr(redis + strlen("redis://"), '/');
    char *out;

    snprintf(s->schema, sizeof(s->schema), "%s_%d", prefix, (int)getpid());
    snprintf(s->pg_base, sizeof(s->pg_base), "%s",
             bd_it_env("BATCH_POSTGRES_URL", "postgresql://batchd@127.0.0.1:15433/batchd"));
    bd_it_pg_schema_url(s->pg_url, sizeof(s->pg_url), s->pg_base, s->schema);
    snprintf(s->redis_url, sizeof(s->redis_url), "%.*s/%s",
             (int)(slash ? slash - redis : (long)strlen(redis)), redis, db);
    out = bd_it_psql_url(s->pg_base, NULL, "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s;",
                         s->schema, s->schema);
    if (out == NULL) {
        fprintf(stderr, "cannot reach PostgreSQL at %s (is the test stack up?)\n", s->pg_base);
        return -1;
    }
    free(out);
    bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null", s->redis_url);
    /* bd_it_start writes these URLs into batchd's config. */
    setenv("BATCH_POSTGRES_URL", s->pg_url, 1);
    setenv("BATCH_REDIS_URL", s->redis_url, 1);
    return 0;
}

int bd_it_scratch_proxy(const struct bd_it_scratch *s, const char *marker, char *out,
                        size_t outlen)
{
    char base[600];
    int port = bd_it_pgproxy_start(s->pg_base, marker);
    /* The same URL with the proxy's port: postgresql://[user@]host:port/db[?params]. */
    const char *at = strchr(s->pg_base, '@');
    const char *colon = strchr(at ? at : s->pg_base + strlen("postgresql://"), ':');
    const char *after_port = colon ? strpbrk(colon, "/?") : NULL;

    if (port < 0 || colon == NULL || after_port == NULL) {
        fprintf(stderr, "cannot start a PostgreSQL proxy for %s\n", s->pg_base);
        return -1;
    }
    snprintf(base, sizeof(base), "%.*s:%d%s", (int)(colon - s->pg_base), s->pg_base, port,
             after_port);
    bd_it_pg_schema_url(out, outlen, base, s->schema);
    setenv("BATCH_POSTGRES_URL", out, 1);
    return 0;
}

int bd_it_openai_sdk_install(void)
{
    return bd_it_sh("cd '%s/test/openai' && { [ -f node_modules/openai/package.json ] "
                    "|| npm ci --no-audit --no-fund --loglevel=error; }",
                    bd_it_env("BD_SOURCE_DIR", "."));
}

int bd_it_openai_sdk(const char *script, const char *env)
{
    if (bd_it_openai_sdk_install() != 0)
        return -1;
    return bd_it_sh("cd '%s/test/openai' && %s node %s >&2", bd_it_env("BD_SOURCE_DIR", "."),
                    env, script);
}

void bd_it_scratch_close(const struct bd_it_scratch *s)
{
    free(bd_it_psql_url(s->pg_base, NULL, "DROP SCHEMA IF EXISTS %s CASCADE;", s->schema));
    bd_it_sh("redis-cli -u '%s' FLUSHDB >/dev/null", s->redis_url);
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

/* The first value psql printed as a number, -1 when it failed or printed none. Frees out. */
static long pg_take_long(char *out)
{
    char *end;
    long v = out ? strtol(out, &end, 10) : -1;

    if (out && end == out)
        v = -1;
    free(out);
    return v;
}

long bd_it_psql_long(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = pg_vrun(NULL, NULL, fmt, ap);
    va_end(ap);
    return pg_take_long(out);
}

long bd_it_psql_long_url(const char *url, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *out = pg_vrun(url, NULL, fmt, ap);
    va_end(ap);
    return pg_take_long(out);
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
