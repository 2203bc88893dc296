/* reclaim.c: the background deletion of reclaim directories (see reclaim.h):
 * records in state_dir/reclaim, one thread at idle priority, the deletion. */
#include "reclaim.h"
#include "log.h"
#include "paths.h"
#include "state_file.h"
#include "tree_walk.h"
#include "unlink_pool.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define RECLAIM_RECORD_MAX (64u << 10)

/* --- the deletion ----------------------------------------------------------------- */

struct del {
    atomic_int *stop;
    struct reclaim_progress *p;
    struct unlink_pool *pool; /* NULL: one unlink at a time, here */
    int err;                  /* the first failure (positive errno) */
    char where[PATH_MAX / 2];
};

/* Counts a shared total down, never below 0. */
static void count_down(_Atomic uint64_t *total, uint64_t n)
{
    uint64_t cur;
    if (!total || !n)
        return;
    cur = atomic_load(total);
    while (!atomic_compare_exchange_weak(total, &cur, cur > n ? cur - n : 0))
        ;
}

/* An entry is gone: a regular file's bytes count when its last name goes
 * (the counts hold each hard-linked inode's bytes once). */
static void del_count(struct del *d, const struct stat *st)
{
    uint64_t b = S_ISREG(st->st_mode) && st->st_nlink <= 1 ? (uint64_t)st->st_size : 0;
    if (!d->p)
        return;
    if (d->p->beat)
        atomic_fetch_add_explicit(d->p->beat, 1, memory_order_relaxed);
    d->p->entries_done++;
    d->p->bytes_done += b;
    count_down(d->p->entries, 1);
    count_down(d->p->bytes, b);
}

static void del_failed(struct del *d, struct tree_walk *w, const char *name, int err)
{
    if (d->err)
        return;
    d->err = err;
    tree_walk_relpath(w, name, d->where, sizeof d->where);
}

static int del_stopped(struct del *d)
{
    if (d->stop && atomic_load_explicit(d->stop, memory_order_relaxed)) {
        d->err = ECANCELED;
        return -1;
    }
    return 0;
}

/* Waits for the pool's unlinks in the directory being left (open as dirfd). */
static void del_barrier(struct del *d, struct tree_walk *w)
{
    char name[NAME_MAX + 1];
    int err;
    if (!d->pool)
        return;
    err = unlink_pool_wait(d->pool, name, sizeof name, NULL);
    if (err && err != ENOENT)
        del_failed(d, w, name, err);
}

static int del_root_post(struct tree_walk *w)
{
    del_barrier(w->arg, w);
    return 0;
}

static int del_file(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct del *d = w->arg;
    if (del_stopped(d) != 0)
        return -1;
    if (d->pool) {
        /* Refused after a failure: collect it; the entry stays. */
        if (unlink_pool_submit(d->pool, tree_walk_fd(w, 0), name, NULL) != 0)
            del_barrier(d, w);
        else
            del_count(d, st);
        return 0;
    }
    /* A symlink is removed itself, never followed (unlinkat does not). */
    if (unlinkat(tree_walk_fd(w, 0), name, 0) != 0 && errno != ENOENT)
        del_failed(d, w, name, errno);
    else
        del_count(d, st);
    return 0;
}

static int del_dir_pre(struct tree_walk *w, const char *name, const struct stat *st)
{
    (void)st;
    /* A directory without write permission for us would keep its entries. */
    if (!(st->st_mode & S_IWUSR) || !(st->st_mode & S_IXUSR))
        (void)fchmodat(tree_walk_fd(w, 0), name, 0700, AT_SYMLINK_NOFOLLOW);
    return del_stopped(w->arg);
}

