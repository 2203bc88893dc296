/* move_engine.c: the file-tree move: rename, or calculate, check space, copy,
 * make durable, verify, remove the source; roll back on any failure. */
#include "move_engine.h"
#include "clean_guard.h"
#include "file_copy.h"
#include "log.h"
#include "tree_walk.h"
#include "unlink_pool.h"
#include "util.h"

#include <errno.h>
#include <linux/openat2.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REPORT_GAP_MS 10 /* at most ~100 reports a second reach the ring */

/* One inode with several names inside the tree, by its source identity. */
struct hl_slot {
    dev_t dev;
    ino_t ino;
    bool used;
    bool verified; /* the verify pass met its first name */
    char *dst_rel; /* destination path of its first name, once copied */
    ino_t dst_ino; /* the destination inode, seen by the verify pass */
};

struct hl_table {
    struct hl_slot *slots;
    size_t cap, used;
};

/* Space promised to moves copying now, per destination filesystem, so that
 * two moves to one disk do not both count the same free space. */
struct space_claim {
    dev_t dev;
    _Atomic uint64_t remaining;
    struct space_claim *next;
};

/* A copied file whose last change lies in the timestamp granule its copy
 * began in: a change during the copy may have left its times as they were
 * (see copy_regular). Rechecked by content once the granule has passed. */
struct suspect {
    char *rel; /* relative to the source root (and the copy's) */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    int64_t stamp; /* the later of mtime and ctime, ns */
    uint64_t hash; /* checksum mode: the hash of what was copied */
};

static pthread_mutex_t claims_lock = PTHREAD_MUTEX_INITIALIZER;
static struct space_claim *claims;

struct eng {
    const struct engine_job *job;
    struct engine_result *res;
    struct engine_progress prog;
    struct copy_ctx cc;
    bool is_root, noatime_ok;
    int srcfd, dstfd;
    dev_t src_dev;
    struct stat src_st;
    bool dst_created, dst_preexisted, dst_had_lf;
    struct stat dst_orig;
    char **made_parents; /* created above dst, outermost first */
    size_t n_made;
    struct hl_table hl;
    uint64_t need_bytes, need_inodes, blksize;
    struct space_claim claim;
    bool claimed;
    uint64_t *hashes; /* checksum mode: one per copied regular file, walk order */
    size_t n_hashes, cap_hashes, hash_pos;
    uint64_t entries; /* entries met by the current pass */
    uint64_t last_report;
    int src_pfd, dst_pfd;            /* the parents of src and dst, opened beneath their roots */
    const char *src_base, *dst_base; /* their last components */
    struct unlink_pool *pool;        /* cleaning: parallel unlinks (NULL: inline) */
    uint64_t dirs_removed;           /* cleaning with the pool: directories done */
    struct tree_walk *cur_w;         /* the entry being copied, for reports inside it */
    const char *cur_name;
    /* Finishing a cleaning after a restart: what the copy holds, and the
     * first difference between the rest of the source and the copy. */
    uint64_t fin_entries, fin_bytes;
    bool fin_lost_found;
    char *fin_why;
    size_t fin_why_size;
    struct src_record rec; /* every source entry as copied, in walk order */
    bool guarded;          /* rec is whole: the cleaning removes only what matches it */
    size_t rec_pos;        /* the record the current walk meets next */
    size_t changed_depth;  /* check pass: the changed directory being searched (0: none) */
    char changed[MOVE_ERROR_MAX / 2]; /* its path (relative) */
    char changed_why[160];            /* and what changed */
    int64_t grain;                    /* bound on the source's timestamp granularity, ns */
    struct suspect *suspects;         /* see struct suspect */
    size_t n_suspects, cap_suspects;
    /* When the copy pass had made its last change to the destination: an
     * entry of the copy whose ctime is later was changed by someone else. */
    struct timespec copy_end;
};

/* --- results and reporting ---------------------------------------------------- */

enum move_code engine_errno_code(int err)
{
    switch (err) {
    case ENOSPC:
    case EDQUOT:
        return CODE_NO_SPACE;
    case EACCES:
    case EPERM:
        return CODE_PERMISSION_DENIED;
    default:
        return CODE_IO_ERROR;
    }
}

