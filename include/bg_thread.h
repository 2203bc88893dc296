/* bg_thread.h: a loop-owned worker thread that may outlive the loop. The
 * loop's object (the journal writer, the reclaimer) starts one thread of its
 * own and shares with it a reference-counted block (struct bg_shared,
 * embedded first in the owner's block): its lock, a monotonic condition
 * variable, the thread's sign of life, its exit, and the loop's async
 * handle, through which alone the thread wakes the loop, under the lock,
 * until the loop lets go. At close the loop waits a bounded time for the
 * thread's exit, then joins it, or, when it has not exited (stuck in the
 * kernel on a disk that does not answer), detaches it: the thread keeps its
 * own reference and finds everything it uses; the last reference frees the
 * block. What the thread does (its queue, its work) is its owner's. */
#ifndef HOSTAGENT_BG_THREAD_H
#define HOSTAGENT_BG_THREAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* The part of the shared block every such thread has. The owner's block
 * starts with it (bg_shared_unref frees the block through it). */
struct bg_shared {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* monotonic: the thread waits for work, close for its exit */
    int refs;            /* under lock */
    bool exited;         /* under lock: the thread has left its loop */
    bool detached;       /* under lock: the loop let go (no wake-ups) */
    uv_async_t *async;   /* the loop's, used only under lock and !detached */
    atomic_uint beat;    /* a sign of life (the owner's: its work; here: the exit) */
    /* Called by the last reference, before the lock and the block go: frees
     * what the owner's block holds. */
    void (*release)(struct bg_shared *s);
};

/* The loop's side, embedded in the owner. */
struct bg_thread {
    uv_async_t async; /* the thread -> the loop */
    uv_thread_t thread;
    bool started;
    unsigned last_beat;    /* loop: the thread's sign of life as last seen */
    uint64_t last_life_ms; /* loop: when it last changed */
};

/* Its lock, its cond (monotonic: the bounded wait at close ignores clock
 * changes), one reference (the loop's). */
void bg_shared_init(struct bg_shared *s, void (*release)(struct bg_shared *s));

/* One more reference, for another thread that uses the block. */
void bg_shared_ref(struct bg_shared *s);

/* Drops one reference (any thread); the last calls release, then frees the
 * block (s is its start). */
void bg_shared_unref(struct bg_shared *s);

/* Drops one reference counted in *refs under lock: true when it was the
 * last (the caller frees). For blocks with a life of their own (a move's). */
bool bg_unref_last(pthread_mutex_t *lock, int *refs);

/* Wakes the loop, unless it let go of the thread. Under s->lock. */
void bg_shared_wake(struct bg_shared *s);

/* The thread's last act, with s->lock held: exited (a sign of life), tells
 * whoever waits and the loop, unlocks and drops the thread's reference. */
void bg_thread_exit(struct bg_shared *s);

/* Makes the handle (on_async, its data `data`) and starts entry(s) on a
 * thread of its own, holding a reference of its own. Not the libuv pool: a
 * hung disk would hold one of its threads. 0 or negative errno; either way
 * the owner's close follows. */
int bg_thread_start(struct bg_thread *t, struct bg_shared *s, uv_loop_t *loop, uv_async_cb on_async,
                    void *data, void (*entry)(void *arg));

/* How long the thread has shown no sign of life while `working`, as seen by
 * the loop's calls; 0 when not working (the beat is taken as seen). Loop. */
uint64_t bg_thread_quiet_ms(struct bg_thread *t, struct bg_shared *s, bool working, uint64_t now);

/* With s->lock held, once the thread was told to exit: waits up to wait_ms
 * for its exit, then lets go of it (no wake-up of the loop from here on).
 * Whether it exited (true when it never started). */
bool bg_thread_let_go(struct bg_thread *t, struct bg_shared *s, uint64_t wait_ms);

/* After bg_thread_let_go, without the lock: joins the thread when it
 * exited, else detaches it (it may never return; it holds its own
 * reference) and logs left_behind as an error. */
void bg_thread_join_or_detach(struct bg_thread *t, bool exited, const char *left_behind);

/* Closes the handle (its data `data`); on_closed runs once it is closed,
 * here and now when the handle was never made (a failed start). */
void bg_thread_close_handle(struct bg_thread *t, void *data, uv_close_cb on_closed);

#endif
