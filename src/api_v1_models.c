/* api_v1_models.c -- GET /v1/models and GET /v1/models/{id}: the models this server embeds
 * with, in OpenAI's model shape, so SDK code that lists or looks up models before a batch
 * (client.models.list(), client.models.retrieve()) works against batchd.
 *
 * The list is the configuration's models in their order: {"id", "object": "model",
 * "created" (this process's start, unix seconds), "owned_by" (the provider: ollama, openai,
 * tei or hashing)}. Owns nothing; loop thread only; no store is read.
 * SPDX-License-Identifier: MIT
 */
#include "api_internal.h"
#include "api_v1.h"

#include "batchd/config.h"
#include "batchd/error.h"
#include "batchd/http_server.h"
#include "batchd/router.h"
#include "batchd/server.h"

#include <stdio.h>
#include <string.h>

static json_t *api_model_object(const struct bd_server *srv, const struct bd_model_config *m)
{
    json_t *o = json_object();
    bool failed = o == NULL;

    bd__api_set(o, "id", json_string(m->name), &failed);
    bd__api_set(o, "object", json_string("model"), &failed);
    bd__api_set(o, "created", json_integer((json_int_t)srv->start_time_unix), &failed);
    bd__api_set(o, "owned_by", json_string(bd_config_provider_name(m->provider)), &failed);
    if (failed) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static void api_on_models_list(struct bd_http_request *req, void *arg)
{
    const struct bd_server *srv = arg;
    const struct bd_config *cfg = srv->cfg;
    json_t *data = json_array();

    for (unsigned i = 0; data != NULL && i < cfg->models_count; i++) {
        if (json_array_append_new(data, api_model_object(srv, &cfg->models[i])) < 0) {
            json_decref(data);
            data = NULL;
        }
    }
    /* OpenAI's models list has no paging: {"object": "list", "data"}. */
    json_t *list = data ? json_pack("{s:s, s:o}", "object", "list", "data", data) : NULL;
    bd__v1_respond_json(req, NULL, 200, list);
}

static void api_on_model_get(struct bd_http_request *req, void *arg)
{
    const struct bd_server *srv = arg;
    const struct bd_config *cfg = srv->cfg;
    const char *id = req->params[0];
    char msg[160];

    for (unsigned i = 0; i < cfg->models_count; i++) {
        if (strcmp(cfg->models[i].name, id) == 0) {
            bd__v1_respond_json(req, NULL, 200, api_model_object(srv, &cfg->models[i]));
            return;
        }
    }
    /* The id is decoded from the path (any bytes): named only when it is plain ASCII, as
     * the message must be valid UTF-8. */
    bool is_plain = strlen(id) <= 64;
    for (const char *p = id; is_plain && *p != '\0'; p++)
        is_plain = *p >= 0x20 && *p < 0x7f;
    if (is_plain)
        snprintf(msg, sizeof(msg), "The model '%s' does not exist", id);
    else
        snprintf(msg, sizeof(msg), "The model does not exist");
    bd__v1_respond_error(req, NULL, BD_ENOTFOUND, msg, "model", "model_not_found", NULL);
}

int bd__api_register_models(struct bd_router *r, struct bd_server *srv)
{
    int rc = bd_router_add(r, "GET", BD__V1_PREFIX "/models", api_on_models_list, srv);
    return rc ? rc : bd_router_add(r, "GET", BD__V1_PREFIX "/models/{id}", api_on_model_get,
                                   srv);
}
