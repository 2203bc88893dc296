/* reclaim.h: deleting reclaim directories after the answer. A deferred
 * reclaim leaves a moved server's old files in ".hostagent-reclaim-<moveId>"
 * (see engine_reclaim.c); the reclaimer deletes those directories one at a
 * time on a thread of its own, at idle I/O priority, so that they never
 * compete with a running copy. Each one is journaled in state_dir/reclaim
 * (resumed after a restart) and confined to its directory: opened beneath its
 * parent without following a symlink, its device and inode checked against
 * the record before anything is deleted, never entering another mount. */
#ifndef HOSTAGENT_RECLAIM_H
#define HOSTAGENT_RECLAIM_H

#include "move_state.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* One reclaim directory to delete. */
struct reclaim_item {
    char move_id[MOVE_ID_MAX + 1];
    char *dir; /* absolute; its last component is PATHS_RECLAIM_PREFIX + move_id */
    dev_t dev;
    ino_t ino;
    uint64_t entries, bytes; /* what it held when it was recorded */
    int result;              /* 0, or the negative errno it ended with */
    struct reclaim_item *next;
};

struct reclaimer {
    uv_loop_t *loop;
    uv_async_t async; /* the thread -> the loop: reclaims ended (`done`) */
    uv_thread_t thread;
    bool thread_started, closing;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct reclaim_item *queue;      /* under lock: waiting, in order */
    struct reclaim_item *cur;        /* under lock: being deleted (the thread's) */
    struct reclaim_item *done;       /* under lock: ended, for the loop */
    bool stopping;                   /* under lock: the thread exits */
    atomic_int stop;                 /* read by the deletion at every entry */
    _Atomic uint64_t bytes, entries; /* left to delete, over every reclaim */
    char *dir;                       /* state_dir/reclaim */
    /* Called on the loop for each ended reclaim (may be NULL). */
    void (*ended)(struct reclaimer *r, const struct reclaim_item *it);
    void *owner;
    void (*close_cb)(struct reclaimer *r);
};

/* Opens state_dir/reclaim (made if missing) and starts the thread.
 * 0 or negative errno; either way reclaimer_close() follows. */
int reclaimer_init(struct reclaimer *r, uv_loop_t *loop, const char *state_dir);

/* Queues the reclaims recorded by an earlier run, except those for which
 * skip(arg, moveId) says true (their move is being recovered and hands its
 * reclaim over when it ends). Unreadable records are logged and set aside. */
void reclaimer_load(struct reclaimer *r, bool (*skip)(void *arg, const char *move_id), void *arg);

/* Records (durably, before it returns) and queues one reclaim. A reclaim of
 * the same moveId already queued or running is not queued twice. 0, or
 * negative errno when it could not be recorded (it is queued all the same:
 * only a restart before it ends would leave the directory behind). */
int reclaimer_add(struct reclaimer *r, const char *move_id, const char *dir, dev_t dev, ino_t ino,
                  uint64_t entries, uint64_t bytes);

/* Reads state_dir/reclaim without changing anything (for `hostagent
 * status` when no daemon answers): cb sees each readable record. 0, or
 * negative errno when the directory cannot be opened (-ENOENT: none yet). */
int reclaim_list(const char *state_dir, void (*cb)(void *arg, const struct reclaim_item *it),
                 void *arg);

/* What is left to delete, over every reclaim (any thread). */
void reclaimer_totals(struct reclaimer *r, uint64_t *bytes, uint64_t *entries);

/* Stops the deletion promptly (at the next entry); records stay, so the
 * next start resumes. Loop thread. */
void reclaimer_stop(struct reclaimer *r);

/* Stops, joins the thread, closes the handle; cb runs once it is closed. */
void reclaimer_close(struct reclaimer *r, void (*cb)(struct reclaimer *r));

/* What a deletion has done so far; the totals (may be NULL) are counted
 * down as it goes, shared with other threads. */
struct reclaim_progress {
    _Atomic uint64_t *bytes, *entries;
    uint64_t bytes_done, entries_done;
};

/* Deletes one reclaim directory here and now (the reclaimer's thread, and
 * `hostagent move` in the foreground): opens dir beneath its parent without
 * following symlinks, checks it is (dev, ino) and named as a reclaim
 * directory, then deletes everything in it, deepest first, never entering a
 * mount; p (may be NULL) counts what it deleted. 0 when it
 * is gone (or was already); -ECANCELED when *stop was set (what is left
 * stays); -EAGAIN when it is gone but that could not be made durable
 * (syncfs failed: the record must stay); -ESTALE when it is not the
 * recorded directory (nothing deleted);
 * another negative errno when something in it could not be deleted (the
 * rest is; why names it). parallel: files are unlinked by the unlink pool's
 * helpers, several at a time (hostagent move, whose user waits for it); else
 * one at a time on the calling thread (the background reclaimer). */
int reclaim_delete(const char *dir, dev_t dev, ino_t ino, atomic_int *stop,
                   struct reclaim_progress *p, bool parallel, char *why, size_t whysz);

#endif
