#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A credential the server does not accept. With --once: a wrong PAT answered by 203 and an HTML
sign-in page exits 69 after at most 3 requests, and so do 401, 302, 403, HTML on a 200 and a
wrong bearer token; the token (plain or Base64 in a Basic header) never appears in the output,
at debug level.  In the foreground: the feed backs off (no request storm) and resumes at once
when a reload (SIGHUP) brings the right token."""

import base64
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

WRONG = "wrong-PAT-0123456789abcdefghijklmnopqrstuvwxyz"
CASES = [
    # name, source auth, simulator settings, queued faults
    ("wrong PAT, 203 with an HTML sign-in page", "pat", {"auth_fail": 203}, []),
    ("wrong PAT, 401", "pat", {"auth_fail": 401}, []),
    ("wrong PAT, 302 to a sign-in page", "pat", {"auth_fail": 302}, []),
    ("wrong bearer token, 203", "bearer", {"auth_fail": 203}, []),
    ("right PAT, 403 with a JSON error", "pat-right", {}, [{"kind": "status", "status": 403, "count": -1}]),
    ("right PAT, HTML on a 200", "pat-right", {}, [{"kind": "html200", "count": -1}]),
]


def secrets_in(text, token):
    forms = [token, base64.b64encode((":" + token).encode()).decode(),
             base64.b64encode(token.encode()).decode()]
    return [f for f in forms if f in text]


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=8808, events=harness.scaled(2000, 200), batch_size=200)
    for name, kind, simcfg, faults in CASES:
        log("== %s" % name)
        sim.clear_requests()
        sim.config(auth=sim.auth, **simcfg)
        sim.set_faults(faults)
        token = sim.secret if kind == "pat-right" else WRONG
        auth = "bearer" if kind == "bearer" else "pat"
        if kind == "bearer":
            sim.config(auth="bearer:right-bearer-token")
        src = harness.Source(sim.org, sim.base_url, token, auth=auth)
        d = ctx.daemon(pg.conninfo, [src], poll_interval="1h", log_level="debug")
        t0 = time.monotonic()
        rc, out, err = d.run_once(timeout=60)
        dt = time.monotonic() - t0
        reqs = harness.data_requests(sim)
        check(rc == 69, "%s: --once exits 69 (got %s after %.1fs)" % (name, rc, dt))
        check(1 <= len(reqs) <= 3, "%s: at most 3 requests (%d)" % (name, len(reqs)))
        leaked = secrets_in(out + err, token)
        check(not leaked, "%s: the token appears nowhere in the output (%d bytes, debug level)"
              % (name, len(out) + len(err)))
        check(any(w in err.lower() for w in ("credential", "authentication", "token")),
              "%s: the error says the credential was refused" % name)
        if kind == "bearer":
            sim.config(auth="pat:" + sim.secret)
    sim.config(auth_fail=203)
    sim.set_faults([])

    # The foreground: back off, then resume at once after a reload with the right token.
    log("== foreground: wrong token, then SIGHUP with the right one")
    sim.clear_requests()
    src = harness.Source(sim.org, sim.base_url, WRONG, auth="pat")
    d = ctx.daemon(pg.conninfo, [src], poll_interval="1h", log_level="debug")
    d.start()
    check(harness.wait_until(lambda: len(harness.data_requests(sim)) >= 1, harness.slow(15)),
          "foreground: the daemon asked once")
    time.sleep(3)
    n = len(harness.data_requests(sim))
    check(d.alive(), "foreground: the daemon keeps running after the refusal")
    check(n <= 2, "foreground: no request storm while the credential is refused (%d requests in 3 s)" % n)
    src.token = sim.secret
    d.write_config()
    t0 = time.monotonic()
    d.kill(signal.SIGHUP)
    fs = harness.wait_caught_up(pg, 1, timeout=30, daemon=d)
    check(fs is not None, "foreground: caught up %.1fs after SIGHUP with the right token"
          % (time.monotonic() - t0))
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(sim.events(), "fabrikam"), quiet=True),
                             "foreground: warehouse equals the truth")
    d.kill(signal.SIGTERM)
    check(d.wait(10) == 0, "foreground: SIGTERM exits 0")
    with open(d.stderr_path, errors="replace") as f:
        text = f.read()
    check(not secrets_in(text, WRONG) and not secrets_in(text, sim.secret),
          "foreground: neither token appears in the daemon's output")


if __name__ == "__main__":
    harness.run_test(main, timeout=200)
