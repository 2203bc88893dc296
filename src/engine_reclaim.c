/* engine_reclaim.c: removing the source once the copy is verified and
 * durable: renamed away into its reclaim directory and checked against the
 * record of what was copied (deferred reclaim), or deleted here (inline);
 * and the end of every copy that removes its source (eng_end_copy). Calls
 * engine_clean.c and the engine's floor. */
#include "engine_internal.h"

#include <dirent.h>

/* An entry renamed by the reclaim: rename(2) stamps the renamed inode's
 * ctime (and, where a directory's ".." is rewritten, may stamp its mtime),
 * so its identity as copied is expected to show the stamps seen right after
 * our own rename, and only when it still showed the copied ones right
 * before it. Nothing else is excused, and only for these inodes. */
struct rcl_renamed {
    uint64_t ino;
    size_t seq; /* rename order: a second name of one inode saw the first's stamp */
    int64_t ctime_before, ctime_after, mtime_before, mtime_after;
};

struct rcl {
    struct eng *e;
    char name[NAME_MAX + 1]; /* one of the moveId's reclaim names (paths_reclaim_name) */
    bool in_mount;
    int holder; /* the directory that holds the reclaim directory (not owned) */
    int rfd;    /* the reclaim directory */
    bool made;  /* we made it (mount point case) */
    struct rcl_renamed *ren;
    size_t n_ren;
    char **names; /* mount point case: the entries moved, in order */
    size_t n_names;
    size_t pos; /* the record the check walk meets next */
    char changed[MOVE_ERROR_MAX / 2];
};

bool eng_is_reclaim_name(const struct eng *e, const char *name)
{
    return e->job->move_id && paths_is_reclaim_name(name, e->job->move_id);
}

static void rcl_free(struct rcl *r)
{
    if (r->rfd >= 0)
        close(r->rfd);
    for (size_t i = 0; i < r->n_names; i++)
        free(r->names[i]);
    free(r->names);
    free(r->ren);
}

static void rcl_note(struct rcl *r, const struct stat *pre, const struct stat *post)
{
    struct rcl_renamed *x;
    r->ren = xrealloc(r->ren, (r->n_ren + 1) * sizeof *r->ren);
    x = &r->ren[r->n_ren];
    x->ino = (uint64_t)pre->st_ino;
    x->seq = r->n_ren++;
    x->ctime_before = eng_ts_ns(&pre->st_ctim);
    x->ctime_after = eng_ts_ns(&post->st_ctim);
    x->mtime_before = eng_ts_ns(&pre->st_mtim);
    x->mtime_after = eng_ts_ns(&post->st_mtim);
}

