/* ident_blocks.h: the block hashes of large files (issue 12), which the
 * identity record keeps (ident_store.h) so the commit rewrites only the
 * blocks that changed. */
#ifndef HOSTAGENT_IDENT_BLOCKS_H
#define HOSTAGENT_IDENT_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#define IDENT_BLOCK_SIZE (128u << 10) /* bytes per block hash */
#define IDENT_BLOCK_MIN (1u << 20)    /* regular files at least this big keep block hashes */

/* Block hashing helper used by both sides: XXH3-64 of each IDENT_BLOCK_SIZE
 * block of fd's content (pread; holes read as zeros), up to size bytes;
 * fills *out (malloc'd, caller frees; NULL when size is 0) and *n. 0, -ESTALE
 * when the file ends before size (it changed), or -errno. */
int ident_hash_blocks(int fd, uint64_t size, uint64_t **out, uint32_t *n);

/* The incremental form, for the copy, which hashes blocks as it writes
 * them: v[0..n) are the finished blocks, fill the bytes of the current one. */
struct XXH3_state_s;
struct ident_blocks {
    uint64_t *v;
    uint32_t n, cap;
    uint64_t fill;
    struct XXH3_state_s *st; /* private */
};
void ident_blocks_init(struct ident_blocks *b);
/* Any chunking; cuts at IDENT_BLOCK_SIZE boundaries. */
void ident_blocks_feed(struct ident_blocks *b, const void *data, size_t len);
/* A hole: as if len zero bytes were fed, without hashing whole blocks. */
void ident_blocks_zeros(struct ident_blocks *b, uint64_t len);
/* Appends the hash of a whole block (or of the last, short one) hashed
 * elsewhere; only between blocks (nothing fed since the last cut). */
void ident_blocks_push(struct ident_blocks *b, uint64_t h);
/* XXH3-64 of len zero bytes (len <= IDENT_BLOCK_SIZE): a hole's block hash
 * (a whole block's is computed once). */
uint64_t ident_zeros_hash(uint64_t len);
void ident_blocks_finish(struct ident_blocks *b); /* the last short block */
void ident_blocks_free(struct ident_blocks *b);

#endif
