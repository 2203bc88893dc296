/* move_engine.c: the file-tree move: rename, or calculate, check space, copy,
 * make durable, verify, remove the source; roll back on any failure. The
 * passes live in engine_*.c; this file holds the run and its top paths. */
#include "engine_internal.h"

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

int eng_fail(struct eng *e, enum move_code code, const char *fmt, ...)
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

int eng_stop_code(struct eng *e)
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

/* An error of reaching a source entry by its path that means the path
 * changed (a component gone, or no longer a directory: replaced by a file
 * or a symlink) as ESTALE, so that it is answered source_changed. */
int eng_changed_errno(int err)
{
    return err == ENOENT || err == ENOTDIR || err == ELOOP ? ESTALE : err;
}

/* Fails with the code of err, naming what and where: "copy /a/b: No space". */
int eng_fail_at(struct eng *e, int err, const char *what, const char *root, const char *rel)
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
int eng_fail_w(struct eng *e, struct tree_walk *w, int err, const char *what, const char *root,
               const char *name)
{
    char rel[MOVE_ERROR_MAX / 2];
    tree_walk_relpath(w, name, rel, sizeof rel);
    return eng_fail_at(e, err, what, root, rel);
}

/* The copy was changed by someone else: the destination's fault, not the
 * source's (a game server that keeps writing is told to stop; this is not
 * that). */
int eng_fail_dst_changed(struct eng *e, const char *rel)
{
    return eng_fail(e, CODE_IO_ERROR,
                    "the destination changed while it was being moved: %s%s%s was changed or "
                    "removed by something else; nothing was removed from %s",
                    e->job->dst, rel && *rel ? "/" : "", rel ? rel : "", e->job->src);
}

/* A failure of the walk itself (reading a directory, a swapped entry); the
 * mirror of a mirrored walk is the destination. */
int eng_fail_walk(struct eng *e, struct tree_walk *w)
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
int eng_walk_source(struct eng *e, const struct tree_walk_ops *ops, bool mirrored)
{
    struct tree_walk w = {.ops = ops,
                          .arg = e,
                          .mirrored = mirrored,
                          .need_stat = true,
                          .strict_dev = true,
                          .live = e->live};
    int rc = tree_walk_run(&w, e->srcfd, mirrored ? e->dstfd : -1);
    if (rc != 0 && e->res->code == CODE_NONE)
        eng_fail_walk(e, &w);
    tree_walk_free(&w);
    return rc;
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
    int64_t m = eng_ts_ns(&st->st_mtim), c = eng_ts_ns(&st->st_ctim);
    for (size_t i = 0; i < sizeof grains / sizeof grains[0]; i++)
        if (m % grains[i] == 0 && c % grains[i] == 0)
            return grains[i];
    return 1;
}

void eng_note_grain(struct eng *e, const struct stat *st)
{
    int64_t g = stamp_grain(st);
    if (g < e->grain)
        e->grain = g;
}

static void eng_report_now(struct eng *e, const char *current, bool phase_start)
{
    e->prog.current = current;
    e->job->report(e->job->arg, &e->prog, phase_start);
    e->last_report = util_mono_ms();
}

/* Reports at most every REPORT_GAP_MS; the path is only built when sent. */
void eng_report(struct eng *e, struct tree_walk *w, const char *name)
{
    char rel[MOVE_CURRENT_MAX];
    if (util_mono_ms() - e->last_report < REPORT_GAP_MS)
        return;
    if (w)
        tree_walk_relpath(w, name, rel, sizeof rel);
    eng_report_now(e, w ? rel : NULL, false);
}

int eng_phase(struct eng *e, enum move_phase phase, uint64_t phase_total)
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

void eng_on_bytes(void *arg, uint64_t delta)
{
    struct eng *e = arg;
    e->prog.count.io_bytes += delta;
    /* bytesCopied counts the tree, not the work: a commit's final pass brings
     * files of a tree counted whole at ready up to date, and its bytes would
     * push bytesCopied past bytesTotal (which it then never leaves, as the
     * counters never go down). The pass sets both to the final tree's at its
     * end; io_bytes shows the loop that it moves meanwhile. */
    if (e->prog.phase != PHASE_SYNCING)
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
int eng_open_parent_of(int root, const char *rel, const char **base)
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
int eng_check_removable(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                        uint64_t attrs)
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
int eng_check_root(struct eng *e)
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
int eng_open_src_parent(struct eng *e)
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
 * beneath its root, one component at a time, never through a symlink. Each
 * directory made is durable before the next is made in it, and so before
 * anything is renamed or copied into it: its parent is fsynced right after
 * the mkdir, top-down. A directory's entry is durable only once that
 * directory is synced; a rename into a parent whose own entry could still
 * vanish with a power cut would take the server with it, oldPath's entry
 * gone with the rename's and newPath's parent never on the disk
 * (docs/design.md, "Power cuts"). */
int eng_open_dst_parent(struct eng *e, bool create)
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
            int rc;
            e->made_parents = xrealloc(e->made_parents, (e->n_made + 1) * sizeof(char *));
            e->made_parents[e->n_made++] = xstrdup(made);
            if ((rc = util_fsync_dir_at(fd, ".")) != 0) {
                close(fd);
                return eng_fail_at(e, -rc, "sync the new directory", made, NULL);
            }
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
            e->renamed = true;
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
    e->renamed = true;
    return 0;
}

/* Before the source may go, it is checked against the record of what was
 * copied and for what could not be removed, before anything is. A commit
 * whose source goes by a deferred reclaim skips that walk (the server is
 * stopped and waits): its final pass checked each entry's removability a
 * moment ago, and the reclaim compares every entry with the record right
 * after the rename, before anything is deleted. */
