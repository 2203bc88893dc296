/* reclaim.c: the background deletion of reclaim directories (see reclaim.h):
 * records in state_dir/reclaim, one thread at idle priority, the deletion. */
#include "reclaim.h"
#include "log.h"
#include "paths.h"
#include "tree_walk.h"
#include "unlink_pool.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* linux/ioprio.h is not in every libc's headers. */
#define RECLAIM_IOPRIO_WHO_PROCESS 1
#define RECLAIM_IOPRIO_CLASS_IDLE 3
#define RECLAIM_IOPRIO_CLASS_SHIFT 13
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

/* --- records in state_dir/reclaim ------------------------------------------------- */

static void record_path(const struct reclaimer *r, const char *move_id, bool tmp, char *buf,
                        size_t size)
{
    util_fmt(buf, size, tmp ? "%s/.%s.tmp" : "%s/%s.json", r->dir, move_id);
}

static int record_write(const struct reclaimer *r, const struct reclaim_item *it)
{
    char path[PATH_MAX], tmp[PATH_MAX], id[48];
    cJSON *o = cJSON_CreateObject();
    char *text;
    size_t len;
    int fd, rc = 0;
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
    len = strlen(text);
    record_path(r, it->move_id, false, path, sizeof path);
    record_path(r, it->move_id, true, tmp, sizeof tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) != 0)
        rc = errno ? -errno : -EIO;
    if (fd >= 0)
        close(fd);
    cJSON_free(text);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc == 0)
        rc = util_fsync_dir(r->dir);
    if (rc != 0)
        (void)unlink(tmp);
    return rc;
}

static void record_remove(const struct reclaimer *r, const char *move_id)
{
    char path[PATH_MAX];
    record_path(r, move_id, false, path, sizeof path);
    if (unlink(path) == 0)
        (void)util_fsync_dir(r->dir);
}

static struct reclaim_item *item_new(const char *move_id, const char *dir, dev_t dev, ino_t ino,
                                     uint64_t entries, uint64_t bytes)
{
    struct reclaim_item *it = xcalloc(1, sizeof *it);
    util_fmt(it->move_id, sizeof it->move_id, "%s", move_id);
    it->dir = xstrdup(dir);
    it->dev = dev;
    it->ino = ino;
    it->entries = entries;
    it->bytes = bytes;
    return it;
}

static void item_free(struct reclaim_item *it)
{
    free(it->dir);
    free(it);
}

/* Parses one record strictly; NULL when anything is missing or odd. */
static struct reclaim_item *record_parse(const char *text, const char *file_id)
{
    cJSON *o = cJSON_Parse(text);
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(o, "moveId");
    const cJSON *dir = cJSON_GetObjectItemCaseSensitive(o, "dir");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    const cJSON *ent = cJSON_GetObjectItemCaseSensitive(o, "entries");
    const cJSON *byt = cJSON_GetObjectItemCaseSensitive(o, "bytes");
    struct reclaim_item *it = NULL;
    unsigned long long dev, ino;
    char tail, want[NAME_MAX + 1];
    const char *slash;
    if (!cJSON_IsString(mid) || !cJSON_IsString(dir) || !cJSON_IsString(id) ||
        !cJSON_IsNumber(ent) || !cJSON_IsNumber(byt) || ent->valuedouble < 0 ||
        byt->valuedouble < 0 || strcmp(mid->valuestring, file_id) != 0 ||
        strlen(mid->valuestring) > MOVE_ID_MAX ||
        sscanf(id->valuestring, "%llu:%llu%c", &dev, &ino, &tail) != 2)
        goto out;
    util_fmt(want, sizeof want, "%s%s", PATHS_RECLAIM_PREFIX, mid->valuestring);
    slash = strrchr(dir->valuestring, '/');
    if (dir->valuestring[0] != '/' || !slash || strcmp(slash + 1, want) != 0)
        goto out;
    it = item_new(mid->valuestring, dir->valuestring, (dev_t)dev, (ino_t)ino,
                  (uint64_t)ent->valuedouble, (uint64_t)byt->valuedouble);
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
    int prio = RECLAIM_IOPRIO_CLASS_IDLE << RECLAIM_IOPRIO_CLASS_SHIFT;
    if (syscall(SYS_ioprio_set, RECLAIM_IOPRIO_WHO_PROCESS, tid, prio) != 0)
        LOG(LOG_DEBUG, "cannot lower the reclaim thread's I/O priority",
            LF_S("reason", strerror(errno)));
    (void)setpriority(PRIO_PROCESS, (id_t)tid, 19);
}

