/* control.c: the local control socket for `hostagent status` / `cancel`
 * (see control.h). Everything here runs on the loop thread. */
#include "control.h"
#include "log.h"
#include "protocol.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

static void client_pump(struct control_client *cl);

/* --- one client ------------------------------------------------------------------ */

static void client_on_closed(uv_handle_t *h)
{
    struct control_client *cl = h->data, **pp;
    if (--cl->open_handles > 0)
        return;
    for (pp = &cl->ctl->clients; *pp; pp = &(*pp)->next) {
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    }
    free(cl->buf);
    free(cl->out);
    free(cl);
}

static void client_close(struct control_client *cl)
{
    if (cl->closing)
        return;
    cl->closing = true;
    if (cl->counted) {
        cl->ctl->n_clients--;
        cl->counted = false;
    }
    /* A pending write is called back with UV_ECANCELED before these. */
    uv_close((uv_handle_t *)&cl->pipe, client_on_closed);
    uv_close((uv_handle_t *)&cl->idle, client_on_closed);
}

static void client_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct control_client *cl = h->data;
    /* Room for one line of CONTROL_LINE_MAX bytes, its newline, and a NUL
     * the request callback gets its line terminated with. The pump stops
     * reading before the buffer can fill, so there is always room. */
    size_t want = cl->len + 4096;
    (void)suggested;
    if (want > CONTROL_LINE_MAX + 2)
        want = CONTROL_LINE_MAX + 2;
    if (cl->cap < want) {
        cl->buf = xrealloc(cl->buf, want);
        cl->cap = want;
    }
    *b = uv_buf_init(cl->buf + cl->len, (unsigned)(cl->cap - cl->len - 1));
}

static void client_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void client_start_reading(struct control_client *cl)
{
    if (cl->reading || cl->eof || cl->closing)
        return;
    if (uv_read_start((uv_stream_t *)&cl->pipe, client_on_alloc, client_on_read) != 0) {
        client_close(cl);
        return;
    }
    cl->reading = true;
}

static void client_stop_reading(struct control_client *cl)
{
    if (!cl->reading)
        return;
    uv_read_stop((uv_stream_t *)&cl->pipe);
    cl->reading = false;
}

static void client_on_idle(uv_timer_t *t);

/* (Re)starts the idle timer. Only the connection, a request line taken and
 * its answer written start it: bytes without a newline, and empty lines,
 * never do, or a client dripping a byte every few seconds would hold its
 * slot for ever. */
static void client_touch(struct control_client *cl)
{
    uv_timer_start(&cl->idle, client_on_idle, CONTROL_IDLE_MS, 0);
}

static void client_on_written(uv_write_t *req, int status)
{
    struct control_client *cl = req->data;
    free(cl->out);
    cl->out = NULL;
    cl->writing = false;
    if (cl->closing)
        return;
    if (status < 0 || cl->close_after_write) {
        client_close(cl);
        return;
    }
    client_touch(cl);
    client_pump(cl);
}

/* Writes one answer line (text: malloc'd JSON, taken over). Reading pauses
 * until it is written, so a client that sends many requests and reads no
 * answer holds at most one answer and one buffer here. */
static void client_send(struct control_client *cl, char *text, bool then_close)
{
    size_t n = strlen(text);
    uv_buf_t b;
    cl->out = xrealloc(text, n + 2);
    cl->out[n] = '\n';
    cl->out[n + 1] = '\0';
    cl->writing = true;
    cl->close_after_write = then_close;
    client_stop_reading(cl);
    b = uv_buf_init(cl->out, (unsigned)(n + 1));
    cl->wreq.data = cl;
    if (uv_write(&cl->wreq, (uv_stream_t *)&cl->pipe, &b, 1, client_on_written) != 0) {
        free(cl->out);
        cl->out = NULL;
        cl->writing = false;
        client_close(cl);
    }
}

/* {"success":false,"code":..,"error":..} as text, like every other answer. */
static char *failure_text(enum move_code code, const char *error)
{
    cJSON *d = protocol_failure(code, error);
    char *printed = cJSON_PrintUnformatted(d), *s;
    cJSON_Delete(d);
    if (!printed)
        util_oom(0);
    s = xstrdup(printed);
    cJSON_free(printed);
    return s;
}

static void client_on_idle(uv_timer_t *t)
{
    struct control_client *cl = t->data;
    char why[96];
    if (cl->closing)
        return;
    LOG(LOG_DEBUG, "control socket client idle; closed", LF_U("uid", cl->peer.uid),
        LF_I("pid", cl->peer.pid));
    if (cl->writing) { /* it does not read its answer: nothing more to say */
        client_close(cl);
        return;
    }
    util_fmt(why, sizeof why, "no complete request line within %u s; closing",
             CONTROL_IDLE_MS / 1000u);
    client_send(cl, failure_text(CODE_TIMEOUT, why), true);
}

