/* test_openapi.c -- docs/openapi.yaml describes exactly the routes batchd serves.
 *
 * Builds the real route table (bd_api_register on a zeroed server: registration only
 * stores the pointer) and compares it, both ways, with the operations under "paths:" in
 * docs/openapi.yaml ($BD_SOURCE_DIR, else the working directory). The YAML is read with a
 * line scan that knows the file's layout: two-space indented path keys, four-space
 * indented method keys; a layout change that hides operations makes the counts differ.
 * Also checks that the file is well-formed YAML (libyaml through libcyaml, every key but
 * "openapi" ignored), that it is OpenAPI 3.1, and that every operation has an operationId
 * and responses. SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <cyaml/cyaml.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/api.h"
#include "batchd/error.h"
#include "batchd/router.h"
#include "batchd/server.h"

#define MAX_OPS 128

struct op {
    char method[16];                  /* lower case */
    char path[256];
    bool has_operation_id;
    bool has_responses;
};

struct spec {
    struct op ops[MAX_OPS];
    unsigned count;
    bool is_31;
};

static const char *const spec_methods[] = { "get", "put", "post", "delete", "patch",
                                            "head", "options", "trace" };

static bool is_method(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof(spec_methods) / sizeof(spec_methods[0]); i++)
        if (strlen(spec_methods[i]) == n && strncmp(s, spec_methods[i], n) == 0)
            return true;
    return false;
}

static size_t indent_of(const char *line)
{
    size_t n = 0;
    while (line[n] == ' ')
        n++;
    return n;
}

/* Parse the operations of spec_path into s. */
static void spec_load(const char *spec_path, struct spec *s)
{
    FILE *f = fopen(spec_path, "r");
    char line[1024], path[256] = "";
    bool in_paths = false;
    struct op *cur = NULL;

    if (f == NULL)
        fprintf(stderr, "cannot open %s (set BD_SOURCE_DIR)\n", spec_path);
    assert_non_null(f);
    memset(s, 0, sizeof(*s));
    while (fgets(line, sizeof(line), f)) {
        size_t ind = indent_of(line), len;
        char *p = line + ind;

        line[strcspn(line, "\r\n")] = '\0';
        if (*p == '\0' || *p == '#')
            continue;
        if (ind == 0) {
            in_paths = strncmp(p, "paths:", 6) == 0;
            if (strncmp(p, "openapi:", 8) == 0 && strstr(p, "3.1") != NULL)
                s->is_31 = true;
            cur = NULL;
            continue;
        }
        if (!in_paths)
            continue;
        if (ind == 2) {
            /* A path key, maybe quoted: /a/{id}: or '/a/{id}': */
            char *q = p;
            if (*q == '\'' || *q == '"')
                q++;
            len = strcspn(q, "'\":");
            assert_true(len < sizeof(path));
            memcpy(path, q, len);
            path[len] = '\0';
            cur = NULL;
            continue;
        }
        if (ind == 4) {
            len = strcspn(p, ":");
            if (p[len] == ':' && is_method(p, len)) {
                assert_true(s->count < MAX_OPS);
                cur = &s->ops[s->count++];
                memcpy(cur->method, p, len);
                cur->method[len] = '\0';
                snprintf(cur->path, sizeof(cur->path), "%s", path);
            } else {
                cur = NULL;                /* "parameters:", "summary:" of the path item */
            }
            continue;
        }
        if (ind == 6 && cur) {
            if (strncmp(p, "operationId:", 12) == 0)
                cur->has_operation_id = true;
            if (strncmp(p, "responses:", 10) == 0)
                cur->has_responses = true;
        }
    }
    fclose(f);
}

static const struct op *spec_find(const struct spec *s, const char *method, const char *path)
{
    for (unsigned i = 0; i < s->count; i++)
        if (strcmp(s->ops[i].method, method) == 0 && strcmp(s->ops[i].path, path) == 0)
            return &s->ops[i];
    return NULL;
}

static int setup(void **state)
{
    static struct spec spec;
    char path[1024];
    const char *dir = getenv("BD_SOURCE_DIR");

    snprintf(path, sizeof(path), "%s/docs/openapi.yaml", dir && *dir ? dir : ".");
    spec_load(path, &spec);
    *state = &spec;
    return 0;
}

