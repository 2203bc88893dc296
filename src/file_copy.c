/* file_copy.c: one file's content and metadata (see file_copy.h). */
#include "file_copy.h"
#include "ident_blocks.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <xxhash.h>

#define FILE_COPY_BUF (1u << 20)
#define CAPS_CACHE 16

/* --- what works between two filesystems ------------------------------------ */

static pthread_mutex_t caps_lock = PTHREAD_MUTEX_INITIALIZER;
static struct copy_caps caps_cache[CAPS_CACHE];
static unsigned caps_used, caps_next;

void copy_caps_load(struct copy_caps *caps, dev_t src_dev, dev_t dst_dev)
{
    memset(caps, 0, sizeof *caps);
    caps->src_dev = src_dev;
    caps->dst_dev = dst_dev;
    pthread_mutex_lock(&caps_lock);
    for (unsigned i = 0; i < caps_used; i++)
        if (caps_cache[i].src_dev == src_dev && caps_cache[i].dst_dev == dst_dev)
            *caps = caps_cache[i];
    pthread_mutex_unlock(&caps_lock);
}

void copy_caps_save(const struct copy_caps *caps)
{
    unsigned i;
    pthread_mutex_lock(&caps_lock);
    for (i = 0; i < caps_used; i++)
        if (caps_cache[i].src_dev == caps->src_dev && caps_cache[i].dst_dev == caps->dst_dev)
            break;
    if (i == caps_used) {
        if (caps_used < CAPS_CACHE)
            caps_used++;
        else
            i = caps_next++ % CAPS_CACHE; /* forget the oldest pair */
    }
    caps_cache[i] = *caps;
    pthread_mutex_unlock(&caps_lock);
}

/* coreutils' list: these mean "not between these files", not a failure. */
static bool cfr_unsupported(int err)
{
    return err == ENOSYS || err == ENOTTY || err == EOPNOTSUPP || err == EINVAL || err == EBADF ||
           err == EXDEV || err == ETXTBSY || err == EPERM || err == EACCES || err == ENOENT;
}

/* --- content ------------------------------------------------------------------ */

static bool stopped(const struct copy_ctx *c)
{
    int v = c->stop ? atomic_load_explicit(c->stop, memory_order_relaxed) : 0;
    return v > 0; /* negative: locked for cleaning, not a stop */
}

static int write_all(int fd, const char *p, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

static void hash_zeros(struct copy_ctx *c, XXH3_state_t *h, uint64_t n)
{
    if (c->blocks)
        ident_blocks_zeros(c->blocks, n);
    if (!h)
        return;
    memset(c->buf, 0, FILE_COPY_BUF);
    while (n > 0) {
        size_t k = n < FILE_COPY_BUF ? (size_t)n : FILE_COPY_BUF;
        XXH3_64bits_update(h, c->buf, k);
        n -= k;
    }
}

/* copy_file_range and sendfile report one errno for both files. A full
 * destination says so itself; for anything else the failed step is done
 * again with pread and pwrite, whose failures name their side (a dying
 * source disk must not be blamed on a healthy new one). When both succeed
 * the step is done and the copy goes on. Returns 0 with *done set, or
 * -errno with *wr set for the destination. */
static int copy_probe(struct copy_ctx *c, int sfd, int dfd, off_t off, size_t want, int err,
                      bool *wr, size_t *done)
{
    ssize_t n;
    int rc;
    if (err == ENOSPC || err == EDQUOT || err == EFBIG) {
        *wr = true;
        return -err;
    }
    if (want > FILE_COPY_BUF)
        want = FILE_COPY_BUF;
    do
        n = pread(sfd, c->buf, want, off);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        *wr = false;
        return -errno;
    }
    if (n == 0)
        return -ESTALE;
    rc = write_all(dfd, c->buf, (size_t)n, off);
    if (rc != 0) {
        *wr = true;
        return rc;
    }
    *done = (size_t)n;
    return 0;
}

/* --- write-behind ----------------------------------------------------------------- */

