#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""witlinkd under a real systemd: the host's own OS booted in systemd-nspawn (volatile, sharing
the host network, so the simulator on 127.0.0.1 is reachable), the shipped unit plus a drop-in
that points ExecStart at the binary under test and a test configuration, the token as a
credential in /etc/credstore (LoadCredential= of the shipped unit), the catalog overlaid onto
/usr/local/lib/systemd/catalog, and the throwaway PostgreSQL's socket directory bound in.

Checks: `systemctl start` returns with the unit active (READY=1), the schema in place and a
STATUS= line in `systemctl status`; the daemon runs as a transient user; the journal carries
WITLINK_FEED and the catalogued MESSAGE_IDs (STARTED, READY, FEED_CAUGHT_UP), `journalctl -x`
finds the catalog, and no entry holds the token; `systemctl reload` with an added project starts
its feed while the old feeds keep their ids and tokens; SIGSTOP: the watchdog kills the daemon,
systemd restarts it and the warehouse ends equal to the simulator's truth; a broken config: the
unit fails with status 78 and is not restarted."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import Failure, Skip, check, log  # noqa: E402

PROJECTS = ["Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj"]
FIRST = PROJECTS[:2]
UNIT = "witlinkd.service"
IN_TEST = "/run/witlink-test"        # the test directory inside the container (read-only)
IN_PG = "/run/witlink-pg"            # the PostgreSQL socket directory inside the container
WATCHDOG_SEC = 3
RESTART_SEC = 1


