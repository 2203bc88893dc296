/* engine_recover.c: after a crash: undo a partial copy, or finish a cleaning,
 * only when the disk matches the journal. Calls engine_reclaim.c,
 * engine_clean.c and the engine's floor (engine_paths.c looks at the tops). */
#include "engine_internal.h"

/* --- recovery after a crash: look first, remove only what matches ----------------- */

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
int eng_undo(struct eng *e)
{
    const struct engine_job *job = e->job;
    char src_state[160], dst_state[192];
    bool src_absent, src_ok = eng_look_src(e, src_state, sizeof src_state, &src_absent);
    int dst;

    eng_take_recorded_dst(e);

    if (job->resume_phase == PHASE_QUEUED || !job->dst_id.known) {
        /* It wrote nothing into newPath (at most it made an empty directory
         * it did not live to record): whatever is there is not its own. */
        struct engine_id none = {0};
        (void)engine_describe(job->dst, job->dst_preexisted ? &job->dst_id : &none, dst_state,
                              sizeof dst_state);
        if (!src_ok)
            return eng_mismatch(e, src_state, dst_state);
        util_rmdir_made(e->made_parents, e->n_made); /* only empty ones go */
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
    if (S_ISDIR(st->st_mode) && w->depth == 1 && strcmp(name, "lost+found") == 0)
        e->fin_lost_found = true;
    if (S_ISREG(st->st_mode)) {
        /* bytesCopied counts each hard-linked inode once */
        if (st->st_nlink > 1)
            eng_hl_get(&e->hl, st->st_dev, st->st_ino, &fresh);
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
    /* The reclaim directory inside a mount point is walked on its own. */
    if (w->depth == 1 && S_ISDIR(s->st_mode) && eng_is_reclaim_name(e, name))
        return 1;
    if (fstatat(tree_walk_fd(w, 1), name, &d, AT_SYMLINK_NOFOLLOW) != 0)
        what = "is missing in the copy";
    else if ((s->st_mode & S_IFMT) != (d.st_mode & S_IFMT))
        what = "has another type in the copy";
    else if (!S_ISDIR(s->st_mode) && (s->st_size != d.st_size || !eng_same_mtime(s, &d)))
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
    eng_hl_free(&e->hl);
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
    e->fin_why = why;
    e->fin_why_size = size;
    why[0] = '\0';
    /* What is left of the source: at oldPath, and in its reclaim directory. */
    for (int side = 0; side < 2; side++) {
        int fd = side == 0 ? (src_there ? e->srcfd : -1) : e->rcl_fd;
        if (fd < 0)
            continue;
        memset(&w, 0, sizeof w);
        w.ops = &match_ops;
        w.arg = e;
        w.mirrored = true;
        w.need_stat = true;
        w.strict_dev = true;
        rc = tree_walk_run(&w, fd, e->dstfd);
        if (rc != 0 && !why[0])
            util_fmt(why, size,
                     "the copy, but the rest of the source cannot be compared with it (%s)",
                     strerror(w.err ? w.err : EIO));
        tree_walk_free(&w);
        if (rc != 0)
            return false;
    }
    return true;
}

/* After a crash during cleaning: the copy was verified and durable. The rest
 * of the source is removed only when newPath is the directory the move made,
 * holding as many entries and bytes as the verified copy, and each remaining
 * source entry matches its copy; else nothing is touched. */
int eng_finish(struct eng *e)
{
    const struct engine_job *job = e->job;
    char src_state[160], dst_state[256];
    bool src_absent, src_ok = eng_look_src(e, src_state, sizeof src_state, &src_absent);
    struct stat st;
    int dst = eng_look_dst(e, dst_state, sizeof dst_state), rcl;
    if (dst != 1 || (!src_ok && !src_absent))
        return eng_mismatch(e, src_state, dst_state);
    e->prog.count.files_copied = job->files_copied;
    e->prog.count.bytes_copied = job->bytes_copied;
    if (eng_open_src_parent(e) != 0) {
        if (!src_absent)
            return eng_mismatch(e, src_state, "not checked");
        e->res->code = CODE_NONE; /* its parent is gone too: no reclaim directory there */
        e->res->error[0] = '\0';
    }
    if (!src_absent) {
        e->srcfd = openat(e->src_pfd, e->src_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (e->srcfd < 0 || fstat(e->srcfd, &st) != 0 ||
            (job->src_id.known && !eng_id_matches(&job->src_id, &st)))
            return eng_mismatch(e, "changed while it was being examined", dst_state);
    }
    /* A deferred reclaim may have renamed the source (or, from a mount
     * point, some of its entries) into the directory the journal named. */
    rcl = eng_reclaim_resume(e, &e->rcl_fd);
    if (rcl < 0) {
        char rstate[PATH_MAX + 96];
        util_fmt(rstate, sizeof rstate, "%s, and its reclaim directory %s is not the one recorded",
                 src_state, job->resume_reclaim.dir);
        return eng_mismatch(e, rstate, dst_state);
    }
    if (!eng_copy_is_whole(e, !src_absent, dst_state, sizeof dst_state))
        return eng_mismatch(e, src_state, dst_state);
    if (rcl == 1 && (src_absent || !job->resume_reclaim.in_mount)) {
        /* The rename was done: only its answer was missing. */
        e->res->reclaim = true;
        e->res->reclaimed = job->resume_reclaim;
        e->res->reclaimed.undone = false;
        return 0;
    }
    if (src_absent)
        return 0; /* its removal had ended */
    return eng_remove_source(e);
}
