/* journal_writer.c: the thread that writes state_dir's records, one job at
 * a time in queue order, and hands their results back to the loop (see
 * journal_writer.h). */
#include "journal_writer.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

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
 * each holds a reference; the last one frees it (bg_thread.h). bg.cond: the
 * thread waits for work, posters for their jobs, close for the exit;
 * bg.detached: no wake-ups, no done list; bg.beat: every job done, the
 * exit. */
struct jw_shared {
    struct bg_shared bg;                /* first: bg_shared_unref frees the block */
    bool closing;                       /* under lock: write what is queued, then exit */
    struct jw_job *queue, **queue_tail; /* under lock, in order */
    struct jw_job *cur;                 /* under lock: being run */
    struct jw_job *done, **done_tail;   /* under lock: loop jobs ran, for the loop */
};
_Static_assert(offsetof(struct jw_shared, bg) == 0, "the block starts with its bg_shared");

static void job_free(struct jw_job *j)
{
    if (j->drop && j->data)
        j->drop(j->data);
    free(j);
}

/* The last reference: nobody is left to run or wait for these. */
static void shared_release(struct bg_shared *bg)
{
    struct jw_shared *s = (struct jw_shared *)bg;
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
}

/* Appends j to the queue and wakes the thread. Under lock. */
static void enqueue(struct jw_shared *s, struct jw_job *j)
{
    j->next = NULL;
    *s->queue_tail = j;
    s->queue_tail = &j->next;
    pthread_cond_broadcast(&s->bg.cond);
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
    pthread_mutex_lock(&s->bg.lock);
    for (;;) {
        struct jw_job *j;
        int rc;
        while (!s->queue && !s->closing)
            pthread_cond_wait(&s->bg.cond, &s->bg.lock);
        if (!s->queue)
            break; /* closing, and everything queued is written */
        j = s->cur = dequeue(s);
        pthread_mutex_unlock(&s->bg.lock);
        rc = j->run(j->data);
        if (j->drop)
            j->drop(j->data);
        j->data = NULL;
        atomic_fetch_add(&s->bg.beat, 1);
        pthread_mutex_lock(&s->bg.lock);
        s->cur = NULL;
        j->rc = rc;
        j->finished = true;
        if (!j->done) {
            pthread_cond_broadcast(&s->bg.cond); /* its poster frees it */
        } else if (s->bg.detached) {
            free(j); /* its done was called (-ECANCELED) when the loop let go */
        } else {
            *s->done_tail = j;
            s->done_tail = &j->next;
            bg_shared_wake(&s->bg);
        }
    }
    bg_thread_exit(&s->bg);
}

/* --- the loop's side ------------------------------------------------------------ */

static void on_async(uv_async_t *h)
{
    struct journal_writer *w = h->data;
    struct jw_job *list, *next;
    pthread_mutex_lock(&w->s->bg.lock);
    list = w->s->done;
    w->s->done = NULL;
    w->s->done_tail = &w->s->done;
    pthread_mutex_unlock(&w->s->bg.lock);
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
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->s = s;
    bg_shared_init(&s->bg, shared_release);
    s->queue_tail = &s->queue;
    s->done_tail = &s->done;
    return bg_thread_start(&w->bg, &s->bg, loop, on_async, w, writer_thread);
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
    pthread_mutex_lock(&w->s->bg.lock);
    if (!w->bg.started || w->s->closing) {
        /* Never runs: answered as after a close. */
        pthread_mutex_unlock(&w->s->bg.lock);
        w->pending--;
        done(arg, -ECANCELED);
        job_free(j);
        return 0;
    }
    enqueue(w->s, j);
    pthread_mutex_unlock(&w->s->bg.lock);
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
    bg_shared_ref(&w->s->bg);
    return w->s;
}

void journal_writer_unshare(struct jw_shared *s)
{
    if (s)
        bg_shared_unref(&s->bg);
}

struct jw_job *journal_writer_post(struct jw_shared *s, jw_run_fn run, jw_free_fn drop, void *data)
{
    struct jw_job *j = xcalloc(1, sizeof *j);
    *j = (struct jw_job){.run = run, .drop = drop, .data = data};
    pthread_mutex_lock(&s->bg.lock);
    if (s->closing || s->bg.exited) {
        pthread_mutex_unlock(&s->bg.lock);
        job_free(j);
        return NULL;
    }
    enqueue(s, j);
    pthread_mutex_unlock(&s->bg.lock);
    return j;
}

int journal_writer_wait(struct jw_shared *s, struct jw_job *job)
{
    int rc;
    if (!job)
        return -ECANCELED;
    pthread_mutex_lock(&s->bg.lock);
    while (!job->finished)
        pthread_cond_wait(&s->bg.cond, &s->bg.lock);
    rc = job->rc;
    pthread_mutex_unlock(&s->bg.lock);
    job_free(job);
    return rc;
}

uint64_t journal_writer_quiet_ms(struct journal_writer *w, uint64_t now)
{
    bool working;
    if (!w->bg.started)
        return 0;
    pthread_mutex_lock(&w->s->bg.lock);
    working = !w->s->bg.exited && (w->s->queue || w->s->cur);
    pthread_mutex_unlock(&w->s->bg.lock);
    return bg_thread_quiet_ms(&w->bg, &w->s->bg, working, now);
}

static void on_closed(uv_handle_t *h)
{
    struct journal_writer *w = h->data;
    bg_shared_unref(&w->s->bg);
    w->s = NULL;
}

void journal_writer_close(struct journal_writer *w, uint64_t wait_ms)
{
    struct jw_shared *s = w->s;
    struct jw_job *left = NULL, **tail = &left, *j;
    jw_done_fn cur_done = NULL;
    void *cur_arg = NULL;
    bool exited;
    pthread_mutex_lock(&s->bg.lock);
    s->closing = true;
    pthread_cond_broadcast(&s->bg.cond);
    exited = bg_thread_let_go(&w->bg, &s->bg, wait_ms);
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
    pthread_cond_broadcast(&s->bg.cond);
    if (s->cur && s->cur->done) { /* being run by a thread left behind: it frees it */
        cur_done = s->cur->done;
        cur_arg = s->cur->arg;
    }
    pthread_mutex_unlock(&s->bg.lock);
    bg_thread_join_or_detach(&w->bg, exited,
                             "left the journal writer thread behind, stuck on a state_dir that "
                             "does not answer; what it had not written is settled at the next "
                             "start");
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
    bg_thread_close_handle(&w->bg, w, on_closed);
}
