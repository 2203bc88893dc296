/* move_engine.h: moving one directory tree: rename, or copy, verify, make
 * durable and remove the source; all or nothing. Runs on a worker thread and
 * knows nothing of the event loop or the network. */
#ifndef HOSTAGENT_MOVE_ENGINE_H
#define HOSTAGENT_MOVE_ENGINE_H

#include "config.h"
#include "move_state.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

struct engine_progress {
    enum move_phase phase;
    struct move_counters count;
    const char *current; /* path relative to the source, or NULL */
};

/* Called on the worker thread; phase_start marks the first report of a phase.
 * Must not block. */
typedef void (*engine_report_fn)(void *arg, const struct engine_progress *p, bool phase_start);

/* The value of *stop once cleaning began: a stop request can no longer be
 * taken (the copy is whole, the source is being removed). */
#define ENGINE_STOP_LOCKED (-1)

enum engine_mode {
    ENGINE_MOVE = 0, /* the whole move */
    ENGINE_UNDO,     /* after a crash before cleaning: remove the partial copy */
    ENGINE_FINISH,   /* after a crash during cleaning: remove the rest of the source */
    /* server.move_prepare: calculate, then copy the live source, recording
     * each entry's identity before reading it (ident_path). Changes while
     * copying are no error. Succeeds with the copy kept and durable, and the
     * record written: the move rests in phase ready (no worker). */
    ENGINE_PREPARE,
    /* server.move_commit of a move in ready: the final pass (syncing) against
     * the record, then verifying, durable, cleaning, as ENGINE_MOVE ends.
     * A source still changing during syncing or verifying: -1 with
     * CODE_SOURCE_CHANGED and res->back_to_ready, the copy kept and the
     * record matching it. Any other failure rolls back (the copy removed). */
    ENGINE_COMMIT,
    /* A prepared move stopped while resting in ready (cancel, prepare_ttl):
     * removes its copy, checked by the destination's recorded identity, and
     * fails with the stop code in *stop. */
    ENGINE_DISCARD,
};

/* Called on the worker when a phase begins, before its work. Its failure
 * stops the move before cleaning (the journal must say "cleaning" before
 * anything of the source is removed); in other phases it is only logged. */
typedef int (*engine_phase_fn)(void *arg, const struct engine_progress *p);

/* Called on the worker once the destination directory is open (made by the
 * move, or the empty one found there), with its stat, before anything is
 * written into it. Returning 0 means its identity is durable (journaled):
 * recovery removes nothing under a newPath of another identity. A failure
 * stops the move (rolled back). */
typedef int (*engine_dst_fn)(void *arg, const struct stat *st);

/* A deferred reclaim (see engine_reclaim.c): the source renamed away into
 * this directory on its own filesystem, to be deleted after the answer. */
struct engine_reclaim {
    /* "<parent of oldPath>/.hostagent-reclaim-<moveId>[~n]", or inside oldPath */
    char dir[PATH_MAX];
    bool in_mount; /* oldPath is a mount point: its entries went into dir, inside it */
    dev_t dev;     /* dir's identity: checked before anything in it is deleted */
    ino_t ino;
    uint64_t entries, bytes; /* what it holds (the verified copy's counts) */
    bool undone;             /* (on_reclaim) the source was renamed back: nothing to delete */
};

/* Called on the worker right before the first rename into the reclaim
 * directory (dir, identity and counts set), and again with `undone` once a
 * source found changed was renamed back. Returning 0 on the first call means
 * the directory is durable in the journal (recovery looks for it); a failure
 * makes the engine remove the source inline instead. */
typedef int (*engine_reclaim_fn)(void *arg, const struct engine_reclaim *r);

/* A directory's identity as the journal recorded it. */
struct engine_id {
    bool known;
    dev_t dev;
    ino_t ino;
};

/* What an operator sets for a move's pace (config io_priority and max_rate,
 * the request's maxRate), owned by the caller: the loop changes it (SIGHUP)
 * while the worker reads it at every step of the copy. */
struct engine_knobs {
    _Atomic uint64_t max_rate; /* bytes/s, 0: none (the adaptive pace only) */
    _Atomic int io_class;      /* enum util_io_class of the worker thread */
};

