/* move_engine.c: the file-tree move: rename, or calculate, check space, copy,
 * make durable, verify, remove the source; roll back on any failure. The
 * flow on top of the engine: engine_run and its modes, the phase sequence,
 * the destination's setup, rename, durability. The passes live in
 * engine_*.c, below it (the layering: engine_internal.h); none calls up. */
#include "engine_internal.h"

#include "caps.h"

#include <linux/capability.h>

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
            if (e->can_chown)
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
    e.can_chown = caps_effective(CAP_CHOWN);
    e.can_fowner = caps_effective(CAP_FOWNER);
    e.noatime_ok = true;
    e.cc.checksum = job->verify == VERIFY_CHECKSUM;
    e.cc.stop = job->stop;
    e.cc.progress = eng_on_bytes;
    e.cc.arg = &e;
    eng_pace_init(&e);

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
    eng_pace_done(&e);

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