static void lower(char *dst, size_t n, const char *src)
{
    size_t i = 0;
    for (; src[i] && i + 1 < n; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

static void openapi_is_version_31_when_read(void **state)
{
    const struct spec *s = *state;
    assert_true(s->is_31);
    assert_true(s->count > 0);
}

struct oa_doc {
    char *openapi;
};

static const cyaml_schema_field_t oa_fields[] = {
    CYAML_FIELD_STRING_PTR("openapi", CYAML_FLAG_POINTER, struct oa_doc, openapi, 1,
                           CYAML_UNLIMITED),
    CYAML_FIELD_END
};

static const cyaml_schema_value_t oa_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct oa_doc, oa_fields),
};

static void openapi_is_well_formed_yaml_when_parsed(void **state)
{
    const cyaml_config_t cc = {
        .log_fn = cyaml_log, .mem_fn = cyaml_mem, .log_level = CYAML_LOG_ERROR,
        .flags = CYAML_CFG_IGNORE_UNKNOWN_KEYS,
    };
    struct oa_doc *doc = NULL;
    char path[1024];
    const char *dir = getenv("BD_SOURCE_DIR");
    cyaml_err_t err;

    (void)state;
    snprintf(path, sizeof(path), "%s/docs/openapi.yaml", dir && *dir ? dir : ".");
    err = cyaml_load_file(path, &cc, &oa_schema, (cyaml_data_t **)&doc, NULL);
    if (err != CYAML_OK)
        fprintf(stderr, "%s: %s\n", path, cyaml_strerror(err));
    assert_int_equal(err, CYAML_OK);
    assert_non_null(doc);
    assert_string_equal(doc->openapi, "3.1.0");
    cyaml_free(&cc, &oa_schema, doc, 0);
}

static void openapi_describes_every_route_when_router_built(void **state)
{
    const struct spec *s = *state;
    struct bd_server srv;
    struct bd_router *r = bd_router_new();
    const char *method, *pattern;
    unsigned n, missing = 0;

    memset(&srv, 0, sizeof(srv));
    assert_non_null(r);
    assert_int_equal(bd_api_register(r, &srv), BD_OK);
    n = bd_router_get_route(r, 0, &method, &pattern);
    assert_true(n > 0);
    for (unsigned i = 0; i < n; i++) {
        char m[16];
        assert_int_equal(bd_router_get_route(r, i, &method, &pattern), n);
        lower(m, sizeof(m), method);
        if (spec_find(s, m, pattern) == NULL) {
            fprintf(stderr, "served but not in docs/openapi.yaml: %s %s\n", method, pattern);
            missing++;
        }
    }
    assert_int_equal(missing, 0);
    bd_router_free(r);
    bd_api_free(&srv);
}

static void openapi_lists_only_served_routes_when_router_built(void **state)
{
    const struct spec *s = *state;
    struct bd_server srv;
    struct bd_router *r = bd_router_new();
    const char *method, *pattern;
    unsigned n, extra = 0;

    memset(&srv, 0, sizeof(srv));
    assert_non_null(r);
    assert_int_equal(bd_api_register(r, &srv), BD_OK);
    n = bd_router_get_route(r, 0, &method, &pattern);
    for (unsigned k = 0; k < s->count; k++) {
        bool found = false;
        for (unsigned i = 0; i < n && !found; i++) {
            char m[16];
            bd_router_get_route(r, i, &method, &pattern);
            lower(m, sizeof(m), method);
            found = strcmp(m, s->ops[k].method) == 0 && strcmp(pattern, s->ops[k].path) == 0;
        }
        if (!found) {
            fprintf(stderr, "in docs/openapi.yaml but not served: %s %s\n", s->ops[k].method,
                    s->ops[k].path);
            extra++;
        }
    }
    assert_int_equal(extra, 0);
    assert_int_equal(s->count, n);
    bd_router_free(r);
    bd_api_free(&srv);
}

static void openapi_operations_have_id_and_responses_when_read(void **state)
{
    const struct spec *s = *state;
    assert_true(s->count > 0);                 /* not vacuously true on an empty read */
    for (unsigned i = 0; i < s->count; i++) {
        if (!s->ops[i].has_operation_id || !s->ops[i].has_responses)
            fprintf(stderr, "%s %s lacks operationId or responses\n", s->ops[i].method,
                    s->ops[i].path);
        assert_true(s->ops[i].has_operation_id);
        assert_true(s->ops[i].has_responses);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(openapi_is_version_31_when_read),
        cmocka_unit_test(openapi_is_well_formed_yaml_when_parsed),
        cmocka_unit_test(openapi_describes_every_route_when_router_built),
        cmocka_unit_test(openapi_lists_only_served_routes_when_router_built),
        cmocka_unit_test(openapi_operations_have_id_and_responses_when_read),
    };
    return cmocka_run_group_tests_name("openapi", tests, setup, NULL);
}