static int ren_cmp(const void *a, const void *b)
{
    const struct rcl_renamed *x = a, *y = b;
    if (x->ino != y->ino)
        return x->ino < y->ino ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The identity an entry must show now: as copied, with our renames' own
 * stamps where it was one of the renamed inodes (any of its names). */
static void rcl_expect(const struct rcl *r, const struct src_ident *was, struct src_ident *out)
{
    size_t lo = 0, hi = r->n_ren;
    *out = *was;
    while (lo < hi) { /* the first of this inode's renames */
        size_t mid = (lo + hi) / 2;
        if (r->ren[mid].ino < was->ino)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < r->n_ren && r->ren[lo].ino == was->ino; lo++) {
        const struct rcl_renamed *x = &r->ren[lo];
        if (out->ctime_ns != x->ctime_before)
            break; /* changed by someone else before our rename */
        out->ctime_ns = x->ctime_after;
        if (S_ISDIR(was->mode) && out->mtime_ns == x->mtime_before)
            out->mtime_ns = x->mtime_after;
    }
}

/* Fails the move: the source is not what was copied (why names the entry). */
static int rcl_changed(struct rcl *r, const char *rel, const char *why)
{
    struct eng *e = r->e;
    return eng_fail(e, CODE_SOURCE_CHANGED,
                    "%s%s%s changed after it was copied: %s; it was put back at %s and the copy "
                    "was removed (stop the game server first)",
                    e->job->src, rel && *rel ? "/" : "", rel ? rel : "", why, e->job->src);
}

/* The reclaim directory's path for the journal and the result. */
static void rcl_describe(struct rcl *r, const struct stat *st)
{
    struct eng *e = r->e;
    struct engine_reclaim *rc = &e->res->reclaimed;
    const char *src = e->job->src, *slash = strrchr(src, '/');
    if (r->in_mount)
        util_fmt(rc->dir, sizeof rc->dir, "%s/%s", src, r->name);
    else
        util_fmt(rc->dir, sizeof rc->dir, "%.*s/%s", slash ? (int)(slash - src) : 0, src, r->name);
    rc->in_mount = r->in_mount;
    rc->dev = st->st_dev;
    rc->ino = st->st_ino;
    rc->entries = e->prog.count.files_copied;
    rc->bytes = e->prog.count.bytes_copied;
    rc->undone = false;
}

static int rcl_journal(struct rcl *r)
{
    struct eng *e = r->e;
    if (!e->job->on_reclaim || e->job->on_reclaim(e->job->arg, &e->res->reclaimed) == 0)
        return 0;
    LOG(LOG_WARN, "cannot record the reclaim directory in the journal; removing the source inline",
        LF_S("path", e->res->reclaimed.dir));
    return -1;
}

/* oldPath is a directory of its own: one rename beside it. 0, 1 (nothing
 * renamed: remove inline instead) or -1 (renamed, then found to be another
 * directory: put it back). */
static int rcl_rename_whole(struct rcl *r)
{
    struct eng *e = r->e;
    struct stat pre, post;
    unsigned n;
    r->holder = e->src_pfd;
    if (fstat(e->srcfd, &pre) != 0)
        return 1;
    /* A free name, before the journal names it: an earlier move with the
     * same moveId (its id since forgotten) may still be reclaiming beside
     * oldPath under the first one. Only the agent makes such names (no
     * request path may hold one) and no two moves with one moveId run at
     * once, so a name free now is still free at the rename. */
    for (n = 1; n <= PATHS_RECLAIM_NAMES_MAX; n++) {
        paths_reclaim_name(r->name, sizeof r->name, e->job->move_id, n);
        if (fstatat(e->src_pfd, r->name, &post, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT)
            break;
    }
    if (n > PATHS_RECLAIM_NAMES_MAX) {
        LOG(LOG_WARN, "every reclaim directory name is taken beside the source; removing it inline",
            LF_S("path", e->job->src));
        return 1;
    }
    rcl_describe(r, &pre);
    if (rcl_journal(r) != 0)
        return 1;
    if (renameat2(e->src_pfd, e->src_base, e->src_pfd, r->name, RENAME_NOREPLACE) != 0) {
        LOG(LOG_WARN, "cannot rename the source into its reclaim directory; removing it inline",
            LF_S("path", e->job->src), LF_S("reason", strerror(errno)));
        return 1;
    }
    r->rfd = openat(e->src_pfd, r->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (r->rfd < 0 || fstat(r->rfd, &post) != 0 || post.st_ino != pre.st_ino ||
        post.st_dev != pre.st_dev)
        return rcl_changed(r, NULL, "another entry had taken its place");
    rcl_note(r, &pre, &post);
    return 0;
}

/* The names in dirfd but `skip`, sorted (NULL on failure, errno set). */
static char **rcl_list(int dirfd, const char *skip, size_t *n)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    char **v = NULL;
    *n = 0;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            strcmp(de->d_name, skip) == 0)
            continue;
        v = xrealloc(v, (*n + 1) * sizeof *v);
        v[(*n)++] = xstrdup(de->d_name);
    }
    closedir(d);
    return v ? v : xcalloc(1, sizeof *v);
}

static void rcl_free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* The reclaim directory inside a mount point: ours, or one the journal
 * named before a crash (recovery), or an empty one left by a crash before
 * the journal named it; a name held by anything else (an earlier reclaim of
 * a move with the same moveId) is passed over for the next one
 * (paths_reclaim_name). Opens it as r->rfd; false when none can be had.
 * One made here is durable (oldPath fsynced) before anything is renamed
 * into it: entries renamed into a directory whose own entry a power cut
 * could still undo would be lost with it (docs/design.md, "Power cuts"). */
