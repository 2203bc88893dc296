/* ident_store.h: the identity of every source entry as a preparing copy read
 * it (issue 12), kept in state_dir so a prepared move survives a restart,
 * with the block hashes of large files (ident_blocks.h), so the commit
 * rewrites only what changed.
 *
 * File format (all integers little-endian; "varint" is unsigned LEB128, at
 * most 10 bytes; "zz" is a zigzag-encoded signed varint; "delta" is the
 * difference, modulo 2^64, from the same field of the previous record, which
 * starts as all zeros):
 *
 *   header   "HAID" (4 bytes), version (u32, 2; a version 1 file, which never has
 *            IDENT_DST, is read too)
 *   record*  varint shared   bytes of the path in common with the previous one
 *            varint suffix_len, suffix bytes (the path is prev[0..shared) + suffix)
 *            varint head     flags << 3 | ctime_first << 2 | has_target << 1 | has_blocks
 *            zz mode delta, zz dev delta, zz ino delta, varint size,
 *            zz uid delta, zz gid delta, varint nlink,
 *            ctime_first == 0: zz mtime_ns delta, zz (ctime_ns - this mtime_ns)
 *            ctime_first == 1: zz ctime_ns delta, zz (mtime_ns - this ctime_ns)
 *              (the writer picks the shorter: ctime == mtime for files written
 *              in place, ctimes close in walk order for a tree copied before)
 *            [IDENT_DST in flags] zz dst_ino delta, zz dst_ctime_ns delta (from the
 *              last record that had IDENT_DST; copies made in walk order have
 *              close inodes and ctimes)
 *            [has_target] varint len, len bytes
 *            [has_blocks] varint n_blocks (>= 1), n_blocks x u64 XXH3-64
 *   trailer  u64 record count, u64 XXH3-64 of every byte before it (count too)
 *
 * A record is 25-40 bytes on a typical tree (see docs/design.md). A file
 * whose size, checksum, count or any field does not parse exactly is
 * rejected whole. Paths are relative to the tree root, never empty, never
 * start with '/' and hold no NUL byte; a later record with the same path as
 * an earlier one replaces it when loaded. */
#ifndef HOSTAGENT_IDENT_STORE_H
#define HOSTAGENT_IDENT_STORE_H

#include "ident_blocks.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

enum {
    /* changed within the timestamp granule it was read in: the commit recopies
     * it whatever its identity says */
    IDENT_SUSPECT = 1u << 0,
    /* its content/entry is in the copy (an entry that vanished while being
     * read is recorded without it) */
    IDENT_COPIED = 1u << 1,
    /* the copy's own identity once the agent last touched it (dst_ino,
     * dst_ctime_ns) is known: the commit trusts the copy's entry only while
     * it still shows that identity (issue 20, item 1) */
    IDENT_DST = 1u << 2,
};
#define IDENT_FLAGS_KNOWN (IDENT_SUSPECT | IDENT_COPIED | IDENT_DST)

struct ident_rec {
    uint32_t mode; /* type and permission bits (st_mode) */
    uint32_t uid, gid, nlink, flags;
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
    /* with IDENT_DST: the copy's inode and ctime right after the agent made
     * it and set its attributes (ctime cannot be set back: any later write,
     * chmod, xattr, rename or new name inside a directory moves it) */
    uint64_t dst_ino;
    int64_t dst_ctime_ns;
    const char *target; /* symlink target, NULL otherwise (owned by the set/writer once stored) */
    /* XXH3-64 of each IDENT_BLOCK_SIZE block of the content as copied (last
     * one short), holes hashed as zeros; 0 for files under IDENT_BLOCK_MIN */
    uint32_t n_blocks;
    const uint64_t *blocks;
};
/* Fills the stat fields, target/blocks NULL, flags 0. */
void ident_rec_from_stat(struct ident_rec *r, const struct stat *st);
/* Sets IDENT_DST and the copy's identity from d (the copy's lstat). */
void ident_rec_set_dst(struct ident_rec *r, const struct stat *d);
/* Whether d (the copy's lstat) is the copy r recorded (false without IDENT_DST). */
bool ident_rec_dst_same(const struct ident_rec *r, const struct stat *d);

/* An in-memory set of records keyed by path relative to the tree root (""
 * is not stored; paths never start with '/'). Loaded from / saved to one
 * file. Lookup is O(1) by path (open addressing over the full paths, which
 * live in one arena with the targets and block hashes). Each record has a
 * 'seen' mark for the commit's walk.
 * A record returned by ident_set_get stays at the same address until the
 * set is freed (a replace overwrites it in place; after a remove it must
 * not be used). */
struct ident_set;
struct ident_set *ident_set_new(void);
/* 0 or -errno; -EBADMSG on a corrupt/truncated file: never a partial set
 * (*out is set only on success). */
int ident_set_load(struct ident_set **out, const char *path);
/* Atomically: path.tmp, fsync, rename, fsync the directory; 0 or -errno. */
int ident_set_save(const struct ident_set *s, const char *path);
/* Insert or replace (copies target and blocks). A replaced record keeps its
 * seen mark; a new one starts unseen. -EINVAL for an empty path, one
 * starting with '/', or unknown flags; else 0. */
int ident_set_put(struct ident_set *s, const char *rel, const struct ident_rec *r);
const struct ident_rec *ident_set_get(const struct ident_set *s,
                                      const char *rel); /* NULL when absent */
bool ident_set_remove(struct ident_set *s, const char *rel);
size_t ident_set_count(const struct ident_set *s);
void ident_set_mark(struct ident_set *s, const char *rel); /* sets 'seen' (no-op when absent) */
void ident_set_clear_marks(struct ident_set *s);
/* Calls fn for every record not marked seen, children before their parent
 * directory (so the caller can remove them from the copy in that order:
 * paths in descending byte order, and a path sorts after its prefixes);
 * stops and returns fn's value when nonzero. fn may remove records from the
 * set, not add them. 0 or fn's value. */
int ident_set_each_unseen(const struct ident_set *s,
                          int (*fn)(void *arg, const char *rel, const struct ident_rec *r),
                          void *arg);
void ident_set_free(struct ident_set *s);

/* Streaming writer for the preparing copy: records arrive in walk order (a
 * directory before its entries), and are written to path.tmp as they come
 * (the whole set never sits in memory: only the previous record is kept for
 * the deltas); ident_writer_finish makes it durable and renames it to path.
 * An error from ident_writer_add is sticky: ident_writer_finish returns it
 * (and removes path.tmp). */
struct ident_writer;
int ident_writer_open(struct ident_writer **out, const char *path);
/* -EINVAL for a bad path or unknown flags (nothing written), or a write error. */
int ident_writer_add(struct ident_writer *w, const char *rel, const struct ident_rec *r);
int ident_writer_finish(
    struct ident_writer *w); /* fsync, rename to path, fsync dir; frees w; 0 or -errno */
void ident_writer_abort(struct ident_writer *w); /* removes path.tmp, frees w */

#endif
