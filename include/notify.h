/* notify.h: the systemd notification protocol (sd_notify) without
 * libsystemd: datagrams to $NOTIFY_SOCKET. Without it, every call is a no-op. */
#ifndef HOSTAGENT_NOTIFY_H
#define HOSTAGENT_NOTIFY_H

#include <stdint.h>

struct notify {
    int fd; /* -1: not under systemd (or no socket) */
    char path[108];
    unsigned path_len;      /* bytes of path used (abstract sockets start with NUL) */
    uint64_t watchdog_usec; /* 0: no watchdog asked for */
};

/* Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. Never fails: problems
 * are logged and leave notifications off. */
void notify_init(struct notify *n);

/* Sends one state line ("READY=1", "STATUS=...", ...). */
void notify_send(struct notify *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void notify_close(struct notify *n);

#endif
