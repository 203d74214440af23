#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""kill -9 at random instants (5 times) during a backfill: after each kill the warehouse holds
exactly the log prefix up to the stored token (one transaction per batch), each restart resumes
from that token; a final --once run ends equal to the truth with no duplicate and no missing
event.  WITLINK_TEST_SEED picks the random delays (printed for reproduction)."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log, token_pos  # noqa: E402

EVENTS = 50000
BATCH = 50
KILLS = 5


def main(ctx):
    harness.require_daemon()
    seed, rnd = harness.random_seed()
    pg = ctx.pg()
    sim = ctx.simulator(seed=5505, events=EVENTS, batch_size=BATCH, extra_args=["--latency", "0.01"])
    evs = sim.events()
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")], poll_interval="1h")
    for i in range(KILLS):
        before = harness.stored_token(pg)
        n_req = len(sim.requests())
        delay = rnd.uniform(0.2, 1.2)
        d.start()
        time.sleep(delay)
        check(d.alive(), "kill %d: daemon running after %.2fs" % (i + 1, delay))
        d.kill(signal.SIGKILL)
        check(d.wait(5) == -signal.SIGKILL, "kill %d: killed by SIGKILL" % (i + 1))
        check(harness.wait_db_idle(pg), "kill %d: the daemon's database sessions are gone" % (i + 1))
        tok = harness.stored_token(pg)
        pos = token_pos(tok or "") or 0
        log("kill %d after %.2fs: stored position %d of %d" % (i + 1, delay, pos, EVENTS))
        reqs = harness.data_requests(sim, since=n_req)
        if reqs:
            check(reqs[0]["token"] == before or (before is None and not reqs[0]["token"]),
                  "kill %d: the run resumed from the stored token %r (asked %r)" % (i + 1, before, reqs[0]["token"]))
        if before is not None:
            check(pos >= token_pos(before), "kill %d: the stored position never goes back" % (i + 1))
        if harness.feeds(pg):
            harness.fail_on_problems(
                harness.compare_with_truth(pg, harness.truth(evs, "fabrikam", upto=pos), quiet=True),
                "kill %d: warehouse holds exactly the log prefix [0, %d)" % (i + 1, pos))
    check(pos < EVENTS, "the kills happened during the backfill (position %d of %d)" % (pos, EVENTS))
    sim.config(latency=0)
    before = harness.stored_token(pg)
    n_req = len(sim.requests())
    rc, out, err = d.run_once(timeout=90)
    check(rc == 0, "final --once exits 0 (got %s)" % rc)
    reqs = harness.data_requests(sim, since=n_req)
    check(reqs and reqs[0]["token"] == before, "final run resumed from the stored token")
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam")),
                             "final state equals the truth, no duplicate, no missing event")


if __name__ == "__main__":
    harness.run_test(main)
