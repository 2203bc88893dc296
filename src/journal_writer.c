/* journal_writer.c: the thread that writes state_dir's records, one job at
 * a time in queue order, and hands their results back to the loop (see
 * journal_writer.h). */
#include "journal_writer.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct jw_job {
    jw_run_fn run;
    jw_free_fn drop;
    void *data;
    jw_done_fn done; /* a loop job's (NULL: a posted job, its poster waits) */
    void *arg;
    bool finished; /* under lock */
    int rc;        /* under lock, once finished */
    struct jw_job *next;
};

/* The block the loop and the thread share (and the workers that post):
 * each holds a reference; the last one frees it. */
struct jw_shared {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* the thread waits for work, posters for their jobs, close for the exit */
    int refs;            /* under lock */
    bool closing;        /* under lock: write what is queued, then exit */
    bool exited;         /* under lock */
    bool detached;       /* under lock: the loop let go (no wake-ups, no done list) */
    uv_async_t *async;   /* the loop's, used only under lock and !detached */
    struct jw_job *queue, **queue_tail; /* under lock, in order */
    struct jw_job *cur;                 /* under lock: being run */
    struct jw_job *done, **done_tail;   /* under lock: loop jobs ran, for the loop */
    atomic_uint beat;                   /* a sign of life: every job done, the exit */
};

static void job_free(struct jw_job *j)
{
    if (j->drop && j->data)
        j->drop(j->data);
    free(j);
}

