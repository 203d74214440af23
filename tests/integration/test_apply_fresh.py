#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""witlink.apply_batch()'s two insert paths give the same warehouse. With p_fresh (the daemon's
guess that no event of the batch is stored yet) the events go in without ON CONFLICT; a
duplicate after all (replayed, repeated within the batch, an older copy) rolls that attempt back
and the batch goes in with ON CONFLICT DO NOTHING. Two organizations get the same batches, one
always with p_fresh = false, one always with true: events, their order and the current state
must be equal, and the event ids show which path ran (a rolled-back attempt leaves a gap)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_reporting import STAGE_DDL, sql_lit  # noqa: E402

RELS = ["System.LinkTypes.Hierarchy", "System.LinkTypes.Related", "Custom.Blocks"]
DUPLICATING = ("replay", "twice")   # the batch kinds that hold a duplicate


def make_batches(rng):
    """Batches with what makes p_fresh wrong: a replay of earlier events, an event twice in one
    batch, an event older than the state, equal dates, and plain new ones."""
    t = 1_600_000_000
    seen = []
    batches = []
    kinds = []
    ids = set()

    def ident(e):
        return (e["rel"], e["src"], e["tgt"], e["ticks"], e["op"])

    for i in range(24):
        kind = ["new", "replay", "twice", "new", "older"][i % 5]
        b = []
        while len(b) < 40:
            t += rng.choice([0, 0, 1, 7])       # equal dates are frequent
            e = {"rel": rng.choice(RELS), "src": rng.randint(1, 30), "tgt": rng.randint(1, 30),
                 "ticks": t, "op": rng.choice(["create", "create", "remove"]),
                 "by": "u%d@example.com" % rng.randint(1, 5)}
            if ident(e) not in ids:             # duplicates only where meant
                ids.add(ident(e))
                b.append(e)
        if kind == "replay" and seen:
            b[5:15] = rng.sample(seen, 10)
        elif kind == "twice":
            b[20] = dict(b[3])
        elif kind == "older" and seen:
            old = dict(rng.choice(seen))
            old["ticks"] -= 5          # another, older change of a known link: no duplicate,
            old["op"] = "remove"       # unless that change was seen already
            if ident(old) in ids:
                old["ticks"] -= 1000
            ids.add(ident(old))
            b[0] = old
        seen.extend(b)
        batches.append(b)
        kinds.append(kind)
    return batches, kinds


def script(org, batches, fresh):
    out = ["\\set ON_ERROR_STOP 1",
           "SELECT feed_id AS f FROM witlink.claim_feed(%s, 'http://x.invalid/%s', NULL, '', '', "
           "'7.1', NULL, 'test-host', 1) \\gset" % (sql_lit(org), org), STAGE_DDL]
    for i, b in enumerate(batches):
        rows = ",\n".join(
            "(%d, %s, NULL, %d, %d, to_timestamp(%d), %s, %s, NULL, %s, NULL, 'c', NULL, NULL)" % (
                j, sql_lit(e["rel"]), e["src"], e["tgt"], e["ticks"], sql_lit(e["op"]),
                "true" if e["op"] == "create" else "false", sql_lit(e["by"]))
            for j, e in enumerate(b))
        out += ["BEGIN;", "INSERT INTO pg_temp.witlink_stage VALUES\n%s;" % rows,
                "SELECT witlink.apply_batch(:f, 't%d', false, %d, %s);"
                % (i, len(b), "true" if fresh else "false"),
                "SELECT max(event_id) AS id_%d FROM witlink.link_event WHERE feed_id = :f \\gset"
                % i,
                "COMMIT;"]
    out.append("SELECT %s;" % ", ".join(":id_%d" % i for i in range(len(batches))))
    return "\n".join(out) + "\n"


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=5, events=0)
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h")
    rc, _, _ = d.run_once(timeout=60)
    check(rc == 0, "witlinkd --once creates the schema")

    batches, kinds = make_batches(harness.random_seed(default=7)[1])
    ids = {}
    for org, fresh in (("slow", False), ("fresh", True)):
        out = pg.psql(script(org, batches, fresh))
        ids[org] = [int(x) for x in out.strip().splitlines()[-1].split("|")]

    events = """SELECT k.link_type_reference_name, e.source_work_item_id, e.target_work_item_id,
                       e.changed_date, e.is_create, e.changed_by
                  FROM witlink.link_event e JOIN witlink.link_kind k USING (kind_id)
                 WHERE k.organization = '%s' ORDER BY e.event_id"""
    state = """SELECT link_type_reference_name, source_work_item_id, target_work_item_id,
                      is_active, created_date, created_by, deleted_date, deleted_by,
                      changed_date, changed_by,
                      (SELECT changed_date FROM witlink.work_item_link_event x
                        WHERE x.event_id = w.last_event_id) AS last_event_date
                 FROM witlink.work_item_link w WHERE organization = '%s'
                ORDER BY 1, 2, 3"""
    ev = {o: pg.psql(events % o) for o in ("slow", "fresh")}
    st = {o: pg.psql(state % o) for o in ("slow", "fresh")}
    n_events = len(ev["slow"].splitlines())
    check(ev["slow"] == ev["fresh"] and n_events > 0,
          "the same events in the same order either way (%d distinct of %d sent)"
          % (n_events, sum(len(b) for b in batches)))
    check(st["slow"] == st["fresh"] and st["slow"].strip(),
          "the same current state either way (%d links)" % len(st["slow"].splitlines()))

    # Which path ran: how far the event ids moved per batch. A rolled-back attempt used up ids,
    # so the fresh organization's ids move further than the slow one's exactly then.
    fast_clean = retried = 0
    for i in range(1, len(kinds)):
        grew = {o: ids[o][i] - ids[o][i - 1] for o in ids}
        dup = kinds[i] in DUPLICATING
        if not dup and grew["fresh"] == grew["slow"]:
            fast_clean += 1
        elif dup and grew["fresh"] > grew["slow"]:
            retried += 1
    log("batches without duplicates: %d took the fast path cleanly; batches with duplicates: "
        "%d rolled back and retried" % (fast_clean, retried))
    n_dup = sum(1 for k in kinds[1:] if k in DUPLICATING)
    check(fast_clean == len(kinds) - 1 - n_dup,
          "every batch without a duplicate went in at once with p_fresh (no rolled-back attempt)")
    check(retried == n_dup,
          "every batch with a duplicate was retried with ON CONFLICT (%d)" % retried)
    harness.check_no_pg_errors(pg)


if __name__ == "__main__":
    harness.run_test(main, timeout=120)