static void reclaim_one(struct reclaimer *r, struct reclaim_item *it)
{
    char why[PATH_MAX + 256];
    struct reclaim_progress p = {.bytes = &r->bytes, .entries = &r->entries};
    uint64_t t0 = util_mono_ms();
    LOG(LOG_INFO, "reclaim started", LF_S("move", it->move_id), LF_S("path", it->dir),
        LF_U("entries", it->entries), LF_U("bytes", it->bytes));
    /* One unlink at a time: a background reclaim must stay light. */
    it->result = reclaim_delete(it->dir, it->dev, it->ino, &r->stop, &p, false, why, sizeof why);
    /* What it holds now; once it ended, none of it counts any more. */
    it->entries = it->entries > p.entries_done ? it->entries - p.entries_done : 0;
    it->bytes = it->bytes > p.bytes_done ? it->bytes - p.bytes_done : 0;
    if (it->result != -ECANCELED) {
        count_down(&r->entries, it->entries);
        count_down(&r->bytes, it->bytes);
    }
    if (it->result == -ECANCELED || it->result == -EAGAIN) {
        LOG(it->result == -EAGAIN ? LOG_WARN : LOG_INFO,
            "reclaim stopped; it resumes at the next start", LF_S("move", it->move_id),
            LF_S("path", it->dir), LF_S("reason", it->result == -EAGAIN ? why : "stopped"));
        return;
    }
    if (it->result == 0)
        LOG(LOG_INFO, "reclaim done", LF_S("move", it->move_id), LF_S("path", it->dir),
            LF_U("duration_ms", util_mono_ms() - t0));
    else
        LOG(LOG_ERROR, "reclaim could not delete everything; what is left stays for the operator",
            LF_S("move", it->move_id), LF_S("path", it->dir), LF_S("reason", why));
    record_remove(r, it->move_id);
}

static void reclaim_thread(void *arg)
{
    struct reclaimer *r = arg;
    (void)pthread_setname_np(pthread_self(), "ha-reclaim");
    lower_priority();
    pthread_mutex_lock(&r->lock);
    for (;;) {
        struct reclaim_item *it;
        while (!r->stopping && !r->queue)
            pthread_cond_wait(&r->cond, &r->lock);
        if (r->stopping)
            break;
        it = r->queue;
        r->queue = it->next;
        it->next = NULL;
        r->cur = it;
        pthread_mutex_unlock(&r->lock);
        reclaim_one(r, it);
        pthread_mutex_lock(&r->lock);
        r->cur = NULL;
        it->next = r->done;
        r->done = it;
        if (!r->closing)
            uv_async_send(&r->async);
    }
    pthread_mutex_unlock(&r->lock);
}

/* --- the loop's side --------------------------------------------------------------- */

static void on_async(uv_async_t *h)
{
    struct reclaimer *r = h->data;
    struct reclaim_item *list, *next;
    pthread_mutex_lock(&r->lock);
    list = r->done;
    r->done = NULL;
    pthread_mutex_unlock(&r->lock);
    for (; list; list = next) {
        next = list->next;
        if (r->ended)
            r->ended(r, list);
        item_free(list);
    }
}

int reclaimer_init(struct reclaimer *r, uv_loop_t *loop, const char *state_dir)
{
    char path[PATH_MAX];
    int rc;
    memset(r, 0, sizeof *r);
    r->loop = loop;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    atomic_init(&r->stop, 0);
    atomic_init(&r->bytes, 0);
    atomic_init(&r->entries, 0);
    util_fmt(path, sizeof path, "%s/reclaim", state_dir);
    r->dir = xstrdup(path);
    /* Durable before a record is renamed into it (docs/design.md, "Power cuts"). */
    if ((rc = util_mkdir_durable(path, 0700)) != 0) {
        LOG(LOG_ERROR, "cannot create the reclaim records' directory", LF_S("path", path),
            LF_S("reason", strerror(-rc)));
    }
    rc = uv_async_init(loop, &r->async, on_async);
    if (rc != 0)
        return rc;
    r->async.data = r;
    rc = uv_thread_create(&r->thread, reclaim_thread, r);
    if (rc != 0)
        return rc;
    r->thread_started = true;
    return 0;
}

static bool queued(const struct reclaimer *r, const char *move_id)
{
    for (const struct reclaim_item *it = r->queue; it; it = it->next)
        if (strcmp(it->move_id, move_id) == 0)
            return true;
    return r->cur && strcmp(r->cur->move_id, move_id) == 0;
}

static void enqueue(struct reclaimer *r, struct reclaim_item *it)
{
    struct reclaim_item **tail;
    atomic_fetch_add(&r->bytes, it->bytes);
    atomic_fetch_add(&r->entries, it->entries);
    for (tail = &r->queue; *tail; tail = &(*tail)->next)
        ;
    *tail = it;
    pthread_cond_signal(&r->cond);
}

