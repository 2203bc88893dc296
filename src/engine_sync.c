/* engine_sync.c: a prepared move's commit (ENGINE_COMMIT): the final pass
 * over the source against the preparing copy's record (syncing) copies only
 * what is new or changed and removes from the copy what the source no longer
 * has; the move then ends as any copy does (verify, durable, clean). And the
 * discard of a prepared copy (ENGINE_DISCARD). Calls engine_verify.c,
 * engine_copy.c, engine_reclaim.c, engine_clean.c and the engine's floor. */
#include "engine_internal.h"

#include <assert.h>
#include <dirent.h>

/* --- the entries left alone, verified on a second thread ----------------------------- */

/* The final pass leaves most entries alone, and each must still be verified
 * (the copy's metadata against the source's) while the server is stopped.
 * Those fstatat calls go to one helper thread, so the two cores share the
 * pass: the walk collects each directory's plain entries it left alone (not
 * symlinks nor hard-linked files: those are checked on the walk) and hands
 * them over, with a descriptor of the copy's directory, when it leaves the
 * directory. The copy's entries in a batch are never touched by the pass. */
struct kept {
    char *name;
    struct stat st;   /* the source's, as the pass found it (= the record) */
    uint64_t dst_ino; /* the copy's, as the record holds it (IDENT_DST) */
    int64_t dst_ctime_ns;
};

struct kept_batch {
    int dfd; /* the copy's directory */
    char *dir_rel;
    struct kept *v;
    size_t n, cap;
    struct kept_batch *next;
};

/* Batches handed over and not yet verified, at most: each holds a directory
 * descriptor, and a cold, wide tree would otherwise queue one per directory
 * while the helper waits on the disk (EMFILE). The walk waits for room. */
#define KEPT_MAX_QUEUED 16

struct kept_verifier {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t more, room;
    struct kept_batch *head, *tail;
    size_t queued;
    atomic_int *stop; /* the move's stop word: a stop ends the checks */
    bool stopped;     /* it did: what was left is not verified */
    bool closing;
    bool can_chown;
    bool failed; /* the first difference, kept for the walk's thread */
    bool missing;
    const char *what;
    char where[MOVE_ERROR_MAX / 2];
};

static void kept_batch_free(struct kept_batch *b)
{
    for (size_t i = 0; i < b->n; i++)
        free(b->v[i].name);
    free(b->v);
    free(b->dir_rel);
    if (b->dfd >= 0)
        close(b->dfd);
    free(b);
}

static void kept_check(struct kept_verifier *kv, const struct kept_batch *b)
{
    for (size_t i = 0; i < b->n && !kv->failed && !kv->stopped; i++) {
        struct stat d;
        int stop = atomic_load_explicit(kv->stop, memory_order_relaxed);
        if (stop != CODE_NONE && stop != ENGINE_STOP_LOCKED) {
            pthread_mutex_lock(&kv->lock);
            kv->stopped = true;
            pthread_mutex_unlock(&kv->lock);
            break;
        }
        bool follows, missing = fstatat(b->dfd, b->v[i].name, &d, AT_SYMLINK_NOFOLLOW) != 0;
        const char *what = missing ? NULL : eng_meta_diff(kv->can_chown, &b->v[i].st, &d, &follows);
        /* The copy must still be the entry the agent made: a rewrite that put
         * size and mtime back still moved its ctime. */
        if (!missing && !what && d.st_ino != b->v[i].dst_ino)
            what = "inode";
        if (!missing && !what && eng_ts_ns(&d.st_ctim) != b->v[i].dst_ctime_ns)
            what = "change time";
        if (missing || what) {
            pthread_mutex_lock(&kv->lock);
            kv->failed = true;
            kv->missing = missing;
            kv->what = what;
            util_fmt(kv->where, sizeof kv->where, "%s%s%s", b->dir_rel, *b->dir_rel ? "/" : "",
                     b->v[i].name);
            pthread_mutex_unlock(&kv->lock);
        }
    }
}

static void *kept_main(void *arg)
{
    struct kept_verifier *kv = arg;
    for (;;) {
        struct kept_batch *b;
        pthread_mutex_lock(&kv->lock);
        while (!kv->head && !kv->closing)
            pthread_cond_wait(&kv->more, &kv->lock);
        b = kv->head;
        if (b) {
            kv->head = b->next;
            if (!kv->head)
                kv->tail = NULL;
            kv->queued--;
            pthread_cond_signal(&kv->room);
        }
        pthread_mutex_unlock(&kv->lock);
        if (!b)
            return NULL;
        kept_check(kv, b);
        kept_batch_free(b);
    }
}

/* The batch of the walk's current level (entries met at depth `depth`). */
static struct kept_batch *kept_at(struct eng *e, size_t depth)
{
    if (depth >= e->n_kept) {
        e->kept = xrealloc(e->kept, (depth + 8) * sizeof(struct kept_batch *));
        for (size_t i = e->n_kept; i < depth + 8; i++)
            e->kept[i] = NULL;
        e->n_kept = depth + 8;
    }
    if (!e->kept[depth]) {
        e->kept[depth] = xcalloc(1, sizeof **e->kept);
        e->kept[depth]->dfd = -1;
    }
    return e->kept[depth];
}

