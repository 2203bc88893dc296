#!/bin/sh
# boot.sh ROOT: boots ROOT with systemd as PID 1. Run it as the first
# process of new PID and mount namespaces:
#   unshare --pid --fork --mount tests/system/boot.sh ROOT
# (the network namespace stays the host's: the test's manager on 127.0.0.1
# is reachable). See ../shared/notes/systemd-in-a-chroot.md.
set -eu
root=$1
mount --make-rprivate /
# The root must be a mount point, or every sandboxed unit fails with
# 226/NAMESPACE; recursive, so that what the test mounted inside comes along.
mount --rbind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --rbind /dev "$root/dev"
cd "$root"
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
exec /lib/systemd/systemd --system