int reclaimer_add(struct reclaimer *r, const char *move_id, const char *dir, dev_t dev, ino_t ino,
                  uint64_t entries, uint64_t bytes)
{
    struct reclaim_item *it = item_new(move_id, dir, dev, ino, entries, bytes);
    int rc = record_write(r, it);
    if (rc != 0)
        LOG(LOG_ERROR,
            "cannot record a reclaim in state_dir; it runs now, but a restart before it ends "
            "leaves the directory behind",
            LF_S("move", move_id), LF_S("path", dir), LF_S("reason", strerror(-rc)));
    pthread_mutex_lock(&r->lock);
    if (queued(r, move_id)) {
        pthread_mutex_unlock(&r->lock);
        item_free(it);
        return rc;
    }
    enqueue(r, it);
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Calls fn for every readable record in dir (fn owns the item). tidy (the
 * daemon, which holds state_dir) also removes writes cut short and sets
 * unreadable records aside; without it (a reader such as `hostagent
 * status`) nothing is changed. 0, or negative errno when dir cannot be
 * opened. */
static int records_each(const char *dir, bool tidy, void (*fn)(void *arg, struct reclaim_item *it),
                        void *arg)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err;
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *de;
    if (!d) {
        err = -errno;
        if (dfd >= 0)
            close(dfd);
        return err;
    }
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        char id[MOVE_ID_MAX + 1], *text;
        struct reclaim_item *it;
        if (n > 4 && strcmp(de->d_name + n - 4, ".tmp") == 0) {
            if (tidy)
                (void)unlinkat(dirfd(d), de->d_name, 0); /* a write cut short */
            continue;
        }
        if (n <= 5 || n - 5 > MOVE_ID_MAX || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        util_fmt(id, sizeof id, "%.*s", (int)(n - 5), de->d_name);
        text = util_read_small_file(dirfd(d), de->d_name, RECLAIM_RECORD_MAX);
        it = text ? record_parse(text, id) : NULL;
        free(text);
        if (it) {
            fn(arg, it);
        } else if (tidy) {
            char bad[NAME_MAX + 16];
            util_fmt(bad, sizeof bad, "%s.corrupt", de->d_name);
            LOG(LOG_ERROR, "unreadable reclaim record set aside; its directory is not deleted",
                LF_S("file", de->d_name));
            (void)renameat(dirfd(d), de->d_name, dirfd(d), bad);
        }
    }
    closedir(d);
    return 0;
}

struct load_ctx {
    struct reclaimer *r;
    bool (*skip)(void *arg, const char *move_id);
    void *arg;
};

static void load_one(void *arg, struct reclaim_item *it)
{
    struct load_ctx *c = arg;
    if (c->skip && c->skip(c->arg, it->move_id)) {
        item_free(it);
        return;
    }
    LOG(LOG_INFO, "resuming a reclaim", LF_S("move", it->move_id), LF_S("path", it->dir));
    pthread_mutex_lock(&c->r->lock);
    if (queued(c->r, it->move_id))
        item_free(it);
    else
        enqueue(c->r, it);
    pthread_mutex_unlock(&c->r->lock);
}

void reclaimer_load(struct reclaimer *r, bool (*skip)(void *arg, const char *move_id), void *arg)
{
    struct load_ctx c = {r, skip, arg};
    (void)records_each(r->dir, true, load_one, &c);
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
    *bytes = atomic_load(&r->bytes);
    *entries = atomic_load(&r->entries);
}

void reclaimer_stop(struct reclaimer *r)
{
    atomic_store(&r->stop, 1);
    pthread_mutex_lock(&r->lock);
    r->stopping = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void on_closed(uv_handle_t *h)
{
    struct reclaimer *r = h->data;
    struct reclaim_item *it, *next;
    for (it = r->queue; it; it = next) {
        next = it->next;
        item_free(it);
    }
    for (it = r->done; it; it = next) {
        next = it->next;
        item_free(it);
    }
    r->queue = r->done = NULL;
    free(r->dir);
    r->dir = NULL;
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    if (r->close_cb)
        r->close_cb(r);
}

void reclaimer_close(struct reclaimer *r, void (*cb)(struct reclaimer *r))
{
    reclaimer_stop(r);
    if (r->thread_started) {
        uv_thread_join(&r->thread);
        r->thread_started = false;
    }
    r->closing = true;
    r->close_cb = cb;
    r->async.data = r;
    if (!r->async.loop) { /* reclaimer_init failed before the handle */
        on_closed((uv_handle_t *)&r->async);
        return;
    }
    uv_close((uv_handle_t *)&r->async, on_closed);
}
