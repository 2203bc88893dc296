/* control.h: the local control socket (`control_socket`): a Unix stream
 * socket on the agent's loop that `hostagent status` and `hostagent cancel`
 * talk to. One JSON request per line in the wire protocol's envelope, one
 * JSON answer per line; only root and the daemon's own user are served
 * (SO_PEERCRED), and clients are bounded in number, line length and idle
 * time. */
#ifndef HOSTAGENT_CONTROL_H
#define HOSTAGENT_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

#define CONTROL_MAX_CLIENTS 8
#define CONTROL_LINE_MAX 65536u /* one request, without its newline */
#define CONTROL_IDLE_MS 10000u  /* this long without a request line: closed */
#define CONTROL_BACKLOG 16
/* How long a connect waits for a listener that does not take connections
 * (its backlog full: a stopped or stuck daemon) before giving up. */
#define CONTROL_CONNECT_TIMEOUT_MS 5000u

struct control;

/* Who is on the other end (SO_PEERCRED). */
struct control_peer {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

struct control_ops {
    /* One request line (without its newline; NUL-terminated at len) from a
     * peer that passed the credential check. Returns the answer, a
     * malloc'd JSON text without newline, which the control socket frees. */
    char *(*request)(struct control *c, const struct control_peer *peer, const char *line,
                     size_t len);
};

struct control_client {
    uv_pipe_t pipe;
    uv_timer_t idle;
    uv_write_t wreq;
    struct control *ctl;
    struct control_client *next;
    struct control_peer peer;
    char *buf; /* bytes received and not handled yet */
    size_t len, cap;
    char *out; /* the answer being written */
    bool reading, writing, eof, closing, close_after_write, counted;
    int open_handles;
};

struct control {
    uv_loop_t *loop;
    uv_pipe_t server;
    char *path;
    dev_t dev; /* the socket file this daemon made: only that one is removed */
    ino_t ino;
    uid_t euid;
    const struct control_ops *ops;
    void *owner;
    struct control_client *clients;
    unsigned n_clients; /* served ones (refused ones are only being closed) */
    bool server_open, closing;
};

/* Makes path's directory (0700) when missing, checks it (control_check_dir
 * for the daemon's euid: an unsafe one is an error, nothing in it touched),
 * replaces a stale socket file (one nobody listens on), binds, chmods the
 * socket 0600 and listens. A socket another process listens on (answering
 * or not), or a file there that is not a socket, is an error. 0, or
 * negative errno with a sentence in why (nothing then needs closing but
 * what control_close does: call it in every case). */
int control_init(struct control *c, uv_loop_t *loop, const char *path,
                 const struct control_ops *ops, void *owner, char *why, size_t whysz);

/* Is dir a safe home for the control socket of a process running as uid?
 * Safe means nobody but root and uid can replace the socket or the
 * directory (the rule OpenSSH keeps for its files and tmux for its socket
 * directory):
 *  - dir itself is a directory, not a symbolic link, owned by root or uid,
 *    and writable by neither its group nor others;
 *  - every directory above it, along the path as written and along its
 *    resolved path (realpath), is owned by root or uid and writable by its
 *    group or others only with the sticky bit (as /tmp: nobody can rename
 *    or remove a name that is not theirs in it);
 *  - with private_parent, the directory just above dir must not be
 *    writable by its group or others even with the sticky bit: then dir can
 *    only have been made by root or its owner (the command line uses this
 *    to believe that dir's owner is the daemon's user).
 * 0, -EPERM / -ELOOP / -ENOTDIR for an unsafe directory, or -errno when it
 * cannot be examined; why says which directory and what is wrong. */
int control_check_dir(const char *dir, uid_t uid, bool private_parent, char *why, size_t whysz);

/* Connects a Unix stream socket to path, waiting at most timeout_ms for a
 * listener that does not accept (its backlog full). The wait is
 * SO_SNDTIMEO, which then bounds every send on the socket too. The
 * descriptor (close-on-exec), -ETIMEDOUT after the wait, or -errno
 * (-ENOENT / -ECONNREFUSED: nobody listens there). */
int control_connect(const char *path, unsigned timeout_ms);

/* Closes the server and every client (their memory is freed from the close
 * callbacks, so the loop must run on) and removes the socket file. Safe to
 * call twice and after a failed init. */
void control_close(struct control *c);

#endif
