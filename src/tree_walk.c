/* tree_walk.c: iterative descriptor-relative tree walk (see tree_walk.h). */
#include "tree_walk.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define DIRENT_BUF (64u << 10)

static int walk_fail(struct tree_walk *w, int err, const char *what, const char *name)
{
    w->err = err;
    w->err_what = what;
    tree_walk_relpath(w, name, w->err_where, sizeof w->err_where);
    return -1;
}

int tree_walk_fd(const struct tree_walk *w, int side)
{
    return w->lv[w->depth - 1].fd[side];
}

void tree_walk_relpath(const struct tree_walk *w, const char *name, char *buf, size_t size)
{
    size_t pl = w->depth ? w->lv[w->depth - 1].path_len : 0;
    size_t nl = name ? strlen(name) : 0;
    size_t total = pl + (pl && nl ? 1 : 0) + nl;
    char *tmp;
    if (size == 0)
        return;
    tmp = xmalloc(total + 1);
    if (pl)
        memcpy(tmp, w->path, pl);
    if (pl && nl)
        tmp[pl] = '/';
    if (nl)
        memcpy(tmp + total - nl, name, nl);
    tmp[total] = '\0';
    /* Keep the end of a long path: the file name is what a person needs. */
    if (total >= size)
        util_fmt(buf, size, "...%s", tmp + total - (size - 4));
    else
        memcpy(buf, tmp, total + 1);
    free(tmp);
}

/* statx(2) into a struct stat, plus the mount id: two mounts of one
 * filesystem (a bind mount) share st_dev, so only the mount id tells that a
 * directory is the root of another mount. *mnt is 0 when the kernel does not
 * report it (before Linux 5.8); statx missing altogether falls back to
 * fstatat. Returns 0 or -1 with errno. */
static int walk_stat(int dirfd, const char *name, int flags, struct stat *st, uint64_t *mnt,
                     uint64_t *attrs)
{
    struct statx sx;
    *mnt = 0;
    *attrs = 0;
    if (statx(dirfd, name, flags | AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_MNT_ID, &sx) !=
        0) {
        if (errno != ENOSYS)
            return -1;
        return fstatat(dirfd, name, st, flags | AT_SYMLINK_NOFOLLOW);
    }
    util_statx_to_stat(&sx, st);
    if (sx.stx_mask & STATX_MNT_ID)
        *mnt = sx.stx_mnt_id;
    *attrs = sx.stx_attributes & sx.stx_attributes_mask;
    return 0;
}

/* Another mount than the root's: another device, or (bind mounts of the
 * same filesystem) another mount id. */
static bool foreign_mount(const struct tree_walk *w, const struct stat *st, uint64_t mnt)
{
    return st->st_dev != w->root_dev || (mnt && w->root_mnt && mnt != w->root_mnt);
}

static int cmp_names(const void *a, const void *b, void *arena)
{
    const char *base = arena;
    return strcmp(base + *(const size_t *)a + 1, base + *(const size_t *)b + 1);
}

/* Reads a whole directory's names (with their d_type) and sorts them. */
static int list_dir(struct tree_walk_level *l)
{
    char *buf = xmalloc(DIRENT_BUF);
    size_t used = 0, cap = 0, ocap = 0;
    ssize_t got;
    l->names = NULL;
    l->offs = NULL;
    l->n = l->next = 0;
    while ((got = getdents64(l->fd[0], buf, DIRENT_BUF)) > 0) {
        for (ssize_t pos = 0; pos < got;) {
            struct dirent64 *d = (struct dirent64 *)(void *)(buf + pos);
            size_t len = strlen(d->d_name);
            pos += d->d_reclen;
            if (d->d_name[0] == '.' &&
                (d->d_name[1] == '\0' || (d->d_name[1] == '.' && d->d_name[2] == '\0')))
                continue;
            if (used + len + 2 > cap) {
                cap = cap ? cap * 2 : 4096;
                while (used + len + 2 > cap)
                    cap *= 2;
                l->names = xrealloc(l->names, cap);
            }
            if (l->n == ocap) {
                ocap = ocap ? ocap * 2 : 64;
                l->offs = xrealloc(l->offs, ocap * sizeof *l->offs);
            }
            l->offs[l->n++] = used;
            l->names[used] = (char)d->d_type;
            memcpy(l->names + used + 1, d->d_name, len + 1);
            used += len + 2;
        }
    }
    free(buf);
    if (got < 0)
        return -errno;
    if (l->n > 1)
        qsort_r(l->offs, l->n, sizeof *l->offs, cmp_names, l->names);
    return 0;
}

