#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""pg_terminate_backend() on an owner's session, three instances, four project feeds,
poll-interval = 2s, the simulator appending changes, pg_locks sampled every 50 ms.

1. The owner of most feeds loses its session during the backfill: the old backend's locks are
   gone at once, the instance stays up, reconnects and claims again, and every feed has one
   live owner again within one poll interval (+ a margin) — whichever instance wins.
2. A stale owner: the owner of most feeds is frozen (SIGSTOP) with its work in flight and its
   session terminated.  Another instance takes its feeds over within one poll interval and
   moves them on; when the frozen instance resumes (SIGCONT) it finds its session gone,
   reconnects, stands by, and writes nothing: PostgreSQL (log_statement = all) receives no
   apply_batch or COPY from its new sessions, and audit triggers on witlink.feed, the event log
   and the link state record no committed write of theirs (a last_error included).
3. The guard itself: witlink.apply_batch() in a session that does not hold the feed's lock
   fails with lock_not_available (55P03) and writes nothing.

At every sample each feed's lock has at most one holder, and exactly one outside the takeover
windows; witlink.feed names the owner; the end state equals the truth with no duplicate."""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
import instances  # noqa: E402
from harness import check, log, token_pos  # noqa: E402

INTERVAL = 2.0
MARGIN = 0.5
RECONNECT = 1.5   # the store reconnects 1 s after losing its session (the first time)
RELEASE = 0.5
PROJECTS = ["Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj", "Northwind"]
EVENTS = 20000
BATCH = 100
WRITES = re.compile(r"apply_batch|\bCOPY\b|\bINSERT\b|\bUPDATE\b|\bDELETE\s+FROM\b|release_feed",
                    re.I)


def most_feeds(pg, insts, feed_ids):
    owner = instances.wait_owners(pg, insts, len(feed_ids), 10)
    inst = max(insts, key=lambda i: sum(1 for o in owner.values() if o is i))
    return owner, inst, sorted(f for f, o in owner.items() if o is inst)


def terminate(pg, inst):
    """pg_terminate_backend() of the instance's session; returns (backend pid, time)."""
    pids = inst.backend_pids(pg)
    check(len(pids) == 1, "instance %s has one database session (%s)" % (inst.name, pids))
    t = time.monotonic()        # samples from here on may see the locks gone
    ok = pg.scalar("select pg_terminate_backend(%d)" % pids[0])
    check(ok == "t", "pg_terminate_backend(%d) of instance %s" % (pids[0], inst.name))
    return pids[0], t


def positions(pg):
    return {f["feed_id"]: token_pos(f["continuation_token"] or "") or 0 for f in harness.feeds(pg)}


