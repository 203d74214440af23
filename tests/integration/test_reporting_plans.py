#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The reporting layer's query plans on a big warehouse (200,000 links and 350,000 events made
with generate_series; WITLINK_TEST_LINKS=1000000 for the size docs/REPORTING.md quotes): the
tree walks, hierarchy look-ups, links_as_of() and the time-window recipes use the indexes of
schema version 3 and never read a whole table per level or per link. EXPLAIN (FORMAT JSON)
is checked node by node; the timings are printed."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_reporting  # noqa: E402  (the recipe parser)

LINKS = int(os.environ.get("WITLINK_TEST_LINKS", "200000"))

# Half the links form a 5-ary forest (child c has parent c / 5), the rest are Related,
# Dependency and Custom.Blocks links; every second link was removed once, every fourth one
# created again. The log spans the last 400 days in feed order, as after a backfill.
GENERATE = """
SET work_mem = '128MB';
INSERT INTO witlink.feed (organization, base_url, api_version, caught_up)
VALUES ('big', 'http://big.invalid/big', '7.1', true);
CREATE TEMP TABLE k AS
SELECT i,
  CASE WHEN i <= %(h)d THEN 'System.LinkTypes.Hierarchy'
       WHEN i <= %(r)d THEN 'System.LinkTypes.Related'
       WHEN i <= %(d)d THEN 'System.LinkTypes.Dependency'
       ELSE 'Custom.Blocks' END AS rel,
  CASE WHEN i <= %(h)d THEN (i + 4) / 5 ELSE i %% %(m)d + 1 END AS src,
  CASE WHEN i <= %(h)d THEN i + 4 ELSE ((i::bigint * 7919) %% %(m)d + 1)::integer END AS tgt,
  now() - interval '400 days' + i * (interval '300 days' / %(n)d) AS t0
FROM generate_series(1, %(n)d) i;
DELETE FROM k a USING k b
 WHERE a.i > b.i AND a.rel = b.rel AND a.src = b.src AND a.tgt = b.tgt;
CREATE TEMP TABLE ev AS
SELECT i, rel, src, tgt, t0 AS cd, 'create' AS op FROM k
UNION ALL SELECT i, rel, src, tgt, t0 + (i %% 97 + 1) * interval '1 day', 'remove' FROM k WHERE i %% 2 = 0
UNION ALL SELECT i, rel, src, tgt, t0 + (i %% 97 + 2) * interval '1 day', 'create' FROM k WHERE i %% 4 = 0;
INSERT INTO witlink.link_kind (organization, link_type_reference_name)
SELECT DISTINCT 'big', rel FROM k ORDER BY 2;
INSERT INTO witlink.link_event (feed_id, kind_id, link_type, source_work_item_id,
  target_work_item_id, changed_date, is_create, is_active_reported, changed_by, comment,
  source_project_id, target_project_id)
SELECT (SELECT feed_id FROM witlink.feed WHERE organization = 'big'), kk.kind_id,
  CASE WHEN rel = 'System.LinkTypes.Related' THEN rel ELSE rel || '-Forward' END,
  src, tgt, cd, op = 'create', op = 'create', 'user' || (i %% 20) || '@example.com', '',
  ('00000000-0000-4000-8000-00000000000' || (src %% 3))::uuid,
  ('00000000-0000-4000-8000-00000000000' || (tgt %% 3))::uuid
FROM ev JOIN witlink.link_kind kk ON kk.organization = 'big' AND kk.link_type_reference_name = rel
ORDER BY cd, i;
INSERT INTO witlink.link_state (kind_id, source_work_item_id, target_work_item_id, is_active,
  link_type, source_project_id, target_project_id, comment, created_date, created_by,
  deleted_date, deleted_by, changed_date, changed_by, last_event_id)
SELECT DISTINCT ON (kind_id, source_work_item_id, target_work_item_id)
  kind_id, source_work_item_id, target_work_item_id, is_create, link_type, source_project_id,
  target_project_id, comment,
  CASE WHEN is_create THEN changed_date END, CASE WHEN is_create THEN changed_by END,
  CASE WHEN NOT is_create THEN changed_date END, CASE WHEN NOT is_create THEN changed_by END,
  changed_date, changed_by, event_id
FROM witlink.link_event
WHERE kind_id IN (SELECT kind_id FROM witlink.link_kind WHERE organization = 'big')
ORDER BY kind_id, source_work_item_id, target_work_item_id, changed_date DESC, event_id DESC;
VACUUM ANALYZE witlink.link_kind;
VACUUM ANALYZE witlink.link_state;
VACUUM ANALYZE witlink.link_event;
"""


def nodes(plan):
    yield plan
    for p in plan.get("Plans", ()):
        yield from nodes(p)


def explain(pg, sql, args=()):
    t0 = time.monotonic()
    out = pg.psql("EXPLAIN (ANALYZE, FORMAT JSON) %s;" % sql.rstrip().rstrip(";"), args=list(args))
    dt = time.monotonic() - t0
    top = json.loads(out)[0]
    return list(nodes(top["Plan"])), top["Execution Time"], dt


