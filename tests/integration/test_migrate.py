#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A warehouse of schema version 2 (as an older witlinkd left it) is upgraded to version 3 by
the current daemon without losing or changing anything, and the daemon goes on from the stored
token.

The version-2 warehouse is built here by hand: the schema as src/store.c creates it (the
schema_version table, src/sql/001-initial.sql and 002-reporting.sql verbatim, rows 1 and 2),
then the first half of the simulator's log (20,000 events) applied through the daemon's staging
table and witlink.apply_batch() of version 2, in one transaction per batch with the simulator's
real tokens, one batch replayed and one overlapping the previous one (the rows and the COPY text
as bench/run.py's event_rows() renders them). Before the upgrade: that state equals the truth of
the log prefix, and fingerprints (md5 of every column) are taken of work_item_link,
work_item_link_event, the feed's token and counters, links_as_of() at several instants,
witlink.hierarchy and the event_id sequence.

- Migration alone, on a copy of that database (CREATE DATABASE ... TEMPLATE) and a daemon whose
  credential is refused (--once exits 69 after the migration): schema_version 1, 2, 3, "from
  version 2 to 3" logged, the two relations are views with the same columns, and every
  fingerprint holds exactly (updated_at, ingested_at and the sequence position included).
- The upgrade and the backfill, `--once` on the original: migrated 2 -> 3, the same feed row,
  the first request carries the token stored before the upgrade and no earlier batch is asked
  again (the token chain from there); every event of before is unchanged, every link no new
  event touched is unchanged, links_as_of() before the first new event is unchanged, new
  event_ids are above the old sequence position, the counters moved by what was fetched, and
  the whole warehouse equals the truth with each event once.
- The same simulator backfilled by the current daemon into an empty database: the migrated
  warehouse holds the same events in the same order and the same links, column for column
  (event ids, ingested_at and updated_at aside), so the hand-made version-2 rows are what a
  witlinkd writes.
"""

import collections
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
import simulator  # noqa: E402
from harness import check, log  # noqa: E402

EVENTS = int(os.environ.get("WITLINK_TEST_EVENTS") or harness.scaled(20000, 6000))
BATCH = 1000
PRE_BATCHES = EVENTS // BATCH // 2          # batches written by the "older witlinkd"
PRE = PRE_BATCHES * BATCH                   # log position of the token stored before the upgrade
SEED = 9109
ORG = "fabrikam"
OLD_WITLINKD = "0.0.2"                      # witlinkd_version of the rows 1 and 2
SQL_DIR = os.path.join(harness.REPO_DIR, "src", "sql")
OLD_FILES = ("001-initial.sql", "002-reporting.sql")

# src/store.c (migrate_check_sql, build_migration_sql): what witlinkd runs before the files.
SCHEMA_VERSION_DDL = (
    "CREATE SCHEMA IF NOT EXISTS witlink;"
    "CREATE TABLE IF NOT EXISTS witlink.schema_version ("
    " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(),"
    " witlinkd_version text NOT NULL);")
# src/store.c (stage_table_sql, stage_columns): the daemon's staging table and COPY columns.
STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS witlink_stage ("
    " seq integer NOT NULL, rel text NOT NULL, link_type text, source_id integer NOT NULL,"
    " target_id integer NOT NULL, changed_date timestamptz NOT NULL, op text NOT NULL,"
    " is_active_reported boolean, changed_by_id text, changed_by text,"
    " changed_by_display_name text, comment text, source_project_id uuid,"
    " target_project_id uuid) ON COMMIT DELETE ROWS;")
STAGE_COLUMNS = ("seq, rel, link_type, source_id, target_id, changed_date, op, is_active_reported, "
                 "changed_by_id, changed_by, changed_by_display_name, comment, source_project_id, "
                 "target_project_id")
LINK_KEY = ("organization", "link_type_reference_name", "source_work_item_id", "target_work_item_id")
FEED_COLS = ("feed_id", "organization", "base_url", "project", "types", "link_types",
             "continuation_token", "caught_up", "events_total", "batches_total", "last_success_at",
             "last_batch_at", "token_changed_at", "created_at")


# ---------------------------------------------------------------------------------------------
# The version-2 warehouse


def copy_text(v):
    """One COPY text column as src/store.c copy_field() writes it (bench/run.py copy_text())."""
    if v is None:
        return "\\N"
    return (v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\0", "\ufffd"))


def copy_row(seq, e):
    """A staging row of one simulator event (bench/run.py event_rows(), store_format_copy())."""
    cb = e["changedBy"] or {}
    return "\t".join((
        str(seq), copy_text(e["rel"]), copy_text(e["linkType"]), str(e["sourceId"]),
        str(e["targetId"]), e["changedDate"], e["op"], "t" if e["isActive"] else "f",
        copy_text(cb.get("id")), copy_text(cb.get("uniqueName")), copy_text(cb.get("displayName")),
        copy_text(e["comment"]), copy_text(e["sourceProjectId"]),
        copy_text(e["targetProjectId"]))) + "\n"


def v2_schema_sql():
    """Schema version 2 as witlinkd creates it: one transaction, each file then its row."""
    out = ["BEGIN;", "SELECT pg_advisory_xact_lock(7453106170129771);", SCHEMA_VERSION_DDL]
    for v, name in enumerate(OLD_FILES, 1):
        with open(os.path.join(SQL_DIR, name), encoding="utf-8") as f:
            out.append(f.read())
        out.append(";\nINSERT INTO witlink.schema_version (version, witlinkd_version) "
                   "VALUES (%d, '%s');" % (v, OLD_WITLINKD))
    out.append("COMMIT;")
    return "\n".join(out) + "\n"


def batch_plan():
    """(start, end) of the batches the older witlinkd applied: the chain up to PRE, the middle
    batch starting half a batch early (it overlaps the batch before it) and the last one applied
    twice (a replay: the ids its second run drew leave the sequence past the greatest id)."""
    plan = []
    for k in range(PRE_BATCHES):
        start, end = k * BATCH, (k + 1) * BATCH
        if k == PRE_BATCHES // 2:
            start -= BATCH // 2
        plan.append((start, end))
    plan.append(plan[-1])
    return plan


def v2_fill_sql(sim, evs, plan):
    """One psql session: claim the feed as the daemon does for the simulator's source (it holds
    the feed's advisory lock from then on), then per batch BEGIN; COPY; apply_batch(); COMMIT."""
    epoch = simulator.token_epoch(sim.org, sim.seed)
    lit = sim.base_url.replace("'", "''")
    out = ["\\set ON_ERROR_STOP 1", "SET TIME ZONE 'UTC';", STAGE_DDL,
           "SELECT feed_id FROM witlink.claim_feed('%s', '%s', NULL, '', '', '7.1', '', "
           "'witlinkd-v2-host', 4242) \\gset" % (ORG, lit)]
    for start, end in plan:
        out.append("BEGIN;")
        out.append("COPY pg_temp.witlink_stage (%s) FROM STDIN;" % STAGE_COLUMNS)
        out.append("".join(copy_row(i - start, evs[i]) for i in range(start, end)) + "\\.")
        out.append("SELECT witlink.apply_batch(:feed_id, '%s', false, %d);"
                   % (simulator.make_token(epoch, end), end - start))
        out.append("COMMIT;")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Fingerprints


def query(pg, sql, db="postgres"):
    out = pg.psql("select coalesce(json_agg(t), '[]') from (%s) t;" % sql, args=("-d", db),
                  timeout=300)
    return json.loads(out)


def columns(pg, rel, db="postgres"):
    return [(r["column_name"], r["data_type"]) for r in query(pg, """
        select column_name, data_type from information_schema.columns
         where table_schema = 'witlink' and table_name = '%s' order by ordinal_position""" % rel, db)]


def row_md5(cols, alias=""):
    return "md5(row(%s)::text)" % ", ".join(alias + c for c in cols)


def fingerprints(pg, ecols, lcols, instants, db="postgres"):
    """md5 of every column of every row of the two relations (by event id, by link key), of
    links_as_of() at each instant and of witlink.hierarchy, the feed's columns of FEED_COLS,
    the event id sequence and the schema versions."""
    fp = {}
    rows = query(pg, "select event_id, %s as h from witlink.work_item_link_event" % row_md5(ecols), db)
    fp["events"] = {r["event_id"]: r["h"] for r in rows}
    rows = query(pg, "select %s, %s as h from witlink.work_item_link"
                 % (", ".join(LINK_KEY), row_md5(lcols)), db)
    fp["links"] = {tuple(r[c] for c in LINK_KEY): r["h"] for r in rows}
    fp["as_of"] = {}
    for t in instants:
        rows = query(pg, "select %s, md5(a::text) as h from witlink.links_as_of('%s') a"
                     % (", ".join(LINK_KEY), t), db)
        fp["as_of"][t] = collections.Counter((tuple(r[c] for c in LINK_KEY), r["h"]) for r in rows)
    fp["hierarchy"] = collections.Counter(
        r["h"] for r in query(pg, "select md5(h::text) as h from witlink.hierarchy h", db))
    fp["feed"] = query(pg, "select %s from witlink.feed order by feed_id" % ", ".join(FEED_COLS), db)
    table = "link_event" if query(pg, "select to_regclass('witlink.link_event') is not null as x",
                                  db)[0]["x"] else "work_item_link_event"
    seq = query(pg, "select pg_get_serial_sequence('witlink.%s', 'event_id') as s" % table, db)[0]["s"]
    fp["sequence"] = query(pg, "select last_value, is_called from %s" % seq, db)[0]
    fp["versions"] = query(pg, "select version, applied_at, witlinkd_version "
                               "from witlink.schema_version order by version", db)
    return fp


def whole_md5(d):
    """One md5 over a fingerprint dict (printed, to compare runs by eye)."""
    return hashlib.md5("\n".join("%s %s" % (k, d[k]) for k in sorted(d, key=str)).encode()).hexdigest()


def diff_keys(before, after, what, limit=4):
    missing = [k for k in before if k not in after]
    changed = [k for k in before if k in after and before[k] != after[k]]
    if missing or changed:
        log("  %s: %d missing (e.g. %s), %d changed (e.g. %s)"
            % (what, len(missing), missing[:limit], len(changed), changed[:limit]))
    return not missing and not changed


def relkinds(pg, db="postgres"):
    return {r["relname"]: r["relkind"] for r in query(pg, """
        select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'witlink' and c.relname in ('work_item_link', 'work_item_link_event',
               'link_state', 'link_event', 'link_kind')""", db)}


def iso(ticks):
    """An instant of the log (100 ns ticks): PostgreSQL rounds it to microseconds as it rounds
    the changed_date of an event at that tick."""
    return simulator.fmt_ticks(ticks, 7)


def iso_before(ticks):
    """The last microsecond before a tick (and before that tick rounded to microseconds)."""
    return simulator.fmt_ticks(ticks - ticks % 10 - 10, 6)


# ---------------------------------------------------------------------------------------------


def main(ctx):
    harness.require_daemon()
    check(PRE_BATCHES >= 3, "at least three batches before the upgrade (%d)" % PRE_BATCHES)
    pg = ctx.pg()
    sim = ctx.simulator(seed=SEED, events=EVENTS, batch_size=BATCH)
    evs = sim.events()
    check(len(evs) == EVENTS and all(e["index"] == i for i, e in enumerate(evs)),
          "simulator log of %d events" % EVENTS)
    check(sim.token(PRE) == simulator.make_token(simulator.token_epoch(sim.org, sim.seed), PRE),
          "the tokens written here are the simulator's (%s)" % sim.token(PRE))

    # ---- an older witlinkd's warehouse: schema version 2, the first PRE events
    t0 = time.monotonic()
    pg.psql(v2_schema_sql())
    check([r["version"] for r in query(pg, "select version from witlink.schema_version order by 1")]
          == [1, 2] and relkinds(pg) == {"work_item_link": "r", "work_item_link_event": "r"},
          "schema version 2 built from %s (rows 1 and 2, the link relations are tables)"
          % " and ".join(OLD_FILES))
    plan = batch_plan()
    out = pg.psql(v2_fill_sql(sim, evs, plan), timeout=300)
    counts = [int(x) for x in out.split()]
    log("version 2 written in %.1fs: %d batches %s, new events per batch %s"
        % (time.monotonic() - t0, len(plan), plan, counts))
    replay = next(i for i in range(1, len(plan)) if plan[i] == plan[i - 1])
    overlap = next(i for i, (start, _) in enumerate(plan) if start % BATCH)
    check(len(counts) == len(plan) and counts[replay] == 0 and counts[replay - 1] > 0,
          "the replayed batch %s added no event (%d, then %d)" % (plan[replay], counts[replay - 1],
                                                                   counts[replay]))
    n_old = int(pg.scalar("select count(*) from witlink.work_item_link_event"))
    check(sum(counts) == n_old and counts[overlap] <= BATCH,
          "apply_batch() counted %d new events in all, the overlapping batch %s %d of %d"
          % (n_old, plan[overlap], counts[overlap], plan[overlap][1] - plan[overlap][0]))
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(evs, ORG, upto=PRE)),
                             "version 2: work_item_link and work_item_link_event equal the truth "
                             "of the first %d events, each event once" % PRE)
    old = harness.feeds(pg)
    stored = old[0]["continuation_token"] if len(old) == 1 else None
    check(len(old) == 1 and harness.token_pos(stored or "") == PRE and not old[0]["caught_up"],
          "one feed, its token at position %d (%s), not caught up" % (PRE, stored))

    ecols = [c for c, _ in columns(pg, "work_item_link_event")]
    lcols = [c for c, _ in columns(pg, "work_item_link")]
    cols_before = {r: columns(pg, r) for r in ("work_item_link", "work_item_link_event")}
    new_ticks = min(e["ticks"] for e in evs[PRE:])
    old_ticks = sorted(e["ticks"] for e in evs[:PRE] if e["ticks"] < new_ticks)
    shared = [t for t, n in collections.Counter(old_ticks).items() if n >= 2]
    instants = [iso(old_ticks[0] - simulator.TICKS), iso_before(old_ticks[len(old_ticks) // 3] + 5000),
                iso(old_ticks[2 * len(old_ticks) // 3]), iso_before(new_ticks)]
    if shared:
        instants.append(iso(shared[len(shared) // 2]))     # a changedDate several events share
    instants.sort()
    before = fingerprints(pg, ecols, lcols, instants)
    seq_before = before["sequence"]
    old_max = max(before["events"])
    log("before: %d events (max event_id %d, sequence at %s), %d links, hierarchy %d rows, "
        "links_as_of %s" % (len(before["events"]), old_max, seq_before["last_value"],
                            len(before["links"]), sum(before["hierarchy"].values()),
                            {t: sum(c.values()) for t, c in before["as_of"].items()}))
    log("fingerprints: events %s, links %s" % (whole_md5(before["events"]), whole_md5(before["links"])))
    check(seq_before["last_value"] > old_max,
          "the replay used up event ids: the sequence (%d) is past the greatest id (%d)"
          % (seq_before["last_value"], old_max))
    check(not before["as_of"][instants[0]] and all(before["as_of"][t] for t in instants[1:])
          and before["hierarchy"], "links_as_of() is empty before the first event, not at %d later "
          "instants up to just before the first new event; hierarchy is not empty" % (len(instants) - 1))

    # ---- the migration alone, on a copy, with a credential the server refuses
    pg.psql("CREATE DATABASE v2copy TEMPLATE postgres;")
    copy_info = pg.conninfo.replace("dbname=postgres", "dbname=v2copy")
    src = harness.Source.for_simulator(sim, name=ORG)
    src.token = "refused-" + src.token
    dc = ctx.daemon(copy_info, [src], poll_interval="1h")
    rc, out, err = dc.run_once(timeout=60)
    check(rc == 69, "copy: --once with a refused credential exits 69 after migrating (got %s)" % rc)
    check("Migrated the warehouse schema from version 2 to 3." in err,
          "copy: the daemon logs \"Migrated the warehouse schema from version 2 to 3.\"")
    after = fingerprints(pg, ecols, lcols, instants, db="v2copy")
    check([v["version"] for v in after["versions"]] == [1, 2, 3]
          and after["versions"][:2] == before["versions"],
          "copy: schema_version holds 1, 2 (unchanged) and 3")
    check(relkinds(pg, "v2copy") == {"work_item_link": "v", "work_item_link_event": "v",
                                      "link_state": "r", "link_event": "r", "link_kind": "r"},
          "copy: work_item_link and work_item_link_event are views over link_state, link_event, "
          "link_kind")
    check({r: columns(pg, r, "v2copy") for r in cols_before} == cols_before,
          "copy: both views have the columns of version 2 (names, types, order)")
    check(diff_keys(before["events"], after["events"], "events")
          and len(after["events"]) == len(before["events"]),
          "copy: every event unchanged, every column (%d events)" % len(after["events"]))
    check(diff_keys(before["links"], after["links"], "links")
          and len(after["links"]) == len(before["links"]),
          "copy: every link unchanged, every column, updated_at too (%d links)" % len(after["links"]))
    for t in instants:
        check(after["as_of"][t] == before["as_of"][t],
              "copy: links_as_of('%s') unchanged (%d links)" % (t, sum(before["as_of"][t].values())))
    check(after["hierarchy"] == before["hierarchy"],
          "copy: hierarchy unchanged (%d rows)" % sum(before["hierarchy"].values()))
    check(after["feed"] == before["feed"], "copy: the feed's token, counters and dates unchanged")
    check(after["sequence"] == seq_before,
          "copy: the event id sequence is where it was (%s)" % seq_before)

    # ---- the upgrade and the backfill of the rest with --once
    n_req = len(sim.requests())
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name=ORG)], poll_interval="1h")
    t0 = time.monotonic()
    rc, out, err = d.run_once(timeout=90)
    log("upgrade and backfill of %d events took %.2fs" % (EVENTS - PRE, time.monotonic() - t0))
    check(rc == 0, "witlinkd --once exits 0 (got %s)" % rc)
    check("Migrated the warehouse schema from version 2 to 3." in err,
          "the daemon logs \"Migrated the warehouse schema from version 2 to 3.\"")
    versions = query(pg, "select version, applied_at, witlinkd_version from witlink.schema_version "
                         "order by version")
    version_out = d.run(["--version"])[1]
    check([v["version"] for v in versions] == [1, 2, 3] and versions[:2] == before["versions"]
          and versions[2]["witlinkd_version"] in version_out,
          "schema_version holds 1, 2 (unchanged) and 3 (witlinkd %s)" % versions[2]["witlinkd_version"])
    check(relkinds(pg)["work_item_link"] == "v" and relkinds(pg)["work_item_link_event"] == "v",
          "work_item_link and work_item_link_event are views")

    fs = harness.feeds(pg)
    check(len(fs) == 1 and fs[0]["feed_id"] == old[0]["feed_id"],
          "the daemon took the feed row of version 2 (feed_id %s), no other" % old[0]["feed_id"])
    reqs = harness.data_requests(sim, since=n_req)
    check(reqs and reqs[0]["token"] == stored and reqs[0]["pos"] == PRE,
          "the first request carries the token stored before the upgrade (%r)"
          % (reqs[0]["token"] if reqs else None))
    early = [r for r in reqs if not r["token"] or (r.get("pos") or 0) < PRE]
    check(not early, "no batch before position %d asked again (%d such requests of %d)"
          % (PRE, len(early), len(reqs)))
    harness.fail_on_problems(harness.request_chain_problems(reqs, {harness.feed_of_request(reqs[0]): stored}),
                             "each request carries the previous batch's token, from the stored one")
    served = [r for r in reqs if r["status"] == 200 and r.get("valid_batch")]
    f = fs[0]
    check(harness.token_pos(f["continuation_token"] or "") == EVENTS and f["caught_up"],
          "caught up: the token points at the end of the log (%s)" % f["continuation_token"])
    check(f["events_total"] == old[0]["events_total"] + sum(r["events"] for r in served)
          and f["batches_total"] == old[0]["batches_total"] + len(served)
          and f["created_at"] == old[0]["created_at"],
          "the feed's counters went on from version 2's (%d + %d events, %d + %d batches)"
          % (old[0]["events_total"], sum(r["events"] for r in served), old[0]["batches_total"],
             len(served)))

    now = fingerprints(pg, ecols, lcols, instants)
    old_events = {k: v for k, v in now["events"].items() if k <= old_max}
    new_ids = sorted(k for k in now["events"] if k > old_max)
    check(diff_keys(before["events"], old_events, "events") and len(old_events) == len(before["events"]),
          "every event of version 2 unchanged, every column (%d events up to id %d)"
          % (len(old_events), old_max))
    check(new_ids and new_ids[0] > seq_before["last_value"],
          "the %d new event ids start after the old sequence position (%d > %d)"
          % (len(new_ids), new_ids[0] if new_ids else 0, seq_before["last_value"]))
    touched = {tuple(r[c] for c in LINK_KEY) for r in query(
        pg, "select distinct %s from witlink.work_item_link_event where event_id > %d"
        % (", ".join(LINK_KEY), old_max))}
    kept = {k: v for k, v in before["links"].items() if k not in touched}
    check(diff_keys(kept, now["links"], "links") and len(kept) > len(before["links"]) // 3,
          "every link no new event touched is unchanged, every column, updated_at too "
          "(%d of %d; %d touched)" % (len(kept), len(before["links"]), len(before["links"]) - len(kept)))
    for t in instants:
        check(now["as_of"][t] == before["as_of"][t],
              "links_as_of('%s') before the first new event unchanged (%d links)"
              % (t, sum(before["as_of"][t].values())))
    tr = harness.truth(evs, ORG)
    harness.fail_on_problems(harness.compare_with_truth(pg, tr),
                             "work_item_link and work_item_link_event equal the truth, each event once")

    # ---- the same log written by the current daemon into an empty database
    pg.psql("CREATE DATABASE fresh;")
    df = ctx.daemon(pg.conninfo.replace("dbname=postgres", "dbname=fresh"),
                    [harness.Source.for_simulator(sim, name=ORG)], poll_interval="1h")
    rc, out, err = df.run_once(timeout=90)
    check(rc == 0, "fresh database: witlinkd --once exits 0 (got %s)" % rc)
    ev_cols = [c for c in ecols if c not in ("event_id", "ingested_at")]
    ln_cols = [c for c in lcols if c not in ("last_event_id", "updated_at")]
    sql_ev = "select %s as h from witlink.work_item_link_event order by event_id" % row_md5(ev_cols)
    sql_ln = ("select %s, md5(row(%s, e.changed_date, e.changed_operation)::text) as h "
              "from witlink.work_item_link w join witlink.work_item_link_event e "
              "on e.event_id = w.last_event_id" % (", ".join("w." + c for c in LINK_KEY),
                                                    ", ".join("w." + c for c in ln_cols)))
    ev_m, ev_f = [r["h"] for r in query(pg, sql_ev)], [r["h"] for r in query(pg, sql_ev, "fresh")]
    first = next((i for i, (a, b) in enumerate(zip(ev_m, ev_f)) if a != b), None)
    check(ev_m == ev_f, "the migrated warehouse holds the events of a fresh one in the same order, "
          "column for column (%d and %d events%s)"
          % (len(ev_m), len(ev_f), "" if first is None else ", the %d-th differs" % first))
    ln_m = {tuple(r[c] for c in LINK_KEY): r["h"] for r in query(pg, sql_ln)}
    ln_f = {tuple(r[c] for c in LINK_KEY): r["h"] for r in query(pg, sql_ln, "fresh")}
    check(diff_keys(ln_f, ln_m, "links") and len(ln_m) == len(ln_f),
          "... and the links of a fresh one, column for column, each's last event the same "
          "change (%d links)" % len(ln_m))
    harness.check_no_pg_errors(pg)


if __name__ == "__main__":
    harness.run_test(main, timeout=150)
