/* util.c: allocation policy, clocks and string helpers shared by all modules. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

void util_oom(size_t n)
{
    /* No logger here on purpose: the logger itself may need memory. */
    char msg[96];
    int len = snprintf(msg, sizeof msg, "hostagent: out of memory (%zu bytes)\n", n);
    if (len > 0)
        (void)!write(2, msg, (size_t)len);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        util_oom(n);
    return p;
}

void *xcalloc(size_t nmemb, size_t size)
{
    void *p = calloc(nmemb ? nmemb : 1, size ? size : 1);
    if (!p)
        util_oom(nmemb * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        util_oom(n);
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

uint64_t util_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t util_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void util_cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

bool util_cond_wait_flag(pthread_cond_t *c, pthread_mutex_t *m, const bool *flag, uint64_t wait_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(wait_ms / 1000);
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!*flag)
        if (pthread_cond_timedwait(c, m, &until) == ETIMEDOUT)
            break;
    return *flag;
}

uint64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void util_rfc3339(uint64_t wall_ms, char *buf)
{
    time_t secs = (time_t)(wall_ms / 1000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    /* Years past 9999 do not fit; the casts keep the compiler's bound small. */
    snprintf(buf, UTIL_TIME_LEN, "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ",
             (unsigned)(tm.tm_year + 1900) % 10000u, (unsigned)(tm.tm_mon + 1) % 100u,
             (unsigned)tm.tm_mday % 100u, (unsigned)tm.tm_hour % 100u, (unsigned)tm.tm_min % 100u,
             (unsigned)tm.tm_sec % 100u, (unsigned)(wall_ms % 1000u));
}

/* Length of the valid UTF-8 sequence at s (at most len bytes), 0 if invalid. */
static size_t utf8_seq_len(const unsigned char *s, size_t len)
{
    unsigned c = s[0];
    size_t n;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n > len)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

bool util_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    while (len > 0) {
        size_t n = utf8_seq_len(p, len);
        if (n == 0)
            return false;
        p += n;
        len -= n;
    }
    return true;
}

void util_utf8_sanitize(char *dst, size_t dstsz, const char *src)
{
    const unsigned char *p = (const unsigned char *)src;
    size_t left = strlen(src), out = 0;
    if (dstsz == 0)
        return;
    while (left > 0) {
        size_t n = utf8_seq_len(p, left);
        const unsigned char *from = p;
        size_t take = n;
        if (n == 0) {
            from = (const unsigned char *)"\xef\xbf\xbd";
            take = 3;
            n = 1;
        }
        if (out + take >= dstsz)
            break;
        memcpy(dst + out, from, take);
        out += take;
        p += n;
        left -= n;
    }
    dst[out] = '\0';
}

void util_fmt(char *buf, size_t sz, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(buf, sz, fmt, ap);
    va_end(ap);
}

void util_fmt_rate(char *buf, size_t sz, uint64_t bps)
{
    static const char *units[] = {"B/s", "kB/s", "MB/s", "GB/s", "TB/s"};
    double v = (double)bps;
    size_t u = 0;
    while (v >= 1000.0 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1000.0;
        u++;
    }
    if (u == 0)
        util_fmt(buf, sz, "%lluB/s", (unsigned long long)bps);
    else
        util_fmt(buf, sz, "%.1f%s", v, units[u]);
}

int util_mkdir_p(const char *path, mode_t mode)
{
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            int rc = util_mkdir_durable(buf, mode);
            if (rc != 0)
                return rc;
            *p = c;
            if (c == '\0')
                break;
        }
    }
    return 0;
}

