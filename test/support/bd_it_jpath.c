/* bd_it_jpath.c -- JSON path getters for tests: "a.b.0.c" into a jansson value.
 *
 * Test code only. The typed getters fail the running cmocka test, naming the path.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bd_it.h"

static bool jpath_is_index(const char *tok)
{
    if (*tok == '\0')
        return false;
    for (const char *c = tok; *c; c++)
        if (!isdigit((unsigned char)*c))
            return false;
    return true;
}

json_t *bd_it_at(json_t *o, const char *path)
{
    char buf[256], *save = NULL;
    json_t *cur = o;

    snprintf(buf, sizeof(buf), "%s", path);
    for (char *tok = strtok_r(buf, ".", &save); tok && cur; tok = strtok_r(NULL, ".", &save)) {
        if (json_is_array(cur) && jpath_is_index(tok))
            cur = json_array_get(cur, strtoul(tok, NULL, 10));
        else
            cur = json_object_get(cur, tok);
    }
    return cur;
}

const char *bd_it_str(json_t *o, const char *path)
{
    return json_string_value(bd_it_at(o, path));
}

static json_t *jpath_typed(json_t *o, const char *path, int (*is_type)(const json_t *),
                           const char *what)
{
    json_t *v = bd_it_at(o, path);

    if (v == NULL)
        fail_msg("%s is missing", path);
    if (!is_type(v))
        fail_msg("%s is not %s", path, what);
    return v;
}

static int jpath_is_integer(const json_t *v) { return json_is_integer(v); }
static int jpath_is_real(const json_t *v) { return json_is_real(v); }
static int jpath_is_number(const json_t *v) { return json_is_number(v); }

long long bd_it_int(json_t *o, const char *path)
{
    return json_integer_value(jpath_typed(o, path, jpath_is_integer, "an integer"));
}

double bd_it_real(json_t *o, const char *path)
{
    return json_real_value(jpath_typed(o, path, jpath_is_real, "a real"));
}

double bd_it_num(json_t *o, const char *path)
{
    return json_number_value(jpath_typed(o, path, jpath_is_number, "a number"));
}
