/* engine_copy.c: the calculating and copying passes, the free-space claim,
 * and the source's timestamp granularity. Calls engine_clean.c (what can be
 * removed) and the engine's floor. */
#include "engine_internal.h"

static pthread_mutex_t claims_lock = PTHREAD_MUTEX_INITIALIZER;
static struct space_claim *claims;

/* --- the source's timestamp granularity ------------------------------------------ */

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
    if (rc == -ENOENT && e->live)
        return 0; /* a live tree: left for the commit */
    /* What could not be removed after the copy fails the move before it. */
    if (rc != 0)
        return eng_fail_w(e, w, rc == -ENOENT ? ESTALE : -rc, "stat", e->job->src, name);
    if (eng_check_removable(e, w, name, &now, attrs) != 0)
        return -1;
    eng_note_grain(e, st);
    e->prog.count.files_total++;
    e->need_inodes++;
    if (S_ISREG(st->st_mode)) {
        bool fresh = true;
        if (st->st_nlink > 1)
            eng_hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
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

int eng_calculate(struct eng *e)
{
    /* A directory is counted like any entry, then descended (0). */
    static const struct tree_walk_ops ops = {calc_entry, calc_entry, NULL, NULL};
    if (eng_check_root(e) != 0)
        return -1;
    return eng_walk_source(e, &ops, false);
}

/* Fails early when the tree cannot fit, counting what other moves copying
 * to the same filesystem still need. */
int eng_check_space(struct eng *e)
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

void eng_release_space(struct eng *e)
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

/* Opens the regular file `name` the walk examined as st, for reading.
 * Returns the descriptor, or -1 with errno set: ESTALE when the name is gone
 * or is something else now (replaced by a directory, a fifo, another file:
 * a change of the source, not an I/O error). O_NONBLOCK so that a fifo
 * swapped in since cannot block the open (it means nothing to a regular
 * file's reads). */
int eng_open_source(struct eng *e, int dir, const char *name, const struct stat *st)
{
    int fd = -1, flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK;
    struct stat now;
    /* O_NOATIME keeps the source's access times (owner or CAP_FOWNER only). */
    if (e->noatime_ok) {
        fd = openat(dir, name, flags | O_NOATIME);
        if (fd < 0 && errno == EPERM)
            e->noatime_ok = false;
    }
    if (fd < 0 && !e->noatime_ok)
        fd = openat(dir, name, flags);
    if (fd < 0) {
        errno = eng_changed_errno(errno);
        return -1;
    }
    if (fstat(fd, &now) != 0 || !S_ISREG(now.st_mode) || now.st_dev != st->st_dev ||
        now.st_ino != st->st_ino) {
        close(fd);
        errno = ESTALE;
        return -1;
    }
    return fd;
}

/* ctime too: a rewrite that puts the old mtime back still moves ctime. */
static bool same_content_stat(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           eng_same_times(a, b);
}

static bool suspect_same(const struct suspect *s, const struct stat *st)
{
    return s->dev == st->st_dev && s->ino == st->st_ino && s->size == st->st_size &&
           eng_same_time(&s->mtime, &st->st_mtim) && eng_same_time(&s->ctime, &st->st_ctim);
}

static int64_t last_stamp(const struct stat *st)
{
    int64_t m = eng_ts_ns(&st->st_mtim), c = eng_ts_ns(&st->st_ctim);
    return m > c ? m : c;
}

/* Times alone cannot show a change made in the granule of the file's last
 * change: the filesystem writes the same stamp again. If that granule had
 * not ended when the walk examined the file (read from the clock file times
 * come from, before the stat), a change during the copy may not show in
 * them. On a nanosecond filesystem this is a file changed within the last
 * clock tick; on a whole-second one, within the last second. */
bool eng_in_granule(struct eng *e, const struct tree_walk *w, const struct stat *st)
{
    eng_note_grain(e, st);
    return last_stamp(st) + e->grain > eng_ts_ns(&w->stat_clock);
}

uint8_t *eng_lvl(struct eng *e, size_t depth)
{
    if (depth >= e->n_lvl) {
        size_t n = depth + 16;
        e->lvl = xrealloc(e->lvl, n);
        memset(e->lvl + e->n_lvl, 0, n - e->n_lvl);
        e->n_lvl = n;
    }
    return &e->lvl[depth];
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

/* A preparing copy's record of one entry: its identity as the walk examined
 * it (before it was read), flags (IDENT_COPIED, IDENT_SUSPECT), the block
 * hashes of what was copied, and `made`, the copy's own lstat once the agent
 * is done with it (NULL: not known; the commit then copies it again). */
static int record_live(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                       uint32_t flags, const struct ident_blocks *b, const struct stat *made)
{
    size_t cap = w->path_cap + strlen(name) + 2; /* never truncated */
    char *rel = xmalloc(cap);
    struct ident_rec r;
    int rc;
    tree_walk_relpath(w, name, rel, cap);
    ident_rec_from_stat(&r, st);
    r.flags = flags;
    if (made && (flags & IDENT_COPIED))
        ident_rec_set_dst(&r, made);
    if (b && b->n) {
        r.blocks = b->v;
        r.n_blocks = b->n;
    }
    if (S_ISLNK(st->st_mode) && (flags & IDENT_COPIED)) {
        char target[PATH_MAX + 1];
        ssize_t n = readlinkat(tree_walk_fd(w, 1), name, target, sizeof target - 1);
        if (n >= 0) {
            target[n] = '\0';
            r.target = target;
            rc = ident_writer_add(e->iw, rel, &r);
            free(rel);
            goto done;
        }
    }
    rc = ident_writer_add(e->iw, rel, &r);
    free(rel);
done:
    if (rc != 0)
        return eng_fail(e, CODE_IO_ERROR, "cannot write the record of the preparing copy %s: %s",
                        e->job->ident_path, strerror(-rc));
    return 0;
}

/* Copies one regular file; *copied receives its source's identity as it
 * was copied (from the open descriptor, after the copy: it matched st), and
 * *made (when not NULL) the copy's, once its attributes are set.
 * A preparing copy (e->live) takes the file as it reads, whatever changes
 * meanwhile, returns 1 when it vanished before it was opened, and keeps the
 * block hashes of a large file in *blocks (initialised by the caller). */
int eng_copy_file(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                  struct stat *copied, struct ident_blocks *blocks, struct stat *made)
{
    int sdir = tree_walk_fd(w, 0), ddir = tree_walk_fd(w, 1);
    int sfd, dfd, rc;
    struct stat after;
    uint64_t hash = 0, start = e->prog.count.bytes_copied;
    bool on_write, checksum = e->cc.checksum, suspect = eng_in_granule(e, w, st);

    e->cur_w = w;
    e->cur_name = name;
    sfd = eng_open_source(e, sdir, name, st);
    /* A preparing copy leaves a name gone or replaced to the commit. */
    if (sfd < 0 && e->live && errno == ESTALE)
        return 1;
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
    e->cc.checksum = e->live ? checksum : checksum || suspect;
    e->cc.blocks = blocks && (uint64_t)st->st_size >= IDENT_BLOCK_MIN ? blocks : NULL;
    rc = copy_data(&e->cc, sfd, dfd, st, &hash, &on_write);
    e->cc.checksum = checksum;
    e->cc.blocks = NULL;
    e->cur_w = NULL;
    if (rc == -ESTALE && e->live)
        rc = 0; /* shortened while read: the commit sees its new identity */
    if (rc != 0) {
        close(sfd);
        close(dfd);
        return eng_fail_w(e, w, -rc, on_write ? "write" : "read",
                          on_write ? e->job->dst : e->job->src, name);
    }
    /* Changed while we copied it (or swapped before we opened it)? A live
     * tree's record keeps the identity examined before the read, which then
     * differs from the file's: the commit copies it again. */
    if (fstat(sfd, &after) != 0 || (!e->live && !same_content_stat(st, &after))) {
        close(sfd);
        close(dfd);
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    }
    *copied = after;
    rc = copy_meta_fd(&e->cc, sfd, dfd, st, e->can_chown);
    close(sfd);
    if (rc == 0 && made && fstat(dfd, made) != 0)
        rc = -errno;
    if (rc != 0) {
        close(dfd);
        return eng_fail_w(e, w, -rc, "set attributes of", e->job->dst, name);
    }
    if (close(dfd) != 0)
        return eng_fail_w(e, w, errno, "write", e->job->dst, name);
    if (suspect && !e->live)
        note_suspect(e, w, name, &after, hash);
    /* Holes count as copied: make the counter land on the file's size. A
     * commit's final pass counts no bytes (see eng_on_bytes). */
    if (e->prog.phase != PHASE_SYNCING)
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
    int pfd = eng_open_parent_of(e->dstfd, first->dst_rel, &base);
    int rc = 0;
    if (pfd < 0)
        return eng_fail_at(e, errno, "open", e->job->dst, first->dst_rel);
    if (linkat(pfd, base, tree_walk_fd(w, 1), name, 0) != 0)
        rc = eng_fail_w(e, w, errno, "create hard link", e->job->dst, name);
    close(pfd);
    return rc;
}

int eng_copy_symlink(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st)
{
    size_t cap = (size_t)st->st_size + 2;
    char *target = xmalloc(cap);
    ssize_t n = readlinkat(tree_walk_fd(w, 0), name, target, cap);
    int rc = 0;
    if (e->live && (n < 0 ? errno == ENOENT || errno == EINVAL : (size_t)n != (size_t)st->st_size))
        rc = 1; /* replaced or gone while examined: left for the commit */
    else if (n < 0)
        rc = eng_fail_w(e, w, errno == ENOENT || errno == EINVAL ? ESTALE : errno, "read link",
                        e->job->src, name);
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
    struct stat copied = *st, made, *mp = NULL;
    struct ident_blocks blocks;
    bool suspect = e->live && eng_in_granule(e, w, st);
    int rc = 0;
    if (eng_stop_code(e) != 0)
        return -1;
    eng_report(e, w, name);
    ident_blocks_init(&blocks);
    if (S_ISREG(st->st_mode)) {
        struct hl_slot *hs = NULL;
        bool fresh = true;
        if (st->st_nlink > 1)
            hs = eng_hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
        if (hs && hs->dst_rel) {
            rc = copy_hardlink(e, w, name, hs);
        } else {
            rc = eng_copy_file(e, w, name, st, &copied, e->live ? &blocks : NULL,
                               e->live ? &made : NULL);
            mp = e->live && rc == 0 ? &made : NULL;
            if (rc == 0 && e->live)
                ident_blocks_finish(&blocks);
            if (rc == 0 && hs) {
                char *rel = xmalloc(w->path_cap + strlen(name) + 2);
                tree_walk_relpath(w, name, rel, w->path_cap + strlen(name) + 2);
                hs->dst_rel = rel;
            }
        }
    } else {
        if (S_ISLNK(st->st_mode))
            rc = eng_copy_symlink(e, w, name, st);
        else if (mknodat(tree_walk_fd(w, 1), name, (st->st_mode & S_IFMT) | 0600, st->st_rdev) != 0)
            rc = eng_fail_w(e, w, errno, "create", e->job->dst, name);
        /* Never opened: a fifo would block a reader forever. */
        if (rc == 0 && (rc = copy_meta_at(&e->cc, tree_walk_fd(w, 0), tree_walk_fd(w, 1), name, st,
                                          e->can_chown)) != 0)
            rc = e->live && rc == -ENOENT ? 2
                                          : eng_fail_w(e, w, rc == -ENOENT ? ESTALE : -rc,
                                                       "set attributes of", e->job->dst, name);
    }
    if (e->live && rc >= 0) {
        /* 1: vanished before it was read, nothing made; 2: made, but its
         * source vanished before its attributes were read. */
        uint32_t flags = (rc == 0 ? IDENT_COPIED : 0) | (suspect ? IDENT_SUSPECT : 0);
        /* The copy's identity as the agent left it (a hard link's second
         * name: its inode; its ctime moves with every link, see the commit). */
        if (rc == 0 && !mp && fstatat(tree_walk_fd(w, 1), name, &made, AT_SYMLINK_NOFOLLOW) == 0)
            mp = &made;
        if (rc != 1)
            rc = record_live(e, w, name, st, flags, &blocks, mp);
        ident_blocks_free(&blocks);
        if (rc != 0)
            return -1;
        e->prog.count.files_copied++;
        return 0;
    }
    ident_blocks_free(&blocks);
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
     * contents (copy_dir_post). A preparing copy records it after them, with
     * the copy's identity once its attributes are set; whether it was
     * examined in its granule is known now. */
    if (e->live) {
        *eng_lvl(e, w->depth) = eng_in_granule(e, w, st) ? ENG_LVL_SUSPECT : 0;
    } else {
        src_record_add(&e->rec, st);
    }
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
    /* A directory whose entries changed while we copied it (a live tree's
     * record shows it changed: the commit looks again). */
    if (!e->live && (fstat(fds[0], &after) != 0 || !eng_same_times(&after, st)))
        return eng_fail_w(e, w, ESTALE, "", e->job->src, name);
    rc = copy_meta_fd(&e->cc, fds[0], fds[1], st, e->can_chown);
    if (rc != 0)
        return eng_fail_w(e, w, -rc, "set attributes of", e->job->dst, name);
    if (e->live) {
        struct stat made;
        bool suspect = *eng_lvl(e, w->depth) & ENG_LVL_SUSPECT;
        if (fstat(fds[1], &made) != 0)
            return eng_fail_w(e, w, errno, "stat", e->job->dst, name);
        return record_live(e, w, name, st, IDENT_COPIED | (suspect ? IDENT_SUSPECT : 0), NULL,
                           &made);
    }
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
        n = eng_ts_ns(&now);
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
    struct stat a = {.st_dev = s->dev, .st_ino = s->ino}, b;
    uint64_t h = 0;
    int pfd = eng_open_parent_of(e->srcfd, s->rel, &base), fd, rc;
    if (pfd < 0)
        return eng_fail_at(e, eng_changed_errno(errno), "open", e->job->src, s->rel);
    fd = eng_open_source(e, pfd, base, &a);
    close(pfd);
    if (fd < 0)
        return eng_fail_at(e, errno, "open", e->job->src, s->rel);
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
int eng_recheck(struct eng *e)
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

int eng_copy(struct eng *e)
{
    static const struct tree_walk_ops ops = {copy_entry, copy_dir_pre, copy_dir_post, NULL};
    struct stat after;
    int rc;
    (void)eng_phase(e, PHASE_COPYING, e->prog.count.bytes_total);
    if (e->live && (rc = ident_writer_open(&e->iw, e->job->ident_path)) != 0)
        return eng_fail(e, CODE_IO_ERROR, "cannot write the record of the preparing copy %s: %s",
                        e->job->ident_path, strerror(-rc));
    if (eng_walk_source(e, &ops, true) != 0 || eng_recheck(e) != 0)
        return -1;
    if (!e->live && (fstat(e->srcfd, &after) != 0 || !eng_same_times(&after, &e->src_st)))
        return eng_fail_at(e, ESTALE, "", e->job->src, NULL);
    rc = copy_meta_fd(&e->cc, e->srcfd, e->dstfd, &e->src_st, e->can_chown);
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
    if (e->live) {
        /* The record last: a record names only what is durable in the copy. */
        rc = ident_writer_finish(e->iw);
        e->iw = NULL;
        if (rc != 0)
            return eng_fail(e, CODE_IO_ERROR,
                            "cannot write the record of the preparing copy %s: %s",
                            e->job->ident_path, strerror(-rc));
    }
    return 0;
}
