#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""witlinkd benchmark: backfill throughput, CPU and memory against PostgreSQL's own limit for the
schema, idle wake-ups and poll latency.  See bench/README.md.  Python 3 standard library only.

    python3 bench/run.py            # the whole benchmark (200k and 2M backfills, ~10 min)
    python3 bench/run.py --quick    # 50k events only, short idle and latency probes

Not a test: nothing here passes or fails on a figure.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO_DIR, "tests"))
sys.path.insert(0, BENCH_DIR)
import harness     # noqa: E402
import simulator   # noqa: E402
from pgwire import PgConn, PgError  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
BATCH = 1000
ORG = "fabrikam"
PROJECTS = ("Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj")   # the simulator's defaults
SEED = 1
STAGE_COLUMNS = ("seq, rel, link_type, source_id, target_id, changed_date, op, is_active_reported, "
                 "changed_by_id, changed_by, changed_by_display_name, comment, source_project_id, "
                 "target_project_id")
# The daemon's staging table (src/store.c: the session setup and the COPY's column list); read
# from the source that is built (stage_from_source()), these are the fallback.
STAGE_SQL = ("CREATE TEMP TABLE IF NOT EXISTS witlink_stage ("
             " seq integer NOT NULL, rel text NOT NULL, link_type text, source_id integer NOT NULL,"
             " target_id integer NOT NULL, changed_date timestamptz NOT NULL, op text NOT NULL,"
             " is_active_reported boolean, changed_by_id text, changed_by text,"
             " changed_by_display_name text, comment text, source_project_id uuid,"
             " target_project_id uuid) ON COMMIT DELETE ROWS;"
             "SET TIME ZONE 'UTC';")


def c_literals(src, start, end):
    """The text of the concatenated C string literals from the one containing `start` up to the
    one containing `end` (simple literals, with \\" and \\\\ escapes only)."""
    i = src.find(start)
    if i < 0:
        return None
    i = src.rfind('"', 0, i)
    out = []
    while True:
        m = re.compile(r'"((?:[^"\\]|\\.)*)"').match(src, i)
        if not m:
            return None
        out.append(m.group(1).replace('\\"', '"').replace("\\\\", "\\"))
        if end in m.group(1):
            return "".join(out)
        n = re.compile(r'\s*"').match(src, m.end())
        if not n:
            return None
        i = n.end() - 1


def stage_from_source(root):
    """(the staging table's DDL, the COPY column list) as the daemon being measured has them."""
    global STAGE_SQL, STAGE_COLUMNS
    try:
        with open(os.path.join(root, "src", "store.c")) as f:
            src = f.read()
    except OSError:
        return False
    ddl = c_literals(src, "CREATE TEMP TABLE IF NOT EXISTS witlink_stage", "ON COMMIT DELETE ROWS")
    cols = c_literals(src, "seq, rel, link_type", "target_project_id")
    if not ddl or not cols:
        return False
    STAGE_SQL = ddl[:ddl.index("ON COMMIT DELETE ROWS")] + "ON COMMIT DELETE ROWS;SET TIME ZONE 'UTC';"
    STAGE_COLUMNS = cols
    return True


def say(msg):
    sys.stdout.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# /proc accounting


def proc_stat(pid):
    """(utime+stime, cutime+cstime) in seconds, or None when the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return ((int(rest[11]) + int(rest[12])) / CLK, (int(rest[13]) + int(rest[14])) / CLK,
            int(rest[1]))


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def system_busy():
    """CPU seconds the whole machine was busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_quiet(limit, share, window=0.5):
    """Waits (at most `limit` seconds) until the machine has been nearly idle (busy below `share`
    of its CPUs) for two windows in a row: other developers' tests share this machine. Returns
    the seconds waited (-1 when it never got quiet)."""
    if limit <= 0:
        return 0.0
    t0 = time.monotonic()
    ncpu = os.cpu_count() or 1
    quiet = 0
    while time.monotonic() - t0 < limit:
        b0 = system_busy()
        time.sleep(window)
        busy = (system_busy() - b0) / (window * ncpu)
        quiet = quiet + 1 if busy < share else 0
        if quiet >= 2:
            return time.monotonic() - t0
    say("  (the machine did not get quiet in %.0fs; measuring anyway, see 'other load')" % limit)
    return -1


def fmt_i(x):
    return "{:,.0f}".format(x)


def best_run(runs, key="events_per_s"):
    """The fastest run: other load on a shared machine only ever slows a run down, so the best
    of a few is the figure least disturbed by it (every run stays in the JSON)."""
    return max(runs, key=lambda r: r[key])


def ctx_switches(pid):
    """Voluntary and involuntary context switches summed over the process's threads."""
    vol = invol = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


