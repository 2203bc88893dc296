/* path_check.c: the path rules of a move request, run off the loop thread
 * with a time limit (see path_check.h). */
#include "path_check.h"
#include "journal.h"
#include "log.h"
#include "paths.h"
#include "sandbox_rw.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Shared by the loop and the check threads; freed by whichever lets go last
 * (a thread stuck on a hung mount may outlive the loop). */
struct path_check_shared {
    pthread_mutex_t lock;
    int refs;
    bool detached; /* the loop let go: no more wake-ups */
    uv_async_t *async;
    unsigned stuck; /* abandoned checks whose thread has not returned */
};

static void shared_unref(struct path_check_shared *sh)
{
    bool last;
    pthread_mutex_lock(&sh->lock);
    last = --sh->refs == 0;
    pthread_mutex_unlock(&sh->lock);
    if (last) {
        pthread_mutex_destroy(&sh->lock);
        free(sh);
    }
}

/* --- the rules --------------------------------------------------------------- */

static void set_where(const char *_Atomic *where, const char *what)
{
    if (where)
        atomic_store_explicit(where, what, memory_order_release);
}

bool path_check_root_of(char *const *roots, size_t n_roots, const char *real, bool *is_root,
                        char *root_out)
{
    char root_real[PATH_MAX];
    *is_root = false;
    for (size_t i = 0; i < n_roots; i++) {
        if (!realpath(roots[i], root_real))
            continue; /* a missing root allows nothing */
        if (strcmp(real, root_real) == 0)
            *is_root = true;
        if (path_inside(real, root_real)) {
            if (root_out)
                memcpy(root_out, root_real, strlen(root_real) + 1);
            return true;
        }
    }
    return false;
}

enum move_code path_check_apply(const char *old_path, const char *new_path, char *const *roots,
                                size_t n_roots, struct path_check_result *out,
                                const char *_Atomic *where)
{
    const char *w;
    dev_t old_dev = 0, new_dev = 0;
    struct stat st;
    bool is_root;
    char *why = out->why;
    const size_t whysz = sizeof out->why;

    out->why[0] = '\0';
    if (path_check_syntax(old_path, out->old_norm, &w) != 0) {
        util_fmt(why, whysz, "oldPath %s", w);
        return out->code = CODE_PATH_NOT_ALLOWED;
    }
    if (path_check_syntax(new_path, out->new_norm, &w) != 0) {
        util_fmt(why, whysz, "newPath %s", w);
        return out->code = CODE_PATH_NOT_ALLOWED;
    }
    if (n_roots == 0) {
        util_fmt(why, whysz, "no allowed_roots are configured on this agent");
        return out->code = CODE_PATH_NOT_ALLOWED;
    }
    /* Outside the roots is refused with the same words whether it exists or not. */
    set_where(where, out->old_norm);
    is_root = false;
    if (path_resolve(out->old_norm, out->old_real, NULL) != 0 ||
        !path_check_root_of(roots, n_roots, out->old_real, &is_root, out->src_root)) {
        util_fmt(why, whysz, "oldPath %s",
                 is_root ? "must not be an allowed root itself" : "is outside the allowed roots");
        return out->code = CODE_PATH_NOT_ALLOWED;
    }
    set_where(where, out->new_norm);
    is_root = false;
    if (path_resolve(out->new_norm, out->new_real, &new_dev) != 0 ||
        !path_check_root_of(roots, n_roots, out->new_real, &is_root, out->dst_root)) {
        util_fmt(why, whysz, "newPath %s",
                 is_root ? "must not be an allowed root itself" : "is outside the allowed roots");
        return out->code = CODE_PATH_NOT_ALLOWED;
    }
    set_where(where, out->old_norm);
    if (lstat(out->old_real, &st) == 0 && S_ISLNK(st.st_mode)) {
        util_fmt(why, whysz, "oldPath must not be a symlink");
        return out->code = CODE_PATH_NOT_ALLOWED;
    }
    if (path_overlap(out->old_real, out->new_real) ||
        path_overlap_by_id(out->old_real, out->new_real)) {
        util_fmt(why, whysz, "oldPath and newPath are the same or one is inside the other");
        return out->code = CODE_INVALID_PATHS;
    }
    if (lstat(out->old_real, &st) != 0 || !S_ISDIR(st.st_mode)) {
        util_fmt(why, whysz, "oldPath %s does not exist or is not a directory", old_path);
        return out->code = CODE_SOURCE_MISSING;
    }
    old_dev = st.st_dev;
    out->old_st = st;
    set_where(where, out->new_norm);
    if (lstat(out->new_real, &st) == 0) {
        if (!S_ISDIR(st.st_mode) || path_dir_is_empty(out->new_real) != 1) {
            util_fmt(why, whysz, "newPath %s exists and is not an empty directory", new_path);
            return out->code = CODE_DESTINATION_EXISTS;
        }
        new_dev = st.st_dev;
        out->dst_preexisted = true;
        out->dst_orig = st;
    } else if (errno != ENOENT) {
        util_fmt(why, whysz, "newPath %s cannot be created: %s", new_path, strerror(errno));
        return out->code = CODE_DESTINATION_EXISTS;
    } else {
        util_missing_parents(out->new_real, &out->made_parents, &out->n_made);
    }
    /* Both roots are written (the copy into one, the source removed from the
     * other): one that only the service's sandbox makes read-only is named
     * with its fix now, not as "Read-only file system" halfway through. */
    if (sandbox_rw_denied(out->dst_root, "newPath's allowed root", why, whysz) ||
        sandbox_rw_denied(out->src_root, "oldPath's allowed root", why, whysz))
        return out->code = CODE_PERMISSION_DENIED;
    /* The identities along both paths, for the busy check on the loop. */
    set_where(where, out->old_norm);
    path_ids_of(out->old_real, &out->old_ids);
    set_where(where, out->new_norm);
    path_ids_of(out->new_real, &out->new_ids);
    set_where(where, NULL);
    out->rename = old_dev == new_dev;
    return out->code = CODE_NONE;
}

