#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Stop (SIGTERM) in the middle of a backfill, then restart with --once: the state at the stop is
exactly the committed prefix of the log, the second run's first request carries exactly the
token stored at the stop, no committed batch is requested again, and the final state equals
the truth."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, token_pos  # noqa: E402

EVENTS = harness.scaled(30000, 3000)
BATCH = 50


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    # 20 ms per request: about 2,500 events/s, so the backfill takes ~12 s and we stop mid-way
    sim = ctx.simulator(seed=4404, events=EVENTS, batch_size=BATCH, extra_args=["--latency", "0.02"])
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")], poll_interval="1h")
    d.start()
    ok = harness.wait_until(lambda: (token_pos(harness.stored_token(pg) or "") or 0) >= 5 * BATCH, 60, 0.05)
    check(ok, "some batches committed while running")
    time.sleep(0.5)
    t0 = time.monotonic()
    d.kill(signal.SIGTERM)
    rc = d.wait(5)
    check(rc == 0, "SIGTERM mid-backfill: exit 0 within 5 s (got %s after %.2fs)" % (rc, time.monotonic() - t0))
    harness.wait_db_idle(pg)
    tok = harness.stored_token(pg)
    pos = token_pos(tok or "")
    check(pos is not None and 0 < pos < EVENTS, "stopped mid-way: stored token %r = log position %s of %d"
          % (tok, pos, EVENTS))
    evs = sim.events()
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam", upto=pos)),
                             "state at the stop equals the log prefix up to the stored token")
    reqs1 = harness.data_requests(sim)
    harness.fail_on_problems(harness.request_chain_problems(reqs1), "first run followed the token chain")

    n1 = len(sim.requests())
    sim.config(latency=0)
    rc, out, err = d.run_once(timeout=90)
    check(rc == 0, "restart with --once exits 0 (got %s)" % rc)
    reqs2 = harness.data_requests(sim, since=n1)
    check(reqs2, "second run made requests")
    check(reqs2[0]["token"] == tok, "second run's first request carries the stored token (%r)" % reqs2[0]["token"])
    early = [r for r in reqs2 if (token_pos(r["token"] or "") or 0) < pos]
    check(not early, "no committed batch requested again (%d requests before position %d)" % (len(early), pos))
    harness.fail_on_problems(harness.request_chain_problems(reqs2, {harness.feed_of_request(reqs2[0]): tok}),
                             "second run followed the token chain from the stored token")
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam")),
                             "final state equals the truth")


if __name__ == "__main__":
    harness.run_test(main)