/* A copy left to the kernel's writeback piles up as dirty pages (up to
 * vm.dirty_ratio of memory: gigabytes) that are written out in bursts filling
 * the disk's queue; a neighbour's fsync then waits behind them (and ext4's
 * journal commit for it writes our ordered data first). So a file's content
 * is pushed to the disk as it is copied: each time FILE_COPY_WB_STEP more is
 * written, the writeback of that step is started (SYNC_FILE_RANGE_WRITE,
 * which queues it in this thread's name, so with its I/O priority) and the
 * step before is waited for: at most two steps of a file are dirty or in
 * flight. The pages waited for are clean and dropped from the cache (they
 * would only push the neighbours' hot data out), the source's too when the
 * move removes it. How long a step took from its start to its end is the
 * disk's latency for us: c->on_writeback paces the copy by it. A failure of
 * sync_file_range is not the copy's (the final syncfs reports a write
 * error): write-behind just stops for the file. */
struct wb {
    int sfd, dfd;
    off_t started, done;    /* writeback started up to, waited for up to */
    uint64_t started_at_ns; /* when the step [done, started) was started */
    bool off;
};

static void wb_begin(const struct copy_ctx *c, struct wb *wb, int sfd, int dfd)
{
    memset(wb, 0, sizeof *wb);
    wb->sfd = sfd;
    wb->dfd = dfd;
    wb->off = !c->write_behind;
}

/* Written up to `to`: starts the next step when a whole one is there (or at
 * the end, with last), after waiting for the one before. */
