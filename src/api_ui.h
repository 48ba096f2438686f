/* api_ui.h -- the web dashboard's files, embedded at build time, and its routes.
 *
 * ui/embed.cmake writes <build>/ui_assets.c from ui/ (one byte array per file, its content
 * type and ETag); api_ui.c serves them. Private to the API module; constant data, no state.
 */
#ifndef BATCHD_API_UI_H
#define BATCHD_API_UI_H

#include <stddef.h>

struct bd_router;
struct bd_server;

struct bd__api_ui_asset {
    const char *name;                 /* "index.html", "app.js": the last segment of its URL */
    const char *content_type;         /* "text/javascript; charset=utf-8" */
    const char *etag;                 /* quoted: "\"0123456789abcdef\"" (SHA-256 prefix) */
    const unsigned char *data;        /* len bytes, then a NUL */
    size_t len;
};

/* Every file of ui/, sorted by name (generated). */
extern const struct bd__api_ui_asset bd__api_ui_assets[];
extern const unsigned bd__api_ui_assets_count;

/* Register GET /ui (the page) and GET /ui/{file} (its files) on r. They need no API key
 * (they are the same static files for everyone; the page asks for a key when the API
 * answers 401). BD_OK or bd_router_add's error. */
int bd__api_register_ui(struct bd_router *r, struct bd_server *srv);

#endif
