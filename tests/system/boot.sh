#!/bin/sh
# boot.sh ROOT [LOG]: boots ROOT with systemd as PID 1. Run it as the
# first process of new PID and mount namespaces, leaving the propagation to
# this script (unshare's default, making / private, fails in a chroot):
#   unshare --pid --fork --mount --propagation unchanged tests/system/boot.sh ROOT
# (the network namespace stays the host's: the test's manager on 127.0.0.1
# is reachable). LOG, a file, becomes the booted system's /dev/kmsg: what
# systemd logs before its journal runs (so why it did not boot, if it did
# not) lands there, not in the host's kernel log; and its /dev/console is
# then /dev/null, not the host's console.
# See ../shared/notes/systemd-in-a-chroot.md.
#
# It works the same on a host and in a chroot whose /sys was bind-mounted
# without its cgroup mounts (as CI runs the suite): in a chroot "/" is no
# mount point, so ROOT must be one (the test's overlay), and the booted
# system is entered with `nsenter -r -w` (see test_debian.py).
set -eu
root=$1
log=${2:-}
say() { echo "boot.sh: $*" >&2; }
# Nothing mounted here may reach the parent namespace.
if mount --make-rprivate / 2>/dev/null; then
    chrooted=
else
    mountpoint -q "$root" || { say "in a chroot, $root must be a mount point"; exit 1; }
    mount --make-rprivate "$root"
    chrooted=1
fi
# The root must be a mount point, or every sandboxed unit fails with
# 226/NAMESPACE; recursive, so that what the test mounted inside comes along.
mount --rbind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
# The unified cgroup hierarchy, mounted here rather than bound from the
# host's /sys/fs/cgroup: that may be empty (a chroot's /sys bound without
# its submounts) or a v1/hybrid layout. systemd 252 then runs in unified
# mode wherever the test runs. Started with `unshare --cgroup` from a
# cgroup of its own (as the test does), the booted system sees only that.
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --rbind /dev "$root/dev"
# A copy of a shared mount joins its peers: in a chroot (whose own /dev
# was left as it was), what is mounted under ROOT/dev (kmsg here,
# /dev/shm and /dev/mqueue by systemd) would appear on the host's /dev.
mount --make-rprivate "$root/dev"
if [ -n "$log" ]; then
    mount --bind "$log" "$root/dev/kmsg"
    mount --bind /dev/null "$root/dev/console"
fi
cd "$root"
if [ -z "$chrooted" ]; then
    mkdir -p oldroot
    pivot_root . oldroot
    umount -l /oldroot
    exec /lib/systemd/systemd --system
fi
# pivot_root needs the current root to be a mount point, which a chroot's
# is not; a chroot into ROOT (a mount point itself) is what systemd needs.
exec chroot . /lib/systemd/systemd --system