struct engine_job {
    const char *src; /* resolved oldPath: an existing directory */
    const char *dst; /* resolved newPath: absent or an empty directory */
    /* The allowed roots holding src and dst (resolved; NULL: "/"). The top
     * paths are opened beneath them without following any symlink
     * (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), so a component swapped
     * for a symlink after the checks cannot redirect the move. */
    const char *src_root, *dst_root;
    bool rename; /* same filesystem: rename(2) instead of copying */
    enum verify_mode verify;
    /* Nonzero: stop as soon as possible and roll back; the value is the
     * move_code to end with (cancelled, shutting_down, timeout). Set it with
     * a compare-exchange from 0: the engine swaps in ENGINE_STOP_LOCKED when
     * cleaning begins, after which no stop is taken (the copy is verified and
     * the source is being removed). */
    atomic_int *stop;
    engine_report_fn report;
    engine_phase_fn on_phase; /* may be NULL */
    engine_dst_fn on_dst;     /* may be NULL */
    /* May be NULL: bumped at every entry a rollback removes (a rollback
     * reports nothing else), so the loop can tell a slow one from one stuck
     * on a disk that does not answer. */
    atomic_uint *alive;
    void *arg;
    enum engine_mode mode;
    /* RECLAIM_DEFERRED with move_id set: the source is renamed into its
     * reclaim directory (named after move_id) instead of being deleted, and
     * the result says where; RECLAIM_INLINE (or no move_id): deleted before
     * the engine returns. */
    enum reclaim_mode reclaim;
    const char *move_id;
    engine_reclaim_fn on_reclaim; /* may be NULL (nothing journaled: hostagent move) */
    /* ENGINE_FINISH: the reclaim directory the journal named (dir[0] == 0:
     * none); recovery checks its identity before trusting it. */
    struct engine_reclaim resume_reclaim;
    /* ENGINE_UNDO/ENGINE_FINISH: what the journal recorded. Nothing is
     * removed unless the disk matches it (see docs/design.md, failure
     * model); else the move ends CODE_NEEDS_ATTENTION, nothing touched. */
    enum move_phase resume_phase;
    struct engine_id src_id, dst_id;
    uint64_t files_copied, bytes_copied; /* ENGINE_FINISH: the verified copy */
    /* ENGINE_PREPARE/COMMIT: the identity record of the preparing copy (a
     * file in state_dir; see ident_store.h). PREPARE writes it; COMMIT reads
     * it, and rewrites it when the move goes back to ready. */
    const char *ident_path;
    /* The pace of the copy (engine_pace.c); NULL: no cap, the thread's I/O
     * class left as it is (the adaptive pace runs either way). */
    struct engine_knobs *knobs;
    /* ENGINE_UNDO: the destination as the journal recorded it at acceptance. */
    bool dst_preexisted;
    struct stat dst_orig;
    char *const *made_parents;
    size_t n_made;
};

struct engine_result {
    enum move_code code; /* CODE_NONE on success */
    char error[MOVE_ERROR_MAX];
    /* A success whose cleaning stopped (an entry changed after its copy or
     * could not be removed): the copy is whole, part of the source stays.
     * CODE_NONE when the source is gone (or was renamed) as it should. */
    enum move_code warning_code;
    char warning[MOVE_ERROR_MAX];
    uint64_t bytes_copied, files_copied;
    /* ENGINE_COMMIT: what the final pass copied (entries new or changed
     * since the record, and bytes written for them). */
    uint64_t bytes_synced, files_synced;
    /* ENGINE_COMMIT failed with CODE_SOURCE_CHANGED during syncing or
     * verifying: the copy and its record are kept, the move is ready again. */
    bool back_to_ready;
    /* The source is in this reclaim directory, for the caller to delete. */
    bool reclaim;
    struct engine_reclaim reclaimed;
};

/* Runs the whole move. Returns 0 on success (perhaps with a warning), -1
 * with res->code/error set after rolling back (the source untouched,
 * nothing left under dst). */
int engine_run(const struct engine_job *job, struct engine_result *res);

/* Describes what is at path for logs and answers ("absent", "a directory
 * (device 8:1, inode 12), the one recorded", "a symlink", ...), comparing a
 * directory with want when known. Returns true when path is a directory
 * with want's identity. Only lstat: may run on the loop. */
bool engine_describe(const char *path, const struct engine_id *want, char *buf, size_t size);

/* Maps an errno to the protocol's code. */
enum move_code engine_errno_code(int err);

#endif
