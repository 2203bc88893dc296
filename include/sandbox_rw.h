/* sandbox_rw.h: telling a path made read-only by the service's sandbox
 * (systemd's ProtectSystem=strict without the path in ReadWritePaths=) from
 * a filesystem that is read-only itself, so that a move names the fix. */
#ifndef HOSTAGENT_SANDBOX_RW_H
#define HOSTAGENT_SANDBOX_RW_H

#include <stdbool.h>
#include <stddef.h>

/* True when the agent runs as a systemd service and `path` (resolved) lies
 * on a mount that is read-only while its filesystem is mounted read-write:
 * the read-only bind mount a sandbox lays over what it does not list. Then
 * `why` says so and what to do. False otherwise (also when it cannot tell),
 * so nothing changes outside a sandbox. */
bool sandbox_rw_denied(const char *path, const char *what, char *why, size_t whysz);

/* The read-write (0) or read-only (1) superblock of the mount at the longest
 * mount point holding `path` in a mountinfo text (/proc/self/mountinfo's
 * format), or -1 when no line holds it. Pure: for the unit test. */
int sandbox_rw_super_ro(const char *mountinfo, const char *path);

#endif
