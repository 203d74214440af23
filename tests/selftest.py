#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Self-test of the test system itself (no daemon needed): the API simulator (paging, filters,
auth, faults, determinism, serving speed) and the PostgreSQL harness (PgCluster, truth loading).

    python3 tests/selftest.py [--quick]      exit 0 pass, 1 fail, 77 skip
"""

import base64
import gzip
import http.client
import json
import os
import socket
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, log  # noqa: E402

QUICK = "--quick" in sys.argv
SECRET = "s3cret-PAT/with+chars="


class Client:
    """A keep-alive HTTP client that behaves like the daemon should."""

    def __init__(self, port, auth=("pat", SECRET), gzip_ok=True):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.auth = auth
        self.gzip_ok = gzip_ok

    def headers(self):
        h = {"Accept": "application/json", "X-TFS-FedAuthRedirect": "Suppress",
             "User-Agent": "selftest/1"}
        if self.gzip_ok:
            h["Accept-Encoding"] = "gzip"
        if self.auth and self.auth[0] == "pat":
            h["Authorization"] = "Basic " + base64.b64encode((":" + self.auth[1]).encode()).decode()
        elif self.auth and self.auth[0] == "bearer":
            h["Authorization"] = "Bearer " + self.auth[1]
        return h

    def get(self, path):
        for attempt in range(2):
            try:
                self.conn.request("GET", path, headers=self.headers())
                r = self.conn.getresponse()
                body = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                if attempt:
                    raise
        if r.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body


def feed_path(org, project=None, token=None, api="7.1", **params):
    p = "/" + org + "/"
    if project:
        p += urllib.parse.quote(project, safe="") + "/"
    p += "_apis/wit/reporting/workitemlinks?api-version=" + api
    if token:
        p += "&continuationToken=" + urllib.parse.quote(token, safe="")
    for k, v in params.items():
        p += "&%s=%s" % (k, urllib.parse.quote(v, safe=","))
    return p


def token_of(doc):
    if "continuationToken" in doc:
        return doc["continuationToken"], True
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(doc["nextLink"]).query)
    return q["continuationToken"][0], False


def decode_value(v):
    a = v.get("attributes") if isinstance(v.get("attributes"), dict) else v
    op = a.get("changedOperation")
    if op is None:
        op = "create" if a["isActive"] else "remove"
    return (v["rel"], a["sourceId"], a["targetId"], a["changedDate"], op)


def read_feed(client, org, project=None, token=None, max_batches=100000, **params):
    """Follow a feed to its last batch. Returns (values, final token, batches, stats)."""
    values, batches, no_body_token = [], 0, 0
    hosts = set()
    while True:
        st, hd, body = client.get(feed_path(org, project, token, **params))
        if st != 200:
            raise harness.Failure("status %d: %r" % (st, body[:300]))
        doc = json.loads(body)
        tok, in_body = token_of(doc)
        no_body_token += not in_body
        hosts.add(urllib.parse.urlsplit(doc["nextLink"]).netloc)
        values += doc["values"]
        batches += 1
        if doc["isLastBatch"]:
            return values, tok, batches, {"no_body_token": no_body_token, "hosts": hosts,
                                          "activity": hd.get("activityid")}
        if tok == token:
            raise harness.Failure("non-final batch without token progress")
        token = tok
        if batches > max_batches:
            raise harness.Failure("too many batches")


def ev_tuple(e):
    return (e["rel"], e["sourceId"], e["targetId"], e["changedDate"], e["op"])


def raw_request(port, data, read=True, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    if read:
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                out += c
        except (ConnectionResetError, socket.timeout) as e:
            out += ("<%s>" % type(e).__name__).encode()
    s.close()
    return out


def test_simulator(ctx):
    n_events = 20000
    sim = ctx.simulator(seed=42, events=n_events, batch_size=500, auth="pat:" + SECRET)
    org = sim.org
    evs = sim.events()
    check(len(evs) == n_events, "simulator log has %d events" % len(evs))
    # log properties
    check(all(evs[i]["ticks"] >= evs[i - 1]["ticks"] for i in range(1, len(evs))),
          "changedDate is non-decreasing in log order")
    ties = sum(1 for i in range(1, len(evs)) if evs[i]["ticks"] == evs[i - 1]["ticks"])
    check(ties > n_events // 10, "many exact ties (%d)" % ties)
    shapes = {e["shape"] for e in evs}
    check(shapes == {"flat", "flat-full", "nested"}, "all three shapes appear: %s" % sorted(shapes))
    wrong = [e for e in evs if e["isActive"] != (e["op"] == "create")]
    check(wrong and all(e["changedOperationSent"] for e in wrong),
          "%d events with a wrong isActive, all carrying changedOperation" % len(wrong))
    check(any(not e["changedOperationSent"] and e["shape"] == "flat-full" for e in evs),
          "flat values without changedOperation exist")
    cross = [e for e in evs if e["sourceProject"] != e["targetProject"]]
    check(len(cross) > n_events // 50, "%d cross-project events" % len(cross))
    comments = [e["comment"] for e in evs if e["comment"]]
    for what, pred in [("NUL", lambda c: "\u0000" in c), ("quote", lambda c: '"' in c),
                       ("backslash", lambda c: "\\" in c), ("tab", lambda c: "\t" in c),
                       ("newline", lambda c: "\n" in c), ("emoji", lambda c: "🚀" in c),
                       ("Arabic", lambda c: "مرحبا" in c), ("Hebrew", lambda c: "שלום" in c),
                       ("4000 chars", lambda c: len(c) == 4000)]:
        check(any(pred(c) for c in comments), "comments include %s" % what)
    check(any(e["comment"] is None for e in evs) and any(e["comment"] == "" for e in evs),
          "comments null and empty occur")
    check(any(e["changedBy"] is None and e["shape"] != "flat" for e in evs), "changedBy null/absent occurs")
    check(any(max(e["sourceId"], e["targetId"]) == 2147483647 for e in evs), "id 2147483647 occurs")
    digits = {len(e["changedDate"].rstrip("Z").partition(".")[2]) for e in evs}
    check(digits == set(range(8)), "changedDate with 0..7 fractional digits: %s" % sorted(digits))
    # re-parent: remove + create with the same changedDate for the same child
    rp = sum(1 for a, b in zip(evs, evs[1:]) if a["op"] == "remove" and b["op"] == "create"
             and a["rel"] == b["rel"] == "System.LinkTypes.Hierarchy" and a["targetId"] == b["targetId"]
             and a["changedDate"] == b["changedDate"] and a["sourceId"] != b["sourceId"])
    check(rp > 100, "%d re-parents (remove+create, same changedDate)" % rp)
    flaps = sum(1 for a, b in zip(evs, evs[1:]) if ev_tuple(a)[:3] == ev_tuple(b)[:3]
                and a["op"] == "create" and b["op"] == "remove")
    check(flaps > 100, "%d create+remove of one link back to back" % flaps)
    seen, recreated = {}, 0
    for e in evs:
        k = ev_tuple(e)[:3]
        if e["op"] == "create" and seen.get(k) == "remove":
            recreated += 1
        seen[k] = e["op"]
    check(recreated > 50, "%d re-creations of a removed link" % recreated)
    per_key = {}
    ok = True
    for e in evs:
        k = ev_tuple(e)[:3]
        if k in per_key and e["ticks"] - per_key[k] < 10000:
            ok = False
        per_key[k] = e["ticks"]
    check(ok, "events of one link are >= 1 ms apart (distinct after microsecond rounding)")

    c = Client(sim.port)
    # auth
    for auth, what in [(None, "no credential"), (("pat", "wrong"), "wrong PAT"),
                       (("bearer", SECRET), "bearer instead of PAT")]:
        st, hd, body = Client(sim.port, auth=auth).get(feed_path(org))
        check(st == 203 and hd["content-type"].startswith("text/html") and b"<html" in body.lower()
              and "activityid" in hd, "%s -> 203 HTML sign-in page" % what)
    st, hd, body = c.get(feed_path(org))
    check(st == 200 and hd["content-type"] == "application/json; charset=utf-8"
          and hd.get("content-encoding") == "gzip" and "activityid" in hd,
          "valid PAT -> 200 JSON, gzip, ActivityId")
    reqs = sim.requests()
    check(all("auth_ok" in r for r in reqs) and [r["auth_ok"] for r in reqs[-4:]] == [False, False, False, True]
          and SECRET not in json.dumps(reqs), "request log records auth validity, never the secret")
    sim.config(auth="bearer:tok-123")
    st, _, _ = Client(sim.port, auth=("bearer", "tok-123")).get(feed_path(org))
    st2, _, _ = c.get(feed_path(org))
    check(st == 200 and st2 == 203, "bearer auth (after /_sim/config) accepted; PAT refused")
    sim.config(auth="pat:" + SECRET)
    st, hd, body = Client(sim.port, gzip_ok=False).get(feed_path(org))
    check(st == 200 and "content-encoding" not in hd and int(hd["content-length"]) == len(body),
          "no gzip without Accept-Encoding; Content-Length set")

    # full collection feed
    vals, tok, batches, info = read_feed(c, org)
    check(len(vals) == n_events, "collection feed: %d values in %d batches" % (len(vals), batches))
    check([decode_value(v) for v in vals] == [ev_tuple(e) for e in evs],
          "values decode (changedOperation first, else isActive) to exactly the log, in order")
    check(info["no_body_token"] > 0 and "127.0.0.1:%d" % sim.port not in info["hosts"],
          "%d batches lack continuationToken; nextLink host %s differs" % (info["no_body_token"], info["hosts"]))
    raw_nul = any("\u0000" in json.dumps(v) or "\\u0000" in json.dumps(v) for v in vals)
    check(raw_nul, "U+0000 is sent as \\u0000")
    # at end: empty last batch, same token
    st, _, body = c.get(feed_path(org, token=tok))
    doc = json.loads(body)
    check(doc["values"] == [] and doc["isLastBatch"] and token_of(doc)[0] == tok,
          "at the end: empty last batch, token unchanged")
    # appends are picked up with the stored token
    new_len = sim.append(37)
    vals2, tok2, _, _ = read_feed(c, org, token=tok)
    evs2 = sim.events(offset=n_events)
    check(new_len == n_events + 37 and [decode_value(v) for v in vals2] == [ev_tuple(e) for e in evs2],
          "appended 37 events come with the stored token")
    now = time.time()
    d_last = evs2[-1]["ticks"] / 1e7
    check(abs(d_last - now) < 120 and evs2[0]["ticks"] >= evs[-1]["ticks"], "appended events are dated now-ish")
    evs = evs + evs2

    # mid-feed restart with a token: positions
    mid_tok = sim.token(12345)
    vals3, _, _, _ = read_feed(c, org, token=mid_tok)
    check([decode_value(v) for v in vals3] == [ev_tuple(e) for e in evs[12345:]], "resuming from a token")

    # projects
    projects = sim.projects
    st_ = sim.stats()
    guid = {p["name"]: p["id"] for p in st_["projects"]}
    for p in projects:
        exp = [ev_tuple(e) for e in evs if p in (e["sourceProject"], e["targetProject"])]
        got, _, b, _ = read_feed(c, org, project=p)
        check([decode_value(v) for v in got] == exp, "project %r feed: %d values (%d batches)" % (p, len(got), b))
    p = projects[2]
    exp = [ev_tuple(e) for e in evs if p in (e["sourceProject"], e["targetProject"])]
    got, _, _, _ = read_feed(c, org, project=p.upper())
    got2, _, _, _ = read_feed(c, org, project=guid[p].upper())
    check([decode_value(v) for v in got] == exp == [decode_value(v) for v in got2],
          "project matched case-insensitively and by GUID")
    st, hd, body = c.get(feed_path(org, project="NoSuchProject"))
    doc = json.loads(body)
    check(st == 404 and doc.get("typeKey") == "ProjectDoesNotExistWithNameException" and "$id" in doc
          and "message" in doc, "unknown project -> 404 API error body")
    st, _, _ = c.get("/" + org.upper() + "/" + urllib.parse.quote(p) + "/_apis/WIT/Reporting/WorkItemLinks?api-version=5.0")
    check(st == 200, "path matched case-insensitively (workItemLinks)")

    # filters
    got, _, _, _ = read_feed(c, org, types="Bug,User Story")
    exp = [ev_tuple(e) for e in evs if {e["sourceType"], e["targetType"]} & {"Bug", "User Story"}]
    check([decode_value(v) for v in got] == exp, "types filter (%d values)" % len(got))
    got, _, _, _ = read_feed(c, org, linkTypes="system.linktypes.related,Custom.Blocks")
    exp = [ev_tuple(e) for e in evs if e["rel"] in ("System.LinkTypes.Related", "Custom.Blocks")]
    check([decode_value(v) for v in got] == exp, "linkTypes filter, case-insensitive (%d values)" % len(got))
    got, _, _, _ = read_feed(c, org, project=projects[1], types="Epic")
    exp = [ev_tuple(e) for e in evs if projects[1] in (e["sourceProject"], e["targetProject"])
           and "Epic" in (e["sourceType"], e["targetType"])]
    check([decode_value(v) for v in got] == exp, "project + types filter (%d values)" % len(got))
    sdt = evs[15000]["changedDate"]
    got, _, _, _ = read_feed(c, org, startDateTime=sdt)
    exp = [ev_tuple(e) for e in evs if e["ticks"] > evs[15000]["ticks"]]
    check([decode_value(v) for v in got] == exp, "startDateTime (%d values after %s)" % (len(got), sdt))
    # bounded scan window: a rare filter gives empty non-final batches with advancing tokens
    st, _, body = c.get(feed_path(org, types="NoSuchType"))
    doc = json.loads(body)
    check(st == 200 and doc["values"] == [] and not doc["isLastBatch"] and
          harness.token_pos(token_of(doc)[0]) == 20 * 500, "bounded scan: empty non-final batch, token advanced")

    # tokens and api-version
    for bad in ["garbage", "12345", sim.token(5)[:-1] + "0", "00000000;5;00000000"]:
        st, hd, body = c.get(feed_path(org, token=bad))
        doc = json.loads(body)
        check(st == 400 and hd["content-type"].startswith("application/json") and doc["typeKey"] and
              doc["message"] and "$id" in doc, "bad token %r -> 400 API error" % bad)
    sim_foreign = ctx.simulator(seed=43, events=100, auth="none")
    ftok = sim_foreign.token(50)
    sim_foreign.stop()
    st, _, _ = c.get(feed_path(org, token=ftok))
    check(st == 400, "foreign token (other seed) -> 400")
    for ver, exp in [("7.1", 200), ("4.1", 200), ("7.2-preview.3", 200), ("2.0", 400), ("banana", 400)]:
        st, _, _ = c.get(feed_path(org, api=ver))
        check(st == exp, "api-version %s -> %d" % (ver, exp))
    st, _, _ = c.get("/%s/_apis/wit/reporting/workitemlinks" % org)
    check(st == 400, "missing api-version -> 400")

    # faults
    path = feed_path(org)
    sim.set_faults([{"kind": "status", "status": 503, "count": 2, "headers": {"Retry-After": "3"}}])
    r1, r2, r3 = c.get(path), c.get(path), c.get(path)
    check(r1[0] == r2[0] == 503 and r1[1].get("retry-after") == "3" and json.loads(r1[2])["message"]
          and r3[0] == 200, "status fault: two 503 with Retry-After, then 200")
    sim.set_faults([{"kind": "status", "status": 429, "body": "html", "headers": {"Retry-After": "1"}},
                    {"kind": "html203"}, {"kind": "headers", "headers": {"Retry-After": "2"}}])
    r1, r2, r3 = c.get(path), c.get(path), c.get(path)
    check(r1[0] == 429 and r1[1]["content-type"].startswith("text/html") and r2[0] == 203 and
          r3[0] == 200 and r3[1].get("retry-after") == "2", "429 HTML, 203 HTML, then 200 with Retry-After")
    sim.set_faults([{"kind": "delay", "seconds": 0.6}])
    t0 = time.time()
    st, _, _ = c.get(path)
    check(st == 200 and time.time() - t0 >= 0.6, "delay fault (%.2fs)" % (time.time() - t0))
    sim.set_faults([{"kind": "reset"}])
    req = ("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n" % (path, c.headers()["Authorization"])).encode()
    out = raw_request(sim.port, req)
    check(b"HTTP/1.1" not in out, "reset fault: connection closed without a response")
    sim.set_faults([{"kind": "reset", "when": "mid"}])
    out = raw_request(sim.port, req)
    hdr, _, body = out.partition(b"\r\n\r\n")
    cl = int([l for l in hdr.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    check(out.startswith(b"HTTP/1.1 200") and len(body.replace(b"<ConnectionResetError>", b"")) < cl,
          "reset mid-body: fewer bytes than Content-Length")
    sim.set_faults([{"kind": "truncate"}])
    out = raw_request(sim.port, req)
    hdr, _, body = out.partition(b"\r\n\r\n")
    cl = int([l for l in hdr.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    check(out.startswith(b"HTTP/1.1 200") and len(body) == cl // 2, "truncate: half the body, then EOF")
    sim.set_faults([{"kind": "badjson"}])
    st, _, body = c.get(path)
    try:
        json.loads(body)
        bad = False
    except ValueError:
        bad = True
    check(st == 200 and bad, "badjson: 200 with an unparsable body")
    sim.set_faults([{"kind": "status", "status": 500, "match": "Contoso", "count": 1}])
    st1, _, _ = c.get(path)
    st2, _, _ = c.get(feed_path(org, project="Contoso Web"))
    check(st1 == 200 and st2 == 500 and sim.faults() == [], "fault 'match' selects requests")
    sim.set_faults([{"kind": "overlap", "events": 7}])
    t100 = sim.token(100)
    st, _, body = c.get(feed_path(org, token=t100))
    doc = json.loads(body)
    check(decode_value(doc["values"][0]) == ev_tuple(evs[93]), "overlap fault replays earlier events")
    reqs = sim.requests()
    check(reqs[-1]["fault"] == "overlap" and reqs[-1]["token"] == t100 and "next_token" in reqs[-1],
          "request log names the fault, the token asked and the token returned")

    # the faults of issue 4: throttling headers in the log, broken bodies, huge, duplicates, chaos
    sim.clear_requests()
    sim.set_faults([{"kind": "ratelimit", "delay": 1.5, "remaining": 7, "retry_after": 2},
                    {"kind": "truncjson"}, {"kind": "wrongtypes", "variant": "sourceId-string"},
                    {"kind": "nulls", "variant": "changedDate"}, {"kind": "dupboundary", "events": 3}])
    r1, r2, r3, r4 = c.get(path), c.get(path), c.get(path), c.get(path)
    r5 = c.get(feed_path(org, token=t100))
    check(r1[0] == 200 and r1[1].get("x-ratelimit-remaining") == "7" and r1[1].get("retry-after") == "2",
          "ratelimit: X-RateLimit-* and Retry-After on a 200")
    lg = sim.requests()
    check(lg[0].get("retry_after") == "2" and lg[0].get("ratelimit_delay") == "1.5",
          "the request log records Retry-After and X-RateLimit-Delay")
    bad = []
    for r in (r2, r3, r4):
        try:
            doc = json.loads(r[2])
            v = doc["values"][len(doc["values"]) // 2]
            a = v.get("attributes") or v
            bad.append(isinstance(a.get("sourceId"), str) or a.get("changedDate") is None)
        except ValueError:
            bad.append(True)
    check(all(bad) and not any(x.get("valid_batch") for x in lg[1:4]),
          "truncjson, wrongtypes, nulls: 200s that must be rejected, logged as broken")
    d5 = json.loads(r5[2])
    check(len(d5["values"]) == 503 and token_of(d5)[0] == sim.token(600),
          "dupboundary: the next batch's first 3 values at the end, token unchanged")
    sim.set_faults([{"kind": "huge", "bytes": 64 << 20}])
    sock = socket.create_connection(("127.0.0.1", sim.port), timeout=10)
    sock.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
                  % (path, c.headers()["Authorization"])).encode())
    head = sock.recv(65536)
    sock.close()
    harness.wait_until(lambda: sim.requests()[-1].get("huge_done"), 10)
    last = sim.requests()[-1]
    check(head.startswith(b"HTTP/1.1 200") and b"Content-Length: 67108864" in head and
          last.get("body_complete") is False and last.get("sent_bytes", 1 << 30) < 32 << 20,
          "huge: 64 MiB announced, %d bytes sent before the client hung up" % last.get("sent_bytes", -1))
    sim.set_faults([])
    sim.config(chaos={"ratio": 0.5, "seed": 3, "faults": [{"kind": "status", "status": 502}]})
    sts = [c.get(path)[0] for _ in range(40)]
    sim.config(chaos=None)
    check(8 <= sts.count(502) <= 32 and sts.count(200) + sts.count(502) == 40,
          "chaos 50 %%: %d of 40 requests got a 502" % sts.count(502))

    # org prefix like an on-prem collection
    tfs = ctx.simulator(seed=5, events=3000, org="tfs/DefaultCollection", auth="none", batch_size=1000)
    ct = Client(tfs.port, auth=None)
    vals, _, b, _ = read_feed(ct, "tfs/DefaultCollection")
    check(len(vals) == 3000 and b == 3, "on-prem prefix /tfs/DefaultCollection works (%d batches)" % b)
    st, _, _ = ct.get(feed_path("fabrikam"))
    check(st == 404, "wrong collection path -> 404")
    tfs.stop()

    # determinism
    sim_b = ctx.simulator(seed=42, events=n_events, batch_size=500, auth="pat:" + SECRET)
    evs_b = sim_b.events()
    check(evs_b == evs[:n_events], "same seed -> same log")
    c2 = Client(sim_b.port)
    check(c2.get(feed_path(org, token=sim.token(777)))[2] == Client(sim.port).get(
        feed_path(org, token=sim_b.token(777)))[2], "same seed -> byte-identical batches, same tokens")
    sim_b.stop()


def measure_speed(ctx, n_events, batch_size=1000, gzip_ok=True, parallel=1):
    sim = ctx.simulator(seed=9, events=n_events, batch_size=batch_size, auth="pat:" + SECRET,
                        startup_timeout=600)
    t_start = time.time()
    c = Client(sim.port, gzip_ok=gzip_ok)
    vals, _, batches, _ = read_feed(c, sim.org)
    dt = time.time() - t_start
    sim.stop()
    return len(vals), dt, batches


def measure_server_only(ctx, n_events, batch_size=1000, gzip_ok=True):
    """Serving speed without client-side JSON parsing: walk positions with tokens known up front."""
    sim = ctx.simulator(seed=9, events=n_events, batch_size=batch_size, auth="pat:" + SECRET,
                        startup_timeout=600)
    simulator = harness.simulator
    epoch = sim.stats()["epoch"]
    c = Client(sim.port, gzip_ok=gzip_ok)
    t0 = time.time()
    nbytes = 0
    for pos in range(0, n_events, batch_size):
        st, hd, body = c.get(feed_path(sim.org, token=simulator.make_token(epoch, pos)))
        nbytes += len(body)
        assert st == 200
    dt = time.time() - t0
    sim.stop()
    return dt, nbytes


def test_pg(ctx):
    if not harness.PgCluster.available():
        log("PostgreSQL not installed: skipping PgCluster checks")
        return
    pg = ctx.pg()
    check(pg.scalar("select 1") == "1", "PgCluster starts, psql works (%s)" % pg.conninfo)
    check(pg.scalar("show fsync") == "off", "fsync=off by default")
    rows = pg.query_json("select 1 as a, 'Ωmega \"x\"' as b union all select 2, null")
    check(rows == [{"a": 1, "b": 'Ωmega "x"'}, {"a": 2, "b": None}], "query_json")
    pg.restart()
    check(pg.scalar("select 2") == "2", "restart")
    # truth loading: fake a warehouse from a truth and compare
    sim = ctx.simulator(seed=3, events=3000, auth="none")
    evs = sim.events()
    tr = harness.truth(evs, "fabrikam")
    check(len(tr.events) == len(evs), "truth: every event is distinct (%d)" % len(tr.events))
    pg.psql("""
