/* tree_walk.h: an iterative, descriptor-relative walk of a directory tree,
 * optionally mirrored on a second tree (source and destination side by side).
 *
 * Every step is relative to a directory descriptor (openat/fstatat with
 * AT_SYMLINK_NOFOLLOW and O_NOFOLLOW), so a symlink swapped in during the
 * walk never redirects it, whatever the path length. There is no recursion
 * (depth is bounded by memory only), names are visited in strcmp order (every
 * pass sees the same order), and at most TREE_WALK_OPEN_LEVELS levels keep
 * their descriptors open: deeper ones close the oldest, which are reopened
 * through ".." on the way back up and checked by device and inode. Memory is
 * the names of the directories on the current path, not of the whole tree. */
#ifndef HOSTAGENT_TREE_WALK_H
#define HOSTAGENT_TREE_WALK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/types.h>

#define TREE_WALK_OPEN_LEVELS 96

struct tree_walk;

struct tree_walk_ops {
    /* A directory entry other than a directory. 0 continues, <0 stops the walk. */
    int (*file)(struct tree_walk *w, const char *name, const struct stat *st);
    /* A directory, before descending: 0 descends, 1 skips it, <0 stops. In a
     * mirrored walk it must make sure the mirror holds a directory of that
     * name (the copy pass creates it). */
    int (*dir_pre)(struct tree_walk *w, const char *name, const struct stat *st);
    /* A directory after its contents, while its descriptors (fds[0] primary,
     * fds[1] mirror or -1) are still open; the walk's current directory is
     * its parent again. 0 continues, <0 stops. */
    int (*dir_post)(struct tree_walk *w, const char *name, const struct stat *st, const int fds[2]);
    /* Optional: the root's entries are done, its descriptors still open. */
    int (*root_post)(struct tree_walk *w);
};

struct tree_walk_level {
    int fd[2];    /* primary, mirror (-1 when not mirrored or closed) */
    dev_t dev[2]; /* identity, to check a descriptor reopened via ".." */
    ino_t ino[2];
    char *names;    /* arena of NUL-terminated names, each preceded by its d_type */
    size_t *offs;   /* sorted offsets into names */
    size_t n, next; /* entries, next to visit */
    size_t path_len;
    struct stat st; /* the directory's own stat (primary side) */
    char *name;     /* its name in the parent (NULL for the root) */
};

struct tree_walk {
    const struct tree_walk_ops *ops;
    void *arg;       /* for the callbacks */
    bool mirrored;   /* walk a second tree with the same names */
    bool need_stat;  /* false: non-directories get only st_mode's type (from d_type) */
    bool strict_dev; /* an entry on another mount than the root's is an error (else skipped) */
    /* A live tree (a preparing copy): an entry that vanished before it was
     * examined, or a directory swapped or gone before it was opened, is
     * skipped instead of failing the walk; counted in `vanished`. */
    bool live;
    uint64_t vanished;
    struct tree_walk_level *lv;
    size_t depth, cap;
    char *path; /* relative path of the current directory ("" at the root) */
    size_t path_cap;
    dev_t root_dev;
    uint64_t root_mnt; /* the root's mount id (statx), 0 when unknown */
    /* CLOCK_REALTIME_COARSE read just before the current entry was examined
     * (the clock file timestamps come from), for the callbacks. */
    struct timespec stat_clock;
    /* The STATX_ATTR_* attributes of the entry being visited (0 where the
     * filesystem reports none, or need_stat is off). */
    uint64_t attrs;
    /* Set when the walk failed by itself (not in a callback). */
    int err;              /* errno-style, positive */
    bool changed;         /* the tree changed under the walk (an identity check failed) */
    bool err_mirror;      /* the failure was on the mirror side */
    char err_where[256];  /* relative path of the failing entry */
    const char *err_what; /* the operation */
};

/* Walks the tree whose root directory is open as root_fd (and mirror_fd when
 * mirrored; the descriptors stay the caller's). Returns 0, or -1 when a
 * callback stopped the walk or the walk itself failed (then w->err is set). */
int tree_walk_run(struct tree_walk *w, int root_fd, int mirror_fd);

/* The current directory's descriptors, valid inside callbacks. */
int tree_walk_fd(const struct tree_walk *w, int side);

/* Writes "dir/name" relative to the root into buf (truncated from the left
 * to fit, keeping the end of the path). */
void tree_walk_relpath(const struct tree_walk *w, const char *name, char *buf, size_t size);

/* Frees what the walk allocated (also after a failed run). */
void tree_walk_free(struct tree_walk *w);

#endif
