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

#include "journal_writer.h"
#include "move_state.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* A record's name in state_dir/reclaim without ".json": moveId "@" the
 * reclaim directory's device "-" inode, so that two reclaims of moves with
 * one moveId (a manager may use an id again once the agent forgot it) never
 * share a record; records written before (named by the moveId alone) are
 * read as well. */
#define RECLAIM_KEY_MAX (MOVE_ID_MAX + 48)

/* One reclaim directory to delete. */
struct reclaim_item {
    char move_id[MOVE_ID_MAX + 1];
    char key[RECLAIM_KEY_MAX + 1]; /* its record: state_dir/reclaim/<key>.json */
    char *dir; /* absolute; its last component is one of move_id's reclaim names */
    dev_t dev;
    ino_t ino;
    uint64_t entries, bytes; /* what it held when it was recorded */
    int result;              /* 0, or the negative errno it ended with */
    /* Added again while it ran (see reclaimer_add): it runs once more, with
     * these counts, and its record stays until then. */
    bool again;
    uint64_t again_entries, again_bytes;
    struct reclaim_item *next;
};

/* What the loop and the thread share (reclaim.c): a reference-counted block
 * of its own (bg_thread.h), so that a thread left behind at exit never
 * touches the loop's memory. */
struct reclaim_shared;

/* A reclaim being recorded on the journal writer: the loop's, until its
 * record is written; then it is queued. */
struct reclaim_adding {
    struct reclaimer *r;
    struct reclaim_item *it;
    struct reclaim_adding *next;
};

struct reclaimer {
    uv_loop_t *loop;
    struct bg_thread bg; /* the thread; its handle: reclaims ended, the thread exited */
    bool exit_told;
    struct reclaim_shared *s;
    /* Where its records are written from the loop (reclaimer_add): the
     * owner's writer, set after reclaimer_init; NULL: here and now. It is
     * closed before the reclaimer. */
    struct journal_writer *writer;
    struct reclaim_adding *adding; /* loop: being recorded, in no order */
    /* Called on the loop for each ended reclaim (may be NULL). */
    void (*ended)(struct reclaimer *r, const struct reclaim_item *it);
    /* Called on the loop once the thread has exited after a stop (may be NULL). */
    void (*exited)(struct reclaimer *r);
    void *owner;
    void (*close_cb)(struct reclaimer *r);
};

/* Opens state_dir/reclaim (made if missing) and starts the thread.
 * 0 or negative errno; either way reclaimer_close() follows. */
int reclaimer_init(struct reclaimer *r, uv_loop_t *loop, const char *state_dir);

/* Queues the reclaims recorded by an earlier run (both record formats),
 * except those for which skip(arg, it) says true (the reclaim directory a
 * move being recovered named: it hands its reclaim over when it ends).
 * Unreadable records are logged and set aside; a second record of one
 * directory (the old format beside the new one) is removed. */
void reclaimer_load(struct reclaimer *r, bool (*skip)(void *arg, const struct reclaim_item *it),
                    void *arg);

/* Records (durably) and queues one reclaim: its record is written on
 * r->writer, and the reclaim is queued once it is (records queued on that
 * writer after this one are written after it); without a writer, here and
 * now. The same directory (path, device and inode) already recorded or
 * queued is not queued twice; one being deleted right now is deleted once
 * more after it (the same identity can only be a directory made since). 0,
 * or (without a writer) negative errno when it could not be recorded (it is
 * queued all the same: only a restart before it ends would leave the
 * directory behind). Its numbers count in reclaimer_totals at once. */
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

/* The thread has not exited yet (loop). */
bool reclaimer_running(const struct reclaimer *r);

/* How long the thread has shown no sign of life (an entry deleted, its
 * exit), as seen by the loop's calls to this function; 0 when it has
 * exited. Loop thread. */
uint64_t reclaimer_quiet_ms(struct reclaimer *r, uint64_t now);

/* Stops, waits up to wait_ms for the thread to exit, then joins it, or,
 * when it has not exited (stuck in the kernel on a disk that does not
 * answer), detaches it: it keeps its own reference to what it uses, never
 * wakes the loop again, and its records stay for the next start. Closes
 * the handle; cb runs once it is closed. */
void reclaimer_close(struct reclaimer *r, uint64_t wait_ms, void (*cb)(struct reclaimer *r));

/* What a deletion has done so far; the totals (may be NULL) are counted
 * down as it goes, shared with other threads. */
struct reclaim_progress {
    _Atomic uint64_t *bytes, *entries;
    atomic_uint *beat; /* counted up at every entry deleted (may be NULL) */
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
