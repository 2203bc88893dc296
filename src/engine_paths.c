/* engine_paths.c: the floor of the move engine: its paths. A path inside the
 * tree opened one component at a time; the two tops' parents opened beneath
 * their roots, never through a symlink (newPath's missing parents made,
 * each durable before the next); and the tops looked at against the
 * identities the journal recorded (a commit, a discard, a recovery). Calls
 * only engine_report.c of the engine. */
#include "engine_internal.h"

/* --- one component at a time ------------------------------------------------------- */

/* The one rule for every path walked one name at a time: a component is a
 * name (not empty, "." or "..", which would leave the directory the walk
 * must stay beneath: -EXDEV) of at most NAME_MAX bytes (-ENAMETOOLONG). */
static int component_check(const char *name, size_t n)
{
    if (n > NAME_MAX)
        return -ENAMETOOLONG;
    if (n == 0 || (n <= 2 && name[0] == '.' && (n == 1 || name[1] == '.')))
        return -EXDEV;
    return 0;
}

/* Opens the directory named by the n bytes at name beneath dirfd under that
 * rule, following no symlink, closed on exec. -1 with errno on failure. */
static int open_component(int dirfd, const char *name, size_t n)
{
    char comp[NAME_MAX + 1];
    int rc = component_check(name, n);
    if (rc != 0) {
        errno = -rc;
        return -1;
    }
    memcpy(comp, name, n);
    comp[n] = '\0';
    return openat(dirfd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* Opens the directory holding `rel` (relative to root) one component at a
 * time, so that any path length works and no symlink is followed. */
int eng_open_parent_of(int root, const char *rel, const char **base)
{
    const char *p = rel, *slash;
    int fd = fcntl(root, F_DUPFD_CLOEXEC, 0);
    while (fd >= 0 && (slash = strchr(p, '/')) != NULL) {
        int next = open_component(fd, p, (size_t)(slash - p));
        close(fd);
        fd = next;
        p = slash + 1;
    }
    *base = p;
    return fd;
}

/* --- the top paths, beneath their roots --------------------------------------------- */

/* Opens the directory rel (relative, normalised) beneath dirfd, following no
 * symlink in any component: openat2 where the kernel has it, else one
 * O_NOFOLLOW component at a time. */
static int open_beneath(int dirfd, const char *rel)
{
    struct open_how how;
    const char *p = rel;
    long r;
    int fd;
    memset(&how, 0, sizeof how);
    how.flags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    r = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
    if (r >= 0 || errno != ENOSYS)
        return (int)r;
    fd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    while (fd >= 0 && *p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        int next = open_component(fd, p, n);
        close(fd);
        fd = next;
        p += n + (slash ? 1 : 0);
    }
    return fd;
}

/* path relative to root (both resolved, path strictly inside root). */
static const char *rel_to(const char *path, const char *root)
{
    size_t n = root ? strlen(root) : 0;
    if (!root || strcmp(root, "/") == 0)
        return path + 1;
    return strncmp(path, root, n) == 0 && path[n] == '/' ? path + n + 1 : path + 1;
}

/* A failure to open beneath the root: a component changed after the checks. */
int eng_fail_changed(struct eng *e, int err, const char *path)
{
    if (err == ELOOP || err == EXDEV || err == ENOTDIR)
        return eng_fail(e, CODE_PATH_NOT_ALLOWED,
                        "%s changed after it was checked (a symlink or file appeared in its path); "
                        "nothing was touched",
                        path);
    return eng_fail_at(e, err, "open", path, NULL);
}

/* Opens the parent of src beneath its root; src_base is its last component. */
int eng_open_src_parent(struct eng *e)
{
    const char *rel = rel_to(e->job->src, e->job->src_root);
    const char *slash = strrchr(rel, '/');
    int rootfd = open(e->job->src_root ? e->job->src_root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char dir[PATH_MAX];
    if (rootfd < 0)
        return eng_fail_at(e, errno, "open", e->job->src_root, NULL);
    e->src_base = slash ? slash + 1 : rel;
    if (slash) {
        util_fmt(dir, sizeof dir, "%.*s", (int)(slash - rel), rel);
        e->src_pfd = open_beneath(rootfd, dir);
    } else {
        e->src_pfd = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
    }
    close(rootfd);
    if (e->src_pfd < 0)
        return eng_fail_changed(e, errno, e->job->src);
    return 0;
}

/* Opens (creating what is missing, remembered for rollback) the parent of dst
 * beneath its root, one component at a time, never through a symlink. Each
 * directory made is durable before the next is made in it, and so before
 * anything is renamed or copied into it: its parent is fsynced right after
 * the mkdir, top-down. A directory's entry is durable only once that
 * directory is synced; a rename into a parent whose own entry could still
 * vanish with a power cut would take the server with it, oldPath's entry
 * gone with the rename's and newPath's parent never on the disk
 * (docs/design.md, "Power cuts"). */
int eng_open_dst_parent(struct eng *e, bool create)
{
    const char *rel = rel_to(e->job->dst, e->job->dst_root);
    const char *p = rel, *slash;
    char comp[NAME_MAX + 1], made[PATH_MAX];
    int fd = open(e->job->dst_root ? e->job->dst_root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return eng_fail_at(e, errno, "open", e->job->dst_root, NULL);
    while ((slash = strchr(p, '/')) != NULL) {
        size_t n = (size_t)(slash - p);
        int next;
        /* The rule first: nothing is made under a name open_component
         * would then refuse. */
        if (component_check(p, n) != 0) {
            close(fd);
            return eng_fail_changed(e, EXDEV, e->job->dst);
        }
        memcpy(comp, p, n);
        comp[n] = '\0';
        util_fmt(made, sizeof made, "%.*s", (int)(slash - e->job->dst), e->job->dst);
        if (create && mkdirat(fd, comp, 0755) == 0) {
            int rc;
            /* root's, as when the agent ran as root: the service's own
             * user keeps nothing outside its state. */
            if (e->can_chown && geteuid() != 0)
                (void)fchownat(fd, comp, 0, 0, AT_SYMLINK_NOFOLLOW);
            e->made_parents = xrealloc(e->made_parents, (e->n_made + 1) * sizeof(char *));
            e->made_parents[e->n_made++] = xstrdup(made);
            if ((rc = util_fsync_dir_at(fd, ".")) != 0) {
                close(fd);
                return eng_fail_at(e, -rc, "sync the new directory", made, NULL);
            }
        } else if (create && errno != EEXIST) {
            int err = errno;
            close(fd);
            return eng_fail_at(e, err, "create directory", made, NULL);
        }
        next = open_component(fd, p, n);
        close(fd);
        if (next < 0) {
            if (!create && errno == ENOENT)
                return 1; /* (undo) the parent never came to be */
            return eng_fail_changed(e, errno, e->job->dst);
        }
        fd = next;
        p = slash + 1;
    }
    e->dst_pfd = fd;
    e->dst_base = p;
    return 0;
}

/* --- the tops against the journal's record ------------------------------------------ */

/* Is st the directory the journal recorded, by device and inode? */
bool eng_id_matches(const struct engine_id *want, const struct stat *st)
{
    return want->known && S_ISDIR(st->st_mode) && st->st_dev == want->dev &&
           st->st_ino == want->ino;
}

static const char *type_name(mode_t mode)
{
    return S_ISDIR(mode)    ? "a directory"
           : S_ISREG(mode)  ? "a regular file"
           : S_ISLNK(mode)  ? "a symlink"
           : S_ISFIFO(mode) ? "a fifo"
           : S_ISSOCK(mode) ? "a socket"
                            : "a device node";
}

static bool describe_stat(const struct stat *st, const struct engine_id *want, char *buf,
                          size_t size)
{
    bool match = eng_id_matches(want, st);
    util_fmt(buf, size, "%s (device %u:%u, inode %llu)%s", type_name(st->st_mode),
             major(st->st_dev), minor(st->st_dev), (unsigned long long)st->st_ino,
             !want->known || !S_ISDIR(st->st_mode) ? ""
             : match                               ? ", the one the journal recorded"
                                                   : ", not the one the journal recorded");
    return match;
}

bool engine_describe(const char *path, const struct engine_id *want, char *buf, size_t size)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            util_fmt(buf, size, "absent");
        else
            util_fmt(buf, size, "not examinable (%s)", strerror(errno));
        return false;
    }
    return describe_stat(&st, want, buf, size);
}

/* Looks at dst through its parent beneath the root (never through a
 * symlink). Returns 1 when it is the directory the journal recorded (then
 * e->dstfd is open on it), 0 when it is absent, -1 when it is something else
 * or cannot be examined; state describes it. */
int eng_look_dst(struct eng *e, char *state, size_t size)
{
    const struct engine_job *job = e->job;
    struct stat st;
    int prc = eng_open_dst_parent(e, false);
    e->res->code = CODE_NONE;
    e->res->error[0] = '\0';
    if (prc == 1) {
        util_fmt(state, size, "absent (its parent directory too)");
        return 0;
    }
    if (prc < 0) {
        util_fmt(state, size,
                 "not examinable: a directory on its path was replaced (by a "
                 "symlink or a file)");
        return -1;
    }
    if (fstatat(e->dst_pfd, e->dst_base, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) {
            util_fmt(state, size, "absent");
            return 0;
        }
        util_fmt(state, size, "not examinable (%s)", strerror(errno));
        return -1;
    }
    if (!describe_stat(&st, &job->dst_id, state, size))
        return -1;
    e->dstfd = openat(e->dst_pfd, e->dst_base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (e->dstfd < 0 || fstat(e->dstfd, &st) != 0 || !describe_stat(&st, &job->dst_id, state, size))
        return -1; /* swapped between the look and the open */
    return 1;
}

/* A move resumed or committed: what the journal recorded of its
 * destination (there before the move, its original stat, the parents made
 * for it), for a rollback. */
void eng_take_recorded_dst(struct eng *e)
{
    const struct engine_job *job = e->job;
    e->dst_preexisted = job->dst_preexisted;
    e->dst_orig = job->dst_orig;
    e->made_parents = xcalloc(job->n_made + 1, sizeof(char *));
    for (size_t i = 0; i < job->n_made; i++)
        e->made_parents[e->n_made++] = xstrdup(job->made_parents[i]);
}