class ClusterCpu:
    """CPU time of a PostgreSQL cluster: the postmaster's own time plus that of its reaped
    children (cutime/cstime: exited backends, autovacuum workers) plus the time of its live
    children. Every process of a cluster is a child of the postmaster, so the difference of two
    readings is exact. A sampler thread also follows each child so that the time of one backend
    (found by its process title, which names its database) can be told apart after it exits."""

    def __init__(self, pg):
        with open(os.path.join(pg.data, "postmaster.pid")) as f:
            self.pm = int(f.readline())
        self.last = {}          # pid -> (cpu seconds, process title)
        self._stop = None
        self._thread = None

    def children(self):
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            st = proc_stat(int(d))
            if st and st[2] == self.pm:
                out[int(d)] = st[0]
        return out

    def wait_reaped(self, before, timeout=10):
        """Waits until every child of the postmaster that was not there at `before` (a set of
        pids) has exited and been reaped (its time then is in the postmaster's cutime), but for
        autovacuum workers, which may come and go at any time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = [p for p in self.children() if p not in before
                   and "autovacuum worker" not in proc_cmdline(p)]
            if not new:
                return True
            time.sleep(0.02)
        return False

    def total(self):
        own = proc_stat(self.pm)
        return own[0] + own[1] + sum(self.children().values())

    def _sample(self):
        for pid, cpu in self.children().items():
            old = self.last.get(pid)
            # a backend sets its title ("postgres: USER DB [local] ...") after the fork
            title = old[1] if old and "[local]" in old[1] else proc_cmdline(pid)
            self.last[pid] = (cpu, title)

    def start_sampling(self, interval=0.1):
        self.last = {}
        self._sample()
        self.base = dict(self.last)
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(interval):
                self._sample()
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_sampling(self):
        self._stop.set()
        self._thread.join()
        self._sample()

    def time_of_others(self, pattern):
        """CPU seconds, since start_sampling(), of the children whose title does not match
        pattern (exact for the auxiliary processes, which live through the measurement; sampled
        for short-lived ones such as autovacuum workers). The total minus this is the time of the
        matching backend, which is exact even when it exits between two samples."""
        t = 0.0
        for pid, (cpu, title) in self.last.items():
            title = title or ""
            # a backend not yet or no longer showing its title counts as the measured one
            known = re.search(r"postgres: (checkpointer|background writer|walwriter|autovacuum|"
                              r"logical replication|archiver|stats|startup|wal)", title) or \
                ("[local]" in title and not re.search(pattern, title))
            if known:
                t += cpu - self.base.get(pid, (0.0, ""))[0]
        return t


# ---------------------------------------------------------------------------------------------
# Processes


def run_measured(cmd, env=None, timeout=1800, stderr_lines=None):
    """Runs cmd to its end; returns (exit code, wall seconds, start/end time.time(), rusage,
    peak RSS in KiB).
    stderr lines are collected with their arrival time when stderr_lines is a list."""
    t0 = time.time()
    m0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE if stderr_lines is not None else subprocess.DEVNULL,
                         env=env, preexec_fn=harness._die_with_parent)
    reader = None
    if stderr_lines is not None:
        def read():
            for line in p.stderr:
                stderr_lines.append((time.time(), line.decode(errors="replace").rstrip("\n")))
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
    # The peak RSS of the program itself: VmHWM after the exec (ru_maxrss would also count the
    # forked copy of this Python process before it: Linux carries the high-water mark of the
    # pre-exec address space over into ru_maxrss).
    hwm = [0]
    done = threading.Event()

    def sample_hwm():
        want = os.path.basename(cmd[0]).encode()
        while not done.is_set():
            try:
                with open("/proc/%d/cmdline" % p.pid, "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0]
                if os.path.basename(argv0) == want:
                    with open("/proc/%d/status" % p.pid) as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                hwm[0] = max(hwm[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            done.wait(0.02)
    sampler = threading.Thread(target=sample_hwm, daemon=True)
    sampler.start()
    killer = threading.Timer(timeout, lambda: os.kill(p.pid, signal.SIGKILL))
    killer.start()
    # wait for the exit without reaping, so that the last VmHWM can still be read
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    m1 = time.monotonic()
    done.set()
    sampler.join()
    _, status, ru = os.wait4(p.pid, 0)
    killer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    if reader:
        reader.join(5)
        p.stderr.close()
    return p.returncode, m1 - m0, t0, t0 + (m1 - m0), ru, hwm[0]


def machine_info(pg_bin):
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    pgv = subprocess.run([os.path.join(pg_bin, "postgres"), "--version"], stdout=subprocess.PIPE,
                         text=True).stdout.strip()
    osr = ""
    try:
        with open("/etc/os-release") as f:
            osr = dict(l.rstrip().split("=", 1) for l in f if "=" in l).get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    return {"host": platform.node(), "nproc": os.cpu_count(), "cpu": model,
            "memory_gib": round(mem / 2**30, 1), "kernel": platform.release(), "os": osr,
            "postgresql": pgv, "python": platform.python_version()}


def fsync_rate(directory, seconds=1.0):
    """8 KiB write + fdatasync per round on the cluster's file system, rounds per second: what
    one durable commit costs at least on this disk."""
    path = os.path.join(directory, "bench-fsync")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    n, t0, blk = 0, time.monotonic(), b"x" * 8192
    try:
        while time.monotonic() - t0 < seconds:
            os.pwrite(fd, blk, 0)
            os.fdatasync(fd)
            n += 1
    finally:
        os.close(fd)
        os.unlink(path)
    return n / (time.monotonic() - t0)


def git_describe(rev=None):
    def g(*a):
        return subprocess.run(["git", "-C", REPO_DIR] + list(a), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()
    dirty = "" if rev else g("status", "--porcelain", "--", "src", "include", "meson.build")
    return {"commit": g("rev-parse", "--short", rev or "HEAD"),
            "subject": g("log", "-1", "--format=%s", rev or "HEAD"),
            "dirty_sources": bool(dirty), "built_from": rev or "working tree"}


def build_release(build_dir, rev=None):
    """meson setup --buildtype=release + ninja, of the working tree or (rev) of a commit
    exported with git archive (the working tree may be half-edited by someone else)."""
    src = REPO_DIR
    if rev:
        sha = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--verify", rev + "^{commit}"],
                             stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
        root = os.path.join(os.path.dirname(build_dir), "src-" + sha[:12])
        if not os.path.exists(os.path.join(root, "meson.build")):
            os.makedirs(root, exist_ok=True)
            arc = subprocess.Popen(["git", "-C", REPO_DIR, "archive", sha], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", root], stdin=arc.stdout, check=True)
            if arc.wait() != 0:
                raise RuntimeError("git archive %s failed" % sha)
        src = root
        build_dir = build_dir + "-" + sha[:12]
    if not os.path.exists(os.path.join(build_dir, "build.ninja")):
        say("meson setup %s --buildtype=release (source %s)" % (build_dir, src))
        subprocess.run(["meson", "setup", build_dir, "--buildtype=release"], cwd=src,
                       check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", build_dir, "witlinkd"], check=True, stdout=subprocess.DEVNULL)
    return os.path.join(build_dir, "witlinkd"), src


# ---------------------------------------------------------------------------------------------
# The simulator


def start_simulator(events, precompute, timeout):
    extra = ["--precompute"] if precompute else []
    t = time.monotonic()
    sim = harness.Simulator(seed=SEED, events=events, org=ORG, projects=PROJECTS,
                            batch_size=BATCH, extra_args=extra, startup_timeout=timeout)
    sim.start()
    say("simulator: %d events ready in %.1fs (excluded from every figure)%s"
        % (events, time.monotonic() - t, ", bodies precomputed" if precompute else ""))
    return sim


def simulator_speed(sim, events):
    """Fetches the whole collection-wide chain with a minimal client (keep-alive, gzip, the next
    token read from the simulator's own token scheme so the client costs next to nothing).
    Returns events/s, seconds per request, and the simulator's CPU seconds."""
    epoch = simulator.token_epoch(ORG, SEED)
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=60)
    hdr = {"Accept-Encoding": "gzip", "Authorization": "Basic " + __import__("base64").b64encode(
        (":" + sim.secret).encode()).decode()}
    cpu0 = proc_stat(sim.proc.pid)[0]
    t0 = time.monotonic()
    pos, tok, nreq = 0, None, 0
    while True:
        q = "/%s/_apis/wit/reporting/workitemlinks?api-version=7.1" % ORG
        if tok:
            q += "&continuationToken=" + tok
        conn.request("GET", q, headers=hdr)
        r = conn.getresponse()
        r.read()
        nreq += 1
        if r.status != 200:
            raise RuntimeError("simulator answered %d" % r.status)
        pos = min(events, pos + BATCH)
        if pos >= events:
            break
        tok = simulator.make_token(epoch, pos)
    dt = time.monotonic() - t0
    cpu = proc_stat(sim.proc.pid)[0] - cpu0
    conn.close()
    sim.clear_requests()
    return {"events_per_s": events / dt, "ms_per_request": 1000 * dt / nreq, "requests": nreq,
            "sim_cpu_s": cpu}


# ---------------------------------------------------------------------------------------------
# PostgreSQL's limit: the same events, written by psql from a script


