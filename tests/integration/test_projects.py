#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Two project feeds of one organization (names that need URL-encoding) with cross-project links,
and a third project that is not configured: each project's links (either end in it) equal its
truth, nothing of the third project alone arrives, and every event is stored once (a
cross-project link seen by both feeds is not stored twice)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

PROJECTS = ["Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj"]
CONFIGURED = ["Contoso Web", "Ωmega.Proj"]


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=2202, events=harness.scaled(30000, 3000), projects=PROJECTS, batch_size=500)
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam", projects=CONFIGURED)],
                   poll_interval="1h")
    rc, out, err = d.run_once(timeout=90)
    check(rc == 0, "witlinkd --once exits 0 (got %s)" % rc)

    evs = sim.events()
    cross = [e for e in evs if {e["sourceProject"], e["targetProject"]} == set(CONFIGURED)]
    log("%d events link %s with %s" % (len(cross), CONFIGURED[0], CONFIGURED[1]))
    check(len(cross) > harness.scaled(100, 10), "the log has cross-project links between the configured projects")

    union = harness.truth(evs, "fabrikam", projects=CONFIGURED)
    harness.fail_on_problems(harness.compare_with_truth(pg, union),
                             "warehouse equals the union of both project feeds (events once, no third-project-only links)")
    for p in CONFIGURED:
        tp = harness.truth(evs, "fabrikam", projects=[p])
        log("project %r: %d links, %d events" % (p, len(tp.links), len(tp.events)))
        harness.fail_on_problems(harness.compare_with_truth(pg, tp, restrict_keys=True),
                                 "links with an end in %r equal that project's truth" % p)

    n_feeds = int(pg.scalar("select count(distinct feed_id) from witlink.work_item_link_event"))
    check(n_feeds == 2, "events were stored by both feeds (%d distinct feed_id)" % n_feeds)

    fs = harness.feeds(pg)
    check(sorted((f["project"] or "") for f in fs) == sorted(CONFIGURED),
          "two feed rows, one per configured project: %s" % [f["project"] for f in fs])
    check(all(f["caught_up"] for f in fs), "both feeds caught up")

    reqs = harness.data_requests(sim)
    seen = {r.get("project") for r in reqs}
    check(seen == set(CONFIGURED), "requests went to both project paths (URL-encoded): %s" % seen)
    check(all(r["status"] == 200 for r in reqs), "no request failed (no 404 for an encoded project name)")
    harness.check_no_pg_errors(pg)
    harness.fail_on_problems(harness.request_chain_problems(reqs), "each feed follows its own token chain")


if __name__ == "__main__":
    harness.run_test(main)
