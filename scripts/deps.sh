#!/bin/sh
# Installs what hostagent needs to build, test and run the demo on Debian 12.
# Safe to run again: apt-get only installs what is missing. Needs root.
set -eu

PKGS="cmake make gcc pkg-config libwebsockets-dev libwebsockets-evlib-uv \
libuv1-dev libcjson-dev libxxhash-dev libcmocka-dev python3 valgrind util-linux procps openssl systemd \
clang-format clang-tidy clang libclang-rt-14-dev chromium python3-prometheus-client"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing packages:$missing (run as root to install them)" >&2
        exit 1
    fi
    echo "deps: installing$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# Node.js runs the browser test (playwright-core from the npm registry, pinned
# in tests/web/package-lock.json); Debian's chromium is the browser.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "deps: node and npm are needed for the browser test (Debian: apt-get install nodejs npm)" >&2
    exit 1
fi
if [ ! -d "$(dirname "$0")/../tests/web/node_modules/playwright-core" ]; then
    (cd "$(dirname "$0")/../tests/web" && npm ci --no-audit --no-fund >/dev/null 2>&1 ||
        npm install --no-audit --no-fund >/dev/null)
fi
