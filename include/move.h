/* move.h: one accepted move on the event loop: its worker thread, its
 * progress ring and async wake-up, the frame throttle and its phases. */
#ifndef HOSTAGENT_MOVE_H
#define HOSTAGENT_MOVE_H

#include "config.h"
#include "journal.h"
#include "move_engine.h"
#include "move_state.h"
#include "paths.h"
#include "progress_ring.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

struct move;

/* Called on the loop thread. */
struct move_ops {
    /* A move.progress frame is due; st is the state to send (seq set).
     * intermediate: a throttled in-phase frame a newer one may replace;
     * false for phase changes and the terminal frame (never merged). */
    void (*frame)(struct move *m, const struct move_state *st, bool intermediate);
    /* The terminal frame was sent; the owner answers the request and then
     * calls move_close() -- unless move_is_running() still says true: the
     * move was ended without its worker, stuck in the kernel (see
     * move_abandon below); then the owner keeps it until ops->released. */
    void (*ended)(struct move *m);
    /* The worker of a move that ended without it came back (its rollback is
     * done); the owner calls move_close(). */
    void (*released)(struct move *m);
    /* A prepared move entered phase ready: its preparation succeeded (code
     * CODE_NONE), or a commit met a source still changing and the move is
     * ready again (code and error: that commit's failure). No frame was
     * sent: the owner records the state, then calls move_announce() and
     * answers. */
    void (*ready)(struct move *m, enum move_code code, const char *error);
};

/* A move is made from its journal record: its identity, the paths as
 * requested (shown in MoveState) and resolved (what the engine works on), the
 * reply subject, the method and verify mode, and for a resumed move where it
 * was left; the parameters add only what the record does not hold. */
struct move_params {
    /* The owner's; it outlives the move's end. The worker rewrites it at each
     * phase change (when journal is set), the owner before and after. */
    struct journal_rec *jr;
    const struct journal *journal; /* NULL: the record is never written */
    /* Where its records are written (the worker's and the loop's), in the
     * order they are made; required with journal. */
    struct journal_writer *writer;
    const char *src_root, *dst_root; /* the allowed roots holding src, dst (NULL: "/") */
    uint64_t progress_interval_ms;
    uint64_t move_timeout_ms;  /* 0: none; counted from leaving the queue */
    uint64_t stall_timeout_ms; /* 0: none; no byte, entry or phase progress */
    /* ENGINE_UNDO/ENGINE_FINISH: a move found unfinished in the journal at
     * start; it resumes from jr's phase, counters and seq. */
    enum engine_mode mode;
    /* A move that has already ended (jr terminal) and only needs its
     * rollback finished: no frames, ops->released at the end. */
    bool silent;
    /* A prepared move (jr->prepared; mode ENGINE_PREPARE for a new one):
     * found in phase ready at start when jr says so (it rests, no worker). */
    const char *ident_path;  /* its identity record in state_dir */
    uint64_t prepare_ttl_ms; /* 0: it may rest in ready for ever */
    /* How the source goes once copied (the config's, when the move was
     * made): deferred moves end with the source in a reclaim directory,
     * named in jr->reclaim, for the owner to delete after the answer. */
    enum reclaim_mode reclaim;
    /* The copy's pace (engine_knobs): the request's maxRate and the
     * config's max_rate in bytes/s (0: none; the lower of the two caps the
     * copy), and the worker's I/O class. */
    uint64_t max_rate_asked, max_rate;
    enum io_priority io_priority;
};

#define MOVE_RATE_SAMPLES 24
#define MOVE_LOG_INTERVAL_MS 5000
#define MOVE_MIN_FRAME_GAP_MS 50
#define MOVE_FRAME_ENTRIES 100
#define MOVE_FRAME_BYTES (100ull << 20)
/* A stopped move whose worker shows no sign of life this long after the stop
 * (it is stuck in the kernel on a disk that does not answer) is ended by the
 * loop without it. */
#define MOVE_STUCK_GRACE_MS 2000u

struct move_work;

struct move {
    struct move_state st;  /* the loop's view: what the next frame shows */
    const char *src, *dst; /* resolved: the worker block's (they never change) */
    uint64_t progress_interval_ms;
    const struct move_ops *ops;
    void *owner;
    struct move *next; /* owner's list */

    uv_loop_t *loop;
    uv_async_t async; /* worker -> loop: "the ring has items" */
    uv_timer_t timer; /* a throttled frame that is due later */
    uv_timer_t limit; /* once a second while running: move_timeout, stall_timeout */
    bool thread_running;
    /* What the worker shares with the loop (ring, stop word, seq, journal
     * record, thread, the job's inputs): its own block (move_work.h), so that
     * a worker stuck in the kernel can outlive this struct. */
    struct move_work *work;
    bool abandoned;                  /* ended by the loop while the worker is stuck */
    bool abandon_waits;              /* logged: the stuck worker is writing the journal record */
    enum move_phase abandoned_phase; /* the phase it was in then */
    bool silent;
    /* Ended with its source renamed into jr->reclaim's directory: the owner
     * deletes it after the answer. */
    bool reclaim_ready;
    bool owns_jr;                     /* the owner's flag: jr outlived its history entry */
    void *check;                      /* the owner's: a path check under way before it starts */
    struct path_ids src_ids, dst_ids; /* the owner's: directories along src and dst */
    uint64_t stop_asked_ms;           /* when a stop was taken (0: none) */
    uint64_t last_life_ms;            /* the worker's last sign of life */
    unsigned last_beat;