create schema witlink;
create table witlink.work_item_link (organization text, link_type_reference_name text,
  source_work_item_id int, target_work_item_id int, is_active bool, link_type text,
  source_project_id uuid, target_project_id uuid, comment text, created_date timestamptz,
  created_by text, deleted_date timestamptz, deleted_by text, changed_date timestamptz, changed_by text,
  primary key (organization, link_type_reference_name, source_work_item_id, target_work_item_id));
create table witlink.work_item_link_event (event_id bigserial, organization text, link_type_reference_name text,
  source_work_item_id int, target_work_item_id int, changed_date timestamptz, changed_operation text);
""")
    # load the truth as if a daemon had written it (through the same CSV path)
    problems = harness.compare_with_truth(pg, tr, quiet=True)
    check(len(problems) > 0, "empty warehouse differs from truth")
    import tempfile
    d = tempfile.mkdtemp()
    os.chmod(d, 0o755)
    harness._write_csv(os.path.join(d, "l.csv"), tr.links, harness._LINK_COLS)
    harness._write_csv(os.path.join(d, "e.csv"), tr.events, harness._EVENT_COLS)
    pg.psql("""
create temp table l (organization text, rel text, source int, target int, is_active bool, link_type text,
  spi uuid, tpi uuid, comment text, cd text, cb text, dd text, db text, chd text, chb text);