static void wb_step(struct copy_ctx *c, struct wb *wb, off_t to, bool last)
{
    uint64_t now;
    if (wb->off || to <= wb->started || (!last && to - wb->started < (off_t)FILE_COPY_WB_STEP))
        return;
    if (wb->started > wb->done) {
        if (sync_file_range(wb->dfd, wb->done, wb->started - wb->done,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
            wb->off = true;
            return;
        }
        now = util_mono_ns();
        (void)posix_fadvise(wb->dfd, wb->done, wb->started - wb->done, POSIX_FADV_DONTNEED);
        if (c->drop_source)
            (void)posix_fadvise(wb->sfd, wb->done, wb->started - wb->done, POSIX_FADV_DONTNEED);
        if (c->on_writeback)
            c->on_writeback(c->arg, (uint64_t)(wb->started - wb->done), now - wb->started_at_ns);
        wb->done = wb->started;
    }
    if (sync_file_range(wb->dfd, wb->started, to - wb->started, SYNC_FILE_RANGE_WRITE) != 0) {
        wb->off = true;
        return;
    }
    wb->started_at_ns = util_mono_ns();
    wb->started = to;
}

/* Copies [off, end) at the same offsets. Returns 0, -ECANCELED, -ESTALE
 * (source shorter than expected) or -errno (*wr set for a write failure). */
static int copy_range(struct copy_ctx *c, int sfd, int dfd, off_t off, off_t end, XXH3_state_t *h,
                      struct wb *wb, bool *wr)
{
    while (off < end) {
        size_t chunk = c->max_chunk ? c->max_chunk : FILE_COPY_CHUNK;
        size_t want = (size_t)(end - off < (off_t)chunk ? end - off : (off_t)chunk);
        size_t done = 0;
        if (stopped(c))
            return -ECANCELED;
        if (!h && !c->blocks && !c->caps.no_cfr) {
            loff_t so = off, dof = off;
            ssize_t n = copy_file_range(sfd, &so, dfd, &dof, want, 0);
            if (n > 0) {
                done = (size_t)n;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if ((n < 0 && cfr_unsupported(errno)) || (n == 0 && off == 0)) {
                /* A 0 at offset 0 means "cannot" (procfs and the like), not EOF. */
                c->caps.no_cfr = true;
                continue;
            } else if (n == 0) {
                return -ESTALE;
            } else {
                int rc = copy_probe(c, sfd, dfd, off, want, errno, wr, &done);
                if (rc != 0)
                    return rc;
            }
        } else if (!h && !c->blocks && !c->caps.no_sendfile) {
            off_t so = off;
            ssize_t n;
            /* sendfile writes at the file position: a new file starts at 0. */
            if (off != 0 && lseek(dfd, off, SEEK_SET) < 0) {
                *wr = true;
                return -errno;
            }
            n = sendfile(dfd, sfd, &so, want);
            if (n > 0) {
                done = (size_t)n;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EINVAL || errno == ENOSYS) && off == 0) {
                c->caps.no_sendfile = true;
                continue;
            } else if (n == 0) {
                return -ESTALE;
            } else {
                int rc = copy_probe(c, sfd, dfd, off, want, errno, wr, &done);
                if (rc != 0)
                    return rc;
            }
        } else {
            ssize_t n;
            if (want > FILE_COPY_BUF)
                want = FILE_COPY_BUF;
            n = pread(sfd, c->buf, want, off);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            if (n == 0)
                return -ESTALE;
            if (h)
                XXH3_64bits_update(h, c->buf, (size_t)n);
            if (c->blocks)
                ident_blocks_feed(c->blocks, c->buf, (size_t)n);
            {
                int rc = write_all(dfd, c->buf, (size_t)n, off);
                if (rc != 0) {
                    *wr = true;
                    return rc;
                }
            }
            done = (size_t)n;
        }
        off += (off_t)done;
        wb_step(c, wb, off, false);
        if (c->progress)
            c->progress(c->arg, done);
    }
    return 0;
}

int copy_data(struct copy_ctx *c, int sfd, int dfd, const struct stat *st, uint64_t *hash,
              bool *failed_on_write)
{
    XXH3_state_t *h = NULL;
    off_t size = st->st_size, off = 0;
    bool sparse = (off_t)st->st_blocks * 512 < size;
    struct wb wb;
    int rc = 0;

    *failed_on_write = false;
    wb_begin(c, &wb, sfd, dfd);
    if (!c->buf)
        c->buf = xmalloc(FILE_COPY_BUF);
    if (c->checksum) {
        h = XXH3_createState();
        if (!h)
            util_oom(0);
        XXH3_64bits_reset(h);
    } else if (!c->blocks && !c->caps.no_clone && size > 0 && !sparse) {
        /* A reflink shares the blocks: instant, and exact. */
        if (ioctl(dfd, FICLONE, sfd) == 0) {
            if (c->progress)
                c->progress(c->arg, (uint64_t)size);
            return 0;
        }
        c->caps.no_clone = true;
    }

    if (sparse) {
        /* Copy the data regions only; holes stay holes (and count as done). */
        while (off < size && rc == 0) {
            off_t data = lseek(sfd, off, SEEK_DATA), hole;
            if (data < 0) {
                if (errno != ENXIO) {
                    /* No SEEK_DATA here: copy the rest as it is. */
                    rc = copy_range(c, sfd, dfd, off, size, h, &wb, failed_on_write);
                    break;
                }
                data = size; /* nothing but a hole to the end */
            }
            if (data > size)
                data = size;
            if (data > off) {
                hash_zeros(c, h, (uint64_t)(data - off));
                if (c->progress)
                    c->progress(c->arg, (uint64_t)(data - off));
                off = data;
            }
            if (off >= size)
                break;
            hole = lseek(sfd, off, SEEK_HOLE);
            if (hole < 0 || hole > size)
                hole = size;
            rc = copy_range(c, sfd, dfd, off, hole, h, &wb, failed_on_write);
            off = hole;
        }
        if (rc == 0 && ftruncate(dfd, size) != 0) {
            *failed_on_write = true;
            rc = -errno;
        }
    } else {
        rc = copy_range(c, sfd, dfd, 0, size, h, &wb, failed_on_write);
    }
    /* A file of a step or more: its tail's writeback starts now (waited for
     * by the final syncfs); a smaller one is left to the kernel. */
    if (rc == 0 && wb.started > 0)
        wb_step(c, &wb, size, true);
    if (h) {
        if (rc == 0)
            *hash = XXH3_64bits_digest(h);
        XXH3_freeState(h);
    }
    return rc;
}

/* The source's next data region at or after off, for the delta copy:
 * [*data, *hole). *data == size: nothing but a hole up to the end. Without
 * SEEK_DATA the rest counts as data (read as before). */
static void delta_map(int fd, off_t off, off_t size, off_t *data, off_t *hole)
{
    off_t d = lseek(fd, off, SEEK_DATA), h;
    if (d < 0) {
        /* ENXIO: no data from off on (a file that shrank meanwhile is
         * caught by the caller's check of its identity afterwards). */
        *data = errno == ENXIO ? size : off;
        *hole = size;
        return;
    }
    if (d > size)
        d = size;
    h = lseek(fd, d, SEEK_HOLE);
    *data = d;
    *hole = h < 0 || h > size ? size : h;
}

/* Makes [off, off + n) of the copy read as zeros: a hole punched where the
 * filesystem can (the copy stays as sparse as its source), else zeros
 * written. */
static int delta_zero(struct copy_ctx *c, int dfd, off_t off, size_t n)
{
    if (!c->caps.no_punch) {
        if (fallocate(dfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)n) == 0)
            return 0;
        if (errno != EOPNOTSUPP && errno != ENOSYS)
            return -errno;
        c->caps.no_punch = true;
    }
    memset(c->buf, 0, n);
    return write_all(dfd, c->buf, n, off);
}