/* Handles the complete lines in the buffer, one at a time: the next only
 * after the previous answer is written. */
static void client_pump(struct control_client *cl)
{
    while (!cl->writing && !cl->closing) {
        char *nl = cl->len ? memchr(cl->buf, '\n', cl->len) : NULL, *answer;
        size_t n, consumed;
        if (!nl && cl->len > CONTROL_LINE_MAX) {
            char why[96];
            LOG(LOG_WARN, "control socket request too long; client closed",
                LF_U("uid", cl->peer.uid), LF_I("pid", cl->peer.pid));
            util_fmt(why, sizeof why, "request line longer than %u bytes", CONTROL_LINE_MAX);
            client_send(cl, failure_text(CODE_INVALID_REQUEST, why), true);
            return;
        }
        if (!nl && !cl->eof) {
            client_start_reading(cl);
            return;
        }
        if (!nl && cl->len == 0) { /* the client is done */
            client_close(cl);
            return;
        }
        /* A last line without its newline before the end is taken too. */
        n = nl ? (size_t)(nl - cl->buf) : cl->len;
        consumed = nl ? n + 1 : n;
        if (n > 0 && cl->buf[n - 1] == '\r')
            n--;
        cl->buf[n] = '\0';
        if (n > 0)
            client_touch(cl);
        answer = n > 0 ? cl->ctl->ops->request(cl->ctl, &cl->peer, cl->buf, n) : NULL;
        memmove(cl->buf, cl->buf + consumed, cl->len - consumed);
        cl->len -= consumed;
        if (answer && cl->closing)
            free(answer);
        else if (answer)
            client_send(cl, answer, false);
    }
}

static void client_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct control_client *cl = s->data;
    (void)b;
    if (nread < 0) {
        client_stop_reading(cl);
        if (nread != UV_EOF) {
            client_close(cl);
            return;
        }
        cl->eof = true;
        client_pump(cl);
        return;
    }
    if (nread == 0)
        return;
    cl->len += (size_t)nread;
    client_pump(cl);
}