static int eng_fail(struct eng *e, enum move_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int eng_fail(struct eng *e, enum move_code code, const char *fmt, ...)
{
    va_list ap;
    if (e->res->code != CODE_NONE)
        return -1; /* keep the first cause */
    e->res->code = code;
    va_start(ap, fmt);
    (void)vsnprintf(e->res->error, sizeof e->res->error, fmt, ap);
    va_end(ap);
    return -1;
}

static int eng_stop_code(struct eng *e)
{
    int code = atomic_load_explicit(e->job->stop, memory_order_relaxed);
    if (code == CODE_NONE || code == ENGINE_STOP_LOCKED)
        return 0;
    return eng_fail(e, (enum move_code)code, "%s",
                    code == CODE_CANCELLED       ? "the move was cancelled"
                    : code == CODE_SHUTTING_DOWN ? "the agent is shutting down"
                    : code == CODE_TIMEOUT       ? "the move timed out"
                                                 : "the move was stopped");
}

/* Fails with the code of err, naming what and where: "copy /a/b: No space". */
static int eng_fail_at(struct eng *e, int err, const char *what, const char *root, const char *rel)
{
    if (err == ECANCELED)
        return eng_stop_code(e);
    if (err == ESTALE)
        return eng_fail(e, CODE_SOURCE_CHANGED,
                        "%s%s%s changed while it was being moved (stop the game server first)",
                        root, rel && *rel ? "/" : "", rel ? rel : "");
    return eng_fail(e, engine_errno_code(err), "%s %s%s%s: %s", what, root, rel && *rel ? "/" : "",
                    rel ? rel : "", strerror(err));
}

/* The same for an entry `name` of the walk's current directory. */
static int eng_fail_w(struct eng *e, struct tree_walk *w, int err, const char *what,
                      const char *root, const char *name)
{
    char rel[MOVE_ERROR_MAX / 2];
    tree_walk_relpath(w, name, rel, sizeof rel);
    return eng_fail_at(e, err, what, root, rel);
}

/* The copy was changed by someone else: the destination's fault, not the
 * source's (a game server that keeps writing is told to stop; this is not
 * that). */
static int eng_fail_dst_changed(struct eng *e, const char *rel)
{
    return eng_fail(e, CODE_IO_ERROR,
                    "the destination changed while it was being moved: %s%s%s was changed or "
                    "removed by something else; nothing was removed from %s",
                    e->job->dst, rel && *rel ? "/" : "", rel ? rel : "", e->job->src);
}

/* A failure of the walk itself (reading a directory, a swapped entry); the
 * mirror of a mirrored walk is the destination. */
static int eng_fail_walk(struct eng *e, struct tree_walk *w)
{
    if (e->res->code != CODE_NONE)
        return -1;
    if (w->err_mirror) {
        if (w->changed || w->err == ENOENT)
            return eng_fail_dst_changed(e, w->err_where);
        return eng_fail_at(e, w->err ? w->err : EIO, w->err_what ? w->err_what : "walk",
                           e->job->dst, w->err_where);
    }
    if (w->changed)
        return eng_fail_at(e, ESTALE, "", e->job->src, w->err_where);
    if (w->err == EXDEV)
        return eng_fail(e, CODE_IO_ERROR,
                        "%s %s/%s inside the tree; the move never copies or removes through a "
                        "mount: unmount it first",
                        w->err_what, e->job->src, w->err_where);
    return eng_fail_at(e, w->err ? w->err : EIO, w->err_what ? w->err_what : "walk", e->job->src,
                       w->err_where);
}

/* Runs one pass over the source (mirrored on the destination when asked),
 * turning a failure of the walk itself into the move's error. */
static int eng_walk_source(struct eng *e, const struct tree_walk_ops *ops, bool mirrored)
{
    struct tree_walk w = {
        .ops = ops, .arg = e, .mirrored = mirrored, .need_stat = true, .strict_dev = true};
    int rc = tree_walk_run(&w, e->srcfd, mirrored ? e->dstfd : -1);
    if (rc != 0 && e->res->code == CODE_NONE)
        eng_fail_walk(e, &w);
    tree_walk_free(&w);
    return rc;
}

static bool same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static bool same_mtime(const struct stat *a, const struct stat *b)
{
    return same_time(&a->st_mtim, &b->st_mtim);
}

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* The coarsest timestamp granularity an entry's mtime and ctime allow: the
 * largest of the granularities Linux filesystems use (2 s FAT, 1 s ext3 and
 * ext4 with 128-byte inodes, 10 ms exFAT, 1 us, 100 ns NTFS/CIFS, 1 ns)
 * that divides both. The filesystem's true granularity divides every stamp
 * it wrote, so it is never larger than this: the smallest value over a tree
 * is a safe bound (statx does not report the granularity). */
static int64_t stamp_grain(const struct stat *st)
{
    static const int64_t grains[] = {2000000000, 1000000000, 10000000, 1000000, 1000, 100};
    int64_t m = ts_ns(&st->st_mtim), c = ts_ns(&st->st_ctim);
    for (size_t i = 0; i < sizeof grains / sizeof grains[0]; i++)
        if (m % grains[i] == 0 && c % grains[i] == 0)
            return grains[i];
    return 1;
}

static void note_grain(struct eng *e, const struct stat *st)
{
    int64_t g = stamp_grain(st);
    if (g < e->grain)
        e->grain = g;
}

/* mtime and ctime: ctime also moves on a rewrite that restores the mtime,
 * and on any change of metadata. */
static bool same_times(const struct stat *a, const struct stat *b)
{
    return same_mtime(a, b) && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static void eng_report_now(struct eng *e, const char *current, bool phase_start)
{
    e->prog.current = current;
    e->job->report(e->job->arg, &e->prog, phase_start);
    e->last_report = util_mono_ms();
}

/* Reports at most every REPORT_GAP_MS; the path is only built when sent. */
static void eng_report(struct eng *e, struct tree_walk *w, const char *name)
{
    char rel[MOVE_CURRENT_MAX];
    if (util_mono_ms() - e->last_report < REPORT_GAP_MS)
        return;
    if (w)
        tree_walk_relpath(w, name, rel, sizeof rel);
    eng_report_now(e, w ? rel : NULL, false);
}

static int eng_phase(struct eng *e, enum move_phase phase, uint64_t phase_total)
{
    int rc = 0;
    e->prog.phase = phase;
    e->prog.count.phase_done = 0;
    e->prog.count.phase_total = phase_total;
    if (e->job->on_phase)
        rc = e->job->on_phase(e->job->arg, &e->prog);
    eng_report_now(e, NULL, true);
    return rc;
}

static void eng_on_bytes(void *arg, uint64_t delta)
{
    struct eng *e = arg;
    e->prog.count.bytes_copied += delta;
    if (e->claimed) {
        uint64_t r = atomic_load(&e->claim.remaining);
        atomic_store(&e->claim.remaining, r > delta ? r - delta : 0);
    }
    if (e->prog.phase == PHASE_COPYING)
        e->prog.count.phase_done = e->prog.count.bytes_copied;
    eng_report(e, e->cur_w, e->cur_name);
}

/* --- hard links ------------------------------------------------------------------ */

static size_t hl_hash(dev_t dev, ino_t ino)
{
    uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev;
    return (size_t)(h ^ (h >> 29));
}

/* The slot of (dev, ino); *fresh tells whether it was just added. */
static struct hl_slot *hl_get(struct hl_table *t, dev_t dev, ino_t ino, bool *fresh)
{
    size_t i;
    if ((t->used + 1) * 2 > t->cap) {
        struct hl_table bigger = {xcalloc(t->cap ? t->cap * 2 : 64, sizeof(struct hl_slot)),
                                  t->cap ? t->cap * 2 : 64, 0};
        for (i = 0; i < t->cap; i++) {
            if (t->slots[i].used) {
                bool f;
                *hl_get(&bigger, t->slots[i].dev, t->slots[i].ino, &f) = t->slots[i];
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

static void hl_free(struct hl_table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i].dst_rel);
    free(t->slots);
    t->slots = NULL;
    t->cap = t->used = 0;
}

/* The one rule for every path walked one name at a time: a component is a
 * name (not empty, "." or "..", which would leave the directory the walk
 * must stay beneath: -EXDEV) of at most NAME_MAX bytes (-ENAMETOOLONG). */
static int component_check(const char *name, size_t n)
{
    if (n > NAME_MAX)
        return -ENAMETOOLONG;
    if (n == 0 || (n <= 2 && name[0] == '.' && (n == 1 || name[1] == '.')))
        return -EXDEV;
    return 0;
}

/* Opens the directory named by the n bytes at name beneath dirfd under that
 * rule, following no symlink, closed on exec. -1 with errno on failure. */
static int open_component(int dirfd, const char *name, size_t n)
{
    char comp[NAME_MAX + 1];
    int rc = component_check(name, n);
    if (rc != 0) {
        errno = -rc;
        return -1;
    }
    memcpy(comp, name, n);
    comp[n] = '\0';
    return openat(dirfd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Opens the directory holding `rel` (relative to root) one component at a
 * time, so that any path length works and no symlink is followed. */
static int open_parent_of(int root, const char *rel, const char **base)
{
    const char *p = rel, *slash;
    int fd = fcntl(root, F_DUPFD_CLOEXEC, 0);
    while (fd >= 0 && (slash = strchr(p, '/')) != NULL) {
        int next = open_component(fd, p, (size_t)(slash - p));
        close(fd);
        fd = next;
        p = slash + 1;
    }
    *base = p;
    return fd;
}

/* --- what the cleaning can remove --------------------------------------------------- */

/* The cleaning could not remove path (or path/rel): the move cannot finish. */
static int eng_fail_unremovable(struct eng *e, int err, const char *path, const char *rel,
                                const char *why)
{
    enum move_code code =
        err == EACCES || err == EPERM ? CODE_PERMISSION_DENIED : engine_errno_code(err);
    return eng_fail(e, code,
                    "%s%s%s cannot be removed once copied, so the move cannot be done: %s; "
                    "the source was not touched",
                    path, rel && *rel ? "/" : "", rel ? rel : "", why);
}

/* Whether the cleaning will be able to remove `name` of the walk's current
 * directory (st, attrs: its statx), and for a directory everything in it;
 * checked before anything is removed, so that such a move fails with its
 * source whole instead of stopping half way through the removal. */
static int eng_check_removable(struct eng *e, struct tree_walk *w, const char *name,
                               const struct stat *st, uint64_t attrs)
{
    char why[256], rel[MOVE_ERROR_MAX / 2];
    int err =
        guard_entry_removable(st, attrs, &w->lv[w->depth - 1].st, e->is_root, why, sizeof why);
    if (err == 0 && S_ISDIR(st->st_mode))
        err = guard_dir_writable(tree_walk_fd(w, 0), name, attrs, why, sizeof why);
    if (err == 0)
        return 0;
    tree_walk_relpath(w, name, rel, sizeof rel);
    return eng_fail_unremovable(e, err, e->job->src, rel, why);
}

/* The same for the top directory: its entries must be removable, and it
 * must be removable from its parent unless it is a mount point (it stays). */
static int eng_check_root(struct eng *e)
{
    const char *src = e->job->src, *slash = strrchr(src, '/');
    char why[256], pwhy[PATH_MAX + 300], parent[PATH_MAX];
    struct stat st, pst;
    uint64_t attrs, pattrs;
    int err;
    util_fmt(parent, sizeof parent, "%.*s", slash && slash != src ? (int)(slash - src) : 1, src);
    if ((err = guard_stat(e->src_pfd, e->src_base, &st, &attrs)) != 0)
        return eng_fail_at(e, -err, "stat", src, NULL);
    if ((err = guard_stat(e->src_pfd, ".", &pst, &pattrs)) != 0)
        return eng_fail_at(e, -err, "stat", parent, NULL);
    if ((err = guard_dir_writable(e->src_pfd, e->src_base, attrs, why, sizeof why)) != 0)
        return eng_fail_unremovable(e, err, src, NULL, why);
    if (guard_is_mount_point(e->src_pfd, e->src_base))
        return 0;
    if ((err = guard_entry_removable(&st, attrs, &pst, e->is_root, why, sizeof why)) != 0)
        return eng_fail_unremovable(e, err, src, NULL, why);
    if ((err = guard_dir_writable(e->src_pfd, ".", pattrs, why, sizeof why)) != 0) {
        util_fmt(pwhy, sizeof pwhy, "its parent %s: %s", parent, why);
        return eng_fail_unremovable(e, err, src, NULL, pwhy);
    }
    return 0;
}

/* --- calculating -------------------------------------------------------------------- */

static uint64_t round_up(uint64_t n, uint64_t to)
{
    return (n + to - 1) / to * to;
}

static int calc_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    struct stat now;
    uint64_t attrs;
    int rc = guard_stat(tree_walk_fd(w, 0), name, &now, &attrs);
    /* What could not be removed after the copy fails the move before it. */
    if (rc != 0)
        return eng_fail_w(e, w, rc == -ENOENT ? ESTALE : -rc, "stat", e->job->src, name);
    if (eng_check_removable(e, w, name, &now, attrs) != 0)
        return -1;
    note_grain(e, st);
    e->prog.count.files_total++;
    e->need_inodes++;
    if (S_ISREG(st->st_mode)) {
        bool fresh = true;
        if (st->st_nlink > 1)
            hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
        if (fresh) {
            bool sparse = (uint64_t)st->st_blocks * 512 < (uint64_t)st->st_size;
            e->prog.count.bytes_total += (uint64_t)st->st_size;
            e->need_bytes += round_up(
                sparse ? (uint64_t)st->st_blocks * 512 : (uint64_t)st->st_size, e->blksize);
        } else {
            e->need_inodes--; /* another name of an inode already counted */
        }
    } else if (S_ISDIR(st->st_mode) || (S_ISLNK(st->st_mode) && st->st_size > 60)) {
        e->need_bytes += e->blksize;
    }
    e->prog.count.phase_done = e->prog.count.files_total;
    if (eng_stop_code(e) != 0)
        return -1;
    eng_report(e, w, name);
    return 0;
}

static int eng_calculate(struct eng *e)
{
    /* A directory is counted like any entry, then descended (0). */
    static const struct tree_walk_ops ops = {calc_entry, calc_entry, NULL, NULL};
    if (eng_check_root(e) != 0)
        return -1;
    return eng_walk_source(e, &ops, false);
}

/* Fails early when the tree cannot fit, counting what other moves copying
 * to the same filesystem still need. */
static int eng_check_space(struct eng *e)
{
    struct statvfs vfs;
    uint64_t avail, others = 0;
    struct space_claim *c;
    if (fstatvfs(e->dstfd, &vfs) != 0)
        return eng_fail_at(e, errno, "statvfs", e->job->dst, NULL);
    /* A filesystem without a size (ramfs, some FUSE) says 0 of 0: no check. */
    avail = vfs.f_blocks ? (uint64_t)vfs.f_bavail * vfs.f_frsize : UINT64_MAX / 2;
    pthread_mutex_lock(&claims_lock);
    for (c = claims; c; c = c->next)
        if (c->dev == e->claim.dev)
            others += atomic_load(&c->remaining);
    if (e->need_bytes + others > avail) {
        pthread_mutex_unlock(&claims_lock);
        return eng_fail(e, CODE_NO_SPACE,
                        "%s cannot hold the tree: it needs %llu bytes, %llu are free%s",
                        e->job->dst, (unsigned long long)e->need_bytes,
                        (unsigned long long)(avail > others ? avail - others : 0),
                        others ? " after what other moves to this filesystem still need" : "");
    }
    if (vfs.f_files > 0 && e->need_inodes > (uint64_t)vfs.f_favail) {
        pthread_mutex_unlock(&claims_lock);
        return eng_fail(e, CODE_NO_SPACE,
                        "%s cannot hold the tree: it needs %llu inodes, %llu are free", e->job->dst,
                        (unsigned long long)e->need_inodes, (unsigned long long)vfs.f_favail);
    }
    atomic_store(&e->claim.remaining, e->need_bytes);
    e->claim.next = claims;
    claims = &e->claim;
    e->claimed = true;
    pthread_mutex_unlock(&claims_lock);
    return 0;
}

static void eng_release_space(struct eng *e)
{
    struct space_claim **pp;
    if (!e->claimed)
        return;
    pthread_mutex_lock(&claims_lock);
    for (pp = &claims; *pp; pp = &(*pp)->next) {
        if (*pp == &e->claim) {
            *pp = e->claim.next;
            break;
        }
    }
    pthread_mutex_unlock(&claims_lock);
    e->claimed = false;
}

/* --- copying ------------------------------------------------------------------------ */

static int open_source_file(struct eng *e, int dir, const char *name)
{
    int fd;
    /* O_NOATIME keeps the source's access times (owner or CAP_FOWNER only). */
    if (e->noatime_ok) {
        fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
        if (fd >= 0 || errno != EPERM)
            return fd;
        e->noatime_ok = false;
    }
    return openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
}

/* ctime too: a rewrite that puts the old mtime back still moves ctime. */
static bool same_content_stat(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           same_times(a, b);
}

static bool suspect_same(const struct suspect *s, const struct stat *st)
{
    return s->dev == st->st_dev && s->ino == st->st_ino && s->size == st->st_size &&
           same_time(&s->mtime, &st->st_mtim) && same_time(&s->ctime, &st->st_ctim);
}

static int64_t last_stamp(const struct stat *st)
{
    int64_t m = ts_ns(&st->st_mtim), c = ts_ns(&st->st_ctim);
    return m > c ? m : c;
}

/* Times alone cannot show a change made in the granule of the file's last
 * change: the filesystem writes the same stamp again. If that granule had
 * not ended when the walk examined the file (read from the clock file times
 * come from, before the stat), a change during the copy may not show in
 * them. On a nanosecond filesystem this is a file changed within the last
 * clock tick; on a whole-second one, within the last second. */
static bool in_granule(struct eng *e, const struct tree_walk *w, const struct stat *st)
{
    note_grain(e, st);
    return last_stamp(st) + e->grain > ts_ns(&w->stat_clock);
}

/* Remembers a copied file for eng_recheck, with the hash of what was copied. */
static void note_suspect(struct eng *e, struct tree_walk *w, const char *name,
                         const struct stat *st, uint64_t hash)
{
    struct suspect *s;
    size_t cap;
    if (e->n_suspects == e->cap_suspects) {
        e->cap_suspects = e->cap_suspects ? e->cap_suspects * 2 : 64;
        e->suspects = xrealloc(e->suspects, e->cap_suspects * sizeof *e->suspects);
    }
    s = &e->suspects[e->n_suspects++];
    cap = w->path_cap + strlen(name) + 2; /* never truncated */
    s->rel = xmalloc(cap);
    tree_walk_relpath(w, name, s->rel, cap);
    s->dev = st->st_dev;
    s->ino = st->st_ino;
    s->size = st->st_size;
    s->mtime = st->st_mtim;
    s->ctime = st->st_ctim;
    s->stamp = last_stamp(st);
    s->hash = hash;
}

/* Copies one regular file; *copied receives its source's identity as it
 * was copied (from the open descriptor, after the copy: it matched st). */
static int copy_regular(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                        struct stat *copied)
{
    int sdir = tree_walk_fd(w, 0), ddir = tree_walk_fd(w, 1);
    int sfd, dfd, rc;
    struct stat after;
    uint64_t hash = 0, start = e->prog.count.bytes_copied;
    bool on_write, checksum = e->cc.checksum, suspect = in_granule(e, w, st);

    e->cur_w = w;
    e->cur_name = name;
    sfd = open_source_file(e, sdir, name);
    if (sfd < 0)
        return eng_fail_w(e, w, errno, "open", e->job->src, name);
    dfd = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (dfd < 0) {
        rc = errno;
        close(sfd);
        return eng_fail_w(e, w, rc, "create", e->job->dst, name);
    }
    /* A suspect is hashed while copied (whatever the verify mode) so that
     * eng_recheck has to reread only its source. */
    e->cc.checksum = checksum || suspect;
    rc = copy_data(&e->cc, sfd, dfd, st, &hash, &on_write);
    e->cc.checksum = checksum;
    e->cur_w = NULL;
    if (rc != 0) {
        close(sfd);
        close(dfd);
        return eng_fail_w(e, w, -rc, on_write ? "write" : "read",
                          on_write ? e->job->dst : e->job->src, name);
    }
    /* Changed while we copied it (or swapped before we opened it)? */
    if (fstat(sfd, &after) != 0 || !same_content_stat(st, &after)) {
        close(sfd);
        close(dfd);
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    }
    *copied = after;
    rc = copy_meta_fd(&e->cc, sfd, dfd, st, e->is_root);
    close(sfd);
    if (rc != 0) {
        close(dfd);
        return eng_fail_w(e, w, -rc, "set attributes of", e->job->dst, name);
    }
    if (close(dfd) != 0)
        return eng_fail_w(e, w, errno, "write", e->job->dst, name);
    if (suspect)
        note_suspect(e, w, name, &after, hash);
    /* Holes count as copied: make the counter land on the file's size. */
    e->prog.count.bytes_copied = start + (uint64_t)st->st_size;
    /* A file that changed between the calculation and its copy (a consistent
     * copy of its newer state) must not push the counter past the total. */
    if (e->prog.count.bytes_copied > e->prog.count.bytes_total)
        e->prog.count.bytes_total = e->prog.count.bytes_copied;
    if (e->cc.checksum) {
        if (e->n_hashes == e->cap_hashes) {
            e->cap_hashes = e->cap_hashes ? e->cap_hashes * 2 : 256;
            e->hashes = xrealloc(e->hashes, e->cap_hashes * sizeof *e->hashes);
        }
        e->hashes[e->n_hashes++] = hash;
    }
    return 0;
}

static int copy_hardlink(struct eng *e, struct tree_walk *w, const char *name,
                         struct hl_slot *first)
{
    const char *base;
    int pfd = open_parent_of(e->dstfd, first->dst_rel, &base);
    int rc = 0;
    if (pfd < 0)
        return eng_fail_at(e, errno, "open", e->job->dst, first->dst_rel);
    if (linkat(pfd, base, tree_walk_fd(w, 1), name, 0) != 0)
        rc = eng_fail_w(e, w, errno, "create hard link", e->job->dst, name);
    close(pfd);
    return rc;
}

static int copy_symlink(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st)
{
    size_t cap = (size_t)st->st_size + 2;
    char *target = xmalloc(cap);
    ssize_t n = readlinkat(tree_walk_fd(w, 0), name, target, cap);
    int rc = 0;
    if (n < 0)
        rc = eng_fail_w(e, w, errno, "read link", e->job->src, name);
    else if ((size_t)n != (size_t)st->st_size)
        rc = eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    else {
        target[n] = '\0';
        if (symlinkat(target, tree_walk_fd(w, 1), name) != 0)
            rc = eng_fail_w(e, w, errno, "create symlink", e->job->dst, name);
    }
    free(target);
    return rc;
}

static int copy_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    struct stat copied = *st;
    int rc = 0;
    if (eng_stop_code(e) != 0)
        return -1;
    eng_report(e, w, name);
    if (S_ISREG(st->st_mode)) {
        struct hl_slot *hs = NULL;
        bool fresh = true;
        if (st->st_nlink > 1)
            hs = hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
        if (hs && hs->dst_rel) {
            rc = copy_hardlink(e, w, name, hs);
        } else {
            rc = copy_regular(e, w, name, st, &copied);
            if (rc == 0 && hs) {
                char *rel = xmalloc(w->path_cap + strlen(name) + 2);
                tree_walk_relpath(w, name, rel, w->path_cap + strlen(name) + 2);
                hs->dst_rel = rel;
            }
        }
    } else {
        if (S_ISLNK(st->st_mode))
            rc = copy_symlink(e, w, name, st);
        else if (mknodat(tree_walk_fd(w, 1), name, (st->st_mode & S_IFMT) | 0600, st->st_rdev) != 0)
            rc = eng_fail_w(e, w, errno, "create", e->job->dst, name);
        /* Never opened: a fifo would block a reader forever. */
        if (rc == 0 && (rc = copy_meta_at(&e->cc, tree_walk_fd(w, 0), tree_walk_fd(w, 1), name, st,
                                          e->is_root)) != 0)
            rc = eng_fail_w(e, w, -rc, "set attributes of", e->job->dst, name);
    }
    if (rc != 0)
        return -1;
    src_record_add(&e->rec, &copied);
    e->prog.count.files_copied++;
    return 0;
}

static int copy_dir_pre(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    (void)st;
    if (eng_stop_code(e) != 0)
        return -1;
    /* 0700 while it is filled; its own mode and times come after its contents. */
    if (mkdirat(tree_walk_fd(w, 1), name, 0700) != 0) {
        bool reuse_lf =
            errno == EEXIST && w->depth == 1 && e->dst_had_lf && strcmp(name, "lost+found") == 0;
        if (!reuse_lf)
            return eng_fail_w(e, w, errno, "create directory", e->job->dst, name);
    }
    /* Its names are the ones copied if its times still match after its
     * contents (copy_dir_post). */
    src_record_add(&e->rec, st);
    e->prog.count.files_copied++;
    eng_report(e, w, name);
    return 0;
}

static int copy_dir_post(struct tree_walk *w, const char *name, const struct stat *st,
                         const int fds[2])
{
    struct eng *e = w->arg;
    struct stat after;
    int rc;
    /* A directory whose entries changed while we copied it. */
    if (fstat(fds[0], &after) != 0 || !same_times(&after, st))
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    rc = copy_meta_fd(&e->cc, fds[0], fds[1], st, e->is_root);
    if (rc != 0)
        return eng_fail_w(e, w, -rc, "set attributes of", e->job->dst, name);
    return 0;
}

/* Sleeps until no suspect's granule is the current one: from then on any
 * change to them gets a new stamp. At most one granule (the files were
 * examined inside theirs). */
static int eng_wait_granules(struct eng *e)
{
    for (;;) {
        struct timespec now, nap;
        int64_t n, until = 0;
        (void)clock_gettime(CLOCK_REALTIME_COARSE, &now);
        n = ts_ns(&now);
        for (size_t i = 0; i < e->n_suspects; i++) {
            int64_t end = e->suspects[i].stamp + e->grain;
            /* (a stamp ahead of the clock is not in the current granule: a
             * change now would write an earlier one) */
            if (e->suspects[i].stamp <= n && n < end && end > until)
                until = end;
        }
        if (until == 0)
            return 0;
        if (eng_stop_code(e) != 0)
            return -1;
        /* Short naps: a stop is seen, and the coarse clock lags a tick. */
        n = until - n < 100000000 ? until - n : 100000000;
        nap.tv_sec = 0;
        nap.tv_nsec = (long)(n > 1000000 ? n : 1000000);
        (void)nanosleep(&nap, NULL);
    }
}

/* Rereads one suspect after its granule: the source must still be the same
 * inode with the same size and times before and after the read (any change
 * now shows in them), and its content must hash like what was copied. */
static int recheck_one(struct eng *e, const struct suspect *s)
{
    const char *base;
    struct stat a, b;
    uint64_t h = 0;
    int pfd = open_parent_of(e->srcfd, s->rel, &base), fd, rc;
    if (pfd < 0)
        return eng_fail_at(e, errno == ENOENT ? ESTALE : errno, "open", e->job->src, s->rel);
    fd = open_source_file(e, pfd, base);
    close(pfd);
    if (fd < 0)
        return eng_fail_at(e, errno == ENOENT ? ESTALE : errno, "open", e->job->src, s->rel);
    rc = fstat(fd, &a) != 0 ? -errno : !suspect_same(s, &a) ? -ESTALE : 0;
    if (rc == 0)
        rc = copy_hash_content(&e->cc, fd, &h);
    if (rc == 0 && (fstat(fd, &b) != 0 || !suspect_same(s, &b)))
        rc = -ESTALE;
    close(fd);
    if (rc != 0)
        return eng_fail_at(e, -rc, "read", e->job->src, s->rel);
    if (h != s->hash)
        return eng_fail_at(e, ESTALE, "", e->job->src, s->rel);
    return 0;
}

/* The copies whose times cannot rule out a change during their copy (see
 * note_suspect): once their granule has passed, reread and compared by
 * content. Fresh files only, so a tree at rest costs nothing. */
static int eng_recheck(struct eng *e)
{
    uint64_t t0 = util_mono_ms(), t1;
    int rc = 0;
    if (e->n_suspects == 0)
        return 0;
    if (eng_wait_granules(e) != 0)
        return -1;
    t1 = util_mono_ms();
    e->cc.progress = NULL; /* their bytes were counted by the copy */
    for (size_t i = 0; i < e->n_suspects && rc == 0; i++) {
        if (eng_stop_code(e) != 0 || recheck_one(e, &e->suspects[i]) != 0)
            rc = -1;
    }
    e->cc.progress = eng_on_bytes;
    LOG(LOG_INFO, "reread files changed in the timestamp granule of their copy",
        LF_S("src", e->job->src), LF_U("files", e->n_suspects), LF_U("granule_ns", e->grain),
        LF_U("waited_ms", t1 - t0), LF_U("reread_ms", util_mono_ms() - t1));
    return rc;
}

static int eng_copy(struct eng *e)
{
    static const struct tree_walk_ops ops = {copy_entry, copy_dir_pre, copy_dir_post, NULL};
    struct stat after;
    int rc;
    (void)eng_phase(e, PHASE_COPYING, e->prog.count.bytes_total);
    if (eng_walk_source(e, &ops, true) != 0 || eng_recheck(e) != 0)
        return -1;
    if (fstat(e->srcfd, &after) != 0 || !same_times(&after, &e->src_st))
        return eng_fail_at(e, ESTALE, "", e->job->src, NULL);
    rc = copy_meta_fd(&e->cc, e->srcfd, e->dstfd, &e->src_st, e->is_root);
    if (rc != 0)
        return eng_fail_at(e, -rc, "set attributes of", e->job->dst, NULL);
    (void)clock_gettime(CLOCK_REALTIME, &e->copy_end);
    if (e->cc.xattr_warnings)
        LOG(LOG_WARN, "some extended attributes could not be copied", LF_S("dst", e->job->dst),
            LF_U("count", e->cc.xattr_warnings), LF_S("first", e->cc.xattr_first_warning));
    /* Durable before the source may go: one syncfs writes back the whole
     * destination filesystem (cheaper than an fsync per file). */
    if (syncfs(e->dstfd) != 0)
        return eng_fail_at(e, errno, "sync", e->job->dst, NULL);
    return 0;
}

/* --- verifying ---------------------------------------------------------------------- */

/* Was this entry of the copy changed after the copy pass made it? Its ctime
 * then is later than anything the pass did (the kernel stamps ctime from the
 * same clock); a change in the same clock tick is not seen, and is then
 * reported as the source's, as it always was. */
static bool dst_changed(const struct eng *e, const struct stat *d)
{
    return d->st_ctim.tv_sec > e->copy_end.tv_sec ||
           (d->st_ctim.tv_sec == e->copy_end.tv_sec && d->st_ctim.tv_nsec > e->copy_end.tv_nsec);
}

static int verify_fail_dst_changed(struct eng *e, struct tree_walk *w, const char *name)
{
    char rel[MOVE_ERROR_MAX / 2];
    tree_walk_relpath(w, name, rel, sizeof rel);
    return eng_fail_dst_changed(e, rel);
}

/* Compares one entry of the copy with its source, field by field. */
static int verify_stat(struct eng *e, struct tree_walk *w, const char *name, const struct stat *s,
                       const struct stat *d)
{
    mode_t mask = S_IFMT | 07777;
    const char *what = NULL;
    if ((s->st_mode & S_IFMT) != (d->st_mode & S_IFMT))
        what = "type";
    else if (!S_ISDIR(s->st_mode) && s->st_size != d->st_size)
        what = "size";
    else if (!same_mtime(s, d))
        what = "modification time";
    if (what && dst_changed(e, d))
        return verify_fail_dst_changed(e, w, name);
    if (what) /* these follow the source: it changed after it was copied */
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    if (!e->is_root)
        mask &= (mode_t)~S_ISGID; /* may be dropped by the kernel for us */
    if (!S_ISLNK(s->st_mode) && ((s->st_mode ^ d->st_mode) & mask))
        what = "mode";
    else if (e->is_root && (s->st_uid != d->st_uid || s->st_gid != d->st_gid))
        what = "owner";
    else if ((S_ISCHR(s->st_mode) || S_ISBLK(s->st_mode)) && s->st_rdev != d->st_rdev)
        what = "device number";
    if (what && dst_changed(e, d))
        return verify_fail_dst_changed(e, w, name);
    if (what) {
        char rel[MOVE_ERROR_MAX / 2];
        tree_walk_relpath(w, name, rel, sizeof rel);
        return eng_fail(e, CODE_IO_ERROR, "verification failed: %s differs for %s/%s", what,
                        e->job->dst, rel);
    }
    return 0;
}

static int verify_content(struct eng *e, struct tree_walk *w, const char *name)
{
    uint64_t h = 0;
    /* O_NOATIME: reading it back must not change the copy's access time
     * (we own the copy, or are root, so the flag is allowed). */
    int fd = openat(tree_walk_fd(w, 1), name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME), rc;
    if (fd < 0)
        return eng_fail_w(e, w, errno, "open", e->job->dst, name);
    e->cc.progress = NULL; /* verifying counts entries, not bytes */
    rc = copy_hash_file(&e->cc, fd, &h);
    close(fd);
    if (rc != 0)
        return eng_fail_w(e, w, -rc, "read", e->job->dst, name);
    if (e->hash_pos >= e->n_hashes || e->hashes[e->hash_pos] != h) {
        char rel[MOVE_ERROR_MAX / 2];
        tree_walk_relpath(w, name, rel, sizeof rel);
        return eng_fail(e, CODE_IO_ERROR, "verification failed: content differs for %s/%s",
                        e->job->dst, rel);
    }
    e->hash_pos++;
    return 0;
}

static int verify_entry(struct tree_walk *w, const char *name, const struct stat *s)
{
    struct eng *e = w->arg;
    struct stat d;
    if (eng_stop_code(e) != 0)
        return -1;
    if (fstatat(tree_walk_fd(w, 1), name, &d, AT_SYMLINK_NOFOLLOW) != 0) {
        struct stat dir;
        int err = errno;
        if (err != ENOENT)
            return eng_fail_w(e, w, err, "stat", e->job->dst, name);
        /* Not in the copy: removed from it by someone else (its directory
         * changed after the copy pass), or the source gained it after the
         * copy passed by. */
        if (fstat(tree_walk_fd(w, 1), &dir) == 0 && dst_changed(e, &dir))
            return verify_fail_dst_changed(e, w, name);
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    }
    if (verify_stat(e, w, name, s, &d) != 0)
        return -1;
    if (S_ISLNK(s->st_mode)) {
        char a[PATH_MAX], b[PATH_MAX];
        ssize_t na = readlinkat(tree_walk_fd(w, 0), name, a, sizeof a);
        ssize_t nb = readlinkat(tree_walk_fd(w, 1), name, b, sizeof b);
        if (na < 0 || nb < 0 || na != nb || memcmp(a, b, (size_t)na) != 0)
            return dst_changed(e, &d) ? verify_fail_dst_changed(e, w, name)
                                      : eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    }
    if (S_ISREG(s->st_mode)) {
        struct hl_slot *hs = NULL;
        bool fresh = true;
        if (s->st_nlink > 1)
            hs = hl_get(&e->hl, s->st_dev, s->st_ino, &fresh);
        if (hs && hs->verified) {
            if (d.st_ino != hs->dst_ino) {
                char rel[MOVE_ERROR_MAX / 2];
                tree_walk_relpath(w, name, rel, sizeof rel);
                return eng_fail(e, CODE_IO_ERROR,
                                "verification failed: %s/%s is not a hard link of %s", e->job->dst,
                                rel, hs->dst_rel ? hs->dst_rel : "its first name");
            }
        } else {
            if (hs) {
                hs->verified = true;
                hs->dst_ino = d.st_ino;
            }
            if (e->cc.checksum && verify_content(e, w, name) != 0)
                return -1;
        }
    }
    e->entries++;
    e->prog.count.phase_done = e->entries;
    eng_report(e, w, name);
    return 0;
}

static int eng_verify(struct eng *e)
{
    /* A directory is checked like any entry, then descended (0). */
    static const struct tree_walk_ops ops = {verify_entry, verify_entry, NULL, NULL};
    struct tree_walk at_root = {0}; /* names the root itself in errors */
    struct stat s, d;
    /* Two passes: this one, then the check before cleaning. */
    (void)eng_phase(e, PHASE_VERIFYING, 2 * e->prog.count.files_copied);
    e->entries = 0;
    if (eng_walk_source(e, &ops, true) != 0)
        return -1;
    /* Fewer entries than were copied: something was removed from the source. */
    if (e->entries != e->prog.count.files_copied)
        return eng_fail(e, CODE_SOURCE_CHANGED,
                        "%s changed while it was being moved: %llu entries copied, %llu now "
                        "(stop the game server first)",
                        e->job->src, (unsigned long long)e->prog.count.files_copied,
                        (unsigned long long)e->entries);
    if (fstat(e->srcfd, &s) != 0 || fstat(e->dstfd, &d) != 0)
        return eng_fail_at(e, errno, "stat", e->job->dst, NULL);
    return verify_stat(e, &at_root, NULL, &s, &d);
}

/* --- the source checked against the record, before the first removal -------------- */

/* The source is not what was copied: the move fails before any removal. */
static int eng_fail_changed_after(struct eng *e, const char *rel, const char *why)
{
    return eng_fail(e, CODE_SOURCE_CHANGED,
                    "%s%s%s changed after it was copied: %s; the copy was removed and the source "
                    "was not touched (stop the game server first)",
                    e->job->src, rel && *rel ? "/" : "", rel ? rel : "", why);
}

static int check_entry(struct tree_walk *w, const char *name, const struct stat *wst)
{
    struct eng *e = w->arg;
    const struct src_ident *was;
    char why[160], rel[MOVE_ERROR_MAX / 2];
    struct stat st;
    uint64_t attrs;
    int rc;
    (void)wst; /* for files only d_type: the statx below serves both checks */
    if (eng_stop_code(e) != 0)
        return -1;
    rc = guard_stat(tree_walk_fd(w, 0), name, &st, &attrs);
    if (rc == 0 && e->rec_pos >= e->rec.n)
        rc = -EEXIST;
    if (rc != 0) {
        tree_walk_relpath(w, name, rel, sizeof rel);
        if (rc == -EEXIST)
            return eng_fail_changed_after(e, rel, "it appeared after the copy");
        if (rc == -ENOENT)
            return eng_fail_changed_after(e, rel, "it was removed");
        return eng_fail_at(e, -rc, "stat", e->job->src, rel);
    }
    was = &e->rec.v[e->rec_pos++];
    if (src_ident_differs(was, &st, false, why, sizeof why)) {
        tree_walk_relpath(w, name, rel, sizeof rel);
        if ((uint64_t)st.st_ino != was->ino)
            return eng_fail_changed_after(e, rel,
                                          "it is not the entry copied at this place (an entry was "
                                          "added, removed or renamed here)");
        if (!S_ISDIR(st.st_mode))
            return eng_fail_changed_after(e, rel, why);
        /* A directory whose names changed: look inside for the entry that
         * did, and name the directory itself only when none is found. */
        e->changed_depth = w->depth;
        util_fmt(e->changed, sizeof e->changed, "%s", rel);
        util_fmt(e->changed_why, sizeof e->changed_why, "%s", why);
    }
    e->prog.count.phase_done = e->prog.count.files_copied + e->rec_pos;
    eng_report(e, w, name);
    return eng_check_removable(e, w, name, &st, attrs);
}

static int check_dir_post(struct tree_walk *w, const char *name, const struct stat *st,
                          const int fds[2])
{
    struct eng *e = w->arg;
    (void)name;
    (void)st;
    (void)fds;
    if (e->changed_depth != w->depth)
        return 0;
    return eng_fail_changed_after(e, e->changed, e->changed_why);
}

static int check_root_post(struct tree_walk *w)
{
    struct eng *e = w->arg;
    if (e->changed_depth != SIZE_MAX)
        return 0;
    return eng_fail_changed_after(e, NULL, e->changed_why);
}

/* Before the first removal, one pass compares every entry of the source
 * with its record (a directory gains or loses a name only by changing its
 * times) and checks that all of it can be removed. A change after this
 * pass is caught by the check before each removal (clean_check). */
static int eng_check_source(struct eng *e)
{
    static const struct tree_walk_ops ops = {check_entry, check_entry, check_dir_post,
                                             check_root_post};
    /* need_stat off: the callbacks statx every entry themselves. */
    struct tree_walk w = {.ops = &ops, .arg = e, .strict_dev = true};
    struct src_ident root;
    struct stat st;
    int rc;
    if (eng_check_root(e) != 0)
        return -1;
    e->rec_pos = 0;
    e->changed_depth = 0;
    if (fstat(e->srcfd, &st) != 0)
        return eng_fail_at(e, errno, "stat", e->job->src, NULL);
    src_ident_set(&root, &e->src_st);
    if (src_ident_differs(&root, &st, false, e->changed_why, sizeof e->changed_why))
        e->changed_depth = SIZE_MAX;
    rc = tree_walk_run(&w, e->srcfd, -1);
    if (rc != 0 && e->res->code == CODE_NONE)
        eng_fail_walk(e, &w);
    tree_walk_free(&w);
    if (rc != 0)
        return -1;
    if (e->rec_pos != e->rec.n)
        return eng_fail_changed_after(e, NULL, "entries were removed from it");
    e->guarded = true;
    return 0;
}

/* --- cleaning (the source) and rolling back (the destination) ---------------------- */

/* Runs on an unlink helper (or the walker) right before each removal: the
 * entry must still be what was copied (arg: its record; NULL in a finishing
 * cleaning after a restart, which has no record). Only reads the record. */
static int clean_check(void *ctx, int dirfd, const char *name, const void *arg)
{
    const struct src_ident *was = arg;
    struct stat st;
    char why[160];
    (void)ctx;
    if (!was)
        return 0;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno;
    return src_ident_differs(was, &st, true, why, sizeof why) ? ESTALE : 0;
}

/* Stops the cleaning at an entry that must stay: `name` of the directory
 * `child` of the walk's current one (NULL: the current one itself), open as
 * dirfd. ESTALE: it is not what was copied (was: its record, NULL when it
 * has none: it is new). Everything not yet removed is kept. */
static int clean_fail(struct eng *e, struct tree_walk *w, int err, const char *child, int dirfd,
                      const char *name, const struct src_ident *was)
{
    char rel[MOVE_ERROR_MAX / 2], why[160];
    struct stat st;
    tree_walk_relpath(w, child, rel, sizeof rel);
    if (err == ESTALE) {
        if (!was)
            util_fmt(why, sizeof why, "it appeared after the copy");
        else if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
                 !src_ident_differs(was, &st, true, why, sizeof why))
            util_fmt(why, sizeof why, "it changed");
        return eng_fail(e, CODE_SOURCE_CHANGED, "%s/%s%s%s changed after it was copied: %s",
                        e->job->src, rel, *rel ? "/" : "", name, why);
    }
    return eng_fail(e, engine_errno_code(err), "%s %s/%s%s%s: %s",
                    e->guarded ? "could not remove"
                               : "the copy is complete at the destination, but could not remove",
                    e->job->src, rel, *rel ? "/" : "", name, strerror(err));
}

/* Waits for the removals under way in one directory: the directory `child`
 * of the walk's current one, open as child_fd, or (NULL, -1) the current
 * one. The walker waits before leaving a directory, so a directory is
 * removed after its files and a failure names the right directory. */
static int clean_barrier(struct eng *e, struct tree_walk *w, const char *child, int child_fd)
{
    char name[NAME_MAX + 1];
    const void *was;
    int err;
    if (!e->pool)
        return 0;
    err = unlink_pool_wait(e->pool, name, sizeof name, &was);
    e->prog.count.phase_done = atomic_load(&e->pool->done) + e->dirs_removed;
    if (err)
        return clean_fail(e, w, err, child,
                          child_fd >= 0 ? child_fd
                          : w->depth    ? tree_walk_fd(w, 0)
                                        : -1,
                          name, was);
    return 0;
}

static int clean_root_post(struct tree_walk *w)
{
    return clean_barrier(w->arg, w, NULL, -1) == 0 ? 0 : -1;
}

/* The record an entry of the cleaning walk must match, in walk order; NULL
 * when there is none to match (a finishing cleaning after a restart). */
static int clean_next(struct eng *e, const struct src_ident **was)
{
    *was = NULL;
    if (!e->guarded)
        return 0;
    if (e->rec_pos >= e->rec.n)
        return -1; /* more entries than were copied */
    *was = &e->rec.v[e->rec_pos++];
    return 0;
}

static int clean_dir_pre(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    const struct src_ident *was;
    char why[160];
    if (clean_barrier(e, w, NULL, -1) != 0)
        return -1;
    /* Checked before anything in it goes: its times still match only if
     * it holds the names that were copied. */
    if (clean_next(e, &was) != 0 || (was && src_ident_differs(was, st, true, why, sizeof why)))
        return clean_fail(e, w, ESTALE, NULL, tree_walk_fd(w, 0), name, was);
    return 0;
}

static int clean_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    const struct src_ident *was;
    int dirfd = tree_walk_fd(w, 0), err;
    (void)st; /* d_type only: the check stats the entry right before its removal */
    if (clean_next(e, &was) != 0)
        return clean_fail(e, w, ESTALE, NULL, dirfd, name, NULL);
    if (e->pool) {
        /* Refused once a removal failed: collect that failure and stop. */
        if (unlink_pool_submit(e->pool, dirfd, name, was) != 0) {
            (void)clean_barrier(e, w, NULL, -1);
            return -1;
        }
        e->prog.count.phase_done = atomic_load(&e->pool->done) + e->dirs_removed;
        eng_report(e, w, name);
        return 0;
    }
    err = clean_check(e, dirfd, name, was);
    if (err == 0 && unlinkat(dirfd, name, 0) != 0)
        err = errno;
    if (err != 0 && err != ENOENT)
        return clean_fail(e, w, err, NULL, dirfd, name, was);
    e->prog.count.phase_done++;
    eng_report(e, w, name);
    return 0;
}

static int clean_unlinkat_dir(struct tree_walk *w, const char *name, const struct stat *st,
                              const int fds[2])
{
    struct eng *e = w->arg;
    int err;
    (void)st;
    /* Its files first: they were removed through fds[0], still open here. */
    if (clean_barrier(e, w, name, fds[0]) != 0)
        return -1;
    if (unlinkat(tree_walk_fd(w, 0), name, AT_REMOVEDIR) != 0) {
        char rel[MOVE_ERROR_MAX / 2];
        err = errno;
        /* Only an empty directory goes: a name that appeared in it after
         * it was listed keeps it, and stops the cleaning. */
        if (e->guarded && (err == ENOTEMPTY || err == EEXIST)) {
            tree_walk_relpath(w, name, rel, sizeof rel);
            return eng_fail(e, CODE_SOURCE_CHANGED,
                            "%s/%s changed after it was copied: entries appeared in it",
                            e->job->src, rel);
        }
        return clean_fail(e, w, err, NULL, tree_walk_fd(w, 0), name, NULL);
    }
    e->dirs_removed++;
    e->prog.count.phase_done++;
    eng_report(e, w, name);
    return 0;
}

/* Removes the source, deepest first (the caller entered the cleaning phase),
 * each entry only while it is still what was copied (when e->guarded). The
 * first entry that differs or cannot be removed stops it: what is left stays. */
static int eng_clean(struct eng *e)
{
    static const struct tree_walk_ops ops = {clean_entry, clean_dir_pre, clean_unlinkat_dir,
                                             clean_root_post};
    struct tree_walk w = {.ops = &ops, .arg = e, .strict_dev = true};
    struct unlink_pool pool;
    int rc;
    if (unlink_pool_init(&pool) == 0 && pool.n_threads > 0) {
        pool.check = clean_check;
        pool.check_ctx = e;
        e->pool = &pool;
    }
    e->rec_pos = 0;
    rc = tree_walk_run(&w, e->srcfd, -1);
    /* Whatever a failed walk left in flight (the root's files were waited
     * for in clean_root_post, while its descriptor was open). */
    if (e->pool) {
        if (clean_barrier(e, &w, NULL, -1) != 0)
            rc = -1;
        unlink_pool_close(&pool);
        e->pool = NULL;
    }
    if (rc != 0 && e->res->code == CODE_NONE)
        eng_fail_walk(e, &w);
    tree_walk_free(&w);
    if (rc != 0)
        return -1;
    if (unlinkat(e->src_pfd, e->src_base, AT_REMOVEDIR) != 0) {
        int err = errno;
        /* A mount point stays (empty); anything else is an error. */
        if (err == EBUSY) {
            LOG(LOG_INFO, "source is a mount point; its contents moved and it stays",
                LF_S("path", e->job->src));
            return 0;
        }
        if (e->guarded && (err == ENOTEMPTY || err == EEXIST))
            return eng_fail(e, CODE_SOURCE_CHANGED,
                            "%s changed after it was copied: entries appeared in it", e->job->src);
        return eng_fail_at(e, err,
                           e->guarded
                               ? "could not remove"
                               : "the copy is complete at the destination, but could not remove",
                           e->job->src, NULL);
    }
    return 0;
}

/* The cleaning stopped at an entry that changed after its copy or could
 * not be removed. The copy is verified and durable: the move succeeded and
 * the server's data is at dst. The answer says so with a warning, and
 * everything not removed stays at src (it holds what changed). */
static void eng_clean_stopped(struct eng *e)
{
    struct engine_result *r = e->res;
    LOG(LOG_WARN, "cleaning stopped; the rest of the source is kept", LF_S("old", e->job->src),
        LF_S("new", e->job->dst), LF_S("code", move_code_name(r->code)), LF_S("reason", r->error));
    r->warning_code = r->code;
    util_fmt(r->warning, sizeof r->warning,
             "%s; the move is complete: %s holds the whole verified copy, and what was not yet "
             "removed was kept at %s (compare it with the copy before removing it)",
             r->error, e->job->dst, e->job->src);
    r->code = CODE_NONE;
    r->error[0] = '\0';
}

static void rollback_warn(struct tree_walk *w, const char *name)
{
    struct eng *e = w->arg;
    char rel[MOVE_ERROR_MAX / 2];
    int err = errno;
    tree_walk_relpath(w, name, rel, sizeof rel);
    LOG(LOG_WARN, "rollback could not remove an entry", LF_S("root", e->job->dst),
        LF_S("path", rel), LF_S("reason", strerror(err)));
}

static void rollback_alive(struct tree_walk *w)
{
    struct eng *e = w->arg;
    if (e->job->alive)
        atomic_fetch_add_explicit(e->job->alive, 1, memory_order_relaxed);
}

static int rollback_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    (void)st;
    rollback_alive(w);
    if (unlinkat(tree_walk_fd(w, 0), name, 0) != 0 && errno != ENOENT)
        rollback_warn(w, name);
    return 0;
}

static int rollback_dir_pre(struct tree_walk *w, const char *name, const struct stat *st)
{
    (void)st;
    /* Our directories may already carry read-only modes: open them up. */
    (void)fchmodat(tree_walk_fd(w, 0), name, 0700, AT_SYMLINK_NOFOLLOW);
    return 0;
}

static int rollback_dir_post(struct tree_walk *w, const char *name, const struct stat *st,
                             const int fds[2])
{
    struct eng *e = w->arg;
    (void)st;
    (void)fds;
    rollback_alive(w);
    if (w->depth == 1 && e->dst_had_lf && strcmp(name, "lost+found") == 0)
        return 0; /* it was there before the move */
    if (unlinkat(tree_walk_fd(w, 0), name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        rollback_warn(w, name);
    return 0;
}

/* Removes everything under dst (which was empty but for an empty lost+found
 * when the move began), then dst itself if the move made it (or gives it its
 * old mode, owner and times back), then the parents made for it. */
static void eng_rollback(struct eng *e)
{
    static const struct tree_walk_ops ops = {rollback_entry, rollback_dir_pre, rollback_dir_post,
                                             NULL};
    if (e->dstfd >= 0) {
        struct tree_walk w = {.ops = &ops, .arg = e};
        (void)fchmod(e->dstfd, 0700);
        if (tree_walk_run(&w, e->dstfd, -1) != 0)
            LOG(LOG_WARN, "rollback could not walk the destination", LF_S("path", e->job->dst),
                LF_S("where", w.err_where), LF_S("reason", strerror(w.err)));
        tree_walk_free(&w);
        if (e->dst_preexisted) {
            struct timespec times[2] = {e->dst_orig.st_atim, e->dst_orig.st_mtim};
            if (e->is_root)
                (void)fchown(e->dstfd, e->dst_orig.st_uid, e->dst_orig.st_gid);
            (void)fchmod(e->dstfd, e->dst_orig.st_mode & 07777);
            (void)futimens(e->dstfd, times);
        }
        close(e->dstfd);
        e->dstfd = -1;
    }
    if (e->dst_created && e->dst_pfd >= 0 && unlinkat(e->dst_pfd, e->dst_base, AT_REMOVEDIR) != 0)
        LOG(LOG_WARN, "rollback could not remove the destination", LF_S("path", e->job->dst),
            LF_S("reason", strerror(errno)));
    for (size_t i = e->n_made; i-- > 0;)
        (void)rmdir(e->made_parents[i]);
}

/* --- the top paths, beneath their roots --------------------------------------------- */

/* Opens the directory rel (relative, normalised) beneath dirfd, following no
 * symlink in any component: openat2 where the kernel has it, else one
 * O_NOFOLLOW component at a time. */
static int open_beneath(int dirfd, const char *rel)
{
    struct open_how how;
    const char *p = rel;
    long r;
    int fd;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    r = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
    if (r >= 0 || errno != ENOSYS)
        return (int)r;
    fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    while (fd >= 0 && *p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        int next = open_component(fd, p, n);
        close(fd);
        fd = next;
        p += n + (slash ? 1 : 0);
    }
    return fd;
}

/* path relative to root (both resolved, path strictly inside root). */
static const char *rel_to(const char *path, const char *root)
{
    size_t n = root ? strlen(root) : 0;
    if (!root || strcmp(root, "/") == 0)
        return path + 1;
    return strncmp(path, root, n) == 0 && path[n] == '/' ? path + n + 1 : path + 1;
}

/* A failure to open beneath the root: a component changed after the checks. */
static int eng_fail_changed(struct eng *e, int err, const char *path)
{
    if (err == ELOOP || err == EXDEV || err == ENOTDIR)
        return eng_fail(e, CODE_PATH_NOT_ALLOWED,
                        "%s changed after it was checked (a symlink or file appeared in its path); "
                        "nothing was touched",
                        path);
    return eng_fail_at(e, err, "open", path, NULL);
}

/* Opens the parent of src beneath its root; src_base is its last component. */
static int eng_open_src_parent(struct eng *e)
{
    const char *rel = rel_to(e->job->src, e->job->src_root);
    const char *slash = strrchr(rel, '/');
    int rootfd = open(e->job->src_root ? e->job->src_root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char dir[PATH_MAX];
    if (rootfd < 0)
        return eng_fail_at(e, errno, "open", e->job->src_root, NULL);
    e->src_base = slash ? slash + 1 : rel;
    if (slash) {
        util_fmt(dir, sizeof dir, "%.*s", (int)(slash - rel), rel);
        e->src_pfd = open_beneath(rootfd, dir);
    } else {
        e->src_pfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
    }
    close(rootfd);
    if (e->src_pfd < 0)
        return eng_fail_changed(e, errno, e->job->src);
    return 0;
}

/* Opens (creating what is missing, remembered for rollback) the parent of dst
 * beneath its root, one component at a time, never through a symlink. */
static int eng_open_dst_parent(struct eng *e, bool create)
{
    const char *rel = rel_to(e->job->dst, e->job->dst_root);
    const char *p = rel, *slash;
    char comp[NAME_MAX + 1], made[PATH_MAX];
    int fd = open(e->job->dst_root ? e->job->dst_root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return eng_fail_at(e, errno, "open", e->job->dst_root, NULL);
    while ((slash = strchr(p, '/')) != NULL) {
        size_t n = (size_t)(slash - p);
        int next;
        /* The rule first: nothing is made under a name open_component
         * would then refuse. */
        if (component_check(p, n) != 0) {
            close(fd);
            return eng_fail_changed(e, EXDEV, e->job->dst);
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        util_fmt(made, sizeof made, "%.*s", (int)(slash - e->job->dst), e->job->dst);
        if (create && mkdirat(fd, comp, 0755) == 0) {
            e->made_parents = xrealloc(e->made_parents, (e->n_made + 1) * sizeof(char *));
            e->made_parents[e->n_made++] = xstrdup(made);
        } else if (create && errno != EEXIST) {
            int err = errno;
            close(fd);
            return eng_fail_at(e, err, "create directory", made, NULL);
        }
        next = open_component(fd, p, n);
        close(fd);
        if (next < 0) {
            if (!create && errno == ENOENT)
                return 1; /* (undo) the parent never came to be */
            return eng_fail_changed(e, errno, e->job->dst);
        }
        fd = next;
        p = slash + 1;
    }
    e->dst_pfd = fd;
    e->dst_base = p;
    return 0;
}

/* --- destination setup ----------------------------------------------------------- */

static int open_dst(struct eng *e)
{
    struct stat st;
    if (fstatat(e->dst_pfd, e->dst_base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!S_ISDIR(st.st_mode))
            return eng_fail(e, CODE_DESTINATION_EXISTS, "%s exists and is not a directory",
                            e->job->dst);
        e->dst_preexisted = true;
        e->dst_orig = st;
    } else if (errno != ENOENT) {
        return eng_fail_at(e, errno, "stat", e->job->dst, NULL);
    } else if (mkdirat(e->dst_pfd, e->dst_base, 0700) != 0) {
        return eng_fail_at(e, errno, "create directory", e->job->dst, NULL);
    } else {
        e->dst_created = true;
    }
    e->dstfd = openat(e->dst_pfd, e->dst_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (e->dstfd < 0)
        return eng_fail_at(e, errno, "open", e->job->dst, NULL);
    if (e->dst_preexisted) {
        struct stat lf;
        e->dst_had_lf = fstatat(e->dstfd, "lost+found", &lf, AT_SYMLINK_NOFOLLOW) == 0;
    }
    if (fstat(e->dstfd, &st) != 0)
        return eng_fail_at(e, errno, "stat", e->job->dst, NULL);
    /* Its identity is durable before the first byte goes into it. */
    if (e->job->on_dst && e->job->on_dst(e->job->arg, &st) != 0)
        return eng_fail(e, CODE_IO_ERROR,
                        "cannot record the destination directory in the journal (state_dir); "
                        "nothing was copied");
    e->claim.dev = st.st_dev;
    e->blksize = st.st_blksize > 0 ? (uint64_t)st.st_blksize : 4096;
    copy_caps_load(&e->cc.caps, e->src_dev, st.st_dev);
    return 0;
}

/* --- the whole move ---------------------------------------------------------------- */

static int eng_copy_move(struct eng *e);

/* Same device: one rename(2). EXDEV still happens between two mounts of one
 * filesystem (bind mounts share st_dev); then the move copies instead, still
 * inside its calculating phase, keeping the parents made for it. */
static int eng_rename(struct eng *e)
{
    if (eng_open_src_parent(e) != 0 || eng_open_dst_parent(e, true) != 0) {
        eng_rollback(e);
        return -1;
    }
    struct stat before;
    bool had_dst;
    if (eng_stop_code(e) != 0) {
        eng_rollback(e);
        return -1;
    }
    had_dst = fstatat(e->dst_pfd, e->dst_base, &before, AT_SYMLINK_NOFOLLOW) == 0;
    if (renameat(e->src_pfd, e->src_base, e->dst_pfd, e->dst_base) != 0) {
        int err = errno;
        if (err == EXDEV) {
            LOG(LOG_INFO, "rename crossed a mount of the same filesystem; copying instead",
                LF_S("old", e->job->src), LF_S("new", e->job->dst));
            return eng_copy_move(e);
        }
        eng_rollback(e);
        return eng_fail_at(e, err, "rename", e->job->src, NULL);
    }
    /* Stopped while the rename ran (it can hang on a disk that does not
     * answer, and the move be answered meanwhile): all or nothing, it goes
     * back, and the empty directory it replaced is made again. */
    if (atomic_load_explicit(e->job->stop, memory_order_relaxed) > 0) {
        if (renameat(e->dst_pfd, e->dst_base, e->src_pfd, e->src_base) != 0) {
            LOG(LOG_ERROR,
                "a stopped rename completed and could not be put back; the data is "
                "at the new path",
                LF_S("old", e->job->src), LF_S("new", e->job->dst),
                LF_S("reason", strerror(errno)));
            return 0;
        }
        if (had_dst && mkdirat(e->dst_pfd, e->dst_base, 0700) == 0) {
            struct timespec times[2] = {before.st_atim, before.st_mtim};
            if (e->is_root)
                (void)fchownat(e->dst_pfd, e->dst_base, before.st_uid, before.st_gid,
                               AT_SYMLINK_NOFOLLOW);
            (void)fchmodat(e->dst_pfd, e->dst_base, before.st_mode & 07777, 0);
            (void)utimensat(e->dst_pfd, e->dst_base, times, AT_SYMLINK_NOFOLLOW);
        }
        eng_rollback(e);
        return eng_stop_code(e);
    }
    return 0;
}

/* From here on no stop is taken: a request that came first wins instead.
 * The cleaning phase is recorded (journal) before anything is removed. */
static int eng_lock_for_cleaning(struct eng *e)
{
    int expected = CODE_NONE;
    if (!atomic_compare_exchange_strong(e->job->stop, &expected, ENGINE_STOP_LOCKED))
        return eng_stop_code(e);
    if (eng_phase(e, PHASE_CLEANING, e->prog.count.files_copied) != 0)
        return eng_fail(e, CODE_IO_ERROR,
                        "cannot record the cleaning phase in the journal; the source was "
                        "not touched and the copy was removed");
    return 0;
}

static int eng_copy_move(struct eng *e)
{
    if ((e->src_pfd < 0 && eng_open_src_parent(e) != 0) ||
        (e->dst_pfd < 0 && eng_open_dst_parent(e, true) != 0)) {
        eng_rollback(e);
        return -1;
    }
    e->srcfd = openat(e->src_pfd, e->src_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (e->srcfd < 0 || fstat(e->srcfd, &e->src_st) != 0) {
        if (errno == ELOOP || errno == ENOTDIR)
            eng_fail_changed(e, errno, e->job->src);
        else
            eng_fail_at(e, errno, "open", e->job->src, NULL);
        eng_rollback(e);
        return -1;
    }
    e->src_dev = e->src_st.st_dev;
    e->blksize = 4096;
    e->grain = 2000000000;
    note_grain(e, &e->src_st);
    if (open_dst(e) != 0 || eng_calculate(e) != 0 || eng_check_space(e) != 0 || eng_copy(e) != 0 ||
        eng_verify(e) != 0 || eng_check_source(e) != 0 || eng_lock_for_cleaning(e) != 0) {
        eng_release_space(e);
        eng_rollback(e);
        return -1;
    }
    eng_release_space(e);
    copy_caps_save(&e->cc.caps);
    e->res->bytes_copied = e->prog.count.bytes_copied;
    e->res->files_copied = e->prog.count.files_copied;
    /* From here the copy is whole and durable: a failure keeps it, and
     * the move has succeeded. */
    if (eng_clean(e) != 0)
        eng_clean_stopped(e);
    return 0;
}

/* --- recovery after a crash: look first, remove only what matches ----------------- */

static bool id_matches(const struct engine_id *want, const struct stat *st)
{
    return want->known && S_ISDIR(st->st_mode) && st->st_dev == want->dev &&
           st->st_ino == want->ino;
}

static const char *type_name(mode_t mode)
{
    return S_ISDIR(mode)    ? "a directory"
           : S_ISREG(mode)  ? "a regular file"
           : S_ISLNK(mode)  ? "a symlink"
           : S_ISFIFO(mode) ? "a fifo"
           : S_ISSOCK(mode) ? "a socket"
                            : "a device node";
}

static bool describe_stat(const struct stat *st, const struct engine_id *want, char *buf,
                          size_t size)
{
    bool match = id_matches(want, st);
    util_fmt(buf, size, "%s (device %u:%u, inode %llu)%s", type_name(st->st_mode),
             major(st->st_dev), minor(st->st_dev), (unsigned long long)st->st_ino,
             !want->known || !S_ISDIR(st->st_mode) ? ""
             : match                               ? ", the one the journal recorded"
                                                   : ", not the one the journal recorded");
    return match;
}

bool engine_describe(const char *path, const struct engine_id *want, char *buf, size_t size)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            util_fmt(buf, size, "absent");
        else
            util_fmt(buf, size, "not examinable (%s)", strerror(errno));
        return false;
    }
    return describe_stat(&st, want, buf, size);
}

/* The disk does not match the journal: log both paths' state, touch nothing,
 * and say so. */
static int eng_mismatch(struct eng *e, const char *src_state, const char *dst_state)
{
    const struct engine_job *job = e->job;
    LOG(LOG_ERROR,
        "after the restart the disk does not match the journal; nothing was touched: the "
        "operator must look",
        LF_S("phase", move_phase_name(job->resume_phase)), LF_S("old_path", job->src),
        LF_S("old_state", src_state), LF_S("new_path", job->dst), LF_S("new_state", dst_state));
    e->res->code = CODE_NONE;
    e->res->error[0] = '\0';
    return eng_fail(e, CODE_NEEDS_ATTENTION,
                    "the agent stopped during the move and at its restart the disk did not match "
                    "its journal, so it touched nothing: %s is %s; %s is %s. Check both before "
                    "starting the server",
                    job->src, src_state, job->dst, dst_state);
}

/* Looks at dst through its parent beneath the root (never through a
 * symlink). Returns 1 when it is the directory the journal recorded (then
 * e->dstfd is open on it), 0 when it is absent, -1 when it is something else
 * or cannot be examined; state describes it. */
static int eng_look_dst(struct eng *e, char *state, size_t size)
{
    const struct engine_job *job = e->job;
    struct stat st;
    int prc = eng_open_dst_parent(e, false);
    e->res->code = CODE_NONE;
    e->res->error[0] = '\0';
    if (prc == 1) {
        util_fmt(state, size, "absent (its parent directory too)");
        return 0;
    }
    if (prc < 0) {
        util_fmt(state, size,
                 "not examinable: a directory on its path was replaced (by a "
                 "symlink or a file)");
        return -1;
    }
    if (fstatat(e->dst_pfd, e->dst_base, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) {
            util_fmt(state, size, "absent");
            return 0;
        }
        util_fmt(state, size, "not examinable (%s)", strerror(errno));
        return -1;
    }
    if (!describe_stat(&st, &job->dst_id, state, size))
        return -1;
    e->dstfd = openat(e->dst_pfd, e->dst_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (e->dstfd < 0 || fstat(e->dstfd, &st) != 0 || !describe_stat(&st, &job->dst_id, state, size))
        return -1; /* swapped between the look and the open */
    return 1;
}

/* Looks at src by name: true when it is the directory the journal recorded
 * (only "a directory" for records of older agents, which have no identity). */
static bool eng_look_src(struct eng *e, char *state, size_t size, bool *absent)
{
    struct engine_id any = {0};
    struct stat st;
    *absent = lstat(e->job->src, &st) != 0 && (errno == ENOENT || errno == ENOTDIR);
    if (!e->job->src_id.known) {
        (void)engine_describe(e->job->src, &any, state, size);
        return !*absent && S_ISDIR(st.st_mode);
    }
    return engine_describe(e->job->src, &e->job->src_id, state, size);
}

/* After a crash before cleaning. The source was never touched; the move may
 * have written into newPath, and only into the directory whose identity it
 * journaled. That directory's contents are removed when it is there and the
 * source is the directory recorded at acceptance; anything else is left
 * alone and reported. */
static int eng_undo(struct eng *e)
{
    const struct engine_job *job = e->job;
    char src_state[160], dst_state[192];
    bool src_absent, src_ok = eng_look_src(e, src_state, sizeof src_state, &src_absent);
    int dst;

    e->dst_preexisted = job->dst_preexisted;
    e->dst_orig = job->dst_orig;
    e->made_parents = xcalloc(job->n_made + 1, sizeof(char *));
    for (size_t i = 0; i < job->n_made; i++)
        e->made_parents[e->n_made++] = xstrdup(job->made_parents[i]);

    if (job->resume_phase == PHASE_QUEUED || !job->dst_id.known) {
        /* It wrote nothing into newPath (at most it made an empty directory
         * it did not live to record): whatever is there is not its own. */
        struct engine_id none = {0};
        (void)engine_describe(job->dst, job->dst_preexisted ? &job->dst_id : &none, dst_state,
                              sizeof dst_state);
        if (!src_ok)
            return eng_mismatch(e, src_state, dst_state);
        for (size_t i = e->n_made; i-- > 0;)
            (void)rmdir(e->made_parents[i]); /* only empty ones go */
        return eng_fail(e, CODE_INTERRUPTED,
                        "the agent stopped before it wrote anything at %s; checked at its restart: "
                        "%s is %s, and %s is %s, left as it is",
                        job->dst, job->src, src_state, job->dst, dst_state);
    }
    dst = eng_look_dst(e, dst_state, sizeof dst_state);
    if (!src_ok || dst < 0)
        return eng_mismatch(e, src_state, dst_state);
    if (dst == 1) {
        struct stat lf;
        e->dst_created = !job->dst_preexisted;
        if (job->dst_preexisted)
            e->dst_had_lf = fstatat(e->dstfd, "lost+found", &lf, AT_SYMLINK_NOFOLLOW) == 0;
    }
    eng_rollback(e);
    return eng_fail(e, CODE_INTERRUPTED,
                    "the agent stopped during the move; checked at its restart: %s is %s; the "
                    "partial copy at %s %s",
                    job->src, src_state, job->dst,
                    dst == 1 ? "(the directory the move made, by device and inode) was removed"
                             : "was already gone");
}

/* --- checking the copy before finishing a cleaning ---------------------------------- */

static int count_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    bool fresh = true;
    e->fin_entries++;
    if (S_ISDIR(st->st_mode) && w->depth == 0 && strcmp(name, "lost+found") == 0)
        e->fin_lost_found = true;
    if (S_ISREG(st->st_mode)) {
        /* bytesCopied counts each hard-linked inode once */
        if (st->st_nlink > 1)
            hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
        if (fresh)
            e->fin_bytes += (uint64_t)st->st_size;
    }
    return 0;
}

/* A remaining source entry must be in the copy with its type, size and
 * mtime (directories: type only, their entries are being removed). */
static int match_entry(struct tree_walk *w, const char *name, const struct stat *s)
{
    struct eng *e = w->arg;
    struct stat d;
    const char *what = NULL;
    if (fstatat(tree_walk_fd(w, 1), name, &d, AT_SYMLINK_NOFOLLOW) != 0)
        what = "is missing in the copy";
    else if ((s->st_mode & S_IFMT) != (d.st_mode & S_IFMT))
        what = "has another type in the copy";
    else if (!S_ISDIR(s->st_mode) && (s->st_size != d.st_size || !same_mtime(s, &d)))
        what = "differs from the copy (size or modification time)";
    if (what) {
        char rel[MOVE_ERROR_MAX / 4];
        tree_walk_relpath(w, name, rel, sizeof rel);
        util_fmt(e->fin_why, e->fin_why_size, "the copy, but the source's entry %s %s", rel, what);
        return -1;
    }
    return 0;
}

/* Is the copy at dst (open as e->dstfd) the whole verified copy, and does
 * each remaining source entry match it? why describes the first difference. */
static bool eng_copy_is_whole(struct eng *e, bool src_there, char *why, size_t size)
{
    static const struct tree_walk_ops count_ops = {count_entry, count_entry, NULL, NULL};
    static const struct tree_walk_ops match_ops = {match_entry, match_entry, NULL, NULL};
    const struct engine_job *job = e->job;
    struct tree_walk w = {.ops = &count_ops, .arg = e, .need_stat = true, .strict_dev = true};
    uint64_t entries;
    int rc = tree_walk_run(&w, e->dstfd, -1);
    tree_walk_free(&w);
    hl_free(&e->hl);
    if (rc != 0) {
        util_fmt(why, size, "the copy, but it cannot be read whole (%s)",
                 strerror(w.err ? w.err : EIO));
        return false;
    }
    entries = e->fin_entries;
    if (e->fin_lost_found && entries == job->files_copied + 1)
        entries--; /* the empty lost+found of a destination filesystem's root */
    if (entries != job->files_copied || e->fin_bytes != job->bytes_copied) {
        util_fmt(why, size,
                 "the copy, but not whole: %llu entries and %llu bytes where the verified copy "
                 "had %llu and %llu",
                 (unsigned long long)e->fin_entries, (unsigned long long)e->fin_bytes,
                 (unsigned long long)job->files_copied, (unsigned long long)job->bytes_copied);
        return false;
    }
    if (!src_there)
        return true;
    memset(&w, 0, sizeof w);
    w.ops = &match_ops;
    w.arg = e;
    w.mirrored = true;
    w.need_stat = true;
    w.strict_dev = true;
    e->fin_why = why;
    e->fin_why_size = size;
    why[0] = '\0';
    rc = tree_walk_run(&w, e->srcfd, e->dstfd);
    if (rc != 0 && !why[0])
        util_fmt(why, size, "the copy, but the rest of the source cannot be compared with it (%s)",
                 strerror(w.err ? w.err : EIO));
    tree_walk_free(&w);
    return rc == 0;
}

/* After a crash during cleaning: the copy was verified and durable. The rest
 * of the source is removed only when newPath is the directory the move made,
 * holding as many entries and bytes as the verified copy, and each remaining
 * source entry matches its copy; else nothing is touched. */
static int eng_finish(struct eng *e)
{
    const struct engine_job *job = e->job;
    char src_state[160], dst_state[256];
    bool src_absent, src_ok = eng_look_src(e, src_state, sizeof src_state, &src_absent);
    struct stat st;
    int dst = eng_look_dst(e, dst_state, sizeof dst_state);
    if (dst != 1 || (!src_ok && !src_absent))
        return eng_mismatch(e, src_state, dst_state);
    if (!src_absent) {
        if (eng_open_src_parent(e) != 0)
            return eng_mismatch(e, src_state, "not checked");
        e->srcfd = openat(e->src_pfd, e->src_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (e->srcfd < 0 || fstat(e->srcfd, &st) != 0 ||
            (job->src_id.known && !id_matches(&job->src_id, &st)))
            return eng_mismatch(e, "changed while it was being examined", dst_state);
    }
    if (!eng_copy_is_whole(e, !src_absent, dst_state, sizeof dst_state))
        return eng_mismatch(e, src_state, dst_state);
    if (src_absent)
        return 0; /* its removal had ended */
    return eng_clean(e);
}

/* syncfs of the filesystem that holds the directory pfd (parent of path). */
static int sync_fs_of(int pfd, const char *path)
{
    /* The parents are O_PATH descriptors, which syncfs refuses (EBADF). */
    int fd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    char buf[PATH_MAX];
    char *slash;
    /* The parent may be gone: one made for newPath and removed by the
     * rollback. The nearest directory still there along the path is where
     * the first one was made, so it is on the same filesystem. */
    if (fd < 0 && strlen(path) < sizeof buf) {
        memcpy(buf, path, strlen(path) + 1);
        while (fd < 0 && (slash = strrchr(buf, '/')) != NULL && slash != buf) {
            *slash = '\0';
            fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        }
    }
    if (fd < 0 || syncfs(fd) != 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Before the outcome is recorded (the caller journals it when this returns),
 * whatever the move changed on either filesystem is made durable: a source
 * removed by the cleaning, a partial copy removed by a rollback, a rename.
 * Without it a power cut after the answer can bring back a source the answer
 * said was moved, or undo a rename it said was done (tests/crash/run). A
 * failure is logged; the outcome stands (it is what the disk holds now). */
static void eng_make_durable(struct eng *e)
{
    struct stat a, b;
    int rc;
    if (e->src_pfd >= 0 && (rc = sync_fs_of(e->src_pfd, e->job->src)) != 0)
        LOG(LOG_WARN, "could not sync the source's filesystem", LF_S("path", e->job->src),
            LF_S("reason", strerror(-rc)));
    if (e->dst_pfd >= 0 &&
        (e->src_pfd < 0 || fstat(e->src_pfd, &a) != 0 || fstat(e->dst_pfd, &b) != 0 ||
         a.st_dev != b.st_dev) &&
        (rc = sync_fs_of(e->dst_pfd, e->job->dst)) != 0)
        LOG(LOG_WARN, "could not sync the destination's filesystem", LF_S("path", e->job->dst),
            LF_S("reason", strerror(-rc)));
}

int engine_run(const struct engine_job *job, struct engine_result *res)
{
    struct eng e;
    int rc;
    memset(res, 0, sizeof *res);
    memset(&e, 0, sizeof e);
    e.job = job;
    e.res = res;
    e.srcfd = e.dstfd = e.src_pfd = e.dst_pfd = -1;
    e.is_root = geteuid() == 0;
    e.noatime_ok = true;
    e.cc.checksum = job->verify == VERIFY_CHECKSUM;
    e.cc.stop = job->stop;
    e.cc.progress = eng_on_bytes;
    e.cc.arg = &e;

    switch (job->mode) {
    case ENGINE_UNDO:
        rc = eng_undo(&e);
        break;
    case ENGINE_FINISH:
        rc = eng_finish(&e);
        break;
    default:
        (void)eng_phase(&e, PHASE_CALCULATING, 0);
        rc = job->rename ? eng_rename(&e) : eng_copy_move(&e);
        break;
    }
    eng_make_durable(&e);

    if (e.srcfd >= 0)
        close(e.srcfd);
    if (e.dstfd >= 0)
        close(e.dstfd);
    if (e.src_pfd >= 0)
        close(e.src_pfd);
    if (e.dst_pfd >= 0)
        close(e.dst_pfd);
    hl_free(&e.hl);
    src_record_free(&e.rec);
    for (size_t i = 0; i < e.n_made; i++)
        free(e.made_parents[i]);
    free(e.made_parents);
    free(e.hashes);
    for (size_t i = 0; i < e.n_suspects; i++)
        free(e.suspects[i].rel);
    free(e.suspects);
    free(e.cc.buf);
    return rc;
}
