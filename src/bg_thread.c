/* bg_thread.c: a loop-owned worker thread that may outlive the loop (see
 * bg_thread.h): the shared block's references, lock, cond, sign of life
 * and wake-ups, the start, the bounded wait for the exit, the join or the
 * detach, and the close of the handle. */
#include "bg_thread.h"
#include "log.h"
#include "util.h"

#include <stdlib.h>

void bg_shared_init(struct bg_shared *s, void (*release)(struct bg_shared *s))
{
    pthread_mutex_init(&s->lock, NULL);
    util_cond_init_monotonic(&s->cond);
    s->refs = 1;
    s->exited = false;
    s->detached = false;
    s->async = NULL;
    atomic_init(&s->beat, 0);
    s->release = release;
}

void bg_shared_ref(struct bg_shared *s)
{
    pthread_mutex_lock(&s->lock);
    s->refs++;
    pthread_mutex_unlock(&s->lock);
}

bool bg_unref_last(pthread_mutex_t *lock, int *refs)
{
    bool last;
    pthread_mutex_lock(lock);
    last = --*refs == 0;
    pthread_mutex_unlock(lock);
    return last;
}

void bg_shared_unref(struct bg_shared *s)
{
    if (!bg_unref_last(&s->lock, &s->refs))
        return;
    /* Nobody is left to use what it holds. */
    if (s->release)
        s->release(s);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void bg_shared_wake(struct bg_shared *s)
{
    if (!s->detached && s->async)
        uv_async_send(s->async);
}

void bg_thread_exit(struct bg_shared *s)
{
    s->exited = true;
    atomic_fetch_add(&s->beat, 1);
    pthread_cond_broadcast(&s->cond);
    bg_shared_wake(s);
    pthread_mutex_unlock(&s->lock);
    bg_shared_unref(s);
}

int bg_thread_start(struct bg_thread *t, struct bg_shared *s, uv_loop_t *loop, uv_async_cb on_async,
                    void *data, void (*entry)(void *arg))
{
    int rc = uv_async_init(loop, &t->async, on_async);
    if (rc != 0)
        return rc;
    t->async.data = data;
    s->async = &t->async;
    s->refs++; /* the thread's (it does not run yet: no lock needed) */
    rc = uv_thread_create(&t->thread, entry, s);
    if (rc != 0) {
        s->refs--;
        return rc;
    }
    t->started = true;
    t->last_life_ms = util_mono_ms();
    return 0;
}

uint64_t bg_thread_quiet_ms(struct bg_thread *t, struct bg_shared *s, bool working, uint64_t now)
{
    unsigned beat = atomic_load(&s->beat);
    if (!working || beat != t->last_beat) {
        t->last_beat = beat;
        t->last_life_ms = now;
        return 0;
    }
    return now > t->last_life_ms ? now - t->last_life_ms : 0;
}

bool bg_thread_let_go(struct bg_thread *t, struct bg_shared *s, uint64_t wait_ms)
{
    bool exited = true;
    if (t->started)
        exited = util_cond_wait_flag(&s->cond, &s->lock, &s->exited, wait_ms);
    s->detached = true; /* no wake-up of the loop from here on */
    s->async = NULL;
    return exited;
}

void bg_thread_join_or_detach(struct bg_thread *t, bool exited, const char *left_behind)
{
    if (t->started && exited) {
        uv_thread_join(&t->thread);
    } else if (t->started) {
        /* Never joined: it may never return. It holds its own reference. */
        pthread_detach(t->thread);
        LOG0(LOG_ERROR, left_behind);
    }
    t->started = false;
}

void bg_thread_close_handle(struct bg_thread *t, void *data, uv_close_cb on_closed)
{
    t->async.data = data;
    if (!t->async.loop) { /* the start failed before the handle */
        on_closed((uv_handle_t *)&t->async);
        return;
    }
    uv_close((uv_handle_t *)&t->async, on_closed);
}