static void control_on_connection(uv_stream_t *server, int status)
{
    struct control *c = server->data;
    struct control_client *cl;
    struct ucred cred;
    socklen_t clen = sizeof cred;
    uv_os_fd_t fd;
    char why[160];

    if (status < 0) {
        LOG(LOG_WARN, "control socket: accept failed", LF_S("error", uv_strerror(status)));
        return;
    }
    cl = xcalloc(1, sizeof *cl);
    cl->ctl = c;
    uv_pipe_init(c->loop, &cl->pipe, 0);
    uv_timer_init(c->loop, &cl->idle);
    cl->pipe.data = cl->idle.data = cl;
    cl->open_handles = 2;
    cl->next = c->clients;
    c->clients = cl;
    if (uv_accept(server, (uv_stream_t *)&cl->pipe) != 0) {
        client_close(cl);
        return;
    }
    client_touch(cl);
    if (uv_fileno((uv_handle_t *)&cl->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        LOG(LOG_WARN, "control socket: cannot read the client's credentials; closed",
            LF_S("error", strerror(errno)));
        client_close(cl);
        return;
    }
    cl->peer = (struct control_peer){.pid = cred.pid, .uid = cred.uid, .gid = cred.gid};
    if (cred.uid != 0 && cred.uid != c->euid) {
        LOG(LOG_WARN, "control socket client refused: not root or the daemon's user",
            LF_U("uid", cred.uid), LF_I("pid", cred.pid));
        util_fmt(why, sizeof why,
                 "the control socket serves only root and the daemon's user (uid %u); uid %u is "
                 "refused",
                 (unsigned)c->euid, (unsigned)cred.uid);
        client_send(cl, failure_text(CODE_PERMISSION_DENIED, why), true);
        return;
    }
    if (c->n_clients >= CONTROL_MAX_CLIENTS) {
        LOG(LOG_WARN, "control socket busy; client turned away", LF_U("uid", cred.uid),
            LF_I("pid", cred.pid), LF_U("clients", c->n_clients));
        util_fmt(why, sizeof why,
                 "the control socket already serves %u clients, its limit; try again",
                 CONTROL_MAX_CLIENTS);
        client_send(cl, failure_text(CODE_BUSY, why), true);
        return;
    }
    c->n_clients++;
    cl->counted = true;
    LOG(LOG_DEBUG, "control socket client connected", LF_U("uid", cred.uid), LF_I("pid", cred.pid));
    client_start_reading(cl);
}

/* --- the socket's directory, connecting -------------------------------------------- */

/* One directory above the socket's (see control_check_dir). */
static int control_check_above(const char *p, uid_t uid, char *why, size_t whysz)
{
    struct stat st;
    int rc;
    if (stat(p, &st) != 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot examine %s, above the control socket's directory: %s", p,
                 strerror(errno));
        return rc;
    }
    if (st.st_uid != 0 && st.st_uid != uid) {
        util_fmt(why, whysz,
                 "%s, above the control socket's directory, belongs to uid %u, not to root or "
                 "uid %u: its owner could replace the socket's directory",
                 p, (unsigned)st.st_uid, (unsigned)uid);
        return -EPERM;
    }
    if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
        util_fmt(why, whysz,
                 "%s, above the control socket's directory, is writable by its group or others "
                 "without the sticky bit (mode %04o): they could replace the socket's directory",
                 p, (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    return 0;
}

/* Every directory above dir (dir itself not), up to "/". */
static int control_check_chain(const char *dir, uid_t uid, char *why, size_t whysz)
{
    char p[PATH_MAX];
    int rc;
    util_fmt(p, sizeof p, "%s", dir);
    while (strcmp(p, "/") != 0) {
        char *slash = strrchr(p, '/');
        if (!slash)
            break;
        slash[slash == p ? 1 : 0] = '\0';
        rc = control_check_above(p, uid, why, whysz);
        if (rc != 0)
            return rc;
    }
    return 0;
}

int control_check_dir(const char *dir, uid_t uid, bool private_parent, char *why, size_t whysz)
{
    char real[PATH_MAX], parent[PATH_MAX], *slash;
    struct stat st;
    int rc;

    if (strlen(dir) >= sizeof real) {
        util_fmt(why, whysz, "the control socket's directory %s: path too long", dir);
        return -ENAMETOOLONG;
    }
    if (lstat(dir, &st) != 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot examine the control socket's directory %s: %s", dir,
                 strerror(errno));
        return rc;
    }
    if (S_ISLNK(st.st_mode)) {
        util_fmt(why, whysz,
                 "the control socket's directory %s is a symbolic link: whoever can change the "
                 "link could put the socket elsewhere; name the real directory in control_socket",
                 dir);
        return -ELOOP;
    }
    if (!S_ISDIR(st.st_mode)) {
        util_fmt(why, whysz, "the control socket's directory %s is not a directory", dir);
        return -ENOTDIR;
    }
    if (st.st_uid != 0 && st.st_uid != uid) {
        util_fmt(why, whysz,
                 "the control socket's directory %s belongs to uid %u, not to root or uid %u: "
                 "its owner could replace the socket; give it to root or to the daemon's user, "
                 "or set another control_socket",
                 dir, (unsigned)st.st_uid, (unsigned)uid);
        return -EPERM;
    }
    if (st.st_mode & 022) {
        util_fmt(why, whysz,
                 "the control socket's directory %s is writable by its group or others (mode "
                 "%04o): they could replace the socket; chmod go-w it, or set another "
                 "control_socket",
                 dir, (unsigned)(st.st_mode & 07777));
        return -EPERM;
    }
    rc = control_check_chain(dir, uid, why, whysz);
    if (rc != 0)
        return rc;
    if (!realpath(dir, real)) {
        rc = -errno;
        util_fmt(why, whysz, "cannot resolve the control socket's directory %s: %s", dir,
                 strerror(errno));
        return rc;
    }
    if (strcmp(real, dir) != 0) {
        rc = control_check_chain(real, uid, why, whysz);
        if (rc != 0)
            return rc;
    }
    if (!private_parent || strcmp(real, "/") == 0)
        return 0;
    util_fmt(parent, sizeof parent, "%s", real);
    slash = strrchr(parent, '/');
    slash[slash == parent ? 1 : 0] = '\0';
    if (stat(parent, &st) != 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot examine %s: %s", parent, strerror(errno));
        return rc;
    }
    if (st.st_mode & 022) {
        util_fmt(why, whysz,
                 "%s, the directory above the control socket's, is writable by its group or "
                 "others (mode %04o): anyone could have made %s",
                 parent, (unsigned)(st.st_mode & 07777), dir);
        return -EPERM;
    }
    return 0;
}

int control_connect(const char *path, unsigned timeout_ms)
{
    struct sockaddr_un sa;
    struct timeval tv = {.tv_sec = timeout_ms / 1000u,
                         .tv_usec = (suseconds_t)(timeout_ms % 1000u) * 1000};
    int fd, rc;

    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* A blocking connect to a Unix socket whose listener's backlog is full
     * waits until it accepts, for ever (a stopped daemon); with a send
     * timeout it fails with EAGAIN when the timeout is up instead. */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        rc = errno == EAGAIN ? -ETIMEDOUT : -errno;
        close(fd);
        return rc;
    }
    return fd;
}

/* --- the listening socket ------------------------------------------------------ */

