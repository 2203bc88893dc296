#!/bin/sh
# The whole test suite, as CI runs it (.ci/run calls this script):
#   0. clang-format and clang-tidy must be clean (scripts/lint.sh);
#   1. plain build, warnings as errors: every unit and integration test,
#      including the valgrind run of the daemon, and the system test
#      (label system: the .deb on a booted Debian 12 with systemd; only here);
#   2. AddressSanitizer + UndefinedBehaviorSanitizer build: the whole suite
#      again (without valgrind, which cannot run a sanitized binary);
#   3. ThreadSanitizer build: the worker/loop hand-off tests (label handoff)
#      and the integration tests that between them start every thread the
#      daemon has (label tsan: moves, kept verifier, reclaimer, unlink pool,
#      NATS helper, path checks);
#   4. libFuzzer: the frame/request parser and the config parser, about a
#      minute in all (scripts/fuzz.sh).
# Installs what it needs first (Debian 12, as root). Integration tests mount
# tmpfs and drop to `nobody`, so they need root; HOSTAGENT_ALLOW_SKIP_ROOT=1
# skips them explicitly instead of failing.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
out=${HOSTAGENT_TEST_BUILD_DIR:-$here/build/ci}
jobs=$(nproc 2>/dev/null || echo 2)

# Root runs everything; another user goes through sudo if there is one.
if [ "$(id -u)" -ne 0 ] && [ -z "${HOSTAGENT_ALLOW_SKIP_ROOT:-}" ] && command -v sudo >/dev/null; then
    exec sudo --preserve-env=HOSTAGENT_TEST_BUILD_DIR,FUZZ_SECONDS "$0" "$@"
fi
"$here/scripts/deps.sh"

run_build() { # name sanitizer ctest-args...
    name=$1 san=$2
    shift 2
    echo "=== $name: configure and build"
    cmake -S "$here" -B "$out/$name" -DHOSTAGENT_WERROR=ON -DHOSTAGENT_SANITIZE="$san" >/dev/null
    cmake --build "$out/$name" -j "$jobs"
    echo "=== $name: tests"
    (cd "$out/$name" && ctest --output-on-failure -j "$jobs" "$@")
}

# halt_on_error makes every ASan/UBSan report a failure; leak checking is on.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=86"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The suppressions (tests/tsan.supp) where an agent run as nobody can read
# them too (the checkout may be under root's 0700 home).
tsan_supp=$(mktemp /tmp/hostagent-tsan-XXXXXX.supp)
cp "$here/tests/tsan.supp" "$tsan_supp"
chmod 644 "$tsan_supp"
trap 'rm -f "$tsan_supp"' EXIT
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$tsan_supp"

start=$(date +%s)
echo "=== lint: clang-format and clang-tidy"
"$here/scripts/lint.sh"
run_build plain ""
run_build asan address
run_build tsan thread -L 'handoff|tsan'
echo "=== fuzz: frame parser and config parser, ${FUZZ_SECONDS:-30}s each (clang, ASan+UBSan)"
"$here/scripts/fuzz.sh"
echo "=== all test builds passed in $(( $(date +%s) - start )) s"
