/* notify.c: sd_notify datagrams to $NOTIFY_SOCKET (see notify.h). */
#include "notify.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

void notify_init(struct notify *n)
{
    const char *sock = getenv("NOTIFY_SOCKET");
    const char *wd = getenv("WATCHDOG_USEC"), *wd_pid = getenv("WATCHDOG_PID");
    size_t len;
    memset(n, 0, sizeof *n);
    n->fd = -1;
    if (wd && (!wd_pid || strtol(wd_pid, NULL, 10) == (long)getpid()))
        n->watchdog_usec = strtoull(wd, NULL, 10);
    if (!sock || !sock[0])
        return;
    len = strlen(sock);
    if ((sock[0] != '/' && sock[0] != '@') || len >= sizeof n->path) {
        LOG(LOG_WARN, "NOTIFY_SOCKET is not usable; no systemd notifications",
            LF_S("socket", sock));
        return;
    }
    memcpy(n->path, sock, len);
    if (sock[0] == '@')
        n->path[0] = '\0'; /* abstract namespace */
    n->path_len = (unsigned)len;
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (n->fd < 0)
        LOG(LOG_WARN, "cannot open the notification socket", LF_S("reason", strerror(errno)));
}

void notify_send(struct notify *n, const char *fmt, ...)
{
    struct sockaddr_un sa;
    char msg[512];
    va_list ap;
    int len;
    if (n->fd < 0)
        return;
    va_start(ap, fmt);
    len = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (len < 0)
        return;
    if ((size_t)len >= sizeof msg)
        len = (int)sizeof msg - 1;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, n->path, n->path_len);
    if (sendto(n->fd, msg, (size_t)len, MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n->path_len)) < 0)
        LOG(LOG_DEBUG, "systemd notification not sent", LF_S("reason", strerror(errno)));
}

void notify_close(struct notify *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
