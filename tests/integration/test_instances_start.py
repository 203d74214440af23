#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Three instances started at the same instant on an empty database (three rounds, the schema
dropped in between): all three run and become ready, the schema is migrated once
(witlink.schema_version has one row per version; "Migrated" appears once in the three logs),
PostgreSQL logs no error (no race on CREATE SCHEMA, the tables or the feed rows), there is one
witlink.feed row per configured project, each feed is owned by one instance, named in
witlink.feed, and the warehouse equals the truth.  log_lock_waits with deadlock_timeout = 1ms
shows that the starts really race: sessions wait for the migration's advisory lock (feed claims
never wait, they use pg_try_advisory_lock)."""

import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
import instances  # noqa: E402
from harness import check, log  # noqa: E402

PROJECTS = ["Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj", "Northwind"]
ROUNDS = 3


def lock_waits(pg):
    try:
        with open(pg.logfile, errors="replace") as f:
            return sum(1 for line in f if "still waiting for" in line and "advisory lock" in line)
    except OSError:
        return 0


def one_round(ctx, pg, sim, rnd):
    src = [harness.Source.for_simulator(sim, name="fabrikam", projects=PROJECTS)]
    insts = [instances.Instance(ctx, "%s%d" % (n, rnd), pg, src, poll_interval="2s")
             for n in "abc"]
    waits0 = lock_waits(pg)
    at = instances.start_together(insts)
    log("round %d: three instances started at %.3f" % (rnd, at))
    check(harness.wait_until(lambda: all("Ready: schema version" in i.stderr() for i in insts)
                             or not all(i.alive() for i in insts), 20, 0.05)
          and all(i.alive() for i in insts),
          "round %d: all three run and are ready" % rnd)
    versions = {int(m) for i in insts
                for m in re.findall(r"Ready: schema version (\d+)", i.stderr())}
    check(len(versions) == 1, "round %d: all three report the same schema version %s"
          % (rnd, sorted(versions)))
    n_versions = versions.pop()
    rows = pg.query_json("select version, count(*) as n from witlink.schema_version "
                         "group by version order by version")
    check([r["version"] for r in rows] == list(range(1, n_versions + 1))
          and all(r["n"] == 1 for r in rows),
          "round %d: witlink.schema_version has one row per version 1..%d: %s"
          % (rnd, n_versions, rows))
    migrated = [i.name for i in insts for line in i.stderr().splitlines() if "Migrated" in line]
    check(len(migrated) == 1,
          "round %d: \"Migrated\" logged once in total (by %s)" % (rnd, migrated))
    waited = lock_waits(pg) - waits0
    log("round %d: %d session(s) waited for the migration lock (log_lock_waits)" % (rnd, waited))
    owner = instances.wait_owners(pg, insts, len(PROJECTS), 10)
    log("round %d: owners %s" % (rnd, instances.describe(owner)))
    fs = harness.feeds(pg)
    check(sorted(f["project"] for f in fs) == sorted(PROJECTS),
          "round %d: one witlink.feed row per project" % rnd)
    check(instances.wait_at_end(pg, sim, len(PROJECTS), 30), "round %d: every feed caught up" % rnd)
    harness.fail_on_problems(
        harness.compare_with_truth(pg, harness.truth(sim.events(), "fabrikam", projects=PROJECTS)),
        "round %d: warehouse equals the truth" % rnd)
    check(all(i.alive() for i in insts), "round %d: all three still run" % rnd)
    harness.check_no_pg_errors(pg, "round %d: PostgreSQL logged no ERROR" % rnd)
    for i in insts:
        i.daemon.kill(signal.SIGTERM)
    for i in insts:
        rc = i.daemon.wait(5)
        check(rc == 0, "round %d: SIGTERM: instance %s exits 0 (got %s)" % (rnd, i.name, rc))
    return waited


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg(settings={"log_lock_waits": "on", "deadlock_timeout": "'1ms'"})
    sim = ctx.simulator(seed=8808, events=12000, projects=PROJECTS, batch_size=500)
    waited = 0
    for rnd in range(1, ROUNDS + 1):
        if rnd > 1:
            pg.psql("drop schema witlink cascade;")
            check(harness.wait_db_idle(pg),
                  "round %d: no session left from round %d" % (rnd, rnd - 1))
        waited += one_round(ctx, pg, sim, rnd)
    check(waited > 0, "the starts raced: %d session(s) in %d rounds waited for another's "
                      "migration" % (waited, ROUNDS))


if __name__ == "__main__":
    harness.run_test(main)