def copy_text(v):
    if v is None:
        return "\\N"
    return (v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\0", "\ufffd"))


def event_rows(ds):
    """COPY text rows of the staging table, exactly as src/store.c store_format_copy() writes
    them for the batches the simulator serves (the same dataset: seed, size, projects)."""
    for i in range(ds.length):
        e = ds.event_dict(i)
        cb = e["changedBy"] or {}
        yield "\t".join((
            str(i % BATCH), copy_text(e["rel"]), copy_text(e["linkType"]), str(e["sourceId"]),
            str(e["targetId"]), e["changedDate"], e["op"], "t" if e["isActive"] else "f",
            copy_text(cb.get("id")), copy_text(cb.get("uniqueName")),
            copy_text(cb.get("displayName")), copy_text(e["comment"]),
            copy_text(e["sourceProjectId"]), copy_text(e["targetProjectId"]))) + "\n"


# The hand-written statements of the "sql" formulation: witlink.apply_batch(..., p_fresh =>
# true) (as of src/sql/003-narrow-keys.sql: the benchmark's events hold no duplicate, so the
# events go in without ON CONFLICT) as one statement, without PL/pgSQL, the FOR UPDATE of the
# feed row, the ownership check through pg_locks and the re-read of the new events.
SQL_KINDS = """INSERT INTO witlink.link_kind (organization, link_type_reference_name)
SELECT DISTINCT 'fabrikam', s.rel FROM pg_temp.witlink_stage s
 WHERE NOT EXISTS (SELECT 1 FROM witlink.link_kind k
                    WHERE k.organization = 'fabrikam' AND k.link_type_reference_name = s.rel)
ON CONFLICT ON CONSTRAINT link_kind_name DO NOTHING;
"""
SQL_INSERT_EVENTS = """INSERT INTO witlink.link_event AS e
    (changed_date, feed_id, source_work_item_id, target_work_item_id, kind_id, is_create,
     is_active_reported, source_project_id, target_project_id, link_type, changed_by_id,
     changed_by, changed_by_display_name, comment)
SELECT s.changed_date, :feed_id, s.source_id, s.target_id, k.kind_id, s.op = 'create',
       s.is_active_reported, s.source_project_id, s.target_project_id, s.link_type,
       s.changed_by_id, s.changed_by, s.changed_by_display_name, s.comment
  FROM pg_temp.witlink_stage s
  JOIN witlink.link_kind k ON k.organization = 'fabrikam' AND k.link_type_reference_name = s.rel
 ORDER BY s.seq"""
SQL_APPLY = SQL_KINDS + "WITH ins AS (\n" + SQL_INSERT_EVENTS + """
    RETURNING e.*
), last AS (
    SELECT DISTINCT ON (kind_id, source_work_item_id, target_work_item_id) *
      FROM ins ORDER BY kind_id, source_work_item_id, target_work_item_id,
                        changed_date DESC, event_id DESC
), last_create AS (
    SELECT DISTINCT ON (kind_id, source_work_item_id, target_work_item_id)
           kind_id, source_work_item_id, target_work_item_id, changed_date, changed_by
      FROM ins WHERE is_create
     ORDER BY kind_id, source_work_item_id, target_work_item_id, changed_date DESC,
              event_id DESC
), upsert AS (
    INSERT INTO witlink.link_state AS w
        (source_work_item_id, target_work_item_id, kind_id, is_active, changed_date,
         last_event_id, updated_at, created_date, deleted_date, source_project_id,
         target_project_id, link_type, created_by, deleted_by, changed_by, comment)
    SELECT l.source_work_item_id, l.target_work_item_id, l.kind_id, l.is_create, l.changed_date,
           l.event_id, now(), c.changed_date, CASE WHEN NOT l.is_create THEN l.changed_date END,
           l.source_project_id, l.target_project_id, l.link_type, c.changed_by,
           CASE WHEN NOT l.is_create THEN l.changed_by END, l.changed_by, l.comment
      FROM last l LEFT JOIN last_create c USING (kind_id, source_work_item_id, target_work_item_id)
    ON CONFLICT ON CONSTRAINT link_state_pkey DO UPDATE SET
        is_active = EXCLUDED.is_active, changed_date = EXCLUDED.changed_date,
        last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at,
        created_date = CASE WHEN EXCLUDED.created_date IS NOT NULL
                            THEN EXCLUDED.created_date ELSE w.created_date END,
        created_by = CASE WHEN EXCLUDED.created_date IS NOT NULL
                          THEN EXCLUDED.created_by ELSE w.created_by END,
        deleted_date = EXCLUDED.deleted_date, deleted_by = EXCLUDED.deleted_by,
        source_project_id = EXCLUDED.source_project_id,
        target_project_id = EXCLUDED.target_project_id, link_type = EXCLUDED.link_type,
        changed_by = EXCLUDED.changed_by, comment = EXCLUDED.comment
    WHERE w.changed_date <= EXCLUDED.changed_date
)
SELECT count(*) FROM ins;
UPDATE witlink.feed SET continuation_token = '%(token)s', caught_up = %(last)s,
       last_success_at = now(), last_batch_at = now(), events_total = events_total + %(n)d,
       batches_total = batches_total + 1, last_error = NULL, last_error_at = NULL
 WHERE feed_id = :feed_id;
NOTIFY witlink, '%(feed)s';
"""

SQL_EVENTS_ONLY = SQL_KINDS + SQL_INSERT_EVENTS + ";\n"

# The daemon's call: p_fresh is true while the feed's batches bring no duplicate (so for the
# whole benchmark); schema version 2's function has no such parameter.
APPLY_BATCH = "SELECT witlink.apply_batch(:feed_id, '%(token)s', %(last)s, %(n)d, true);\n"
APPLY_BATCH_V2 = "SELECT witlink.apply_batch(:feed_id, '%(token)s', %(last)s, %(n)d);\n"


def schema_before(version):
    """SQL that puts a migrated template back to the given schema version (the migrations of
    src/sql up to it, on an empty schema): what-ifs of earlier write paths."""
    files = sorted(f for f in os.listdir(os.path.join(REPO_DIR, "src", "sql"))
                   if re.match(r"\d+-.*\.sql$", f) and int(f[:3]) <= version)
    return ("DROP SCHEMA witlink CASCADE; CREATE SCHEMA witlink;\n"
            + "".join(open(os.path.join(REPO_DIR, "src", "sql", f), encoding="utf-8").read()
                      + "\n" for f in files))


# name -> (per-batch statements after the COPY, kind, what it is, SQL run first (not timed)).
# kind "limit": the whole work on witlinkd's schema, a candidate for the limit; "part": a part of
# the work (where PostgreSQL's time goes); "what-if": the daemon's SQL on a changed schema
# (suggestions for src/sql, or the schema of an earlier version, measured).
FORMULATIONS = {
    "apply_batch": (APPLY_BATCH, "limit",
                    "COPY + SELECT witlink.apply_batch() (the daemon's SQL, from psql)", None),
    "sql": (SQL_APPLY, "limit",
            "COPY + the same work as hand-written statements (no PL/pgSQL, no ownership check)",
            None),
    "copy+events": (SQL_EVENTS_ONLY, "part",
                    "part: COPY + INSERT the events (no state, no feed)", None),
    "apply_batch-conflict": (APPLY_BATCH.replace(", true)", ", false)"), "what-if",
                             "what-if: apply_batch with p_fresh = false (the events inserted with "
                             "ON CONFLICT DO NOTHING, as for a batch that follows one with "
                             "duplicates)", None),
    "copy-only": ("", "part", "part: COPY into the staging table and COMMIT", None),
    "whatif-schema2": (APPLY_BATCH_V2, "what-if",
                       "what-if: apply_batch on schema version 2 (text keys with the "
                       "organization and link type, state at fillfactor 100, pglz)",
                       schema_before(2)),
    "whatif-datekey": (APPLY_BATCH, "what-if",
                       "what-if: apply_batch with the event identity index led by changed_date "
                       "(inserts land near the right edge)",
                       "ALTER TABLE witlink.link_event DROP CONSTRAINT link_event_change, "
                       "ADD CONSTRAINT link_event_change UNIQUE (changed_date, "
                       "source_work_item_id, target_work_item_id, kind_id, is_create);"),
    "whatif-notarget": (APPLY_BATCH, "what-if",
                        "what-if: apply_batch without the state's index on the target work item "
                        "(what that reporting index costs the write path)",
                        "DROP INDEX witlink.link_state_target_idx;"),
}

DEFAULT_FORMULATIONS = ["apply_batch", "sql", "copy+events", "copy-only", "apply_batch-conflict",
                        "whatif-schema2", "whatif-datekey", "whatif-notarget"]


def script_key(name):
    """Formulations with the same statements share one script."""
    return "apply_batch" if FORMULATIONS[name][0] == APPLY_BATCH else name


def write_limit_scripts(ds, directory, names):
    """One psql script per formulation: one transaction per 1,000 events."""
    files = {}
    head = ("\\set ON_ERROR_STOP 1\n" + STAGE_SQL + "\n"
            "SELECT feed_id FROM witlink.claim_feed('fabrikam', 'bench://limit', NULL, '', '', "
            "'7.1', NULL, 'bench', 0) \\gset\n")
    for name in names:
        f = open(os.path.join(directory, "limit-%s.sql" % name), "w", encoding="utf-8")
        f.write(head)
        files[name] = f
    epoch = simulator.token_epoch(ORG, SEED)
    rows = event_rows(ds)
    n_total = ds.length
    for start in range(0, n_total, BATCH):
        n = min(BATCH, n_total - start)
        block = "".join(next(rows) for _ in range(n))
        v = {"token": simulator.make_token(epoch, start + n), "last": "true" if start + n >= n_total
             else "false", "n": n, "feed": "%(feed)s"}
        for name, f in files.items():
            f.write("BEGIN;\nCOPY pg_temp.witlink_stage (%s) FROM STDIN;\n" % STAGE_COLUMNS)
            f.write(block)
            f.write("\\.\n")
            stmt = FORMULATIONS[name][0]
            if stmt:
                f.write(stmt.replace("'%(feed)s'", ":'feed_id'") % v)
            f.write("COMMIT;\n")
    for f in files.values():
        f.close()
    return {n: os.path.join(directory, "limit-%s.sql" % n) for n in names}


# ---------------------------------------------------------------------------------------------
# The bench


class PrepError(Exception):
    pass





class Bench:
    def __init__(self, args):
        self.args = args
        self.work = None
        self.results = {}
        self.pg = None
        self.binary = None

    def psql(self, sql, db="postgres"):
        return self.pg.psql(sql, args=("-d", db))

    def conn(self, db):
        return PgConn(self.pg.dir, self.pg.port, db)

    def create_db(self, name, template=None):
        self.psql("DROP DATABASE IF EXISTS %s;" % name)
        self.psql("CREATE DATABASE %s%s;" % (name, " TEMPLATE %s" % template if template else ""))

    def checkpoint(self):
        self.psql("CHECKPOINT;")

    def daemon_for(self, sim, db, poll="5min", projects=None):
        """A config for the release binary: log-level info, http-timeout 60s, the source the
        simulator describes (collection-wide unless projects are given)."""
        wd = os.path.join(self.work, "d-%s-%s" % (db, poll))
        os.makedirs(wd, exist_ok=True)
        return harness.Daemon("host=%s port=%d user=postgres dbname=%s"
                              % (self.pg.dir, self.pg.port, db),
                              [harness.Source.for_simulator(sim, projects=projects)], workdir=wd,
                              binary=self.binary, poll_interval=poll, http_timeout="60s",
                              log_level="info")

    # -- the migrated template for the limit runs ------------------------------------------------
    def make_template(self):
        self.create_db("bench_template")
        sim = harness.Simulator(seed=SEED, events=0, org=ORG, projects=PROJECTS).start()
        try:
            d = self.daemon_for(sim, "bench_template")
            rc, _, err = d.run_once(timeout=60)
            if rc != 0:
                raise RuntimeError("migrating the template failed: %s" % err[-2000:])
        finally:
            sim.stop()
        self.schema_version = self.psql("SELECT max(version) FROM witlink.schema_version;",
                                        "bench_template").strip()

    # -- one measured run ----------------------------------------------------------------------
    def measure(self, cmd, env, db, watch_pids=(), stderr_lines=None):
        """Runs cmd (the daemon or psql, whose only PostgreSQL session is on database db) and
        accounts for it: the child's rusage (wait4), the cluster's CPU (ClusterCpu), the CPU
        of watch_pids (the simulator), and the machine's busy time, so that CPU used by anything
        else on the machine during the run shows ("foreign")."""
        self.checkpoint()
        waited = wait_quiet(self.args.quiet_wait, self.args.quiet_share)
        cc = ClusterCpu(self.pg)
        w0 = [proc_stat(p)[0] for p in watch_pids]
        sys0, self0 = system_busy(), self_cpu()
        before = set(cc.children())
        pg0 = cc.total()
        cc.start_sampling()
        rc, wall, t_start, t_end, ru, hwm = run_measured(cmd, env=env, timeout=self.args.timeout,
                                                         stderr_lines=stderr_lines)
        # the backend ends just after its client: wait for the postmaster to reap it
        cc.wait_reaped(before)
        cc.stop_sampling()
        pg_total = cc.total() - pg0
        sys_busy = system_busy() - sys0
        own = self_cpu() - self0
        watched = sum(proc_stat(p)[0] - c for p, c in zip(watch_pids, w0))
        child = ru.ru_utime + ru.ru_stime
        m = {"rc": rc, "wall_s": wall, "t_start": t_start, "t_end": t_end,
             "child_user_s": ru.ru_utime, "child_sys_s": ru.ru_stime, "child_cpu_s": child,
             "child_maxrss_kib": hwm, "child_ru_maxrss_kib": ru.ru_maxrss,
             "child_ctx_voluntary": ru.ru_nvcsw,
             "child_ctx_involuntary": ru.ru_nivcsw,
             "pg_cpu_s": pg_total,
             "pg_backend_cpu_s": max(0.0, pg_total - cc.time_of_others(r" %s " % db)),
             "watched_cpu_s": watched, "bench_cpu_s": own, "machine_busy_s": sys_busy}
        m["pg_other_cpu_s"] = pg_total - m["pg_backend_cpu_s"]
        m["foreign_cpu_s"] = max(0.0, sys_busy - child - pg_total - watched - own)
        m["foreign_share"] = m["foreign_cpu_s"] / (wall * (os.cpu_count() or 1))
        m["waited_for_quiet_s"] = waited
        return m

    # -- one daemon backfill ------------------------------------------------------------------
    def backfill(self, sim, n, attempt):
        db = "bench_daemon_%d_%d" % (n, attempt)
        self.create_db(db)
        d = self.daemon_for(sim, db)
        sim.clear_requests()
        lines = []
        m = self.measure([self.binary, "-c", d.config_path, "--once"], d.env, db,
                         watch_pids=[sim.proc.pid], stderr_lines=lines)
        if m["rc"] != 0:
            raise RuntimeError("witlinkd exited %s:\n%s" % (m["rc"], "\n".join(l for _, l in lines[-30:])))
        reqs = sim.requests()
        data = [r for r in reqs if r.get("status") == 200 and r.get("valid_batch")]
        t_first = min(r["time"] for r in reqs) if reqs else m["t_start"]
        caught = [t for t, l in lines if "Caught up" in l]
        t_last_commit = caught[-1] if caught else m["t_end"]
        c = self.conn(db)
        try:
            rows = int(c.scalar("SELECT count(*) FROM witlink.work_item_link_event"))
            links = int(c.scalar("SELECT count(*) FROM witlink.work_item_link"))
            fed = int(c.scalar("SELECT sum(events_total) FROM witlink.feed"))
            size = int(c.scalar("SELECT pg_database_size(current_database())"))
        finally:
            c.close()
        if fed != n:
            raise RuntimeError("the feed counts %d events, expected %d" % (fed, n))
        if not self.args.keep_dbs:
            self.psql("DROP DATABASE %s;" % db)
        r = {
            "events": n, "event_rows": rows, "link_rows": links, "db_bytes": size,
            "wall_s": m["wall_s"], "events_per_s": n / m["wall_s"],
            "first_request_to_last_commit_s": t_last_commit - t_first,
            "events_per_s_requests": n / (t_last_commit - t_first),
            "startup_s": t_first - m["t_start"], "exit_s": m["t_end"] - t_last_commit,
            "requests": len(reqs), "batches": len(data),
            "daemon_user_s": m["child_user_s"], "daemon_sys_s": m["child_sys_s"],
            "daemon_cpu_s": m["child_cpu_s"], "daemon_maxrss_kib": m["child_maxrss_kib"],
            "daemon_ctx_voluntary": m["child_ctx_voluntary"],
            "daemon_ctx_involuntary": m["child_ctx_involuntary"],
            "pg_cpu_s": m["pg_cpu_s"], "pg_backend_cpu_s": m["pg_backend_cpu_s"],
            "pg_other_cpu_s": m["pg_other_cpu_s"], "sim_cpu_s": m["watched_cpu_s"],
            "bench_cpu_s": m["bench_cpu_s"], "foreign_cpu_s": m["foreign_cpu_s"],
            "foreign_share": m["foreign_share"], "waited_for_quiet_s": m["waited_for_quiet_s"],
            "log_tail": [l for _, l in lines[-3:]],
        }
        say("  %s events/s (%s first request→last commit), daemon %.2fs CPU, PostgreSQL %.2fs "
            "(backend %.2fs), peak RSS %.1f MiB, other load %.0f %%"
            % (fmt_i(r["events_per_s"]), fmt_i(r["events_per_s_requests"]), r["daemon_cpu_s"],
               r["pg_cpu_s"], r["pg_backend_cpu_s"], r["daemon_maxrss_kib"] / 1024,
               100 * r["foreign_cpu_s"] / r["wall_s"]))
        return r

    # -- PostgreSQL's limit --------------------------------------------------------------------
    def limit_scripts(self, n, names):
        say("limit: generating the same %d events as COPY text (excluded from the figures)" % n)
        t = time.monotonic()
        ds = simulator.Dataset(seed=SEED, events=n, org=ORG, projects=PROJECTS)
        d = os.path.join(self.work, "limit-%d" % n)
        os.makedirs(d, exist_ok=True)
        os.chmod(self.work, 0o755)
        os.chmod(d, 0o755)
        scripts = write_limit_scripts(ds, d, names)
        self.results.setdefault("value_bytes_mean", {})[str(n)] = round(
            sum(len(x) for x in ds.js) / ds.length)
        del ds
        say("  %d scripts written in %.1fs" % (len(scripts), time.monotonic() - t))
        return d, scripts

    def limit(self, n, name, sync, script, attempt):
        db = "bench_limit_%s_%s_%d_%d" % (re.sub(r"\W", "_", name), sync, n, attempt)
        self.create_db(db, template="bench_template")
        prep = FORMULATIONS[name][3]
        if prep:
            try:
                self.psql(prep, db)
            except RuntimeError as e:
                self.psql("DROP DATABASE %s;" % db)
                raise PrepError(str(e).splitlines()[0])
        env = self.pg.env()
        env["PGOPTIONS"] = "-c synchronous_commit=%s" % sync
        errs = []
        m = self.measure([os.path.join(self.pg.bin, "psql"), "-X", "-q", "-A", "-t", "-v",
                          "ON_ERROR_STOP=1", "-h", self.pg.dir, "-p", str(self.pg.port), "-U",
                          "postgres", "-d", db, "-o", "/dev/null", "-f", script], env, db,
                         stderr_lines=errs)
        if m["rc"] != 0:
            raise RuntimeError("psql %s failed: %s" % (name, "\n".join(l for _, l in errs[-10:])))
        c = self.conn(db)
        try:
            rows = int(c.scalar("SELECT count(*) FROM witlink.work_item_link_event"))
            links = int(c.scalar("SELECT count(*) FROM witlink.work_item_link"))
        finally:
            c.close()
        if not self.args.keep_dbs:
            self.psql("DROP DATABASE %s;" % db)
        r = {"events": n, "formulation": name, "synchronous_commit": sync,
             "kind": FORMULATIONS[name][1], "what": FORMULATIONS[name][2],
             "wall_s": m["wall_s"], "events_per_s": n / m["wall_s"], "event_rows": rows,
             "link_rows": links, "psql_cpu_s": m["child_cpu_s"], "pg_cpu_s": m["pg_cpu_s"],
             "pg_backend_cpu_s": m["pg_backend_cpu_s"], "foreign_cpu_s": m["foreign_cpu_s"],
             "foreign_share": m["foreign_share"], "waited_for_quiet_s": m["waited_for_quiet_s"]}
        say("  %-12s synchronous_commit=%-3s %s events/s, PostgreSQL %.2fs CPU (backend %.2fs), "
            "psql %.2fs, other load %.0f %%"
            % (name, sync, fmt_i(r["events_per_s"]), r["pg_cpu_s"], r["pg_backend_cpu_s"],
               r["psql_cpu_s"], 100 * r["foreign_cpu_s"] / r["wall_s"]))
        return r

    # -- idle and latency ---------------------------------------------------------------------
    def wait_caught_up(self, d, db, feeds, since, timeout=300):
        """Until every feed is caught up and has committed a batch since `since` (epoch s)."""
        c = self.conn(db)
        try:
            def ok():
                if not d.alive():
                    raise RuntimeError("witlinkd exited:\n%s" % d.stderr_tail())
                try:
                    return int(c.scalar(
                        "SELECT count(*) FROM witlink.feed WHERE caught_up AND last_batch_at >= "
                        "to_timestamp(%f)" % since) or 0) >= feeds
                except PgError:         # not migrated yet
                    return False
            deadline = time.monotonic() + timeout
            while not ok():
                if time.monotonic() > deadline:
                    raise RuntimeError("feeds not caught up in %ds:\n%s" % (timeout, d.stderr_tail()))
                time.sleep(0.2)
        finally:
            c.close()

    def idle_and_latency(self):
        a = self.args
        db = "bench_idle"
        self.create_db(db)
        sim = start_simulator(a.idle_events, False, 300)
        out = {}
        try:
            # idle: three project feeds caught up, poll-interval 5min
            d = self.daemon_for(sim, db, poll="5min", projects=list(PROJECTS))
            t = time.time()
            d.start()
            try:
                self.wait_caught_up(d, db, len(PROJECTS), t)
                time.sleep(3)
                c = self.conn(db)
                bpid = int(c.scalar("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                    "'witlinkd'"))
                c.close()
                say("idle: %d feeds caught up, poll-interval 5min; measuring %ds"
                    % (len(PROJECTS), a.idle_seconds))
                nreq0 = len(sim.requests())
                cs0, cpu0, b0, bcpu0 = (ctx_switches(d.pid), proc_stat(d.pid)[0],
                                        ctx_switches(bpid), proc_stat(bpid)[0])
                t0 = time.monotonic()
                time.sleep(a.idle_seconds)
                cs1, cpu1, b1, bcpu1 = (ctx_switches(d.pid), proc_stat(d.pid)[0],
                                        ctx_switches(bpid), proc_stat(bpid)[0])
                dt = time.monotonic() - t0
                nreq1 = len(sim.requests())
                out["idle"] = {
                    "seconds": dt, "feeds": len(PROJECTS), "watchdog": False,
                    "wakeups": (cs1[0] - cs0[0]) + (cs1[1] - cs0[1]),
                    "wakeups_per_s": ((cs1[0] - cs0[0]) + (cs1[1] - cs0[1])) / dt,
                    "voluntary": cs1[0] - cs0[0], "involuntary": cs1[1] - cs0[1],
                    "cpu_ms": 1000 * (cpu1 - cpu0), "cpu_ms_per_min": 60000 * (cpu1 - cpu0) / dt,
                    "backend_wakeups_per_s": ((b1[0] - b0[0]) + (b1[1] - b0[1])) / dt,
                    "backend_cpu_ms": 1000 * (bcpu1 - bcpu0),
                    "http_requests": nreq1 - nreq0,
                    "rss_kib": int(re.search(r"VmRSS:\s+(\d+)", open("/proc/%d/status" % d.pid)
                                             .read()).group(1)),
                }
                say("  %.2f wake-ups/s, %.1f ms CPU per minute, %d HTTP requests"
                    % (out["idle"]["wakeups_per_s"], out["idle"]["cpu_ms_per_min"],
                       out["idle"]["http_requests"]))
            finally:
                d.stop()
            # latency: poll-interval 2s, appends at random moments
            d = self.daemon_for(sim, db, poll="%ds" % a.poll_seconds, projects=list(PROJECTS))
            t = time.time()
            d.start()
            try:
                self.wait_caught_up(d, db, len(PROJECTS), t, 60)
                c = self.conn(db)
                c.query("LISTEN witlink")
                rng = random.Random(5)
                samples = []
                say("latency: poll-interval %ds, %d appends at random moments"
                    % (a.poll_seconds, a.latency_samples))
                for i in range(a.latency_samples):
                    time.sleep(rng.uniform(0.2, a.poll_seconds + 0.8))
                    before = int(c.scalar("SELECT count(*) FROM witlink.work_item_link_event"))
                    k = rng.randint(1, 30)
                    c.notifications.clear()
                    t_a = time.time()
                    sim.append(k)
                    deadline = time.monotonic() + a.poll_seconds + 15
                    t_c = None
                    while time.monotonic() < deadline:
                        note = c.wait_notification(max(0.01, deadline - time.monotonic()))
                        if note is None:
                            break
                        now_rows = int(c.scalar("SELECT count(*) FROM witlink.work_item_link_event"))
                        if now_rows >= before + k:
                            # a commit of another feed may have made the count while we asked:
                            # its NOTIFY then arrived during the query
                            t_c = c.notifications[-1][0] if c.notifications else note[0]
                            break
                    if t_c is None:
                        raise RuntimeError("appended events not committed within %ds"
                                           % (a.poll_seconds + 15))
                    samples.append(t_c - t_a)
                    say("  append of %2d events → committed after %.3fs" % (k, t_c - t_a))
                c.close()
                out["latency"] = {"poll_interval_s": a.poll_seconds, "samples_s": samples,
                                  "min_s": min(samples), "median_s": statistics.median(samples),
                                  "max_s": max(samples)}
            finally:
                d.stop()
        finally:
            sim.stop()
        return out

    # -- all of it ----------------------------------------------------------------------------
    def daemon_settings(self):
        """The daemon's effective synchronous-commit (from --check-config; PostgreSQL's default
        'on' for a witlinkd without the key)."""
        sim = harness.Simulator(seed=SEED, events=0, org=ORG, projects=PROJECTS)
        sim.port = 9     # never contacted
        d = self.daemon_for(sim, "postgres")
        p = subprocess.run([self.binary, "--check-config", "-c", d.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        m = re.search(r"^\s*synchronous-commit\s*=\s*(\S+)", p.stdout, re.M)
        v = m.group(1).lower() if m else "on"
        return "off" if v in ("off", "no", "false", "0") else "on"

    def run(self):
        a = self.args
        res = self.results
        res["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        res["mode"] = "quick" if a.quick else "full"
        res["machine"] = machine_info(harness.PG_BIN)
        res["source"] = git_describe(a.rev)
        say("building the release binary (%s)" % (a.rev or "working tree"))
        self.binary, src = build_release(a.build_dir, a.rev)
        res["binary"] = self.binary
        res["stage_from_source"] = stage_from_source(src)
        if not res["stage_from_source"]:
            say("(could not read the staging table from src/store.c: the limit uses the bench's "
                "own copy of it)")
        res["precompute"] = not a.no_precompute
        self.work = tempfile.mkdtemp(prefix="witlink-bench-")
        settings = dict(kv.split("=", 1) for kv in a.pg_set)
        res["postgresql_extra_settings"] = settings
        self.pg = harness.PgCluster(durable=True, settings=settings)
        self.pg.start()
        try:
            res["postgresql_settings"] = dict(
                l.split("|", 1) for l in self.psql(
                    "SELECT name || '|' || setting FROM pg_settings WHERE name IN ('fsync', "
                    "'synchronous_commit', 'full_page_writes', 'wal_sync_method', "
                    "'shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'wal_level')")
                .split())
            res["machine"]["fsync_per_s"] = round(fsync_rate(self.pg.dir))
            say("PostgreSQL with default durability: %s; %d fdatasync/s on its disk"
                % (", ".join("%s=%s" % kv for kv in sorted(res["postgresql_settings"].items())),
                   res["machine"]["fsync_per_s"]))
            sync = self.daemon_settings()
            res["daemon_synchronous_commit"] = sync
            say("witlinkd's session runs with synchronous_commit=%s; the limit runs use the same" % sync)
            self.make_template()
            res["schema_version"] = self.schema_version
            res["backfill"], res["limit"], res["simulator"] = {}, {}, {}
            res["backfill_runs"], res["limit_runs"] = {}, {}
            for i, n in enumerate(a.sizes):
                key = str(n)
                reps = a.repeat if n <= 500000 else 1
                # every formulation at the first size, the limit ones after that; informational:
                # the daemon's SQL with the other commit mode at the first size
                plan = [(f, sync) for f in a.formulations
                        if i == 0 or a.every_size or FORMULATIONS[f][1] == "limit"]
                if i == 0 and "apply_batch" in a.formulations:
                    plan.append(("apply_batch", "on" if sync == "off" else "off"))
                d, scripts = self.limit_scripts(n, sorted({script_key(f) for f, _ in plan}))
                lim_runs, runs = {}, []
                skipped = set()

                def limit_round(kinds, k):
                    for f, sc in plan:
                        label = f if sc == sync else "%s, synchronous_commit=%s" % (f, sc)
                        if label in skipped or (sc == sync and FORMULATIONS[f][1] == "limit") \
                                != (kinds == "limit"):
                            continue
                        try:
                            r = self.limit(n, f, sc, scripts[script_key(f)], k)
                        except PrepError as e:
                            say("  %s: skipped (%s)" % (f, e))
                            res.setdefault("skipped", {})[label] = str(e)
                            skipped.add(label)
                            continue
                        r["informational"] = kinds != "limit"
                        lim_runs.setdefault(label, []).append(r)

                # The daemon's runs and the limit's alternate, so that both meet the same
                # weather on a shared machine; the other formulations come after.
                sim = None if a.limit_only else start_simulator(n, not a.no_precompute, 900)
                try:
                    if sim:
                        sp = simulator_speed(sim, n)
                        res["simulator"][key] = sp
                        say("simulator alone: %s events/s (%.2f ms per 1,000-event request)"
                            % (fmt_i(sp["events_per_s"]), sp["ms_per_request"]))
                    for k in range(reps):
                        if sim:
                            say("witlinkd --once: collection-wide backfill of %d events, run %d of %d"
                                % (n, k + 1, reps))
                            runs.append(self.backfill(sim, n, k))
                        say("limit: the same %d events with psql, run %d of %d" % (n, k + 1, reps))
                        limit_round("limit", k)
                finally:
                    if sim:
                        sim.stop()
                if runs:
                    res["backfill_runs"][key] = runs
                    res["backfill"][key] = best_run(runs)
                if any(not (sc == sync and FORMULATIONS[f][1] == "limit") for f, sc in plan):
                    say("PostgreSQL: parts, what-ifs and the other commit mode (%d runs each)" % reps)
                    for k in range(reps):
                        limit_round("other", k)
                shutil.rmtree(d, ignore_errors=True)
                res["limit"][key] = {label: best_run(rr) for label, rr in lim_runs.items()}
                res["limit_runs"][key] = lim_runs
            if not a.skip_idle:
                res.update(self.idle_and_latency())
        finally:
            self.pg.cleanup()
            if not a.keep_dbs:
                shutil.rmtree(self.work, ignore_errors=True)
        return res


# ---------------------------------------------------------------------------------------------
# Report


def derive(res):
    """Figures for the table: per size, the limit (the fastest formulation that does the whole
    work with the daemon's commit mode) and the ratios."""
    rows = []
    for n, b in res["backfill"].items():
        lim = res["limit"].get(n, {})
        full = {k: v for k, v in lim.items() if not v.get("informational")}
        best = max(full, key=lambda k: full[k]["events_per_s"]) if full else None
        per = 100000 / b["events"]
        rows.append({
            "events": b["events"],
            "events_per_s": b["events_per_s"],
            "events_per_s_requests": b["events_per_s_requests"],
            "limit_name": best,
            "limit_events_per_s": full[best]["events_per_s"] if best else None,
            "fraction_of_limit": b["events_per_s"] / full[best]["events_per_s"] if best else None,
            "daemon_cpu_per_100k": b["daemon_cpu_s"] * per,
            "pg_cpu_per_100k": b["pg_cpu_s"] * per,
            "pg_backend_cpu_per_100k": b["pg_backend_cpu_s"] * per,
            "sim_cpu_per_100k": b["sim_cpu_s"] * per,
            "limit_pg_cpu_per_100k": full[best]["pg_cpu_s"] * 100000 / full[best]["events"]
            if best else None,
            "maxrss_mib": b["daemon_maxrss_kib"] / 1024,
            "maxrss_mib_max": max(r["daemon_maxrss_kib"] for r in res["backfill_runs"][n]) / 1024,
            "wall_s": b["wall_s"],
            "runs": len(res["backfill_runs"][n]),
            "events_per_s_all": [r["events_per_s"] for r in res["backfill_runs"][n]],
        })
    return rows


def fmt_n(n):
    n = int(n)
    return "%dM" % (n // 10**6) if n % 10**6 == 0 else ("%dk" % (n // 1000) if n % 1000 == 0 else str(n))


def report(res):
    rows = derive(res)
    out = []
    m = res["machine"]
    src = res["source"]
    out.append("**%s**, %s: %d CPUs (%s), %.1f GiB RAM, %s, kernel %s, %s, %s fdatasync/s on "
               "the cluster's disk. witlinkd %s (%s)%s, release build; PostgreSQL cluster with "
               "default durability (fsync, full_page_writes, synchronous_commit on; "
               "shared_buffers %s × 8 kB); witlinkd's session: synchronous_commit=%s."
               % (res["date"], m["host"], m["nproc"], m["cpu"], m["memory_gib"], m["os"],
                  m["kernel"], m["postgresql"], fmt_i(m.get("fsync_per_s", 0)), src["commit"],
                  src["subject"], ", working tree with uncommitted changes"
                  if src.get("dirty_sources") else "", res["postgresql_settings"].get(
                      "shared_buffers", "?"), res.get("daemon_synchronous_commit", "?")))
    if res.get("postgresql_extra_settings"):
        out[-1] += " Extra PostgreSQL settings: %s." % ", ".join(
            "%s=%s" % kv for kv in res["postgresql_extra_settings"].items())
    out.append("")
    if not rows:
        out.append("(no daemon backfill in this run)")
    hdr = ["backfill", "events/s (start→exit)", "events/s (1st request→last commit)",
           "PostgreSQL limit, events/s", "witlinkd / limit", "witlinkd CPU s per 100k",
           "PostgreSQL CPU s per 100k (its backend)", "limit: PostgreSQL CPU s per 100k",
           "simulator CPU s per 100k", "witlinkd peak RSS"]
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for r in rows:
        out.append("| %s%s | %s | %s | %s | %s | %.2f | %.2f (%.2f) | %s | %.2f | %.1f MiB |" % (
            fmt_n(r["events"]), " (best of %d)" % r["runs"] if r["runs"] > 1 else "",
            fmt_i(r["events_per_s"]), fmt_i(r["events_per_s_requests"]),
            "%s (%s)" % (fmt_i(r["limit_events_per_s"]), r["limit_name"])
            if r["limit_name"] else "–",
            "**%.0f %%**" % (100 * r["fraction_of_limit"]) if r["fraction_of_limit"] else "–",
            r["daemon_cpu_per_100k"], r["pg_cpu_per_100k"], r["pg_backend_cpu_per_100k"],
            "%.2f" % r["limit_pg_cpu_per_100k"] if r["limit_pg_cpu_per_100k"] else "–",
            r["sim_cpu_per_100k"], r["maxrss_mib_max"]))
    spread = ["%s: %s" % (fmt_n(r["events"]), " / ".join(fmt_i(x) for x in r["events_per_s_all"]))
              for r in rows if r["runs"] > 1]
    if spread:
        out.append("")
        out.append("Every run, events/s: %s. The table shows the fastest run (other load only "
                   "slows runs down); peak RSS is the largest of the runs." % "; ".join(spread))
    out.append("")
    out.append("PostgreSQL's limit: the same events written by psql from a script, one transaction "
               "per 1,000 events, into a fresh `witlink` schema made by the daemon's migration "
               "(best of the runs; *informational* rows are not candidates for the limit):")
    out.append("")
    out.append("| events | formulation | events/s | PostgreSQL CPU s per 100k (backend) | "
               "psql CPU s per 100k | other load | what |")
    out.append("|---|---|---|---|---|---|---|")
    for n, lim in res["limit"].items():
        for name, l in lim.items():
            per = 100000 / l["events"]
            out.append("| %s | %s%s | %s | %.2f (%.2f) | %.2f | %.0f %% | %s |" % (
                fmt_n(l["events"]), name, " *(informational)*" if l.get("informational") else "",
                fmt_i(l["events_per_s"]), l["pg_cpu_s"] * per, l["pg_backend_cpu_s"] * per,
                l["psql_cpu_s"] * per, 100 * l["foreign_cpu_s"] / l["wall_s"], l["what"]))
    out.append("")
    out.append("Where the time goes during a backfill (CPU time of each process as a share of the "
               "run's wall time; %d CPUs = %d %%):" % (m["nproc"], 100 * m["nproc"]))
    out.append("")
    out.append("| backfill | wall s | witlinkd | PostgreSQL backend | PostgreSQL other (WAL writer, "
               "checkpointer, autovacuum, …) | simulator | other load on the machine | "
               "start-up (start → 1st request) | exit (last commit → exit) |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for n, b in res["backfill"].items():
        w = b["wall_s"]
        out.append("| %s | %.1f | %.0f %% | %.0f %% | %.0f %% | %.0f %% | %.0f %% | %.3f s | %.3f s |"
                   % (fmt_n(b["events"]), w, 100 * b["daemon_cpu_s"] / w,
                      100 * b["pg_backend_cpu_s"] / w, 100 * b["pg_other_cpu_s"] / w,
                      100 * b["sim_cpu_s"] / w, 100 * b["foreign_cpu_s"] / w, b["startup_s"],
                      b["exit_s"]))
    if "idle" in res:
        i = res["idle"]
        out.append("")
        out.append("**Idle** (%d project feeds caught up, poll-interval 5min, no watchdog, %.0f s): "
                   "**%.2f wake-ups/s** (%d voluntary + %d involuntary context switches), "
                   "%.1f ms CPU per minute, RSS %.1f MiB, %d HTTP requests; its PostgreSQL backend: "
                   "%.2f wake-ups/s." % (i["feeds"], i["seconds"], i["wakeups_per_s"],
                                         i["voluntary"], i["involuntary"], i["cpu_ms_per_min"],
                                         i["rss_kib"] / 1024, i["http_requests"],
                                         i["backend_wakeups_per_s"]))
    if "latency" in res:
        la = res["latency"]
        out.append("")
        out.append("**Latency** (poll-interval %ds, %d appends at random moments, append → "
                   "commit): min **%.2f s**, median **%.2f s**, max **%.2f s** (target ≤ %d s)."
                   % (la["poll_interval_s"], len(la["samples_s"]), la["min_s"], la["median_s"],
                      la["max_s"], la["poll_interval_s"] + 1))
    sims = res.get("simulator", {})
    if sims:
        out.append("")
        out.append("Simulator alone (%s; mean value %s bytes): %s." % (
            "bodies precomputed at start-up" if res.get("precompute") else "bodies built per request",
            " / ".join(str(v) for v in res.get("value_bytes_mean", {}).values()) or "?",
            "; ".join("%s: %s events/s, %.2f ms per 1,000-event request" % (
                fmt_n(n), fmt_i(s["events_per_s"]), s["ms_per_request"])
                for n, s in sims.items())))
    return "\n".join(out)


README_BEGIN = "<!-- bench:results:begin (written by bench/run.py) -->"
README_END = "<!-- bench:results:end -->"


def update_readme(text, json_name):
    path = os.path.join(BENCH_DIR, "README.md")
    with open(path) as f:
        s = f.read()
    i, j = s.find(README_BEGIN), s.find(README_END)
    if i < 0 or j < 0:
        raise RuntimeError("markers missing in bench/README.md")
    block = "%s\n%s\n\nRaw figures: [`results/%s`](results/%s).\n%s" % (
        README_BEGIN, text, json_name, json_name, README_END)
    with open(path + ".tmp", "w") as f:
        f.write(s[:i] + block + s[j + len(README_END):])
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="50k events only, 15 s idle, 5 latency samples; bench/README.md untouched")
    ap.add_argument("--sizes", help="comma-separated backfill sizes (default 200000,2000000)")
    ap.add_argument("--formulations", default=",".join(DEFAULT_FORMULATIONS),
                    help="PostgreSQL formulations run at the first size (larger sizes run only "
                         "the 'limit' ones): %s" % ", ".join(FORMULATIONS))
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--idle-events", type=int, default=30000)
    ap.add_argument("--poll-seconds", type=int, default=2)
    ap.add_argument("--latency-samples", type=int, default=None)
    ap.add_argument("--skip-idle", action="store_true", help="no idle and latency measurements")
    ap.add_argument("--limit-only", action="store_true",
                    help="only PostgreSQL's formulations (no simulator, no daemon backfill)")
    ap.add_argument("--every-size", action="store_true",
                    help="run every chosen formulation at every size (default: the 'limit' ones "
                         "only after the first size)")
    ap.add_argument("--no-precompute", action="store_true",
                    help="let the simulator build every body per request")
    ap.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(),
                                                        "witlink-bench", "build-release"))
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per measurement at sizes up to 500k (the fastest run is reported; "
                         "larger sizes run once)")
    ap.add_argument("--quiet-wait", type=float, default=10,
                    help="before each measured run, wait up to this many seconds for the machine "
                         "to be nearly idle (other load is reported either way)")
    ap.add_argument("--quiet-share", type=float, default=0.10,
                    help="'nearly idle': busy below this share of the CPUs")
    ap.add_argument("--pg-set", action="append", default=[], metavar="NAME=VALUE",
                    help="an extra postgresql.conf setting of the cluster, e.g. shared_buffers=1GB "
                         "(the default is the harness's cluster with default durability)")
    ap.add_argument("--rev", help="build this commit (git archive) instead of the working tree")
    ap.add_argument("--timeout", type=int, default=1800, help="bound of every measured run (s)")
    ap.add_argument("--keep-dbs", action="store_true", help="keep the work directory and databases")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite bench/README.md")
    a = ap.parse_args()
    a.sizes = [int(x) for x in (a.sizes or ("50000" if a.quick else "200000,2000000")).split(",")]
    a.formulations = [f.strip() for f in a.formulations.split(",") if f.strip()]
    for f in a.formulations:
        if f not in FORMULATIONS:
            ap.error("unknown formulation %r" % f)
    if a.idle_seconds is None:
        a.idle_seconds = 15 if a.quick else 60
    if a.latency_samples is None:
        a.latency_samples = 5 if a.quick else 10
    if not harness.PgCluster.available():
        sys.exit("PostgreSQL server binaries not found in %s (./dev.sh installs them)" % harness.PG_BIN)

    t0 = time.monotonic()
    b = Bench(a)
    res = b.run()
    res["bench_seconds"] = time.monotonic() - t0
    text = report(res)
    os.makedirs(os.path.join(BENCH_DIR, "results"), exist_ok=True)
    name = "%s-%s%s%s.json" % (time.strftime("%Y%m%d-%H%M%S"), res["machine"]["host"],
                               "-quick" if a.quick else "", "-limit-only" if a.limit_only else "")
    with open(os.path.join(BENCH_DIR, "results", name), "w") as f:
        json.dump(res, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print()
    print(text)
    print()
    say("raw results: bench/results/%s; the bench took %.0fs" % (name, res["bench_seconds"]))
    if not a.quick and not a.no_readme:
        update_readme(text, name)
        say("bench/README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