/* --- one check ------------------------------------------------------------------ */

bool path_check_overlaps(const struct path_claim *c, const struct path_check_result *r)
{
    const char *theirs[2] = {c->src, c->dst}, *ours[2] = {r->old_real, r->new_real};
    const struct path_ids *their_ids[2] = {c->src_ids, c->dst_ids};
    const struct path_ids *our_ids[2] = {&r->old_ids, &r->new_ids};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            if (path_overlap(theirs[i], ours[j]) || path_ids_overlap(their_ids[i], our_ids[j]))
                return true;
    /* A destination the move made after it was accepted: inside it? */
    if (c->made)
        for (int j = 0; j < 2; j++)
            if (path_ids_has(our_ids[j], c->made_dev, c->made_ino))
                return true;
    return false;
}

bool path_check_may_conflict(const char *old_a, const char *new_a, const char *old_b,
                             const char *new_b)
{
    if (!old_a[0] || !new_a[0] || !old_b[0] || !new_b[0])
        return false;
    return path_overlap(old_a, old_b) || path_overlap(old_a, new_b) || path_overlap(new_a, old_b) ||
           path_overlap(new_a, new_b);
}

struct path_check *path_check_new(const char *old_path, const char *new_path, char *const *roots,
                                  size_t n_roots, void *tag)
{
    struct path_check *c = xcalloc(1, sizeof *c);
    c->old_path = xstrdup(old_path);
    c->new_path = xstrdup(new_path);
    c->roots = xcalloc(n_roots + 1, sizeof(char *));
    for (size_t i = 0; i < n_roots; i++)
        c->roots[i] = xstrdup(roots[i]);
    c->n_roots = n_roots;
    c->tag = tag;
    atomic_init(&c->where, NULL);
    return c;
}

void path_check_free(struct path_check *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->out.n_made; i++)
        free(c->out.made_parents[i]);
    free(c->out.made_parents);
    for (size_t i = 0; i < c->n_roots; i++)
        free(c->roots[i]);
    free(c->roots);
    free(c->old_path);
    free(c->new_path);
    free(c);
}

static void check_thread(void *arg)
{
    struct path_check *c = arg;
    struct path_check_shared *sh = c->sh;
    bool abandoned;
    (void)path_check_apply(c->old_path, c->new_path, c->roots, c->n_roots, &c->out, &c->where);
    pthread_mutex_lock(&sh->lock);
    c->finished = true;
    abandoned = c->abandoned;
    if (abandoned)
        sh->stuck--;
    else if (!sh->detached)
        uv_async_send(sh->async);
    pthread_mutex_unlock(&sh->lock);
    /* Given up on by the loop (and detached): the check is ours to free. */
    if (abandoned)
        path_check_free(c);
    shared_unref(sh);
}

/* --- the runner ------------------------------------------------------------------- */

static unsigned running_threads(struct path_checker *pc)
{
    unsigned n = 0;
    for (struct path_check *c = pc->queue; c; c = c->next)
        n += c->started;
    pthread_mutex_lock(&pc->sh->lock);
    n += pc->sh->stuck;
    pthread_mutex_unlock(&pc->sh->lock);
    return n;
}

static void start_waiting(struct path_checker *pc)
{
    unsigned running = running_threads(pc);
    for (struct path_check *c = pc->queue; c && running < PATH_CHECK_THREADS; c = c->next) {
        if (c->started)
            continue;
        c->sh = pc->sh;
        pthread_mutex_lock(&pc->sh->lock);
        pc->sh->refs++;
        pthread_mutex_unlock(&pc->sh->lock);
        /* Not the libuv pool: a check stuck on a hung mount would hold one of
         * its four threads (which also serve DNS) for as long as it hangs. */
        if (uv_thread_create(&c->thread, check_thread, c) != 0) {
            pthread_mutex_lock(&pc->sh->lock);
            pc->sh->refs--; /* the thread's; the loop's own stays */
            pthread_mutex_unlock(&pc->sh->lock);
            c->out.code = CODE_IO_ERROR;
            util_fmt(c->out.why, sizeof c->out.why, "cannot start a thread to check the paths");
            c->started = true;
            c->finished = true;
            continue;
        }
        c->started = true;
        c->has_thread = true;
        running++;
    }
}