int eng_before_removal(struct eng *e)
{
    if (e->committing && e->job->reclaim == RECLAIM_DEFERRED && e->job->move_id) {
        e->guarded = true;
        return 0;
    }
    return eng_check_source(e);
}

/* From here on no stop is taken: a request that came first wins instead.
 * The cleaning phase is recorded (journal) before anything is removed. */
int eng_lock_for_cleaning(struct eng *e)
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

/* Opens the parents and the source directory; 0, or -1 rolled back. */
static int eng_open_tops(struct eng *e)
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
    eng_note_grain(e, &e->src_st);
    return 0;
}

/* A preparing copy: calculated and copied from the live source, its record
 * written; the copy stays, durable, for the commit (ENGINE_COMMIT). */
static int eng_prepare(struct eng *e)
{
    e->live = true;
    if (eng_open_tops(e) != 0)
        return -1;
    if (open_dst(e) != 0 || eng_calculate(e) != 0 || eng_check_space(e) != 0 || eng_copy(e) != 0) {
        eng_release_space(e);
        if (e->iw)
            ident_writer_abort(e->iw);
        e->iw = NULL;
        eng_rollback(e);
        return -1;
    }
    eng_release_space(e);
    copy_caps_save(&e->cc.caps);
    e->res->bytes_copied = e->prog.count.bytes_copied;
    e->res->files_copied = e->prog.count.files_copied;
    return 0;
}

static int eng_copy_move(struct eng *e)
{
    if (eng_open_tops(e) != 0)
        return -1;
    if (open_dst(e) != 0 || eng_calculate(e) != 0 || eng_check_space(e) != 0 || eng_copy(e) != 0 ||
        eng_verify(e) != 0 || eng_before_removal(e) != 0 || eng_lock_for_cleaning(e) != 0) {
        eng_release_space(e);
        eng_rollback(e);
        return -1;
    }
    eng_release_space(e);
    if (eng_end_copy(e) != 0) {
        eng_rollback(e);
        return -1;
    }
    return 0;
}

/* The copy is verified and durable and the journal says cleaning: what was
 * learned is kept, the counts go to the result, and the source goes. From
 * here a failure to remove the source keeps the copy and the move has
 * succeeded; only a source found changed by the reclaim's check (put back
 * whole) returns -1 (source_changed): the caller undoes the copy, or a
 * commit keeps it and is ready again. */
int eng_end_copy(struct eng *e)
{
    copy_caps_save(&e->cc.caps);
    e->res->bytes_copied = e->prog.count.bytes_copied;
    e->res->files_copied = e->prog.count.files_copied;
    return eng_remove_source(e);
}

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

/* A rename made durable by the directories it changed: both parents. The
 * directories made for newPath were made durable before the rename
 * (eng_open_dst_parent), so newPath's parent cannot vanish under it. 0, or
 * -1 when one could not be synced (then syncfs). */
static int eng_sync_rename_dirs(struct eng *e)
{
    if (util_fsync_dir_at(e->src_pfd, ".") != 0 || util_fsync_dir_at(e->dst_pfd, ".") != 0)
        return -1;
    return 0;
}

/* Before the outcome is recorded (the caller journals it when this returns),
 * whatever the move changed on either filesystem is made durable: a source
 * removed by the cleaning, a partial copy removed by a rollback, a rename.
 * Without it a power cut after the answer can bring back a source the answer
 * said was moved, or undo a rename it said was done (tests/crash/run). A
 * reclaim's rename into its directory (rcl_sync_dirs) and a rename move
 * (eng_sync_rename_dirs) are made durable by fsync of the directories they
 * changed: then the filesystem is not synced as a whole. A failure is
 * logged; the outcome stands (it is what the disk holds now). */
static void eng_make_durable(struct eng *e)
{
    struct stat a, b;
    int rc;
    bool src_sync;
    /* A rename, like the reclaim's, by its directories: a syncfs would
     * write back everything dirty on that filesystem first. */
    if (e->renamed && e->src_pfd >= 0 && e->dst_pfd >= 0 && eng_sync_rename_dirs(e) == 0)
        return;
    src_sync = e->src_pfd >= 0 && !e->src_synced;
    if (src_sync && (rc = sync_fs_of(e->src_pfd, e->job->src)) != 0)
        LOG(LOG_WARN, "could not sync the source's filesystem", LF_S("path", e->job->src),
            LF_S("reason", strerror(-rc)));
    if (e->dst_pfd >= 0 &&
        (!src_sync || fstat(e->src_pfd, &a) != 0 || fstat(e->dst_pfd, &b) != 0 ||
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
    e.srcfd = e.dstfd = e.src_pfd = e.dst_pfd = e.rcl_fd = -1;
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
    case ENGINE_PREPARE:
        (void)eng_phase(&e, PHASE_CALCULATING, 0);
        rc = eng_prepare(&e);
        break;
    case ENGINE_COMMIT:
        rc = job->rename ? eng_rename(&e) : eng_commit(&e);
        break;
    case ENGINE_DISCARD:
        rc = eng_discard(&e);
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
    if (e.rcl_fd >= 0)
        close(e.rcl_fd);
    eng_hl_free(&e.hl);
    eng_hl_free(&e.synced);
    if (e.ids)
        ident_set_free(e.ids);
    src_record_free(&e.rec);
    for (size_t i = 0; i < e.n_made; i++)
        free(e.made_parents[i]);
    free(e.made_parents);
    free(e.hashes);
    for (size_t i = 0; i < e.n_suspects; i++)
        free(e.suspects[i].rel);
    free(e.suspects);
    free(e.cc.buf);
    free(e.relbuf);
    free(e.lvl);
    for (size_t i = 0; i < e.n_synced_rel; i++)
        free(e.synced_rel[i]);
    free(e.synced_rel);
    return rc;
}
