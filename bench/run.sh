#!/bin/sh
# Builds hostagent (Release) and runs bench/bench.py: hostagent move vs mv vs
# rsync on the same data, root filesystem -> tmpfs. Needs root.
# Arguments are passed on (e.g. --runs 3 --sets 20k-small).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/deps.sh"
command -v rsync >/dev/null || { apt-get update -q && apt-get install -y -q rsync; }
cmake -S "$here" -B "$here/build/bench" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$here/build/bench" -j "$(nproc)" >/dev/null
exec python3 "$here/bench/bench.py" --hostagent "$here/build/bench/hostagent" "$@"
