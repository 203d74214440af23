#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The sd_notify lifecycle without systemd: the test owns NOTIFY_SOCKET (an AF_UNIX datagram
socket in a temporary directory) and sets WATCHDOG_USEC=2s. READY=1 arrives once the schema is in
place, with STATUS= lines (at most about one a second) describing the feeds; WATCHDOG=1 arrives
about every WATCHDOG_USEC/2 and never more than WATCHDOG_USEC apart; SIGHUP brings RELOADING=1
then READY=1 (also when the new file is invalid, which keeps the old configuration); SIGTERM
brings STOPPING=1 and exit code 0. Everything arrives in that order."""

import os
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

WATCHDOG_USEC = 2000000
PROJECTS = ["Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj"]


class NotifySocket:
    """Collects (monotonic time, {field: value}) for every datagram the daemon sends."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.done = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = {}
            for line in data.decode("utf-8", "replace").split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    fields[k] = v
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def first(self, key, value=None, after=0.0):
        """Time of the first message at or after `after` carrying key (=value); None if none."""
        for t, f in self.snapshot():
            if t >= after and key in f and (value is None or f[key] == value):
                return t
        return None

    def wait(self, key, value=None, after=0.0, timeout=20):
        return harness.wait_until(lambda: self.first(key, value, after), timeout, 0.02)

    def close(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=6606, events=20000, projects=PROJECTS, batch_size=250)
    ndir = tempfile.mkdtemp(prefix="witlink-notify-")
    ctx.stack.callback(__import__("shutil").rmtree, ndir, True)
    ns = NotifySocket(ndir)
    ctx.stack.callback(ns.close)
    src = harness.Source.for_simulator(sim, name="fabrikam", projects=PROJECTS[:2])
    d = ctx.daemon(pg.conninfo, [src], poll_interval="1s", log_level="info",
                   env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    t_start = time.monotonic()
    d.start()

    # ---- READY ---------------------------------------------------------------------------
    t_ready = ns.wait("READY", "1", timeout=30)
    check(t_ready is not None, "READY=1 arrived (%.2fs after start)" % ((t_ready or 0) - t_start))
    check(pg.scalar("select to_regclass('witlink.feed') is not null") == "t",
          "the schema was in place when READY=1 arrived")
    ready_msg = [f for t, f in ns.snapshot() if f.get("READY") == "1"][0]
    check("STATUS" in ready_msg and "feeds" in ready_msg["STATUS"],
          "READY=1 carries a STATUS= summary: %r" % ready_msg.get("STATUS"))
    fs = harness.wait_caught_up(pg, 2, timeout=60, daemon=d)
    check(fs is not None, "both feeds caught up")
    t_caught = time.monotonic()

    # ---- WATCHDOG at about WATCHDOG_USEC/2 ---------------------------------------------------
    window = 6.0
    time.sleep(window)
    t_end = time.monotonic()
    pings = [t for t, f in ns.snapshot() if f.get("WATCHDOG") == "1"]
    check(pings and pings[0] - t_start <= WATCHDOG_USEC / 1e6 + 1.0,
          "the first WATCHDOG=1 arrived within WATCHDOG_USEC of the start (%.2fs)"
          % ((pings[0] if pings else 0) - t_start))
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    in_window = [t for t in pings if t_caught <= t < t_end]
    idle_gaps = [b - a for a, b in zip(in_window, in_window[1:])]
    period = WATCHDOG_USEC / 1e6
    log("watchdog: %d pings; gaps min %.2fs, mean %.2fs, max %.2fs; %d in %.0fs of idle polling, "
        "mean gap %.2fs" % (len(pings), min(gaps), sum(gaps) / len(gaps), max(gaps), len(in_window),
                           window, sum(idle_gaps) / max(len(idle_gaps), 1)))
    # sd-event pings when 1/2 to 3/4 of the period have passed (its timer), or earlier when the
    # loop wakes up anyway, but never twice within 1/4 of the period.
    check(max(gaps) < period, "no two pings further apart than WATCHDOG_USEC (%.2fs)" % max(gaps))
    check(min(gaps) >= period / 4 * 0.9, "no ping storm: pings at least WATCHDOG_USEC/4 apart (%.2fs)"
          % min(gaps))
    check(len(idle_gaps) >= 2, "pings while idle (%d)" % len(in_window))
    mean = sum(idle_gaps) / len(idle_gaps)
    check(period / 4 <= mean <= period * 3 / 4,
          "pings about every WATCHDOG_USEC/2 = %.1fs (mean %.2fs)" % (period / 2, mean))

    # ---- STATUS --------------------------------------------------------------------------------
    statuses = [(t, f["STATUS"]) for t, f in ns.snapshot() if "STATUS" in f]
    plain = [t for t, f in ns.snapshot() if set(f) == {"STATUS"}]
    span = max(t_end - t_start, 1.0)
    log("%d STATUS= messages (%d alone) in %.1fs; last: %r" % (len(statuses), len(plain), span,
                                                              statuses[-1][1]))
    check(len(plain) <= span * 1.1 + 3, "STATUS= is rate-limited to about one a second")
    check(any("backfilling" in s and "events" in s for _, s in statuses), "STATUS= describes the feeds")
    check("2 caught up" in statuses[-1][1], "the last STATUS= says both feeds are caught up: %r"
          % statuses[-1][1])

    # ---- SIGHUP: RELOADING=1 then READY=1, with a new project --------------------------------
    src.projects = PROJECTS
    d.write_config()
    t_hup = time.monotonic()
    d.kill(signal.SIGHUP)
    t_rl = ns.wait("RELOADING", "1", after=t_hup, timeout=10)
    check(t_rl is not None, "SIGHUP: RELOADING=1 arrived")
    t_rd = ns.wait("READY", "1", after=t_rl, timeout=10)
    check(t_rd is not None, "READY=1 followed RELOADING=1 (%.3fs)" % ((t_rd or 0) - (t_rl or 0)))
    check(harness.wait_caught_up(pg, 3, timeout=60, daemon=d) is not None,
          "the reloaded configuration's third feed caught up")

    # an invalid file: still RELOADING=1 / READY=1, the daemon keeps running
    with open(d.config_path, "a") as f:
        f.write("\nno-such-key = 1\n")
    t_hup2 = time.monotonic()
    d.kill(signal.SIGHUP)
    t_rl2 = ns.wait("RELOADING", "1", after=t_hup2, timeout=10)
    t_rd2 = ns.wait("READY", "1", after=t_rl2 or t_hup2, timeout=10)
    check(t_rl2 is not None and t_rd2 is not None, "an invalid file: RELOADING=1 then READY=1 as well")
    time.sleep(0.5)
    check(d.alive(), "the daemon keeps running on its old configuration")
    check("no-such-key" in d.stderr_tail(20), "the bad key is logged")

    # ---- SIGTERM: STOPPING=1 -------------------------------------------------------------------
    t_term = time.monotonic()
    d.kill(signal.SIGTERM)
    rc = d.wait(10)
    check(rc == 0, "SIGTERM: exit code 0 (got %s after %.2fs)" % (rc, time.monotonic() - t_term))
    t_stop = ns.first("STOPPING", "1")
    check(t_stop is not None and t_stop >= t_term, "STOPPING=1 arrived after SIGTERM")

    # ---- the order of it all --------------------------------------------------------------
    kinds = []
    for t, f in ns.snapshot():
        for k in ("READY", "RELOADING", "STOPPING"):
            if f.get(k) == "1":
                kinds.append(k)
    log("lifecycle: " + " ".join(kinds))
    check(kinds == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"],
          "READY, RELOADING/READY (twice), STOPPING in that order")
    after_stop = [f for t, f in ns.snapshot() if t > t_stop and ("READY" in f or "WATCHDOG" in f)]
    check(not after_stop, "nothing but STATUS after STOPPING=1")
    msgs = ns.snapshot()
    check(any("STATUS" in f and "READY" not in f and t_ready < t < t_rl for t, f in msgs) and
          any(f.get("WATCHDOG") == "1" and t_ready < t < t_rl for t, f in msgs),
          "between READY=1 and RELOADING=1 came STATUS= and WATCHDOG=1 messages")
    harness.check_no_pg_errors(pg)


if __name__ == "__main__":
    harness.run_test(main)