static void kept_add(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                     const struct ident_rec *r)
{
    struct kept_batch *b = kept_at(e, w->depth);
    assert(r != NULL); /* an entry left alone has its record (sync_unchanged) */
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 64;
        b->v = xrealloc(b->v, b->cap * sizeof *b->v);
    }
    b->v[b->n].name = xstrdup(name);
    b->v[b->n].st = *st;
    b->v[b->n].dst_ino = r->dst_ino;
    b->v[b->n].dst_ctime_ns = r->dst_ctime_ns;
    b->n++;
}

/* Hands the batch of the entries met at `depth` to the helper: they are in
 * the copy's directory dfd (duplicated here), whose path is dir_rel. */
static int kept_submit(struct eng *e, size_t depth, int dfd, const char *dir_rel)
{
    struct kept_batch *b = depth < e->n_kept ? e->kept[depth] : NULL;
    if (!b || b->n == 0)
        return 0;
    e->kept[depth] = NULL;
    b->dfd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
    if (b->dfd < 0) {
        kept_batch_free(b);
        return eng_fail_at(e, errno, "open", e->job->dst, dir_rel);
    }
    b->dir_rel = xstrdup(dir_rel);
    pthread_mutex_lock(&e->kv->lock);
    /* The helper drains the queue even when it stops checking (a finding,
     * a stop), so this wait always ends. */
    while (e->kv->queued >= KEPT_MAX_QUEUED)
        pthread_cond_wait(&e->kv->room, &e->kv->lock);
    if (e->kv->tail)
        e->kv->tail->next = b;
    else
        e->kv->head = b;
    e->kv->tail = b;
    e->kv->queued++;
    pthread_cond_signal(&e->kv->more);
    pthread_mutex_unlock(&e->kv->lock);
    return 0;
}

static int kept_start(struct eng *e)
{
    struct kept_verifier *kv = xcalloc(1, sizeof *kv);
    kv->can_chown = e->can_chown;
    kv->stop = e->job->stop;
    pthread_mutex_init(&kv->lock, NULL);
    pthread_cond_init(&kv->more, NULL);
    pthread_cond_init(&kv->room, NULL);
    if (pthread_create(&kv->thread, NULL, kept_main, kv) != 0) {
        pthread_cond_destroy(&kv->room);
        pthread_cond_destroy(&kv->more);
        pthread_mutex_destroy(&kv->lock);
        free(kv);
        return eng_fail(e, CODE_IO_ERROR, "cannot start a thread: %s", strerror(errno));
    }
    e->kv = kv;
    return 0;
}

/* Waits for the helper to verify everything handed to it; its first finding
 * becomes the move's error unless the walk failed already. */
static int kept_finish(struct eng *e)
{
    struct kept_verifier *kv = e->kv;
    int rc = 0;
    if (!kv)
        return 0;
    pthread_mutex_lock(&kv->lock);
    kv->closing = true;
    pthread_cond_signal(&kv->more);
    pthread_mutex_unlock(&kv->lock);
    pthread_join(kv->thread, NULL);
    if (kv->failed) {
        rc = kv->missing ? eng_fail_dst_changed(e, kv->where)
                         : eng_fail(e, CODE_IO_ERROR,
                                    "verification failed: %s differs for %s/%s (the copy was "
                                    "changed by something else)",
                                    kv->what, e->job->dst, kv->where);
    } else if (kv->stopped) {
        /* Entries were left unverified: never a success. */
        rc = eng_stop_code(e);
        assert(rc != 0);
    }
    pthread_cond_destroy(&kv->room);
    pthread_cond_destroy(&kv->more);
    pthread_mutex_destroy(&kv->lock);
    free(kv);
    e->kv = NULL;
    for (size_t i = 0; i < e->n_kept; i++)
        if (e->kept[i])
            kept_batch_free(e->kept[i]);
    free(e->kept);
    e->kept = NULL;
    e->n_kept = 0;
    return rc;
}

/* The relative path of `name` in the walk's current directory, in a buffer
 * of the run that grows as needed (never truncated). */
static const char *sync_rel(struct eng *e, struct tree_walk *w, const char *name)
{
    size_t pl = w->depth ? w->lv[w->depth - 1].path_len : 0, nl = strlen(name);
    if (pl + nl + 2 > e->relcap) {
        e->relcap = pl + nl + 2 + 256;
        e->relbuf = xrealloc(e->relbuf, e->relcap);
    }
    memcpy(e->relbuf, w->path, pl);
    if (pl)
        e->relbuf[pl++] = '/';
    memcpy(e->relbuf + pl, name, nl + 1);
    return e->relbuf;
}

/* Remembers an entry the final pass copied, for the verify pass. */
static void sync_note(struct eng *e, const char *rel)
{
    if (e->n_synced_rel == e->cap_synced_rel) {
        e->cap_synced_rel = e->cap_synced_rel ? 2 * e->cap_synced_rel : 64;
        e->synced_rel = xrealloc(e->synced_rel, e->cap_synced_rel * sizeof *e->synced_rel);
    }
    e->synced_rel[e->n_synced_rel++] = xstrdup(rel);
}

