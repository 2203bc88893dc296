/* paths.h: the path rules of the protocol and the allowed-roots check. */
#ifndef HOSTAGENT_PATHS_H
#define HOSTAGENT_PATHS_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The name a deferred reclaim gives the source it renames away (followed by
 * the moveId): a request path with a component starting so is refused, so no
 * move can read, write or hide a reclaim directory. */
#define PATHS_RECLAIM_PREFIX ".hostagent-reclaim-"

/* The n-th name a reclaim of move_id may take beside (or inside) oldPath:
 * PATHS_RECLAIM_PREFIX + moveId for n = 1; when an earlier reclaim of a
 * move with the same moveId still holds that name, "~n" is appended (n >= 2;
 * '~' is not in the moveId alphabet, so no other moveId's name looks so).
 * The name is cut short when buf is too small. */
#define PATHS_RECLAIM_NAMES_MAX 64
void paths_reclaim_name(char *buf, size_t size, const char *move_id, unsigned n);

/* name is one of move_id's reclaim names (any n). */
bool paths_is_reclaim_name(const char *name, const char *move_id);

/* Protocol path syntax: absolute, at most PATH_MAX-1 bytes, components of at
 * most NAME_MAX bytes, no "//", "." or ".." components, no NUL (a NUL escape
 * reaches us as U+FFFF, see protocol.c). One trailing '/' is accepted and
 * removed in norm (PATH_MAX bytes); no component starting with
 * PATHS_RECLAIM_PREFIX. Returns 0 or -EINVAL with *why. */
int path_check_syntax(const char *p, char *norm, const char **why);

/* Resolves the existing part of a syntactically valid path: realpath() of the
 * deepest existing ancestor of its parent, then the rest of the components
 * appended unchanged (the last one is never followed, so a symlink there stays
 * a symlink). *nearest_dev gets the st_dev of that ancestor. Returns 0 or a
 * negative errno. */
int path_resolve(const char *norm, char *resolved, dev_t *nearest_dev);

/* path is strictly below root (both resolved, no trailing '/'). */
bool path_inside(const char *path, const char *root);

/* a and b are equal or one contains the other. */
bool path_overlap(const char *a, const char *b);

/* The same by identity: a or b (an existing directory) is the other one or
 * one of its existing ancestors, as when a bind mount shows one directory
 * under two names. */
bool path_overlap_by_id(const char *a, const char *b);

/* The identities (device, inode) of the existing directories along a path,
 * from the deepest up: the path itself first when it exists, then its
 * ancestors. Taken once, off the loop (stat can hang on a dead mount); the
 * overlap test below is then pure. At most PATH_IDS_MAX (the deepest). */
#define PATH_IDS_MAX 64
struct path_ids {
    unsigned n;
    bool leaf; /* id[0] is the path itself (it exists, as a directory) */
    struct {
        dev_t dev;
        ino_t ino;
    } id[PATH_IDS_MAX];
};

/* Fills ids for path (resolved, absolute). Blocking. */
void path_ids_of(const char *path, struct path_ids *ids);

/* One path is the other, or inside it, by identity: a's own directory is
 * among b's directories, or b's among a's (a bind mount shows one directory
 * under two names). */
bool path_ids_overlap(const struct path_ids *a, const struct path_ids *b);

/* The directory (dev, ino) is among ids' directories: the path is it or
 * inside it. */
bool path_ids_has(const struct path_ids *ids, dev_t dev, ino_t ino);

/* A directory that holds nothing, or only an empty lost+found. Returns 1
 * empty, 0 not empty, negative errno on failure. */
int path_dir_is_empty(const char *dir);

#endif
