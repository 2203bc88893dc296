/* engine_internal.h: what the move engine's files share: the state of one run
 * (struct eng) and each file's part, declared below by floor. Private to the
 * engine.
 *
 * The engine's layering (a file calls only files below it, never up):
 *
 *   move_engine.c       the flow on top: engine_run, its modes and phase
 *                       sequence, rename, durability; calls any file below
 *   engine_sync.c       commit and discard; calls verify, copy, reclaim,
 *                       clean and the floor
 *   engine_recover.c    undo and finish after a crash; calls reclaim, clean
 *                       and the floor
 *   engine_copy.c       calculating and copying; calls clean and the floor
 *   engine_verify.c     verifying, the check before removal; calls clean
 *                       and the floor
 *   engine_reclaim.c    removing the source (reclaim, else cleaning); calls
 *                       clean and the floor
 *   engine_clean.c      what can be removed, cleaning, rollback; calls only
 *                       the floor
 *   the floor:          engine_paths.c (calls engine_report.c),
 *                       engine_report.c (calls engine_pace.c),
 *                       engine_pace.c, engine_hardlinks.c (call nothing
 *                       of the engine)
 *
 * Passes at one height (copy and verify; sync and recover) do not call each
 * other. */
#ifndef HOSTAGENT_ENGINE_INTERNAL_H
#define HOSTAGENT_ENGINE_INTERNAL_H

#include "move_engine.h"
#include "clean_guard.h"
#include "pace.h"
#include "file_copy.h"
#include "ident_store.h"
#include "paths.h"
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
    uint64_t hash; /* e->synced: the content's hash as the final pass copied it */
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

struct kept_verifier;
struct kept_batch;

struct eng {
    const struct engine_job *job;
    struct engine_result *res;
    struct engine_progress prog;
    struct copy_ctx cc;
    /* From the effective capabilities at the start (caps.c), not the uid:
     * CAP_CHOWN keeps owners (the copy is otherwise the agent's own),
     * CAP_FOWNER lifts the sticky rule of the cleaning and rollback. */
    bool can_chown, can_fowner, noatime_ok;
    bool src_synced; /* the reclaim's rename made durable by fsync of its directories */
    bool renamed;    /* a rename move's rename(2) stands (eng_make_durable) */
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
    /* A preparing copy (ENGINE_PREPARE): the source is live; each entry's
     * identity as examined, before it is read, goes to iw. */
    bool live;
    struct ident_writer *iw;
    /* A commit (ENGINE_COMMIT): the record, brought up to date as the final
     * pass changes the copy; what that pass copied. */
    struct ident_set *ids;
    bool committing;
    size_t fresh_depth; /* syncing: below this depth the copy's directories are new (0: none) */
    uint64_t synced_bytes, synced_files;
    struct hl_table synced; /* files the final pass copied (checksum: their hash) */
    char *relbuf;           /* syncing: the current entry's relative path */
    size_t relcap;
    struct kept_verifier *kv; /* syncing: verifies what it leaves alone, on its own thread */
    struct kept_batch **kept; /* syncing: the batch of each level of the walk, by depth */
    size_t n_kept;
    /* Per level of the walk (by depth), what a directory's pre callback
     * learned for its post callback (ENG_LVL_*). */
    uint8_t *lvl;
    size_t n_lvl;
    char **synced_rel; /* syncing: the entries it copied, for the verify pass */
    size_t n_synced_rel, cap_synced_rel;
    /* Finishing after a restart: the reclaim directory the journal named,
     * found with its recorded identity (-1: none). */
    int rcl_fd;
    struct pace pace; /* copying: the cap and the disk-latency controller */
    int io_class;     /* the worker's I/O class now (-1: left as it was) */
};

