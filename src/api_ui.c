/* api_ui.c -- the web dashboard: GET /ui and GET /ui/{file}, the files of ui/ embedded in the
 * binary at build time (ui/embed.cmake, api_ui.h).
 *
 * GET / and GET /ui/ send the browser to /ui.
 *
 * Owns nothing: the files are constant arrays, each answer is one bd_http_respond. Loop
 * thread only; never blocks, never reads a file. The page is static and the same for
 * everyone, so it needs no API key (the API calls it makes do; it asks for a key on 401).
 * Every answer carries a strict Content-Security-Policy (the page's own script and style
 * only, connections to this origin only, no framing, no forms), nosniff, and an ETag that
 * browsers revalidate on each load (Cache-Control: no-cache) and get 304 for while the file
 * is unchanged.  SPDX-License-Identifier: MIT
 */
#include "api_internal.h"
#include "api_ui.h"

#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/router.h"

#include <stdio.h>
#include <string.h>

/* Stated once for every file: the HTML would need it, the others are harmless with it. */
#define UI_HEADERS                                                                          \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "   \
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "      \
    "frame-ancestors 'none'\r\n"                                                            \
    "X-Content-Type-Options: nosniff\r\n"                                                   \
    "X-Frame-Options: DENY\r\n"                                                             \
    "Referrer-Policy: no-referrer\r\n"                                                      \
    "Cache-Control: no-cache\r\n"

#define UI_LOCATION_MAX 2048                /* a longer query is dropped from the redirect */

static const struct bd__api_ui_asset *ui_find(const char *name)
{
    for (unsigned i = 0; i < bd__api_ui_assets_count; i++)
        if (strcmp(bd__api_ui_assets[i].name, name) == 0)
            return &bd__api_ui_assets[i];
    return NULL;
}

/* If-None-Match holds the file's ETag (a list may name several; "*" names any). */
static bool ui_is_unchanged(const struct bd_http_request *req, const char *etag)
{
    const char *inm = bd_http_header_get(req, "If-None-Match");

    return inm != NULL && (strstr(inm, etag) != NULL || strcmp(inm, "*") == 0);
}

static void ui_respond(struct bd_http_request *req, const struct bd__api_ui_asset *a)
{
    char headers[sizeof(UI_HEADERS) + 64];

    snprintf(headers, sizeof(headers), UI_HEADERS "ETag: %s\r\n", a->etag);
    if (ui_is_unchanged(req, a->etag))
        bd_http_respond(req, 304, NULL, headers, "", 0);
    else
        bd_http_respond(req, 200, a->content_type, headers, (const char *)a->data, a->len);
}

static void api_on_ui_page(struct bd_http_request *req, void *arg)
{
    const struct bd__api_ui_asset *a = ui_find("index.html");

    (void)arg;
    if (a == NULL) {                               /* a build without ui/index.html */
        bd_http_respond_err(req, BD_ENOTFOUND, "the dashboard is not in this build", NULL);
        return;
    }
    ui_respond(req, a);
}

static void api_on_ui_file(struct bd_http_request *req, void *arg)
{
    const struct bd__api_ui_asset *a = ui_find(req->params[0]);

    (void)arg;
    if (a == NULL) {
        bd_http_respond_err(req, BD_ENOTFOUND, "no such dashboard file", NULL);
        return;
    }
    ui_respond(req, a);
}

/* / and /ui/ (what people type): 301 to /ui, the query kept (the page's filters live
 * there). */
static void api_on_ui_redirect(struct bd_http_request *req, void *arg)
{
    char headers[UI_LOCATION_MAX + 32];
    const char *q = strlen(req->query) < UI_LOCATION_MAX - 8 ? req->query : "";

    (void)arg;
    snprintf(headers, sizeof(headers), "Location: /ui%s%s\r\n", *q ? "?" : "", q);
    bd_http_respond(req, 301, "text/plain; charset=utf-8", headers, "/ui\n", 4);
}

int bd__api_register_ui(struct bd_router *r, struct bd_server *srv)
{
    int rc = bd_router_add(r, "GET", "/ui", api_on_ui_page, srv);
    rc = rc ? rc : bd_router_add(r, "GET", "/ui/", api_on_ui_redirect, srv);
    rc = rc ? rc : bd_router_add(r, "GET", "/", api_on_ui_redirect, srv);
    return rc ? rc : bd_router_add(r, "GET", "/ui/{file}", api_on_ui_file, srv);
}