static void level_close(struct tree_walk_level *l)
{
    for (int s = 0; s < 2; s++) {
        if (l->fd[s] >= 0)
            close(l->fd[s]);
        l->fd[s] = -1;
    }
    free(l->names);
    free(l->offs);
    free(l->name);
    l->names = NULL;
    l->offs = NULL;
    l->name = NULL;
}

static void path_set(struct tree_walk *w, size_t len, const char *name)
{
    size_t nl = strlen(name), need = len + (len ? 1 : 0) + nl + 1;
    if (need > w->path_cap) {
        w->path_cap = need * 2;
        w->path = xrealloc(w->path, w->path_cap);
    }
    if (len)
        w->path[len++] = '/';
    memcpy(w->path + len, name, nl + 1);
}

static int open_dir_at(int parent, const char *name)
{
    return openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Pushes a level for the directory `name` of the current one (or the root). */
static int push_level(struct tree_walk *w, const int fds[2], const struct stat *st,
                      const char *name)
{
    struct tree_walk_level *l;
    struct stat ms;
    size_t parent_len = w->depth ? w->lv[w->depth - 1].path_len : 0;
    int rc;
    if (w->depth == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->lv = xrealloc(w->lv, w->cap * sizeof *w->lv);
    }
    l = &w->lv[w->depth];
    memset(l, 0, sizeof *l);
    l->fd[0] = fds[0];
    l->fd[1] = fds[1];
    l->st = *st;
    l->dev[0] = st->st_dev;
    l->ino[0] = st->st_ino;
    if (fds[1] >= 0) {
        if (fstat(fds[1], &ms) != 0) {
            rc = errno;
            level_close(l);
            return walk_fail(w, rc, "stat", name);
        }
        l->dev[1] = ms.st_dev;
        l->ino[1] = ms.st_ino;
    }
    l->name = name ? xstrdup(name) : NULL;
    if (name) {
        path_set(w, parent_len, name);
        l->path_len = parent_len + (parent_len ? 1 : 0) + strlen(name);
    } else {
        l->path_len = 0;
        if (!w->path) {
            w->path_cap = 256;
            w->path = xmalloc(w->path_cap);
        }
        w->path[0] = '\0';
    }
    w->depth++;
    if ((rc = list_dir(l)) != 0) {
        w->depth--;
        level_close(l);
        /* Removed while we listed it (a dead directory reads ENOENT): a
         * live tree's change, left for the commit; otherwise a change. */
        if (rc == -ENOENT && name && w->live) {
            w->vanished++;
            return 0;
        }
        w->changed = rc == -ENOENT && name;
        return walk_fail(w, -rc, "read directory", name);
    }
    /* Bound the descriptors held: close the oldest open level. */
    if (w->depth > TREE_WALK_OPEN_LEVELS) {
        struct tree_walk_level *old = &w->lv[w->depth - 1 - TREE_WALK_OPEN_LEVELS];
        for (int s = 0; s < 2; s++) {
            if (old->fd[s] >= 0)
                close(old->fd[s]);
            old->fd[s] = -1;
        }
    }
    return 0;
}

/* Back to the parent: reopen it through ".." if its descriptors were closed,
 * run dir_post, then close the child. */
static int pop_level(struct tree_walk *w)
{
    struct tree_walk_level child = w->lv[w->depth - 1];
    struct tree_walk_level *parent = &w->lv[w->depth - 2];
    int rc = 0;
    for (int s = 0; s < (w->mirrored ? 2 : 1); s++) {
        struct stat st;
        int fd;
        if (parent->fd[s] >= 0)
            continue;
        fd = openat(child.fd[s], "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 || fstat(fd, &st) != 0 || st.st_dev != parent->dev[s] ||
            st.st_ino != parent->ino[s]) {
            int err = fd < 0 ? errno : ESTALE;
            if (fd >= 0)
                close(fd);
            w->changed = true;
            w->err_mirror = s == 1;
            rc = walk_fail(w, err, "return to the parent of", NULL);
            break;
        }
        parent->fd[s] = fd;
    }
    w->depth--;
    w->path[parent->path_len] = '\0';
    if (rc == 0 && w->ops->dir_post)
        rc = w->ops->dir_post(w, child.name, &child.st, child.fd);
    level_close(&child);
    return rc;
}

static int descend(struct tree_walk *w, const char *name, const struct stat *st)
{
    struct tree_walk_level *l = &w->lv[w->depth - 1];
    int fds[2] = {-1, -1};
    struct stat os;
    uint64_t mnt, attrs;
    int err;
    fds[0] = open_dir_at(l->fd[0], name);
    if (fds[0] < 0 && w->live && (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)) {
        w->vanished++;
        return 0;
    }
    if (fds[0] < 0) {
        /* Gone or no longer a directory since it was examined: a change. */
        err = errno;
        w->changed = err == ENOENT || err == ENOTDIR || err == ELOOP;
        return walk_fail(w, err, "open directory", name);
    }
    if (walk_stat(fds[0], "", AT_EMPTY_PATH, &os, &mnt, &attrs) != 0) {
        err = errno;
        close(fds[0]);
        return walk_fail(w, err, "stat", name);
    }
    /* The directory we opened must be the one we examined, on our mount (a
     * directory bind-mounted onto itself keeps its device and inode). */
    if (os.st_dev != st->st_dev || os.st_ino != st->st_ino || foreign_mount(w, &os, mnt)) {
        close(fds[0]);
        if (w->live && !foreign_mount(w, &os, mnt)) {
            w->vanished++;
            return 0;
        }
        w->changed = true;
        return walk_fail(w, ESTALE, "open directory", name);
    }
    if (w->mirrored) {
        fds[1] = open_dir_at(l->fd[1], name);
        if (fds[1] < 0) {
            err = errno;
            close(fds[0]);
            w->err_mirror = true;
            return walk_fail(w, err, "open directory", name);
        }
    }
    return push_level(w, fds, &os, name);
}

static int visit(struct tree_walk *w, const char *rec)
{
    struct tree_walk_level *l = &w->lv[w->depth - 1];
    unsigned char dt = (unsigned char)rec[0];
    const char *name = rec + 1;
    struct stat st;
    uint64_t mnt = 0;
    int rc;
    if (w->need_stat || dt == DT_UNKNOWN || dt == DT_DIR) {
        (void)clock_gettime(CLOCK_REALTIME_COARSE, &w->stat_clock);
        if (walk_stat(l->fd[0], name, 0, &st, &mnt, &w->attrs) != 0) {
            if (errno == ENOENT && w->live) {
                w->vanished++;
                return 0;
            }
            if (errno == ENOENT)
                w->changed = true;
            return walk_fail(w, errno, "stat", name);
        }
    } else {
        memset(&st, 0, sizeof st);
        w->attrs = 0;
        st.st_mode = DTTOIF(dt);
        st.st_dev = w->root_dev;
    }
    if (foreign_mount(w, &st, mnt)) {
        if (w->strict_dev)
            return walk_fail(w, EXDEV, "a mount point (another filesystem or a bind mount) is at",
                             name);
        return 0; /* never step into, copy or remove through a foreign mount */
    }
    if (!S_ISDIR(st.st_mode))
        return w->ops->file ? w->ops->file(w, name, &st) : 0;
    rc = w->ops->dir_pre ? w->ops->dir_pre(w, name, &st) : 0;
    if (rc != 0)
        return rc < 0 ? -1 : 0;
    return descend(w, name, &st);
}

int tree_walk_run(struct tree_walk *w, int root_fd, int mirror_fd)
{
    int fds[2] = {-1, -1};
    struct stat st;
    int err;
    w->err = 0;
    w->changed = false;
    w->err_mirror = false;
    w->depth = 0;
    fds[0] = openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fds[0] < 0)
        return walk_fail(w, errno, "open directory", NULL);
    if (walk_stat(fds[0], "", AT_EMPTY_PATH, &st, &w->root_mnt, &w->attrs) != 0) {
        err = errno;
        close(fds[0]);
        return walk_fail(w, err, "stat", NULL);
    }
    w->root_dev = st.st_dev;
    if (w->mirrored) {
        fds[1] = openat(mirror_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fds[1] < 0) {
            err = errno;
            close(fds[0]);
            w->err_mirror = true;
            return walk_fail(w, err, "open directory", NULL);
        }
    }
    if (push_level(w, fds, &st, NULL) != 0)
        return -1;
    while (w->depth > 0) {
        struct tree_walk_level *l = &w->lv[w->depth - 1];
        if (l->next == l->n) {
            if (w->depth == 1) {
                int rc = w->ops->root_post ? w->ops->root_post(w) : 0;
                level_close(l);
                w->depth = 0;
                if (rc != 0)
                    return -1;
                break;
            }
            if (pop_level(w) != 0)
                return -1;
            continue;
        }
        if (visit(w, l->names + l->offs[l->next++]) != 0)
            return -1;
    }
    return 0;
}

void tree_walk_free(struct tree_walk *w)
{
    while (w->depth > 0)
        level_close(&w->lv[--w->depth]);
    free(w->lv);
    free(w->path);
    w->lv = NULL;
    w->path = NULL;
    w->cap = w->path_cap = 0;
}