/* Symlinks: the copy's target must be the source's. */
static bool same_target(int sdir, int ddir, const char *name)
{
    char a[PATH_MAX], b[PATH_MAX];
    ssize_t na = readlinkat(sdir, name, a, sizeof a);
    ssize_t nb = readlinkat(ddir, name, b, sizeof b);
    return na >= 0 && na == nb && memcmp(a, b, (size_t)na) == 0;
}

/* An entry the final pass left alone (its source is as recorded) is
 * verified on the way: the copy's metadata against the source's, its link
 * target, its hard-link group. A difference is the copy's, not the
 * source's: someone changed the copy. */
static int sync_verify_kept(struct eng *e, struct tree_walk *w, const char *name,
                            const struct stat *st, const struct stat *d, struct hl_slot *hs,
                            const struct ident_rec *r)
{
    assert(r != NULL); /* an entry left alone has its record (sync_unchanged) */
    if (eng_verify_stat(e, w, name, st, d) != 0)
        return -1;
    /* The copy the agent made, unchanged since: its inode, and (but for a
     * file of several names, whose ctime each later link moved) its ctime. */
    if (d->st_ino != r->dst_ino ||
        (!S_ISREG(d->st_mode) && eng_ts_ns(&d->st_ctim) != r->dst_ctime_ns))
        return eng_fail(e, CODE_IO_ERROR,
                        "verification failed: %s differs for %s/%s (the copy was changed by "
                        "something else)",
                        d->st_ino != r->dst_ino ? "inode" : "change time", e->job->dst,
                        sync_rel(e, w, name));
    if (S_ISLNK(st->st_mode) && !same_target(tree_walk_fd(w, 0), tree_walk_fd(w, 1), name))
        return eng_fail_dst_changed(e, sync_rel(e, w, name));
    if (hs && hs->dst_rel && hs->dst_ino != d->st_ino)
        return eng_fail(e, CODE_IO_ERROR, "verification failed: %s/%s is not a hard link of %s",
                        e->job->dst, sync_rel(e, w, name), hs->dst_rel);
    return 0;
}

/* Whether st is, in everything the record keeps, the entry recorded as
 * copied. ctime catches what the other fields cannot: a rewrite that put the
 * old mtime back, an xattr, a new name of the same inode. */
static bool sync_unchanged(const struct ident_rec *r, const struct stat *st)
{
    /* Without the copy's own identity (a record of an older agent) nothing
     * says the copy still holds it: copied again. */
    return r && (r->flags & IDENT_COPIED) && (r->flags & IDENT_DST) &&
           !(r->flags & IDENT_SUSPECT) && r->mode == (uint32_t)st->st_mode &&
           r->ino == (uint64_t)st->st_ino && r->dev == (uint64_t)st->st_dev &&
           r->uid == (uint32_t)st->st_uid && r->gid == (uint32_t)st->st_gid &&
           r->nlink == (uint32_t)st->st_nlink &&
           (S_ISDIR(st->st_mode) || r->size == (uint64_t)st->st_size) &&
           r->mtime_ns == eng_ts_ns(&st->st_mtim) && r->ctime_ns == eng_ts_ns(&st->st_ctim);
}

/* Records what the copy now holds at rel: the source's identity st, and
 * the copy's own, made (NULL: not known, the next commit copies it again). */
static int sync_put(struct eng *e, const char *rel, const struct stat *st, uint32_t flags,
                    const struct ident_blocks *b, const char *target, const struct stat *made)
{
    struct ident_rec r;
    ident_rec_from_stat(&r, st);
    r.flags = flags;
    if (made && (flags & IDENT_COPIED))
        ident_rec_set_dst(&r, made);
    r.target = target;
    if (b && b->n) {
        r.blocks = b->v;
        r.n_blocks = b->n;
    }
    if (ident_set_put(e->ids, rel, &r) != 0)
        return eng_fail(e, CODE_IO_ERROR, "cannot keep the record of %s/%s", e->job->dst, rel);
    return 0;
}

/* The record must never promise what the copy may no longer hold: before an
 * entry of the copy is touched its record loses IDENT_COPIED and its block
 * hashes (so a commit stopped half way is still right the next time). */
static int sync_forget(struct eng *e, const char *rel, const struct stat *st)
{
    return sync_put(e, rel, st, 0, NULL, NULL, NULL);
}

static int rm_file(struct tree_walk *w, const char *name, const struct stat *st)
{
    (void)st;
    return unlinkat(tree_walk_fd(w, 0), name, 0) == 0 || errno == ENOENT ? 0 : -1;
}

static int rm_dir_post(struct tree_walk *w, const char *name, const struct stat *st,
                       const int fds[2])
{
    (void)st;
    (void)fds;
    return unlinkat(tree_walk_fd(w, 0), name, AT_REMOVEDIR) == 0 || errno == ENOENT ? 0 : -1;
}

/* Removes the entry `name` of the copy's directory dirfd, a directory with
 * everything in it; never follows a symlink nor leaves the filesystem. */
