#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""PostgreSQL restarted three times during a 100,000-event backfill (two fast shutdowns and
one immediate one, i.e. crash recovery): the daemon in the foreground keeps running through
each, reconnects by itself, and ends caught up with the warehouse equal to the truth (each
event once)."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log, token_pos  # noqa: E402

EVENTS = harness.scaled(100000, 5000)
BATCH = 500
RESTARTS = [(0.15, "fast"), (0.45, "immediate"), (0.75, "fast")]


def position(pg):
    try:
        return token_pos(harness.stored_token(pg) or "") or 0
    except Exception:
        return None


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    # ~15 ms per request: the backfill takes long enough for three restarts
    sim = ctx.simulator(seed=1212, events=EVENTS, batch_size=BATCH, extra_args=["--latency", "0.015"])
    evs = sim.events()
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h", log_level="info")
    t0 = time.monotonic()
    d.start()
    for i, (frac, mode) in enumerate(RESTARTS):
        target = int(EVENTS * frac)
        got = harness.wait_until(lambda: (position(pg) or 0) >= target, harness.slow(90), 0.05)
        check(got, "restart %d: the backfill reached position %d" % (i + 1, target))
        pos = position(pg)
        t1 = time.monotonic()
        pg.restart(mode)
        log("restart %d (%s) at position %d of %d took %.1fs" % (i + 1, mode, pos, EVENTS,
                                                                 time.monotonic() - t1))
        check(d.alive(), "restart %d: the daemon keeps running" % (i + 1))
        check(pos < EVENTS, "restart %d happened during the backfill" % (i + 1))
    fs = harness.wait_caught_up(pg, 1, timeout=150, daemon=d)
    check(fs is not None, "caught up after three restarts (%.1fs in all)" % (time.monotonic() - t0))
    check(d.alive(), "the daemon is still running")
    check(token_pos(fs[0]["continuation_token"]) == EVENTS, "the stored token is the end of the log")
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam")),
                             "warehouse equals the truth, no duplicate, no missing event")
    with open(d.stderr_path, errors="replace") as f:
        text = f.read()
    log("daemon log: %d lines mention the lost session, %d the restored one"
        % (text.lower().count("lost"), text.lower().count("restored") + text.lower().count("reconnected")))
    harness.check_no_pg_errors(pg)
    d.kill(15)
    check(d.wait(10) == 0, "SIGTERM: exit 0")


if __name__ == "__main__":
    harness.run_test(main, timeout=300)
