#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Three instances with the same configuration of four project feeds (poll-interval = 2s)
while the simulator appends changes.  A sampler reads pg_locks every 50 ms: at every sample each
feed's advisory lock (classid 7826539, objid feed_id, objsubid 2) is held by at most one
backend, a session of an instance, and by exactly one outside the moments between a kill and
the takeover.  witlink.feed names the owner (host, PID, backend).  kill -9 of the instance that
owns most feeds, twice (the first during the backfill): the dead instance's locks go at once,
the others take its feeds over within one poll interval (+ a small margin), and the last
instance ends owning all four; every standby retry of a claim (timed from PostgreSQL's
statement log) comes within one poll interval.  After the appends stop the warehouse equals the
truth with no duplicate event."""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
import instances  # noqa: E402
from harness import check, log, token_pos  # noqa: E402

INTERVAL = 2.0
MARGIN = 0.5    # the claim's round trip and the sampling step (the lock itself goes at once)
RELEASE = 0.5   # a SIGKILLed client's locks are gone this soon (its backend sees EOF at once)
RETRY_SLACK = 0.15  # a standby claim may wait this long in the store's queue
PROJECTS = ["Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj", "Northwind"]
EVENTS = 24000
BATCH = 100


def kill_owner(pg, sampler, insts, feed_ids, what):
    """kill -9 of the live instance that owns most feeds; returns (t_kill, t_takeover, victim)."""
    live = [i for i in insts if i.killed_at is None]
    owner = instances.wait_owners(pg, live, len(feed_ids), 10)
    log("%s: owners %s" % (what, instances.describe(owner)))
    victim = max(live, key=lambda i: sum(1 for o in owner.values() if o is i))
    gone = sorted(f for f, i in owner.items() if i is victim)
    pos = {f["feed_id"]: token_pos(f["continuation_token"] or "") for f in harness.feeds(pg)}
    t_kill = victim.killed_at = time.monotonic()    # samples from here on may see locks gone
    victim.daemon.kill(signal.SIGKILL)
    check(victim.daemon.wait(5) == -signal.SIGKILL,
          "%s: kill -9 instance %s (pid %d), owner of feeds %s (positions %s)"
          % (what, victim.name, victim.pid, gone, [pos.get(f) for f in gone]))
    live_apps = {i.app for i in live if i is not victim}
    t_take = instances.takeover_time(sampler, feed_ids, live_apps, t_kill, INTERVAL + MARGIN + 8)
    check(t_take is not None, "%s: the feeds of %s were taken over" % (what, victim.name))
    check(t_take - t_kill <= INTERVAL + MARGIN,
          "%s: every feed has a live owner again %.2fs after the kill (at most one poll "
          "interval + %.1fs)" % (what, t_take - t_kill, MARGIN))
    check(harness.wait_until(lambda: not victim.backend_pids(pg), 2, 0.05),
          "%s: PostgreSQL ended the dead instance's session" % what)
    return t_kill, t_take, victim


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg(settings={"log_statement": "'all'"})      # for the claims' timing
    # 30 ms per request: the backfill of the four feeds takes several seconds, so the first kill
    # lands in the middle of it.
    sim, insts, sampler, owner, t_ready, feed_ids = instances.start_three(
        ctx, pg, 6606, EVENTS, PROJECTS, BATCH, INTERVAL)

    appender = instances.Appender(sim, count=25, every=0.25)
    ctx.stack.callback(appender.halt)
    appender.start()

    total = EVENTS * len(PROJECTS)
    check(harness.wait_until(lambda: sum(token_pos(f["continuation_token"] or "") or 0
                                         for f in harness.feeds(pg)) >= total // 5, 30, 0.05),
          "a fifth of the backfill committed")
    k1 = kill_owner(pg, sampler, insts, feed_ids, "kill 1")
    time.sleep(3.0)     # two instances: each stands by for the other's feeds
    k2 = kill_owner(pg, sampler, insts, feed_ids, "kill 2")
    survivor = [i for i in insts if i.killed_at is None][0]
    owner = instances.wait_owners(pg, [survivor], len(PROJECTS), 2)
    check(set(owner.values()) == {survivor},
          "the last instance %s (pid %d) owns all four feeds, named in witlink.feed"
          % (survivor.name, survivor.pid))

    time.sleep(2.0)
    appender.stop()
    log("appended %d changes while running; log length %d"
        % (appender.appended, sim.stats()["log_length"]))
    check(instances.wait_at_end(pg, sim, len(PROJECTS), 40),
          "every feed caught up with the end of the log")
    sampler.stop()
    problems, n = instances.sample_problems(
        sampler, insts, feed_ids, t_ready, [(k1[0], k1[1]), (k2[0], k2[1])],
        [(k[2].app, None, k[0]) for k in (k1, k2)], RELEASE)
    check(n >= 50, "the sampler took %d samples" % n)
    harness.fail_on_problems(problems, "at every sample each feed's lock had one holder, a live "
                                       "instance (none only until the takeover after a kill)")

    evs = sim.events()
    harness.fail_on_problems(
        harness.compare_with_truth(pg, harness.truth(evs, "fabrikam", projects=PROJECTS)),
        "warehouse equals the truth, no duplicate, no missing event")
    check("Took the feed over." in survivor.stderr(), "the last instance logged taking feeds over")
    # A kill -9 in the middle of a COPY leaves "unexpected EOF ... open transaction" and
    # "protocol synchronization was lost": the dead client's, not a refused statement.
    errs = [e for e in pg.errors() if not any(x in e for x in (
        "connection to client lost", "unexpected EOF on client connection",
        "protocol synchronization was lost"))]
    for e in errs[:5]:
        log("  " + e)
    check(not errs, "PostgreSQL logged no other ERROR (no refused or failed statement)")
    check(survivor.alive(), "the last instance still runs")
    survivor.daemon.kill(signal.SIGTERM)
    rc = survivor.daemon.wait(5)
    check(rc == 0, "SIGTERM: the last instance exits 0 (got %s)" % rc)
    # Takeover within a poll interval needs every standby retry within a poll interval.
    gaps = instances.retry_gaps(instances.claim_attempts(pg))
    check(len(gaps) >= 3, "PostgreSQL logged %d standby retries of a claim" % len(gaps))
    worst = max(gaps)
    log("standby retries: %d, gap min %.2fs, mean %.2fs, max %.2fs (%s, %s)"
        % (len(gaps), min(gaps)[0], sum(g[0] for g in gaps) / len(gaps), worst[0], worst[1],
           worst[2]))
    late = [g for g in gaps if g[0] > INTERVAL + RETRY_SLACK]
    check(not late, "every standby instance retries a feed's claim within one poll interval "
                    "(%d of %d retries later than %.2fs)"
          % (len(late), len(gaps), INTERVAL + RETRY_SLACK))


if __name__ == "__main__":
    harness.run_test(main)
