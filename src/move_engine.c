/* move_engine.c: the file-tree move: walk, copy, verify, sync, remove, rollback. */
#include "move_engine.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#define COPY_CHUNK                                                                                 \
    (8u << 20) /* bytes per in-kernel copy call: bounds progress and cancel latency */
#define RW_BUF (1u << 20)

struct entry {
    char *rel; /* path relative to the source root */
    struct stat st;
    char *link;      /* symlink target */
    size_t hl_first; /* for a hard link seen before: index+1 of its first name */
};

/* Open-addressing table (dev, ino) -> first entry index, only for files with
 * st_nlink > 1. */
struct hl_table {
    struct hl_slot {
        dev_t dev;
        ino_t ino;
        size_t idx1; /* index+1, 0 = empty */
    } * slots;
    size_t cap, used;
};

struct eng {
    const struct engine_job *job;
    struct engine_result *res;
    struct entry *ents;
    size_t n, cap;
    size_t created; /* ents[0..created) exist under dst */
    int srcfd, dstfd;
    dev_t src_dev;
    bool dst_preexisted, dst_created;
    struct stat dst_orig;
    char **made_parents; /* created above dst, outermost first */
    size_t n_made;
    struct hl_table hl;
    struct engine_progress prog;
    bool use_cfr, use_sendfile;
    char *buf, *buf2;
    bool is_root;
};

/* --- results and reporting ---------------------------------------------- */

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

/* Fails with the code of err, naming what and where: "copy /a/b: No space". */
static int eng_fail_errno(struct eng *e, int err, const char *what, const char *root,
                          const char *rel)
{
    return eng_fail(e, engine_errno_code(err), "%s %s%s%s: %s", what, root, rel && *rel ? "/" : "",
                    rel ? rel : "", strerror(err));
}

static int eng_check_stop(struct eng *e)
{
    int code = atomic_load_explicit(e->job->stop, memory_order_relaxed);
    if (code == CODE_NONE)
        return 0;
    return eng_fail(e, (enum move_code)code, "%s",
                    code == CODE_CANCELLED       ? "the move was cancelled"
                    : code == CODE_SHUTTING_DOWN ? "the agent is shutting down"
                    : code == CODE_TIMEOUT       ? "the move timed out"
                                                 : "the move was stopped");
}

static void eng_report(struct eng *e, const char *current, bool phase_start)
{
    e->prog.current = current;
    e->job->report(e->job->arg, &e->prog, phase_start);
}

static void eng_phase(struct eng *e, enum move_phase phase, uint64_t phase_total)
{
    e->prog.phase = phase;
    e->prog.phase_done = 0;
    e->prog.phase_total = phase_total;
    eng_report(e, NULL, true);
}

/* --- hard-link table ----------------------------------------------------- */

static size_t hl_hash(dev_t dev, ino_t ino)
{
    uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev;
    return (size_t)(h ^ (h >> 29));
}

/* Returns the index+1 of the first name of (dev, ino), or records idx and
 * returns 0. */
static size_t hl_lookup_or_add(struct hl_table *t, dev_t dev, ino_t ino, size_t idx)
{
    size_t i;
    if ((t->used + 1) * 2 > t->cap) {
        struct hl_table bigger = {xcalloc(t->cap ? t->cap * 2 : 64, sizeof(struct hl_slot)),
                                  t->cap ? t->cap * 2 : 64, 0};
        for (i = 0; i < t->cap; i++)
            if (t->slots[i].idx1)
                hl_lookup_or_add(&bigger, t->slots[i].dev, t->slots[i].ino, t->slots[i].idx1 - 1);
        free(t->slots);
        *t = bigger;
    }
    for (i = hl_hash(dev, ino) & (t->cap - 1); t->slots[i].idx1; i = (i + 1) & (t->cap - 1))
        if (t->slots[i].dev == dev && t->slots[i].ino == ino)
            return t->slots[i].idx1;
    t->slots[i] = (struct hl_slot){dev, ino, idx + 1};
    t->used++;
    return 0;
}

/* --- calculating: the walk ------------------------------------------------ */