static bool rcl_make_in_mount(struct rcl *r, bool *journaled)
{
    struct eng *e = r->e;
    const struct engine_reclaim *was = &e->job->resume_reclaim;
    struct stat st;
    unsigned n;
    int rc;
    *journaled = false;
    for (n = 1; n <= PATHS_RECLAIM_NAMES_MAX; n++) {
        paths_reclaim_name(r->name, sizeof r->name, e->job->move_id, n);
        if (mkdirat(e->srcfd, r->name, 0700) == 0)
            break;
        if (errno != EEXIST)
            return false;
        if (fstatat(e->srcfd, r->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode) &&
            was->dir[0] && st.st_dev == was->dev && st.st_ino == was->ino) {
            *journaled = true;
            break;
        }
        if (unlinkat(e->srcfd, r->name, AT_REMOVEDIR) == 0 && mkdirat(e->srcfd, r->name, 0700) == 0)
            break;
    }
    if (n > PATHS_RECLAIM_NAMES_MAX)
        return false;
    r->made = true;
    /* Also one found here after a restart: seen is not yet durable when
     * only the agent, not the power, had stopped. */
    if ((rc = util_fsync_dir_at(e->srcfd, ".")) != 0) {
        errno = -rc;
        return false;
    }
    r->rfd = openat(e->srcfd, r->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return r->rfd >= 0;
}

/* oldPath is a mount point (it stays): its entries are renamed into the
 * reclaim directory made inside it. Same returns as rcl_rename_whole. */
static int rcl_rename_entries(struct rcl *r)
{
    struct eng *e = r->e;
    struct stat st, pre, post;
    bool journaled;
    char **names;
    size_t n;
    r->holder = e->srcfd;
    if (!rcl_make_in_mount(r, &journaled) || fstat(r->rfd, &st) != 0) {
        LOG(LOG_WARN, "cannot make the reclaim directory; removing the source inline",
            LF_S("path", e->job->src), LF_S("reason", strerror(errno)));
        if (r->made && !journaled)
            (void)unlinkat(e->srcfd, r->name, AT_REMOVEDIR);
        return 1;
    }
    rcl_describe(r, &st);
    if (!journaled && rcl_journal(r) != 0) {
        (void)unlinkat(e->srcfd, r->name, AT_REMOVEDIR);
        return 1;
    }
    names = rcl_list(e->srcfd, r->name, &n);
    if (!names)
        return rcl_changed(r, NULL, "it could not be listed");
    for (size_t i = 0; i < n; i++) {
        if (fstatat(e->srcfd, names[i], &pre, AT_SYMLINK_NOFOLLOW) != 0 ||
            renameat2(e->srcfd, names[i], r->rfd, names[i], RENAME_NOREPLACE) != 0) {
            int err = errno;
            char why[160];
            util_fmt(r->changed, sizeof r->changed, "%s", names[i]);
            rcl_free_list(names, n);
            if (err != ENOENT && r->n_names == 0) {
                LOG(LOG_WARN,
                    "cannot rename into the reclaim directory; removing the source inline",
                    LF_S("path", e->job->src), LF_S("reason", strerror(err)));
                (void)unlinkat(e->srcfd, r->name, AT_REMOVEDIR);
                return 1;
            }
            util_fmt(why, sizeof why, "%s", err == ENOENT ? "it was removed" : strerror(err));
            return rcl_changed(r, r->changed, why);
        }
        r->names = xrealloc(r->names, (r->n_names + 1) * sizeof *r->names);
        r->names[r->n_names++] = xstrdup(names[i]);
        if (fstatat(r->rfd, names[i], &post, AT_SYMLINK_NOFOLLOW) != 0 ||
            post.st_ino != pre.st_ino) {
            rcl_free_list(names, n);
            return rcl_changed(r, NULL, "an entry was replaced while it was renamed");
        }
        rcl_note(r, &pre, &post);
    }
    rcl_free_list(names, n);
    /* Nothing new may stay behind at oldPath: it was not copied. */
    names = rcl_list(e->srcfd, r->name, &n);
    if (!names || n > 0) {
        char why[NAME_MAX + 64];
        util_fmt(why, sizeof why, "%s appeared in it after the copy",
                 names ? names[0] : "an entry");
        if (names)
            rcl_free_list(names, n);
        return rcl_changed(r, NULL, why);
    }
    rcl_free_list(names, n);
    return 0;
}

/* --- the one check walk over what was renamed ---------------------------------------- */

static int rcl_check_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct rcl *r = w->arg;
    struct eng *e = r->e;
    struct src_ident want;
    char why[160];
    if (r->pos >= e->rec.n) {
        tree_walk_relpath(w, name, r->changed, sizeof r->changed);
        return rcl_changed(r, r->changed, "it appeared after the copy");
    }
    rcl_expect(r, &e->rec.v[r->pos++], &want);
    if (src_ident_differs(&want, st, false, why, sizeof why)) {
        tree_walk_relpath(w, name, r->changed, sizeof r->changed);
        return rcl_changed(r, r->changed, why);
    }
    e->prog.count.phase_done = r->pos;
    eng_report(e, w, name);
    return 0;
}

