/* hashtab.c -- the one hash table (see hashtab.h): open addressing with linear probing,
 * at most half full, borrowed keys. Owns only its slot array.
 * SPDX-License-Identifier: MIT
 */
#include "batchd/hashtab.h"

#include "batchd/error.h"

#include <stdlib.h>
#include <string.h>

uint64_t bd_hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 14695981039346656037ULL;     /* FNV offset basis */
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

void bd_htab_init(struct bd_htab *t)
{
    t->slots = NULL;
    t->cap = 0;
    t->count = 0;
}

void bd_htab_free(struct bd_htab *t)
{
    free(t->slots);
    bd_htab_init(t);
}

static size_t htab_cap_for(size_t keys)
{
    size_t cap = 16;
    while (cap < keys * 2)
        cap <<= 1;
    return cap;
}

int bd_htab_reset(struct bd_htab *t, size_t expected)
{
    size_t cap = htab_cap_for(expected);
    if (cap > t->cap) {
        struct bd_htab_slot *s = calloc(cap, sizeof(*s));
        if (s == NULL)
            return BD_ENOMEM;
        free(t->slots);
        t->slots = s;
        t->cap = cap;
    } else if (t->slots) {
        memset(t->slots, 0, t->cap * sizeof(*t->slots));
    }
    t->count = 0;
    return BD_OK;
}

/* The slot holding key, or the empty slot where it would go. t->cap > 0. */
static struct bd_htab_slot *htab_find(const struct bd_htab *t, const void *key, size_t len,
                                      uint64_t h)
{
    for (size_t i = (size_t)h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        struct bd_htab_slot *s = &t->slots[i];
        if (s->key == NULL || (s->hash == h && s->key_len == len &&
                               memcmp(s->key, key, len) == 0))
            return s;
    }
}

uint32_t *bd_htab_get(const struct bd_htab *t, const void *key, size_t len)
{
    if (t->cap == 0)
        return NULL;
    struct bd_htab_slot *s = htab_find(t, key, len, bd_hash_bytes(key, len));
    return s->key ? &s->value : NULL;
}

static int htab_grow(struct bd_htab *t)
{
    size_t cap = t->cap ? t->cap * 2 : 16;
    struct bd_htab_slot *old = t->slots, *s = calloc(cap, sizeof(*s));
    size_t old_cap = t->cap;
    if (s == NULL)
        return BD_ENOMEM;
    t->slots = s;
    t->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].key)
            *htab_find(t, old[i].key, old[i].key_len, old[i].hash) = old[i];
    free(old);
    return BD_OK;
}

uint32_t *bd_htab_put(struct bd_htab *t, const void *key, size_t len, bool *is_new)
{
    if ((t->count + 1) * 2 > t->cap && htab_grow(t) != BD_OK)
        return NULL;
    uint64_t h = bd_hash_bytes(key, len);
    struct bd_htab_slot *s = htab_find(t, key, len, h);
    if (is_new)
        *is_new = s->key == NULL;
    if (s->key == NULL) {
        *s = (struct bd_htab_slot){ key, (uint32_t)len, 0, h };
        t->count++;
    }
    return &s->value;
}