static void shared_unref(struct jw_shared *s)
{
    bool last;
    pthread_mutex_lock(&s->lock);
    last = --s->refs == 0;
    pthread_mutex_unlock(&s->lock);
    if (!last)
        return;
    /* Nobody is left to run or wait for these. */
    while (s->queue) {
        struct jw_job *j = s->queue;
        s->queue = j->next;
        job_free(j);
    }
    while (s->done) {
        struct jw_job *j = s->done;
        s->done = j->next;
        job_free(j);
    }
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Appends j to the queue and wakes the thread. Under lock. */
static void enqueue(struct jw_shared *s, struct jw_job *j)
{
    j->next = NULL;
    *s->queue_tail = j;
    s->queue_tail = &j->next;
    pthread_cond_broadcast(&s->cond);
}

static struct jw_job *dequeue(struct jw_shared *s)
{
    struct jw_job *j = s->queue;
    s->queue = j->next;
    if (!s->queue)
        s->queue_tail = &s->queue;
    j->next = NULL;
    return j;
}

static void writer_thread(void *arg)
{
    struct jw_shared *s = arg;
    (void)pthread_setname_np(pthread_self(), "ha-journal");
    pthread_mutex_lock(&s->lock);
    for (;;) {
        struct jw_job *j;
        int rc;
        while (!s->queue && !s->closing)
            pthread_cond_wait(&s->cond, &s->lock);
        if (!s->queue)
            break; /* closing, and everything queued is written */
        j = s->cur = dequeue(s);
        pthread_mutex_unlock(&s->lock);
        rc = j->run(j->data);
        if (j->drop)
            j->drop(j->data);
        j->data = NULL;
        atomic_fetch_add(&s->beat, 1);
        pthread_mutex_lock(&s->lock);
        s->cur = NULL;
        j->rc = rc;
        j->finished = true;
        if (!j->done) {
            pthread_cond_broadcast(&s->cond); /* its poster frees it */
        } else if (s->detached) {
            free(j); /* its done was called (-ECANCELED) when the loop let go */
        } else {
            *s->done_tail = j;
            s->done_tail = &j->next;
            uv_async_send(s->async);
        }
    }
    s->exited = true;
    atomic_fetch_add(&s->beat, 1);
    pthread_cond_broadcast(&s->cond);
    if (!s->detached)
        uv_async_send(s->async);
    pthread_mutex_unlock(&s->lock);
    shared_unref(s);
}

/* --- the loop's side ------------------------------------------------------------ */

static void on_async(uv_async_t *h)
{
    struct journal_writer *w = h->data;
    struct jw_job *list, *next;
    pthread_mutex_lock(&w->s->lock);
    list = w->s->done;
    w->s->done = NULL;
    w->s->done_tail = &w->s->done;
    pthread_mutex_unlock(&w->s->lock);
    for (; list; list = next) {
        next = list->next;
        w->pending--;
        list->done(list->arg, list->rc);
        free(list);
    }
    if (!w->pending && w->idle)
        w->idle(w);
}

int journal_writer_init(struct journal_writer *w, uv_loop_t *loop)
{
    struct jw_shared *s = xcalloc(1, sizeof *s);
    int rc;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->s = s;
    pthread_mutex_init(&s->lock, NULL);
    /* Monotonic: journal_writer_close's bounded wait ignores clock changes. */
    util_cond_init_monotonic(&s->cond);
    s->refs = 1;
    s->queue_tail = &s->queue;
    s->done_tail = &s->done;
    atomic_init(&s->beat, 0);
    rc = uv_async_init(loop, &w->async, on_async);
    if (rc != 0)
        return rc;
    w->async.data = w;
    s->async = &w->async;
    s->refs++; /* the thread's */
    /* Not the libuv pool: a hung state_dir would hold one of its threads. */
    rc = uv_thread_create(&w->thread, writer_thread, s);
    if (rc != 0) {
        s->refs--;
        return rc;
    }
    w->thread_started = true;
    w->last_life_ms = util_mono_ms();
    return 0;
}

int journal_writer_submit(struct journal_writer *w, jw_run_fn run, jw_free_fn drop, void *data,
                          jw_done_fn done, void *arg)
{
    struct jw_job *j;
    if (!w) {
        int rc = run(data);
        if (drop)
            drop(data);
        done(arg, rc);
        return rc;
    }
    j = xcalloc(1, sizeof *j);
    *j = (struct jw_job){.run = run, .drop = drop, .data = data, .done = done, .arg = arg};
    w->pending++;
    pthread_mutex_lock(&w->s->lock);
    if (!w->thread_started || w->s->closing) {
        /* Never runs: answered as after a close. */
        pthread_mutex_unlock(&w->s->lock);
        w->pending--;
        done(arg, -ECANCELED);
        job_free(j);
        return 0;
    }
    enqueue(w->s, j);
    pthread_mutex_unlock(&w->s->lock);
    return 0;
}

bool journal_writer_busy(const struct journal_writer *w)
{
    return w->pending > 0;
}

struct jw_shared *journal_writer_share(struct journal_writer *w)
{
    if (!w)
        return NULL;
    pthread_mutex_lock(&w->s->lock);
    w->s->refs++;
    pthread_mutex_unlock(&w->s->lock);
    return w->s;
}

void journal_writer_unshare(struct jw_shared *s)
{
    if (s)
        shared_unref(s);
}

struct jw_job *journal_writer_post(struct jw_shared *s, jw_run_fn run, jw_free_fn drop, void *data)
{
    struct jw_job *j = xcalloc(1, sizeof *j);
    *j = (struct jw_job){.run = run, .drop = drop, .data = data};
    pthread_mutex_lock(&s->lock);
    if (s->closing || s->exited) {
        pthread_mutex_unlock(&s->lock);
        job_free(j);
        return NULL;
    }
    enqueue(s, j);
    pthread_mutex_unlock(&s->lock);
    return j;
}

int journal_writer_wait(struct jw_shared *s, struct jw_job *job)
{
    int rc;
    if (!job)
        return -ECANCELED;
    pthread_mutex_lock(&s->lock);
    while (!job->finished)
        pthread_cond_wait(&s->cond, &s->lock);
    rc = job->rc;
    pthread_mutex_unlock(&s->lock);
    job_free(job);
    return rc;
}

uint64_t journal_writer_quiet_ms(struct journal_writer *w, uint64_t now)
{
    unsigned beat;
    bool working;
    if (!w->thread_started)
        return 0;
    pthread_mutex_lock(&w->s->lock);
    working = !w->s->exited && (w->s->queue || w->s->cur);
    pthread_mutex_unlock(&w->s->lock);
    beat = atomic_load(&w->s->beat);
    if (!working || beat != w->last_beat) {
        w->last_beat = beat;
        w->last_life_ms = now;
        return 0;
    }
    return now > w->last_life_ms ? now - w->last_life_ms : 0;
}

static void on_closed(uv_handle_t *h)
{
    struct journal_writer *w = h->data;
    shared_unref(w->s);
    w->s = NULL;
}

void journal_writer_close(struct journal_writer *w, uint64_t wait_ms)
{
    struct jw_shared *s = w->s;
    struct jw_job *left = NULL, **tail = &left, *j;
    jw_done_fn cur_done = NULL;
    void *cur_arg = NULL;
    bool exited = true;
    pthread_mutex_lock(&s->lock);
    s->closing = true;
    pthread_cond_broadcast(&s->cond);
    if (w->thread_started)
        exited = util_cond_wait_flag(&s->cond, &s->lock, &s->exited, wait_ms);
    s->detached = true; /* no wake-up of the loop from here on */
    s->async = NULL;
    /* What the loop still owes a done: jobs ran, and (left behind) jobs
     * that never will; a posted one's poster is told it never ran. */
    *tail = s->done;
    while (*tail)
        tail = &(*tail)->next;
    s->done = NULL;
    s->done_tail = &s->done;
    while (s->queue) {
        j = dequeue(s);
        if (j->done) {
            *tail = j;
            tail = &j->next;
        } else {
            j->rc = -ECANCELED;
            j->finished = true;
        }
    }
    pthread_cond_broadcast(&s->cond);
    if (s->cur && s->cur->done) { /* being run by a thread left behind: it frees it */
        cur_done = s->cur->done;
        cur_arg = s->cur->arg;
    }
    pthread_mutex_unlock(&s->lock);
    if (w->thread_started && exited) {
        uv_thread_join(&w->thread);
    } else if (w->thread_started) {
        /* Never joined: it may never return. It holds its own reference. */
        pthread_detach(w->thread);
        LOG0(LOG_ERROR, "left the journal writer thread behind, stuck on a state_dir that does "
                        "not answer; what it had not written is settled at the next start");
    }
    w->thread_started = false;
    for (struct jw_job *next; left; left = next) {
        next = left->next;
        w->pending--;
        left->done(left->arg, -ECANCELED);
        job_free(left);
    }
    if (cur_done) {
        w->pending--;
        cur_done(cur_arg, -ECANCELED);
    }
    w->async.data = w;
    if (!w->async.loop) { /* journal_writer_init failed before the handle */
        on_closed((uv_handle_t *)&w->async);
        return;
    }
    uv_close((uv_handle_t *)&w->async, on_closed);
}