/* Every entry renamed away must be what was copied: same walk order (the
 * walk sorts names, so a freshly made directory lists them as the copy's
 * walk did), inode, type, size, mode, link count, mtime and ctime. */
static int rcl_check(struct rcl *r)
{
    static const struct tree_walk_ops ops = {rcl_check_entry, rcl_check_entry, NULL, NULL};
    struct eng *e = r->e;
    struct tree_walk w = {.ops = &ops, .arg = r, .need_stat = true, .strict_dev = true};
    struct src_ident was, want;
    struct stat st;
    char why[160];
    int rc;
    qsort(r->ren, r->n_ren, sizeof *r->ren, ren_cmp);
    if (!r->in_mount) {
        src_ident_set(&was, &e->src_st);
        rcl_expect(r, &was, &want);
        if (fstat(r->rfd, &st) != 0 || src_ident_differs(&want, &st, false, why, sizeof why))
            return rcl_changed(r, NULL, why);
    }
    r->pos = 0;
    rc = tree_walk_run(&w, r->rfd, -1);
    if (rc != 0 && e->res->code == CODE_NONE) {
        char what[MOVE_ERROR_MAX / 2];
        util_fmt(what, sizeof what, "it could not be examined (%s at %s)",
                 strerror(w.err ? w.err : EIO), w.err_where);
        rcl_changed(r, NULL, what);
    }
    tree_walk_free(&w);
    if (rc != 0)
        return -1;
    if (r->pos != e->rec.n)
        return rcl_changed(r, NULL, "entries were removed from it");
    return 0;
}

/* All or nothing: every renamed entry goes back where it was. False when
 * one cannot (the move then keeps the source where it is, see eng_reclaim). */
static bool rcl_put_back(struct rcl *r)
{
    struct eng *e = r->e;
    bool ok = true;
    if (!r->in_mount) {
        if (renameat2(e->src_pfd, r->name, e->src_pfd, e->src_base, RENAME_NOREPLACE) != 0) {
            LOG(LOG_ERROR, "cannot rename the source back from its reclaim directory",
                LF_S("path", e->res->reclaimed.dir), LF_S("reason", strerror(errno)));
            return false;
        }
        return true;
    }
    for (size_t i = r->n_names; i-- > 0;) {
        if (renameat2(r->rfd, r->names[i], e->srcfd, r->names[i], RENAME_NOREPLACE) != 0) {
            LOG(LOG_ERROR, "cannot rename an entry back from the reclaim directory",
                LF_S("path", e->res->reclaimed.dir), LF_S("entry", r->names[i]),
                LF_S("reason", strerror(errno)));
            ok = false;
        }
    }
    if (ok && unlinkat(e->srcfd, r->name, AT_REMOVEDIR) != 0) {
        LOG(LOG_ERROR, "cannot remove the reclaim directory after putting the source back",
            LF_S("path", e->res->reclaimed.dir), LF_S("reason", strerror(errno)));
        ok = false;
    }
    return ok;
}

/* The rename made durable by the directories it changed rather than by a
 * syncfs of the source's filesystem, which would also write back whatever
 * else is dirty there (a game host's other servers) before the answer:
 * seconds on a busy disk, where an fsync of a directory commits just the
 * journal. 0 or -1 (then eng_make_durable falls back to syncfs). */
static int rcl_sync_dirs(struct rcl *r)
{
    if (util_fsync_dir_at(r->holder, ".") != 0)
        return -1;
    /* Entries moved into a reclaim directory of our own: its names too. */
    return r->in_mount && fsync(r->rfd) != 0 ? -1 : 0;
}