def scans(ns, relation):
    return [n for n in ns if n.get("Relation Name") == relation]


def describe(ns):
    return "; ".join("%s%s%s" % (n["Node Type"],
                                 " on " + n["Relation Name"] if "Relation Name" in n else "",
                                 " using " + n["Index Name"] if "Index Name" in n else "")
                     for n in ns if "Relation Name" in n or "Join" in n["Node Type"])


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg(settings={"shared_buffers": "256MB"})
    sim = ctx.simulator(seed=31, events=200, batch_size=100)
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")], poll_interval="1h")
    rc, _, _ = d.run_once(timeout=60)
    check(rc == 0, "witlinkd --once creates the schema (version %s)"
          % pg.scalar("select max(version) from witlink.schema_version"))

    t0 = time.monotonic()
    m = max(1000, LINKS // 2)
    pg.psql(GENERATE % {"n": LINKS, "h": LINKS // 2, "r": LINKS * 3 // 4, "d": LINKS * 9 // 10, "m": m},
            timeout=600)
    log("generated %s links, %s events in %.1fs"
        % (pg.scalar("select count(*) from witlink.work_item_link"),
           pg.scalar("select count(*) from witlink.work_item_link_event"), time.monotonic() - t0))

    root = 1
    leaf = LINKS // 2 + 4
    depth = pg.scalar("select max(depth) from witlink.ancestors('big', %d)" % leaf)
    log("leaf %d has %s ancestors" % (leaf, depth))

    def check_plan(what, sql, ok_fn, args=()):
        ns, ms, dt = explain(pg, sql, args)
        ok, why = ok_fn(ns)
        check(ok, "%s: %s (%.1f ms) — %s" % (what, why, ms, describe(ns)[:400]))
        return ms

    def index_only_on_link(ns):
        bad = [n for n in scans(ns, "link_state") if n["Node Type"] == "Seq Scan"]
        hj = [n for n in ns if n["Node Type"] in ("Hash Join", "Merge Join")]
        return (not bad and not hj and scans(ns, "link_state"),
                "index scans of link_state only, no hash or merge join")

    check_plan("descendants('big', %d) (the whole tree below a root)" % root,
               "SELECT * FROM witlink.descendants('big', %d)" % root, index_only_on_link)
    check_plan("descendants('big', %d, 3)" % root,
               "SELECT * FROM witlink.descendants('big', %d, 3)" % root, index_only_on_link)
    check_plan("ancestors('big', %d)" % leaf, "SELECT * FROM witlink.ancestors('big', %d)" % leaf,
               index_only_on_link)
    check_plan("hierarchy by parent", "SELECT * FROM witlink.hierarchy WHERE organization = 'big' "
               "AND parent_id = 77", index_only_on_link)
    check_plan("hierarchy by child", "SELECT * FROM witlink.hierarchy WHERE organization = 'big' "
               "AND child_id = 777", index_only_on_link)

    def as_of_ok(ns):
        ev = scans(ns, "link_event")
        sorts = [n for n in ns if n["Node Type"] == "Sort" and n.get("Actual Rows", 0) > 1000]
        return (ev and all(n["Node Type"] == "Index Scan" and n["Index Name"] == "link_event_change"
                           for n in ev) and not sorts,
                "the log is only probed through its unique index, nothing big is sorted")

    for days in (3, 200):
        check_plan("links_as_of(now() - %d days)" % days,
                   "SELECT count(*) FROM witlink.links_as_of(now() - interval '%d days')" % days, as_of_ok)

    recipes = dict(test_reporting.parse_recipes(test_reporting.DOC))

    def recipe(word):
        hits = [sql for title, sql in recipes.items() if word in title.lower()]
        assert len(hits) == 1, word
        return hits[0]

    def brin_ok(ns):
        ev = scans(ns, "link_event")
        seq = [n for n in ev if n["Node Type"] == "Seq Scan"]
        brin = [n for n in ns if n.get("Index Name") == "link_event_changed_date_brin"]
        return (ev and not seq and brin, "the log is read through the BRIN index on changed_date, "
                "no sequential scan of it")

    check_plan("recipe 'removed last week'", recipe("removed last week"), brin_ok)
    check_plan("recipe 'graph difference' over a month",
               recipe("difference between two dates"), brin_ok,
               args=["-v", "from=%s" % pg.scalar("select now() - interval '40 days'"),
                     "-v", "to=%s" % pg.scalar("select now() - interval '10 days'")])
    check_plan("recipe 'more than one parent'", recipe("more than one parent"),
               lambda ns: (True, "one pass over the hierarchy"))
    check_plan("feed_status", "SELECT * FROM witlink.feed_status",
               lambda ns: (not scans(ns, "link_event") and not scans(ns, "link_state"),
                           "reads only witlink.feed and pg_locks"))
    harness.check_no_pg_errors(pg)


if __name__ == "__main__":
    harness.run_test(main, timeout=300)
