#!/bin/sh
# Style and static checks: clang-format (must leave the code unchanged) and
# clang-tidy with the repository's .clang-tidy (must print no warning).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
files=$(ls src/*.c include/*.h tests/unit/*.c tests/fuzz/*.c)
clang-format --dry-run --Werror $files
cmake -S . -B build/lint -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
out=$(clang-tidy -p build/lint --quiet src/*.c 2>/dev/null | grep "warning:" || true)
if [ -n "$out" ]; then
    echo "$out"
    exit 1
fi
echo "lint: clean"
