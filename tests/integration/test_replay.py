#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Replayed events and transient failures during a backfill with --once: batches that start
earlier than the token asked for (the server replays events), a 503 with Retry-After, a
connection reset, a truncated body, a 500 and a 200 with a broken JSON body.  The run ends with
exit 0, the warehouse equals the truth, each event is stored once, a failed request is retried
with the same token, and Retry-After is honoured."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=6606, events=20000, batch_size=500)
    faults = [
        {"kind": "overlap", "events": 120, "count": 2, "skip": 3},
        {"kind": "status", "status": 503, "headers": {"Retry-After": "2"}, "count": 1, "skip": 1},
        {"kind": "reset", "count": 1},
        {"kind": "truncate", "count": 1, "skip": 1},
        {"kind": "overlap", "events": 499, "count": 1},
        {"kind": "status", "status": 500, "count": 1, "skip": 1},
        {"kind": "badjson", "count": 1, "skip": 1},
    ]
    sim.set_faults(faults)
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")], poll_interval="1h")
    rc, out, err = d.run_once(timeout=90)
    check(rc == 0, "witlinkd --once exits 0 despite transient failures (got %s)" % rc)
    check(sim.faults() == [], "all queued faults were served")
    reqs = harness.data_requests(sim)
    applied = [(r["seq"], r.get("fault"), r["status"]) for r in reqs if r.get("fault")]
    log("faults served: %s" % applied)

    evs = sim.events()
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam")),
                             "warehouse equals the truth, replayed events stored once")
    harness.fail_on_problems(harness.request_chain_problems(reqs),
                             "failed requests were retried with the same token")
    i503 = [i for i, r in enumerate(reqs) if r.get("fault") == "status" and r["status"] == 503][0]
    gap = reqs[i503 + 1]["time"] - reqs[i503]["time"]
    check(gap >= 1.9, "Retry-After: 2 honoured (next request %.2fs later)" % gap)
    harness.check_no_pg_errors(pg)


if __name__ == "__main__":
    harness.run_test(main)
