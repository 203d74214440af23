#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""witlinkd --status as a health check (SPEC §3): the table and --json for a healthy feed (exit
0), a lagging one (--max-lag, exit 1), a failing one (a source whose credential the simulator
rejects with 203 + HTML: the running daemon records last_error; exit 1), a configured feed that
was never registered (exit 1), a retired feed (shown, not judged), a database without the schema
(exit 1), an unreachable database (exit 69) and a bad configuration (exit 78)."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402


def status(d, *args, timeout=30):
    rc, out, err = d.run(["-c", d.config_path, "--status"] + list(args), timeout=timeout)
    log("--status %s -> exit %s\n%s%s" % (" ".join(args), rc, out, ("stderr: " + err.strip()[-600:] + "\n") if err.strip() else ""))
    return rc, out, err


def status_json(d, *args):
    rc, out, err = status(d, "--json", *args)
    try:
        doc = json.loads(out)
    except ValueError as e:
        raise harness.Failure("--status --json printed no JSON (%s): %r" % (e, out[:300]))
    return rc, doc


def by_org(doc):
    return {(f["organization"], f["project"]): f for f in doc["feeds"]}


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=4242, events=3000, batch_size=1000)
    good = harness.Source.for_simulator(sim, name="fabrikam")
    bad = harness.Source("contoso", sim.base_url, "not-the-right-PAT", auth="pat")

    # ---- healthy
    d = ctx.daemon(pg.conninfo, [good], poll_interval="1min")
    rc, _, _ = d.run_once(timeout=60)
    check(rc == 0, "witlinkd --once exits 0")
    rc, out, _ = status(d)
    lines = out.splitlines()
    check(rc == 0, "--status exits 0 for a caught-up feed")
    check(lines[0].split()[:4] == ["FEED", "SOURCE", "PROJECT", "STATE"] and
          any("fabrikam" in line and "caught up" in line and "(all projects)" in line for line in lines[1:])
          and lines[-1].startswith("Healthy: 1 of 1 configured feeds (max lag 8min)"),
          "the table shows the feed caught up; default max lag 3 x 1min + 5min")
    rc, doc = status_json(d)
    f = by_org(doc).get(("fabrikam", None))
    row = harness.feeds(pg)[0]
    check(rc == 0 and doc["healthy"] is True and doc["max_lag_seconds"] == 480 and f is not None,
          "--json: healthy, max_lag_seconds 480, the feed listed")
    check(f["state"] == "caught up" and f["healthy"] is True and f["configured"] is True and
          f["caught_up"] is True and f["feed_id"] == row["feed_id"] and
          f["events_total"] == row["events_total"] == 3000 and f["batches_total"] == row["batches_total"] and
          f["last_error"] is None and 0 <= f["lag_seconds"] < 60 and f["token_age_seconds"] is not None and
          f["owner"]["active"] is False and f["owner"]["pid"] > 0,
          "--json: state, counters, lag, token age and the (exited) owner of the feed")

    # ---- lagging
    time.sleep(1.2)
    rc, out, _ = status(d, "--max-lag=1s")
    check(rc == 1 and "lagging" in out and out.splitlines()[-1].startswith("Unhealthy: 1 of 1"),
          "--max-lag=1s: the feed is lagging, exit 1")
    rc, doc = status_json(d, "--max-lag", "1s")
    check(rc == 1 and doc["healthy"] is False and doc["feeds"][0]["state"] == "lagging",
          "--json --max-lag 1s: healthy false, state lagging")

    # ---- failing: the daemon runs, one source's credential is rejected (203 + HTML)
    d.sources = [good, bad]
    d.write_config()
    d.start()
    ok = harness.wait_until(lambda: any(f["organization"] == "contoso" and f["last_error"]
                                        for f in harness.feeds(pg)), 20)
    check(ok, "the daemon records the rejected credential in witlink.feed.last_error")
    ok = harness.wait_until(lambda: pg.scalar("select bool_and(owner_active) from witlink.feed_status") == "t", 10)
    check(ok, "the running daemon holds both feeds")
    rc, out, _ = status(d)
    check(rc == 1 and "failing" in out and "last error" in out and
          out.splitlines()[-1].startswith("Unhealthy: 1 of 2"),
          "--status exits 1 and shows the failing feed with its last error")
    rc, doc = status_json(d)
    feeds = by_org(doc)
    fb, fg = feeds[("contoso", None)], feeds[("fabrikam", None)]
    check(rc == 1 and doc["healthy"] is False and fb["state"] == "failing" and fb["healthy"] is False
          and fb["last_error"] and fb["last_error_at"] and fg["state"] == "caught up" and fg["healthy"] is True
          and fg["owner"]["active"] is True and fg["owner"]["pid"] == d.pid,
          "--json: the failing feed (%r), the healthy one owned by the running daemon" % fb["last_error"])
    d.stop()

    # ---- not registered / not configured
    d.sources = [harness.Source.for_simulator(sim, name="northwind"), good]
    d.write_config()
    rc, doc = status_json(d)
    feeds = by_org(doc)
    nr, nc = feeds.get(("northwind", None)), feeds.get(("contoso", None))
    check(rc == 1 and nr and nr["state"] == "not registered" and nr["feed_id"] is None and
          nc and nc["state"] == "not configured" and nc["healthy"] is None and
          feeds[("fabrikam", None)]["healthy"] is True,
          "a configured feed without a row is not registered (unhealthy); one the config does not "
          "name is not configured (not judged)")
    d.sources = [good]
    d.write_config()
    rc, out, _ = status(d)
    check(rc == 0 and "not configured" in out, "the retired failing feed alone does not make it unhealthy")

    # ---- a database without the schema
    pg.psql("create database empty;")
    d2 = ctx.daemon(pg.conninfo.replace("dbname=postgres", "dbname=empty"), [good])
    rc, out, _ = status(d2)
    check(rc == 1 and "no witlink schema" in out and "not registered" in out,
          "an empty database: every configured feed is not registered, exit 1")

    # ---- an unreachable database, a bad configuration
    d3 = ctx.daemon("host=/nonexistent/witlink port=1 dbname=x connect_timeout=2", [good])
    t0 = time.monotonic()
    rc, out, err = status(d3)
    check(rc == 69 and "Failed to connect" in err and time.monotonic() - t0 < 10,
          "an unreachable database: exit 69 with the reason on stderr")
    d3.daemon_opts["no-such-key"] = "1"
    d3.write_config()
    rc, out, err = status(d3)
    check(rc == 78, "a bad configuration: exit 78")
    rc, out, err = d.run(["-c", d.config_path, "--status", "--max-lag=soon"])
    check(rc == 1 and "--max-lag" in err, "an invalid --max-lag is refused")
    rc, out, err = d.run(["-c", d.config_path, "--json"])
    check(rc == 1 and "--status" in err, "--json without --status is refused")


if __name__ == "__main__":
    harness.run_test(main)