def _term_with_parent():
    """preexec_fn: nspawn gets SIGTERM (and so powers the container off) if the test dies."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


def source_file(rel):
    return os.path.join(os.environ.get("SRCDIR") or harness.REPO_DIR, rel)


def message_ids():
    """NAME -> id of every MESSAGE_ID in include/log.h."""
    with open(source_file("include/log.h")) as f:
        return dict(re.findall(r'#define MESSAGE_ID_(\w+) "([0-9a-f]{32})"', f.read()))


def catalog_entries():
    """id -> subject of every entry of systemd/witlinkd.catalog."""
    with open(source_file("systemd/witlinkd.catalog")) as f:
        text = f.read()
    out = {}
    for m in re.finditer(r"^-- ([0-9a-f]{32})\n(.*?)(?=^-- |\Z)", text, re.S | re.M):
        subj = re.search(r"^Subject: (.*)$", m.group(2), re.M)
        out[m.group(1)] = subj.group(1) if subj else None
    return out


class Container:
    """The host's OS booted by systemd-nspawn; commands run inside through nsenter."""

    def __init__(self, workdir, binds_ro=(), binds_rw=(), overlays_ro=()):
        self.name = "witlinkd-test-%d" % os.getpid()
        self.workdir = workdir
        self.args = ["--bind-ro=%s:%s" % b for b in binds_ro] + \
                    ["--bind=%s:%s" % b for b in binds_rw] + \
                    ["--overlay-ro=%s" % ":".join(o) for o in overlays_ro]
        self.proc = None
        self.leader = None
        self.log_path = os.path.join(workdir, "nspawn.log")

    def start(self, timeout=60):
        cmd = [shutil.which("systemd-nspawn"), "-q", "-b", "-D", "/", "--volatile=yes",
               "--register=no", "--keep-unit", "--console=pipe", "--system-call-filter=bpf",
               "--machine=" + self.name] + self.args
        log("booting: " + " ".join(cmd))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=_term_with_parent)
        t0 = time.monotonic()
        self.leader = harness.wait_until(self._find_leader, 20, 0.05)
        if not self.leader:
            raise Failure("no container init appeared under nspawn (pid %d): %s"
                          % (self.proc.pid, self.log_tail()))
        # Boot is done when is-system-running --wait returns a state (degraded is fine: the
        # volatile boot's first-boot wizard fails without a terminal).
        state = None
        while time.monotonic() - t0 < timeout:
            left = max(1.0, timeout - (time.monotonic() - t0))
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
                state = r.stdout.strip()
            except subprocess.TimeoutExpired:
                break
            if state in ("running", "degraded"):
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        if state not in ("running", "degraded"):
            raise Failure("container did not boot (state %r): %s" % (state, self.log_tail()))
        log("container %s booted in %.1fs (leader pid %d, state %s)"
            % (self.name, time.monotonic() - t0, self.leader, state))

    def _find_leader(self):
        if self.proc.poll() is not None:
            raise Failure("systemd-nspawn exited with %s: %s" % (self.proc.returncode, self.log_tail()))
        with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
            for pid in f.read().split():
                with open("/proc/%s/comm" % pid) as c:
                    if c.read().strip() == "systemd":
                        return int(pid)
        return None

    def run(self, cmd, timeout=30, check_rc=False, input=None):
        r = subprocess.run(["nsenter", "-t", str(self.leader), "-a"] + list(cmd), input=input,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           errors="replace", timeout=timeout)
        if check_rc and r.returncode != 0:
            raise Failure("%s failed (%d): %s%s" % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
        return r

    def show(self, unit, *props):
        r = self.run(["systemctl", "show", unit, "--no-pager"] + ["-p" + p for p in props],
                     check_rc=True)
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def journal(self, *args):
        r = self.run(["journalctl", "--no-pager", "-q"] + list(args), timeout=30)
        return r.stdout

    def log_tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            try:
                self.run(["systemctl", "poweroff", "--no-block"], timeout=10)
            except Exception:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                log("container did not power off in 30 s; killing it")
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(self.leader, signal.SIGKILL)     # the container's init
                    except ProcessLookupError:
                        pass
                    self.proc.kill()
                    self.proc.wait(10)
        elif self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        log("container stopped (nspawn exit status %s)" % self.proc.returncode)


def write_config(path, sim, pg_port, projects, extra=""):
    text = """# written by tests/integration/test_systemd.py
[daemon]
database = host=%s port=%d user=postgres dbname=postgres
poll-interval = 2s
http-timeout = 10s
log-level = info
%s
[source fabrikam]
url = %s
credential = witlinkd.pat
auth = pat
projects = %s
""" % (IN_PG, pg_port, extra, sim.base_url, ", ".join(projects))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def wait_active(ct, timeout, pred=None):
    """Waits until the unit is active (and pred(props) holds); returns its properties."""
    def ok():
        p = ct.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
        return p if p["ActiveState"] == "active" and (pred is None or pred(p)) else None
    return harness.wait_until(ok, timeout, 0.2)


def journal_entries(ct):
    out = ct.journal("-u", UNIT, "-o", "json")
    entries = []
    for line in out.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    return out, entries


def main(ctx):
    binary = harness.require_daemon()
    if os.geteuid() != 0:
        raise Skip("needs root for systemd-nspawn")
    for tool in ("systemd-nspawn", "nsenter"):
        if not shutil.which(tool):
            raise Skip("%s is not installed (Debian: systemd-container, util-linux)" % tool)
    builddir = os.environ.get("BUILDDIR") or os.path.dirname(binary)
    unit_file = os.path.join(builddir, UNIT)
    check(os.path.isfile(unit_file), "the generated unit %s exists" % unit_file)
    ids = message_ids()
    catalog = catalog_entries()

    pg = ctx.pg()
    sim = ctx.simulator(seed=5505, events=6000, projects=PROJECTS, batch_size=400)
    secret = sim.secret

    tdir = tempfile.mkdtemp(prefix="witlink-nspawn-")
    ctx.stack.callback(shutil.rmtree, tdir, True)
    os.chmod(tdir, 0o755)
    test_dir = os.path.join(tdir, "test")        # -> /run/witlink-test (read-only)
    private = os.path.join(tdir, "private")      # host only
    catroot = os.path.join(tdir, "usrlocal")     # overlaid onto /usr/local
    for d in (test_dir, private, os.path.join(catroot, "lib/systemd/catalog")):
        os.makedirs(d)
    os.chmod(test_dir, 0o755)
    os.chmod(private, 0o700)
    shutil.copy(binary, os.path.join(test_dir, "witlinkd"))
    os.chmod(os.path.join(test_dir, "witlinkd"), 0o755)
    shutil.copy(source_file("systemd/witlinkd.catalog"), os.path.join(catroot, "lib/systemd/catalog"))
    conf = os.path.join(test_dir, "witlinkd.conf")
    write_config(conf, sim, pg.port, FIRST)
    cred = os.path.join(private, "witlinkd.pat")
    with open(os.open(cred, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(secret + "\n")
    dropin = os.path.join(private, "test.conf")
    with open(dropin, "w") as f:
        f.write("[Service]\nExecStart=\nExecStart=%s/witlinkd -c %s/witlinkd.conf\n"
                "WatchdogSec=%ds\nRestartSec=%ds\n" % (IN_TEST, IN_TEST, WATCHDOG_SEC, RESTART_SEC))
        with open(binary, "rb") as b:
            if b"__asan_init" in b.read():
                # A sanitizer build: LeakSanitizer needs ptrace, which the unit's system call
                # filter forbids (the tests outside systemd check leaks).
                f.write("Environment=ASAN_OPTIONS=detect_leaks=0\n")
    preset = os.path.join(private, "00-test.preset")
    with open(preset, "w") as f:
        f.write("disable *\n")
    # DynamicUser: the transient user must reach the socket (PgCluster makes its dir 0755).
    check(os.stat(pg.dir).st_mode & 0o005 == 0o005, "the PostgreSQL socket directory is world-accessible")

    ct = Container(tdir, binds_ro=[
        (preset, "/etc/systemd/system-preset/00-test.preset"),
        (unit_file, "/etc/systemd/system/" + UNIT),
        (dropin, "/etc/systemd/system/%s.d/50-test.conf" % UNIT),
        (cred, "/etc/credstore/witlinkd.pat"),
        (test_dir, IN_TEST),
    ], binds_rw=[(pg.dir, IN_PG)], overlays_ro=[("/usr/local", catroot, "/usr/local")])
    ctx.stack.callback(ct.stop)

    def dump():
        log("---- journal of %s ----\n%s" % (UNIT, ct.journal("-u", UNIT, "-n", "60")))
        log("---- nspawn output ----\n" + ct.log_tail())
    try:
        ct.start()
        run_checks(ctx, ct, pg, sim, conf, ids, catalog, secret)
    except BaseException:
        if ct.leader and ct.proc.poll() is None:
            try:
                dump()
            except Exception:
                pass
        raise


def run_checks(ctx, ct, pg, sim, conf, ids, catalog, secret):
    # ---- start: returns after READY=1 -----------------------------------------------------
    t0 = time.monotonic()
    r = ct.run(["systemctl", "start", UNIT], timeout=60)
    took = time.monotonic() - t0
    check(r.returncode == 0, "systemctl start %s succeeds (%.1fs)%s" % (UNIT, took, r.stderr.strip()))
    props = ct.show(UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "Type", "WatchdogUSec",
                    "NRestarts")
    log("after start: %s" % props)
    check(props["ActiveState"] == "active" and props["SubState"] == "running",
          "the unit is active/running as soon as start returns (Type=notify: READY=1 was sent)")
    check(pg.scalar("select to_regclass('witlink.feed') is not null") == "t",
          "the schema was current when start returned")
    check(props["WatchdogUSec"] in ("%ds" % WATCHDOG_SEC, str(WATCHDOG_SEC * 1000000)),
          "the watchdog is armed (WatchdogUSec=%s)" % props["WatchdogUSec"])
    status = ct.run(["systemctl", "status", UNIT, "--no-pager", "-l", "-n", "0"]).stdout
    log("systemctl status:\n" + status)
    m = re.search(r'^\s*Status: "(.+)"$', status, re.M)
    check(m is not None and "feeds" in m.group(1), "systemctl status shows the STATUS= line")

    pid = props["MainPID"]
    st = ct.run(["cat", "/proc/%s/status" % pid]).stdout
    uid = int(re.search(r"^Uid:\s+(\d+)", st, re.M).group(1))
    check(61184 <= uid <= 65519, "the daemon runs as a transient user (DynamicUser=yes, uid %d)" % uid)

    fs = harness.wait_caught_up(pg, len(FIRST), timeout=60)
    check(fs is not None, "both project feeds caught up under systemd")

    # ---- the journal ---------------------------------------------------------------------
    want = {ids["STARTED"], ids["READY"], ids["FEED_CAUGHT_UP"]}

    def journal_has_ids():
        raw, entries = journal_entries(ct)
        got = {e.get("MESSAGE_ID") for e in entries if e.get("SYSLOG_IDENTIFIER") == "witlinkd"}
        return (raw, entries, got) if want <= got else None
    res = harness.wait_until(journal_has_ids, 15, 0.3)
    check(res is not None, "the journal has the STARTED, READY and FEED_CAUGHT_UP MESSAGE_IDs")
    raw, entries, got = res
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "witlinkd"]
    log("%d journal entries of witlinkd, MESSAGE_IDs %s" % (len(ours), sorted(
        n for n, i in ids.items() if i in got)))
    check(all(i in catalog for i in got if i), "every MESSAGE_ID witlinkd logged is in the catalog")
    feed_lines = [e for e in ours if e.get("WITLINK_FEED")]
    check(feed_lines, "entries carry WITLINK_FEED (%d of them)" % len(feed_lines))
    caught = [e for e in ours if e.get("MESSAGE_ID") == ids["FEED_CAUGHT_UP"]]
    check(all(e.get("WITLINK_FEED") and e.get("WITLINK_ORGANIZATION") == "fabrikam" for e in caught),
          "FEED_CAUGHT_UP entries carry WITLINK_FEED and WITLINK_ORGANIZATION")
    check(all(e.get("_SYSTEMD_UNIT") == UNIT for e in ours), "the entries belong to %s" % UNIT)
    check(secret not in raw, "the token appears in no journal entry of the unit")
    all_raw = ct.journal("-o", "json")
    check(secret not in all_raw, "the token appears nowhere in the container's journal")
    ct.run(["journalctl", "--update-catalog"], check_rc=True)
    explained = ct.journal("-x", "-u", UNIT, "MESSAGE_ID=" + ids["READY"])
    check(catalog[ids["READY"]] in explained,
          "journalctl -x shows the catalog entry (%r)" % catalog[ids["READY"]])

    # ---- reload with an added project ------------------------------------------------------
    before = {f["project"]: f for f in harness.feeds(pg)}
    seq0 = max([r["seq"] for r in sim.requests()] or [0])
    write_config(conf, sim, pg.port, PROJECTS)
    r = ct.run(["systemctl", "reload", UNIT], timeout=30)
    check(r.returncode == 0, "systemctl reload succeeds %s" % r.stderr.strip())
    fs = harness.wait_caught_up(pg, len(PROJECTS), timeout=60)
    check(fs is not None, "after the reload the added project's feed exists and caught up")
    after = {f["project"]: f for f in fs}
    check(set(after) == set(PROJECTS), "feeds after reload: %s" % sorted(after))
    for p in FIRST:
        check(after[p]["feed_id"] == before[p]["feed_id"] and
              after[p]["continuation_token"] == before[p]["continuation_token"],
              "feed %r kept its id and its token across the reload" % p)
    restarted = [r for r in harness.data_requests(sim, seq0)
                 if r.get("project") in FIRST and not r.get("token")]
    check(not restarted, "no old feed asked for the start of the feed after the reload")
    p = wait_active(ct, 10)
    check(p is not None, "the unit is active again after the reload (RELOADING=1 ... READY=1)")
    check(p["MainPID"] == props["MainPID"], "the reload kept the process (MainPID %s)" % p["MainPID"])
    check(harness.wait_until(lambda: ids["RELOADED"] in ct.journal("-u", UNIT, "-o", "json"), 10, 0.3),
          "the journal has the RELOADED MESSAGE_ID")

    # ---- the watchdog ------------------------------------------------------------------------
    old_pid, n0 = p["MainPID"], int(p["NRestarts"])
    ct.run(["kill", "-STOP", old_pid], check_rc=True)
    t_stop = time.monotonic()
    sim.append(600)
    log("SIGSTOP to MainPID %s; appended 600 events" % old_pid)
    p = wait_active(ct, WATCHDOG_SEC + RESTART_SEC + 30,
                    lambda q: q["MainPID"] not in ("0", old_pid) and int(q["NRestarts"]) > n0)
    check(p is not None, "the watchdog killed the stopped daemon and systemd restarted it")
    log("restarted after %.1fs: MainPID %s, NRestarts %s" % (time.monotonic() - t_stop, p["MainPID"],
                                                             p["NRestarts"]))
    wd = ct.journal("-u", UNIT, "-o", "cat")
    check("atchdog timeout" in wd, "systemd logged the watchdog timeout")

    evs = sim.events()
    tr = harness.truth(evs, "fabrikam", projects=PROJECTS)

    def all_stored():
        n = int(pg.scalar("select count(*) from witlink.work_item_link_event"))
        fs = harness.feeds(pg)
        return n >= len(tr.events) and len(fs) == len(PROJECTS) and all(f["caught_up"] for f in fs)
    check(harness.wait_until(all_stored, 60, 0.3), "the restarted daemon caught up with the appended events")
    harness.fail_on_problems(harness.compare_with_truth(pg, tr), "the warehouse equals the simulator's truth")
    harness.check_no_pg_errors(pg)

    # ---- a broken configuration: 78, no restart ---------------------------------------------
    write_config(conf, sim, pg.port, PROJECTS, extra="no-such-key = 1\n")
    r = ct.run(["systemctl", "restart", UNIT], timeout=60)
    check(r.returncode != 0, "systemctl restart with a broken config fails (%d)" % r.returncode)
    p1 = ct.show(UNIT, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    log("after the broken restart: %s" % p1)
    check(p1["ExecMainStatus"] == "78", "the daemon exited with status 78 (EX_CONFIG)")
    time.sleep(RESTART_SEC + 3)
    p2 = ct.show(UNIT, "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    check(p2["ActiveState"] == "failed" and p2["Result"] == "exit-code",
          "the unit is failed (Result=%s)" % p2["Result"])
    check(p2["NRestarts"] == p1["NRestarts"], "systemd did not restart it (RestartPreventExitStatus=78)")
    check("no-such-key" in ct.journal("-u", UNIT, "-o", "cat"),
          "the journal names the bad key")


if __name__ == "__main__":
    harness.run_test(main, timeout=170)
