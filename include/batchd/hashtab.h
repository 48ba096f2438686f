/* hashtab.h -- the one hash table: open addressing, linear probing, byte-string keys
 * borrowed from the caller, a uint32_t value per key; and the one hash function.
 *
 * Used where a batch or a request needs a set or an index of its own strings (duplicate
 * ids in a submit, cache keys of a batch). Keys are NOT copied: each must stay valid and
 * unchanged while it is in the table. bd_htab_reset keeps the memory for the next use.
 * Any thread, no locking.
 */
#ifndef BATCHD_HASHTAB_H
#define BATCHD_HASHTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bd_htab_slot {
    const char *key;          /* NULL: empty */
    uint32_t key_len;
    uint32_t value;
    uint64_t hash;
};

struct bd_htab {
    struct bd_htab_slot *slots;   /* owned; cap entries, cap a power of two */
    size_t cap;
    size_t count;
};

/* 64-bit FNV-1a of p[0..n). */
uint64_t bd_hash_bytes(const void *p, size_t n);

void bd_htab_init(struct bd_htab *t);              /* empty, no allocation */
void bd_htab_free(struct bd_htab *t);              /* frees the slots; re-initialised */
/* Empty the table and make room for `expected` keys without growing (allocates when the
 * current memory is too small). BD_OK or BD_ENOMEM. */
int bd_htab_reset(struct bd_htab *t, size_t expected);

/* The value slot of key, or NULL when absent. */
uint32_t *bd_htab_get(const struct bd_htab *t, const void *key, size_t len);

/* The value slot of key, added with value 0 when absent (*is_new says which). Grows when
 * more than half full (allocates). NULL on BD_ENOMEM (the table is unchanged). */
uint32_t *bd_htab_put(struct bd_htab *t, const void *key, size_t len, bool *is_new);

#endif
