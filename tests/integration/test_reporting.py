#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The reporting layer against a dataset with a known answer: a simulator backfill (25,000
events of 2022 plus 400 dated now) and a hand-made organization 'synth' applied through
witlink.apply_batch() (reverse hierarchy ends, two parents, cycles, equal-date ties, a change
older than the current state). The expected results are computed here, independently, from the
event lists:

- active_link = the active keys; hierarchy = the active parent/child links (either end);
- links_as_of(t) = per key the event with the greatest (changed_date, feed order) at or before
  t, for instants between events, on a changedDate several events share, before the first and
  after the last event;
- descendants()/ancestors() = a breadth-first walk (smallest depth per item), paths valid;
- every recipe of docs/REPORTING.md (its SQL blocks parsed out of the Markdown) returns what
  Python computes for it;
- a `psql` that LISTENs on witlink hears one notification per committed batch.
"""

import collections
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
import simulator  # noqa: E402
from harness import check, log  # noqa: E402

EVENTS = int(os.environ.get("WITLINK_TEST_EVENTS", "25000"))
LIVE_EVENTS = 400
DOC = os.path.join(harness.REPO_DIR, "docs", "REPORTING.md")
TICKS = simulator.TICKS

HIER = "System.LinkTypes.Hierarchy"
FWD, REV = HIER + "-Forward", HIER + "-Reverse"
DEP = "System.LinkTypes.Dependency"
REL = "System.LinkTypes.Related"
P1 = "11111111-1111-4111-8111-111111111111"
P2 = "22222222-2222-4222-8222-222222222222"

# The daemon's staging table (src/store.c, setup_sql): apply_batch() reads it.
STAGE_DDL = """CREATE TEMP TABLE IF NOT EXISTS witlink_stage (
 seq integer NOT NULL, rel text NOT NULL, link_type text, source_id integer NOT NULL,
 target_id integer NOT NULL, changed_date timestamptz NOT NULL, op text NOT NULL,
 is_active_reported boolean, changed_by_id text, changed_by text,
 changed_by_display_name text, comment text, source_project_id uuid,
 target_project_id uuid) ON COMMIT DELETE ROWS;"""


# ---------------------------------------------------------------------------------------------
# The expected answers


def key(e):
    return (e["org"], e["rel"], e["src"], e["tgt"])


def from_sim(e, seq):
    cb = e.get("changedBy")
    return {"org": "fabrikam", "rel": e["rel"], "src": e["sourceId"], "tgt": e["targetId"],
            "ticks": e["ticks"], "op": e["op"], "link_type": e["linkType"],
            "sp": e["sourceProjectId"], "tp": e["targetProjectId"],
            "by": cb["uniqueName"] if cb else None, "by_name": cb["displayName"] if cb else None,
            "seq": seq, "src_type": e["sourceType"]}


def state_at(events, t=None):
    """Per key the event with the greatest (ticks, feed order) among those at or before t."""
    st = {}
    for e in events:
        if t is not None and e["ticks"] > t:
            continue
        k = key(e)
        cur = st.get(k)
        if cur is None or (e["ticks"], e["seq"]) >= (cur["ticks"], cur["seq"]):
            st[k] = e
    return st


def active_at(events, t=None):
    return {k: e for k, e in state_at(events, t).items() if e["op"] == "create"}


def hierarchy_of(active):
    """(org, parent, child) -> event: forward (or unnamed) ends have the parent as source,
    reverse ends the child; a forward row wins over a reverse one for the same pair."""
    fwd, rev = {}, {}
    for k, e in active.items():
        org, rel, s, t = k
        if rel != HIER:
            continue
        if e["link_type"] == REV:
            rev[(org, t, s)] = e
        else:
            fwd[(org, s, t)] = e
    h = dict(fwd)
    for pc, e in rev.items():
        h.setdefault(pc, e)
    return h


def bfs(adj, root):
    """Smallest depth of every item reachable from root (root itself excluded)."""
    depth = {root: 0}
    frontier, d = [root], 0
    while frontier:
        d += 1
        nxt = []
        for n in frontier:
            for c in adj.get(n, ()):
                if c not in depth:
                    depth[c] = d
                    nxt.append(c)
        frontier = nxt
    del depth[root]
    return depth


def adjacency(h, org, up=False):
    adj = collections.defaultdict(list)
    for (o, p, c) in h:
        if o == org:
            if up:
                adj[c].append(p)
            else:
                adj[p].append(c)
    return adj


def iso(ticks):
    return simulator.fmt_ticks(ticks, 7 if ticks % 10 else 6)


# ---------------------------------------------------------------------------------------------
# The hand-made organization


def synth_events(now_s):
    """Three batches of hand-made events for organization 'synth' (ticks at whole seconds)."""
    base = now_s - 20 * 86400
    batches = [[], [], []]
    clock = [base]

    def ev(b, rel, src, tgt, op="create", lt="fwd", sp=P1, tp=P1, at=None, by="ana"):
        if at is None:
            clock[0] += 60
            at = clock[0]
        if lt == "fwd":
            lt = FWD if rel == HIER else (rel + "-Forward" if rel != REL else REL)
        batches[b].append({"org": "synth", "rel": rel, "src": src, "tgt": tgt,
                           "ticks": at * TICKS, "op": op, "link_type": lt, "sp": sp, "tp": tp,
                           "by": "%s@synth.example" % by, "by_name": by.capitalize(),
                           "src_type": "Epic" if src == 1 else "Task"})

    for s, t in ((1, 2), (1, 3), (2, 4), (2, 5), (4, 6), (3, 5), (6, 1), (8, 9), (9, 10),
                 (10, 8), (3, 11)):
        ev(0, HIER, s, t)
    ev(0, HIER, 7, 3, lt=REV)          # 3 is the parent of 7
    ev(0, HIER, 6, 7, lt=REV)          # 7 is a parent of 6 (so is 4)
    ev(0, HIER, 4, 2, lt=REV)          # the same link as 2 -> 4, sent the other way round
    ev(0, HIER, 11, 12, lt=None)       # no end name: forward
    ev(0, DEP, 20, 21, sp=P1, tp=P2)
    ev(0, DEP, 22, 23, sp=P1, tp=P1)
    ev(0, DEP, 24, 25, sp=P1, tp=None)
    ev(0, REL, 30, 31)
    ev(0, REL, 42, 43)
    day = 86400
    ev(1, HIER, 3, 11, "remove", at=now_s - 3 * day, by="bo")
    ev(1, REL, 30, 31, "remove", at=now_s - 10 * day, by="bo")
    tie = now_s - 4 * day
    ev(1, REL, 40, 41, "create", at=tie)            # create and remove at the same instant:
    ev(1, REL, 40, 41, "remove", at=tie, by="cy")   # feed order decides (removed)
    ev(1, REL, 42, 43, "remove", at=tie + 60, by="cy")
    ev(1, REL, 42, 43, "create", at=tie + 60)       # ... (active again)
    ev(1, REL, 44, 45, "create", at=now_s - 2 * day)
    ev(2, REL, 44, 45, "remove", at=now_s - 5 * day, by="dee")   # older than the state: kept
    ev(2, DEP, 26, 27, sp=P2, tp=P1, at=now_s - 1 * day)
    return batches, tie


def sql_lit(v):
    if v is None:
        return "NULL"
    return "'" + str(v).replace("'", "''") + "'"


def apply_synth(pg, batches):
    script = ["\\set ON_ERROR_STOP 1",
              "SELECT feed_id AS synth_feed FROM witlink.claim_feed('synth', "
              "'http://synth.invalid/synth', NULL, '', '', '7.1', NULL, 'test-host', 4242) \\gset",
              STAGE_DDL]
    for i, b in enumerate(batches):
        rows = ",\n".join(
            "(%d, %s, %s, %d, %d, %s, %s, %s, NULL, %s, %s, '', %s, %s)" % (
                j, sql_lit(e["rel"]), sql_lit(e["link_type"]), e["src"], e["tgt"],
                sql_lit(iso(e["ticks"])), sql_lit(e["op"]), "true" if e["op"] == "create" else "false",
                sql_lit(e["by"]), sql_lit(e["by_name"]), sql_lit(e["sp"]), sql_lit(e["tp"]))
            for j, e in enumerate(b))
        script += ["BEGIN;", "INSERT INTO pg_temp.witlink_stage VALUES\n%s;" % rows,
                   "SELECT witlink.apply_batch(:synth_feed, 'synth-%d', %s, %d);"
                   % (i + 1, "true" if i == len(batches) - 1 else "false", len(b)),
                   "COMMIT;"]
    pg.psql("\n".join(script) + "\n")


# ---------------------------------------------------------------------------------------------
# LISTEN witlink with nothing but psql


class Listener:
    """psql that runs LISTEN witlink; notifications are printed after its next command."""

    APPNAME = "witlink-listener"

    def __init__(self, ctx, pg):
        env = pg.env()
        env["PGAPPNAME"] = self.APPNAME
        self.proc = subprocess.Popen(
            [os.path.join(pg.bin, "psql"), "-X", "-h", pg.dir, "-p", str(pg.port), "-U",
             "postgres", "-d", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, preexec_fn=harness._die_with_parent)
        ctx.stack.callback(self.kill)
        self.proc.stdin.write("LISTEN witlink;\n")
        self.proc.stdin.flush()
        ok = harness.wait_until(lambda: pg.scalar(
            "select count(*) from pg_stat_activity where application_name = '%s' "
            "and query ilike 'listen%%' and state = 'idle'" % self.APPNAME) == "1", 15)
        check(ok, "a psql session LISTENs on witlink")

    def finish(self):
        out, err = self.proc.communicate("SELECT 1;\n\\q\n", timeout=30)
        return [int(p) for p in re.findall(
            r'Asynchronous notification "witlink" with payload "(\d+)" received', out)]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# ---------------------------------------------------------------------------------------------
# The recipes of docs/REPORTING.md


def parse_recipes(path):
    """[(title, sql)] of the '### N. Title' sections under '## Recipes', one ```sql block each."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^## Recipes\s*$(.*?)(?=^## )", text, re.M | re.S)
    if not m:
        raise harness.Failure("%s has no '## Recipes' section" % path)
    recipes = []
    for sec in re.split(r"^### ", m.group(1), flags=re.M)[1:]:
        title = sec.splitlines()[0].strip()
        blocks = re.findall(r"^```sql\n(.*?)^```", sec, re.M | re.S)
        if len(blocks) != 1:
            raise harness.Failure("recipe %r has %d sql blocks (want exactly 1)" % (title, len(blocks)))
        recipes.append((title, blocks[0].strip()))
    return recipes


def run_recipe(pg, sql, variables):
    body = sql.rstrip().rstrip(";")
    check_one = body.count(";") == 0
    if not check_one:
        raise harness.Failure("a recipe is one statement: %s" % sql[:80])
    args = []
    for k, v in variables.items():
        args += ["-v", "%s=%s" % (k, v)]
    out = pg.psql("select coalesce(json_agg(t), '[]') from (\n%s\n) t;\n" % body, args=args)
    import json
    return json.loads(out)


def as_set(rows, *cols):
    return {tuple(r[c] for c in cols) for r in rows}


# ---------------------------------------------------------------------------------------------


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=7707, events=EVENTS, batch_size=1000)
    sim.append(LIVE_EVENTS)
    listener = Listener(ctx, pg)

    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h")
    rc, out, err = d.run_once(timeout=90)
    check(rc == 0, "witlinkd --once exits 0 (got %s)" % rc)
    check(pg.scalar("select max(version) from witlink.schema_version") == "3",
          "schema version 3 (the reporting layer on narrow keys) is applied")

    now_s = int(float(pg.scalar("select extract(epoch from now())")))
    batches, tie_s = synth_events(now_s)
    apply_synth(pg, batches)

    # ---- notifications: one per committed batch
    heard = collections.Counter(listener.finish())
    fs = harness.feeds(pg)
    want = {f["feed_id"]: f["batches_total"] for f in fs}
    log("notifications heard %s, batches committed %s" % (dict(heard), want))
    check(dict(heard) == want and sum(want.values()) >= 25,
          "LISTEN witlink hears exactly one notification per committed batch, per feed")

    # ---- the expected state
    sim_evs = sim.events()
    check(len(sim_evs) == EVENTS + LIVE_EVENTS, "simulator log has %d events" % len(sim_evs))
    events = [from_sim(e, i) for i, e in enumerate(sim_evs)]
    seq = len(events)
    for b in batches:
        for e in b:
            e["seq"] = seq
            seq += 1
            events.append(e)
    active = active_at(events)
    tr = harness.truth(sim_evs, "fabrikam")
    check({(r["organization"], r["rel"], r["source"], r["target"]) for r in tr.links if r["is_active"]}
          == {k for k in active if k[0] == "fabrikam"},
          "this test's rule agrees with harness.truth() on the simulator's active links")

    # ---- active_link
    rows = pg.query_json("select organization, link_type_reference_name as rel, source_work_item_id as src, "
                         "target_work_item_id as tgt, source_project_id as sp, target_project_id as tp, "
                         "link_type from witlink.active_link")
    got = {(r["organization"], r["rel"], r["src"], r["tgt"]): r for r in rows}
    check(set(got) == set(active), "active_link = the active keys (%d links)" % len(active))
    bad = [k for k, e in active.items()
           if (got[k]["sp"], got[k]["tp"], got[k]["link_type"]) != (e["sp"], e["tp"], e["link_type"])]
    check(not bad, "active_link carries both ends' project ids and the end name (%d differ: %s)"
          % (len(bad), bad[:3]))

    # ---- hierarchy
    h = hierarchy_of(active)
    rows = pg.query_json("select organization, parent_id, child_id, parent_project_id, child_project_id, "
                         "since from witlink.hierarchy")
    got_h = collections.Counter((r["organization"], r["parent_id"], r["child_id"]) for r in rows)
    check(set(got_h) == set(h) and max(got_h.values()) == 1,
          "hierarchy = the active parent/child links, each once (%d, %d of them in 'synth')"
          % (len(h), sum(1 for k in h if k[0] == "synth")))
    check(("synth", 3, 7) in got_h and ("synth", 7, 6) in got_h and ("synth", 2, 4) in got_h
          and ("synth", 4, 2) not in got_h and ("synth", 11, 12) in got_h,
          "reverse ends are turned round, a link sent both ways is listed once, no end = forward")
    bad = [r for r in rows if (r["parent_project_id"], r["child_project_id"]) !=
           ((h[(r["organization"], r["parent_id"], r["child_id"])]["sp"],
             h[(r["organization"], r["parent_id"], r["child_id"])]["tp"])
            if h[(r["organization"], r["parent_id"], r["child_id"])]["link_type"] != REV else
            (h[(r["organization"], r["parent_id"], r["child_id"])]["tp"],
             h[(r["organization"], r["parent_id"], r["child_id"])]["sp"]))]
    check(not bad, "hierarchy's project ids follow the parent and the child (%d differ)" % len(bad))

    # ---- links_as_of
    by_ticks = collections.Counter(e["ticks"] for e in events if e["org"] == "fabrikam")
    ties = sorted(t for t, n in by_ticks.items() if n >= 2 and t % 10 == 0)
    check(len(ties) > 10, "the simulator's log has shared changedDates (%d)" % len(ties))
    sim_ticks = sorted(e["ticks"] for e in events if e["org"] == "fabrikam")
    instants = [
        ("before the first event", sim_ticks[0] - TICKS),
        ("a changedDate %d events share" % by_ticks[ties[len(ties) // 2]], ties[len(ties) // 2]),
        ("a later shared changedDate", ties[-1]),
        ("between events, 1/4 of the log", sim_ticks[len(sim_ticks) // 4] + 5000),
        ("between events, 2/3 of the log", sim_ticks[2 * len(sim_ticks) // 3] + 5000),
        ("the synth create+remove tie", tie_s * TICKS),
        ("after synth's older remove, before its create", (now_s - int(3.5 * 86400)) * TICKS),
        ("after everything", (now_s + 86400) * TICKS),
    ]
    for what, t in instants:
        exp = active_at(events, t)
        rows = pg.query_json("select organization, link_type_reference_name as rel, source_work_item_id as src, "
                             "target_work_item_id as tgt, changed_by from witlink.links_as_of('%s')" % iso(t))
        gotk = {(r["organization"], r["rel"], r["src"], r["tgt"]): r["changed_by"] for r in rows}
        check(len(gotk) == len(rows) and gotk == {k: e["by"] for k, e in exp.items()},
              "links_as_of(%s) = the state then (%s): %d links" % (iso(t), what, len(exp)))
    check(pg.scalar("select count(*) from (select organization, link_type_reference_name, source_work_item_id, "
                    "target_work_item_id from witlink.links_as_of('infinity') except all select organization, "
                    "link_type_reference_name, source_work_item_id, target_work_item_id "
                    "from witlink.active_link) d") == "0",
          "links_as_of('infinity') equals active_link (the simulator dates its live events "
          "up to a minute ahead, so not now())")

    # ---- descendants / ancestors
    roots = {}
    adj_f = adjacency(h, "fabrikam")
    sizes = {n: len(bfs(adj_f, n)) for n in adj_f}
    epic = max(sizes, key=lambda n: (sizes[n], -n))
    check(sizes[epic] >= 5, "the simulator's hierarchy has a tree of %d items below %d" % (sizes[epic], epic))
    adj_u = adjacency(h, "fabrikam", up=True)
    depths = {n: len(bfs(adj_u, n)) for n in adj_u}
    deep = max(depths, key=lambda n: (depths[n], -n))

    def check_walk(org, root, up, max_depth=None):
        adj = adjacency(h, org, up)
        exp = bfs(adj, root)
        if max_depth is not None:
            exp = {n: dd for n, dd in exp.items() if dd <= max_depth}
        fn = "ancestors" if up else "descendants"
        rows = pg.query_json("select * from witlink.%s('%s', %d%s)"
                             % (fn, org, root, ", %d" % max_depth if max_depth is not None else ""))
        got = {r["work_item_id"]: r["depth"] for r in rows}
        edges = {(p, c) for (o, p, c) in h if o == org}
        bad_paths = []
        for r in rows:
            p = r["path"]
            nb = r["child_id"] if up else r["parent_id"]
            ok = (p[0] == root and p[-1] == r["work_item_id"] and len(p) == r["depth"] + 1
                  and len(set(p)) == len(p) and p[-2] == nb
                  and all(((b, a) if up else (a, b)) in edges for a, b in zip(p, p[1:])))
            if not ok:
                bad_paths.append(r)
        check(len(rows) == len(got) and got == exp and not bad_paths,
              "%s(%s, %d%s) = a breadth-first walk: %d items, depth %d, paths valid"
              % (fn, org, root, ", %d" % max_depth if max_depth is not None else "", len(exp),
                 max(exp.values() or [0])))
        return exp

    check_walk("fabrikam", epic, False)
    check_walk("fabrikam", epic, False, 2)
    check_walk("fabrikam", deep, True)
    for n in list(adj_f)[:5]:
        check_walk("fabrikam", n, False)
    exp = check_walk("synth", 1, False)
    check(exp == {2: 1, 3: 1, 4: 2, 5: 2, 7: 2, 6: 3}, "synth: 1's tree through reverse ends, "
          "two parents and a cycle back to 1")
    check_walk("synth", 6, True)
    exp = check_walk("synth", 8, False)
    check(exp == {9: 1, 10: 2}, "synth: the cycle 8 -> 9 -> 10 -> 8 ends")
    check_walk("synth", 9, True)

    # ---- the recipes
    recipes = parse_recipes(DOC)
    log("docs/REPORTING.md: %d recipes" % len(recipes))
    check(len(recipes) >= 8, "docs/REPORTING.md has at least eight recipes")
    db_now = float(pg.scalar("select extract(epoch from now())"))
    variables = {"org": "fabrikam", "epic": epic, "item": deep,
                 "from": iso(instants[3][1]), "to": iso(instants[6][1])}

    def per_org_items(org_root_item):
        return dict(variables, org=org_root_item[0], epic=org_root_item[1], item=org_root_item[2])

    def chk_by_type(run):
        exp = collections.Counter((k[0], k[1]) for k in active)
        rows = run(variables)
        return {(r["organization"], r["link_type_reference_name"]): r["active_links"] for r in rows} == exp

    def chk_tree(run):
        ok = True
        for org, root in (("fabrikam", epic), ("synth", 1)):
            rows = run(dict(variables, org=org, epic=root))
            exp = bfs(adjacency(h, org), root)
            ok &= {r["work_item_id"]: r["depth"] for r in rows} == exp and len(rows) == len(exp)
            ok &= [r["path"] for r in rows] == sorted(r["path"] for r in rows)
        return ok

    def chk_ancestors(run):
        ok = True
        for org, item in (("fabrikam", deep), ("synth", 6)):
            rows = run(dict(variables, org=org, item=item))
            exp = bfs(adjacency(h, org, up=True), item)
            ok &= {r["ancestor_id"]: r["depth"] for r in rows} == exp and len(rows) == len(exp)
        return ok

    def chk_parents(run):
        par = collections.defaultdict(list)
        for (o, p, c) in h:
            par[(o, c)].append(p)
        exp = {(o, c): sorted(ps) for (o, c), ps in par.items() if len(ps) > 1}
        rows = run(variables)
        got = {(r["organization"], r["child_id"]): r["parent_ids"] for r in rows}
        return got == exp and got.get(("synth", 5)) == [2, 3] and got.get(("synth", 6)) == [4, 7]

    def chk_cross(run):
        exp = {(k[0], k[2], k[3], e["sp"], e["tp"]) for k, e in active.items()
               if k[1] == DEP and e["sp"] and e["tp"] and e["sp"] != e["tp"]}
        rows = run(variables)
        got = as_set(rows, "organization", "source_work_item_id", "target_work_item_id",
                     "source_project_id", "target_project_id")
        return got == exp and len(rows) == len(exp) and ("synth", 20, 21, P1, P2) in got

    def chk_removed(run):
        since = (db_now - 7 * 86400) * TICKS
        exp = collections.Counter((e["org"], e["rel"], e["src"], e["tgt"], e["by"], e["by_name"])
                                  for e in events if e["op"] == "remove" and e["ticks"] >= since)
        rows = run(variables)
        got = collections.Counter((r["organization"], r["link_type_reference_name"], r["source_work_item_id"],
                                   r["target_work_item_id"], r["changed_by"], r["changed_by_display_name"])
                                  for r in rows)
        log("  %d removals in the last week (%d in synth)" % (len(rows), sum(1 for r in rows if r["organization"] == "synth")))
        return got == exp and any(k[0] == "fabrikam" for k in got) and \
            ("synth", HIER, 3, 11, "bo@synth.example", "Bo") in got and \
            ("synth", REL, 30, 31, "bo@synth.example", "Bo") not in got

    def chk_churn(run):
        exp = collections.defaultdict(lambda: [0, 0])
        for e in events:
            m = time.strftime("%Y-%m-01", time.gmtime(e["ticks"] // TICKS))
            exp[(e["org"], m)][0 if e["op"] == "create" else 1] += 1
        rows = run(variables)
        got = {(r["organization"], r["month"]): [r["created"], r["removed"]] for r in rows}
        return got == dict(exp) and all(r["changes"] == r["created"] + r["removed"] for r in rows)

    def chk_diff(run):
        ok = True
        for a, b in ((instants[3][1], instants[6][1]), (tie_s * TICKS, (now_s + 3600) * TICKS)):
            before, after = set(active_at(events, a)), set(active_at(events, b))
            exp = {("added",) + k for k in after - before} | {("removed",) + k for k in before - after}
            rows = run(dict(variables, **{"from": iso(a), "to": iso(b)}))
            got = as_set(rows, "change", "organization", "link_type_reference_name",
                         "source_work_item_id", "target_work_item_id")
            log("  %s .. %s: %d added, %d removed" % (iso(a), iso(b), len(after - before), len(before - after)))
            ok &= got == exp and len(rows) == len(exp) and len(exp) > 0
        return ok

    def chk_health(run):
        rows = run(variables)
        byid = {f["feed_id"]: f for f in harness.feeds(pg)}
        return (len(rows) == len(byid) == 2 and
                all(r["state"] == "caught up" and r["caught_up"] and r["last_error"] is None
                    and r["events_total"] == byid[r["feed_id"]]["events_total"]
                    and r["batches_total"] == byid[r["feed_id"]]["batches_total"]
                    and r["lag"] is not None and r["token_age"] is not None
                    and r["owner_active"] is False for r in rows) and
                {r["project"] for r in rows} == {"(all projects)"})

    def chk_types(run):
        every = state_at(events)
        exp = {}
        for k, e in every.items():
            x = exp.setdefault((k[0], k[1]), [0, 0, set()])
            x[0] += 1
            x[1] += e["op"] == "create"
            if e["link_type"]:
                x[2].add(e["link_type"])
        rows = run(variables)
        got = {(r["organization"], r["link_type_reference_name"]):
               [r["links"], r["active_links"], set(r["end_names"])] for r in rows}
        return got == exp and got[("synth", HIER)][2] == {FWD, REV}

    checkers = [("by type", chk_by_type), ("whole tree", chk_tree), ("ancestors", chk_ancestors),
                ("more than one parent", chk_parents), ("cross projects", chk_cross),
                ("removed last week", chk_removed), ("churn", chk_churn),
                ("difference between two dates", chk_diff), ("feed health", chk_health),
                ("link types", chk_types)]
    for title, sql in recipes:
        fns = [fn for kw, fn in checkers if kw in title.lower()]
        check(len(fns) == 1, "recipe %r has a checker in this test" % title)
        t0 = time.monotonic()
        ok = fns[0](lambda v, sql=sql: run_recipe(pg, sql, v))
        check(ok, "recipe %r returns the expected result (%.0f ms)" % (title, (time.monotonic() - t0) * 1000))
    harness.check_no_pg_errors(pg)


if __name__ == "__main__":
    harness.run_test(main)
