#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""statement-timeout: while another session holds an exclusive lock on the link table for 4 s
during a backfill, the daemon (statement-timeout = 1s) does not hang behind it: PostgreSQL
cancels its statements after about a second, the daemon keeps running, retries, and once the
lock is gone ends caught up and equal to the truth."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log, token_pos  # noqa: E402

LOCK_SECONDS = 4


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=1414, events=harness.scaled(4000, 1000), batch_size=100,
                        extra_args=["--latency", "0.05"])
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h", log_level="info",
                   extra_daemon={"statement-timeout": "1s", "max-backoff": "500ms"})
    d.start()
    ok = harness.wait_until(lambda: (token_pos(harness.stored_token(pg) or "") or 0) >= 300, 60, 0.05)
    check(ok, "the backfill is under way")
    # Another session takes the table for LOCK_SECONDS (psql in the background).
    locker = subprocess.Popen(
        [os.path.join(pg.bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.dir,
         "-p", str(pg.port), "-U", "postgres", "-d", "postgres", "-c",
         "begin; lock table witlink.work_item_link in access exclusive mode; "
         "select pg_sleep(%d); commit;" % LOCK_SECONDS],
        env=dict(pg.env(), PGAPPNAME="witlink-test-locker"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    t_lock = time.monotonic()
    pos0 = token_pos(harness.stored_token(pg) or "") or 0
    time.sleep(LOCK_SECONDS - 0.5)
    pos1 = token_pos(harness.stored_token(pg) or "") or 0
    check(pos1 <= pos0 + 100, "nothing (beyond a batch in flight) committed while the table was "
          "locked (%d → %d)" % (pos0, pos1))
    check(d.alive(), "the daemon keeps running behind the lock")
    check(locker.wait(30) == 0, "the locking session ended (%s)" % locker.stderr.read().strip())
    fs = harness.wait_caught_up(pg, 1, timeout=90, daemon=d)
    check(fs is not None, "caught up %.1fs after the lock was taken" % (time.monotonic() - t_lock))
    with open(pg.logfile, errors="replace") as f:
        pglog = f.read()
    cancels = pglog.count("canceling statement due to statement timeout")
    log("PostgreSQL canceled %d statements for the timeout" % cancels)
    check(cancels >= 1, "PostgreSQL canceled the daemon's blocked statement (statement-timeout)")
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(sim.events(), "fabrikam")),
                             "warehouse equals the truth, no duplicate")
    d.kill(15)
    check(d.wait(10) == 0, "SIGTERM: exit 0")


if __name__ == "__main__":
    harness.run_test(main, timeout=180)