static int del_dir_post(struct tree_walk *w, const char *name, const struct stat *st,
                        const int fds[2])
{
    struct del *d = w->arg;
    (void)fds;
    del_barrier(d, w); /* its files first (unlinked through fds[0], still open) */
    if (unlinkat(tree_walk_fd(w, 0), name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        del_failed(d, w, name, errno); /* a mount inside, or a failure below */
    else
        del_count(d, st);
    return del_stopped(d);
}

/* Opens the directory `path` (absolute) one component at a time from "/",
 * following no symlink. -1 with errno on failure. */
static int open_nofollow(const char *path)
{
    char comp[NAME_MAX + 1];
    const char *p = path + 1;
    int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    while (fd >= 0 && *p) {
        size_t n = strcspn(p, "/");
        int next;
        if (n == 0 || n > NAME_MAX || (n <= 2 && p[0] == '.' && (n == 1 || p[1] == '.'))) {
            close(fd);
            errno = EINVAL;
            return -1;
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        next = openat(fd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = next;
        p += n + (p[n] == '/');
    }
    return fd;
}

int reclaim_delete(const char *dir, dev_t dev, ino_t ino, atomic_int *stop,
                   struct reclaim_progress *p, bool parallel, char *why, size_t whysz)
{
    static const struct tree_walk_ops ops = {del_file, del_dir_pre, del_dir_post, del_root_post};
    struct del d = {.stop = stop, .p = p};
    struct unlink_pool pool;
    struct tree_walk w = {.ops = &ops, .arg = &d, .need_stat = true, .strict_dev = false};
    const char *slash = strrchr(dir, '/');
    char parent[PATH_MAX];
    struct stat st;
    int pfd, fd, rc;
    why[0] = '\0';
    if (dir[0] != '/' || !slash ||
        strncmp(slash + 1, PATHS_RECLAIM_PREFIX, sizeof PATHS_RECLAIM_PREFIX - 1) != 0) {
        util_fmt(why, whysz, "%s is not a reclaim directory; nothing was deleted", dir);
        return -ESTALE;
    }
    util_fmt(parent, sizeof parent, "%.*s", slash == dir ? 1 : (int)(slash - dir), dir);
    pfd = open_nofollow(parent);
    if (pfd < 0) {
        rc = -errno;
        if (rc == -ENOENT)
            return 0; /* its parent is gone, and it with it */
        util_fmt(why, whysz, "cannot open %s without following a symlink: %s; nothing was deleted",
                 parent, strerror(-rc));
        return rc == -ELOOP || rc == -ENOTDIR ? -ESTALE : rc;
    }
    fd = openat(pfd, slash + 1, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        close(pfd);
        if (rc == -ENOENT)
            return 0; /* deleted already */
        util_fmt(why, whysz, "cannot open %s: %s; nothing was deleted", dir, strerror(-rc));
        return rc == -ELOOP || rc == -ENOTDIR ? -ESTALE : rc;
    }
    if (fstat(fd, &st) != 0 || st.st_dev != dev || st.st_ino != ino) {
        util_fmt(why, whysz,
                 "%s is not the directory recorded (device %u:%u, inode %llu); nothing was "
                 "deleted",
                 dir, major(dev), minor(dev), (unsigned long long)ino);
        close(fd);
        close(pfd);
        return -ESTALE;
    }
    (void)fchmod(fd, 0700);
    if (parallel && unlink_pool_init(&pool) == 0 && pool.n_threads > 0)
        d.pool = &pool;
    rc = tree_walk_run(&w, fd, -1);
    if (d.pool) { /* what a stopped walk left in flight */
        del_barrier(&d, &w);
        unlink_pool_close(&pool);
    }
    if (rc != 0 && !d.err)
        d.err = w.err ? w.err : EIO;
    tree_walk_free(&w);
    close(fd);
    if (!d.err && unlinkat(pfd, slash + 1, AT_REMOVEDIR) != 0 && errno != ENOENT) {
        d.err = errno;
        d.where[0] = '\0';
    }
    if (!d.err) {
        /* Durable before the caller forgets the reclaim (its record goes
         * next): else a power cut could bring the directory back with no
         * record to delete it. pfd is O_PATH, which syncfs refuses. */
        int sfd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (sfd < 0 || syncfs(sfd) != 0) {
            d.err = EAGAIN;
            util_fmt(d.where, sizeof d.where, "(the deletion could not be made durable: %s)",
                     strerror(errno));
        }
        if (sfd >= 0)
            close(sfd);
    }
    close(pfd);
    if (d.err == ECANCELED)
        return -ECANCELED;
    if (d.err == EAGAIN) {
        util_fmt(why, whysz, "%s was deleted %s", dir, d.where);
        return -EAGAIN;
    }
    if (d.err) {
        util_fmt(why, whysz, "%s%s%s could not be deleted: %s", dir, d.where[0] ? "/" : "", d.where,
                 strerror(d.err));
        return -d.err;
    }
    return 0;
}

/* --- what the thread shares with the loop ------------------------------------------ */

/* The thread's own block (see reclaim.h): the loop and the thread each hold
 * a reference; the last one frees it (bg_thread.h). Nothing in it is the
 * agent's, so a thread left behind at exit (reclaimer_close) can come back
 * from the kernel at any time and still find everything it uses. bg.beat:
 * every entry deleted, the exit. */
struct reclaim_shared {
    struct bg_shared bg;             /* first: bg_shared_unref frees the block */
    bool stopping;                   /* under lock: the thread exits */
    struct reclaim_item *queue;      /* under lock: waiting, in order */
    struct reclaim_item *cur;        /* under lock: being deleted (the thread's) */
    struct reclaim_item *done;       /* under lock: ended, for the loop */
    atomic_int stop;                 /* read by the deletion at every entry */
    _Atomic uint64_t bytes, entries; /* left to delete, over every reclaim */
    char *dir;                       /* state_dir/reclaim */
};
_Static_assert(offsetof(struct reclaim_shared, bg) == 0, "the block starts with its bg_shared");

static void item_free(struct reclaim_item *it)
{
    free(it->dir);
    free(it);
}

static void items_free(struct reclaim_item *list)
{
    struct reclaim_item *next;
    for (; list; list = next) {
        next = list->next;
        item_free(list);
    }
}

/* The last reference: what the block holds. */
static void shared_release(struct bg_shared *bg)
{
    struct reclaim_shared *s = (struct reclaim_shared *)bg;
    items_free(s->queue);
    items_free(s->done);
    if (s->cur)
        item_free(s->cur);
    free(s->dir);
}

/* --- records in state_dir/reclaim ------------------------------------------------- */

/* The record's name: "<moveId>@<dev>-<ino>" (the current format). */
static void key_of(char *buf, size_t size, const char *move_id, dev_t dev, ino_t ino)
{
    util_fmt(buf, size, "%s@%llu-%llu", move_id, (unsigned long long)dev, (unsigned long long)ino);
}

/* Writes it->key's record (state_file.h: temp, fsync, rename, directory
 * fsync). No lock may be held: it waits for the disk. 0 or -errno. */
static int record_write(const char *dir, const struct reclaim_item *it)
{
    char id[48];
    cJSON *o = cJSON_CreateObject();
    char *text;
    int rc;
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(o, "moveId", it->move_id);
    cJSON_AddStringToObject(o, "dir", it->dir);
    util_fmt(id, sizeof id, "%llu:%llu", (unsigned long long)it->dev, (unsigned long long)it->ino);
    cJSON_AddStringToObject(o, "id", id);
    json_add_u64(o, "entries", it->entries);
    json_add_u64(o, "bytes", it->bytes);
    text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text)
        util_oom(0);
    rc = state_file_write(dir, it->key, text, 0);
    cJSON_free(text);
    return rc;
}

static void record_remove(const char *dir, const char *key)
{
    state_file_remove(dir, key, false);
}

static struct reclaim_item *item_new(const char *move_id, const char *dir, dev_t dev, ino_t ino,
                                     uint64_t entries, uint64_t bytes)
{
    struct reclaim_item *it = xcalloc(1, sizeof *it);
    util_fmt(it->move_id, sizeof it->move_id, "%s", move_id);
    key_of(it->key, sizeof it->key, move_id, dev, ino);
    it->dir = xstrdup(dir);
    it->dev = dev;
    it->ino = ino;
    it->entries = entries;
    it->bytes = bytes;
    return it;
}

/* The same directory: path, device and inode. */
static bool same_dir(const struct reclaim_item *a, const struct reclaim_item *b)
{
    return a->dev == b->dev && a->ino == b->ino && strcmp(a->dir, b->dir) == 0;
}

/* Parses one record strictly; NULL when anything is missing or odd. key is
 * the file's name without ".json": "<moveId>@<dev>-<ino>", whose parts must
 * be the record's, or (the format before) the moveId alone. */
static struct reclaim_item *record_parse(const char *text, const char *key)
{
    cJSON *o = cJSON_Parse(text);
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(o, "moveId");
    const cJSON *dir = cJSON_GetObjectItemCaseSensitive(o, "dir");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    const cJSON *ent = cJSON_GetObjectItemCaseSensitive(o, "entries");
    const cJSON *byt = cJSON_GetObjectItemCaseSensitive(o, "bytes");
    struct reclaim_item *it = NULL;
    unsigned long long dev, ino;
    char tail, want[RECLAIM_KEY_MAX + 1];
    const char *slash;
    if (!cJSON_IsString(mid) || !cJSON_IsString(dir) || !cJSON_IsString(id) ||
        !cJSON_IsNumber(ent) || !cJSON_IsNumber(byt) || ent->valuedouble < 0 ||
        byt->valuedouble < 0 || strlen(mid->valuestring) > MOVE_ID_MAX ||
        strchr(mid->valuestring, '@') || strchr(mid->valuestring, '/') ||
        sscanf(id->valuestring, "%llu:%llu%c", &dev, &ino, &tail) != 2)
        goto out;
    key_of(want, sizeof want, mid->valuestring, (dev_t)dev, (ino_t)ino);
    if (strcmp(key, want) != 0 && strcmp(key, mid->valuestring) != 0)
        goto out;
    slash = strrchr(dir->valuestring, '/');
    if (dir->valuestring[0] != '/' || !slash || !paths_is_reclaim_name(slash + 1, mid->valuestring))
        goto out;
    it = item_new(mid->valuestring, dir->valuestring, (dev_t)dev, (ino_t)ino,
                  (uint64_t)ent->valuedouble, (uint64_t)byt->valuedouble);
    util_fmt(it->key, sizeof it->key, "%s", key); /* an old record keeps its name */
out:
    cJSON_Delete(o);
    return it;
}

/* --- the thread ------------------------------------------------------------------- */

/* Idle I/O class and the lowest CPU priority, for this thread only: a
 * reclaim waits for every other disk user, a running copy included. */
static void lower_priority(void)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    int rc = util_set_io_class(UTIL_IO_IDLE);
    if (rc != 0)
        LOG(LOG_DEBUG, "cannot lower the reclaim thread's I/O priority",
            LF_S("reason", strerror(-rc)));
    (void)setpriority(PRIO_PROCESS, (id_t)tid, 19);
}

/* One deletion of it->dir. True when it ended for good (deleted, or left to
 * the operator): its record was removed. */
static bool reclaim_one(struct reclaim_shared *s, struct reclaim_item *it)
{
    char why[PATH_MAX + 256];
    struct reclaim_progress p = {.bytes = &s->bytes, .entries = &s->entries, .beat = &s->bg.beat};
    uint64_t t0 = util_mono_ms();
    LOG(LOG_INFO, "reclaim started", LF_S("move", it->move_id), LF_S("path", it->dir),
        LF_U("entries", it->entries), LF_U("bytes", it->bytes));
    /* One unlink at a time: a background reclaim must stay light. */
    it->result = reclaim_delete(it->dir, it->dev, it->ino, &s->stop, &p, false, why, sizeof why);
    /* What it holds now; once it ended, none of it counts any more. */
    it->entries = it->entries > p.entries_done ? it->entries - p.entries_done : 0;
    it->bytes = it->bytes > p.bytes_done ? it->bytes - p.bytes_done : 0;
    if (it->result != -ECANCELED) {
        count_down(&s->entries, it->entries);
        count_down(&s->bytes, it->bytes);
    }
    if (it->result == -ECANCELED || it->result == -EAGAIN) {
        LOG(it->result == -EAGAIN ? LOG_WARN : LOG_INFO,
            "reclaim stopped; it resumes at the next start", LF_S("move", it->move_id),
            LF_S("path", it->dir), LF_S("reason", it->result == -EAGAIN ? why : "stopped"));
        return false;
    }
    if (it->result == 0)
        LOG(LOG_INFO, "reclaim done", LF_S("move", it->move_id), LF_S("path", it->dir),
            LF_U("duration_ms", util_mono_ms() - t0));
    else
        LOG(LOG_ERROR, "reclaim could not delete everything; what is left stays for the operator",
            LF_S("move", it->move_id), LF_S("path", it->dir), LF_S("reason", why));
    record_remove(s->dir, it->key);
    return true;
}

static void reclaim_thread(void *arg)
{
    struct reclaim_shared *s = arg;
    (void)pthread_setname_np(pthread_self(), "ha-reclaim");
    lower_priority();
    pthread_mutex_lock(&s->bg.lock);
    for (;;) {
        struct reclaim_item *it;
        while (!s->stopping && !s->queue)
            pthread_cond_wait(&s->bg.cond, &s->bg.lock);
        if (s->stopping)
            break;
        it = s->queue;
        s->queue = it->next;
        it->next = NULL;
        s->cur = it;
        for (;;) {
            bool gone; /* this turn's deletion ended for good */
            pthread_mutex_unlock(&s->bg.lock);
            gone = reclaim_one(s, it);
            pthread_mutex_lock(&s->bg.lock);
            if (!it->again)
                break;
            /* Added again while it ran (reclaimer_add): a directory made
             * since with the identity of the one just deleted. Its record
             * must be there (this run may have removed it after the add
             * looked), then it runs once more; or, stopped, the next start
             * runs it. */
            it->again = false;
            it->entries = it->again_entries;
            it->bytes = it->again_bytes;
            pthread_mutex_unlock(&s->bg.lock);
            if (gone && record_write(s->dir, it) != 0)
                LOG(LOG_ERROR, "cannot record a reclaim in state_dir; it runs now all the same",
                    LF_S("move", it->move_id), LF_S("path", it->dir));
            pthread_mutex_lock(&s->bg.lock);
            if (!gone || s->stopping) {
                count_down(&s->entries, it->entries);
                count_down(&s->bytes, it->bytes);
                break;
            }
        }
        s->cur = NULL;
        it->next = s->done;
        s->done = it;
        bg_shared_wake(&s->bg);
    }
    bg_thread_exit(&s->bg);
}

/* --- the loop's side --------------------------------------------------------------- */

static void on_async(uv_async_t *h)
{
    struct reclaimer *r = h->data;
    struct reclaim_item *list, *next;
    bool exited;
    pthread_mutex_lock(&r->s->bg.lock);
    list = r->s->done;
    r->s->done = NULL;
    exited = r->s->bg.exited;
    pthread_mutex_unlock(&r->s->bg.lock);
    for (; list; list = next) {
        next = list->next;
        if (r->ended)
            r->ended(r, list);
        item_free(list);
    }
    if (exited && !r->exit_told) {
        r->exit_told = true;
        if (r->exited)
            r->exited(r);
    }
}

int reclaimer_init(struct reclaimer *r, uv_loop_t *loop, const char *state_dir)
{
    struct reclaim_shared *s = xcalloc(1, sizeof *s);
    char path[PATH_MAX];
    int rc;
    memset(r, 0, sizeof *r);
    r->loop = loop;
    r->s = s;
    bg_shared_init(&s->bg, shared_release);
    atomic_init(&s->stop, 0);
    atomic_init(&s->bytes, 0);
    atomic_init(&s->entries, 0);
    util_fmt(path, sizeof path, "%s/reclaim", state_dir);
    s->dir = xstrdup(path);
    /* Durable before a record is renamed into it (docs/design.md, "Power cuts"). */
    if ((rc = util_mkdir_durable(path, 0700)) != 0) {
        LOG(LOG_ERROR, "cannot create the reclaim records' directory", LF_S("path", path),
            LF_S("reason", strerror(-rc)));
    }
    return bg_thread_start(&r->bg, &s->bg, loop, on_async, r, reclaim_thread);
}

/* An item of the same directory, being recorded, waiting or being
 * deleted. Under lock (and on the loop: r->adding is the loop's). */
static struct reclaim_item *find_same(const struct reclaimer *r, const struct reclaim_item *it)
{
    const struct reclaim_shared *s = r->s;
    for (struct reclaim_adding *a = r->adding; a; a = a->next)
        if (same_dir(a->it, it))
            return a->it;
    for (struct reclaim_item *q = s->queue; q; q = q->next)
        if (same_dir(q, it))
            return q;
    return s->cur && same_dir(s->cur, it) ? s->cur : NULL;
}

/* Queues it for the thread; count: its numbers are not counted yet. Under
 * lock. */
static void enqueue(struct reclaim_shared *s, struct reclaim_item *it, bool count)
{
    struct reclaim_item **tail;
    if (count) {
        atomic_fetch_add(&s->bytes, it->bytes);
        atomic_fetch_add(&s->entries, it->entries);
    }
    for (tail = &s->queue; *tail; tail = &(*tail)->next)
        ;
    *tail = it;
    pthread_cond_signal(&s->bg.cond);
}

/* it is of a directory already waiting or being deleted (found as q):
 * counted with its newer numbers; one being deleted runs once more after
 * (reclaim_thread). Under lock; it is freed. */
static void merge(struct reclaim_shared *s, struct reclaim_item *q, struct reclaim_item *it)
{
    atomic_fetch_add(&s->bytes, it->bytes);
    atomic_fetch_add(&s->entries, it->entries);
    if (q == s->cur) {
        if (q->again) {
            count_down(&s->entries, q->again_entries);
            count_down(&s->bytes, q->again_bytes);
        }
        q->again = true;
        q->again_entries = it->entries;
        q->again_bytes = it->bytes;
    } else {
        count_down(&s->entries, q->entries);
        count_down(&s->bytes, q->bytes);
        q->entries = it->entries;
        q->bytes = it->bytes;
    }
    item_free(it);
}

/* After the record of `it` was written: a record of the format before (named
 * by the moveId alone) of the same directory is the same reclaim, and
 * goes (left by the run that recorded it, skipped at this start because its
 * move was being recovered). */
static void drop_old_record(const char *dir, const struct reclaim_item *it)
{
    char name[MOVE_ID_MAX + 8], *text;
    struct reclaim_item *old;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    util_fmt(name, sizeof name, "%s.json", it->move_id);
    text = util_read_small_file(dfd, name, RECLAIM_RECORD_MAX);
    old = text ? record_parse(text, it->move_id) : NULL;
    if (old && same_dir(old, it) && unlinkat(dfd, name, 0) == 0)
        (void)fsync(dfd);
    if (old)
        item_free(old);
    free(text);
    close(dfd);
}

/* The writer's copy of what it records (the loop may merge newer numbers
 * into the item meanwhile). */
struct add_job {
    char *dir;
    struct reclaim_item it;
};

static int add_run(void *data)
{
    struct add_job *d = data;
    int rc = record_write(d->dir, &d->it);
    if (rc != 0)
        LOG(LOG_ERROR,
            "cannot record a reclaim in state_dir; it runs now, but a restart before it ends "
            "leaves the directory behind",
            LF_S("move", d->it.move_id), LF_S("path", d->it.dir), LF_S("reason", strerror(-rc)));
    else
        drop_old_record(d->dir, &d->it);
    return rc;
}

static void add_free(void *data)
{
    struct add_job *d = data;
    free(d->dir);
    free(d->it.dir);
    free(d);
}

/* On the loop: the record is written (or could not be): the reclaim runs.
 * The writer closed first: not queued; its record (when written) makes the
 * next start resume it. */
static void add_done(void *arg, int rc)
{
    struct reclaim_adding *a = arg, **pp;
    struct reclaimer *r = a->r;
    struct reclaim_shared *s = r->s;
    for (pp = &r->adding; *pp != a; pp = &(*pp)->next)
        ;
    *pp = a->next;
    pthread_mutex_lock(&s->bg.lock);
    if (rc == -ECANCELED) {
        count_down(&s->entries, a->it->entries);
        count_down(&s->bytes, a->it->bytes);
        item_free(a->it);
    } else {
        enqueue(s, a->it, false);
    }
    pthread_mutex_unlock(&s->bg.lock);
    free(a);
}

int reclaimer_add(struct reclaimer *r, const char *move_id, const char *dir, dev_t dev, ino_t ino,
                  uint64_t entries, uint64_t bytes)
{
    struct reclaim_shared *s = r->s;
    struct reclaim_item *it = item_new(move_id, dir, dev, ino, entries, bytes), *q;
    struct reclaim_adding *a;
    struct add_job *d;
    pthread_mutex_lock(&s->bg.lock);
    q = find_same(r, it);
    if (q) { /* its record is there, on its way, or written again by the thread */
        merge(s, q, it);
        pthread_mutex_unlock(&s->bg.lock);
        return 0;
    }
    /* Counted from now on (heartbeats, status); queued once recorded. */
    atomic_fetch_add(&s->bytes, it->bytes);
    atomic_fetch_add(&s->entries, it->entries);
    pthread_mutex_unlock(&s->bg.lock);
    a = xcalloc(1, sizeof *a);
    a->r = r;
    a->it = it;
    a->next = r->adding;
    r->adding = a;
    d = xcalloc(1, sizeof *d);
    d->dir = xstrdup(s->dir);
    d->it = *it;
    d->it.dir = xstrdup(it->dir);
    d->it.next = NULL;
    /* Only the loop adds, so nothing of this directory can be queued before
     * add_done. */
    return journal_writer_submit(r->writer, add_run, add_free, d, add_done, a);
}

struct each_ctx {
    void (*fn)(void *arg, struct reclaim_item *it);
    void *arg;
};

static bool each_take(void *arg, const char *key, const char *text)
{
    struct each_ctx *c = arg;
    struct reclaim_item *it = record_parse(text, key);
    if (!it)
        return false;
    c->fn(c->arg, it);
    return true;
}

/* Calls fn for every readable record in dir (fn owns the item). tidy (the
 * daemon, which holds state_dir) also removes writes cut short and sets
 * unreadable records aside; without it (a reader such as `hostagent
 * status`) nothing is changed. 0, or negative errno when dir cannot be
 * opened. */
static int records_each(const char *dir, bool tidy, void (*fn)(void *arg, struct reclaim_item *it),
                        void *arg)
{
    struct each_ctx c = {fn, arg};
    struct state_scan how = {
        .key_max = RECLAIM_KEY_MAX,
        .max_bytes = RECLAIM_RECORD_MAX,
        .repair = tidy,
        .keep_slots = false,
        .unreadable = "unreadable reclaim record set aside; its directory is not deleted",
        .take = each_take,
        .arg = &c,
    };
    unsigned unreadable;
    return state_file_scan(dir, &how, &unreadable);
}

struct load_ctx {
    struct reclaimer *r;
    bool (*skip)(void *arg, const struct reclaim_item *it);
    void *arg;
};

static void load_one(void *arg, struct reclaim_item *it)
{
    struct load_ctx *c = arg;
    struct reclaim_shared *s = c->r->s;
    struct reclaim_item *q;
    if (c->skip && c->skip(c->arg, it)) {
        item_free(it);
        return;
    }
    pthread_mutex_lock(&s->bg.lock);
    q = find_same(c->r, it);
    if (q) {
        /* Two records of one directory (the format before beside the
         * current one): one reclaim, one record. */
        pthread_mutex_unlock(&s->bg.lock);
        LOG(LOG_INFO, "a second record of one reclaim removed", LF_S("move", it->move_id),
            LF_S("path", it->dir), LF_S("record", it->key));
        record_remove(s->dir, it->key);
        item_free(it);
        return;
    }
    LOG(LOG_INFO, "resuming a reclaim", LF_S("move", it->move_id), LF_S("path", it->dir));
    enqueue(s, it, true);
    pthread_mutex_unlock(&s->bg.lock);
}

void reclaimer_load(struct reclaimer *r, bool (*skip)(void *arg, const struct reclaim_item *it),
                    void *arg)
{
    struct load_ctx c = {r, skip, arg};
    (void)records_each(r->s->dir, true, load_one, &c);
}

struct list_ctx {
    void (*cb)(void *arg, const struct reclaim_item *it);
    void *arg;
};

static void list_one(void *arg, struct reclaim_item *it)
{
    struct list_ctx *c = arg;
    c->cb(c->arg, it);
    item_free(it);
}

int reclaim_list(const char *state_dir, void (*cb)(void *arg, const struct reclaim_item *it),
                 void *arg)
{
    char dir[PATH_MAX];
    struct list_ctx c = {cb, arg};
    util_fmt(dir, sizeof dir, "%s/reclaim", state_dir);
    return records_each(dir, false, list_one, &c);
}

void reclaimer_totals(struct reclaimer *r, uint64_t *bytes, uint64_t *entries)
{
    /* Closed: nothing is being deleted any more. */
    *bytes = r->s ? atomic_load(&r->s->bytes) : 0;
    *entries = r->s ? atomic_load(&r->s->entries) : 0;
}

void reclaimer_stop(struct reclaimer *r)
{
    atomic_store(&r->s->stop, 1);
    pthread_mutex_lock(&r->s->bg.lock);
    r->s->stopping = true;
    pthread_cond_broadcast(&r->s->bg.cond);
    pthread_mutex_unlock(&r->s->bg.lock);
}

bool reclaimer_running(const struct reclaimer *r)
{
    bool exited;
    if (!r->bg.started)
        return false;
    pthread_mutex_lock(&r->s->bg.lock);
    exited = r->s->bg.exited;
    pthread_mutex_unlock(&r->s->bg.lock);
    return !exited;
}

uint64_t reclaimer_quiet_ms(struct reclaimer *r, uint64_t now)
{
    if (!reclaimer_running(r))
        return 0;
    return bg_thread_quiet_ms(&r->bg, &r->s->bg, true, now);
}

static void on_closed(uv_handle_t *h)
{
    struct reclaimer *r = h->data;
    struct reclaim_item *queue, *done;
    pthread_mutex_lock(&r->s->bg.lock);
    queue = r->s->queue;
    done = r->s->done;
    r->s->queue = r->s->done = NULL;
    pthread_mutex_unlock(&r->s->bg.lock);
    items_free(queue);
    items_free(done);
    bg_shared_unref(&r->s->bg);
    r->s = NULL;
    if (r->close_cb)
        r->close_cb(r);
}

void reclaimer_close(struct reclaimer *r, uint64_t wait_ms, void (*cb)(struct reclaimer *r))
{
    struct reclaim_shared *s = r->s;
    bool exited;
    reclaimer_stop(r);
    pthread_mutex_lock(&s->bg.lock);
    exited = bg_thread_let_go(&r->bg, &s->bg, wait_ms);
    pthread_mutex_unlock(&s->bg.lock);
    bg_thread_join_or_detach(&r->bg, exited,
                             "left the reclaim thread behind, stuck on a disk that does not "
                             "answer; its reclaim resumes at the next start");
    r->close_cb = cb;
    bg_thread_close_handle(&r->bg, r, on_closed);
}
