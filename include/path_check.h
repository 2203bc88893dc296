/* path_check.h: a move request's path rules (realpath, lstat, readdir: calls
 * that block as long as a hung mount does), and a runner that applies them
 * off the loop thread, one thread per check, with a time limit, so that a
 * request on a hung mount is answered on time and never freezes the loop. */
#ifndef HOSTAGENT_PATH_CHECK_H
#define HOSTAGENT_PATH_CHECK_H

#include "move_state.h"
#include "paths.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <uv.h>

/* A check gives up after this long (the request is then answered io_error). */
#define PATH_CHECK_LIMIT_MS 10000u
/* At most this many checks run at once (threads stuck on a hung mount
 * included); later ones wait for a free thread within their own limit. */
#define PATH_CHECK_THREADS 4u

/* What a successful check found (and what the move is made from). */
struct path_check_result {
    enum move_code code; /* CODE_NONE: the paths pass */
    char why[512];
    char old_norm[PATH_MAX], new_norm[PATH_MAX]; /* as requested, normalised */
    char old_real[PATH_MAX], new_real[PATH_MAX]; /* resolved in their existing part */
    char src_root[PATH_MAX], dst_root[PATH_MAX]; /* the allowed roots holding them, resolved */
    bool rename;                                 /* same device */
    bool dst_preexisted;                         /* newPath is an (empty) directory */
    struct stat dst_orig;
    char **made_parents; /* ancestors of newPath that do not exist, outermost first */
    size_t n_made;
    struct path_ids old_ids, new_ids; /* for the busy check by identity, on the loop */
    struct stat old_st;               /* oldPath's identity, for the journal */
};

/* The paths a move holds, for the busy rule. */
struct path_claim {
    const char *src, *dst;                    /* resolved */
    const struct path_ids *src_ids, *dst_ids; /* directories along them, at acceptance */
    /* newPath made by the move after acceptance (absent then), once known. */
    bool made;
    dev_t made_dev;
    ino_t made_ino;
};

/* The busy rule's path part, pure (it runs on the loop): a request whose
 * check found r overlaps the move holding c when one of their paths is the
 * other or inside it, by name or by the identities of the directories along
 * them (a bind-mount alias), or lies inside the newPath the move made. */
bool path_check_overlaps(const struct path_claim *c, const struct path_check_result *r);

/* Two requests still being checked may conflict by their paths as written
 * (normalised; "" when unknown: no conflict by paths then, an alias through
 * a symlink is caught by the busy check of whichever is decided second). */
bool path_check_may_conflict(const char *old_a, const char *new_a, const char *old_b,
                             const char *new_b);

struct path_check_shared;

/* One check: its input, its result, and the runner's bookkeeping. */
struct path_check {
    char *old_path, *new_path;
    char **roots;
    size_t n_roots;
    struct path_check_result out;
    void *tag; /* the owner's */

    /* runner */
    struct path_check *next;
    uint64_t deadline_ms;
    uv_thread_t thread;
    bool started, has_thread, forgotten;
    bool finished, abandoned;  /* under the shared lock */
    const char *_Atomic where; /* the path being examined now, or NULL */
    struct path_check_shared *sh;
};

/* The rules in the protocol's order (path_not_allowed, invalid_paths,
 * source_missing, destination_exists), then what the move needs (roots,
 * the destination's state, missing parents). Blocking: any thread. Sets
 * *where (may be NULL) to the path it is examining. */
enum move_code path_check_apply(const char *old_path, const char *new_path, char *const *roots,
                                size_t n_roots, struct path_check_result *out,
                                const char *_Atomic *where);

/* The allowed root strictly holding real, resolved, into root_out (PATH_MAX);
 * *is_root when real is a root itself. Blocking (realpath of the roots). */
bool path_check_root_of(char *const *roots, size_t n_roots, const char *real, bool *is_root,
                        char *root_out);

/* A check of these paths against copies of these roots. */
struct path_check *path_check_new(const char *old_path, const char *new_path, char *const *roots,
                                  size_t n_roots, void *tag);
void path_check_free(struct path_check *c);

/* Called on the loop when a check finished (timed_out false: c->out is the
 * result; the owner may take out.made_parents, setting it NULL) or ran past
 * its limit (timed_out true: c->where says where it hung, NULL when it never
 * got a thread). The runner disposes of c afterwards. */
typedef void (*path_check_done_fn)(void *owner, struct path_check *c, bool timed_out);

struct path_checker {
    uv_loop_t *loop;
    uv_async_t async; /* a thread finished a check */
    uv_timer_t timer; /* the limits, while checks are pending */
    struct path_check_shared *sh;
    struct path_check *queue; /* submitted and not yet reported, in order */
    path_check_done_fn done;
    void *owner;
    uint64_t limit_ms;
    int open_handles;
};

int path_checker_init(struct path_checker *pc, uv_loop_t *loop, path_check_done_fn done,
                      void *owner);

/* Starts c (on a thread of its own as soon as fewer than PATH_CHECK_THREADS
 * run); its limit counts from now. */
void path_checker_submit(struct path_checker *pc, struct path_check *c);

/* The owner no longer wants c's result: no callback will come. */
void path_checker_forget(struct path_checker *pc, struct path_check *c);

/* At teardown: forgets every check (a thread still stuck keeps its own and
 * frees it if it ever returns) and closes the handles. */
void path_checker_close(struct path_checker *pc);

#endif