static int sync_remove(struct eng *e, int dirfd, const char *name, const char *rel)
{
    static const struct tree_walk_ops ops = {rm_file, NULL, rm_dir_post, NULL};
    struct stat d;
    int err = 0;
    if (fstatat(dirfd, name, &d, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : eng_fail_at(e, errno, "stat", e->job->dst, rel);
    if (S_ISDIR(d.st_mode)) {
        struct tree_walk w = {.ops = &ops, .arg = e, .strict_dev = true};
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return eng_fail_at(e, errno, "open", e->job->dst, rel);
        (void)fchmod(fd, 0700);
        if (tree_walk_run(&w, fd, -1) != 0)
            err = w.err ? w.err : errno;
        tree_walk_free(&w);
        close(fd);
        if (err == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) != 0)
            err = errno;
    } else if (unlinkat(dirfd, name, 0) != 0) {
        err = errno;
    }
    if (err != 0 && err != ENOENT)
        return eng_fail_at(e, err, "remove", e->job->dst, rel);
    ident_set_remove(e->ids, rel);
    return 0;
}

/* A directory of the source whose names changed since the record: every
 * name of its copy the source no longer has is removed. dir_rel is its path
 * ("" for the root). */
static int sync_prune(struct eng *e, int sfd, int dfd, const char *dir_rel, bool root)
{
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    char *rel = NULL;
    size_t cap = 0;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return eng_fail_at(e, errno, "read directory", e->job->dst, dir_rel);
    }
    while (rc == 0 && (errno = 0, de = readdir(d)) != NULL) {
        struct stat s;
        size_t need = strlen(dir_rel) + strlen(de->d_name) + 2;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        /* The empty lost+found of a destination filesystem's root stays. */
        if (root && e->job->dst_preexisted && strcmp(de->d_name, "lost+found") == 0)
            continue;
        if (fstatat(sfd, de->d_name, &s, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        if (errno != ENOENT) {
            rc = eng_fail_at(e, errno, "stat", e->job->src, de->d_name);
            break;
        }
        if (need > cap) {
            rel = xrealloc(rel, need);
            cap = need;
        }
        util_fmt(rel, cap, "%s%s%s", dir_rel, *dir_rel ? "/" : "", de->d_name);
        rc = sync_remove(e, dfd, de->d_name, rel);
    }
    closedir(d);
    free(rel);
    return rc;
}

static void sync_count(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st)
{
    e->entries++;
    e->prog.count.phase_done = e->entries;
    if (S_ISREG(st->st_mode)) {
        bool fresh = true;
        if (st->st_nlink > 1)
            (void)eng_hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
        if (fresh)
            e->fin_bytes += (uint64_t)st->st_size;
    }
    eng_report(e, w, name);
}

/* Whether the entries of the walk's current directory are below a directory
 * the final pass made (nothing of the record applies to them). */
static bool sync_in_fresh(const struct eng *e, const struct tree_walk *w)
{
    return e->fresh_depth != 0 && w->depth >= e->fresh_depth;
}

/* A regular file whose copy can be brought up to date block by block: the
 * record holds the block hashes of what the copy holds, and it is the only
 * name of its inode the pass handles. */
static bool sync_delta_ok(const struct ident_rec *r, const struct stat *st, const struct stat *d)
{
    return r && (r->flags & IDENT_COPIED) && r->n_blocks > 0 && S_ISREG(r->mode) &&
           S_ISREG(st->st_mode) && S_ISREG(d->st_mode) && (uint64_t)d->st_size == r->size &&
           st->st_size >= (off_t)IDENT_BLOCK_MIN && st->st_nlink == 1 && d->st_nlink == 1;
}

/* Rewrites only the changed blocks of the copy of a large file (its holes
 * are not read: copy_delta). */
static int sync_delta(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                      const uint64_t *old, uint32_t n_old, struct ident_blocks *nb,
                      struct stat *copied, uint64_t *written)
{
    int sfd = eng_open_source(e, tree_walk_fd(w, 0), name, st), dfd, rc;
    bool on_write;
    struct stat after;
    struct copy_delta_stats ds;
    if (sfd < 0)
        return eng_fail_w(e, w, errno, "open", e->job->src, name);
    dfd = openat(tree_walk_fd(w, 1), name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
        rc = errno;
        close(sfd);
        return eng_fail_w(e, w, rc, "open", e->job->dst, name);
    }
    e->cur_w = w;
    e->cur_name = name;
    rc = copy_delta(&e->cc, sfd, dfd, st, old, n_old, nb, &ds, &on_write);
    e->cur_w = NULL;
    *written = ds.written;
    LOG(LOG_DEBUG, "large file brought up to date by blocks", LF_S("src", e->job->src),
        LF_S("path", sync_rel(e, w, name)), LF_U("size", (uint64_t)st->st_size),
        LF_U("read", ds.read), LF_U("holes", ds.holes), LF_U("written", ds.written),
        LF_I("rc", rc));
    if (rc == 0 && (fstat(sfd, &after) != 0 || after.st_ino != st->st_ino ||
                    after.st_size != st->st_size || !eng_same_times(&after, st)))
        rc = -ESTALE;
    if (rc == 0)
        rc = copy_meta_fd(&e->cc, sfd, dfd, st, e->can_chown);
    close(sfd);
    if (close(dfd) != 0 && rc == 0)
        rc = -errno;
    if (rc != 0)
        return eng_fail_w(e, w, -rc,
                          rc == -ESTALE ? ""
                          : on_write    ? "write"
                                        : "update",
                          on_write ? e->job->dst : e->job->src, name);
    *copied = after;
    return 0;
}

/* Copies one changed or new entry that is not a directory over whatever
 * the copy holds at its name. */
static int sync_copy(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                     const char *rel, const struct ident_rec *r, bool fresh_dir)
{
    int ddir = tree_walk_fd(w, 1), rc = 0;
    struct stat d, copied = *st, made;
    bool have_d = !fresh_dir && fstatat(ddir, name, &d, AT_SYMLINK_NOFOLLOW) == 0, have_made;
    bool suspect = eng_in_granule(e, w, st);
    struct hl_slot *hs = NULL;
    struct ident_blocks nb;
    uint64_t *old = NULL, written = 0;
    uint32_t n_old = 0;
    char *target = NULL, *rel_copy = xstrdup(rel);

    if (S_ISREG(st->st_mode) && st->st_nlink > 1) {
        bool fresh;
        hs = eng_hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
    }
    if (r && have_d && !suspect && !hs && sync_delta_ok(r, st, &d)) {
        n_old = r->n_blocks;
        old = xmalloc(n_old * sizeof *old);
        memcpy(old, r->blocks, n_old * sizeof *old);
    }
    ident_blocks_init(&nb);
    if (r && sync_forget(e, rel_copy, st) != 0)
        goto fail;
    if (old) {
        rc = sync_delta(e, w, name, st, old, n_old, &nb, &copied, &written);
        ident_blocks_finish(&nb);
    } else if (hs && hs->dst_rel) {
        /* Another name of this inode is in the copy already: one more link. */
        const char *base;
        int pfd;
        if (have_d && S_ISREG(d.st_mode) && d.st_ino == hs->dst_ino)
            goto done; /* it is that link already */
        if (have_d && sync_remove(e, ddir, name, rel_copy) != 0)
            goto fail;
        pfd = eng_open_parent_of(e->dstfd, hs->dst_rel, &base);
        if (pfd < 0)
            rc = eng_fail_at(e, errno, "open", e->job->dst, hs->dst_rel);
        else if (linkat(pfd, base, ddir, name, 0) != 0)
            rc = eng_fail_w(e, w, errno, "create hard link", e->job->dst, name);
        if (pfd >= 0)
            close(pfd);
    } else {
        if (have_d && sync_remove(e, ddir, name, rel_copy) != 0)
            goto fail;
        if (S_ISREG(st->st_mode)) {
            rc = eng_copy_file(e, w, name, st, &copied,
                               st->st_size >= (off_t)IDENT_BLOCK_MIN ? &nb : NULL, NULL);
            if (rc == 0)
                ident_blocks_finish(&nb);
            written = (uint64_t)st->st_size;
        } else {
            if (S_ISLNK(st->st_mode))
                rc = eng_copy_symlink(e, w, name, st);
            else if (mknodat(ddir, name, (st->st_mode & S_IFMT) | 0600, st->st_rdev) != 0)
                rc = eng_fail_w(e, w, errno, "create", e->job->dst, name);
            if (rc == 0 &&
                (rc = copy_meta_at(&e->cc, tree_walk_fd(w, 0), ddir, name, st, e->can_chown)) != 0)
                rc = eng_fail_w(e, w, rc == -ENOENT ? ESTALE : -rc, "set attributes of",
                                e->job->dst, name);
        }
        if (rc == 0 && hs) {
            struct stat h;
            hs->dst_rel = xstrdup(rel_copy);
            if (fstatat(ddir, name, &h, AT_SYMLINK_NOFOLLOW) == 0)
                hs->dst_ino = h.st_ino;
        }
    }
    if (rc != 0)
        goto fail;
    if (S_ISREG(st->st_mode) && e->cc.checksum) {
        /* The verify pass compares the copy with what was read here. */
        bool fresh;
        struct hl_slot *s = eng_hl_get(&e->synced, st->st_dev, st->st_ino, &fresh);
        uint64_t h = 0;
        int fd = openat(ddir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || copy_hash_content(&e->cc, fd, &h) != 0)
            rc = eng_fail_w(e, w, errno ? errno : EIO, "read", e->job->dst, name);
        if (fd >= 0)
            close(fd);
        s->hash = h;
        if (rc != 0)
            goto fail;
    }
done:
    if (S_ISLNK(st->st_mode)) {
        size_t cap = (size_t)st->st_size + 2;
        ssize_t n;
        target = xmalloc(cap);
        n = readlinkat(ddir, name, target, cap);
        if (n < 0 || (size_t)n >= cap)
            n = 0;
        target[n] = '\0';
    }
    /* The copy as the pass left it (a later link of its inode moves a hard
     * link's ctime; the commit compares only its inode then). */
    have_made = fstatat(ddir, name, &made, AT_SYMLINK_NOFOLLOW) == 0;
    rc = sync_put(e, rel_copy, &copied, IDENT_COPIED | (suspect ? IDENT_SUSPECT : 0), &nb, target,
                  have_made ? &made : NULL);
    sync_note(e, rel_copy);
    ident_blocks_free(&nb);
    free(target);
    free(old);
    free(rel_copy);
    if (rc != 0)
        return -1;
    src_record_add(&e->rec, &copied);
    e->synced_files++;
    e->synced_bytes += written;
    return 0;
fail:
    ident_blocks_free(&nb);
    free(old);
    free(rel_copy);
    return -1;
}

static int sync_entry(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    bool fresh_dir = sync_in_fresh(e, w);
    const char *rel = sync_rel(e, w, name);
    const struct ident_rec *r = fresh_dir ? NULL : ident_set_get(e->ids, rel);
    if (eng_stop_code(e) != 0 || eng_check_removable(e, w, name, st, w->attrs) != 0)
        return -1;
    sync_count(e, w, name, st);
    if (r && sync_unchanged(r, st)) {
        struct hl_slot *hs = NULL;
        struct stat d;
        if (!S_ISLNK(st->st_mode) && !(S_ISREG(st->st_mode) && st->st_nlink > 1)) {
            kept_add(e, w, name, st, r);
            src_record_add(&e->rec, st);
            return 0;
        }
        if (fstatat(tree_walk_fd(w, 1), name, &d, AT_SYMLINK_NOFOLLOW) != 0)
            return eng_fail_dst_changed(e, rel);
        if (S_ISREG(st->st_mode) && st->st_nlink > 1) {
            bool fresh;
            hs = eng_hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
        }
        if (sync_verify_kept(e, w, name, st, &d, hs, r) != 0)
            return -1;
        if (hs && !hs->dst_rel) {
            hs->dst_rel = xstrdup(sync_rel(e, w, name));
            hs->dst_ino = d.st_ino;
        }
        src_record_add(&e->rec, st);
        return 0;
    }
    return sync_copy(e, w, name, st, rel, r, fresh_dir);
}

static int sync_dir_pre(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct eng *e = w->arg;
    bool fresh_dir = sync_in_fresh(e, w);
    const char *rel = sync_rel(e, w, name);
    int ddir = tree_walk_fd(w, 1);
    struct stat d;
    if (eng_stop_code(e) != 0 || eng_check_removable(e, w, name, st, w->attrs) != 0)
        return -1;
    sync_count(e, w, name, st);
    *eng_lvl(e, w->depth) = 0;
    if (!fresh_dir && fstatat(ddir, name, &d, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(d.st_mode)) {
        const struct ident_rec *r = ident_set_get(e->ids, rel);
        /* Names made, removed or renamed in the copy by someone else since
         * the agent left it moved its ctime: pruned after its contents like
         * a source directory whose names changed. */
        if (!r || !ident_rec_dst_same(r, &d))
            *eng_lvl(e, w->depth) = ENG_LVL_DST_CHANGED;
        src_record_add(&e->rec, st);
        return 0;
    }
    if (!fresh_dir) {
        char *rel_copy = xstrdup(rel);
        int rc = sync_remove(e, ddir, name, rel_copy);
        free(rel_copy);
        if (rc != 0)
            return -1;
    }
    if (mkdirat(ddir, name, 0700) != 0)
        return eng_fail_w(e, w, errno, "create directory", e->job->dst, name);
    /* Nothing the record says applies below a directory made now. */
    if (e->fresh_depth == 0)
        e->fresh_depth = w->depth + 1;
    e->synced_files++;
    src_record_add(&e->rec, st);
    return 0;
}

static int sync_dir_post(struct tree_walk *w, const char *name, const struct stat *st,
                         const int fds[2])
{
    struct eng *e = w->arg;
    bool fresh_here = e->fresh_depth != 0 && w->depth + 1 >= e->fresh_depth;
    const char *rel;
    const struct ident_rec *r;
    bool changed;
    struct stat after, d;
    int rc;
    if (e->fresh_depth == w->depth + 1)
        e->fresh_depth = 0;
    rel = sync_rel(e, w, name);
    if (kept_submit(e, w->depth + 1, fds[1], rel) != 0)
        return -1;
    r = fresh_here ? NULL : ident_set_get(e->ids, rel);
    changed = fresh_here || !sync_unchanged(r, st) || (*eng_lvl(e, w->depth) & ENG_LVL_DST_CHANGED);
    if (changed && !fresh_here) {
        char *rel_copy = xstrdup(rel);
        rc = sync_prune(e, fds[0], fds[1], rel_copy, false);
        free(rel_copy);
        if (rc != 0)
            return -1;
    }
    /* Its names changed while the pass was in it: the server still runs. */
    if (fstat(fds[0], &after) != 0 || !eng_same_times(&after, st))
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    if (changed || fstat(fds[1], &d) != 0 || !eng_same_mtime(&d, st)) {
        rc = copy_meta_fd(&e->cc, fds[0], fds[1], st, e->can_chown);
        if (rc != 0)
            return eng_fail_w(e, w, -rc, "set attributes of", e->job->dst, name);
        if (fstat(fds[1], &d) != 0)
            return eng_fail_w(e, w, errno, "stat", e->job->dst, name);
    }
    if (eng_verify_stat(e, w, name, st, &d) != 0)
        return -1;
    /* The record follows the copy's directory wherever the pass touched it
     * (a name copied or removed in it moved its ctime too). */
    if (changed || !ident_rec_dst_same(r, &d))
        return sync_put(e, sync_rel(e, w, name), st,
                        IDENT_COPIED | (changed && eng_in_granule(e, w, st) ? IDENT_SUSPECT : 0),
                        NULL, NULL, &d);
    return 0;
}

/* The final pass: the copy becomes the source as it is now. */
static int eng_sync(struct eng *e)
{
    static const struct tree_walk_ops ops = {sync_entry, sync_dir_pre, sync_dir_post, NULL};
    struct stat after;
    int rc;
    e->entries = 0;
    e->fin_bytes = 0;
    /* What could not be removed once copied fails the commit before it
     * changes anything (the pass checks each entry as it meets it). */
    if (eng_check_root(e) != 0 || kept_start(e) != 0)
        return -1;
    rc = eng_walk_source(e, &ops, true);
    if (rc == 0)
        rc = kept_submit(e, 1, e->dstfd, "");
    if (kept_finish(e) != 0 || rc != 0)
        return -1;
    eng_hl_free(&e->hl); /* the verify pass uses it afresh */
    /* The root's names: pruned every time (the record has no entry for it). */
    if (sync_prune(e, e->srcfd, e->dstfd, "", true) != 0)
        return -1;
    if (fstat(e->srcfd, &after) != 0 || !eng_same_times(&after, &e->src_st))
        return eng_fail_at(e, ESTALE, "", e->job->src, NULL);
    rc = copy_meta_fd(&e->cc, e->srcfd, e->dstfd, &e->src_st, e->can_chown);
    if (rc != 0)
        return eng_fail_at(e, -rc, "set attributes of", e->job->dst, NULL);
    {
        struct tree_walk at_root = {0};
        struct stat d;
        if (fstat(e->dstfd, &d) != 0)
            return eng_fail_at(e, errno, "stat", e->job->dst, NULL);
        if (eng_verify_stat(e, &at_root, NULL, &e->src_st, &d) != 0)
            return -1;
    }
    if (eng_recheck(e) != 0)
        return -1;
    e->prog.count.files_total = e->prog.count.files_copied = e->entries;
    e->prog.count.bytes_total = e->prog.count.bytes_copied = e->fin_bytes;
    (void)clock_gettime(CLOCK_REALTIME, &e->copy_end);
    if (syncfs(e->dstfd) != 0)
        return eng_fail_at(e, errno, "sync", e->job->dst, NULL);
    return 0;
}

/* Verifying after the final pass: what it copied, against the source
 * (the rest was verified as the pass met it): metadata, link targets, and
 * with verify = checksum the content read back from the disk. */
static int eng_verify_synced(struct eng *e)
{
    struct tree_walk top = {0}; /* names entries by their relative path */
    struct stat s, d;
    (void)eng_phase(e, PHASE_VERIFYING, e->n_synced_rel);
    for (size_t i = 0; i < e->n_synced_rel; i++) {
        const char *rel = e->synced_rel[i], *base;
        int sp, dp, rc = 0;
        if (eng_stop_code(e) != 0)
            return -1;
        sp = eng_open_parent_of(e->srcfd, rel, &base);
        dp = sp >= 0 ? eng_open_parent_of(e->dstfd, rel, &base) : -1;
        if (sp < 0)
            rc = eng_fail_at(e, eng_changed_errno(errno), "open", e->job->src, rel);
        else if (fstatat(sp, base, &s, AT_SYMLINK_NOFOLLOW) != 0)
            rc = eng_fail_at(e, errno == ENOENT ? ESTALE : errno, "stat", e->job->src, rel);
        else if (dp < 0 || fstatat(dp, base, &d, AT_SYMLINK_NOFOLLOW) != 0)
            rc = eng_fail_dst_changed(e, rel);
        else if (eng_verify_stat(e, &top, rel, &s, &d) != 0)
            rc = -1;
        else if (S_ISLNK(s.st_mode) && !same_target(sp, dp, base))
            rc = eng_fail_at(e, ESTALE, "", e->job->src, rel);
        else if (S_ISREG(s.st_mode) && e->cc.checksum) {
            const struct hl_slot *hs = eng_hl_find(&e->synced, s.st_dev, s.st_ino);
            int fd = openat(dp, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
            uint64_t h = 0;
            e->cc.progress = NULL;
            if (fd < 0 || copy_hash_file(&e->cc, fd, &h) != 0)
                rc = eng_fail_at(e, errno ? errno : EIO, "read", e->job->dst, rel);
            else if (!hs || hs->hash != h)
                rc = eng_fail(e, CODE_IO_ERROR, "verification failed: content differs for %s/%s",
                              e->job->dst, rel);
            if (fd >= 0)
                close(fd);
        }
        if (sp >= 0)
            close(sp);
        if (dp >= 0)
            close(dp);
        if (rc != 0)
            return -1;
        e->prog.count.phase_done = i + 1;
        eng_report(e, NULL, NULL);
    }
    return 0;
}

/* The copy this move made, as the journal recorded it: 1 when it is there
 * (e->dstfd open on it), else the move fails naming what is there. */
static int eng_adopt_dst(struct eng *e, char *state, size_t size)
{
    const struct engine_job *job = e->job;
    struct stat lf;
    int dst;
    eng_take_recorded_dst(e);
    dst = eng_look_dst(e, state, size);
    if (dst != 1)
        return dst;
    e->dst_created = !job->dst_preexisted;
    if (job->dst_preexisted)
        e->dst_had_lf = fstatat(e->dstfd, "lost+found", &lf, AT_SYMLINK_NOFOLLOW) == 0;
    return 1;
}

/* A failed commit. source_changed has one meaning: the server still runs.
 * Met anywhere before the source is gone (the final pass, verifying, the
 * check before the removal, or the reclaim's check right after its rename,
 * which put the source back whole), it keeps the copy and its record and
 * the move is ready again. Anything else removes the copy. */
static int eng_commit_failed(struct eng *e)
{
    int rc;
    if (e->res->code == CODE_SOURCE_CHANGED &&
        (e->prog.phase == PHASE_SYNCING || e->prog.phase == PHASE_VERIFYING ||
         e->prog.phase == PHASE_CLEANING)) {
        rc = ident_set_save(e->ids, e->job->ident_path);
        if (rc == 0) {
            e->res->back_to_ready = true;
            return -1;
        }
        LOG(LOG_ERROR, "cannot save the record of the prepared copy; removing the copy",
            LF_S("path", e->job->ident_path), LF_S("reason", strerror(-rc)));
    }
    eng_rollback(e);
    return -1;
}

/* The source of a commit, opened (e->srcfd, e->src_st): it must still be the
 * directory that was prepared. Gone or replaced while the move rested in
 * ready, the prepared copy is of nothing that is there any more: the commit
 * fails source_missing and the caller removes the copy (all or nothing: no
 * stale copy stays behind). */
static int eng_commit_open_source(struct eng *e)
{
    int err = 0;
    if (eng_open_src_parent(e) != 0) {
        err = ENOENT;
    } else {
        e->srcfd = openat(e->src_pfd, e->src_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (e->srcfd < 0 || fstat(e->srcfd, &e->src_st) != 0)
            err = errno;
    }
    if (err == ENOENT || err == ENOTDIR || err == ELOOP) {
        e->res->code = CODE_NONE; /* eng_open_src_parent's words are not the cause */
        return eng_fail(e, CODE_SOURCE_MISSING,
                        "%s is gone (removed or replaced while the move rested in ready); the "
                        "prepared copy at %s was removed",
                        e->job->src, e->job->dst);
    }
    if (err != 0)
        return eng_fail_at(e, err, "open", e->job->src, NULL);
    if (e->job->src_id.known &&
        (e->src_st.st_dev != e->job->src_id.dev || e->src_st.st_ino != e->job->src_id.ino))
        return eng_fail(e, CODE_SOURCE_MISSING,
                        "%s is no longer the directory that was prepared (replaced while the "
                        "move rested in ready); the prepared copy at %s was removed",
                        e->job->src, e->job->dst);
    return 0;
}

int eng_commit(struct eng *e)
{
    char state[256];
    int rc;
    (void)eng_phase(e, PHASE_SYNCING, e->job->files_copied);
    e->prog.count.files_total = e->prog.count.files_copied = e->job->files_copied;
    e->prog.count.bytes_total = e->prog.count.bytes_copied = e->job->bytes_copied;
    e->committing = true;
    /* The copy first: only the directory this move made is ever removed. */
    rc = eng_adopt_dst(e, state, sizeof state);
    if (rc != 1)
        return eng_fail(e, CODE_IO_ERROR,
                        "the prepared copy at %s is %s, not the directory this move made; "
                        "nothing was touched",
                        e->job->dst, state);
    if (eng_commit_open_source(e) != 0) {
        eng_rollback(e);
        return -1;
    }
    e->src_dev = e->src_st.st_dev;
    e->grain = 2000000000;
    eng_note_grain(e, &e->src_st);
    copy_caps_load(&e->cc.caps, e->src_dev, e->job->dst_id.dev);
    rc = ident_set_load(&e->ids, e->job->ident_path);
    if (rc != 0) {
        eng_fail(e, CODE_IO_ERROR, "cannot read the record of the prepared copy %s: %s",
                 e->job->ident_path, strerror(-rc));
        eng_rollback(e);
        return -1;
    }
    if (eng_sync(e) != 0 || eng_verify_synced(e) != 0)
        return eng_commit_failed(e);
    e->res->bytes_synced = e->synced_bytes;
    e->res->files_synced = e->synced_files;
    LOG(LOG_INFO, "final pass done", LF_S("src", e->job->src), LF_U("files", e->synced_files),
        LF_U("bytes", e->synced_bytes), LF_U("entries", e->entries));
    if (eng_before_removal(e) != 0 || eng_lock_for_cleaning(e) != 0 || eng_end_copy(e) != 0)
        return eng_commit_failed(e);
    return 0;
}

int eng_discard(struct eng *e)
{
    char state[256];
    int dst = eng_adopt_dst(e, state, sizeof state);
    if (dst < 0)
        return eng_fail(e, CODE_NEEDS_ATTENTION,
                        "the prepared copy at %s is %s, not the directory this move made; "
                        "nothing was removed",
                        e->job->dst, state);
    if (dst == 1)
        eng_rollback(e);
    else
        util_rmdir_made(e->made_parents, e->n_made);
    if (eng_stop_code(e) != 0)
        return -1;
    return eng_fail(e, CODE_CANCELLED, "the prepared copy was discarded");
}
