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
        rc = unlinkat(job.dirfd, job.name, 0) == 0 ? 0 : errno;
        pthread_mutex_lock(&p->lock);
        if (rc != 0 && rc != ENOENT && p->err == 0) {
            p->err = rc;
            memcpy(p->err_name, job.name, sizeof p->err_name);
        }
        p->busy--;
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

void unlink_pool_submit(struct unlink_pool *p, int dirfd, const char *name)
{
    struct unlink_job *job;
    pthread_mutex_lock(&p->lock);
    while (p->count == UNLINK_POOL_QUEUE)
        pthread_cond_wait(&p->room, &p->lock);
    job = &p->q[(p->head + p->count) % UNLINK_POOL_QUEUE];
    job->dirfd = dirfd;
    util_fmt(job->name, sizeof job->name, "%s", name);
    p->count++;
    pthread_cond_signal(&p->more);
    pthread_mutex_unlock(&p->lock);
}

int unlink_pool_wait(struct unlink_pool *p, char *name_out, size_t size)
{
    int err;
    pthread_mutex_lock(&p->lock);
    while (p->count > 0 || p->busy > 0)
        pthread_cond_wait(&p->idle, &p->lock);
    err = p->err;
    if (err && name_out)
        util_fmt(name_out, size, "%s", p->err_name);
    p->err = 0;
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