/* Is something listening on path? A socket file left by a daemon that died
 * refuses connections: it is stale and goes. Anything else stays. */
static int control_clear_stale(const char *path, char *why, size_t whysz)
{
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        rc = -errno;
        util_fmt(why, whysz, "cannot examine control_socket %s: %s", path, strerror(errno));
        return rc;
    }
    if (!S_ISSOCK(st.st_mode)) {
        util_fmt(why, whysz,
                 "control_socket %s exists and is not a socket; remove it or set another "
                 "control_socket",
                 path);
        return -EEXIST;
    }
    fd = control_connect(path, CONTROL_CONNECT_TIMEOUT_MS);
    if (fd >= 0) {
        close(fd);
        util_fmt(why, whysz,
                 "another hostagent daemon answers on control_socket %s (each daemon needs its "
                 "own control_socket)",
                 path);
        return -EADDRINUSE;
    }
    rc = fd;
    if (rc == -ETIMEDOUT) {
        util_fmt(why, whysz,
                 "a process listens on control_socket %s but took no connection within %u s (a "
                 "stopped daemon?); each daemon needs its own control_socket",
                 path, CONTROL_CONNECT_TIMEOUT_MS / 1000u);
        return -EADDRINUSE;
    }
    if (rc != -ECONNREFUSED) {
        util_fmt(why, whysz, "cannot check control_socket %s: %s", path, strerror(-rc));
        return rc;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        rc = -errno;
        util_fmt(why, whysz, "cannot remove the stale control_socket %s: %s", path,
                 strerror(errno));
        return rc;
    }
    LOG(LOG_INFO, "stale control socket replaced", LF_S("path", path));
    return 0;
}

int control_init(struct control *c, uv_loop_t *loop, const char *path,
                 const struct control_ops *ops, void *owner, char *why, size_t whysz)
{
    char dir[PATH_MAX], *slash;
    struct stat st;
    int rc;

    memset(c, 0, sizeof *c);
    c->loop = loop;
    c->ops = ops;
    c->owner = owner;
    c->euid = geteuid();
    if (path[0] != '/' || strlen(path) >= sizeof(((struct sockaddr_un *)NULL)->sun_path) ||
        strlen(path) >= sizeof dir) {
        util_fmt(why, whysz, "control_socket %s is not an absolute path shorter than %zu bytes",
                 path, sizeof(((struct sockaddr_un *)NULL)->sun_path));
        return -ENAMETOOLONG;
    }
    util_fmt(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    slash[slash == dir ? 1 : 0] = '\0';
    rc = util_mkdir_p(dir, 0700);
    if (rc != 0) {
        util_fmt(why, whysz, "cannot create %s for control_socket: %s", dir, strerror(-rc));
        return rc;
    }
    /* The socket is 0600 and every peer is checked, but whoever may write
     * to its directory (or one above) can put their own socket in its
     * place, and a root `hostagent status` would talk to it: refused, with
     * nothing in it touched (a stale socket there stays too). */
    rc = control_check_dir(dir, c->euid, false, why, whysz);
    if (rc != 0)
        return rc;
    rc = control_clear_stale(path, why, whysz);
    if (rc != 0)
        return rc;
    uv_pipe_init(loop, &c->server, 0);
    c->server.data = c;
    c->server_open = true;
    rc = uv_pipe_bind(&c->server, path);
    if (rc != 0) {
        util_fmt(why, whysz, "cannot bind control_socket %s: %s", path, uv_strerror(rc));
        return rc;
    }
    if (lstat(path, &st) == 0) {
        c->dev = st.st_dev;
        c->ino = st.st_ino;
        c->path = xstrdup(path); /* ours now: removed by control_close */
    }
    if (chmod(path, 0600) != 0) {
        rc = -errno;
        util_fmt(why, whysz, "cannot chmod control_socket %s: %s", path, strerror(errno));
        return rc;
    }
    rc = uv_listen((uv_stream_t *)&c->server, CONTROL_BACKLOG, control_on_connection);
    if (rc != 0) {
        util_fmt(why, whysz, "cannot listen on control_socket %s: %s", path, uv_strerror(rc));
        return rc;
    }
    LOG(LOG_INFO, "control socket listening", LF_S("path", path));
    return 0;
}

void control_close(struct control *c)
{
    struct control_client *cl, *next;
    struct stat st;
    if (c->closing)
        return;
    c->closing = true;
    if (c->server_open) {
        uv_close((uv_handle_t *)&c->server, NULL);
        c->server_open = false;
    }
    for (cl = c->clients; cl; cl = next) {
        next = cl->next;
        client_close(cl);
    }
    /* Only the file this daemon bound: a newer daemon's socket stays. */
    if (c->path && lstat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
        (void)unlink(c->path);
    free(c->path);
    c->path = NULL;
}
