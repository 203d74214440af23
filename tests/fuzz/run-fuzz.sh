#!/bin/sh
# SPDX-License-Identifier: MIT
# One bounded libFuzzer run: run-fuzz.sh FUZZER SEED_CORPUS DICT SECONDS WORKDIR
# New inputs go to WORKDIR/corpus (the seed corpus stays as checked in); a crash leaves its
# input in WORKDIR (crash-*, leak-*, timeout-*). Prints the coverage and speed reached.
set -u
exe=$1 seeds=$2 dict=$3 secs=$4 work=$5
mkdir -p "$work/corpus"
set -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$work/"
[ -f "$dict" ] && set -- "$@" -dict="$dict"
"$exe" "$@" "$work/corpus" "$seeds" >"$work/log" 2>&1
rc=$?
name=$(basename "$exe")
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$work/log" | sed "s/^/$name: /"
grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$work/log" |
        sed "s/^/$name: /"
echo "$name: corpus $(ls "$work/corpus" | wc -l) new inputs; log $work/log"
if [ $rc -ne 0 ]; then
        echo "$name: FAILED (exit $rc):"
        tail -n 60 "$work/log"
fi
exit $rc
