/* submit_load.c -- a tiny closed-loop load driver for one-item submits: C connections kept
 * alive, each POSTing the next one-item job as soon as its last answer arrived, N in all.
 * Prints submits/s and the statuses seen. Not part of the build (a measuring tool for
 * docs/architecture.md's group-commit figures):
 *     cc -O2 -o /tmp/submit_load test/load/submit_load.c -lcurl
 *     /tmp/submit_load http://127.0.0.1:PORT 5000 32 [model]
 * With a model, bulk_embed of one text on it; without, bulk_insert of one 4-dim vector.
 * SPDX-License-Identifier: MIT
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct slot {
    CURL *h;
    char body[256];
    long status;
};

static size_t on_data(char *p, size_t sz, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return sz * n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s BASE_URL N CONCURRENCY [MODEL]\n", argv[0]);
        return 2;
    }
    const char *base = argv[1], *model = argc > 4 ? argv[4] : NULL;
    long total = atol(argv[2]), conc = atol(argv[3]), sent = 0, done = 0;
    long by_status[600] = { 0 };
    char url[512];
    struct curl_slist *hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    struct slot *slots = calloc((size_t)conc, sizeof(*slots));
    CURLM *m;

    curl_global_init(CURL_GLOBAL_ALL);
    m = curl_multi_init();
    snprintf(url, sizeof(url), "%s/api/v1/batch/jobs", base);
    double t0 = now_s();
    for (long i = 0; i < conc && sent < total; i++, sent++) {
        struct slot *s = &slots[i];
        s->h = curl_easy_init();
        curl_easy_setopt(s->h, CURLOPT_URL, url);
        curl_easy_setopt(s->h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
        if (model)
            snprintf(s->body, sizeof(s->body), "{\"operation\":\"bulk_embed\",\"model\":\"%s\","
                     "\"data\":[{\"text\":\"t%ld\"}]}", model, sent);
        else
            snprintf(s->body, sizeof(s->body), "{\"operation\":\"bulk_insert\",\"collection\":"
                     "\"load\",\"data\":[{\"id\":\"i%ld\",\"embedding\":[1,2,3,4]}]}", sent);
        curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, s->body);
        curl_multi_add_handle(m, s->h);
    }
    while (done < total) {
        int running, left;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            struct slot *s;
            long st = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &st);
            by_status[st >= 0 && st < 600 ? st : 0]++;
            done++;
            curl_multi_remove_handle(m, s->h);
            if (sent < total) {
                if (model)
                    snprintf(s->body, sizeof(s->body), "{\"operation\":\"bulk_embed\",\"model\":"
                             "\"%s\",\"data\":[{\"text\":\"t%ld\"}]}", model, sent);
                else
                    snprintf(s->body, sizeof(s->body), "{\"operation\":\"bulk_insert\","
                             "\"collection\":\"load\",\"data\":[{\"id\":\"i%ld\","
                             "\"embedding\":[1,2,3,4]}]}", sent);
                curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, s->body);
                curl_multi_add_handle(m, s->h);
                sent++;
            }
        }
        if (done < total)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    double secs = now_s() - t0;
    printf("submits=%ld concurrency=%ld seconds=%.3f submits_per_s=%.0f", total, conc, secs,
           total / secs);
    for (int i = 0; i < 600; i++)
        if (by_status[i])
            printf(" status_%d=%ld", i, by_status[i]);
    printf("\n");
    return by_status[202] == total ? 0 : 1;
}
