/* file_copy.h: copying one file's content and metadata between two open
 * descriptors: reflink, copy_file_range, sendfile or read/write (whichever
 * works between the two filesystems, learned once per pair), holes kept, in
 * bounded chunks so that progress and stop requests are seen inside big
 * files; extended attributes, owner, mode and times. */
#ifndef HOSTAGENT_FILE_COPY_H
#define HOSTAGENT_FILE_COPY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

struct ident_blocks;

#define FILE_COPY_CHUNK (8u << 20)   /* bytes between progress reports and stop checks */
#define FILE_COPY_WB_STEP (8u << 20) /* write-behind: bytes started at a time */

/* What works between one source and one destination filesystem. */
struct copy_caps {
    dev_t src_dev, dst_dev;
    bool no_clone, no_cfr, no_sendfile;
    bool no_punch; /* the destination cannot punch holes (fallocate) */
};

/* Fills caps from what earlier moves learned about this pair (process-wide). */
void copy_caps_load(struct copy_caps *caps, dev_t src_dev, dev_t dst_dev);
/* Remembers caps for later moves between the same pair. */
void copy_caps_save(const struct copy_caps *caps);

struct copy_ctx {
    struct copy_caps caps;
    bool checksum; /* hash the content while copying (forces read/write) */
    /* When set, the block hashes of the content as copied are fed here
     * (forces read/write): a preparing copy's record of a large file. */
    struct ident_blocks *blocks;
    atomic_int *stop;
    /* Bytes of the current file done (holes included), after each chunk. */
    void (*progress)(void *arg, uint64_t delta);
    void *arg;
    /* Write-behind (file_copy.c): a file's content is pushed to the disk
     * FILE_COPY_WB_STEP at a time as it is copied, so that a move holds at
     * most two steps of dirty or in-flight data per file. */
    bool write_behind;
    /* Drop the source's pages from the cache once copied: a move reads
     * them once and removes them (not for a preparing copy: the running
     * server's hot pages stay). */
    bool drop_source;
    /* After each write-behind wait: the bytes written back and the
     * nanoseconds from starting their writeback to its end (the disk's
     * latency for us: the pace controller's signal). May sleep. NULL: none. */
    void (*on_writeback)(void *arg, uint64_t bytes, uint64_t latency_ns);
    /* Smaller steps than FILE_COPY_CHUNK while the copy is paced (0: none),
     * so that it writes in short, even bursts and reports as it goes. */
    size_t max_chunk;
    char *buf; /* FILE_COPY_BUF bytes, allocated on first use */
    unsigned xattr_warnings;
    char xattr_first_warning[256];
};

/* Copies st->st_size bytes from sfd (at offset 0) to the empty file dfd.
 * Returns 0; -ECANCELED when *stop was set; -ESTALE when the source ended
 * early (it changed); another -errno on failure, with *failed_on_write set
 * when the destination side failed. On success with checksum, *hash is the
 * content's 64-bit XXH3 (holes hashed as zeros). */
int copy_data(struct copy_ctx *c, int sfd, int dfd, const struct stat *st, uint64_t *hash,
              bool *failed_on_write);

/* What a delta copy did, in bytes. */
struct copy_delta_stats {
    uint64_t read;    /* of the source's data regions, read and hashed */
    uint64_t holes;   /* of the source's holes: hashed as zeros, never read */
    uint64_t written; /* of the copy rewritten: data written, or zeros (a hole punched) */
};

/* Brings dfd, a copy of an earlier state of the source whose blocks hashed
 * to old[0..n_old) (ident_store.h, holes hashed as zeros), up to sfd's
 * st->st_size bytes, rewriting only the blocks whose hash differs or that
 * are new. The source's holes (SEEK_DATA/SEEK_HOLE) are not read: a block
 * inside one hashes as zeros, and where the copy held something else there
 * a hole is punched in it (zeros written where the filesystem cannot punch),
 * so a 4 KiB change in a 64 GiB sparse file costs the reading of its data,
 * not of its size. The source's block hashes are appended to nb (which must
 * be empty). Returns 0, -ECANCELED, -ESTALE (the source ended early) or
 * -errno (*failed_on_write for the destination side); *ds says what it did. */
int copy_delta(struct copy_ctx *c, int sfd, int dfd, const struct stat *st, const uint64_t *old,
               uint32_t n_old, struct ident_blocks *nb, struct copy_delta_stats *ds,
               bool *failed_on_write);

/* XXH3 of the whole content of fd, read from the disk: fsync, then drop the
 * cached pages so the read is not served from memory. */
int copy_hash_file(struct copy_ctx *c, int fd, uint64_t *hash);

/* XXH3 of the whole content of fd as it reads now (cached pages welcome),
 * the same value copy_data gives for the same bytes. */
int copy_hash_content(struct copy_ctx *c, int fd, uint64_t *hash);

/* Extended attributes from one entry to another, either by descriptors
 * (sfd/dfd >= 0) or, for symlinks and special files that cannot be opened,
 * by /proc/self/fd/<dirfd>/<name> paths without following the last
 * component. An attribute the destination cannot hold (unsupported, or a
 * namespace we may not write) is counted in c->xattr_warnings, not an error.
 * Returns 0 or -errno (reading the source failed, or writing failed for
 * another reason). */
int copy_xattrs(struct copy_ctx *c, int sfd, int sdir, const char *sname, int dfd, int ddir,
                const char *dname);

/* Owner (when can_chown: CAP_CHOWN), extended attributes, mode and times, from an open
 * source to an open destination, in that order: chown first (it clears
 * setuid/setgid and file capabilities), xattrs while the new entry is still
 * writable, then the mode, then the times. Returns 0 or -errno. */
int copy_meta_fd(struct copy_ctx *c, int sfd, int dfd, const struct stat *st, bool can_chown);

/* The same for an entry that is not opened (symlink, fifo, device), relative
 * to its directories, never following it. */
int copy_meta_at(struct copy_ctx *c, int sdir, int ddir, const char *name, const struct stat *st,
                 bool can_chown);

#endif