    /* Loop-side throttle and rate state. */
    uint64_t mono_started;
    uint64_t mono_run_started;     /* left the queue (0 while queued) */
    char stop_why[MOVE_ERROR_MAX]; /* the error text of a requested stop */
    struct journal_rec *jr;        /* the owner's, until it takes it at the end */
    struct journal_writer *writer; /* the owner's (move_params) */
    uint64_t max_rate_asked;       /* the request's maxRate (0: none) */
    enum engine_mode mode;
    uint64_t move_timeout_ms, stall_timeout_ms;
    /* A prepared move: one worker per step (prepare, commit, discard); in
     * between it rests in ready without one. move_timeout counts the steps'
     * time only (worked_ms: the steps before the current one). */
    bool prepared, resting;
    uint64_t prepare_ttl_ms, ready_at_wall_ms;
    uint64_t worked_ms;
    uint64_t commit_mono_ms;             /* the owner's: when the current commit arrived */
    uint64_t bytes_synced, files_synced; /* the last commit's final pass */
    bool ready_held;                     /* the owner's: ready not yet recorded (see agent.c) */
    /* The owner's: a record of its own for this move is being written (its
     * ready, a commit): requests naming the move wait for it. */
    bool recording;
    uint64_t last_progress_ms; /* last time a counter or the phase moved */
    uint64_t last_frame_ms, last_log_ms, phase_started_ms;
    uint64_t entries, last_frame_entries; /* entries processed in this phase */
    uint64_t last_frame_bytes;
    bool dirty;
    struct {
        uint64_t t, bytes;
    } samples[MOVE_RATE_SAMPLES];
    unsigned n_samples, sample_pos;

    int open_handles;
    void (*close_cb)(struct move *m);
};

/* Sets up the move in phase queued (no frame yet). 0 or negative errno;
 * either way the move is then closed with move_close() (its callback frees
 * it): a failure may leave handles open. */
int move_init(struct move *m, uv_loop_t *loop, const struct move_params *p,
              const struct move_ops *ops, void *owner);

/* A SIGHUP's new pace for a move (the config's max_rate, still under the
 * request's maxRate, and the I/O class): its running copy takes it at its
 * next step (a move not started yet, when it starts). */
void move_set_pace(struct move *m, uint64_t max_rate, enum io_priority io_priority);

/* Sends the "queued" frame: the move waits for a free slot. */
void move_queue(struct move *m);

/* Starts the worker thread. 0 or negative errno (the move then ends in
 * error at once through ops->ended). */
int move_run(struct move *m);

/* Asks a running move to stop with code (cancelled, shutting_down, timeout)
 * and why (its error text); ends a queued one at once. A prepared move
 * resting in ready is discarded: a worker removes its copy, then it ends
 * with code (at once for a rename: nothing was made). Returns 0 when taken
 * (or a stop is already under way), -EBUSY when the move is cleaning (its
 * copy is whole: it will complete), -ENOENT after its end. */
int move_stop(struct move *m, enum move_code code, const char *why);

/* Sends a frame of the move's state now (a phase change: never merged):
 * the owner's announcement of a move resumed from the journal, or of one
 * that entered ready (ops->ready). */
void move_announce(struct move *m);

/* A prepared move resting in ready, no worker. */
bool move_is_resting(const struct move *m);

/* Starts the commit of a move resting in ready: a worker in ENGINE_COMMIT
 * mode, at once (no slot needed). 0, or negative errno (the move then ended
 * in error through ops->ended). */
int move_commit(struct move *m);

/* The worker in this step counts against max_concurrent_moves: a move's
 * copy (or a resumed rollback), not a commit or a discard. */
bool move_holds_slot(const struct move *m);

/* Changes the move's journal record with fn (under the worker block's
 * lock) and queues its write on the journal writer, safe while a worker
 * runs: queued under that lock, it is written after every record the worker
 * queued before and before any it queues after; the loop never waits for
 * the disk. 0 once queued; -ENOENT when the record is no longer the move's
 * to write. */
int move_record_update(struct move *m, void (*fn)(struct journal_rec *jr, void *arg), void *arg);

/* The worker thread exists (running, or stuck after the move ended). */
bool move_is_running(const struct move *m);

/* The destination directory's device and inode, once the worker has opened
 * it (a move that creates newPath); false before. Loop thread, lock-free. */
bool move_dst_identity(const struct move *m, dev_t *dev, ino_t *ino);

/* How long the worker has shown no sign of life (a report, a removed entry),
 * or 0 when it does not run. */
uint64_t move_quiet_ms(const struct move *m, uint64_t now);

/* At exit: lets go of a worker that does not come back. It never touches
 * the loop or the journal again; its memory is its own. Then move_close(). */
void move_detach(struct move *m);

/* Closes the handles; cb runs once they are all closed (then free m). Only
 * after ops->ended, or after move_init failed. */
void move_close(struct move *m, void (*cb)(struct move *m));

/* Throttle rule of the protocol, as a pure function for the tests: the
 * earliest monotonic time at which a frame with the pending changes may go. */
uint64_t move_frame_due(uint64_t last_frame_ms, uint64_t entries_delta, uint64_t bytes_delta,
                        uint64_t progress_interval_ms);

#endif
