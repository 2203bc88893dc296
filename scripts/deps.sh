#!/bin/sh
# Installs what hostagent needs on Debian 12, with apt-get:
#   deps.sh          everything: build, the whole test suite (lint, valgrind,
#                    sanitizers, fuzzers, package checks, the browser test)
#   deps.sh --demo   only what the demo needs: the build and python3
#   deps.sh --demo-nats  the demo on NATS: that, Debian's nats-server, node
#                    and npm, and nats.js (npm ci in tests/nats)
# Safe to run again: apt-get only installs what is missing. Installing needs
# root: as root it runs apt-get itself, otherwise through sudo if there is one.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}
nats=""
if [ "$mode" = "--demo-nats" ]; then
    mode=--demo
    nats=yes
fi

# The build (its configure step also wants cmocka, for the unit tests), and
# what the demo runs (python3, mount/umount, mountpoint).
PKGS="cmake make gcc pkg-config libwebsockets-dev libwebsockets-evlib-uv \
libuv1-dev libcjson-dev libxxhash-dev libcmocka-dev libnats-dev libssl-dev python3 util-linux mount procps"
if [ "$mode" = "--demo" ] && [ -n "$nats" ]; then
    PKGS="$PKGS nats-server"
fi
if [ "$mode" != "--demo" ]; then
    nats=yes
    # The suite: unit tests, valgrind, TLS, the unit check, lint and fuzzers
    # (clang), the package checks (dpkg-shlibdeps, file, lintian), host names
    # under the tests' control (nss_wrapper), the metrics file read back with
    # Prometheus' parser, the fault-injecting FUSE filesystem (fuse3,
    # pyfuse3), ext4 loop images and chattr (e2fsprogs), xfs loop images
    # (xfsprogs), the live view in Debian's chromium, and the system test's
    # Debian 12 root booted with systemd (debootstrap).
    PKGS="$PKGS valgrind openssl systemd clang-format clang-tidy clang \
libclang-rt-14-dev dpkg-dev file lintian libnss-wrapper python3-prometheus-client \
fuse3 python3-pyfuse3 python3-trio e2fsprogs xfsprogs chromium nats-server debootstrap"
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$nats" ]; then
    # Node.js runs the browser test (playwright-core from the npm registry,
    # pinned in tests/web/package-lock.json) and nats.js (pinned in
    # tests/nats), the NATS client of the tests and of the reference
    # manager's --nats mode. A node or npm already on PATH (e.g. from
    # NodeSource, whose nodejs conflicts with Debian's npm) is used as it
    # is; otherwise Debian's nodejs (18) and npm are installed.
    command -v node >/dev/null || missing="$missing nodejs"
    command -v npm >/dev/null || missing="$missing npm"
fi

if [ -n "$missing" ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "deps: missing packages:$missing (run as root to install them)" >&2
            exit 1
        fi
        sudo=sudo
    fi
    echo "deps: installing$missing"
    $sudo apt-get update -q
    # shellcheck disable=SC2086 # one word per package
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

if [ -n "$nats" ] && [ ! -d "$here/tests/nats/node_modules/nats" ]; then
    echo "deps: npm ci in tests/nats (nats.js, the NATS tests' client)"
    (cd "$here/tests/nats" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if [ "$mode" != "--demo" ] && [ ! -d "$here/tests/web/node_modules/playwright-core" ]; then
    echo "deps: npm ci in tests/web (playwright-core)"
    (cd "$here/tests/web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
