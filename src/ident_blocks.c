/* ident_blocks.c: the block hashes of large files (issue 12): XXH3-64 of
 * each IDENT_BLOCK_SIZE block, fed incrementally as the copy writes, holes
 * without hashing their whole blocks, or read back from an open file. The
 * identity record keeps them (ident_store.c); the commit compares them to
 * rewrite only the blocks that changed. */
#include "ident_blocks.h"

#include "util.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

void ident_blocks_init(struct ident_blocks *b)
{
    memset(b, 0, sizeof *b);
    b->st = XXH3_createState();
    if (!b->st)
        util_oom(1);
    XXH3_64bits_reset(b->st);
}

static void blocks_append(struct ident_blocks *b, uint64_t h)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->v = xrealloc(b->v, (size_t)b->cap * sizeof *b->v);
    }
    b->v[b->n++] = h;
}

static void blocks_cut(struct ident_blocks *b)
{
    blocks_append(b, XXH3_64bits_digest(b->st));
    XXH3_64bits_reset(b->st);
    b->fill = 0;
}

void ident_blocks_push(struct ident_blocks *b, uint64_t h)
{
    assert(b->fill == 0); /* only between whole blocks */
    blocks_append(b, h);
}

void ident_blocks_feed(struct ident_blocks *b, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        size_t k = IDENT_BLOCK_SIZE - b->fill < len ? (size_t)(IDENT_BLOCK_SIZE - b->fill) : len;
        XXH3_64bits_update(b->st, p, k);
        b->fill += k;
        p += k;
        len -= k;
        if (b->fill == IDENT_BLOCK_SIZE)
            blocks_cut(b);
    }
}

static const unsigned char zeros16k[16u << 10];

static void feed_zeros(XXH3_state_t *st, uint64_t len)
{
    while (len > 0) {
        size_t k = len < sizeof zeros16k ? (size_t)len : sizeof zeros16k;
        XXH3_64bits_update(st, zeros16k, k);
        len -= k;
    }
}

static pthread_once_t zero_block_once = PTHREAD_ONCE_INIT;
static uint64_t zero_block_hash;

/* XXH3-64 of len zero bytes, computed. */
static uint64_t zeros_hash_of(uint64_t len)
{
    XXH3_state_t *st = XXH3_createState();
    uint64_t h;
    if (!st)
        util_oom(1);
    XXH3_64bits_reset(st);
    feed_zeros(st, len);
    h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

static void zero_block_init(void)
{
    zero_block_hash = zeros_hash_of(IDENT_BLOCK_SIZE);
}

uint64_t ident_zeros_hash(uint64_t len)
{
    if (len == IDENT_BLOCK_SIZE) {
        (void)pthread_once(&zero_block_once, zero_block_init);
        return zero_block_hash;
    }
    return zeros_hash_of(len);
}

void ident_blocks_zeros(struct ident_blocks *b, uint64_t len)
{
    /* Hashing a 64 GiB hole byte by byte costs seconds of CPU; every whole
     * block of zeros has the same hash, so only the partial blocks at the
     * ends are hashed. */
    uint64_t k = b->fill > 0 ? IDENT_BLOCK_SIZE - b->fill : 0;
    if (k > len)
        k = len;
    feed_zeros(b->st, k);
    b->fill += k;
    len -= k;
    if (b->fill == IDENT_BLOCK_SIZE)
        blocks_cut(b);
    for (; len >= IDENT_BLOCK_SIZE; len -= IDENT_BLOCK_SIZE)
        blocks_append(b, ident_zeros_hash(IDENT_BLOCK_SIZE));
    feed_zeros(b->st, len);
    b->fill += len;
}

void ident_blocks_finish(struct ident_blocks *b)
{
    if (b->fill > 0)
        blocks_cut(b);
}

void ident_blocks_free(struct ident_blocks *b)
{
    XXH3_freeState(b->st);
    free(b->v);
    memset(b, 0, sizeof *b);
}

int ident_hash_blocks(int fd, uint64_t size, uint64_t **out, uint32_t *n)
{
    struct ident_blocks b;
    unsigned char *buf = xmalloc(IDENT_BLOCK_SIZE);
    uint64_t off = 0;
    int rc = 0;
    ident_blocks_init(&b);
    while (off < size) {
        size_t want = size - off < IDENT_BLOCK_SIZE ? (size_t)(size - off) : IDENT_BLOCK_SIZE;
        ssize_t k = pread(fd, buf, want, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = k < 0 ? -errno : -ESTALE;
            break;
        }
        ident_blocks_feed(&b, buf, (size_t)k);
        off += (uint64_t)k;
    }
    free(buf);
    if (rc < 0) {
        ident_blocks_free(&b);
        return rc;
    }
    ident_blocks_finish(&b);
    *out = b.v;
    *n = b.n;
    b.v = NULL;
    ident_blocks_free(&b);
    return 0;
}
