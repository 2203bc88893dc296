/* engine_hardlinks.c: the floor of the move engine: the table of inodes with
 * several names inside the tree, by their source identity (device, inode):
 * open addressing, grown at half full. Calls nothing else of the engine. */
#include "engine_internal.h"

static size_t hl_hash(dev_t dev, ino_t ino)
{
    uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev;
    return (size_t)(h ^ (h >> 29));
}

/* The slot of (dev, ino); *fresh tells whether it was just added. */
struct hl_slot *eng_hl_get(struct hl_table *t, dev_t dev, ino_t ino, bool *fresh)
{
    size_t i;
    if ((t->used + 1) * 2 > t->cap) {
        struct hl_table bigger = {xcalloc(t->cap ? t->cap * 2 : 64, sizeof(struct hl_slot)),
                                  t->cap ? t->cap * 2 : 64, 0};
        for (i = 0; i < t->cap; i++) {
            if (t->slots[i].used) {
                bool f;
                *eng_hl_get(&bigger, t->slots[i].dev, t->slots[i].ino, &f) = t->slots[i];
            }
        }
        free(t->slots);
        *t = bigger;
    }
    for (i = hl_hash(dev, ino) & (t->cap - 1); t->slots[i].used; i = (i + 1) & (t->cap - 1)) {
        if (t->slots[i].dev == dev && t->slots[i].ino == ino) {
            *fresh = false;
            return &t->slots[i];
        }
    }
    memset(&t->slots[i], 0, sizeof t->slots[i]);
    t->slots[i].used = true;
    t->slots[i].dev = dev;
    t->slots[i].ino = ino;
    t->used++;
    *fresh = true;
    return &t->slots[i];
}

struct hl_slot *eng_hl_find(const struct hl_table *t, dev_t dev, ino_t ino)
{
    if (!t->cap)
        return NULL;
    for (size_t i = hl_hash(dev, ino) & (t->cap - 1); t->slots[i].used; i = (i + 1) & (t->cap - 1))
        if (t->slots[i].dev == dev && t->slots[i].ino == ino)
            return &t->slots[i];
    return NULL;
}

void eng_hl_free(struct hl_table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i].dst_rel);
    free(t->slots);
    t->slots = NULL;
    t->cap = t->used = 0;
}
