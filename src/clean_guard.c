/* clean_guard.c: identities as copied and removability checks for the
 * cleaning phase (see clean_guard.h). */
#include "clean_guard.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

void src_record_add(struct src_record *r, const struct stat *st)
{
    if (r->n == r->cap) {
        /* Grows by half: the record is the largest thing a big tree costs. */
        r->cap = r->cap ? r->cap + r->cap / 2 : 1024;
        r->v = xrealloc(r->v, r->cap * sizeof *r->v);
    }
    src_ident_set(&r->v[r->n++], st);
}

void src_ident_set(struct src_ident *id, const struct stat *st)
{
    id->ino = (uint64_t)st->st_ino;
    id->size = (int64_t)st->st_size;
    id->mtime_ns = ts_ns(&st->st_mtim);
    id->ctime_ns = ts_ns(&st->st_ctim);
    id->mode = (uint32_t)st->st_mode;
    id->nlink = (uint32_t)st->st_nlink;
}

void src_record_free(struct src_record *r)
{
    free(r->v);
    r->v = NULL;
    r->n = r->cap = 0;
}

bool src_ident_differs(const struct src_ident *was, const struct stat *now, bool cleaning,
                       char *why, size_t size)
{
    bool dir = S_ISDIR(was->mode);
    /* Our own removals change the link count and ctime of a file with
     * several names; its content is still checked by size and mtime. */
    bool own = cleaning && !dir && was->nlink > 1;
    if ((uint64_t)now->st_ino != was->ino)
        util_fmt(why, size, "another entry has taken its place");
    else if ((now->st_mode & S_IFMT) != (was->mode & S_IFMT))
        util_fmt(why, size, "its type changed");
    else if (!dir && (int64_t)now->st_size != was->size)
        util_fmt(why, size, "its size changed from %lld to %lld bytes", (long long)was->size,
                 (long long)now->st_size);
    else if (ts_ns(&now->st_mtim) != was->mtime_ns)
        util_fmt(why, size, "%s",
                 dir ? "entries were added, removed or renamed in it"
                     : "it was written to (its modification time changed)");
    else if (!own && ts_ns(&now->st_ctim) != was->ctime_ns)
        util_fmt(why, size, "it was changed (its status change time changed)");
    else if (((uint32_t)now->st_mode ^ was->mode) & 07777)
        util_fmt(why, size, "its mode changed");
    else if (!own && (uint32_t)now->st_nlink != was->nlink)
        util_fmt(why, size, "its link count changed");
    else
        return false;
    return true;
}

int guard_stat(int dirfd, const char *name, struct stat *st, uint64_t *attrs)
{
    struct statx sx;
    if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &sx) != 0)
        return -errno;
    util_statx_to_stat(&sx, st);
    *attrs = sx.stx_attributes & sx.stx_attributes_mask;
    return 0;
}

bool guard_is_mount_point(int dirfd, const char *name)
{
    struct statx a, b;
    unsigned mask = STATX_INO | STATX_MNT_ID;
    if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, mask, &a) != 0 ||
        statx(dirfd, ".", AT_NO_AUTOMOUNT, mask, &b) != 0)
        return false;
    if ((a.stx_mask & b.stx_mask & STATX_MNT_ID) && a.stx_mnt_id != b.stx_mnt_id)
        return true;
    return a.stx_dev_major != b.stx_dev_major || a.stx_dev_minor != b.stx_dev_minor;
}

int guard_dir_writable(int dirfd, const char *name, uint64_t attrs, char *why, size_t size)
{
    int flags = AT_EACCESS | (strcmp(name, ".") == 0 ? 0 : AT_SYMLINK_NOFOLLOW);
    if (attrs & STATX_ATTR_IMMUTABLE) {
        util_fmt(why, size, "it is immutable (chattr +i), so nothing in it can be removed");
        return EPERM;
    }
    if (attrs & STATX_ATTR_APPEND) {
        util_fmt(why, size, "it is append-only (chattr +a), so nothing in it can be removed");
        return EPERM;
    }
    if (faccessat(dirfd, name, W_OK | X_OK, flags) != 0) {
        int err = errno;
        util_fmt(why, size, "the agent (uid %u) cannot remove entries from it: %s",
                 (unsigned)geteuid(), strerror(err));
        return err;
    }
    return 0;
}

int guard_entry_removable(const struct stat *st, uint64_t attrs, const struct stat *dir_st,
                          bool privileged, char *why, size_t size)
{
    uid_t me;
    if (attrs & STATX_ATTR_IMMUTABLE) {
        util_fmt(why, size, "it is immutable (chattr +i)");
        return EPERM;
    }
    if (attrs & STATX_ATTR_APPEND) {
        util_fmt(why, size, "it is append-only (chattr +a)");
        return EPERM;
    }
    /* The kernel's sticky rule (check_sticky): only the entry's owner, the
     * directory's owner or CAP_FOWNER may remove from such a directory. */
    if (privileged || !(dir_st->st_mode & S_ISVTX))
        return 0;
    me = geteuid(); /* a system call: only asked in a sticky directory */
    if (st->st_uid != me && dir_st->st_uid != me) {
        util_fmt(why, size,
                 "it belongs to uid %u in a sticky directory of uid %u, and the agent runs as "
                 "uid %u",
                 (unsigned)st->st_uid, (unsigned)dir_st->st_uid, (unsigned)me);
        return EPERM;
    }
    return 0;
}
