/* engine_verify.c: the verifying pass, and the source checked against the
 * record before the first removal. Calls engine_clean.c (what can be
 * removed) and the engine's floor. */
#include "engine_internal.h"

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

const char *eng_meta_diff(bool can_chown, const struct stat *s, const struct stat *d, bool *follows)
{
    mode_t mask = S_IFMT | 07777;
    *follows = true; /* these follow the source: it changed after it was copied */
    if ((s->st_mode & S_IFMT) != (d->st_mode & S_IFMT))
        return "type";
    if (!S_ISDIR(s->st_mode) && s->st_size != d->st_size)
        return "size";
    if (!eng_same_mtime(s, d))
        return "modification time";
    *follows = false;
    if (!can_chown)
        mask &= (mode_t)~S_ISGID; /* may be dropped by the kernel for us */
    if (!S_ISLNK(s->st_mode) && ((s->st_mode ^ d->st_mode) & mask))
        return "mode";
    if (can_chown && (s->st_uid != d->st_uid || s->st_gid != d->st_gid))
        return "owner";
    if ((S_ISCHR(s->st_mode) || S_ISBLK(s->st_mode)) && s->st_rdev != d->st_rdev)
        return "device number";
    return NULL;
}

/* Compares one entry of the copy with its source, field by field. */
int eng_verify_stat(struct eng *e, struct tree_walk *w, const char *name, const struct stat *s,
                    const struct stat *d)
{
    bool follows;
    const char *what = eng_meta_diff(e->can_chown, s, d, &follows);
    if (what && dst_changed(e, d))
        return verify_fail_dst_changed(e, w, name);
    if (what && follows)
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
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

/* The copy's content against the hash of what was copied: every file a
 * copy pass made, or only those a commit's final pass copied (synced). */
static int verify_content(struct eng *e, struct tree_walk *w, const char *name,
                          const struct hl_slot *synced)
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
    if (synced ? synced->hash != h : e->hash_pos >= e->n_hashes || e->hashes[e->hash_pos] != h) {
        char rel[MOVE_ERROR_MAX / 2];
        tree_walk_relpath(w, name, rel, sizeof rel);
        return eng_fail(e, CODE_IO_ERROR, "verification failed: content differs for %s/%s",
                        e->job->dst, rel);
    }
    if (!synced)
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
    if (eng_verify_stat(e, w, name, s, &d) != 0)
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
            hs = eng_hl_get(&e->hl, s->st_dev, s->st_ino, &fresh);
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
            const struct hl_slot *synced =
                e->committing ? eng_hl_find(&e->synced, s->st_dev, s->st_ino) : NULL;
            if (e->cc.checksum && (!e->committing || synced) &&
                verify_content(e, w, name, synced) != 0)
                return -1;
        }
    }
    e->entries++;
    e->prog.count.phase_done = e->entries;
    eng_report(e, w, name);
    return 0;
}

int eng_verify(struct eng *e)
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
    return eng_verify_stat(e, &at_root, NULL, &s, &d);
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
 * pass is caught by the check before each removal (eng_clean_check). */
int eng_check_source(struct eng *e)
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