static inline bool eng_same_time(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static inline bool eng_same_mtime(const struct stat *a, const struct stat *b)
{
    return eng_same_time(&a->st_mtim, &b->st_mtim);
}

/* mtime and ctime: ctime also moves on a rewrite that restores the mtime,
 * and on any change of metadata. */
static inline bool eng_same_times(const struct stat *a, const struct stat *b)
{
    return eng_same_mtime(a, b) && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static inline int64_t eng_ts_ns(const struct timespec *t)
{
    return (int64_t)t->tv_sec * 1000000000 + t->tv_nsec;
}

/* --- the floor: engine_report.c (results and progress) --- */
int eng_fail(struct eng *e, enum move_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int eng_stop_code(struct eng *e);
int eng_changed_errno(int err);
int eng_fail_at(struct eng *e, int err, const char *what, const char *root, const char *rel);
int eng_fail_w(struct eng *e, struct tree_walk *w, int err, const char *what, const char *root,
               const char *name);
int eng_fail_dst_changed(struct eng *e, const char *rel);
int eng_fail_walk(struct eng *e, struct tree_walk *w);
int eng_walk_source(struct eng *e, const struct tree_walk_ops *ops, bool mirrored);
void eng_report(struct eng *e, struct tree_walk *w, const char *name);
int eng_phase(struct eng *e, enum move_phase phase, uint64_t phase_total);
void eng_on_bytes(void *arg, uint64_t delta);

/* --- the floor: engine_pace.c (the copy's pace) --- */
/* Sets up write-behind, the I/O class and the pace for this run. */
void eng_pace_init(struct eng *e);
/* delta bytes of content were copied: in phase copying, holds the copy to
 * its pace (sleeps, returning early when a stop is asked) and puts the pace
 * into the progress counters. */
void eng_pace(struct eng *e, uint64_t delta);
/* At the end of the run: logs how often the copy yielded, if it did. */
void eng_pace_done(struct eng *e);

/* --- the floor: engine_hardlinks.c (the hard-link table) --- */
struct hl_slot *eng_hl_get(struct hl_table *t, dev_t dev, ino_t ino, bool *fresh);
struct hl_slot *eng_hl_find(const struct hl_table *t, dev_t dev, ino_t ino);
void eng_hl_free(struct hl_table *t);

/* --- the floor: engine_paths.c (paths beneath the roots, the recorded tops) --- */
int eng_open_parent_of(int root, const char *rel, const char **base);
int eng_fail_changed(struct eng *e, int err, const char *path);
int eng_open_src_parent(struct eng *e);
int eng_open_dst_parent(struct eng *e, bool create);
bool eng_id_matches(const struct engine_id *want, const struct stat *st);
int eng_look_dst(struct eng *e, char *state, size_t size);
/* A move resumed or committed: what the journal recorded of its
 * destination (there before the move, its original stat, the parents made
 * for it), for a rollback. */
void eng_take_recorded_dst(struct eng *e);

/* --- engine_clean.c (the lowest pass) --- */
int eng_check_removable(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                        uint64_t attrs);
int eng_check_root(struct eng *e);
int eng_lock_for_cleaning(struct eng *e);
int eng_clean_check(void *ctx, int dirfd, const char *name, const void *arg);
int eng_clean(struct eng *e);
void eng_clean_stopped(struct eng *e);
void eng_rollback(struct eng *e);

/* --- engine_reclaim.c --- */
int eng_reclaim(struct eng *e);
int eng_remove_source(struct eng *e);
int eng_end_copy(struct eng *e);
bool eng_is_reclaim_name(const struct eng *e, const char *name);
int eng_reclaim_resume(struct eng *e, int *rfd);

/* --- engine_verify.c --- */
int eng_verify(struct eng *e);
int eng_verify_stat(struct eng *e, struct tree_walk *w, const char *name, const struct stat *s,
                    const struct stat *d);
/* What differs between an entry of the copy (d) and its source (s), or NULL;
 * *follows: a field that follows the source's content (type, size, mtime).
 * Pure: any thread. */
const char *eng_meta_diff(bool can_chown, const struct stat *s, const struct stat *d,
                          bool *follows);
int eng_check_source(struct eng *e);
int eng_before_removal(struct eng *e);

/* --- engine_copy.c --- */
void eng_note_grain(struct eng *e, const struct stat *st);
int eng_calculate(struct eng *e);
int eng_check_space(struct eng *e);
void eng_release_space(struct eng *e);
int eng_copy(struct eng *e);
bool eng_in_granule(struct eng *e, const struct tree_walk *w, const struct stat *st);
int eng_open_source(struct eng *e, int dir, const char *name, const struct stat *st);
int eng_copy_file(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st,
                  struct stat *copied, struct ident_blocks *blocks, struct stat *made);
/* The flags of a directory at walk depth `depth`, kept from its pre to its
 * post callback. */
enum { ENG_LVL_SUSPECT = 1, ENG_LVL_DST_CHANGED = 2 };
uint8_t *eng_lvl(struct eng *e, size_t depth);
int eng_copy_symlink(struct eng *e, struct tree_walk *w, const char *name, const struct stat *st);
int eng_recheck(struct eng *e);

/* --- engine_recover.c --- */
int eng_undo(struct eng *e);
int eng_finish(struct eng *e);

/* --- engine_sync.c --- */
int eng_commit(struct eng *e);
int eng_discard(struct eng *e);

#endif
