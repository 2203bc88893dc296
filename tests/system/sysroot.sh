#!/bin/sh
# sysroot.sh: the Debian 12 root that tests/system boots with systemd as
# PID 1, built once and cached. Prints the root's path.
#
#   sysroot.sh [CACHE]   (default /var/cache/hostagent-systemtest)
#
# The cache is keyed by what the root contains, all of it decided here (the
# suite, the packages, the masked units, and `recipe`, to be bumped when a
# step below changes what it makes): CACHE/root-KEY. Another content builds
# a new root (debootstrap from the mirror of /etc/apt/sources.list.d/
# debian.sources, a few minutes) and removes the older ones. The root is
# never written by a test: test_debian.py boots an overlay on top of it.
set -eu

cache=${1:-/var/cache/hostagent-systemtest}
# systemd as PID 1 (with dbus for systemctl), and what the package depends on
# (so that `apt install ./hostagent_*.deb` needs no network in the test);
# procps for a look inside when a run goes wrong.
pkgs=systemd,systemd-sysv,dbus,procps,libwebsockets17,libwebsockets-evlib-uv,libuv1,libcjson1,libxxhash0
pkgs=$pkgs,libnats3.4,libssl3,libcap2,zlib1g
# Nothing that would reach for the host's consoles or run apt behind the
# test's back.
masked="getty@.service serial-getty@.service console-getty.service getty.target apt-daily.timer
apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-firstboot.service systemd-timesyncd.service"
recipe=2
key=$(echo "bookworm minbase $pkgs $masked $recipe" | sha256sum | cut -c1-12)
root=$cache/root-$key
if [ -x "$root/lib/systemd/systemd" ] && [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$cache"
tmp=$cache/building-$key
rm -rf "$tmp"
debootstrap --variant=minbase --include="$pkgs" bookworm "$tmp" "$mirror" >"$cache/debootstrap-$key.log" 2>&1 || {
    tail -20 "$cache/debootstrap-$key.log" >&2
    exit 1
}
chroot "$tmp" systemd-machine-id-setup >/dev/null 2>&1 || true
echo systemtest >"$tmp/etc/hostname"
for u in $masked; do
    ln -sf /dev/null "$tmp/etc/systemd/system/$u"
done
chroot "$tmp" systemctl set-default multi-user.target >/dev/null 2>&1
chroot "$tmp" apt-get clean
touch "$tmp/.complete"
for old in "$cache"/root-*; do
    [ "$old" = "$root" ] || rm -rf "$old"
done
rm -rf "$root"
mv "$tmp" "$root"
echo "$root"
