/* util.h: allocation policy, container_of, clocks and small string helpers. */
#ifndef HOSTAGENT_UTIL_H
#define HOSTAGENT_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Out-of-memory policy, decided once: the agent cannot do anything useful
 * without memory, so these abort with a message instead of returning NULL. */
/* The out-of-memory policy, decided once: a message on stderr, then abort(). */
_Noreturn void util_oom(size_t n);
void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Monotonic milliseconds (for intervals; nanoseconds for short ones) and
 * wall-clock milliseconds since the epoch (for timestamps shown to people). */
uint64_t util_mono_ms(void);
uint64_t util_mono_ns(void);

/* A condition variable on the monotonic clock (for util_cond_wait_flag). */
void util_cond_init_monotonic(pthread_cond_t *c);
/* Waits on c (with m held) until *flag is true or wait_ms have passed (c
 * made by util_cond_init_monotonic: clock changes do not count); *flag. */
bool util_cond_wait_flag(pthread_cond_t *c, pthread_mutex_t *m, const bool *flag, uint64_t wait_ms);
uint64_t util_wall_ms(void);

/* Formats wall_ms as RFC 3339 UTC with milliseconds: 2026-11-22T21:04:05.123Z.
 * buf must hold UTIL_TIME_LEN bytes. */
#define UTIL_TIME_LEN 32
void util_rfc3339(uint64_t wall_ms, char *buf);

/* True when s is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool util_utf8_valid(const char *s, size_t len);

/* Copies src into dst (size dstsz, NUL-terminated), replacing every invalid
 * UTF-8 sequence by U+FFFD, and truncating on a character boundary. */
void util_utf8_sanitize(char *dst, size_t dstsz, const char *src);

/* snprintf into a fixed buffer that never fails: truncates silently. */
void util_fmt(char *buf, size_t sz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Human byte rate "88.1MB/s" (decimal units, as the interface doc shows). */
void util_fmt_rate(char *buf, size_t sz, uint64_t bytes_per_second);

/* A statx(2) result (basic fields) as a struct stat. */
struct statx;
struct stat;
void util_statx_to_stat(const struct statx *sx, struct stat *st);

/* mkdir -p: creates path and its missing parents with mode, each made
 * durable (util_mkdir_durable) before the next is made in it. 0 or -errno. */
int util_mkdir_p(const char *path, mode_t mode);

/* mkdir of one directory, made durable: when it was made, its parent is
 * fsynced before this returns (an entry is on the disk only once its
 * directory is synced: what is renamed into the new directory later must not
 * vanish with it at a power cut). An existing directory is left as it is
 * (0). 0 or -errno. */
int util_mkdir_durable(const char *path, mode_t mode);

/* Removes the directories a move made for a path (dirs: outermost first, n
 * of them), innermost first, each only when empty. They were made durable
 * (util_mkdir_durable, eng_open_dst_parent): each removal is made durable
 * too, by fsync of its parent, or a power cut would bring an empty one back.
 * Errors are ignored (what cannot go stays). Blocking: a worker's, not the
 * loop's. */
void util_rmdir_made(char *const *dirs, size_t n);

/* fsync of the directory dir: its entries made durable. 0 or -errno. */
int util_fsync_dir(const char *dir);

/* The same for dir relative to dirfd (an O_PATH descriptor will do: dir "."
 * reopens it for reading). */
int util_fsync_dir_at(int dirfd, const char *dir);

/* Writes all len bytes of buf at offset off of fd, going on after a short
 * write. 0, or the negative errno of the write that failed (-EIO when one
 * wrote nothing without saying why): never an errno left by an earlier
 * call. */
int util_pwrite_all(int fd, const void *buf, size_t len, off_t off);

/* Appends to *parents (*n entries) the ancestors of the absolute path that
 * do not exist (lstat ENOENT), outermost first: what making path creates. */
void util_missing_parents(const char *path, char ***parents, size_t *n);

/* The whole content of the regular file `name` of dirfd (never through a
 * symlink), NUL-terminated, or NULL when it cannot be read, is not a regular
 * file or is larger than max bytes. The caller frees it. */
char *util_read_small_file(int dirfd, const char *name, size_t max);

/* The calling thread's I/O class (ioprio_set for its own thread id):
 * honoured by the BFQ and mq-deadline schedulers, and carried by the I/O the
 * thread submits itself (reads, sync_file_range's writeback), not by the
 * kernel's background writeback. level 0-7 for the best-effort class (7
 * the lowest). 0 or -errno. */
enum util_io_class { UTIL_IO_NORMAL, UTIL_IO_LOW, UTIL_IO_IDLE };
int util_set_io_class(enum util_io_class c);

#endif
