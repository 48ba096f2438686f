/* test_router.c -- unit tests for router.c and bd_url_decode() (url.c).
 *
 * Matching without a request (req == NULL: parameters are malloc'ed and freed here), the
 * 404/405 split with its Allow list, HEAD served by GET, per-segment percent-decoding, and the
 * trailing-slash rule ("/a/" is not "/a": 404). No loop, no sockets.
 * SPDX-License-Identifier: MIT
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/router.h"
#include "batchd/url.h"

static void handler_a(struct bd_http_request *req, void *arg) { (void)req; (void)arg; }
static void handler_b(struct bd_http_request *req, void *arg) { (void)req; (void)arg; }

static int tag_get, tag_delete, tag_stats, tag_status, tag_root;

struct match {
    int rc;
    const char *pattern;
    bd_http_request_cb handler;
    void *arg;
    const char *params[BD_HTTP_MAX_PARAMS];
    unsigned count;
    char allow[64];
};

static void match_run(const struct bd_router *r, const char *method, const char *path,
                      struct match *m)
{
    memset(m, 0, sizeof(*m));
    m->rc = bd_router_match(r, NULL, method, path, &m->pattern, &m->handler, &m->arg, m->params,
                            &m->count, m->allow, sizeof(m->allow));
}

static void match_free(struct match *m)
{
    for (unsigned i = 0; i < m->count; i++)
        free((char *)m->params[i]);
    m->count = 0;
}

static int setup(void **state)
{
    struct bd_router *r = bd_router_new();

    assert_non_null(r);
    assert_int_equal(bd_router_add(r, "GET", "/api/v1/batch/jobs/{id}", handler_a, &tag_get),
                     BD_OK);
    assert_int_equal(bd_router_add(r, "DELETE", "/api/v1/batch/jobs/{id}", handler_b,
                                   &tag_delete), BD_OK);
    assert_int_equal(bd_router_add(r, "GET", "/api/v1/batch/jobs/{id}/status", handler_a,
                                   &tag_status), BD_OK);
    /* Added after the {id} route on purpose: a literal must still win. */
    assert_int_equal(bd_router_add(r, "GET", "/api/v1/batch/jobs/stats", handler_b, &tag_stats),
                     BD_OK);
    assert_int_equal(bd_router_add(r, "GET", "/", handler_a, &tag_root), BD_OK);
    assert_int_equal(bd_router_add(r, "POST", "/a/{x}/b/{y}", handler_b, NULL), BD_OK);
    *state = r;
    return 0;
}

static int teardown(void **state)
{
    bd_router_free(*state);
    return 0;
}

static void router_matches_literal_when_path_equal(void **state)
{
    struct match m;

    match_run(*state, "GET", "/", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_root);
    assert_string_equal(m.pattern, "/");
    assert_int_equal(m.count, 0);

    match_run(*state, "GET", "/api/v1/batch/jobs/stats", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_stats);
    assert_ptr_equal(m.handler, handler_b);
    assert_int_equal(m.count, 0);
}

