/* bd_it_fake.c -- the fake model server's admin routes (/config, /stats) for tests.
 *
 * Test code only (blocking libcurl through bd_it_http_ex). Starting and stopping the fake is
 * test/fake_model/fake_model_client.h's job; this file only talks to a running one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>

#include "bd_it.h"

/* The fake answers its admin routes at once, even while it hangs model calls; 5 s is plenty
 * and keeps a dead fake from stalling a case for bd_it_http's 30 s. */
#define FAKE_ADMIN_TIMEOUT_MS 5000

json_t *bd_it_fake_json(int port, const char *method, const char *path, const char *body)
{
    struct bd_it_resp r;
    char url[256];
    json_t *j;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    if (bd_it_http_ex(method, url, body, NULL, FAKE_ADMIN_TIMEOUT_MS, &r) != 0)
        return NULL;
    j = r.status == 200 ? json_loadb(r.body, r.len, 0, NULL) : NULL;
    if (r.status != 200)
        fprintf(stderr, "fake model %s %s -> %ld %.300s\n", method, path, r.status, r.body);
    bd_it_resp_free(&r);
    return j;
}

void bd_it_fake_config(int port, const char *json)
{
    json_t *j = bd_it_fake_json(port, "POST", "/config", json);

    if (j == NULL)
        fail_msg("fake model refused POST /config %s", json);
    json_decref(j);
}

void bd_it_fake_reset(int port, const char *extra)
{
    char body[512];
    json_t *j;

    snprintf(body, sizeof(body), "{\"reset\":true%s}", extra ? extra : "");
    bd_it_fake_config(port, body);
    j = bd_it_fake_json(port, "POST", "/stats/reset", "{}");
    if (j == NULL)
        fail_msg("fake model refused POST /stats/reset");
    json_decref(j);
}

long long bd_it_fake_stat(int port, const char *path)
{
    json_t *j = bd_it_fake_json(port, "GET", "/stats", NULL);
    long long v;

    if (j == NULL)
        fail_msg("fake model GET /stats failed");
    v = bd_it_int(j, path);            /* fails the test (j leaks then: test code) */
    json_decref(j);
    return v;
}
