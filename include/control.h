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

/* Makes path's directory (0700) when missing, replaces a stale socket file
 * (one nobody listens on), binds, chmods the socket 0600 and listens. A
 * socket another process answers on, or a file there that is not a socket,
 * is an error. 0, or negative errno with a sentence in why (nothing then
 * needs closing but what control_close does: call it in every case). */
int control_init(struct control *c, uv_loop_t *loop, const char *path,
                 const struct control_ops *ops, void *owner, char *why, size_t whysz);

/* Closes the server and every client (their memory is freed from the close
 * callbacks, so the loop must run on) and removes the socket file. Safe to
 * call twice and after a failed init. */
void control_close(struct control *c);

#endif
