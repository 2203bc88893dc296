/* engine_clean.c: the lowest pass: whether the cleaning will be able to
 * remove the source (checked by the passes before anything is removed), the
 * lock that enters the cleaning phase, cleaning (removing the source,
 * guarded by the record) and rolling back (removing the partial copy).
 * Calls only the engine's floor. */
#include "engine_internal.h"

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
        guard_entry_removable(st, attrs, &w->lv[w->depth - 1].st, e->can_fowner, why, sizeof why);
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
    if ((err = guard_entry_removable(&st, attrs, &pst, e->can_fowner, why, sizeof why)) != 0)
        return eng_fail_unremovable(e, err, src, NULL, why);
    if ((err = guard_dir_writable(e->src_pfd, ".", pattrs, why, sizeof why)) != 0) {
        util_fmt(pwhy, sizeof pwhy, "its parent %s: %s", parent, why);
        return eng_fail_unremovable(e, err, src, NULL, pwhy);
    }
    return 0;
}

/* --- cleaning (the source) and rolling back (the destination) ---------------------- */

/* Runs on an unlink helper (or the walker) right before each removal: the
 * entry must still be what was copied (arg: its record; NULL in a finishing
 * cleaning after a restart, which has no record). Only reads the record. */
int eng_clean_check(void *ctx, int dirfd, const char *name, const void *arg)
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
    err = eng_clean_check(e, dirfd, name, was);
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

/* Removes the source, deepest first (the caller entered the cleaning phase),
 * each entry only while it is still what was copied (when e->guarded). The
 * first entry that differs or cannot be removed stops it: what is left stays. */
int eng_clean(struct eng *e)
{
    static const struct tree_walk_ops ops = {clean_entry, clean_dir_pre, clean_unlinkat_dir,
                                             clean_root_post};
    struct tree_walk w = {.ops = &ops, .arg = e, .strict_dev = true};
    struct unlink_pool pool;
    int rc;
    if (unlink_pool_init(&pool) == 0 && pool.n_threads > 0) {
        pool.check = eng_clean_check;
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
void eng_clean_stopped(struct eng *e)
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
void eng_rollback(struct eng *e)
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
            if (e->can_chown)
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
    util_rmdir_made(e->made_parents, e->n_made);
}
