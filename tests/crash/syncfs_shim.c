/* syncfs_shim.c: LD_PRELOAD shim for the crash test. A FUSE filesystem never
 * hears of syncfs(2) (the kernel answers it without asking the daemon), so
 * the forgetful test filesystem (crashfs.py) could not see the agent's real
 * barrier. This shim lets the call through as before and, when the
 * descriptor is on a FUSE filesystem, also tells that filesystem with an
 * fsetxattr of the name "user.crashfs.syncfs" on the same descriptor, which
 * crashfs takes as "make everything durable". Its result is syncfs's result,
 * so a failing sync (a fault rule) is seen by the agent as a failing syncfs.
 * sync_file_range(2) is not used by the agent and is left alone. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#define FUSE_SUPER_MAGIC 0x65735546

int syncfs(int fd)
{
    static int (*real_syncfs)(int);
    struct statfs sfs;
    if (!real_syncfs)
        real_syncfs = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    if (real_syncfs(fd) != 0)
        return -1;
    if (fstatfs(fd, &sfs) != 0 || sfs.f_type != FUSE_SUPER_MAGIC)
        return 0;
    if (fsetxattr(fd, "user.crashfs.syncfs", "1", 1, 0) != 0) {
        if (errno == ENOTSUP)
            return 0; /* another FUSE filesystem: nothing to tell */
        return -1;
    }
    return 0;
}
