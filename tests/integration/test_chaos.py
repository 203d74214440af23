#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Chaos during a 100,000-event backfill in the foreground: about 10 % of the requests get a
random fault (5xx with JSON or HTML, 429 with Retry-After, resets, short and truncated bodies,
invalid JSON, wrong types, nulls, slow headers and bodies, replays, duplicates across a batch
boundary), the daemon is killed with SIGKILL five times at random instants (and started again),
and PostgreSQL is restarted once. The end: caught up, equal to the truth, no duplicate event, and
within each daemon process no request before a Retry-After ran out. WITLINK_TEST_SEED repeats a
run (the seed is printed)."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log, token_pos  # noqa: E402

EVENTS = harness.scaled(100000, 5000)
BATCH = 500
KILLS = 5
HTTP_TIMEOUT = int(harness.slow(3))

CHAOS_FAULTS = [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 502, "body": "html"},
    {"kind": "status", "status": 503, "headers": {"Retry-After": "1"}},
    {"kind": "status", "status": 504, "body": "html"},
    {"kind": "status", "status": 429, "headers": {"Retry-After": "1"}},
    {"kind": "ratelimit", "delay": 0.5, "remaining": 150},
    {"kind": "reset", "when": "before"},
    {"kind": "reset", "when": "mid"},
    {"kind": "truncate"},
    {"kind": "truncjson"},
    {"kind": "badjson"},
    {"kind": "wrongtypes", "variant": "sourceId-string"},
    {"kind": "wrongtypes", "variant": "values-object"},
    {"kind": "nulls", "variant": "changedDate"},
    {"kind": "nulls", "variant": "token"},
    {"kind": "delay", "seconds": 0.5},
    {"kind": "drip", "pieces": 5, "seconds": 0.5},
    {"kind": "overlap", "events": 250},
    {"kind": "dupboundary", "events": 50},
]


def position(pg):
    try:
        return token_pos(harness.stored_token(pg) or "") or 0
    except Exception:
        return 0


def main(ctx):
    harness.require_daemon()
    seed, rnd = harness.random_seed()
    pg = ctx.pg()
    sim = ctx.simulator(seed=1313, events=EVENTS, batch_size=BATCH, extra_args=["--latency", "0.01"])
    evs = sim.events()
    sim.config(chaos={"ratio": 0.10, "seed": seed, "faults": CHAOS_FAULTS})
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h", http_timeout="%ds" % HTTP_TIMEOUT, log_level="info",
                   extra_daemon={"max-backoff": "1s"})
    # the schedule: five kills and one PostgreSQL restart, in random order, at random instants
    actions = ["kill"] * KILLS + ["pg"]
    rnd.shuffle(actions)
    boundaries = []
    t0 = time.monotonic()
    boundaries.append(time.time())
    d.start()
    for i, a in enumerate(actions):
        delay = rnd.uniform(0.5, 2.0)
        time.sleep(delay)
        pos = position(pg)
        if a == "kill":
            check(d.alive(), "step %d: daemon running before kill" % (i + 1))
            d.kill(signal.SIGKILL)
            check(d.wait(5) == -signal.SIGKILL, "step %d: killed by SIGKILL at position %d" % (i + 1, pos))
            check(harness.wait_db_idle(pg), "step %d: the killed daemon's sessions are gone" % (i + 1))
            boundaries.append(time.time())
            d.start()
        else:
            pg.restart("fast")
            check(d.alive(), "step %d: PostgreSQL restarted at position %d; the daemon keeps running"
                  % (i + 1, pos))
        log("step %d after %.2fs: %s at position %d of %d" % (i + 1, delay, a, pos, EVENTS))
    pos = position(pg)
    check(pos < EVENTS, "everything happened during the backfill (position %d of %d)" % (pos, EVENTS))
    fs = harness.wait_caught_up(pg, 1, timeout=200, daemon=d)
    check(fs is not None, "caught up (%.1fs in all)" % (time.monotonic() - t0))
    reqs = sorted(harness.data_requests(sim), key=lambda r: r["time"])
    faulted = [r for r in reqs if r.get("fault")]
    kinds = {}
    for r in faulted:
        kinds[r["fault"]] = kinds.get(r["fault"], 0) + 1
    log("%d requests, %d faulted (%.1f %%): %s" % (len(reqs), len(faulted),
                                                  100.0 * len(faulted) / max(1, len(reqs)), kinds))
    check(len(faulted) >= 10, "chaos happened (%d faulted requests)" % len(faulted))
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam")),
                             "warehouse equals the truth, no duplicate event")
    harness.fail_on_problems(harness.throttle_problems(reqs, boundaries=boundaries),
                             "within each daemon process, no request before a Retry-After ran out")
    d.kill(signal.SIGTERM)
    check(d.wait(10) == 0, "SIGTERM: exit 0")


if __name__ == "__main__":
    harness.run_test(main, timeout=360)
