#!/bin/sh
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for a
# bounded time on a copy of its seed corpus (tests/fuzz/corpus/*). Prints the
# executions reached. FUZZ_SECONDS (default 30) per target.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=${HOSTAGENT_FUZZ_BUILD_DIR:-$here/build/fuzz}
secs=${FUZZ_SECONDS:-30}
command -v clang >/dev/null || { apt-get update -q && apt-get install -y -q clang libclang-rt-14-dev; }
CC=clang cmake -S "$here" -B "$out" -DHOSTAGENT_FUZZ=ON -DHOSTAGENT_WERROR=ON >/dev/null
cmake --build "$out" -j "$(nproc)" --target fuzz_frame fuzz_config >/dev/null
for t in frame config; do
    work=$(mktemp -d)
    cp "$here/tests/fuzz/corpus/$t/"* "$work/"
    echo "=== fuzz_$t for ${secs}s"
    "$out/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=1024 \
        "$work" 2>"$work.log" || { tail -50 "$work.log"; rm -rf "$work" "$work.log"; exit 1; }
    grep -E "stat::number_of_executed_units|stat::new_units_added" "$work.log" | sed "s/^/fuzz_$t: /"
    rm -rf "$work" "$work.log"
done