int copy_delta(struct copy_ctx *c, int sfd, int dfd, const struct stat *st, const uint64_t *old,
               uint32_t n_old, struct ident_blocks *nb, struct copy_delta_stats *ds,
               bool *failed_on_write)
{
    off_t size = st->st_size, off = 0, data = -1, hole = -1;
    uint32_t i = 0;
    struct stat d;
    memset(ds, 0, sizeof *ds);
    *failed_on_write = false;
    if (!c->buf)
        c->buf = xmalloc(FILE_COPY_BUF);
    if (fstat(dfd, &d) != 0) {
        *failed_on_write = true;
        return -errno;
    }
    while (off < size) {
        size_t want = (size_t)(size - off < IDENT_BLOCK_SIZE ? size - off : IDENT_BLOCK_SIZE);
        off_t end = off + (off_t)want;
        bool in_hole;
        uint64_t h;
        if (stopped(c))
            return -ECANCELED;
        if (off >= hole)
            delta_map(sfd, off, size, &data, &hole);
        /* A block that lies in a hole of the source reads as zeros: its hash
         * is known without reading it (holes hash as zeros in the record). */
        in_hole = data >= end;
        if (in_hole) {
            h = ident_zeros_hash(want);
            ds->holes += want;
        } else {
            size_t got = 0;
            while (got < want) {
                ssize_t n = pread(sfd, c->buf + got, want - got, off + (off_t)got);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n < 0)
                    return -errno;
                if (n == 0)
                    return -ESTALE;
                got += (size_t)n;
            }
            ds->read += want;
            h = XXH3_64bits(c->buf, want);
        }
        ident_blocks_push(nb, h);
        /* The old block is only trusted whole: a short last block that grew
         * is written again. */
        if (i >= n_old || old[i] != h || end > d.st_size) {
            /* Past the copy's end a hole needs nothing: the final
             * ftruncate extends the copy with zeros. */
            size_t n = !in_hole           ? want
                       : off >= d.st_size ? 0
                                          : (size_t)((end < d.st_size ? end : d.st_size) - off);
            int rc = !in_hole ? write_all(dfd, c->buf, n, off)
                     : n > 0  ? delta_zero(c, dfd, off, n)
                              : 0;
            if (rc != 0) {
                *failed_on_write = true;
                return rc;
            }
            ds->written += n;
        }
        if (c->progress)
            c->progress(c->arg, want);
        off = end;
        i++;
    }
    if (d.st_size != size && ftruncate(dfd, size) != 0) {
        *failed_on_write = true;
        return -errno;
    }
    return 0;
}

int copy_hash_file(struct copy_ctx *c, int fd, uint64_t *hash)
{
    /* Written back already (syncfs); fsync again is cheap and makes the
     * pages clean so that DONTNEED really drops them. */
    if (fsync(fd) != 0)
        return -errno;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    return copy_hash_content(c, fd, hash);
}

int copy_hash_content(struct copy_ctx *c, int fd, uint64_t *hash)
{
    XXH3_state_t *h;
    off_t off = 0;
    if (!c->buf)
        c->buf = xmalloc(FILE_COPY_BUF);
    h = XXH3_createState();
    if (!h)
        util_oom(0);
    XXH3_64bits_reset(h);
    for (;;) {
        ssize_t n;
        if (stopped(c)) {
            XXH3_freeState(h);
            return -ECANCELED;
        }
        n = pread(fd, c->buf, FILE_COPY_BUF, off);
        if (n < 0) {
            int err = errno;
            if (err == EINTR)
                continue;
            XXH3_freeState(h);
            return -err;
        }
        if (n == 0)
            break;
        XXH3_64bits_update(h, c->buf, (size_t)n);
        off += n;
        if (c->progress)
            c->progress(c->arg, (uint64_t)n);
    }
    *hash = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return 0;
}

/* --- extended attributes --------------------------------------------------------- */

static void proc_path(char *buf, size_t size, int dir, const char *name)
{
    util_fmt(buf, size, "/proc/self/fd/%d/%s", dir, name);
}