static void router_fills_params_when_pattern_has_braces(void **state)
{
    struct match m;

    match_run(*state, "GET", "/api/v1/batch/jobs/batch_mixtral_1/status", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_status);
    assert_string_equal(m.pattern, "/api/v1/batch/jobs/{id}/status");
    assert_int_equal(m.count, 1);
    assert_string_equal(m.params[0], "batch_mixtral_1");
    match_free(&m);

    match_run(*state, "POST", "/a/one/b/two", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_int_equal(m.count, 2);
    assert_string_equal(m.params[0], "one");
    assert_string_equal(m.params[1], "two");
    match_free(&m);
}

static void router_decodes_param_per_segment_when_escaped(void **state)
{
    struct match m;

    /* "%2F" is a slash inside the parameter, not a separator. */
    match_run(*state, "GET", "/api/v1/batch/jobs/a%2Fb%20c", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_get);
    assert_int_equal(m.count, 1);
    assert_string_equal(m.params[0], "a/b c");
    match_free(&m);

    /* '+' is literal in a path. */
    match_run(*state, "GET", "/api/v1/batch/jobs/a+b", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_string_equal(m.params[0], "a+b");
    match_free(&m);

    /* Literal segments compare decoded text: %73tats is "stats". */
    match_run(*state, "GET", "/api/v1/batch/jobs/%73tats", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_stats);
}

static void router_returns_einval_when_escape_is_bad(void **state)
{
    struct match m;

    match_run(*state, "GET", "/api/v1/batch/jobs/a%zz", &m);
    assert_int_equal(m.rc, BD_EINVAL);
    match_run(*state, "GET", "/api/v1/batch/jobs/a%2", &m);
    assert_int_equal(m.rc, BD_EINVAL);
    match_run(*state, "GET", "/api/v1/batch/jobs/a%00b", &m);   /* encoded NUL */
    assert_int_equal(m.rc, BD_EINVAL);
    assert_int_equal(m.count, 0);
}

static void router_returns_notfound_when_no_pattern_matches(void **state)
{
    struct match m;

    match_run(*state, "GET", "/nope", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
    match_run(*state, "GET", "/api/v1/batch/jobs", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
    match_run(*state, "GET", "/api/v1/batch/jobs/x/status/more/and/more/segments/a/b/c/d/e/f",
              &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
    match_run(*state, "GET", "api/v1/batch/jobs/x", &m);          /* not origin-form */
    assert_int_equal(m.rc, BD_ENOTFOUND);
    /* An empty segment never fills a parameter. */
    match_run(*state, "GET", "/api/v1/batch/jobs//status", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
}

static void router_returns_emethod_with_allow_when_only_method_differs(void **state)
{
    struct match m;

    match_run(*state, "POST", "/api/v1/batch/jobs/abc", &m);
    assert_int_equal(m.rc, BD_EMETHOD);
    assert_string_equal(m.allow, "GET, DELETE");
    assert_int_equal(m.count, 0);

    match_run(*state, "PUT", "/api/v1/batch/jobs/abc/status", &m);
    assert_int_equal(m.rc, BD_EMETHOD);
    assert_string_equal(m.allow, "GET");

    /* "stats" also matches {id}, so DELETE is allowed there (by the {id} route). */
    match_run(*state, "POST", "/api/v1/batch/jobs/stats", &m);
    assert_int_equal(m.rc, BD_EMETHOD);
    assert_string_equal(m.allow, "GET, DELETE");
}

static void router_truncates_allow_when_buffer_small(void **state)
{
    const char *pattern, *params[BD_HTTP_MAX_PARAMS];
    bd_http_request_cb handler;
    void *arg;
    unsigned count;
    char allow[6];

    assert_int_equal(bd_router_match(*state, NULL, "PUT", "/api/v1/batch/jobs/x", &pattern,
                                     &handler, &arg, params, &count, allow, sizeof(allow)),
                     BD_EMETHOD);
    assert_string_equal(allow, "GET");                /* ", DELETE" did not fit */
}

static void router_serves_head_with_get_when_no_head_route(void **state)
{
    struct match m;

    match_run(*state, "HEAD", "/api/v1/batch/jobs/abc", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_get);
    assert_string_equal(m.params[0], "abc");
    match_free(&m);

    match_run(*state, "HEAD", "/a/x/b/y", &m);      /* POST only: HEAD is not allowed */
    assert_int_equal(m.rc, BD_EMETHOD);
    assert_string_equal(m.allow, "POST");
}

static void router_prefers_head_route_when_registered(void **state)
{
    struct bd_router *r = bd_router_new();
    struct match m;
    int tag_head;

    assert_int_equal(bd_router_add(r, "GET", "/x", handler_a, &tag_get), BD_OK);
    assert_int_equal(bd_router_add(r, "HEAD", "/x", handler_b, &tag_head), BD_OK);
    match_run(r, "HEAD", "/x", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_head);
    match_run(r, "GET", "/x", &m);
    assert_ptr_equal(m.arg, &tag_get);
    bd_router_free(r);
    (void)state;
}

/* Decision: a trailing slash is part of the path, so "/x/" is not "/x" (404, no redirect). */
static void router_returns_notfound_when_trailing_slash_added(void **state)
{
    struct match m;

    match_run(*state, "GET", "/api/v1/batch/jobs/abc/", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
    match_run(*state, "GET", "/api/v1/batch/jobs/abc/status/", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
}

/* A route with a trailing slash is a route of its own (the dashboard's "/ui/" redirect). */
static void router_matches_trailing_slash_only_when_registered_with_it(void **state)
{
    struct bd_router *r = *state;
    struct match m;
    int tag_slash;

    assert_int_equal(bd_router_add(r, "GET", "/ui/", handler_b, &tag_slash), BD_OK);
    match_run(r, "GET", "/ui/", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.arg, &tag_slash);
    match_free(&m);
    match_run(r, "GET", "/ui", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
    match_run(r, "GET", "/ui//", &m);
    assert_int_equal(m.rc, BD_ENOTFOUND);
}

static void router_rejects_pattern_when_malformed(void **state)
{
    struct bd_router *r = *state;

    assert_int_equal(bd_router_add(r, "GET", "no-slash", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/a//b", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/a//", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/a/{}", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/a/{x", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/a/{x-y}", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/a/b%20c", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}", handler_a, NULL),
                     BD_EINVAL);
    assert_int_equal(bd_router_add(r, "", "/ok", handler_a, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/ok", NULL, NULL), BD_EINVAL);
    assert_int_equal(bd_router_add(r, "GET", "/{a}/{b}/{c}/{d}", handler_a, NULL), BD_OK);
}

static void router_returns_econflict_when_route_repeated(void **state)
{
    struct bd_router *r = *state;

    assert_int_equal(bd_router_add(r, "GET", "/api/v1/batch/jobs/{id}", handler_b, NULL),
                     BD_ECONFLICT);
    /* Same shape under another parameter name would be ambiguous too. */
    assert_int_equal(bd_router_add(r, "DELETE", "/api/v1/batch/jobs/{job}", handler_b, NULL),
                     BD_ECONFLICT);
    assert_int_equal(bd_router_add(r, "PUT", "/api/v1/batch/jobs/{id}", handler_b, NULL), BD_OK);
}

/* A streaming route is an ordinary route to matching: its on_request is the handler, it
 * conflicts like any other, and it needs an on_headers. */
static void router_matches_stream_route_when_added_with_on_headers(void **state)
{
    struct bd_router *r = *state;
    struct match m;

    assert_int_equal(bd_router_add_stream(r, "POST", "/api/v1/batch/jobs", handler_a, handler_b,
                                          &tag_stats), BD_OK);
    match_run(r, "POST", "/api/v1/batch/jobs", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_ptr_equal(m.handler, handler_b);
    assert_ptr_equal(m.arg, &tag_stats);
    assert_string_equal(m.pattern, "/api/v1/batch/jobs");
    assert_int_equal(bd_router_add(r, "POST", "/api/v1/batch/jobs", handler_b, NULL),
                     BD_ECONFLICT);
    assert_int_equal(bd_router_add_stream(r, "PUT", "/api/v1/batch/jobs", NULL, handler_b, NULL),
                     BD_EINVAL);
    assert_int_equal(bd_router_add_stream(r, "POST", "/api/v1/batch/jobs/{id}/retry", handler_a,
                                          handler_b, NULL), BD_OK);
    match_run(r, "POST", "/api/v1/batch/jobs/j1/retry", &m);
    assert_int_equal(m.rc, BD_OK);
    assert_int_equal(m.count, 1);
    assert_string_equal(m.params[0], "j1");
    match_free(&m);
}

static void router_lists_routes_when_asked_in_insertion_order(void **state)
{
    const char *method = NULL, *pattern = NULL;

    assert_int_equal(bd_router_get_route(*state, 0, &method, &pattern), 6);
    assert_string_equal(method, "GET");
    assert_string_equal(pattern, "/api/v1/batch/jobs/{id}");
    assert_int_equal(bd_router_get_route(*state, 1, &method, &pattern), 6);
    assert_string_equal(method, "DELETE");
    assert_int_equal(bd_router_get_route(*state, 5, &method, &pattern), 6);
    assert_string_equal(pattern, "/a/{x}/b/{y}");
    method = pattern = NULL;
    assert_int_equal(bd_router_get_route(*state, 6, &method, &pattern), 6);
    assert_null(method);
}

/* ---- bd_url_decode ------------------------------------------------------------ */

static long decode(const char *in, char *out, size_t outlen, int plus)
{
    return bd_url_decode(in, strlen(in), out, outlen, plus);
}

static void url_decode_decodes_escapes_when_valid(void **state)
{
    char out[64];

    (void)state;
    assert_int_equal(decode("a%20b%2fc%2F", out, sizeof(out), 0), 6);
    assert_string_equal(out, "a b/c/");
    assert_int_equal(decode("%C3%A9t%c3%a9", out, sizeof(out), 0), 5);   /* UTF-8 bytes */
    assert_string_equal(out, "\xc3\xa9t\xc3\xa9");
    assert_int_equal(decode("", out, sizeof(out), 0), 0);
    assert_string_equal(out, "");
    /* Only the first len bytes are read. */
    assert_int_equal(bd_url_decode("abc%41zzz", 6, out, sizeof(out), 0), 4);
    assert_string_equal(out, "abcA");
}

static void url_decode_turns_plus_into_space_when_query(void **state)
{
    char out[64];

    (void)state;
    assert_int_equal(decode("a+b%2Bc", out, sizeof(out), 1), 5);
    assert_string_equal(out, "a b+c");
    assert_int_equal(decode("a+b", out, sizeof(out), 0), 3);
    assert_string_equal(out, "a+b");
}

static void url_decode_fails_when_escape_bad(void **state)
{
    char out[64];

    (void)state;
    assert_int_equal(decode("%", out, sizeof(out), 0), -1);
    assert_int_equal(decode("ab%4", out, sizeof(out), 0), -1);
    assert_int_equal(decode("%g0", out, sizeof(out), 0), -1);
    assert_int_equal(decode("%0g", out, sizeof(out), 0), -1);
    assert_int_equal(decode("% 41", out, sizeof(out), 0), -1);
}

static void url_decode_fails_when_nul_encoded(void **state)
{
    char out[64];

    (void)state;
    assert_int_equal(decode("a%00b", out, sizeof(out), 0), -1);
    assert_int_equal(decode("%00", out, sizeof(out), 1), -1);
}

static void url_decode_fails_when_output_too_small(void **state)
{
    char out[4];

    (void)state;
    assert_int_equal(decode("abc", out, sizeof(out), 0), 3);   /* exactly fits with NUL */
    assert_string_equal(out, "abc");
    assert_int_equal(decode("abcd", out, sizeof(out), 0), -1);
    assert_int_equal(decode("%41%42%43", out, sizeof(out), 0), 3);
    assert_int_equal(decode("%41%42%43%44", out, sizeof(out), 0), -1);
    assert_int_equal(decode("", out, 0, 0), -1);
    assert_int_equal(decode("", out, 1, 0), 0);
}

static void status_text_names_status_when_known(void **state)
{
    (void)state;
    assert_string_equal(bd_http_status_text(404), "Not Found");
    assert_string_equal(bd_http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(bd_http_status_text(599), "Unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(router_matches_literal_when_path_equal, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_fills_params_when_pattern_has_braces, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_decodes_param_per_segment_when_escaped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_returns_einval_when_escape_is_bad, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_returns_notfound_when_no_pattern_matches, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_returns_emethod_with_allow_when_only_method_differs,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(router_truncates_allow_when_buffer_small, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_serves_head_with_get_when_no_head_route, setup,
                                        teardown),
        cmocka_unit_test(router_prefers_head_route_when_registered),
        cmocka_unit_test_setup_teardown(router_matches_trailing_slash_only_when_registered_with_it,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(router_returns_notfound_when_trailing_slash_added, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_rejects_pattern_when_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(router_returns_econflict_when_route_repeated, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(router_matches_stream_route_when_added_with_on_headers,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(router_lists_routes_when_asked_in_insertion_order, setup,
                                        teardown),
        cmocka_unit_test(url_decode_decodes_escapes_when_valid),
        cmocka_unit_test(url_decode_turns_plus_into_space_when_query),
        cmocka_unit_test(url_decode_fails_when_escape_bad),
        cmocka_unit_test(url_decode_fails_when_nul_encoded),
        cmocka_unit_test(url_decode_fails_when_output_too_small),
        cmocka_unit_test(status_text_names_status_when_known),
    };

    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}
