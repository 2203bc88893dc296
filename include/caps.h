/* caps.h: what the process may do, read from its effective capability set
 * (not from its uid: the service runs as its own user with the capabilities
 * a faithful copy needs, systemd's AmbientCapabilities=). */
#ifndef HOSTAGENT_CAPS_H
#define HOSTAGENT_CAPS_H

#include <stdbool.h>

/* Is capability cap (CAP_CHOWN, ... from <linux/capability.h>) in the
 * calling thread's effective set? Read with the raw capget system call (no
 * libcap); false when it cannot be read or cap is out of the kernel ABI's
 * range. A system call each time: ask once per move. */
bool caps_effective(unsigned cap);

#endif
