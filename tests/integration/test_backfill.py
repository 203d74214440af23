#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Collection-wide backfill of 60,000 events with --once: the warehouse equals the truth key by
key, each distinct event is stored exactly once, the feed's token is the end of the log, and
the requests follow the token chain with the expected headers."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

EVENTS = int(os.environ.get("WITLINK_TEST_EVENTS") or harness.scaled(60000, 2000))


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=1101, events=EVENTS, batch_size=1000)
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h")
    log("backfilling %d events from %s (collection-wide) with --once" % (EVENTS, sim.base_url))
    t0 = time.monotonic()
    rc, out, err = d.run_once(timeout=90)
    dt = time.monotonic() - t0
    check(rc == 0, "witlinkd --once exits 0 (got %s)" % rc)
    log("backfill took %.2fs: %.0f events/s" % (dt, EVENTS / dt))

    evs = sim.events()
    tr = harness.truth(evs, "fabrikam")
    log("truth: %d links (%d active), %d distinct events"
        % (len(tr.links), sum(r["is_active"] for r in tr.links), len(tr.events)))
    harness.fail_on_problems(harness.compare_with_truth(pg, tr),
                             "work_item_link and work_item_link_event equal the truth")

    fs = harness.feeds(pg)
    check(len(fs) == 1 and fs[0]["project"] is None, "one collection-wide feed row")
    f = fs[0]
    check(harness.token_pos(f["continuation_token"] or "") == len(evs),
          "stored token points at the end of the log (%s)" % f["continuation_token"])
    check(f["caught_up"] is True, "feed is caught up")
    log("feed: events_total=%s batches_total=%s last_error=%r" % (f.get("events_total"),
                                                                 f.get("batches_total"), f.get("last_error")))

    reqs = harness.data_requests(sim)
    check(all(r["auth_ok"] for r in reqs), "every request authenticated (%d requests)" % len(reqs))
    check(all(r["status"] == 200 for r in reqs), "every request answered 200")
    check(all(r["fedauth_suppress"] for r in reqs), "X-TFS-FedAuthRedirect: Suppress sent")
    check(all("gzip" in (r["accept_encoding"] or "") for r in reqs), "Accept-Encoding: gzip sent")
    check(all("witlinkd" in (r["user_agent"] or "").lower() for r in reqs),
          "User-Agent names witlinkd (%r)" % reqs[0]["user_agent"])
    check(all((r["accept"] or "").startswith("application/json") for r in reqs), "Accept: application/json")
    harness.fail_on_problems(harness.request_chain_problems(reqs),
                             "each request carries the previous batch's token (also when only nextLink had it)")
    harness.check_no_pg_errors(pg)
    no_body = sum(1 for r in reqs if r.get("token_in_body") is False)
    log("%d of %d batches had the token only in nextLink" % (no_body, len(reqs)))


if __name__ == "__main__":
    harness.run_test(main)