int util_mkdir_durable(const char *path, mode_t mode)
{
    char parent[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (mkdir(path, mode) != 0)
        return errno == EEXIST ? 0 : -errno;
    if (!slash)
        return util_fsync_dir(".");
    util_fmt(parent, sizeof parent, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    return util_fsync_dir(parent);
}

void util_rmdir_made(char *const *dirs, size_t n)
{
    char parent[PATH_MAX];
    for (size_t i = n; i-- > 0;) {
        const char *slash = strrchr(dirs[i], '/');
        if (rmdir(dirs[i]) != 0 || !slash)
            continue;
        util_fmt(parent, sizeof parent, "%.*s", slash == dirs[i] ? 1 : (int)(slash - dirs[i]),
                 dirs[i]);
        (void)util_fsync_dir(parent);
    }
}

void util_statx_to_stat(const struct statx *sx, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_dev = makedev(sx->stx_dev_major, sx->stx_dev_minor);
    st->st_ino = (ino_t)sx->stx_ino;
    st->st_mode = sx->stx_mode;
    st->st_nlink = (nlink_t)sx->stx_nlink;
    st->st_uid = sx->stx_uid;
    st->st_gid = sx->stx_gid;
    st->st_rdev = makedev(sx->stx_rdev_major, sx->stx_rdev_minor);
    st->st_size = (off_t)sx->stx_size;
    st->st_blksize = (blksize_t)sx->stx_blksize;
    st->st_blocks = (blkcnt_t)sx->stx_blocks;
    st->st_atim.tv_sec = sx->stx_atime.tv_sec;
    st->st_atim.tv_nsec = sx->stx_atime.tv_nsec;
    st->st_mtim.tv_sec = sx->stx_mtime.tv_sec;
    st->st_mtim.tv_nsec = sx->stx_mtime.tv_nsec;
    st->st_ctim.tv_sec = sx->stx_ctime.tv_sec;
    st->st_ctim.tv_nsec = sx->stx_ctime.tv_nsec;
}

void util_missing_parents(const char *path, char ***parents, size_t *n)
{
    char buf[PATH_MAX];
    struct stat st;
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        if (lstat(buf, &st) != 0 && errno == ENOENT) {
            *parents = xrealloc(*parents, (*n + 1) * sizeof(char *));
            (*parents)[(*n)++] = xstrdup(buf);
        }
        *p = '/';
    }
}

char *util_read_small_file(int dirfd, const char *name, size_t max)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    char *buf;
    ssize_t n;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        return NULL;
    }
    buf = xmalloc((size_t)st.st_size + 1);
    n = read(fd, buf, (size_t)st.st_size);
    close(fd);
    if (n != st.st_size) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int util_fsync_dir(const char *dir)
{
    return util_fsync_dir_at(AT_FDCWD, dir);
}

int util_fsync_dir_at(int dirfd, const char *dir)
{
    int fd = openat(dirfd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;
    if (fd < 0)
        return -errno;
    if (fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

int util_pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        if (w == 0)
            return -EIO; /* nothing written and no reason given */
        p += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

/* <linux/ioprio.h> is not in every libc's headers: the ABI's values. */
#define UTIL_IOPRIO_WHO_PROCESS 1
#define UTIL_IOPRIO_CLASS_BE 2
#define UTIL_IOPRIO_CLASS_IDLE 3
#define UTIL_IOPRIO_CLASS_SHIFT 13

int util_set_io_class(enum util_io_class c)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    /* normal: best effort at the default level (4), what a thread has
     * before anything is set (IOPRIO_CLASS_NONE follows the CPU nice). */
    int prio = c == UTIL_IO_IDLE  ? UTIL_IOPRIO_CLASS_IDLE << UTIL_IOPRIO_CLASS_SHIFT
               : c == UTIL_IO_LOW ? (UTIL_IOPRIO_CLASS_BE << UTIL_IOPRIO_CLASS_SHIFT) | 7
                                  : (UTIL_IOPRIO_CLASS_BE << UTIL_IOPRIO_CLASS_SHIFT) | 4;
    return syscall(SYS_ioprio_set, UTIL_IOPRIO_WHO_PROCESS, tid, prio) == 0 ? 0 : -errno;
}
