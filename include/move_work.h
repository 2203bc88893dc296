/* move_work.h: the thread boundary of a move: everything its worker thread
 * and the event loop share, in one block. Only move.c (the loop's side) and
 * move_worker.c (the worker's side) include it. */
#ifndef HOSTAGENT_MOVE_WORK_H
#define HOSTAGENT_MOVE_WORK_H

#include "journal.h"
#include "move_engine.h"
#include "progress_ring.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* The loop and the worker each hold a reference; a worker stuck in the
 * kernel may outlive its move (and the loop), so it reaches nothing of the
 * loop's except through `async` and `jr`, and those only under `lock` while
 * the loop has not let go of them. Everything else of a move (its MoveState,
 * the throttle, the timers) is the loop's alone, in struct move.
 *
 * `lock` is never held across a disk write: the loop takes it on its
 * stuck-worker paths (move_abandon, move_detach), which must not wait for a
 * state_dir that is slow or hung. Every record of the move, the worker's and
 * the loop's, is written by the one journal writer thread (journal_writer.h):
 * its text is taken under the lock (journal_format) and queued there, so
 * the writer gets the move's records in the order they were made; the
 * worker then waits for its write with the lock released while `rec_busy`
 * says so, and the loop takes the record over (`no_record`) only when no
 * such wait is under way (a worker stuck in its write is not ended beside
 * it: see docs/design.md, failure model).
 *
 *   field            written by                        read by
 *   ---------------  --------------------------------  --------------------------------
 *   job inputs       loop, before each thread starts   worker (engine_job); loop (src,
 *   (src .. bytes)   (a prepared move runs one thread  dst for the busy checks)
 *                    per step: prepare, commit,
 *                    discard), never while one runs
 *   ring             loop (reset before each thread)   --
 *   thread           loop (create)                     loop (join, detach)
 *   ring             worker (push)                     loop (pop, take_kept): SPSC
 *   stop             loop (CAS from 0: a stop code)    worker (between chunks, entries)
 *                    worker (CAS to ENGINE_STOP_LOCKED
 *                    when cleaning begins)
 *   seq_sent         loop (each frame)                 worker (into its journal writes)
 *   beat             worker (each report, removal)     loop (signs of life)
 *   dst_known/_dev/  worker (once newPath is open)     loop (busy check by identity)
 *   _ino
 *   knobs            loop (at creation, SIGHUP:         worker (each step of the copy)
 *                    atomics)
 *   lock             --                                --
 *   refs             both, under lock                  both, under lock
 *   detached         loop, under lock                  worker, under lock (wake-ups)
 *   no_record        loop, under lock, !rec_busy       worker, under lock (journal)
 *   rec_busy         worker, under lock (its write     loop, under lock (move_abandon)
 *                    queued and not yet done)
 *   moves_dir,       loop, at creation                 worker (into the jobs it queues)
 *   writer
 *   async            loop (before the thread starts)   worker, under lock, !detached
 *   jr, journal      worker, under lock, !no_record;   loop after the worker is gone or
 *   (jr->reclaim     loop before start and at the end   no_record is set; the writer
 *   included)                                          under lock (journal_format)
 */
struct move_work {
    pthread_mutex_t lock;
    int refs;
    bool detached;
    bool no_record;
    bool rec_busy;
    char *moves_dir;          /* the journal's moves directory, copied */
    struct jw_shared *writer; /* the journal writer's block (a reference of its own) */
    uv_async_t *async;
    uv_thread_t thread;
    struct journal_rec *jr;
    const struct journal *journal;
    struct progress_ring ring;
    atomic_int stop;           /* move_code to stop with, 0 = run */
    _Atomic uint64_t seq_sent; /* the loop's seq, for the worker's journal writes */
    atomic_uint beat;          /* a sign of life: every report, every removed entry */
    /* Written by the worker before its result item, read by the loop after
     * the join: the engine left the source in jr->reclaim's directory. */
    bool reclaim_ready;
    atomic_bool dst_known;
    _Atomic uint64_t dst_dev, dst_ino;
    struct engine_knobs knobs; /* the copy's pace: cap and I/O class */

    /* The job's inputs: copies (the worker may outlive the move and its
     * record), taken from the move's journal record at move_init. */
    char *src, *dst, *src_root, *dst_root;
    char *ident_path; /* a prepared move's identity record (NULL otherwise) */
    char **made_parents;
    size_t n_made;
    bool dst_preexisted;
    struct stat dst_orig;
    bool rename;
    enum verify_mode verify;
    enum engine_mode mode;
    enum reclaim_mode reclaim;
    char *move_id;
    struct engine_reclaim resume_reclaim; /* ENGINE_FINISH: jr's reclaim directory */
    /* A resumed move: where the journal left it (see engine_job). */
    enum move_phase resume_phase;
    struct journal_id src_id, dst_id;
    struct move_counters resumed;
};

/* A new block with one reference (the loop's), its lock, ring and the
 * worker's atomics initialised; the job's inputs are left to the loop. */
struct move_work *move_worker_alloc(void);

/* Drops one reference (the loop's or the worker's); the last frees the block. */
void move_worker_unref(struct move_work *w);

/* The worker thread's entry (uv_thread_create), arg the block: runs the
 * engine's job, pushes its end into the ring, wakes the loop unless it let
 * go, and drops the worker's reference. */
void move_worker_main(void *arg);

#endif
