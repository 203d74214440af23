#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The two quick-start commands: `./dev.sh demo` and `./dev.sh test`. Each installs what is
# missing (Debian 12), builds, then runs the demo or the whole test suite: the suite, the suite
# again under ASan+UBSan, the integration subset under valgrind, and bounded fuzz runs.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(build-essential meson ninja-build pkg-config python3
          libcurl4-openssl-dev libjansson-dev libpq-dev libsystemd-dev
          postgresql-15 postgresql-client-15
          systemd systemd-container python3-docutils
          clang libclang-rt-14-dev llvm valgrind openssl)

as_root() {
        if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_deps() {
        local missing=()
        for p in "${PACKAGES[@]}" "$@"; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
                        missing+=("$p")
        done
        if [ ${#missing[@]} -gt 0 ]; then
                echo "Installing: ${missing[*]}"
                as_root apt-get update -qq
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                        --no-install-recommends "${missing[@]}" >/dev/null
        fi
        # Debian's postgresql package starts a cluster of its own; the tests use throwaway ones.
}

build() {
        if [ ! -f build/build.ninja ]; then
                meson setup build --buildtype=debugoptimized -Dwerror=true
        fi
        ninja -C build
}

summary() {
        # One closing line any CI can read: "N passed, N failed, N skipped", over every test log
        # given (a missing log, of a stage that could not run, counts as one failure).
        python3 - "$@" <<'PY'
import json, os, sys
ok = fail = skip = 0
for path in sys.argv[1:]:
    if not os.path.exists(path):
        fail += 1
        continue
    for line in open(path):
        r = json.loads(line)["result"]
        if r in ("OK", "EXPECTEDFAIL"):
            ok += 1
        elif r == "SKIP":
            skip += 1
        else:
            fail += 1
print("%d passed, %d failed, %d skipped" % (ok, fail, skip))
PY
}

# The stages of `./dev.sh test` after the plain suite. Each leaves a meson test log.
SAN_ENV=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0
         UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1)

stage_asan() {      # the whole suite, built with ASan+UBSan (gcc)
        if [ ! -f build-asan/build.ninja ]; then
                meson setup build-asan --buildtype=debugoptimized -Db_sanitize=address,undefined \
                        -Db_lundef=false -Dc_args=-fno-sanitize-recover=all
        fi
        ninja -C build-asan && env "${SAN_ENV[@]}" meson test -C build-asan --print-errorlogs
}

stage_valgrind() {  # the integration subset of suite memcheck, the daemon under valgrind
        meson test -C build --setup valgrind --suite memcheck --print-errorlogs
}

stage_fuzz() {      # bounded libFuzzer runs (clang), two at a time
        if [ ! -f build-fuzz/build.ninja ]; then
                CC=clang meson setup build-fuzz --buildtype=debugoptimized -Dfuzz=true \
                        -Dfuzz-seconds="${WITLINK_FUZZ_SECONDS:-60}" \
                        -Db_sanitize=address,undefined -Db_lundef=false
        fi
        ninja -C build-fuzz && env "${SAN_ENV[@]}" \
                meson test -C build-fuzz --setup fuzz --suite fuzz --num-processes 2 --print-errorlogs
}

run_stage() {       # run_stage NAME LOG COMMAND...: times it, removes a stale log first
        local name=$1 log=$2 t0=$SECONDS r=0
        shift 2
        rm -f "$log"
        echo "==== stage $name ===="
        "$@" || r=$?
        STAGES+=("$(printf '%-10s %4ds  exit %d' "$name" $((SECONDS - t0)) "$r")")
        LOGS+=("$log")
        [ "$r" -eq 0 ] || rc=1
}

case "${1:-}" in
demo)
        install_deps
        build
        exec python3 tests/demo.py
        ;;
test)
        shift
        install_deps
        build
        rc=0
        if [ $# -gt 0 ]; then
                # With meson test arguments (e.g. --suite unit): the plain build only.
                meson test -C build --print-errorlogs "$@" || rc=$?
                summary build/meson-logs/testlog.json
                exit $rc
        fi
        STAGES=() LOGS=()
        run_stage suite build/meson-logs/testlog.json meson test -C build --print-errorlogs
        run_stage asan build-asan/meson-logs/testlog.json stage_asan
        run_stage valgrind build/meson-logs/testlog-valgrind.json stage_valgrind
        run_stage fuzz build-fuzz/meson-logs/testlog-fuzz.json stage_fuzz
        grep -hE '^fuzz-[a-z]+: (#[0-9]+.*DONE|stat::(number_of_executed_units|average_exec_per_sec))' \
                build-fuzz/meson-logs/testlog-fuzz.txt 2>/dev/null || true
        printf 'stage %s\n' "${STAGES[@]}"
        summary "${LOGS[@]}"
        exit $rc
        ;;
asan | valgrind | fuzz)
        # One stage on its own (after the plain build).
        stage=$1
        install_deps
        build
        "stage_$stage"
        ;;
*)
        echo "usage: $0 demo | test [meson test arguments] | asan | valgrind | fuzz" >&2
        exit 2
        ;;
esac