static const char *type_name(mode_t m)
{
    if (S_ISFIFO(m))
        return "fifo";
    if (S_ISCHR(m))
        return "character device";
    if (S_ISBLK(m))
        return "block device";
    if (S_ISSOCK(m))
        return "socket";
    return "unknown file type";
}

static char *join_rel(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p;
    if (a == 0)
        return xstrdup(name);
    p = xmalloc(a + b + 2);
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b);
    p[a + 1 + b] = '\0';
    return p;
}

/* Lists one source directory, appending its children to ents; directories
 * are pushed on the explicit stack (no C recursion, so depth is unbounded). */
static int walk_dir(struct eng *e, const char *rel, char ***stack, size_t *sn, size_t *scap)
{
    int fd = openat(e->srcfd, *rel ? rel : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *d;
    struct dirent *de;
    if (fd < 0)
        return eng_fail_errno(e, errno, "open directory", e->job->src, rel);
    d = fdopendir(fd);
    if (!d) {
        int err = errno;
        close(fd);
        return eng_fail_errno(e, err, "read directory", e->job->src, rel);
    }
    for (;;) {
        struct entry *en;
        errno = 0;
        de = readdir(d);
        if (!de) {
            if (errno) {
                int err = errno;
                closedir(d);
                return eng_fail_errno(e, err, "read directory", e->job->src, rel);
            }
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (e->n == e->cap) {
            e->cap = e->cap ? e->cap * 2 : 1024;
            e->ents = xrealloc(e->ents, e->cap * sizeof *e->ents);
        }
        en = &e->ents[e->n];
        memset(en, 0, sizeof *en);
        en->rel = join_rel(rel, de->d_name);
        e->n++;
        if (fstatat(dirfd(d), de->d_name, &en->st, AT_SYMLINK_NOFOLLOW) != 0) {
            int err = errno;
            closedir(d);
            return eng_fail_errno(e, err, "stat", e->job->src, en->rel);
        }
        if (S_ISDIR(en->st.st_mode)) {
            if (en->st.st_dev != e->src_dev) {
                closedir(d);
                return eng_fail(e, CODE_IO_ERROR,
                                "another filesystem is mounted inside the source at %s/%s; "
                                "unmount it first",
                                e->job->src, en->rel);
            }
            if (*sn == *scap) {
                *scap = *scap ? *scap * 2 : 64;
                *stack = xrealloc(*stack, *scap * sizeof **stack);
            }
            (*stack)[(*sn)++] = xstrdup(en->rel);
        } else if (S_ISLNK(en->st.st_mode)) {
            size_t cap = (size_t)en->st.st_size + 1;
            ssize_t got;
            if (cap < 64 || cap > PATH_MAX)
                cap = PATH_MAX;
            en->link = xmalloc(cap);
            got = readlinkat(dirfd(d), de->d_name, en->link, cap - 1);
            if (got < 0) {
                int err = errno;
                closedir(d);
                return eng_fail_errno(e, err, "read link", e->job->src, en->rel);
            }
            en->link[got] = '\0';
        } else if (S_ISREG(en->st.st_mode)) {
            if (en->st.st_nlink > 1)
                en->hl_first = hl_lookup_or_add(&e->hl, en->st.st_dev, en->st.st_ino, e->n - 1);
            if (!en->hl_first)
                e->prog.bytes_total += (uint64_t)en->st.st_size;
        } else {
            /* Opening a fifo for reading would block forever: refuse. */
            closedir(d);
            return eng_fail(e, CODE_IO_ERROR, "cannot move %s/%s: %s is not supported", e->job->src,
                            en->rel, type_name(en->st.st_mode));
        }
        e->prog.files_total = e->n;
        e->prog.phase_done = e->n;
        eng_report(e, en->rel, false);
        if (eng_check_stop(e) != 0) {
            closedir(d);
            return -1;
        }
    }
    closedir(d);
    return 0;
}

static int eng_walk(struct eng *e)
{
    char **stack = NULL;
    size_t sn = 0, scap = 0;
    int rc;
    rc = walk_dir(e, "", &stack, &sn, &scap);
    while (rc == 0 && sn > 0) {
        char *rel = stack[--sn];
        rc = walk_dir(e, rel, &stack, &sn, &scap);
        free(rel);
    }
    while (sn > 0)
        free(stack[--sn]);
    free(stack);
    return rc;
}

/* --- copying ---------------------------------------------------------------- */

static bool cfr_unsupported(int err)
{
    return err == EXDEV || err == ENOSYS || err == EOPNOTSUPP || err == EINVAL || err == EPERM ||
           err == ENOTTY || err == EBADF || err == ETXTBSY || err == EACCES || err == ENOENT;
}

static ssize_t write_all(int fd, const char *buf, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, buf + off, n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (size_t)w;
    }
    return (ssize_t)n;
}

/* Copies sfd to dfd in bounded chunks (progress and cancel between them),
 * preferring in-kernel copies. copy_file_range fails with EXDEV across
 * filesystems (the usual case here), so sendfile, also in the kernel, comes
 * next, then read/write. A method found unsupported is not tried again for
 * this move. */
static int copy_data(struct eng *e, int sfd, int dfd, const struct entry *en)
{
    uint64_t file_done = 0;
    for (;;) {
        ssize_t got;
        if (eng_check_stop(e) != 0)
            return -1;
        if (e->use_cfr) {
            got = copy_file_range(sfd, NULL, dfd, NULL, COPY_CHUNK, 0);
            if (file_done == 0 &&
                ((got < 0 && cfr_unsupported(errno)) || (got == 0 && en->st.st_size > 0))) {
                e->use_cfr = false;
                continue;
            }
        } else if (e->use_sendfile) {
            got = sendfile(dfd, sfd, NULL, COPY_CHUNK);
            if (got < 0 && file_done == 0 && (errno == EINVAL || errno == ENOSYS)) {
                e->use_sendfile = false;
                continue;
            }
        } else {
            got = read(sfd, e->buf, RW_BUF);
            if (got > 0 && write_all(dfd, e->buf, (size_t)got) < 0)
                return eng_fail_errno(e, errno, "write", e->job->dst, en->rel);
        }
        if (got < 0) {
            if (errno == EINTR)
                continue;
            /* ENOSPC and friends come from the write side: name the destination. */
            return eng_fail_errno(e, errno, "copy to", e->job->dst, en->rel);
        }
        if (got == 0)
            return 0;
        file_done += (uint64_t)got;
        e->prog.bytes_done += (uint64_t)got;
        e->prog.phase_done = e->prog.bytes_done;
        eng_report(e, en->rel, false);
    }
}

static int copy_file(struct eng *e, size_t i)
{
    struct entry *en = &e->ents[i];
    struct stat now;
    struct timespec times[2] = {en->st.st_atim, en->st.st_mtim};
    int sfd, dfd, rc = 0;

    sfd = openat(e->srcfd, en->rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (sfd < 0)
        return eng_fail_errno(e, errno, "open", e->job->src, en->rel);
    if (fstat(sfd, &now) != 0 || !S_ISREG(now.st_mode) || now.st_ino != en->st.st_ino) {
        close(sfd);
        return eng_fail(e, CODE_SOURCE_CHANGED, "%s/%s was replaced while the move ran",
                        e->job->src, en->rel);
    }
    dfd = openat(e->dstfd, en->rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (dfd < 0) {
        rc = eng_fail_errno(e, errno, "create", e->job->dst, en->rel);
        close(sfd);
        return rc;
    }
    e->created = i + 1;
    rc = copy_data(e, sfd, dfd, en);
    if (rc == 0 && fstat(sfd, &now) == 0 &&
        (now.st_size != en->st.st_size || now.st_mtim.tv_sec != en->st.st_mtim.tv_sec ||
         now.st_mtim.tv_nsec != en->st.st_mtim.tv_nsec))
        rc = eng_fail(e, CODE_SOURCE_CHANGED,
                      "%s/%s changed while it was being copied (stop the game server first)",
                      e->job->src, en->rel);
    /* Owner first: chown clears set-user-ID bits that fchmod then restores. */
    if (rc == 0 && e->is_root && fchown(dfd, en->st.st_uid, en->st.st_gid) != 0)
        rc = eng_fail_errno(e, errno, "chown", e->job->dst, en->rel);
    if (rc == 0 && fchmod(dfd, en->st.st_mode & 07777) != 0)
        rc = eng_fail_errno(e, errno, "chmod", e->job->dst, en->rel);
    if (rc == 0 && futimens(dfd, times) != 0)
        rc = eng_fail_errno(e, errno, "set times of", e->job->dst, en->rel);
    if (close(dfd) != 0 && rc == 0)
        rc = eng_fail_errno(e, errno, "close", e->job->dst, en->rel);
    close(sfd);
    return rc;
}

static int copy_entry(struct eng *e, size_t i)
{
    struct entry *en = &e->ents[i];
    mode_t m = en->st.st_mode;
    if (S_ISDIR(m)) {
        /* 0700 while filling it; the real mode and times come at the end. */
        if (mkdirat(e->dstfd, en->rel, 0700) != 0)
            return eng_fail_errno(e, errno, "create directory", e->job->dst, en->rel);
        e->created = i + 1;
    } else if (S_ISLNK(m)) {
        struct timespec times[2] = {en->st.st_atim, en->st.st_mtim};
        if (symlinkat(en->link, e->dstfd, en->rel) != 0)
            return eng_fail_errno(e, errno, "create symlink", e->job->dst, en->rel);
        e->created = i + 1;
        if (e->is_root &&
            fchownat(e->dstfd, en->rel, en->st.st_uid, en->st.st_gid, AT_SYMLINK_NOFOLLOW) != 0)
            return eng_fail_errno(e, errno, "chown", e->job->dst, en->rel);
        if (utimensat(e->dstfd, en->rel, times, AT_SYMLINK_NOFOLLOW) != 0)
            return eng_fail_errno(e, errno, "set times of", e->job->dst, en->rel);
    } else if (en->hl_first) {
        if (linkat(e->dstfd, e->ents[en->hl_first - 1].rel, e->dstfd, en->rel, 0) != 0)
            return eng_fail_errno(e, errno, "create hard link", e->job->dst, en->rel);
        e->created = i + 1;
    } else {
        return copy_file(e, i);
    }
    return 0;
}

static int apply_dir_meta(struct eng *e, int dirfd, const char *rel, const struct stat *st)
{
    struct timespec times[2] = {st->st_atim, st->st_mtim};
    const char *name = rel ? rel : "";
    int flags = rel ? 0 : AT_EMPTY_PATH;
    if (e->is_root && fchownat(dirfd, name, st->st_uid, st->st_gid, flags) != 0)
        return eng_fail_errno(e, errno, "chown", e->job->dst, rel);
    if (rel ? fchmodat(dirfd, rel, st->st_mode & 07777, 0) != 0
            : fchmod(dirfd, st->st_mode & 07777) != 0)
        return eng_fail_errno(e, errno, "chmod", e->job->dst, rel);
    if (rel ? utimensat(dirfd, rel, times, 0) != 0 : futimens(dirfd, times) != 0)
        return eng_fail_errno(e, errno, "set times of", e->job->dst, rel);
    return 0;
}

static int eng_copy(struct eng *e)
{
    struct stat root_st;
    eng_phase(e, PHASE_COPYING, e->prog.bytes_total);
    for (size_t i = 0; i < e->n; i++) {
        if (eng_check_stop(e) != 0 || copy_entry(e, i) != 0)
            return -1;
        e->prog.files_done++;
        eng_report(e, e->ents[i].rel, false);
    }
    /* Directory times last, children before parents: writing into a
     * directory would change its mtime again. */
    for (size_t i = e->n; i-- > 0;)
        if (S_ISDIR(e->ents[i].st.st_mode) &&
            apply_dir_meta(e, e->dstfd, e->ents[i].rel, &e->ents[i].st) != 0)
            return -1;
    if (fstat(e->srcfd, &root_st) != 0)
        return eng_fail_errno(e, errno, "stat", e->job->src, NULL);
    if (apply_dir_meta(e, e->dstfd, NULL, &root_st) != 0)
        return -1;
    /* Durable before anything is verified or removed: one syncfs of the
     * destination filesystem instead of an fsync per file. */
    if (syncfs(e->dstfd) != 0)
        return eng_fail_errno(e, errno, "sync", e->job->dst, NULL);
    return 0;
}

/* --- verifying -------------------------------------------------------------- */

static bool same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static int compare_content(struct eng *e, const struct entry *en)
{
    int sfd = openat(e->srcfd, en->rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    int dfd = openat(e->dstfd, en->rel, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    int rc = 0;
    if (sfd < 0 || dfd < 0) {
        rc = eng_fail_errno(e, errno, "open for verification", sfd < 0 ? e->job->src : e->job->dst,
                            en->rel);
        goto out;
    }
    /* The copy was synced: drop its cached pages so the re-read hits the disk. */
    (void)posix_fadvise(dfd, 0, 0, POSIX_FADV_DONTNEED);
    for (;;) {
        ssize_t a = read(sfd, e->buf, RW_BUF), b, got = 0;
        if (a < 0) {
            rc = eng_fail_errno(e, errno, "read", e->job->src, en->rel);
            break;
        }
        while (got < a) {
            b = read(dfd, e->buf2 + got, (size_t)(a - got));
            if (b <= 0)
                break;
            got += b;
        }
        if (got != a || memcmp(e->buf, e->buf2, (size_t)a) != 0) {
            rc = eng_fail(e, CODE_IO_ERROR, "verification failed: content of %s/%s differs",
                          e->job->dst, en->rel);
            break;
        }
        if (a == 0)
            break;
        if (eng_check_stop(e) != 0) {
            rc = -1;
            break;
        }
    }
out:
    if (sfd >= 0)
        close(sfd);
    if (dfd >= 0)
        close(dfd);
    return rc;
}

static int verify_entry(struct eng *e, const struct entry *en)
{
    struct stat s, d;
    mode_t m = en->st.st_mode;
    if (fstatat(e->srcfd, en->rel, &s, AT_SYMLINK_NOFOLLOW) != 0)
        return eng_fail(e, CODE_SOURCE_CHANGED, "%s/%s disappeared while the move ran", e->job->src,
                        en->rel);
    /* A directory's mtime changes when an entry is added, removed or renamed. */
    if ((s.st_mode & S_IFMT) != (m & S_IFMT) || s.st_ino != en->st.st_ino ||
        (!S_ISDIR(m) && s.st_size != en->st.st_size) || !same_time(&s.st_mtim, &en->st.st_mtim))
        return eng_fail(e, CODE_SOURCE_CHANGED,
                        "%s/%s changed while the move ran (stop the game server first)",
                        e->job->src, en->rel);
    if (fstatat(e->dstfd, en->rel, &d, AT_SYMLINK_NOFOLLOW) != 0)
        return eng_fail_errno(e, errno, "verification failed: stat", e->job->dst, en->rel);
    if ((d.st_mode & S_IFMT) != (m & S_IFMT) || (S_ISREG(m) && d.st_size != en->st.st_size) ||
        (!S_ISLNK(m) && (d.st_mode & 07777) != (m & 07777)) ||
        !same_time(&d.st_mtim, &en->st.st_mtim) ||
        (e->is_root && (d.st_uid != en->st.st_uid || d.st_gid != en->st.st_gid)))
        return eng_fail(e, CODE_IO_ERROR, "verification failed: %s/%s differs from the source",
                        e->job->dst, en->rel);
    if (S_ISLNK(m)) {
        char target[PATH_MAX];
        ssize_t n = readlinkat(e->dstfd, en->rel, target, sizeof target - 1);
        if (n < 0 || (target[n] = '\0', strcmp(target, en->link) != 0))
            return eng_fail(e, CODE_IO_ERROR, "verification failed: link %s/%s points elsewhere",
                            e->job->dst, en->rel);
    }
    if (S_ISREG(m) && e->job->verify == VERIFY_CHECKSUM && !en->hl_first)
        return compare_content(e, en);
    return 0;
}

static int eng_verify(struct eng *e)
{
    if (e->job->verify == VERIFY_CHECKSUM && e->n > 0) {
        e->buf2 = xmalloc(RW_BUF);
    }
    eng_phase(e, PHASE_VERIFYING, e->n);
    for (size_t i = 0; i < e->n; i++) {
        if (eng_check_stop(e) != 0 || verify_entry(e, &e->ents[i]) != 0)
            return -1;
        e->prog.phase_done = i + 1;
        eng_report(e, e->ents[i].rel, false);
    }
    return 0;
}

/* --- cleaning --------------------------------------------------------------- */

/* Removes the source, deepest entries first. Not cancellable: the copy is
 * complete and durable, so finishing is the safe direction. */
static int eng_clean(struct eng *e)
{
    eng_phase(e, PHASE_CLEANING, e->n);
    for (size_t i = e->n; i-- > 0;) {
        const struct entry *en = &e->ents[i];
        if (unlinkat(e->srcfd, en->rel, S_ISDIR(en->st.st_mode) ? AT_REMOVEDIR : 0) != 0)
            return eng_fail_errno(e, errno,
                                  "copy is complete at the destination, but could not remove",
                                  e->job->src, en->rel);
        e->prog.phase_done = e->n - i;
        eng_report(e, en->rel, false);
    }
    if (rmdir(e->job->src) != 0) {
        /* A mount point stays (empty); anything else is an error. */
        if (errno != EBUSY)
            return eng_fail_errno(e, errno,
                                  "copy is complete at the destination, but could not remove",
                                  e->job->src, NULL);
        LOG(LOG_INFO, "source is a mount point; its contents moved and it stays",
            LF_S("path", e->job->src));
    }
    return 0;
}

/* --- destination setup and rollback ---------------------------------------- */

/* Creates the missing parents of dst, remembering them for rollback. */
static int make_parents(struct eng *e)
{
    char path[PATH_MAX];
    size_t len = strlen(e->job->dst);
    memcpy(path, e->job->dst, len + 1);
    for (char *p = path + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        if (mkdir(path, 0755) == 0) {
            e->made_parents = xrealloc(e->made_parents, (e->n_made + 1) * sizeof(char *));
            e->made_parents[e->n_made++] = xstrdup(path);
        } else if (errno != EEXIST) {
            int err = errno;
            *p = '/';
            return eng_fail_errno(e, err, "create directory", path, NULL);
        }
        *p = '/';
    }
    return 0;
}

static void remove_parents(struct eng *e)
{
    for (size_t i = e->n_made; i-- > 0;)
        (void)rmdir(e->made_parents[i]);
}

static int open_dst(struct eng *e)
{
    struct stat st;
    if (lstat(e->job->dst, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return eng_fail(e, CODE_DESTINATION_EXISTS, "%s exists and is not a directory",
                            e->job->dst);
        e->dst_preexisted = true;
        e->dst_orig = st;
    } else if (errno != ENOENT) {
        return eng_fail_errno(e, errno, "stat", e->job->dst, NULL);
    } else if (mkdir(e->job->dst, 0700) != 0) {
        return eng_fail_errno(e, errno, "create directory", e->job->dst, NULL);
    } else {
        e->dst_created = true;
    }
    e->dstfd = open(e->job->dst, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (e->dstfd < 0)
        return eng_fail_errno(e, errno, "open", e->job->dst, NULL);
    return 0;
}

/* Removes exactly what this move created under dst, newest first; dst itself
 * is removed if the move made it, or given back its old mode and times. */
static void eng_rollback(struct eng *e)
{
    if (e->dstfd >= 0) {
        /* Directories may already carry read-only modes: open them up first. */
        for (size_t i = 0; i < e->created; i++)
            if (S_ISDIR(e->ents[i].st.st_mode))
                (void)fchmodat(e->dstfd, e->ents[i].rel, 0700, 0);
        (void)fchmod(e->dstfd, 0700);
        for (size_t i = e->created; i-- > 0;) {
            const struct entry *en = &e->ents[i];
            if (unlinkat(e->dstfd, en->rel, S_ISDIR(en->st.st_mode) ? AT_REMOVEDIR : 0) != 0 &&
                errno != ENOENT)
                LOG(LOG_WARN, "rollback could not remove an entry", LF_S("root", e->job->dst),
                    LF_S("path", en->rel), LF_S("reason", strerror(errno)));
        }
        if (e->dst_preexisted) {
            struct timespec times[2] = {e->dst_orig.st_atim, e->dst_orig.st_mtim};
            (void)fchmod(e->dstfd, e->dst_orig.st_mode & 07777);
            if (e->is_root)
                (void)fchown(e->dstfd, e->dst_orig.st_uid, e->dst_orig.st_gid);
            (void)futimens(e->dstfd, times);
        }
        close(e->dstfd);
        e->dstfd = -1;
    }
    if (e->dst_created && rmdir(e->job->dst) != 0)
        LOG(LOG_WARN, "rollback could not remove the destination", LF_S("path", e->job->dst),
            LF_S("reason", strerror(errno)));
    remove_parents(e);
}

/* --- the whole move ------------------------------------------------------- */

static int eng_copy_move(struct eng *e);

/* Same device: one rename(2). EXDEV still happens between two mounts of one
 * filesystem (bind mounts share st_dev); then the move copies instead, still
 * inside its calculating phase, keeping the parents made for it. */
static int eng_rename(struct eng *e)
{
    if (make_parents(e) != 0)
        return -1;
    if (eng_check_stop(e) != 0) {
        remove_parents(e);
        return -1;
    }
    if (rename(e->job->src, e->job->dst) != 0) {
        int err = errno;
        if (err == EXDEV) {
            LOG(LOG_INFO, "rename crossed a mount of the same filesystem; copying instead",
                LF_S("old", e->job->src), LF_S("new", e->job->dst));
            if (eng_copy_move(e) != 0) {
                remove_parents(e); /* also when the walk failed, before any rollback */
                return -1;
            }
            return 0;
        }
        remove_parents(e);
        return eng_fail_errno(e, err, "rename", e->job->src, NULL);
    }
    return 0;
}

static int eng_copy_move(struct eng *e)
{
    struct stat st;
    e->srcfd = open(e->job->src, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (e->srcfd < 0)
        return eng_fail_errno(e, errno, "open", e->job->src, NULL);
    if (fstat(e->srcfd, &st) != 0)
        return eng_fail_errno(e, errno, "stat", e->job->src, NULL);
    e->src_dev = st.st_dev;
    if (eng_walk(e) != 0)
        return -1;
    e->res->files_copied = 0;
    e->buf = xmalloc(RW_BUF);
    if (make_parents(e) != 0 || open_dst(e) != 0 || eng_copy(e) != 0 || eng_verify(e) != 0) {
        eng_rollback(e);
        return -1;
    }
    e->res->bytes_copied = e->prog.bytes_done;
    e->res->files_copied = e->prog.files_done;
    return eng_clean(e);
}

int engine_run(const struct engine_job *job, struct engine_result *res)
{
    struct eng e;
    int rc;
    memset(res, 0, sizeof *res);
    memset(&e, 0, sizeof e);
    e.job = job;
    e.res = res;
    e.srcfd = e.dstfd = -1;
    e.use_cfr = e.use_sendfile = true;
    e.is_root = geteuid() == 0;

    eng_phase(&e, PHASE_CALCULATING, 0);
    if (job->rename)
        rc = eng_rename(&e);
    else
        rc = eng_copy_move(&e);

    if (e.srcfd >= 0)
        close(e.srcfd);
    if (e.dstfd >= 0)
        close(e.dstfd);
    for (size_t i = 0; i < e.n; i++) {
        free(e.ents[i].rel);
        free(e.ents[i].link);
    }
    free(e.ents);
    free(e.hl.slots);
    for (size_t i = 0; i < e.n_made; i++)
        free(e.made_parents[i]);
    free(e.made_parents);
    free(e.buf);
    free(e.buf2);
    return rc;
}
