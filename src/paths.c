/* paths.c: syntax rules for manager-supplied paths, and root containment. */
#include "paths.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int path_check_syntax(const char *p, char *norm, const char **why)
{
    size_t len = strlen(p);
    const char *c;
    if (p[0] != '/') {
        *why = "must be an absolute path";
        return -EINVAL;
    }
    if (len >= PATH_MAX) {
        *why = "is too long";
        return -EINVAL;
    }
    if (strstr(p, "\xef\xbf\xbf")) {
        *why = "contains a NUL character";
        return -EINVAL;
    }
    if (len == 1) {
        *why = "must not be /";
        return -EINVAL;
    }
    memcpy(norm, p, len + 1);
    if (norm[len - 1] == '/')
        norm[--len] = '\0';
    for (c = norm; *c;) {
        const char *comp = c + 1;
        size_t n = strcspn(comp, "/");
        if (n == 0) {
            *why = "has an empty component (//)";
            return -EINVAL;
        }
        if ((n == 1 && comp[0] == '.') || (n == 2 && comp[0] == '.' && comp[1] == '.')) {
            *why = "must not contain . or .. components";
            return -EINVAL;
        }
        if (n > NAME_MAX) {
            *why = "has a component longer than 255 bytes";
            return -EINVAL;
        }
        if (strncmp(comp, PATHS_RECLAIM_PREFIX, sizeof PATHS_RECLAIM_PREFIX - 1) == 0) {
            *why = "names a reclaim directory (" PATHS_RECLAIM_PREFIX
                   "...), which holds a moved server's old files until they are deleted";
            return -EINVAL;
        }
        c = comp + n;
    }
    return 0;
}

void paths_reclaim_name(char *buf, size_t size, const char *move_id, unsigned n)
{
    if (n <= 1)
        snprintf(buf, size, "%s%s", PATHS_RECLAIM_PREFIX, move_id);
    else
        snprintf(buf, size, "%s%s~%u", PATHS_RECLAIM_PREFIX, move_id, n);
}

bool paths_is_reclaim_name(const char *name, const char *move_id)
{
    size_t np = sizeof PATHS_RECLAIM_PREFIX - 1, ni = strlen(move_id);
    const char *tail;
    if (strncmp(name, PATHS_RECLAIM_PREFIX, np) != 0 || strncmp(name + np, move_id, ni) != 0)
        return false;
    tail = name + np + ni;
    if (*tail == '\0')
        return true;
    /* "~n", n from 2 without leading zeros: exactly the names made above. */
    if (tail[0] != '~' || tail[1] < '1' || tail[1] > '9' || strlen(tail + 1) > 9)
        return false;
    for (const char *c = tail + 1; *c; c++)
        if (*c < '0' || *c > '9')
            return false;
    return strcmp(tail, "~1") != 0;
}

int path_resolve(const char *norm, char *resolved, dev_t *nearest_dev)
{
    char anc[PATH_MAX], real[PATH_MAX];
    size_t cut;
    struct stat st;
    const char *rest;

    /* Start from the parent: the last component is never followed. */
    cut = (size_t)(strrchr(norm, '/') - norm);
    for (;;) {
        if (cut == 0) {
            strcpy(anc, "/");
        } else {
            memcpy(anc, norm, cut);
            anc[cut] = '\0';
        }
        if (realpath(anc, real)) {
            break;
        }
        if (errno != ENOENT)
            return -errno;
        /* The ancestor does not exist yet: try its parent. */
        while (cut > 0 && norm[--cut] != '/')
            ;
    }
    if (stat(real, &st) != 0)
        return -errno;
    if (nearest_dev)
        *nearest_dev = st.st_dev;
    rest = norm + cut; /* begins with '/' */
    if (strlen(real) + strlen(rest) >= PATH_MAX)
        return -ENAMETOOLONG;
    strcpy(resolved, strcmp(real, "/") == 0 ? "" : real);
    strcat(resolved, rest);
    return 0;
}

bool path_inside(const char *path, const char *root)
{
    size_t n = strlen(root);
    if (strcmp(root, "/") == 0)
        return path[0] == '/' && path[1] != '\0';
    return strncmp(path, root, n) == 0 && path[n] == '/' && path[n + 1] != '\0';
}

bool path_overlap(const char *a, const char *b)
{
    return strcmp(a, b) == 0 || path_inside(a, b) || path_inside(b, a);
}

/* Is the directory `dir` (dev, ino) the path p or one of its existing
 * ancestors? */
static bool id_on_path(dev_t dev, ino_t ino, const char *p)
{
    char buf[PATH_MAX];
    size_t len = strlen(p);
    struct stat st;
    if (len >= sizeof buf)
        return false;
    memcpy(buf, p, len + 1);
    for (;;) {
        if (stat(buf, &st) == 0 && st.st_dev == dev && st.st_ino == ino)
            return true;
        char *slash = strrchr(buf, '/');
        if (!slash || slash == buf)
            return false;
        *slash = '\0';
    }
}

bool path_overlap_by_id(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) == 0 && S_ISDIR(sa.st_mode) && id_on_path(sa.st_dev, sa.st_ino, b))
        return true;
    return stat(b, &sb) == 0 && S_ISDIR(sb.st_mode) && id_on_path(sb.st_dev, sb.st_ino, a);
}

void path_ids_of(const char *path, struct path_ids *ids)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    struct stat st;
    bool first = true;
    memset(ids, 0, sizeof *ids);
    if (len >= sizeof buf)
        return;
    memcpy(buf, path, len + 1);
    while (ids->n < PATH_IDS_MAX) {
        if (stat(buf, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (first)
                ids->leaf = true;
            ids->id[ids->n].dev = st.st_dev;
            ids->id[ids->n].ino = st.st_ino;
            ids->n++;
        }
        first = false;
        char *slash = strrchr(buf, '/');
        if (!slash)
            return;
        if (slash == buf) {
            if (buf[1] == '\0')
                return;
            buf[1] = '\0';
            continue;
        }
        *slash = '\0';
    }
}

bool path_ids_has(const struct path_ids *ids, dev_t dev, ino_t ino)
{
    for (unsigned i = 0; i < ids->n; i++)
        if (ids->id[i].dev == dev && ids->id[i].ino == ino)
            return true;
    return false;
}

bool path_ids_overlap(const struct path_ids *a, const struct path_ids *b)
{
    return (a->leaf && path_ids_has(b, a->id[0].dev, a->id[0].ino)) ||
           (b->leaf && path_ids_has(a, b->id[0].dev, b->id[0].ino));
}

int path_dir_is_empty(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int empty = 1;
    if (!d)
        return -errno;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (strcmp(e->d_name, "lost+found") == 0) {
            int fd = openat(dirfd(d), "lost+found", O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            DIR *lf;
            struct dirent *le;
            if (fd < 0) {
                empty = 0;
                break;
            }
            lf = fdopendir(fd);
            if (!lf) {
                close(fd);
                empty = 0;
                break;
            }
            while ((le = readdir(lf)) != NULL)
                if (strcmp(le->d_name, ".") != 0 && strcmp(le->d_name, "..") != 0)
                    empty = 0;
            closedir(lf);
            if (!empty)
                break;
            continue;
        }
        empty = 0;
        break;
    }
    closedir(d);
    return empty;
}
