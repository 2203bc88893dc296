/* unlink_pool.h: a few threads that unlink files during the cleaning phase.
 * Removing a file on ext4 mostly waits on the journal; several removals in
 * flight overlap those waits (20,000 small files: 1.5 s one by one, 0.7 s
 * with four at a time on the development VM). The caller waits for the pool
 * at every directory boundary, so a directory descriptor stays open while
 * removals in it are under way and a directory is removed after its files.
 * An optional check runs on the helper right before each unlink (the
 * cleaning compares the entry with what was copied); after the first
 * failure nothing more is removed until the caller has waited. */
#ifndef HOSTAGENT_UNLINK_POOL_H
#define HOSTAGENT_UNLINK_POOL_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UNLINK_POOL_THREADS 4
#define UNLINK_POOL_QUEUE 256

struct unlink_job {
    int dirfd;
    const void *arg; /* for the check */
    char name[NAME_MAX + 1];
};

/* Runs on a helper thread before unlinkat(dirfd, name): 0 lets it go, a
 * positive errno fails it (the entry is kept). */
typedef int (*unlink_check_fn)(void *ctx, int dirfd, const char *name, const void *arg);

struct unlink_pool {
    pthread_t threads[UNLINK_POOL_THREADS];
    unsigned n_threads; /* 0: none could start; the caller unlinks itself */
    pthread_mutex_t lock;
    pthread_cond_t more, room, idle;
    struct unlink_job q[UNLINK_POOL_QUEUE];
    unsigned head, count, busy;
    bool closing;
    unlink_check_fn check; /* may be NULL; set before the first submit */
    void *check_ctx;
    int err; /* the first failure (errno), with its name and arg */
    char err_name[NAME_MAX + 1];
    const void *err_arg;
    _Atomic bool failed;   /* err is set: helpers drop what is queued */
    _Atomic uint64_t done; /* entries removed */
};

/* Starts the threads (as many as can be started). 0 or negative errno. */
int unlink_pool_init(struct unlink_pool *p);

/* Queues the check and unlinkat(dirfd, name, 0); blocks while the queue is
 * full. Returns nonzero (and queues nothing) once a removal has failed and
 * the failure was not yet collected by unlink_pool_wait. */
int unlink_pool_submit(struct unlink_pool *p, int dirfd, const char *name, const void *arg);

/* Waits until every queued removal finished or was dropped after a failure.
 * Returns 0, or the first failure's errno (its name in name_out, its arg in
 * *arg_out when not NULL), which is then cleared. */
int unlink_pool_wait(struct unlink_pool *p, char *name_out, size_t size, const void **arg_out);

/* Stops and joins the threads (after unlink_pool_wait). */
void unlink_pool_close(struct unlink_pool *p);

#endif