def statements_of(pg, app, offset):
    """Statements PostgreSQL logged for application `app` after byte `offset` of its log."""
    out = []
    with open(pg.logfile, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            m = re.search(r"\[(\d+)\] %s: LOG:  (?:statement|execute [^:]*): (.*)" % re.escape(app),
                          line)
            if m:
                out.append((int(m.group(1)), m.group(2)))
    return out


FORGED = r"""
\set ON_ERROR_STOP 1
\set VERBOSITY verbose
BEGIN;
CREATE TEMP TABLE witlink_stage (
    seq integer, rel text, link_type text, source_id integer, target_id integer,
    changed_date timestamptz, op text, is_active_reported boolean, changed_by_id text,
    changed_by text, changed_by_display_name text, comment text, source_project_id uuid,
    target_project_id uuid) ON COMMIT DROP;
INSERT INTO witlink_stage VALUES (1, 'Test.Forged', NULL, 2147480000, 2147480001, now(),
    'create', true, NULL, 'forger@example.com', 'Forger', 'forged', NULL, NULL);
SELECT witlink.apply_batch(%d, 'forged-token', true, 1);
COMMIT;
"""


# Which session committed what: a row of witlink.feed inserted or updated, a statement on the
# event log or the link state (statement triggers: cheap, and they fire only when the statement
# runs). Audit rows commit with the writes they record.
AUDIT = r"""
CREATE TABLE public.test_audit (id bigserial PRIMARY KEY, app text, pid integer, tbl text,
                                op text, feed_id bigint, detail text);
CREATE FUNCTION public.test_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.test_audit (app, pid, tbl, op, feed_id, detail)
    VALUES (current_setting('application_name'), pg_backend_pid(), TG_TABLE_NAME, TG_OP,
            NEW.feed_id, left(NEW.last_error, 200));
    RETURN NULL;
END $$;
CREATE FUNCTION public.test_audit_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.test_audit (app, pid, tbl, op)
    VALUES (current_setting('application_name'), pg_backend_pid(), TG_TABLE_NAME, TG_OP);
    RETURN NULL;
END $$;
CREATE TRIGGER zz_test_audit AFTER INSERT OR UPDATE ON witlink.feed
    FOR EACH ROW EXECUTE FUNCTION public.test_audit_row();
CREATE TRIGGER zz_test_audit AFTER INSERT OR UPDATE OR DELETE ON witlink.link_event
    FOR EACH STATEMENT EXECUTE FUNCTION public.test_audit_statement();
CREATE TRIGGER zz_test_audit AFTER INSERT OR UPDATE OR DELETE ON witlink.link_state
    FOR EACH STATEMENT EXECUTE FUNCTION public.test_audit_statement();
CREATE TRIGGER zz_test_audit AFTER INSERT OR UPDATE OR DELETE ON witlink.link_kind
    FOR EACH STATEMENT EXECUTE FUNCTION public.test_audit_statement();
"""


def forged_apply(pg, feed_id):
    """witlink.apply_batch() from a session that does not hold the feed's lock (a stale owner's
    position): returns (psql exit code, stderr)."""
    cmd = [os.path.join(pg.bin, "psql"), "-X", "-q", "-h", pg.dir, "-p", str(pg.port), "-U",
           "postgres", "-d", "postgres"]
    p = subprocess.run(cmd, input=FORGED % feed_id, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=pg.env(), timeout=30)
    return p.returncode, p.stderr


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg(settings={"log_statement": "'all'"})
    sim, insts, sampler, owner, t_ready, feed_ids = instances.start_three(
        ctx, pg, 7707, EVENTS, PROJECTS, BATCH, INTERVAL)
    pg.psql(AUDIT)
    apps = {i.app for i in insts}
    windows, gone = [], []

    appender = instances.Appender(sim, count=25, every=0.25)
    ctx.stack.callback(appender.halt)
    appender.start()
    total = EVENTS * len(PROJECTS)
    check(harness.wait_until(lambda: sum(positions(pg).values()) >= total // 5, 30, 0.05),
          "a fifth of the backfill committed")

    # 1. terminate the session of a running owner
    owner, o, _ = most_feeds(pg, insts, feed_ids)
    log("1: owners %s" % instances.describe(owner))
    old_pid, t_term = terminate(pg, o)
    gone.append((o.app, old_pid, t_term))
    t_take = instances.takeover_time(sampler, feed_ids, apps, t_term, 15, {old_pid})
    check(t_take is not None, "1: every feed has a live owner again")
    windows.append((t_term, t_take))
    owner = instances.wait_owners(pg, insts, len(feed_ids), 5)
    log("1: owners after %.2fs: %s" % (t_take - t_term, instances.describe(owner)))
    check(t_take - t_term <= max(INTERVAL, RECONNECT) + MARGIN,
          "1: within one poll interval + %.1fs (%.2fs)" % (MARGIN, t_take - t_term))
    check(o.alive(), "1: instance %s survives the loss of its session" % o.name)
    check(harness.wait_until(lambda: "Database session restored." in o.stderr(), 10, 0.1),
          "1: instance %s reconnected" % o.name)
    check(old_pid not in o.backend_pids(pg), "1: the terminated backend is gone")

    # 2. a stale owner: frozen while its session is terminated
    time.sleep(1.0)
    owner, p, feeds_p = most_feeds(pg, insts, feed_ids)
    log("2: owners %s; freezing %s (pid %d)" % (instances.describe(owner), p.name, p.pid))
    os.kill(p.pid, signal.SIGSTOP)
    ctx.stack.callback(lambda: p.alive() and os.kill(p.pid, signal.SIGCONT))
    time.sleep(0.3)     # responses and commits of the frozen instance stay in flight
    pos0 = positions(pg)
    old_pid, t_term = terminate(pg, p)
    gone.append((p.app, None, t_term))      # never again, while the others live
    others = {i.app for i in insts if i is not p}
    t_take = instances.takeover_time(sampler, feed_ids, others, t_term, 15, {old_pid})
    check(t_take is not None, "2: the frozen owner's feeds %s were taken over" % feeds_p)
    windows.append((t_term, t_take))
    check(t_take - t_term <= INTERVAL + MARGIN,
          "2: by another instance within one poll interval + %.1fs (%.2fs)"
          % (MARGIN, t_take - t_term))
    owner = instances.wait_owners(pg, [i for i in insts if i is not p], len(feed_ids), 5)
    log("2: owners %s" % instances.describe(owner))
    check(harness.wait_until(lambda: all(positions(pg)[f] > pos0[f] for f in feeds_p),
                             3 * INTERVAL, 0.1),
          "2: the new owners moved the frozen instance's feeds on (positions %s → %s)"
          % ([pos0[f] for f in feeds_p], [positions(pg)[f] for f in feeds_p]))
    err_mark = len(p.stderr())
    log_mark = os.path.getsize(pg.logfile)     # the frozen instance sent nothing since
    audit_mark = int(pg.scalar("select coalesce(max(id), 0) from public.test_audit"))
    os.kill(p.pid, signal.SIGCONT)
    check(harness.wait_until(lambda: "Database session restored." in p.stderr()[err_mark:],
                             10, 0.1),
          "2: the resumed instance %s noticed the lost session and reconnected" % p.name)
    # At least one standby retry of every feed (a poll interval with jitter) after the reconnect.
    time.sleep(INTERVAL * 1.2 + 1.0)
    new_err = p.stderr()[err_mark:]
    check("Lost the database session" in new_err, "2: it logged the lost session")
    standby = new_err.count("Owned by another instance")
    check(standby >= len(feeds_p),
          "2: it stands by for the feeds it had (%d 'Owned by another instance' lines)" % standby)
    check(p.alive(), "2: it still runs")
    owner = instances.wait_owners(pg, insts, len(feed_ids), 2)
    check(p not in owner.values(), "2: it owns no feed: %s" % instances.describe(owner))
    stmts = statements_of(pg, p.app, log_mark)
    writes = [s for s in stmts if WRITES.search(s[1])]
    for pid, s in writes[:5]:
        log("  backend %d sent: %s" % (pid, s[:200]))
    check(stmts and not any("apply_batch" in s[1] or "COPY" in s[1] for s in writes),
          "2: the stale owner sent no batch after it resumed (%d statements, %d claims)"
          % (len(stmts), sum(1 for s in stmts if "claim_feed" in s[1])))
    committed = pg.query_json("select tbl, op, feed_id, detail from public.test_audit "
                              "where id > %d and app = '%s' order by id" % (audit_mark, p.app))
    for c in committed[:5]:
        log("  committed by %s: %s" % (p.name, c))
    rows = {f["feed_id"]: f for f in harness.feeds(pg)}
    check(all(rows[f]["owner_pid"] != p.pid for f in feed_ids),
          "2: witlink.feed does not name the stale owner")

    # 3. the guard itself: a session without the feed's lock cannot apply a batch
    fid = feed_ids[0]
    rc, err = forged_apply(pg, fid)
    first = err.strip().splitlines()[0] if err.strip() else "exit code %s" % rc
    check(rc != 0 and "55P03" in err and "does not own feed" in err,
          "3: apply_batch() in a session without the lock fails with lock_not_available (%s)"
          % first)
    row = [f for f in harness.feeds(pg) if f["feed_id"] == fid][0]
    forged = pg.scalar("select count(*) from witlink.work_item_link_event "
                       "where link_type_reference_name = 'Test.Forged'")
    check(row["continuation_token"] != "forged-token" and forged == "0",
          "3: nothing of that batch was written (token, events)")

    time.sleep(1.0)
    appender.stop()
    check(instances.wait_at_end(pg, sim, len(PROJECTS), 40),
          "every feed caught up with the end of the log")
    sampler.stop()
    problems, n = instances.sample_problems(sampler, insts, feed_ids, t_ready, windows, gone,
                                            RELEASE)
    check(n >= 50, "the sampler took %d samples" % n)
    harness.fail_on_problems(problems, "at every sample each feed's lock had one holder (none "
                                       "only until a takeover), and never a terminated session")
    harness.fail_on_problems(
        harness.compare_with_truth(pg, harness.truth(sim.events(), "fabrikam", projects=PROJECTS)),
        "warehouse equals the truth, no duplicate, no missing event")
    harness.check_no_pg_errors(pg)
    for inst in insts:
        inst.daemon.kill(signal.SIGTERM)
    for inst in insts:
        rc = inst.daemon.wait(5)
        check(rc == 0, "SIGTERM: instance %s exits 0 (got %s)" % (inst.name, rc))
    check(not committed, "2: the stale owner committed no write after it resumed, not even to "
                         "the rows of the feeds it lost (%d audited writes, e.g. %s)"
          % (len(committed), committed[:1]))


if __name__ == "__main__":
    harness.run_test(main)
