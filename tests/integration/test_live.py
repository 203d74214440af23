#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The daemon in the foreground (no --once) with poll-interval = 2s: after it has caught up,
changes appended to the API are in the warehouse within interval + 2 s, three times; SIGTERM ends
it with exit code 0 within 5 s."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

INTERVAL = 2.0


def event_count(pg):
    return int(pg.scalar("select count(*) from witlink.work_item_link_event where organization = 'fabrikam'"))


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=3303, events=8000, batch_size=1000)
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="%ds" % INTERVAL)
    d.start()
    fs = harness.wait_caught_up(pg, 1, timeout=60, daemon=d)
    check(fs is not None, "daemon caught up with the backlog")
    evs = sim.events()
    check(event_count(pg) == len(harness.truth(evs, "fabrikam").events), "backlog stored")

    for round_, n in enumerate([1, 40, 250]):
        length = sim.append(n)
        t_append = time.monotonic()
        expected = len(harness.truth(sim.events(), "fabrikam").events)
        got = harness.wait_until(lambda: event_count(pg) >= expected, 15, 0.05)
        lat = time.monotonic() - t_append
        check(got, "round %d: %d appended events arrived (log length %d)" % (round_ + 1, n, length))
        log("round %d: latency %.2fs" % (round_ + 1, lat))
        check(lat <= INTERVAL + 2.0, "round %d: within poll-interval + 2 s (%.2fs)" % (round_ + 1, lat))
        check(d.alive(), "daemon still running")

    tr = harness.truth(sim.events(), "fabrikam")
    harness.fail_on_problems(harness.compare_with_truth(pg, tr), "warehouse equals the truth")
    f = harness.feeds(pg)[0]
    check(harness.token_pos(f["continuation_token"]) == sim.stats()["log_length"],
          "stored token is at the end of the log")
    # idle polling must not advance anything or hammer the API
    n0 = len(harness.data_requests(sim))
    time.sleep(INTERVAL * 2 + 0.5)
    n1 = len(harness.data_requests(sim))
    check(1 <= n1 - n0 <= 4, "idle: %d requests in %.1fs (one per poll interval)" % (n1 - n0, INTERVAL * 2 + 0.5))

    harness.check_no_pg_errors(pg)
    t0 = time.monotonic()
    d.kill(signal.SIGTERM)
    rc = d.wait(5)
    check(rc == 0, "SIGTERM: exit code 0 within 5 s (got %s after %.2fs)" % (rc, time.monotonic() - t0))


if __name__ == "__main__":
    harness.run_test(main)