\\copy l from '%s' with (format csv)
insert into witlink.work_item_link select organization, rel, source, target, is_active, link_type, spi, tpi,
  comment, cd::timestamptz, cb, dd::timestamptz, db, chd::timestamptz, chb from l;
create temp table e (organization text, rel text, source int, target int, cd text, op text);
\\copy e from '%s' with (format csv)
insert into witlink.work_item_link_event (organization, link_type_reference_name, source_work_item_id,
  target_work_item_id, changed_date, changed_operation) select organization, rel, source, target, cd::timestamptz, op from e;
""" % (os.path.join(d, "l.csv"), os.path.join(d, "e.csv")))
    problems = harness.compare_with_truth(pg, tr)
    check(problems == [], "truth loaded into PostgreSQL compares equal to itself: %s" % problems[:3])
    nul = pg.scalar("select count(*) from witlink.work_item_link where comment like '%%' || U&'\\FFFD' || '%%'")
    check(int(nul) > 0, "NUL in comments became U+FFFD (%s rows)" % nul)
    pg.psql("update witlink.work_item_link set comment = comment || 'x' where source_work_item_id = %d"
            % tr.links[0]["source"])
    pg.psql("insert into witlink.work_item_link_event (organization, link_type_reference_name, "
            "source_work_item_id, target_work_item_id, changed_date, changed_operation) "
            "select organization, link_type_reference_name, source_work_item_id, target_work_item_id, "
            "changed_date, changed_operation from witlink.work_item_link_event limit 1")
    problems = harness.compare_with_truth(pg, tr, quiet=True)
    check(any("comment" in p for p in problems) and any("duplicate" in p for p in problems),
          "a changed comment and a duplicate event are reported: %s" % problems[:4])
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    sim.stop()


def main(ctx):
    test_simulator(ctx)
    test_pg(ctx)
    n = 100000 if QUICK else 300000
    got, dt, batches = measure_speed(ctx, n)
    log("serving speed (gzip, client parses JSON): %d events in %d batches in %.2fs = %.0f events/s"
        % (got, batches, dt, got / dt))
    dt, nbytes = measure_server_only(ctx, n)
    log("serving speed (gzip, no client parsing): %.0f events/s, %.1f MB/s of JSON"
        % (n / dt, nbytes / dt / 1e6))
    check(n / dt > 50000, "serves more than 50,000 events/s")
    dt, nbytes = measure_server_only(ctx, n, gzip_ok=False)
    log("serving speed (identity): %.0f events/s, %.1f MB/s of JSON" % (n / dt, nbytes / dt / 1e6))


if __name__ == "__main__":
    harness.run_test(main, timeout=600)
