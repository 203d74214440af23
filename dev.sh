#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The two quick-start commands: `./dev.sh demo` and `./dev.sh test`. Each installs what is
# missing (Debian 12), builds, then runs the demo or the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(build-essential meson ninja-build pkg-config python3
          libcurl4-openssl-dev libjansson-dev libpq-dev libsystemd-dev
          postgresql-15 postgresql-client-15)

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
        # One closing line any CI can read: "N passed, N failed, N skipped".
        python3 - "$1" <<'PY'
import json, sys
ok = fail = skip = 0
for line in open(sys.argv[1]):
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
        meson test -C build --print-errorlogs "$@" || rc=$?
        summary build/meson-logs/testlog.json
        exit $rc
        ;;
*)
        echo "usage: $0 demo | test [meson test arguments]" >&2
        exit 2
        ;;
esac