static void unlink_check(struct path_checker *pc, struct path_check *c)
{
    for (struct path_check **pp = &pc->queue; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            return;
        }
    }
}

/* Reports what finished or ran out of time, in order of submission among
 * those ready (a later check may be reported before an earlier stuck one). */
static void checker_poll(struct path_checker *pc)
{
    uint64_t now = util_mono_ms();
    struct path_check *c = pc->queue, *next;
    for (; c; c = next) {
        bool finished, timed_out;
        next = c->next;
        pthread_mutex_lock(&pc->sh->lock);
        finished = c->finished;
        pthread_mutex_unlock(&pc->sh->lock);
        timed_out = !finished && now >= c->deadline_ms;
        if (!finished && !timed_out)
            continue;
        unlink_check(pc, c);
        if (timed_out)
            LOG(LOG_WARN, "path check ran past its limit; answered without it",
                LF_S("old", c->old_path), LF_S("new", c->new_path),
                LF_S("at", atomic_load(&c->where) ? atomic_load(&c->where) : "(no thread yet)"));
        /* c stays ours during the callback: a thread only frees a check it
         * was told to keep (below). */
        if (!c->forgotten)
            pc->done(pc->owner, c, timed_out);
        if (timed_out && c->has_thread) {
            pthread_mutex_lock(&pc->sh->lock);
            finished = c->finished;
            if (!finished) {
                c->abandoned = true;
                pc->sh->stuck++;
            }
            pthread_mutex_unlock(&pc->sh->lock);
            if (!finished) {
                pthread_detach(c->thread); /* never joined: it may never return */
                continue;                  /* it frees c if it ever returns */
            }
        }
        if (c->has_thread)
            uv_thread_join(&c->thread); /* its last act was the wake-up */
        path_check_free(c);
    }
    start_waiting(pc);
    if (!pc->queue)
        uv_timer_stop(&pc->timer);
}

static void checker_on_async(uv_async_t *h)
{
    checker_poll(container_of(h, struct path_checker, async));
}

static void checker_on_timer(uv_timer_t *t)
{
    checker_poll(container_of(t, struct path_checker, timer));
}

int path_checker_init(struct path_checker *pc, uv_loop_t *loop, path_check_done_fn done,
                      void *owner)
{
    int rc;
    memset(pc, 0, sizeof *pc);
    pc->loop = loop;
    pc->done = done;
    pc->owner = owner;
    pc->limit_ms = PATH_CHECK_LIMIT_MS;
    pc->sh = xcalloc(1, sizeof *pc->sh);
    pthread_mutex_init(&pc->sh->lock, NULL);
    pc->sh->refs = 1;
    pc->sh->async = &pc->async;
    rc = uv_async_init(loop, &pc->async, checker_on_async);
    if (rc != 0) {
        shared_unref(pc->sh);
        pc->sh = NULL;
        return rc;
    }
    pc->open_handles++;
    rc = uv_timer_init(loop, &pc->timer);
    if (rc != 0)
        return rc; /* the caller still closes */
    pc->open_handles++;
    return 0;
}

void path_checker_submit(struct path_checker *pc, struct path_check *c)
{
    struct path_check **tail = &pc->queue;
    while (*tail)
        tail = &(*tail)->next;
    c->next = NULL;
    c->deadline_ms = util_mono_ms() + pc->limit_ms;
    *tail = c;
    start_waiting(pc);
    if (!uv_is_active((uv_handle_t *)&pc->timer))
        uv_timer_start(&pc->timer, checker_on_timer, 100, 100);
}

void path_checker_forget(struct path_checker *pc, struct path_check *c)
{
    (void)pc;
    c->forgotten = true;
}

static void checker_on_closed(uv_handle_t *h)
{
    (void)h;
}

void path_checker_close(struct path_checker *pc)
{
    struct path_check *c, *next;
    if (!pc->sh)
        return;
    for (c = pc->queue; c; c = next) {
        bool finished;
        next = c->next;
        pthread_mutex_lock(&pc->sh->lock);
        finished = c->finished;
        if (!finished && c->has_thread) {
            c->abandoned = true;
            pc->sh->stuck++;
        }
        pthread_mutex_unlock(&pc->sh->lock);
        if (c->has_thread && finished)
            uv_thread_join(&c->thread);
        else if (c->has_thread)
            pthread_detach(c->thread);
        if (finished || !c->has_thread)
            path_check_free(c);
    }
    pc->queue = NULL;
    pthread_mutex_lock(&pc->sh->lock);
    pc->sh->detached = true;
    pc->sh->async = NULL;
    pthread_mutex_unlock(&pc->sh->lock);
    shared_unref(pc->sh);
    pc->sh = NULL;
    if (pc->open_handles >= 2)
        uv_close((uv_handle_t *)&pc->timer, checker_on_closed);
    if (pc->open_handles >= 1)
        uv_close((uv_handle_t *)&pc->async, checker_on_closed);
    pc->open_handles = 0;
}
