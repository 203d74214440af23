#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Every fault kind of the simulator, one kind per --once run against a fresh warehouse:
429 with Retry-After, throttling headers on a 200, 500/502/503/504 with JSON and HTML bodies,
slow headers, a dripping body, a reset mid-body, a short body, truncated JSON, invalid JSON,
wrong types, null fields, a huge body (max-response-size = 1M: the transfer is aborted, not
buffered), a nextLink that names a second loopback address (127.0.0.2, which records every
Authorization header), redirects there, values duplicated across a batch boundary, the backoff
cap (max-backoff), failures that alternate with (slow) commits (the backoff starts over after
each committed batch) and Retry-After across the feeds of one source.

After every run: the warehouse equals the truth (each event once), a failed request was retried
with the same token, no request came before a Retry-After (or X-RateLimit-Delay) had run out
(from the simulator's request log), every queued fault was served, and nothing reached
127.0.0.2."""

import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
import simulator  # noqa: E402
from harness import check, log  # noqa: E402

EVENTS = harness.scaled(3000, 300)
BATCH = max(10, EVENTS // 30)          # ~30 batches: room for a fault every other request
MAX_BACKOFF = 0.5                      # max-backoff: keeps the retries of this test short
HTTP_TIMEOUT = 6 if harness.WRAPPER else 3   # http-timeout: "slow" faults go past it


def alternate(faults):
    """Each fault after one request that passes, so that no two fail in a row."""
    return [dict(f, skip=f.get("skip", 1)) for f in faults]


# name -> (faults, options). options: expect_rc, sim config for the run, extra checks.
PHASES = [
    ("429 with Retry-After", alternate([
        {"kind": "status", "status": 429, "headers": {"Retry-After": "2"}},
        {"kind": "status", "status": 429, "body": "html", "headers": {"Retry-After": "1"}},
        {"kind": "status", "status": 429, "body": "empty", "headers": {"Retry-After": "1.5"}},
    ]), {}),
    ("throttling headers on a 200 and a 429", alternate([
        {"kind": "ratelimit", "delay": 1.5, "remaining": 150},
        {"kind": "ratelimit", "delay": 0.2, "retry_after": 2, "remaining": 120},
        {"kind": "ratelimit", "status": 429, "retry_after": 1, "remaining": 0, "reset_in": 1},
        {"kind": "ratelimit", "delay": 0, "remaining": 1, "limit": 200, "reset_in": 3,
         "slowdown": True},
    ]), {}),
    ("5xx with JSON bodies", alternate([
        {"kind": "status", "status": s} for s in (500, 502, 503, 504)]), {}),
    ("5xx with HTML bodies", alternate([
        {"kind": "status", "status": s, "body": "html", "message": "Service Unavailable"}
        for s in (500, 502, 503, 504)]), {}),
    ("slow headers", alternate([
        {"kind": "delay", "seconds": 1.0},
        {"kind": "delay", "seconds": HTTP_TIMEOUT + 1.5, "broken": True},
    ]), {}),
    ("dripping body", alternate([
        {"kind": "drip", "pieces": 10, "seconds": 1.0},
        {"kind": "drip", "pieces": 10, "seconds": HTTP_TIMEOUT + 2.0, "broken": True},
    ]), {}),
    ("connection reset", alternate([
        {"kind": "reset", "when": "before"},
        {"kind": "reset", "when": "mid"},
    ]), {}),
    ("short body (Content-Length not reached)", alternate([{"kind": "truncate"}] * 2), {}),
    ("truncated JSON", alternate([{"kind": "truncjson"}] * 2), {}),
    ("invalid JSON", alternate([{"kind": "badjson"}] * 2), {}),
    ("wrong types", alternate([{"kind": "wrongtypes", "variant": v}
                               for v in sorted(simulator.WRONG_TYPES)]), {}),
    ("null fields", alternate([{"kind": "nulls", "variant": v} for v in sorted(simulator.NULLS)]),
     {}),
    ("huge body over max-response-size", alternate([
        {"kind": "huge", "bytes": 64 << 20},
        {"kind": "huge", "bytes": 64 << 20, "chunked": True},
        {"kind": "huge", "bytes": 256 << 20, "gzip": True},
    ]), {"huge": True}),
    ("nextLink on 127.0.0.2 (no continuationToken in the body)", [],
     {"sim": {"omit_token_ratio": 1.0}}),
    ("302 redirect to 127.0.0.2", [{"kind": "redirect", "status": 302, "location": "trap", "skip": 2}],
     {"expect_rc": 69}),
    ("307 redirect to 127.0.0.2", [{"kind": "redirect", "status": 307, "location": "trap", "skip": 1}],
     {"expect_rc": 69}),
    ("values duplicated across a batch boundary", alternate([
        {"kind": "dupboundary", "events": 5},
        {"kind": "overlap", "events": BATCH // 2},
        {"kind": "dupboundary", "events": BATCH},
        {"kind": "overlap", "events": BATCH * 2},
    ]), {}),
    ("backoff cap (max-backoff)", [{"kind": "status", "status": 503, "count": 5, "skip": 2}],
     {"backoff_cap": True}),
    # Every other request fails while the batch before it commits (slowly): the feed makes
    # progress all along, so the failures are not consecutive and the backoff starts over from
    # 1 s each time (max-backoff 1min here: it must not grow 1, 2, 4, 8, ... s).
    ("failures between commits are not consecutive (slow commits)",
     alternate([{"kind": "status", "status": 500}] * 4), {"slow_commit": True, "max_backoff": "1min"}),
]

SLOW_COMMIT_SQL = """
create or replace function public.witlink_test_slow() returns trigger language plpgsql as
  $$ begin perform pg_sleep(0.1); return null; end $$;
create trigger witlink_test_slow after insert on witlink.work_item_link_event
  for each statement execute function public.witlink_test_slow();
update witlink.feed set continuation_token = null;
"""


def reset_warehouse(pg):
    pg.psql("drop schema if exists witlink cascade;")


def arrival_order(reqs):
    """The request log in arrival order (a request is logged when its answer is sent)."""
    return sorted(reqs, key=lambda r: r["time"])


def check_run(pg, sim, evs, name, reqs):
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam"), quiet=True),
                             "%s: warehouse equals the truth, each event once" % name)
    starts = {harness.feed_of_request(reqs[0]): reqs[0]["token"]} if reqs else {}
    harness.fail_on_problems(harness.request_chain_problems(reqs, starts),
                             "%s: every failed request was retried with the same token" % name)
    harness.fail_on_problems(harness.throttle_problems(reqs),
                             "%s: no request before a Retry-After / X-RateLimit-Delay ran out" % name)
    trap = sim.trap_requests()
    for t in trap[:5]:
        log("  trap: %s %s Authorization=%r" % (t["method"], t["path"][:120], t["authorization"]))
    check(not trap, "%s: nothing reached 127.0.0.2 (%d requests, %d with Authorization)"
          % (name, len(trap), sum(1 for t in trap if t.get("authorization"))))


def run_phase(ctx, pg, sim, evs, d, name, faults, opt, timings):
    secret = sim.secret
    if opt.get("max_backoff"):
        d = ctx.daemon(pg.conninfo, d.sources, poll_interval="1h", http_timeout="%ds" % HTTP_TIMEOUT,
                       extra_daemon={"max-response-size": "1M", "max-backoff": opt["max_backoff"]})
    t0 = time.monotonic()
    log("== %s" % name)
    reset_warehouse(pg)
    sim.clear_requests()
    sim.config(omit_token_ratio=opt.get("sim", {}).get("omit_token_ratio", 0.33))
    if opt.get("slow_commit"):
        # a first run creates the schema; then each commit takes 0.1 s more and the feed
        # starts over (the documented reset), replaying what is stored
        rc, out, err = d.run_once(timeout=120)
        check(rc == 0, "%s: the first run exits 0 (got %s)" % (name, rc))
        pg.psql(SLOW_COMMIT_SQL)
        sim.clear_requests()
    sim.set_faults(faults)
    expect_rc = opt.get("expect_rc", 0)
    rc, out, err = d.run_once(timeout=120)
    check(rc == expect_rc, "%s: --once exits %d (got %s)" % (name, expect_rc, rc))
    # a fault whose client gave up (a timeout) is logged when its handler is done
    n_faults = sum(f.get("count", 1) for f in faults)
    harness.wait_until(lambda: len([r for r in harness.data_requests(sim) if r.get("fault")]) >= n_faults,
                       harness.slow(15))
    check(secret not in out + err, "%s: the token appears nowhere in the output" % name)
    left = sim.faults()
    check(left == [], "%s: every queued fault was served (left: %s)" % (name, left))
    reqs = arrival_order(harness.data_requests(sim))
    served = [(r["seq"], r.get("fault"), r["status"]) for r in reqs if r.get("fault")]
    log("%d requests; faults served: %s" % (len(reqs), served))
    if expect_rc != 0:
        n_bad = [r for r in reqs if r.get("fault") == "redirect"]
        check(len(n_bad) == 1 and reqs[-1] is n_bad[0],
              "%s: the redirect ended the run (no retry, no request to its Location)" % name)
        harness.fail_on_problems(harness.request_chain_problems(reqs),
                                 "%s: the first run followed the token chain" % name)
        # a second run, without the fault, completes from the stored position
        stored = harness.stored_token(pg)
        sim.clear_requests()
        rc, out, err = d.run_once(timeout=120)
        check(rc == 0, "%s: the next --once exits 0 (got %s)" % (name, rc))
        reqs = arrival_order(harness.data_requests(sim))
        check(reqs and reqs[0]["token"] == stored, "%s: the next run starts at the stored token" % name)
    check_run(pg, sim, evs, name, reqs)

    if opt.get("huge"):
        harness.wait_until(lambda: all(x.get("huge_done") for x in
                                       harness.data_requests(sim) if x.get("fault") == "huge"), 10)
        huge = [r for r in harness.data_requests(sim) if r.get("fault") == "huge"]
        for r in huge:
            log("huge answer #%d: %d bytes on the wire before the client hung up (complete: %s)"
                % (r["seq"], r.get("sent_bytes", -1), r.get("body_complete")))
        check(all(not r.get("body_complete") for r in huge[:2]),
              "huge: the 64 MiB transfers were aborted, not read to the end")
        check(all((r.get("sent_bytes") or 0) < 32 << 20 for r in huge[:2]),
              "huge: at most %d MiB of 64 MiB went over the wire (max-response-size 1M)"
              % (max((r.get("sent_bytes") or 0) for r in huge[:2]) >> 20))
        check(err.count("max-response-size") >= 3 or out.count("max-response-size") >= 3,
              "huge: each refusal names max-response-size (%d lines)" % err.count("max-response-size"))
        if not harness.WRAPPER:
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10
            check(rss < 120, "huge: no child process (the daemon included) grew past %d MiB "
                  "(the 256 MiB gzip bomb was not buffered)" % rss)
    if opt.get("backoff_cap"):
        bad = [i for i, r in enumerate(reqs) if r.get("fault") == "status"]
        gaps = [reqs[i + 1]["time"] - (reqs[i]["time"] + reqs[i].get("duration", 0))
                for i in bad if i + 1 < len(reqs)]
        log("retry gaps after consecutive 503s: %s" % ", ".join("%.2fs" % g for g in gaps))
        limit = MAX_BACKOFF * 1.2 + harness.slow(0.5)
        check(gaps and all(g <= limit for g in gaps),
              "max-backoff %gs caps the backoff (every gap <= %.2fs)" % (MAX_BACKOFF, limit))
    if opt.get("slow_commit"):
        bad = [i for i, r in enumerate(reqs) if r.get("fault") == "status"]
        gaps = [reqs[i + 1]["time"] - (reqs[i]["time"] + reqs[i].get("duration", 0))
                for i in bad if i + 1 < len(reqs)]
        log("retry gaps after failures between commits: %s" % ", ".join("%.2fs" % g for g in gaps))
        limit = 1.2 + harness.slow(0.3)
        check(gaps and all(g <= limit for g in gaps),
              "a committed batch resets the backoff: every retry within %.1fs of its failure" % limit)
    for i, r in enumerate(reqs):
        if r.get("fault") == "ratelimit" and r.get("status") == 200 \
                and r.get("ratelimit_remaining") == "1" and i + 1 < len(reqs):
            gap = reqs[i + 1]["time"] - (r["time"] + r.get("duration", 0))
            check(gap >= 0.5, "a nearly spent X-RateLimit-Remaining (1 of 200) slows the "
                  "source down (next request %.2fs later)" % gap)
    timings.append((name, time.monotonic() - t0))


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=7707, events=EVENTS, batch_size=BATCH, trap=True,
                        extra_args=["--nextlink-base", "trap"])
    evs = sim.events()
    log("%d events in batches of %d; nextLink names %s" % (EVENTS, BATCH, sim.trap_url))
    src = harness.Source.for_simulator(sim, name="fabrikam")
    d = ctx.daemon(pg.conninfo, [src], poll_interval="1h", http_timeout="%ds" % HTTP_TIMEOUT,
                   extra_daemon={"max-response-size": "1M", "max-backoff": "%dms" % (MAX_BACKOFF * 1000)})
    timings = []
    failed = []
    for name, faults, opt in PHASES:
        try:
            run_phase(ctx, pg, sim, evs, d, name, faults, opt, timings)
        except harness.Failure as e:
            failed.append((name, str(e)))
            log("phase FAILED: %s: %s\n---- daemon stderr (tail) ----\n%s"
                % (name, e, "".join(l for l in d.stderr_tail(200).splitlines(True)
                                    if ": debug: " not in l)[-3000:]))
    # Throttling is per identity: a Retry-After on one project feed holds back the other too.
    log("== Retry-After across the feeds of one source")
    reset_warehouse(pg)
    sim.clear_requests()
    sim.config(omit_token_ratio=0.33)
    projects = ["Fabrikam-Fiber", "Contoso Web"]
    d2 = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam", projects=projects,
                                                               max_parallel=2)],
                    poll_interval="1h", http_timeout="%ds" % HTTP_TIMEOUT,
                    extra_daemon={"max-backoff": "%dms" % (MAX_BACKOFF * 1000)})
    sim.set_faults([{"kind": "status", "status": 429, "headers": {"Retry-After": "2"},
                     "match": "Contoso", "skip": 2},
                    {"kind": "ratelimit", "retry_after": 1.5, "match": "Fabrikam-Fiber", "skip": 3}])
    rc, out, err = d2.run_once(timeout=120)
    check(rc == 0, "two project feeds: --once exits 0 (got %s)" % rc)
    check(sim.faults() == [], "two project feeds: both faults were served")
    reqs = arrival_order(harness.data_requests(sim))
    harness.fail_on_problems(harness.throttle_problems(reqs, tolerance=harness.slow(0.3)),
                             "a Retry-After on one feed held back every feed of the source")
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, "fabrikam", projects=projects),
                                                        quiet=True),
                             "two project feeds: warehouse equals the truth")
    harness.fail_on_problems(harness.request_chain_problems(reqs), "two project feeds: token chains")
    harness.check_no_pg_errors(pg)
    for name, dt in timings:
        log("%-60s %5.1fs" % (name, dt))
    for name, e in failed:
        log("phase FAILED: %s: %s" % (name, e))
    check(not failed, "every phase passed (%d of %d failed)" % (len(failed), len(PHASES)))


if __name__ == "__main__":
    harness.run_test(main, timeout=420)
