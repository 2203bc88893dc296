/* clean_guard.h: what the cleaning phase may remove. While copying, the
 * engine records the identity of every source entry as it was copied, in
 * walk order (every pass over a tree visits the same names in the same
 * order, so the n-th entry of a later pass must be the n-th one copied).
 * Before the first removal, and again right before each removal, the entry
 * on disk is compared with that record: nothing is removed that is not what
 * was copied. The removability checks (directory permissions, immutable and
 * append-only flags, sticky directories) find what the cleaning could not
 * remove before anything is removed. */
#ifndef HOSTAGENT_CLEAN_GUARD_H
#define HOSTAGENT_CLEAN_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

/* One source entry as it was copied (40 bytes: 2 MB for 50,000 entries).
 * The device is not kept: the walk never leaves the source's filesystem. */
struct src_ident {
    uint64_t ino;
    int64_t size;
    int64_t mtime_ns, ctime_ns;
    uint32_t mode; /* type and permission bits */
    uint32_t nlink;
};

/* The identities of a tree, in walk order. */
struct src_record {
    struct src_ident *v;
    size_t n, cap;
};

void src_ident_set(struct src_ident *id, const struct stat *st);
void src_record_add(struct src_record *r, const struct stat *st);
void src_record_free(struct src_record *r);

/* Describes in `why` what differs between an entry as copied and as found
 * now; false when nothing does. `cleaning`: removal has begun, and a file
 * with several names may have lost some of them to the cleaning itself,
 * which changes its link count and change time: those two are then not
 * compared for it (its size, modification time and inode still are). */
bool src_ident_differs(const struct src_ident *was, const struct stat *now, bool cleaning,
                       char *why, size_t size);

/* statx of `name` in dirfd without following a symlink: the entry's stat and
 * its STATX_ATTR_* attributes (0 where the filesystem reports none).
 * 0 or -errno. */
int guard_stat(int dirfd, const char *name, struct stat *st, uint64_t *attrs);

/* Whether `name` of dirfd is a mount point (its mount differs from dirfd's,
 * by mount id where statx reports it, else by device): it cannot be
 * removed, and the cleaning leaves it in place, empty. */
bool guard_is_mount_point(int dirfd, const char *name);

/* Whether this process may remove the entries of the directory `name` of
 * dirfd ("." for dirfd itself): write and search permission for the
 * effective ids (faccessat AT_EACCESS, so ACLs, read-only mounts and the
 * immutable flag count), and not append-only (attrs: its attributes).
 * 0, or a positive errno with the reason in why. */
int guard_dir_writable(int dirfd, const char *name, uint64_t attrs, char *why, size_t size);

/* Whether an entry (st, attrs) of a directory (dir_st) may be unlinked by
 * this process: neither immutable nor append-only, and in a sticky
 * directory owned by us or in a directory we own, unless privileged (CAP_FOWNER).
 * 0, or a positive errno with the reason in why. */
int guard_entry_removable(const struct stat *st, uint64_t attrs, const struct stat *dir_st,
                          bool privileged, char *why, size_t size);

#endif
