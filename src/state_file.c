/* state_file.c: the small records of state_dir written atomically and read
 * back (see state_file.h): the journal's and the reclaimer's. */
#include "state_file.h"
#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void names(const char *dir, const char *key, char *path, size_t psz, char *tmp, size_t tsz)
{
    util_fmt(path, psz, "%s/%s.json", dir, key);
    util_fmt(tmp, tsz, "%s/.%s.tmp", dir, key);
}

/* Writes zeros into fd from `from` to `to` (real blocks, not holes: a later
 * overwrite then needs no allocation). */
static int write_zeros(int fd, off_t from, off_t to)
{
    static const char zeros[4096];
    while (from < to) {
        size_t n = (size_t)(to - from) < sizeof zeros ? (size_t)(to - from) : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, n, from);
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        from += w;
    }
    return 0;
}

/* Puts text (and a newline) at the start of the temp file, keeping its size
 * when it is large enough (zeros after the text), else growing it to at
 * least want bytes; then fsync. */
static int fill_temp(int fd, const char *text, size_t len, size_t want)
{
    struct stat st;
    off_t size;
    int rc;
    if (fstat(fd, &st) != 0)
        return -errno;
    size = st.st_size;
    if ((size_t)size < len + 1)
        size = (off_t)(want > len + 1 ? want : len + 1);
    if ((rc = util_pwrite_all(fd, text, len, 0)) != 0 ||
        (rc = util_pwrite_all(fd, "\n", 1, (off_t)len)) != 0 ||
        (rc = write_zeros(fd, (off_t)len + 1, size)) != 0)
        return rc;
    if (fsync(fd) != 0)
        return -errno;
    return 0;
}

/* Installs the written temp as the record: exchanged with the old record
 * when there is one and exchange is wanted (the old one stays as the next
 * slot), else renamed. */
static int install_temp(const char *dir, const char *tmp, const char *path, bool exchange)
{
    if (exchange && renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) == 0)
        return util_fsync_dir(dir);
    /* ENOENT: no record yet; EINVAL/ENOSYS: the filesystem cannot exchange. */
    if (exchange && errno != ENOENT && errno != EINVAL && errno != ENOSYS)
        return -errno;
    if (rename(tmp, path) != 0)
        return -errno;
    return util_fsync_dir(dir);
}

int state_file_write(const char *dir, const char *key, const char *text, size_t slot)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    size_t len = strlen(text);
    int fd, rc;
    names(dir, key, path, sizeof path, tmp, sizeof tmp);
    /* A slot is reused in place (no O_TRUNC: its blocks are kept). */
    fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (slot ? 0 : O_TRUNC), 0600);
    if (fd < 0)
        return -errno;
    rc = fill_temp(fd, text, len, slot);
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0)
        rc = install_temp(dir, tmp, path, slot > 0);
    /* A slot stays after a failure: it is the next try's. */
    if (rc != 0 && !slot)
        (void)unlink(tmp);
    return rc;
}

int state_file_reserve(const char *dir, const char *key, size_t size)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    struct stat st;
    int fd, rc = 0;
    names(dir, key, path, sizeof path, tmp, sizeof tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0)
        rc = -errno;
    else if ((size_t)st.st_size < size && (rc = write_zeros(fd, st.st_size, (off_t)size)) == 0)
        rc = fsync(fd) != 0 ? -errno : 0;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0)
        rc = util_fsync_dir(dir);
    if (rc != 0)
        (void)unlink(tmp);
    return rc;
}

void state_file_remove(const char *dir, const char *key, bool temp)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    names(dir, key, path, sizeof path, tmp, sizeof tmp);
    if (temp)
        (void)unlink(tmp);
    if (unlink(path) == 0)
        (void)util_fsync_dir(dir);
}

/* ".<key>.tmp": the slot of "<key>.json" when that exists and slots are
 * kept, else a first write cut short (removed). */
static void tidy_temp(DIR *d, const struct state_scan *how, const char *name, size_t nl)
{
    char rec[NAME_MAX + 1];
    struct stat st;
    if (how->keep_slots && name[0] == '.' && nl - 5 <= how->key_max) {
        util_fmt(rec, sizeof rec, "%.*s.json", (int)(nl - 5), name + 1);
        if (fstatat(dirfd(d), rec, &st, AT_SYMLINK_NOFOLLOW) == 0)
            return;
    }
    (void)unlinkat(dirfd(d), name, 0);
}

static void set_aside(const char *dir, const struct state_scan *how, const char *name)
{
    char from[PATH_MAX], to[PATH_MAX + 8];
    util_fmt(from, sizeof from, "%s/%s", dir, name);
    util_fmt(to, sizeof to, "%s.corrupt", from);
    LOG(LOG_ERROR, how->unreadable, LF_S("file", from), LF_S("moved_to", to));
    if (rename(from, to) != 0)
        LOG(LOG_ERROR, "cannot set the unreadable file aside", LF_S("file", from),
            LF_S("reason", strerror(errno)));
}

int state_file_scan(const char *dir, const struct state_scan *how, unsigned *unreadable)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), err;
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    struct dirent *de;
    *unreadable = 0;
    if (!d) {
        err = -errno;
        if (dfd >= 0)
            close(dfd);
        return err;
    }
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        char key[NAME_MAX + 1], *text;
        bool ok;
        if (nl > 4 && strcmp(de->d_name + nl - 4, ".tmp") == 0) {
            if (how->repair)
                tidy_temp(d, how, de->d_name, nl);
            continue;
        }
        /* A record: "<key>.json", also when the key starts with '.'. */
        if (nl <= 5 || strcmp(de->d_name + nl - 5, ".json") != 0 || nl - 5 > how->key_max)
            continue;
        util_fmt(key, sizeof key, "%.*s", (int)(nl - 5), de->d_name);
        text = util_read_small_file(dirfd(d), de->d_name, how->max_bytes);
        ok = text && how->take(how->arg, key, text);
        free(text);
        if (ok)
            continue;
        (*unreadable)++;
        if (how->repair)
            set_aside(dir, how, de->d_name);
    }
    closedir(d);
    return 0;
}
