#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TLS: certificate verification is on by default. Against a simulator serving HTTPS with a
self-signed certificate (made with openssl at test time), --once exits 69 with a clear error
that names the certificate problem and ca-file, and no request reaches the server's HTTP layer;
with ca-file = that certificate it completes and equals the truth. A certificate for another
host name is refused even with ca-file."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import check, log  # noqa: E402


def main(ctx):
    harness.require_daemon()
    pg = ctx.pg()
    sim = ctx.simulator(seed=9909, events=harness.scaled(2000, 200), batch_size=250, tls=True)
    log("simulator at %s with a self-signed certificate" % sim.base_url)
    opts = {"max-backoff": "200ms"}        # --once gives up after a few quick attempts

    # 1. verification on by default: refused with a clear message
    d = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam")],
                   poll_interval="1h", extra_daemon=opts, log_level="info")
    rc, out, err = d.run_once(timeout=60)
    log("without ca-file: exit %s; last lines:\n%s" % (rc, "\n".join(err.strip().splitlines()[-3:])))
    check(rc == 69, "without ca-file: --once gives up at once, exit 69 (got %s)" % rc)
    low = err.lower()
    check("certificate" in low, "the error names the certificate problem")
    check("ca-file" in low, "the error points at ca-file")
    check(harness.data_requests(sim) == [], "no request got past the TLS handshake")
    check(sim.secret not in out + err, "the token appears nowhere in the output")

    # 2. ca-file makes it work
    d2 = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(sim, name="fabrikam", ca_file=sim.cert_path)],
                    poll_interval="1h", extra_daemon=opts)
    rc, out, err = d2.run_once(timeout=60)
    check(rc == 0, "with ca-file = the server's certificate: --once exits 0 (got %s)" % rc)
    reqs = harness.data_requests(sim)
    check(reqs and all(r["auth_ok"] for r in reqs), "%d requests over HTTPS, all authenticated" % len(reqs))
    harness.fail_on_problems(harness.compare_with_truth(pg, harness.truth(sim.events(), "fabrikam"), quiet=True),
                             "over HTTPS: warehouse equals the truth")

    # 3. the host name is verified too
    other = ctx.simulator(seed=9910, events=200, batch_size=100, tls=True, tls_san="DNS:wrong.example")
    d3 = ctx.daemon(pg.conninfo, [harness.Source.for_simulator(other, name="other", ca_file=other.cert_path)],
                    poll_interval="1h", extra_daemon=opts, log_level="info")
    rc, out, err = d3.run_once(timeout=60)
    log("certificate for wrong.example: exit %s; last lines:\n%s"
        % (rc, "\n".join(err.strip().splitlines()[-3:])))
    check(rc == 69, "a certificate for another host name is refused even with ca-file (exit %s)" % rc)
    check(harness.data_requests(other) == [], "no request got past that handshake")


if __name__ == "__main__":
    harness.run_test(main, timeout=150)
