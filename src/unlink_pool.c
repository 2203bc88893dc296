/* unlink_pool.c: parallel file removal for the cleaning phase (see unlink_pool.h). */
#include "unlink_pool.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static void *unlink_pool_thread(void *arg)
{
    struct unlink_pool *p = arg;
    (void)pthread_setname_np(pthread_self(), "ha-unlink");
    pthread_mutex_lock(&p->lock);
    for (;;) {
        struct unlink_job job;
        int rc;
        while (p->count == 0 && !p->closing)
            pthread_cond_wait(&p->more, &p->lock);
        if (p->count == 0)
            break; /* closing, nothing left */
        job = p->q[p->head];
        p->head = (p->head + 1) % UNLINK_POOL_QUEUE;
        p->count--;
        p->busy++;
        pthread_cond_signal(&p->room);
        pthread_mutex_unlock(&p->lock);
        /* After a failure the rest of the queue is dropped: removal stops
         * at the first entry that must stay. (A removal already past this
         * test on another helper still completes; it was checked too.) */
        rc = atomic_load_explicit(&p->failed, memory_order_relaxed) ? -1
             : p->check ? p->check(p->check_ctx, job.dirfd, job.name, job.arg)
                        : 0;
        if (rc == 0)
            rc = unlinkat(job.dirfd, job.name, 0) == 0 ? 0 : errno;
        /* Raised at once, not under the lock: the other helpers go on
         * taking jobs while this one waits for it. */
        if (rc > 0 && rc != ENOENT)
            atomic_store_explicit(&p->failed, true, memory_order_relaxed);
        pthread_mutex_lock(&p->lock);
        if (rc > 0 && rc != ENOENT && p->err == 0) {
            p->err = rc;
            p->err_arg = job.arg;
            memcpy(p->err_name, job.name, sizeof p->err_name);
        }
        p->busy--;
        if (rc == 0 || rc == ENOENT)
            atomic_fetch_add(&p->done, 1);
        if (p->count == 0 && p->busy == 0)
            pthread_cond_broadcast(&p->idle);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int unlink_pool_init(struct unlink_pool *p)
{
    memset(p, 0, sizeof *p);
    atomic_init(&p->done, 0);
    atomic_init(&p->failed, false);
    if (pthread_mutex_init(&p->lock, NULL) != 0)
        return -EAGAIN;
    pthread_cond_init(&p->more, NULL);
    pthread_cond_init(&p->room, NULL);
    pthread_cond_init(&p->idle, NULL);
    for (unsigned i = 0; i < UNLINK_POOL_THREADS; i++) {
        if (pthread_create(&p->threads[p->n_threads], NULL, unlink_pool_thread, p) != 0)
            break;
        p->n_threads++;
    }
    return 0;
}

int unlink_pool_submit(struct unlink_pool *p, int dirfd, const char *name, const void *arg)
{
    struct unlink_job *job;
    pthread_mutex_lock(&p->lock);
    while (p->count == UNLINK_POOL_QUEUE && p->err == 0)
        pthread_cond_wait(&p->room, &p->lock);
    if (p->err != 0) {
        pthread_mutex_unlock(&p->lock);
        return -1;
    }
    job = &p->q[(p->head + p->count) % UNLINK_POOL_QUEUE];
    job->dirfd = dirfd;
    job->arg = arg;
    util_fmt(job->name, sizeof job->name, "%s", name);
    p->count++;
    pthread_cond_signal(&p->more);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

int unlink_pool_wait(struct unlink_pool *p, char *name_out, size_t size, const void **arg_out)
{
    int err;
    pthread_mutex_lock(&p->lock);
    while (p->count > 0 || p->busy > 0)
        pthread_cond_wait(&p->idle, &p->lock);
    err = p->err;
    if (err && name_out)
        util_fmt(name_out, size, "%s", p->err_name);
    if (arg_out)
        *arg_out = err ? p->err_arg : NULL;
    p->err = 0;
    p->err_arg = NULL;
    atomic_store_explicit(&p->failed, false, memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
    return err;
}

void unlink_pool_close(struct unlink_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->closing = true;
    pthread_cond_broadcast(&p->more);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->more);
    pthread_cond_destroy(&p->room);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->lock);
}
