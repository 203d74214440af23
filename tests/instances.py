# SPDX-License-Identifier: MIT
"""Helpers of the tests that run several witlinkd instances against one warehouse
(tests/integration/test_instances_*.py): instances told apart by their sessions'
application_name, a sampler of the feeds' advisory locks, a background appender, start at one
instant.  Python 3 standard library only."""

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
import harness  # noqa: E402
from harness import check, log  # noqa: E402

# The advisory lock of feed N is (LOCK_CLASS, N): in pg_locks classid = LOCK_CLASS, objid = N,
# objsubid = 2 (the two-int4 form).
LOCK_CLASS = 7826539
APP_PREFIX = "witlinkd-"

HOLDERS_SQL = (
    "select coalesce(json_agg(json_build_array(l.objid::bigint, l.pid, a.application_name)), "
    "'[]') from pg_locks l left join pg_stat_activity a on a.pid = l.pid "
    "where l.locktype = 'advisory' and l.classid = %d and l.objsubid = 2 and l.granted "
    "and l.database = (select oid from pg_database where datname = current_database())"
    % LOCK_CLASS)


class Instance:
    """One witlinkd of the group: a harness.Daemon whose sessions carry application_name
    witlinkd-NAME (the conninfo's value wins over the daemon's default)."""

    def __init__(self, ctx, name, pg, sources, **kw):
        self.name = name
        self.app = APP_PREFIX + name
        self.daemon = ctx.daemon("%s application_name=%s" % (pg.conninfo, self.app), sources, **kw)
        self.killed_at = None      # time.monotonic() of a kill -9

    @property
    def pid(self):
        return self.daemon.pid

    def alive(self):
        return self.daemon.alive()

    def stderr(self):
        try:
            with open(self.daemon.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def backend_pids(self, pg):
        out = pg.scalar("select coalesce(string_agg(pid::text, ','), '') from pg_stat_activity "
                        "where application_name = '%s'" % self.app)
        return [int(x) for x in out.split(",") if x]


def start_together(instances, lead=0.8):
    """Starts every instance at one instant: each is a small Python launcher that sleeps until
    the same CLOCK_REALTIME moment and then execs witlinkd (same PID)."""
    at = time.time() + lead
    launcher = ("import os, sys, time\n"
                "t = float(sys.argv[1])\n"
                "while time.time() < t:\n"
                "    time.sleep(min(0.005, max(0.0, t - time.time())))\n"
                "os.execv(sys.argv[2], sys.argv[2:])\n")
    for inst in instances:
        d = inst.daemon
        assert d.proc is None or d.proc.poll() is not None
        d._err = d._open_err()
        d.proc = subprocess.Popen([sys.executable, "-c", launcher, repr(at), d.binary, "-c",
                                   d.config_path], stdin=subprocess.DEVNULL, stdout=d._err,
                                  stderr=d._err, env=d.env, preexec_fn=harness._die_with_parent)
    time.sleep(max(0.0, at - time.time()))
    return at


def start_three(ctx, pg, seed, events, projects, batch, interval):
    """The set-up the kill and terminate tests share: a simulator with 30 ms per request, three
    instances a, b, c of one config, a lock sampler, and every feed owned. Returns (sim, insts,
    sampler, owner, t_ready, feed_ids)."""
    sim = ctx.simulator(seed=seed, events=events, projects=projects, batch_size=batch,
                        extra_args=["--latency", "0.03"])
    src = [harness.Source.for_simulator(sim, name="fabrikam", projects=projects)]
    insts = [Instance(ctx, n, pg, src, poll_interval="%ds" % interval) for n in "abc"]
    sampler = LockSampler(pg, interval=0.05)
    ctx.stack.callback(sampler.stop)
    sampler.start()
    for inst in insts:
        inst.daemon.start()
    owner = wait_owners(pg, insts, len(projects), 20)
    t_ready = time.monotonic()
    feed_ids = [f["feed_id"] for f in harness.feeds(pg)]
    check(len(feed_ids) == len(projects), "one witlink.feed row per project (feeds %s)" % feed_ids)
    log("every feed has one owner, named in witlink.feed: %s" % describe(owner))
    return sim, insts, sampler, owner, t_ready, feed_ids


def holders(pg):
    """{feed_id: [(backend pid, application_name), ...]} of the granted feed locks, now."""
    out = {}
    for fid, pid, app in json.loads(pg.scalar(HOLDERS_SQL)):
        out.setdefault(fid, []).append((pid, app))
    return out


class LockSampler(threading.Thread):
    """Samples the feeds' advisory locks through one psql session: each sample is one
    pg_locks snapshot (one moment of the lock manager)."""

    def __init__(self, pg, interval=0.05):
        super().__init__(daemon=True)
        self.pg = pg
        self.interval = interval
        self.samples = []      # (time.monotonic(), {feed_id: [(pid, app), ...]})
        self.errors = 0
        self._halt = threading.Event()
        cmd = [os.path.join(pg.bin, "psql"), "-X", "-A", "-t", "-q", "-h", pg.dir, "-p",
               str(pg.port), "-U", "postgres", "-d", "postgres"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=pg.env(),
                                     preexec_fn=harness._die_with_parent)

    def _sample(self):
        t0 = time.monotonic()
        self.proc.stdin.write(HOLDERS_SQL + ";\n\\echo __END__\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise EOFError("psql ended")
            line = line.strip()
            if line == "__END__":
                break
            if line:
                lines.append(line)
        t1 = time.monotonic()
        try:
            rows = json.loads(lines[-1])
        except (IndexError, ValueError):
            self.errors += 1
            return
        h = {}
        for fid, pid, app in rows:
            h.setdefault(fid, []).append((pid, app))
        self.samples.append(((t0 + t1) / 2, h))

    def run(self):
        while not self._halt.is_set():
            try:
                self._sample()
            except (EOFError, OSError, ValueError):
                self.errors += 1
                return
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(10)
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def samples_between(self, t0, t1=None):
        return [(t, h) for t, h in list(self.samples) if t >= t0 and (t1 is None or t <= t1)]


class Appender(threading.Thread):
    """Appends `count` changes to the simulator's log every `every` seconds until stopped."""

    def __init__(self, sim, count=20, every=0.25):
        super().__init__(daemon=True)
        self.sim, self.count, self.every = sim, count, every
        self.appended = 0
        self.error = None
        self.stopped = False
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.every):
            try:
                self.sim.append(self.count)
                self.appended += self.count
            except Exception as e:      # reported by stop()
                self.error = e
                return

    def halt(self):
        self._halt.set()
        self.join(30)

    def stop(self):
        """Stops appending and checks that every append worked."""
        if self.stopped:
            return
        self.stopped = True
        self.halt()
        check(self.error is None, "the simulator took %d appended changes (%s)"
              % (self.appended, self.error or "no error"))


def owner_problems(pg, instances):
    """Each feed's lock is held by exactly one backend, that backend is a session of a live
    instance, and witlink.feed names that instance: owner_host = this host, owner_pid = its PID,
    owner_backend_pid = the lock holder (and witlink.feed_status.owner_active, where the schema
    has it, is true). Returns (problems, {feed_id: instance})."""
    by_app = {i.app: i for i in instances}
    h = holders(pg)
    rows = pg.query_json("select feed_id, owner_host, owner_pid, owner_backend_pid "
                         "from witlink.feed order by feed_id")
    active = {}
    if pg.scalar("select to_regclass('witlink.feed_status') is not null") == "t":
        active = {r["feed_id"]: r["owner_active"] for r in pg.query_json(
            "select feed_id, owner_active from witlink.feed_status")}
    host = socket.gethostname()
    problems, owner = [], {}
    for r in rows:
        fid = r["feed_id"]
        hs = h.get(fid, [])
        if len(hs) != 1:
            problems.append("feed %d: %d lock holders %s" % (fid, len(hs), hs))
            continue
        pid, app = hs[0]
        inst = by_app.get(app)
        if inst is None or not inst.alive():
            problems.append("feed %d: lock held by backend %d of %r, not a live instance"
                            % (fid, pid, app))
            continue
        owner[fid] = inst
        if r["owner_backend_pid"] != pid or r["owner_pid"] != inst.pid or r["owner_host"] != host:
            problems.append("feed %d: witlink.feed names (%s, pid %s, backend %s); the owner is "
                            "(%s, pid %d = %s, backend %d)"
                            % (fid, r["owner_host"], r["owner_pid"], r["owner_backend_pid"], host,
                               inst.pid, inst.name, pid))
        elif active and not active.get(fid):
            problems.append("feed %d: witlink.feed_status.owner_active is not true" % fid)
    return problems, owner


def wait_owners(pg, instances, n_feeds, timeout):
    """Waits until n_feeds feeds exist and owner_problems() finds none. Returns
    {feed_id: instance}; fails with the last problems on timeout."""
    last = ["no feed rows yet"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(harness.feeds(pg)) >= n_feeds:
                last, owner = owner_problems(pg, instances)
                if not last and len(owner) == n_feeds:
                    return owner
        except RuntimeError as e:
            last = [str(e)]
        if time.monotonic() >= deadline:
            for p in last:
                log("  " + p)
            raise harness.Failure("the feeds did not get one live owner each, named in "
                                  "witlink.feed, within %ss" % timeout)
        time.sleep(0.1)


def describe(owner):
    """'a: 1,3  b: 2' for {feed_id: instance}."""
    by = {}
    for fid, inst in sorted(owner.items()):
        by.setdefault(inst.name, []).append(str(fid))
    return "  ".join("%s: %s" % (k, ",".join(v)) for k, v in sorted(by.items()))


def takeover_time(sampler, feed_ids, live_apps, t0, timeout, gone_pids=()):
    """The first sample time after t0 at which every feed is held by exactly one session of
    live_apps, none of them a backend in gone_pids (pg_terminate_backend() returns before the
    backend has exited); None if none within timeout seconds of t0."""
    deadline = t0 + timeout
    while True:
        for t, h in sampler.samples_between(t0):
            if all(len(h.get(f, [])) == 1 and h[f][0][1] in live_apps
                   and h[f][0][0] not in gone_pids for f in feed_ids):
                return t
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def sample_problems(sampler, insts, feed_ids, t_ready, windows, gone, release):
    """Checks every sample since t_ready: no feed has more than one holder; every holder is a
    session of an instance; a feed has no holder only inside one of `windows` ([(t0, t1)]: from
    a kill or a terminated session to the takeover); no session listed in `gone` ([(app,
    backend pid or None for any, t)]) holds a lock later than `release` seconds after t.
    Returns (problems, number of samples)."""
    apps = {i.app for i in insts}
    problems = []
    n = 0
    for t, h in sampler.samples_between(t_ready):
        n += 1
        rel = t - t_ready
        in_window = any(t0 <= t <= t1 for t0, t1 in windows)
        for fid in feed_ids:
            hs = h.get(fid, [])
            if len(hs) > 1:
                problems.append("t=%.2f feed %d held by %d backends %s" % (rel, fid, len(hs), hs))
            elif not hs and not in_window:
                problems.append("t=%.2f feed %d held by no backend (no takeover pending)"
                                % (rel, fid))
            for pid, app in hs:
                if app not in apps:
                    problems.append("t=%.2f feed %d held by backend %d of %r, not an instance"
                                    % (rel, fid, pid, app))
                for g_app, g_pid, g_t in gone:
                    if app == g_app and g_pid in (None, pid) and t > g_t + release:
                        problems.append("t=%.2f feed %d held by %s (backend %d) %.2fs after it "
                                        "should have lost it" % (rel, fid, app, pid, t - g_t))
        for fid in h:
            if fid not in feed_ids:
                problems.append("t=%.2f lock of an unknown feed %d" % (rel, fid))
    log("%d lock samples checked (%d failed reads)" % (n, sampler.errors))
    return problems, n


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[(\d+)\] ([^:]*): "
                       r"(LOG|DETAIL):  (.*)$")


def claim_attempts(pg):
    """The witlink.claim_feed() calls PostgreSQL logged (needs log_statement = all):
    [(seconds since the epoch, backend pid, application_name, project)]."""
    out, pending = [], {}
    with open(pg.logfile, errors="replace") as f:
        for line in f:
            m = _LOG_LINE.match(line.rstrip("\n"))
            if not m:
                continue
            ts, pid, app, kind, text = m.groups()
            pid = int(pid)
            if kind == "LOG":
                pending.pop(pid, None)
                if "witlink.claim_feed(" in text and text.startswith("execute"):
                    t = datetime.datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f").replace(
                        tzinfo=datetime.timezone.utc).timestamp()
                    pending[pid] = (t, app)
            elif pid in pending and text.startswith("parameters:"):
                t, app = pending.pop(pid)
                pm = re.search(r"\$3 = (NULL|'((?:[^']|'')*)')", text)
                project = None
                if pm and pm.group(1) != "NULL":
                    project = pm.group(2).replace("''", "'")
                out.append((t, pid, app, project))
    return out


def retry_gaps(attempts):
    """Gaps between consecutive claims of one feed by one session (standby retries):
    [(gap seconds, application_name, project)]."""
    last, gaps = {}, []
    for t, pid, app, project in sorted(attempts):
        k = (pid, project)
        if k in last:
            gaps.append((t - last[k], app, project))
        last[k] = t
    return gaps


def wait_at_end(pg, sim, n_feeds, timeout):
    """Waits until every feed is caught up with its token at the end of the simulator's log."""
    def pred():
        length = sim.stats()["log_length"]
        fs = harness.feeds(pg)
        return len(fs) >= n_feeds and all(
            f["caught_up"] and harness.token_pos(f["continuation_token"] or "") == length
            for f in fs)
    return harness.wait_until(pred, timeout, 0.2)
