/* caps.c: the calling thread's effective capabilities, from the raw capget
 * system call: what decides whether a copy keeps owners (CAP_CHOWN) or may
 * ignore the sticky rule (CAP_FOWNER), whatever the uid. */
#include "caps.h"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

bool caps_effective(unsigned cap)
{
    /* Version 3: two 32-bit words per set, capabilities 0-63. */
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {{0, 0, 0}};

    if (cap >= 32u * _LINUX_CAPABILITY_U32S_3)
        return false;
    if (syscall(SYS_capget, &hdr, data) != 0)
        return false;
    return (data[cap / 32u].effective >> (cap % 32u)) & 1u;
}