/* Is this a failure to write that the destination simply cannot hold? */
static bool xattr_unsupported(int err, const char *name)
{
    if (err == EOPNOTSUPP)
        return true;
    /* trusted.* and some security.* need privileges we may not have. */
    return (err == EPERM || err == EACCES) &&
           (strncmp(name, "trusted.", 8) == 0 || strncmp(name, "security.", 9) == 0);
}

int copy_xattrs(struct copy_ctx *c, int sfd, int sdir, const char *sname, int dfd, int ddir,
                const char *dname)
{
    char spath[64 + 256], dpath[64 + 256];
    char *list = NULL, *val = NULL;
    ssize_t ln;
    size_t vcap = 0;
    int rc = 0;

    if (sfd < 0) {
        if (strlen(sname) > 255 || strlen(dname) > 255)
            return -ENAMETOOLONG;
        proc_path(spath, sizeof spath, sdir, sname);
        proc_path(dpath, sizeof dpath, ddir, dname);
    }
    for (;;) {
        ln = sfd >= 0 ? flistxattr(sfd, NULL, 0) : llistxattr(spath, NULL, 0);
        if (ln <= 0)
            return ln == 0 || errno == EOPNOTSUPP ? 0 : -errno;
        list = xmalloc((size_t)ln);
        ln = sfd >= 0 ? flistxattr(sfd, list, (size_t)ln) : llistxattr(spath, list, (size_t)ln);
        if (ln >= 0)
            break;
        free(list);
        list = NULL;
        if (errno != ERANGE) /* grew in between: ask again */
            return -errno;
    }
    for (char *name = list; name < list + ln; name += strlen(name) + 1) {
        ssize_t vl;
        int w;
        for (;;) {
            vl = sfd >= 0 ? fgetxattr(sfd, name, val, vcap) : lgetxattr(spath, name, val, vcap);
            if (vl >= 0 && (size_t)vl <= vcap && val)
                break;
            if (vl < 0 && errno != ERANGE) {
                vl = -1;
                break;
            }
            vl = sfd >= 0 ? fgetxattr(sfd, name, NULL, 0) : lgetxattr(spath, name, NULL, 0);
            if (vl < 0)
                break;
            vcap = (size_t)vl + 1;
            val = xrealloc(val, vcap);
        }
        if (vl < 0) {
            if (errno == ENODATA) /* removed in between */
                continue;
            rc = -errno;
            break;
        }
        w = dfd >= 0 ? fsetxattr(dfd, name, val, (size_t)vl, 0)
                     : lsetxattr(dpath, name, val, (size_t)vl, 0);
        if (w != 0) {
            int err = errno;
            if (!xattr_unsupported(err, name)) {
                rc = -err;
                break;
            }
            if (c->xattr_warnings++ == 0)
                util_fmt(c->xattr_first_warning, sizeof c->xattr_first_warning, "%s: %s", name,
                         strerror(err));
        }
    }
    free(list);
    free(val);
    return rc;
}

/* --- owner, mode, times -------------------------------------------------------- */

int copy_meta_fd(struct copy_ctx *c, int sfd, int dfd, const struct stat *st, bool can_chown)
{
    struct timespec times[2] = {st->st_atim, st->st_mtim};
    int rc;
    if (can_chown && fchown(dfd, st->st_uid, st->st_gid) != 0)
        return -errno;
    /* xattrs while the new entry is still writable for us (0600/0700). */
    if ((rc = copy_xattrs(c, sfd, -1, NULL, dfd, -1, NULL)) != 0)
        return rc;
    if (fchmod(dfd, st->st_mode & 07777) != 0)
        return -errno;
    if (futimens(dfd, times) != 0)
        return -errno;
    return 0;
}

int copy_meta_at(struct copy_ctx *c, int sdir, int ddir, const char *name, const struct stat *st,
                 bool can_chown)
{
    struct timespec times[2] = {st->st_atim, st->st_mtim};
    int rc;
    if (can_chown && fchownat(ddir, name, st->st_uid, st->st_gid, AT_SYMLINK_NOFOLLOW) != 0)
        return -errno;
    if ((rc = copy_xattrs(c, -1, sdir, name, -1, ddir, name)) != 0)
        return rc;
    /* A symlink's mode means nothing (and cannot be set on Linux). */
    if (!S_ISLNK(st->st_mode) &&
        fchmodat(ddir, name, st->st_mode & 07777, AT_SYMLINK_NOFOLLOW) != 0)
        return -errno;
    if (utimensat(ddir, name, times, AT_SYMLINK_NOFOLLOW) != 0)
        return -errno;
    return 0;
}