/* The deferred reclaim. Called in phase cleaning (the stop word locked, the
 * journal saying cleaning), with the source open. The source leaves oldPath
 * by rename(2) into its reclaim directory, named in the journal first; then,
 * when the record of what was copied is whole (e->guarded), one walk
 * compares every renamed entry with it. Returns 0: the source is in
 * e->res->reclaimed (e->res->reclaim), the move has succeeded; 1: nothing
 * was renamed (the directory could not be made or journaled), the caller
 * removes the source inline; -1: the source was not what was copied and was
 * put back whole (res: source_changed), the caller rolls back the copy. A
 * source that cannot be put back stays where it is and the move succeeds
 * with a warning naming it (nothing of it is deleted). */
int eng_reclaim(struct eng *e)
{
    struct rcl r;
    struct engine_result *res = e->res;
    int rc;
    memset(&r, 0, sizeof r);
    r.e = e;
    r.rfd = -1;
    r.in_mount = guard_is_mount_point(e->src_pfd, e->src_base);
    rc = r.in_mount ? rcl_rename_entries(&r) : rcl_rename_whole(&r);
    if (rc == 0 && e->guarded)
        rc = rcl_check(&r);
    if (rc < 0) {
        if (rcl_put_back(&r)) {
            res->reclaimed.undone = true;
            if (e->job->on_reclaim && e->job->on_reclaim(e->job->arg, &res->reclaimed) != 0)
                LOG(LOG_WARN, "cannot record in the journal that the source was put back",
                    LF_S("path", e->job->src));
            rcl_free(&r);
            return -1;
        }
        /* Half put back: the copy is whole and durable, so the server lives
         * there; nothing of the source is deleted. */
        res->warning_code = res->code;
        util_fmt(res->warning, sizeof res->warning,
                 "%s; but it could not all be put back: the move is complete, %s holds the whole "
                 "verified copy, and the source is kept in %s and %s (nothing of it is deleted)",
                 res->error, e->job->dst, e->job->src, res->reclaimed.dir);
        res->code = CODE_NONE;
        res->error[0] = '\0';
        rcl_free(&r);
        return 0;
    }
    if (rc == 0) {
        res->reclaim = true;
        e->src_synced = rcl_sync_dirs(&r) == 0;
        LOG(LOG_DEBUG, "source renamed into its reclaim directory", LF_S("old", e->job->src),
            LF_S("reclaim", res->reclaimed.dir), LF_U("entries", res->reclaimed.entries));
    }
    rcl_free(&r);
    return rc;
}

/* The one step that removes the source, for every flow, once the copy is
 * verified and durable and the journal says cleaning (eng_lock_for_cleaning):
 * renamed away for a background deletion (deferred), or deleted now
 * (inline, or when no reclaim directory can be made). 0: the move succeeded
 * (perhaps with a warning); -1: the source changed and was put back
 * (res: source_changed), the caller rolls back the copy. */
int eng_remove_source(struct eng *e)
{
    int rc = 1;
    if (e->job->reclaim == RECLAIM_DEFERRED && e->job->move_id)
        rc = eng_reclaim(e);
    if (rc < 0)
        return -1;
    if (rc > 0 && eng_clean(e) != 0)
        eng_clean_stopped(e);
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

/* Recovery: the reclaim directory the journal named, looked at beneath its
 * holder (oldPath's parent, or oldPath when it is a mount point; opened
 * already). 1: it is there with the recorded identity (*rfd open on it);
 * 0: absent (or none named); -1: something else is there. */
int eng_reclaim_resume(struct eng *e, int *rfd)
{
    const struct engine_reclaim *was = &e->job->resume_reclaim;
    const char *base = strrchr(was->dir, '/');
    int holder = was->in_mount ? e->srcfd : e->src_pfd;
    struct stat st;
    *rfd = -1;
    if (!was->dir[0] || !base || holder < 0)
        return 0;
    base++;
    if (fstatat(holder, base, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode) || st.st_dev != was->dev || st.st_ino != was->ino)
        return -1;
    *rfd = openat(holder, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (*rfd < 0 || fstat(*rfd, &st) != 0 || st.st_ino != was->ino) {
        if (*rfd >= 0)
            close(*rfd);
        *rfd = -1;
        return -1;
    }
    return 1;
}
