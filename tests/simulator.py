#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Simulator of the Azure DevOps "Reporting Work Item Links" API with a known truth.

Standard library only.  Serves

    GET /{org}/[{project}/]_apis/wit/reporting/workitemlinks?api-version=..&continuationToken=..
        &types=A,B&linkTypes=X,Y&startDateTime=ISO

from a deterministic (per --seed) append-only event log, plus control endpoints under /_sim/
(no auth, JSON):

    POST /_sim/append    {"count": N}            append N new events dated "now"
    GET  /_sim/events    [?offset=&limit=]       the log with each event's effective fields
    GET  /_sim/requests  [?since=N]              the request log (data requests only)
    POST /_sim/requests/clear                    empty the request log
    POST /_sim/faults    {"faults":[...], "append": false}   queue faults (see FAULTS below)
    GET  /_sim/faults                            the fault queue
    POST /_sim/config    {"auth":..,"batch_size":..,"omit_token_ratio":..,"gzip":..,
                          "latency":..,"max_api_version":..,"auth_fail":..}
    GET  /_sim/stats                             {log_length, requests, epoch, ...}
    GET  /_sim/token?pos=N                       the continuation token for a log position
    GET  /_sim/trap                              requests seen by the trap listener (--trap-listen)
    POST /_sim/trap/clear                        empty that log

Usable as a module: Dataset (the generator), token helpers, SimServer.
"""

import argparse
import base64
import bisect
import calendar
import gzip
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

# ---------------------------------------------------------------------------------------------
# Constants of the dataset

RELS = ("System.LinkTypes.Hierarchy", "System.LinkTypes.Related",
        "System.LinkTypes.Dependency", "Custom.Blocks")
LINK_TYPES = ("System.LinkTypes.Hierarchy-Forward", "System.LinkTypes.Related",
              "System.LinkTypes.Dependency-Forward", "Custom.Blocks-Forward")
REL_WEIGHTS = (0.50, 0.25, 0.15, 0.10)
HIERARCHY = 0
WORK_ITEM_TYPES = ("Epic", "Feature", "User Story", "Task", "Bug")
TYPE_WEIGHTS = (0.05, 0.12, 0.33, 0.35, 0.15)
BIG_IDS = (2147483647, 2147483646, 2000000001)
SHAPES = ("flat", "flat-full", "nested")
FLAT, FLAT_FULL, NESTED = 0, 1, 2
OPS = ("create", "remove")
CREATE, REMOVE = 0, 1

TICKS = 10_000_000          # 100 ns ticks per second (7 fractional digits)
MIN_GAP = 10_000            # 1 ms: minimum gap between two events of the same link
START_2022 = 1640995200     # 2022-01-01T00:00:00Z

TOKEN_SALT = "witlink-sim"
TOKEN_RE = re.compile(r"^([0-9a-f]{8});([0-9]{1,12});([0-9a-f]{8})(;[A-Za-z0-9._~-]*)?$")

ISO_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
                    r"(Z|[+-]\d{2}:?\d{2})?$")


def fmt_ticks(t, digits):
    """Format 100ns ticks since 1970 as ISO-8601 UTC with exactly `digits` fractional digits.
    The caller guarantees that t is representable with that many digits."""
    sec, frac = divmod(t, TICKS)
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if digits:
        s += "." + ("%07d" % frac)[:digits]
    return s + "Z"


def min_digits(t):
    frac = t % TICKS
    if frac == 0:
        return 0
    s = ("%07d" % frac).rstrip("0")
    return len(s)


def parse_iso_ticks(s):
    """Parse an ISO-8601 timestamp into 100ns ticks (UTC). Raises ValueError."""
    m = ISO_RE.match(s.strip())
    if not m:
        raise ValueError("bad timestamp %r" % s)
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    sec = calendar.timegm((int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0), 0, 0, 0))
    ticks = sec * TICKS
    if frac:
        ticks += int((frac + "0000000")[:7])
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        tzd = tz[1:].replace(":", "")
        off = (int(tzd[:2]) * 3600 + int(tzd[2:]) * 60) * TICKS
        ticks -= sign * off
    return ticks


def jdump(v, ascii_only=False):
    return json.dumps(v, ensure_ascii=ascii_only, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Tokens


def token_epoch(org, seed):
    return "%08x" % (zlib.crc32(("%s|%d" % (org.lower(), seed)).encode()) & 0xFFFFFFFF)


def make_token(epoch, pos, pad=0):
    crc = "%08x" % (zlib.crc32(("%s;%d;%s" % (epoch, pos, TOKEN_SALT)).encode()) & 0xFFFFFFFF)
    tok = "%s;%d;%s" % (epoch, pos, crc)
    if pad:
        tok += ";" + ("p" * pad)
    return tok


def parse_token(tok, epoch=None):
    """Return the log position of a token, or None if it is garbage / foreign."""
    m = TOKEN_RE.match(tok or "")
    if not m:
        return None
    ep, pos, crc = m.group(1), int(m.group(2)), m.group(3)
    if epoch is not None and ep != epoch:
        return None
    if make_token(ep, pos).split(";")[2] != crc:
        return None
    return pos


def token_pos(tok):
    """Position encoded in a (valid-looking) token, without checking epoch."""
    return parse_token(tok)


# ---------------------------------------------------------------------------------------------
# Pools of identities and comments (pre-serialized once)


def _make_identities(rng, org, n=24):
    first = ["Ana", "Bjørn", "Chen", "Dalia", "Émile", "Fatima", "Gustavo", "Hana", "Ivan",
             "Jürgen", "Kofi", "Lena", "Mateo", "Noa", "Olu", "Priya", "Quentin", "Rania",
             "Sven", "Tomoko", "Uma", "Viktor", "Wen", "Yusuf"]
    last = ["Silva", "Berg", "Wei", "Haddad", "Durand", "Zahra", "Pérez", "Sato", "Petrov",
            "Müller", "Mensah", "Kowalski", "García", "Levi", "Adeyemi", "Raman", "Moreau",
            "Khalil", "Lund", "Yamada", "Iyer", "Novák", "Zhang", "Demir"]
    out = []
    for i in range(n):
        gid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        fn, ln = first[i % len(first)], last[(i * 7) % len(last)]
        display = "%s %s" % (fn, ln)
        if i % 6 == 5:
            display = 'Q "quoted" \\ user %d' % i
        if i % 5 == 4:
            unique = "FABRIKAM\\%s.%s" % (fn.lower(), ln.lower())      # on-prem style
        else:
            unique = "%s.%s@%s.example.com" % (fn.lower(), ln.lower(), org.split("/")[-1].lower())
        desc_raw = ("%s\\%s" % (gid, unique)).encode()
        descriptor = "aad." + base64.urlsafe_b64encode(desc_raw).decode().rstrip("=")
        tenant = uuid.UUID(int=rng.getrandbits(128), version=4)
        ident = {
            "displayName": display,
            "url": "https://spsprodweu5.vssps.visualstudio.com/A%s/_apis/Identities/%s" % (tenant, gid),
            "_links": {"avatar": {"href": "https://dev.azure.com/%s/_apis/GraphProfile/MemberAvatars/%s"
                                          % (org, descriptor)}},
            "id": gid,
            "uniqueName": unique,
            "imageUrl": "https://dev.azure.com/%s/_api/_common/identityImage?id=%s&descriptor=%s"
                        % (org, gid, descriptor),
            "descriptor": descriptor,
        }
        out.append(ident)
    return out


def _make_comments(rng):
    long_text = ("Ω 4000-character comment — " + "lorem ipsum dolor sit amet " * 200)[:4000]
    specials = [
        'She said "hello" and left',
        "back\\slash C:\\temp\\new and \\u0041 literally",
        "tab\there\tand\tthere",
        "line one\nline two\r\nline three",
        "emoji 🚀🔥 and 𝄞 (astral) and é",
        "مرحبا بالعالم — العربية",
        "שלום עולם — עברית",
        "mixed RTL: abc مرحبا 123 שלום",
        long_text,
        "nul\u0000inside",
        "\u0000",
        "trailing nul\u0000",
        "sql '); drop table x; --",
        "percent % and ampersand & and plus +",
        "  leading and trailing spaces  ",
        "<b>html</b> &amp; entities",
        "control \u0001\u001f chars",
        "zero width\u200bspace and BOM\ufeff",
    ]
    plain = ["Parent changed", "Linked during planning", "Moved to new epic",
             "Dependency found in review", "Related to incident", "Split story",
             "Blocked by API change", "Auto-linked by pipeline"]
    return specials + plain


# ---------------------------------------------------------------------------------------------
# The dataset


class IndexedSet:
    """A set with O(1) add/remove/random choice."""
    __slots__ = ("items", "pos")

    def __init__(self):
        self.items = []
        self.pos = {}

    def add(self, x):
        if x not in self.pos:
            self.pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x):
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last] = i

    def choice(self, rng):
        return self.items[int(rng.random() * len(self.items))]

    def __len__(self):
        return len(self.items)

    def __contains__(self, x):
        return x in self.pos


class Dataset:
    """Deterministic (per seed) event log. Lists are appended under self.lock; readers take a
    snapshot of self.length and only read below it."""

    def __init__(self, seed=1, events=10000, org="fabrikam", projects=("Fabrikam-Fiber",),
                 n_items=None):
        self.seed = seed
        self.org = org
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.epoch = token_epoch(org, seed)
        self.projects = list(projects)
        self.project_ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, "witlink-sim:%d:%s:%s" % (seed, org, p)))
                            for p in self.projects]
        self.project_index = {}
        for i, p in enumerate(self.projects):
            self.project_index[p.casefold()] = i
            self.project_index[self.project_ids[i].casefold()] = i
        rng = self.rng
        self.identities = _make_identities(rng, org)
        self.ident_json = [jdump(x) for x in self.identities]
        self.comments = _make_comments(rng)
        self.comment_json = [(jdump(c), jdump(c, True)) for c in self.comments]
        self.pid_json = [jdump(p) for p in self.project_ids]

        # work items: id -> (project index, type index)
        m = n_items if n_items else max(50, events // 4)
        np_ = len(self.projects)
        pweights = [1.0 / (i + 1.5) for i in range(np_)]
        self.item_project = {}
        self.item_type = {}
        self.items_by_project = [[] for _ in range(np_)]
        ids = list(range(1, m + 1)) + list(BIG_IDS)
        for wid in ids:
            p = rng.choices(range(np_), pweights)[0]
            t = rng.choices(range(len(WORK_ITEM_TYPES)), TYPE_WEIGHTS)[0]
            self.item_project[wid] = p
            self.item_type[wid] = t
            self.items_by_project[p].append(wid)
        self.all_items = ids[:m]
        # make sure every project has a few items
        for p in range(np_):
            if not self.items_by_project[p]:
                wid = self.all_items[p]
                old = self.item_project[wid]
                self.items_by_project[old].remove(wid)
                self.item_project[wid] = p
                self.items_by_project[p].append(wid)

        # generator state
        self.t = (START_2022 + rng.randrange(0, 86400 * 30)) * TICKS + rng.randrange(TICKS)
        self.t -= self.t % 10000
        self.active = IndexedSet()
        self.active_h = IndexedSet()
        self.removed = IndexedSet()
        self.parent_of = {}
        self.key_last = {}
        self.big_pending = list(BIG_IDS)

        # the log (parallel lists)
        self.js = []        # bytes: serialized value
        self.ticks = []     # int ticks
        self.pmask = []     # project bitmask of both ends
        self.tmask = []     # type bitmask of both ends
        self.relv = []      # rel index
        self.meta = []      # tuple, see _emit
        self.length = 0
        self.generate(events)

    # -- generation -------------------------------------------------------------------------

    def _advance(self, keys, live):
        """Pick the changedDate for the next episode touching `keys`."""
        rng = self.rng
        t0 = self.t
        if live:
            now = int(time.time() * TICKS)
            if now > t0:
                t0 = now
        need = 0
        for k in keys:
            lk = self.key_last.get(k)
            if lk is not None and lk + MIN_GAP > need:
                need = lk + MIN_GAP
        if t0 == self.t and need <= t0 and rng.random() < 0.33:
            t = t0                                          # an exact tie
            d = rng.randint(min_digits(t), 7)
        else:
            if live:
                delta = MIN_GAP + int(rng.random() * 50_000)
            else:
                delta = max(MIN_GAP, int(rng.expovariate(1.0 / 6.0) * TICKS))
            t = max(t0 + delta, need)
            d = rng.randrange(8)
            g = 10 ** (7 - d)
            t = -(-t // g) * g
        self.t = t
        return t, fmt_ticks(t, d)

    def _pick_item(self, project=None):
        rng = self.rng
        if self.big_pending and rng.random() < 0.002:
            return self.big_pending.pop()
        if rng.random() < 0.0005:
            return BIG_IDS[int(rng.random() * len(BIG_IDS))]
        if project is None:
            lst = self.all_items
        else:
            lst = self.items_by_project[project]
        return lst[int(rng.random() * len(lst))]

    def _pick_pair(self):
        rng = self.rng
        s = self._pick_item()
        sp = self.item_project[s]
        if len(self.projects) > 1 and rng.random() < 0.15:
            others = [p for p in range(len(self.projects)) if p != sp and self.items_by_project[p]]
            tp = others[int(rng.random() * len(others))] if others else sp
        else:
            tp = sp
        t = self._pick_item(tp)
        return s, t

    def _new_link(self):
        """Choose a new (currently inactive) link key."""
        rng = self.rng
        for _ in range(20):
            r = rng.random()
            rel = 0 if r < 0.5 else (1 if r < 0.75 else (2 if r < 0.9 else 3))
            s, t = self._pick_pair()
            if s == t:
                continue
            k = (rel, s, t)
            if k in self.active:
                continue
            if rel == HIERARCHY and t in self.parent_of:
                continue
            return k
        return None

    def _state_create(self, k):
        self.active.add(k)
        self.removed.discard(k)
        if k[0] == HIERARCHY:
            self.active_h.add(k)
            self.parent_of[k[2]] = k[1]

    def _state_remove(self, k):
        self.active.discard(k)
        self.removed.add(k)
        if k[0] == HIERARCHY:
            self.active_h.discard(k)
            if self.parent_of.get(k[2]) == k[1]:
                del self.parent_of[k[2]]

    def generate(self, n, live=False):
        """Append exactly n events (live=True: dated from now on)."""
        rng = self.rng
        with self.lock:
            target = self.length + n
            while self.length < target:
                room = target - self.length
                r = rng.random()
                if r < 0.12 and room >= 2 and len(self.active_h):
                    # re-parent: remove old parent link and create the new one, same changedDate
                    old = self.active_h.choice(rng)
                    child = old[2]
                    newk = None
                    for _ in range(10):
                        if rng.random() < 0.2:
                            np_ = self._pick_item()
                        else:
                            np_ = self._pick_item(self.item_project[child])
                        if np_ != child and np_ != old[1] and (HIERARCHY, np_, child) not in self.active:
                            newk = (HIERARCHY, np_, child)
                            break
                    if newk is None:
                        continue
                    t, ds = self._advance((old, newk), live)
                    w = rng.random()
                    self._state_remove(old)
                    self._emit(old, REMOVE, t, ds, wrong=(w < 0.35))
                    self._state_create(newk)
                    self._emit(newk, CREATE, t, ds, wrong=(0.35 <= w < 0.5))
                elif r < 0.20 and room >= 2:
                    # flap: create and remove the same link right after (same batch)
                    k = self._new_link()
                    if k is None:
                        continue
                    self._change(k, CREATE, live)
                    self._change(k, REMOVE, live)
                elif r < 0.38 and len(self.active):
                    self._change(self.active.choice(rng), REMOVE, live)
                elif r < 0.48 and len(self.removed):
                    k = self.removed.choice(rng)
                    if k[0] == HIERARCHY and k[2] in self.parent_of:
                        continue
                    self._change(k, CREATE, live)
                else:
                    k = self._new_link()
                    if k is None:
                        continue
                    self._change(k, CREATE, live)
        return self.length

    def _change(self, k, op, live):
        """One change of one link: its date, the state, the event."""
        t, ds = self._advance((k,), live)
        if op == CREATE:
            self._state_create(k)
        else:
            self._state_remove(k)
        self._emit(k, op, t, ds)

    def _emit(self, k, op, t, ds, wrong=False):
        """Serialize and append one event. meta = (rel, src, tgt, changedDate, op, isActive sent,
        shape, identity (-1 null, -2 absent, -3 not carried), comment (-1 null, -2 absent),
        linkType state, sourceProjectId state, targetProjectId state, ascii-escaped comment)
        where a state is 2 present, 1 null, 0 absent."""
        rng = self.rng
        idx = self.length
        rel, s, tg = k
        self.key_last[k] = t
        is_active = (op == CREATE) != wrong
        m10 = idx % 10
        if wrong:
            shape = FLAT_FULL if m10 in (3, 7) else NESTED
        elif m10 == 0:
            shape = FLAT
        elif m10 in (3, 7):
            shape = FLAT_FULL
        else:
            shape = NESTED
        sp, tp = self.item_project[s], self.item_project[tg]
        act = "true" if is_active else "false"
        if shape == FLAT:
            j = '{"rel":"%s","sourceId":%d,"targetId":%d,"changedDate":"%s","isActive":%s}' % (
                RELS[rel], s, tg, ds, act)
            meta = (rel, s, tg, ds, op, is_active, shape, -3, -2, 0, 0, 0, False)
        else:
            # optional fields: 0 absent, 1 null, 2 present
            r = rng.random()
            lt_state = 0 if r < 0.04 else (1 if r < 0.08 else 2)
            r = rng.random()
            ident = -2 if r < 0.03 else (-1 if r < 0.06 else int(rng.random() * len(self.identities)))
            r = rng.random()
            if r < 0.05:
                com = -2
            elif r < 0.10:
                com = -1
            elif r < 0.55:
                com = len(self.comments)          # "" (empty)
            else:
                com = int(rng.random() * len(self.comments))
            asc = rng.random() < 0.3
            r = rng.random()
            sps = 0 if r < 0.04 else (1 if r < 0.07 else 2)
            r = rng.random()
            tps = 0 if r < 0.04 else (1 if r < 0.07 else 2)
            with_op = wrong or shape == NESTED or (idx % 20) != 7
            parts = []
            if lt_state == 2:
                parts.append('"linkType":"%s"' % LINK_TYPES[rel])
            elif lt_state == 1:
                parts.append('"linkType":null')
            parts.append('"sourceId":%d,"targetId":%d,"isActive":%s,"changedDate":"%s"' % (s, tg, act, ds))
            if ident >= 0:
                parts.append('"changedBy":' + self.ident_json[ident])
            elif ident == -1:
                parts.append('"changedBy":null')
            if com >= 0:
                if com == len(self.comments):
                    parts.append('"comment":""')
                else:
                    parts.append('"comment":' + self.comment_json[com][1 if asc else 0])
            elif com == -1:
                parts.append('"comment":null')
            if with_op:
                parts.append('"changedOperation":"%s"' % OPS[op])
            if sps == 2:
                parts.append('"sourceProjectId":' + self.pid_json[sp])
            elif sps == 1:
                parts.append('"sourceProjectId":null')
            if tps == 2:
                parts.append('"targetProjectId":' + self.pid_json[tp])
            elif tps == 1:
                parts.append('"targetProjectId":null')
            if idx % 13 == 0:
                parts.append('"unknownField":{"a":[1,2,{"b":null}],"c":"ignored"}')
            body = ",".join(parts)
            if shape == FLAT_FULL:
                j = '{"rel":"%s",%s}' % (RELS[rel], body)
            elif idx % 4 == 1:
                j = '{"attributes":{%s},"rel":"%s"}' % (body, RELS[rel])
            else:
                j = '{"rel":"%s","attributes":{%s}}' % (RELS[rel], body)
            meta = (rel, s, tg, ds, op, is_active, shape, ident, com, lt_state, sps, tps,
                    asc if com >= 0 else False)
            if not with_op:
                meta = meta[:6] + (shape | 0x10,) + meta[7:]   # flag: no changedOperation sent
        self.js.append(j.encode())
        self.ticks.append(t)
        self.pmask.append((1 << sp) | (1 << tp))
        self.tmask.append((1 << self.item_type[s]) | (1 << self.item_type[tg]))
        self.relv.append(rel)
        self.meta.append(meta)
        self.length = idx + 1

    # -- views --------------------------------------------------------------------------------

    def event_dict(self, i):
        rel, s, tg, ds, op, act, shape, ident, com, lts, sps, tps, asc = self.meta[i]
        no_op = bool(shape & 0x10)
        shape &= 0x0F
        sp, tp = self.item_project[s], self.item_project[tg]
        if ident >= 0:
            idn = self.identities[ident]
            cb = {"id": idn["id"], "uniqueName": idn["uniqueName"], "displayName": idn["displayName"]}
        else:
            cb = None
        if com >= 0:
            comment = "" if com == len(self.comments) else self.comments[com]
        else:
            comment = None
        return {
            "index": i,
            "organization": self.org,
            "rel": RELS[rel],
            "linkType": LINK_TYPES[rel] if lts == 2 else None,
            "sourceId": s,
            "targetId": tg,
            "changedDate": ds,
            "ticks": self.ticks[i],
            "op": OPS[op],
            "isActive": act,
            "changedOperationSent": shape != FLAT and not no_op,
            "changedBy": cb,
            "comment": comment,
            "sourceProjectId": self.project_ids[sp] if sps == 2 else None,
            "targetProjectId": self.project_ids[tp] if tps == 2 else None,
            "sourceProject": self.projects[sp],
            "targetProject": self.projects[tp],
            "sourceProjectGuid": self.project_ids[sp],
            "targetProjectGuid": self.project_ids[tp],
            "sourceType": WORK_ITEM_TYPES[self.item_type[s]],
            "targetType": WORK_ITEM_TYPES[self.item_type[tg]],
            "shape": SHAPES[shape],
        }

    def scan(self, pos, project=None, types_mask=None, rels=None, start_ticks=None,
             batch_size=1000, window=None, n=None):
        """Return (indices-or-slice, new_pos, reached_end). Bounded scan window."""
        if n is None:
            n = self.length
        if start_ticks is not None:
            pos = max(pos, bisect.bisect_right(self.ticks, start_ticks, 0, n))
        if pos >= n:
            return (n, n), n, True
        if project is None and types_mask is None and rels is None:
            end = min(n, pos + batch_size)
            return (pos, end), end, end >= n
        if window is None:
            window = 20 * batch_size
        limit = min(n, pos + window)
        pm, tm, rv = self.pmask, self.tmask, self.relv
        pbit = (1 << project) if project is not None else None
        out = []
        i = pos
        while i < limit:
            if (pbit is None or pm[i] & pbit) and (types_mask is None or tm[i] & types_mask) \
                    and (rels is None or rv[i] in rels):
                out.append(i)
                if len(out) >= batch_size:
                    i += 1
                    break
            i += 1
        return out, i, i >= n


# ---------------------------------------------------------------------------------------------
# Faults: kind -> function(handler, fault, produce) ; produce() -> (status, headers, body)
# A function must send a complete response (or deliberately break the connection).


def _fault_status(h, f, produce):
    code = int(f.get("status", 500))
    bodykind = f.get("body", "json")
    headers = dict(f.get("headers") or {})
    if bodykind == "html":
        body = ("<html><head><title>Error %d</title></head><body><h1>%d</h1>%s</body></html>"
                % (code, code, f.get("message", "Service Unavailable"))).encode()
        ctype = "text/html; charset=utf-8"
    elif bodykind == "empty":
        body, ctype = b"", None
    elif bodykind == "normal":
        st, hd, body = produce()
        if code != 200:
            _broken(h)
        hd.update(headers)
        h.send_raw(code, hd, body)
        return
    else:
        body = error_body(f.get("message", "Simulated failure %d" % code),
                          f.get("typeKey", "SimulatedException"))
        ctype = "application/json; charset=utf-8"
    if ctype:
        headers.setdefault("Content-Type", ctype)
    h.send_raw(code, headers, body)


def _fault_html203(h, f, produce):
    h.send_signin(203)


def _fault_redirect(h, f, produce):
    loc = f.get("location", "https://login.microsoftonline.invalid/oauth2/authorize")
    if loc == "trap":               # the same request on the trap listener (--trap-listen)
        loc = (h.state.trap_url or "http://127.0.0.2:1") + h.path
    h.send_raw(int(f.get("status", 302)),
               {"Location": loc, "Content-Type": "text/html; charset=utf-8"},
               b"<html><body>Object moved</body></html>")


def _fault_html200(h, f, produce):
    h.send_raw(200, {"Content-Type": "text/html; charset=utf-8"}, SIGNIN_HTML)


def _fault_delay(h, f, produce):
    time.sleep(float(f.get("seconds", 1.0)))
    st, hd, body = produce()
    h.send_raw(st, hd, body)


def _fault_headers(h, f, produce):
    st, hd, body = produce()
    hd.update(f.get("headers") or {})
    h.send_raw(st, hd, body)


def _broken(h):
    """Mark the logged request as not having delivered a usable batch."""
    if h._entry is not None:
        h._entry["valid_batch"] = False


def _fault_reset(h, f, produce):
    h._aborted = True
    if f.get("when", "before") == "mid":
        st, hd, body = produce()
        _broken(h)
        h.send_raw(st, hd, body[: max(1, len(body) // 2)], content_length=len(body), flush=True)
    h.abort_connection(rst=True)


def _fault_truncate(h, f, produce):
    h._aborted = True
    st, hd, body = produce()
    _broken(h)
    h.send_raw(st, hd, body[: len(body) // 2], content_length=len(body), flush=True)
    h.abort_connection(rst=False)


def _fault_badjson(h, f, produce):
    st, hd, body = produce()
    _broken(h)
    if hd.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
        del hd["Content-Encoding"]
    bad = body[: len(body) // 2] + b'{"values":[}'
    h.send_raw(200, {"Content-Type": "application/json; charset=utf-8"}, bad)


def _fault_overlap(h, f, produce):
    """Serve the batch starting `events` log positions earlier (replays events)."""
    st, hd, body = produce(back=int(f.get("events", 10)))
    h.send_raw(st, hd, body)


def _fault_stall(h, f, produce):
    """A non-final batch whose token does not advance."""
    st, hd, body = produce(stall=True)
    h.send_raw(st, hd, body)


def _plain_body(hd, body):
    """The identity-encoded body of a produce() answer (headers are updated)."""
    if hd.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
        del hd["Content-Encoding"]
        hd.pop("Vary", None)
    return body


def _fault_drip(h, f, produce):
    """Headers at once, then the body in `pieces` pieces spread over `seconds` (a slow body;
    longer than the client's timeout, the client gives up)."""
    st, hd, body = produce()
    pieces = max(1, int(f.get("pieces", 20)))
    seconds = float(f.get("seconds", 2.0))
    entry = h._entry
    h.send_raw(st, hd, b"", content_length=len(body), flush=True)
    step = -(-len(body) // pieces)
    sent = 0
    try:
        for i in range(pieces):
            time.sleep(seconds / pieces)
            chunk = body[i * step:(i + 1) * step]
            if chunk:
                h.wfile.write(chunk)
                h.wfile.flush()
                sent += len(chunk)
    except OSError:
        h.close_connection = True
    if entry is not None:
        entry["bytes"] = sent
        if sent < len(body):       # the client hung up: no usable batch
            entry["valid_batch"] = False
            entry["aborted"] = True


def _fault_truncjson(h, f, produce):
    """A complete HTTP answer (right Content-Length) whose JSON document ends half-way."""
    st, hd, body = produce()
    _broken(h)
    body = _plain_body(hd, body)
    h.send_raw(200, hd, body[: max(1, len(body) // 2)])


def _mutated(h, f, produce, mutate):
    st, hd, body = produce()
    _broken(h)
    doc = json.loads(_plain_body(hd, body).decode())
    mutate(doc)
    h.send_raw(200, hd, json.dumps(doc, ensure_ascii=False).encode())


def _attrs(v):
    a = v.get("attributes") if isinstance(v, dict) else None
    return a if isinstance(a, dict) else v


def _pick_value(doc):
    vals = doc.get("values") or []
    return vals[len(vals) // 2] if vals else None


WRONG_TYPES = {
    # variant: how one document is made invalid (the whole batch must be rejected)
    "sourceId-string": lambda d: _attrs(_pick_value(d)).__setitem__("sourceId", str(_attrs(_pick_value(d))["sourceId"])),
    "targetId-float": lambda d: _attrs(_pick_value(d)).__setitem__("targetId", _attrs(_pick_value(d))["targetId"] + 0.5),
    "sourceId-zero": lambda d: _attrs(_pick_value(d)).__setitem__("sourceId", 0),
    "targetId-huge": lambda d: _attrs(_pick_value(d)).__setitem__("targetId", 2147483648),
    "changedDate-number": lambda d: _attrs(_pick_value(d)).__setitem__("changedDate", 1700000000),
    "changedDate-local": lambda d: _attrs(_pick_value(d)).__setitem__("changedDate", "2024-03-01 10:00:00"),
    "rel-number": lambda d: _pick_value(d).__setitem__("rel", 7),
    "isActive-string": lambda d: _attrs(_pick_value(d)).__setitem__("isActive", "true"),
    "changedOperation-number": lambda d: _attrs(_pick_value(d)).__setitem__("changedOperation", 1),
    "changedOperation-unknown": lambda d: _attrs(_pick_value(d)).__setitem__("changedOperation", "update"),
    "changedBy-string": lambda d: _attrs(_pick_value(d)).__setitem__("changedBy", "ana@example.com"),
    "comment-number": lambda d: _attrs(_pick_value(d)).__setitem__("comment", 42),
    "projectId-not-guid": lambda d: _attrs(_pick_value(d)).__setitem__("sourceProjectId", "not-a-guid"),
    "attributes-array": lambda d: _pick_value(d).__setitem__("attributes", [1, 2]),
    "value-string": lambda d: d["values"].__setitem__(len(d["values"]) // 2, "a string"),
    "values-object": lambda d: d.__setitem__("values", {"0": d["values"][0]}),
    "isLastBatch-string": lambda d: d.__setitem__("isLastBatch", "false"),
    "continuationToken-array": lambda d: d.__setitem__("continuationToken", ["x"]),
    "nextLink-number": lambda d: (d.pop("continuationToken", None), d.__setitem__("nextLink", 12345)),
    "body-array": None,
}


def _fault_wrongtypes(h, f, produce):
    """A 200 whose JSON has a field of the wrong type (`variant`, see WRONG_TYPES)."""
    variant = f.get("variant", "sourceId-string")
    if variant == "body-array":
        st, hd, body = produce()
        _broken(h)
        doc = json.loads(_plain_body(hd, body).decode())
        h.send_raw(200, hd, json.dumps(doc.get("values", []), ensure_ascii=False).encode())
        return
    _mutated(h, f, produce, WRONG_TYPES[variant])


NULLS = {
    "rel": lambda d: _pick_value(d).__setitem__("rel", None),
    "sourceId": lambda d: _attrs(_pick_value(d)).__setitem__("sourceId", None),
    "targetId": lambda d: _attrs(_pick_value(d)).__setitem__("targetId", None),
    "changedDate": lambda d: _attrs(_pick_value(d)).__setitem__("changedDate", None),
    "operation": lambda d: (_attrs(_pick_value(d)).__setitem__("changedOperation", None),
                            _attrs(_pick_value(d)).__setitem__("isActive", None)),
    "value": lambda d: d["values"].__setitem__(len(d["values"]) // 2, None),
    "values": lambda d: d.__setitem__("values", None),
    "token": lambda d: (d.__setitem__("continuationToken", None), d.__setitem__("nextLink", None)),
}


def _fault_nulls(h, f, produce):
    """A 200 where a required field (`variant`, see NULLS) is null: the batch must be rejected.
    (Optional fields that are null or absent are part of the normal data set.)"""
    _mutated(h, f, produce, NULLS[f.get("variant", "sourceId")])


def _write_head(h, status, headers):
    """Status line and headers without Content-Length (for a chunked answer); logs the request."""
    reason = h.responses.get(status, ("Unknown",))[0]
    headers = dict(headers)
    headers.setdefault("ActivityId", str(uuid.uuid4()))
    headers.setdefault("Date", h.date_time_string())
    lines = ["HTTP/1.1 %d %s\r\n" % (status, reason)] + ["%s: %s\r\n" % kv for kv in headers.items()]
    h._status, h._bytes, h._activity = status, 0, headers["ActivityId"]
    entry = h._entry
    h._finish_log()
    h.wfile.write(("".join(lines) + "\r\n").encode("latin-1"))
    return entry


def _fault_huge(h, f, produce):
    """A 200 body of `bytes` bytes (default 64 MiB): with Content-Length (default), chunked
    without a length (`chunked`: true), or a small gzip stream that inflates to that size
    (`gzip`: true). The log entry gets sent_bytes (what the client took before it hung up)."""
    total = int(f.get("bytes", 64 << 20))
    chunked = bool(f.get("chunked")) or bool(f.get("gzip"))
    use_gzip = bool(f.get("gzip"))
    _broken(h)
    h._aborted = True
    hd = {"Content-Type": "application/json; charset=utf-8"}
    if use_gzip:
        hd["Content-Encoding"] = "gzip"
    if chunked:
        hd["Transfer-Encoding"] = "chunked"
    else:
        hd["Content-Length"] = str(total)
    h.close_connection = True
    hd["Connection"] = "close"
    entry = _write_head(h, 200, hd)
    sent = 0
    comp = zlib.compressobj(1, zlib.DEFLATED, 31) if use_gzip else None
    block = b'{"values":[' + b" " * (65536 - 11)
    produced = 0
    try:
        while produced < total:
            data = block if produced == 0 else b" " * 65536
            data = data[: total - produced]
            produced += len(data)
            if comp:
                data = comp.compress(data)
                if produced >= total:
                    data += comp.flush()
                if not data:
                    continue
            if chunked:
                h.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            else:
                h.wfile.write(data)
            sent += len(data)
        if chunked:
            h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
        complete = True
    except OSError:
        complete = False
    if entry is not None:
        entry["sent_bytes"] = sent
        entry["body_complete"] = complete
        entry["huge_done"] = True
    h.close_connection = True


def _fault_ratelimit(h, f, produce):
    """The server's throttling headers (X-RateLimit-*, optionally Retry-After) on a normal 200
    (`status`: 429 answers a JSON throttling error instead)."""
    code = int(f.get("status", 200))
    hd_extra = {
        "X-RateLimit-Resource": "ReleaseManagement/Core",
        "X-RateLimit-Delay": str(f.get("delay", 1.0)),
        "X-RateLimit-Limit": str(f.get("limit", 200)),
        "X-RateLimit-Remaining": str(f.get("remaining", 100)),
        "X-RateLimit-Reset": str(int(time.time() + float(f.get("reset_in", 300)))),
    }
    if f.get("retry_after") is not None:
        hd_extra["Retry-After"] = str(f["retry_after"])
    if code == 200:
        st, hd, body = produce()
        hd.update(hd_extra)
        h.send_raw(200, hd, body)
        return
    hd_extra["Content-Type"] = "application/json; charset=utf-8"
    h.send_raw(code, hd_extra, error_body("TF400733: The request has been canceled: Request was "
                                          "blocked due to exceeding usage of resource 'Core'.",
                                          "RequestBlockedException"))


def _fault_dupboundary(h, f, produce):
    """The batch plus the first `events` values of the next batch (which serves them again):
    the same values on both sides of a batch boundary."""
    st, hd, body = produce(extra=int(f.get("events", 10)))
    h.send_raw(st, hd, body)


FAULTS = {
    "status": _fault_status,
    "html203": _fault_html203,
    "redirect": _fault_redirect,
    "html200": _fault_html200,
    "delay": _fault_delay,
    "headers": _fault_headers,
    "reset": _fault_reset,
    "truncate": _fault_truncate,
    "badjson": _fault_badjson,
    "overlap": _fault_overlap,
    "stall": _fault_stall,
    "drip": _fault_drip,
    "truncjson": _fault_truncjson,
    "wrongtypes": _fault_wrongtypes,
    "nulls": _fault_nulls,
    "huge": _fault_huge,
    "ratelimit": _fault_ratelimit,
    "dupboundary": _fault_dupboundary,
}

SIGNIN_HTML = (b"<!DOCTYPE html>\n<html><head><title>Azure DevOps Services | Sign In</title></head>"
               b"<body><form method=\"post\" action=\"https://login.microsoftonline.invalid/\">"
               b"<p>Sign in to your account</p></form></body></html>\n")


def error_body(message, type_key, type_name=None, error_code=0, event_id=3000):
    return jdump({"$id": "1", "innerException": None, "message": message,
                  "typeName": type_name or ("Microsoft.TeamFoundation.Sim.%s, Microsoft.TeamFoundation.Sim"
                                            % type_key),
                  "typeKey": type_key, "errorCode": error_code, "eventId": event_id}).encode()


def _api_version_ok(v, max_v):
    m = re.match(r"^(\d+)\.(\d+)(-preview(\.\d+)?)?$", v or "")
    if not m:
        return False, "The API version '%s' is not in a valid format." % v
    num = (int(m.group(1)), int(m.group(2)))
    if num < (2, 2):
        return False, "The requested REST API version of %s is out of range for this server." % v
    if num > (7, 2) or (num == (7, 2) and not m.group(3)):
        return False, "The requested REST API version of %s is out of range for this server." % v
    if max_v and num > max_v:
        return False, ("The requested REST API version of %s is out of range for this server. "
                       "The latest REST API version this server supports is %d.%d." % (v, max_v[0], max_v[1]))
    return True, None


# ---------------------------------------------------------------------------------------------
# The server


class SimState:
    def __init__(self, ds, org_prefix, batch_size=1000, auth="none", gzip_ok=True,
                 omit_token_ratio=0.33, nextlink_base="http://preferred.invalid:1",
                 nextlink_api_version=None, latency=0.0, max_api_version=None,
                 auth_fail=203, token_pad=0):
        self.ds = ds
        self.org_prefix = [s.casefold() for s in org_prefix.strip("/").split("/") if s]
        self.org_path = org_prefix.strip("/")
        self.batch_size = batch_size
        self.set_auth(auth)
        self.gzip = gzip_ok
        self.omit_token_ratio = omit_token_ratio
        self.nextlink_base = nextlink_base.rstrip("/")
        self.nextlink_api_version = nextlink_api_version
        self.latency = latency
        self.max_api_version = max_api_version
        self.auth_fail = auth_fail
        self.token_pad = token_pad
        self.lock = threading.Lock()
        self.requests = []
        self.faults = []
        self.body_cache = None      # {key: (headers, log fields, body)} with --precompute
        self.trap_url = None        # "http://127.0.0.2:PORT" of the trap listener (--trap-listen)
        self.trap_requests = []     # every request the trap listener saw, with its headers
        self.chaos = None           # {"ratio", "faults", "rng"}: random faults (POST /_sim/config)

    def set_auth(self, auth):
        self.auth = auth
        if auth == "none" or not auth:
            self.expected_auth = None
        elif auth.startswith("pat:"):
            self.expected_auth = "Basic " + base64.b64encode((":" + auth[4:]).encode()).decode()
        elif auth.startswith("bearer:"):
            self.expected_auth = "Bearer " + auth[7:]
        else:
            raise ValueError("auth must be pat:X, bearer:X or none")

    def check_auth(self, header):
        if self.expected_auth is None:
            return True
        if not header:
            return False
        h = header.strip()
        if self.expected_auth.startswith("Basic "):
            if not h[:6].lower() == "basic ":
                return False
            try:
                dec = base64.b64decode(h[6:].strip(), validate=True).decode()
            except Exception:
                return False
            return dec == ":" + self.auth[4:]
        scheme, _, val = h.partition(" ")
        return scheme.lower() == "bearer" and val.strip() == self.auth[7:]

    def take_fault(self, target):
        with self.lock:
            for i, f in enumerate(self.faults):
                m = f.get("match")
                if m and m.casefold() not in target.casefold():
                    continue
                if f.get("skip", 0) > 0:
                    f["skip"] -= 1
                    return None
                cnt = f.get("count", 1)
                if cnt > 0:
                    cnt -= 1
                    f["count"] = cnt
                    if cnt == 0:
                        del self.faults[i]
                f["applied"] = f.get("applied", 0) + 1
                return dict(f)
            ch = self.chaos
            if ch and ch["faults"] and ch["rng"].random() < ch["ratio"]:
                f = dict(ch["faults"][int(ch["rng"].random() * len(ch["faults"]))])
                f["chaos"] = True
                return f
            return None

    def log(self, entry):
        with self.lock:
            entry["seq"] = len(self.requests)
            self.requests.append(entry)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format, *args):   # quiet
        pass

    # -- low level send -------------------------------------------------------------------

    def send_raw(self, status, headers, body, content_length=None, flush=True):
        st = self.state
        reason = self.responses.get(status, ("Unknown",))[0]
        hdr = ["HTTP/1.1 %d %s\r\n" % (status, reason)]
        headers = dict(headers)
        headers.setdefault("ActivityId", str(uuid.uuid4()))
        headers.setdefault("Content-Type", "application/json; charset=utf-8")
        headers["Content-Length"] = str(len(body) if content_length is None else content_length)
        headers.setdefault("Date", self.date_time_string())
        headers.setdefault("Server", "Microsoft-IIS/10.0")
        headers.setdefault("X-TFS-ProcessId", "5b2c2a5e-0000-4000-8000-000000000001")
        if self.close_connection:
            headers["Connection"] = "close"
        for k, v in headers.items():
            hdr.append("%s: %s\r\n" % (k, v))
        hdr.append("\r\n")
        data = "".join(hdr).encode("latin-1") + body
        self._status = status
        self._bytes = len(body)
        self._activity = headers.get("ActivityId")
        if self._entry is not None:
            for name, field in (("Retry-After", "retry_after"), ("X-RateLimit-Delay", "ratelimit_delay"),
                                ("X-RateLimit-Remaining", "ratelimit_remaining")):
                if name in headers:
                    self._entry[field] = headers[name]
        self._finish_log()          # before the client can see the response
        try:
            self.wfile.write(data)
            if flush:
                self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _finish_log(self):
        entry = self._entry
        if entry is None:
            return
        self._entry = None
        entry["status"] = self._status
        entry["bytes"] = self._bytes
        entry["aborted"] = self._aborted
        entry["activity_id"] = self._activity
        entry["duration"] = round(time.time() - entry["time"], 6)
        self.state.log(entry)

    def abort_connection(self, rst=True):
        self._aborted = True
        if self._status is None:
            self._finish_log()
        self.close_connection = True
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            self.connection.close()
        except OSError:
            pass
        self._aborted = True

    def send_json(self, status, obj):
        self.send_raw(status, {"Content-Type": "application/json; charset=utf-8"},
                      json.dumps(obj, ensure_ascii=False).encode())

    def send_error_json(self, status, message, type_key):
        self.send_raw(status, {}, error_body(message, type_key))

    def send_signin(self, status=203):
        self.send_raw(status, {"Content-Type": "text/html; charset=utf-8",
                               "X-TFS-FedAuthRealm": "https://app.vssps.visualstudio.com/",
                               "X-TFS-FedAuthIssuer": "https://dev.azure.com/sim/",
                               "X-VSS-ResourceTenant": "00000000-0000-0000-0000-000000000000",
                               "X-TFS-FedAuthRedirect": "https://spsprodweu5.vssps.visualstudio.com/_signin"},
                      SIGNIN_HTML)

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def _dispatch(self, method):
        self.state = self.server.state
        self._status = None
        self._bytes = 0
        self._aborted = False
        self._activity = None
        self._entry = None
        url = urlsplit(self.path)
        if getattr(self.server, "trap", False):
            self._trap(method, url)
            return
        if url.path.startswith("/_sim/"):
            try:
                self._control(method, url)
            except Exception as e:  # report control errors as 500 JSON
                self.send_json(500, {"error": repr(e)})
            return
        self._data(method, url)

    def _trap(self, method, url):
        """The second listener (--trap-listen): nothing should ever reach it. It records every
        request with all its headers (the Authorization header in particular) and then answers
        like the real server would, so that a client that follows it gets data, not an error."""
        st = self.state
        with st.lock:
            st.trap_requests.append({
                "time": time.time(), "method": method, "path": self.path,
                "host": self.headers.get("Host"),
                "authorization": self.headers.get("Authorization"),
                "headers": {k: v for k, v in self.headers.items()},
                "remote": "%s:%s" % self.client_address[:2],
            })
        if url.path.startswith("/_sim/"):
            self.send_json(404, {"error": "the trap listener serves no control endpoint"})
            return
        self._data(method, url, listener="trap")

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n > 10_000_000:
            raise ValueError("body too large")
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw.decode() or "{}")

    # -- control ----------------------------------------------------------------------------

    def _control(self, method, url):
        st = self.state
        ds = st.ds
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        p = url.path
        if p == "/_sim/append" and method == "POST":
            body = self._read_body()
            n = int(body.get("count", 1))
            length = ds.generate(n, live=body.get("live", True))
            self.send_json(200, {"log_length": length, "appended": n})
        elif p == "/_sim/events" and method == "GET":
            n = ds.length
            off = int(q.get("offset", 0))
            lim = int(q.get("limit", n))
            end = min(n, off + lim)
            evs = [ds.event_dict(i) for i in range(off, end)]
            self.send_raw(200, {}, json.dumps(evs, ensure_ascii=False).encode())
        elif p == "/_sim/requests" and method == "GET":
            since = int(q.get("since", 0))
            with st.lock:
                reqs = list(st.requests[since:])
            self.send_json(200, reqs)
        elif p == "/_sim/requests/clear" and method == "POST":
            with st.lock:
                st.requests.clear()
            self.send_json(200, {"requests": 0})
        elif p == "/_sim/faults" and method == "POST":
            body = self._read_body()
            faults = body.get("faults", [])
            for f in faults:
                if f.get("kind") not in FAULTS:
                    self.send_json(400, {"error": "unknown fault kind %r" % f.get("kind"),
                                         "kinds": sorted(FAULTS)})
                    return
            with st.lock:
                if body.get("append"):
                    st.faults.extend(faults)
                else:
                    st.faults = list(faults)
                cur = list(st.faults)
            self.send_json(200, {"faults": cur})
        elif p == "/_sim/faults" and method == "GET":
            with st.lock:
                cur = list(st.faults)
            self.send_json(200, {"faults": cur, "kinds": sorted(FAULTS)})
        elif p == "/_sim/config" and method == "POST":
            body = self._read_body()
            with st.lock:
                if "auth" in body:
                    st.set_auth(body["auth"])
                if "batch_size" in body:
                    st.batch_size = max(1, int(body["batch_size"]))
                if "omit_token_ratio" in body:
                    st.omit_token_ratio = float(body["omit_token_ratio"])
                if "gzip" in body:
                    st.gzip = bool(body["gzip"])
                if "latency" in body:
                    st.latency = float(body["latency"])
                if "auth_fail" in body:
                    st.auth_fail = int(body["auth_fail"])
                if "max_api_version" in body:
                    mv = body["max_api_version"]
                    st.max_api_version = tuple(int(x) for x in mv.split(".")) if mv else None
                if "nextlink_base" in body:
                    nb = body["nextlink_base"]
                    if nb == "trap":
                        if not st.trap_url:
                            raise ValueError("no trap listener (--trap-listen)")
                        nb = st.trap_url
                    st.nextlink_base = nb.rstrip("/")
                if "chaos" in body:
                    ch = body["chaos"]
                    if ch:
                        for f in ch.get("faults", []):
                            if f.get("kind") not in FAULTS:
                                raise ValueError("unknown fault kind %r" % f.get("kind"))
                        st.chaos = {"ratio": float(ch.get("ratio", 0.1)), "faults": list(ch.get("faults", [])),
                                    "rng": random.Random(int(ch.get("seed", 1)))}
                    else:
                        st.chaos = None
            self.send_json(200, {"ok": True})
        elif p == "/_sim/stats" and method == "GET":
            with st.lock:
                nreq = len(st.requests)
                nf = len(st.faults)
            self.send_json(200, {"log_length": ds.length, "requests": nreq, "faults": nf,
                                 "epoch": ds.epoch, "organization": ds.org,
                                 "projects": [{"name": n_, "id": i_} for n_, i_ in
                                              zip(ds.projects, ds.project_ids)],
                                 "batch_size": st.batch_size, "pid": os.getpid(),
                                 "trap_url": st.trap_url, "trap_requests": len(st.trap_requests)})
        elif p == "/_sim/trap" and method == "GET":
            with st.lock:
                reqs = list(st.trap_requests)
            self.send_json(200, reqs)
        elif p == "/_sim/trap/clear" and method == "POST":
            with st.lock:
                st.trap_requests.clear()
            self.send_json(200, {"requests": 0})
        elif p == "/_sim/token" and method == "GET":
            pos = int(q.get("pos", ds.length))
            self.send_json(200, {"token": make_token(ds.epoch, pos), "pos": pos})
        else:
            self.send_json(404, {"error": "no such control endpoint", "path": p})

    # -- data -------------------------------------------------------------------------------

    def _data(self, method, url, listener=None):
        st = self.state
        t0 = time.time()
        qraw = parse_qs(url.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in qraw.items()}
        qi = {k.casefold(): v for k, v in q.items()}
        auth_ok = st.check_auth(self.headers.get("Authorization"))
        entry = {
            "time": t0, "method": method, "path": unquote(url.path), "raw_path": url.path,
            "query": q, "token": qi.get("continuationtoken"),
            "auth_ok": auth_ok, "remote": "%s:%s" % self.client_address[:2],
            "user_agent": self.headers.get("User-Agent"),
            "accept": self.headers.get("Accept"),
            "accept_encoding": self.headers.get("Accept-Encoding"),
            "fedauth_suppress": (self.headers.get("X-TFS-FedAuthRedirect") or "").lower() == "suppress",
            "host": self.headers.get("Host"),
        }
        if listener:
            entry["listener"] = listener
        self._entry = entry
        try:
            self._data_inner(method, url, qi, auth_ok, entry)
        finally:
            self._finish_log()

    def _data_inner(self, method, url, qi, auth_ok, entry):
        st = self.state
        ds = st.ds
        if st.latency:
            time.sleep(st.latency)
        segs = [unquote(s) for s in url.path.split("/") if s != ""]
        fault = st.take_fault(url.path + "?" + url.query)
        if fault is not None:
            entry["fault"] = fault.get("kind")
        if not auth_ok:
            if st.auth_fail == 401:
                self.send_raw(401, {"WWW-Authenticate": 'Basic realm="https://dev.azure.com/"',
                                    "Content-Type": "text/html; charset=utf-8"},
                              b"<html><body>401 - Unauthorized</body></html>")
            elif 300 <= st.auth_fail < 400:
                self.send_raw(st.auth_fail, {"Location": "https://spsprodweu5.vssps.visualstudio.invalid/_signin",
                                             "Content-Type": "text/html; charset=utf-8"},
                              b"<html><body>Object moved</body></html>")
            else:
                self.send_signin(203)
            return
        # path: {org prefix}/[{project}/]_apis/wit/reporting/workitemlinks
        npfx = len(st.org_prefix)
        if len(segs) < npfx or [s.casefold() for s in segs[:npfx]] != st.org_prefix:
            self.send_error_json(404, "The resource cannot be found.", "HttpNotFound")
            return
        rest = segs[npfx:]
        tail = [s.casefold() for s in rest[-4:]]
        if tail != ["_apis", "wit", "reporting", "workitemlinks"] or len(rest) not in (4, 5):
            self.send_error_json(404, "The controller for path '%s' was not found or does not implement "
                                 "IController." % url.path, "HttpNotFound")
            return
        if method not in ("GET",):
            self.send_error_json(405, "The requested resource does not support http method '%s'."
                                 % method, "HttpMethodNotAllowed")
            return
        project = None
        if len(rest) == 5:
            pname = rest[0]
            project = ds.project_index.get(pname.strip("{}").casefold())
            if project is None:
                self.send_error_json(404, "TF200016: The following project does not exist: %s. Verify "
                                     "that the name of the project is correct and that the project "
                                     "exists on the specified Azure DevOps Server." % pname,
                                     "ProjectDoesNotExistWithNameException")
                return
            entry["project"] = ds.projects[project]
        ver = qi.get("api-version")
        ok, msg = _api_version_ok(ver, st.max_api_version)
        if ver is None:
            self.send_error_json(400, "No api-version was supplied for the \"GET\" request. The version "
                                 "must be supplied either as part of the Accept header (e.g. "
                                 "\"application/json; api-version=1.0\") or as a query parameter (e.g. "
                                 "\"?api-version=1.0\").", "VssVersionNotSpecifiedException")
            return
        if not ok:
            self.send_error_json(400, msg, "VssVersionOutOfRangeException"
                                 if "range" in msg else "VssInvalidApiVersionException")
            return
        n = ds.length
        token = qi.get("continuationtoken")
        if token is not None and token != "":
            pos = parse_token(token, ds.epoch)
            if pos is None or pos > n:
                self.send_error_json(400, "The continuation token '%s' is not valid." % token[:200],
                                     "InvalidContinuationTokenException")
                return
            start_ticks = None
        else:
            pos = 0
            start_ticks = None
            sdt = qi.get("startdatetime")
            if sdt:
                try:
                    start_ticks = parse_iso_ticks(sdt)
                except ValueError:
                    self.send_error_json(400, "The value '%s' is not a valid startDateTime." % sdt,
                                         "ArgumentException")
                    return
        types_mask = None
        if qi.get("types"):
            types_mask = 0
            want = {t.strip().casefold() for t in qi["types"].split(",") if t.strip()}
            for i, t in enumerate(WORK_ITEM_TYPES):
                if t.casefold() in want:
                    types_mask |= 1 << i
        rels = None
        if qi.get("linktypes"):
            rels = set()
            for x in qi["linktypes"].split(","):
                x = x.strip().casefold()
                for i in range(len(RELS)):
                    if x in (RELS[i].casefold(), LINK_TYPES[i].casefold()):
                        rels.add(i)
        accept_gzip = st.gzip and "gzip" in (self.headers.get("Accept-Encoding") or "").lower()

        def produce(back=0, stall=False, extra=0):
            p0 = max(0, pos - back) if back else pos
            sel, newpos, at_end = ds.scan(p0, project, types_mask, rels, start_ticks,
                                          st.batch_size, n=n)
            if isinstance(sel, tuple):
                vals = ds.js[sel[0]:sel[1]]
            else:
                js = ds.js
                vals = [js[i] for i in sel]
            if extra and not at_end:
                # the first values of the next batch, served again there (token unchanged)
                sel2, _, _ = ds.scan(newpos, project, types_mask, rels, None, extra, n=n)
                vals = list(vals) + (ds.js[sel2[0]:sel2[1]] if isinstance(sel2, tuple)
                                     else [ds.js[i] for i in sel2])
                entry["extra_values"] = len(vals) - (len(sel) if not isinstance(sel, tuple)
                                                     else sel[1] - sel[0])
            if stall:
                newpos, at_end = pos, False
            tok = make_token(ds.epoch, newpos, st.token_pad)
            entry["events"] = len(vals)
            # "broken": the test knows the client cannot use this answer (it times out first)
            entry["valid_batch"] = not (fault is not None and fault.get("broken"))
            entry["next_token"] = tok
            entry["is_last"] = at_end
            entry["pos"] = p0
            entry["next_pos"] = newpos
            nl_q = "continuationToken=%s&api-version=%s" % (
                quote(tok, safe=""), quote(st.nextlink_api_version or ver, safe=""))
            if qi.get("types"):
                nl_q += "&types=" + quote(qi["types"], safe=",")
            if qi.get("linktypes"):
                nl_q += "&linkTypes=" + quote(qi["linktypes"], safe=",")
            nl = "%s/%s/%s_apis/wit/reporting/workItemLinks?%s" % (
                st.nextlink_base, st.org_path,
                (quote(ds.projects[project], safe="") + "/") if project is not None else "", nl_q)
            omit = st.omit_token_ratio > 0 and \
                (zlib.crc32(tok.encode()) % 1000) < st.omit_token_ratio * 1000
            entry["token_in_body"] = not omit
            parts = [b'{"values":[', b",".join(vals), b'],"nextLink":', jdump(nl).encode()]
            if not omit:
                parts.append(b',"continuationToken":' + jdump(tok).encode())
            parts.append(b',"isLastBatch":true}' if at_end else b',"isLastBatch":false}')
            body = b"".join(parts)
            hd = {"Content-Type": "application/json; charset=utf-8"}
            if accept_gzip:
                body = gzip.compress(body, compresslevel=1, mtime=0)
                hd["Content-Encoding"] = "gzip"
                hd["Vary"] = "Accept-Encoding"
            return 200, hd, body

        if fault is not None:
            FAULTS[fault["kind"]](self, fault, produce)
            if fault.get("broken"):         # the test knows the client cannot use this answer
                entry["valid_batch"] = False
            return
        # --precompute: unfiltered collection-wide batches are served from memory (filled at
        # startup by precompute_chain(), exactly what produce() returned for the same inputs).
        key = None
        if st.body_cache is not None and project is None and types_mask is None and rels is None \
                and start_ticks is None and not qi.get("types") and not qi.get("linktypes"):
            key = (pos, n, ver, accept_gzip, st.batch_size, st.token_pad, st.omit_token_ratio,
                   st.nextlink_base, st.nextlink_api_version)
            hit = st.body_cache.get(key)
            if hit is not None:
                entry.update(hit[1])
                self.send_raw(200, hit[0], hit[2])
                return
        st_, hd, body = produce()
        if key is not None and st_ == 200:
            st.body_cache[key] = (dict(hd), {k: entry[k] for k in CACHED_ENTRY_FIELDS if k in entry},
                                  body)
        self.send_raw(st_, hd, body)


CACHED_ENTRY_FIELDS = ("events", "valid_batch", "next_token", "is_last", "pos", "next_pos",
                       "token_in_body")


def precompute_chain(srv, api_version="7.1", timeout=3600):
    """--precompute: walk the collection-wide chain once through the running server (as a client
    would, with gzip when it is served) so that every body is built once, at startup; the walk is
    then dropped from the request log."""
    import http.client
    st = srv.state
    st.body_cache = {}
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"Accept-Encoding": "gzip" if st.gzip else "identity"}
    if st.expected_auth:
        headers["Authorization"] = st.expected_auth
    tok, n_req, deadline = None, 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = "api-version=" + quote(api_version, safe="")
        if tok:
            q += "&continuationToken=" + quote(tok, safe="")
        conn.request("GET", "/%s/_apis/wit/reporting/workitemlinks?%s" % (st.org_path, q),
                     headers=headers)
        r = conn.getresponse()
        r.read()
        n_req += 1
        with st.lock:
            last = st.requests[-1] if st.requests else {}
        if r.status != 200 or last.get("is_last") or not last.get("next_token"):
            break
        tok = last["next_token"]
    conn.close()
    with st.lock:
        st.requests.clear()
    return n_req


class SimServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    trap = False

    def __init__(self, addr, state, trap=False):
        self.state = state
        self.trap = trap
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)

    def enable_tls(self, cert, key):
        """Serve HTTPS with this certificate; the handshake runs in the handler's thread."""
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        # A client that refuses our certificate, or hangs up mid-answer, is part of the tests.
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, EOFError)):
            return
        super().handle_error(request, client_address)


def build_arg_parser():
    ap = argparse.ArgumentParser(description="Reporting Work Item Links API simulator")
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--items", type=int, default=0, help="number of work items (default events/4, min 50)")
    ap.add_argument("--org", default="fabrikam", help="path prefix, e.g. fabrikam or tfs/DefaultCollection")
    ap.add_argument("--projects", default="Fabrikam-Fiber,Contoso Web,Ωmega.Proj")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--auth", default="none", help="pat:SECRET | bearer:TOKEN | none")
    ap.add_argument("--auth-fail", type=int, default=203, help="status for a bad credential: 203, 401, 302")
    ap.add_argument("--no-gzip", action="store_true")
    ap.add_argument("--omit-token-ratio", type=float, default=0.33,
                    help="share of batches whose body lacks continuationToken")
    ap.add_argument("--nextlink-base", "--nextlink-host", dest="nextlink_base",
                    default="http://preferred.invalid:1")
    ap.add_argument("--nextlink-api-version", default=None)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every data request")
    ap.add_argument("--max-api-version", default=None, help="e.g. 5.0 to act like Server 2019")
    ap.add_argument("--token-pad", type=int, default=0, help="pad tokens with N characters")
    ap.add_argument("--precompute", action="store_true",
                    help="build the bodies of the unfiltered collection-wide chain (api-version "
                         "--precompute-api-version, gzip unless --no-gzip) at startup and serve "
                         "them from memory (benchmarks: the simulator then costs almost nothing)")
    ap.add_argument("--precompute-api-version", default="7.1")
    ap.add_argument("--trap-listen", default=None,
                    help="also listen on this address (e.g. 127.0.0.2, port 0) and record every "
                         "request with its headers (GET /_sim/trap); --nextlink-base trap points "
                         "nextLink there")
    ap.add_argument("--trap-port-file", default=None)
    ap.add_argument("--tls-cert", default=None, help="serve HTTPS with this PEM certificate")
    ap.add_argument("--tls-key", default=None, help="its PEM private key")
    return ap


def main(argv=None):
    args = build_arg_parser().parse_args(argv)
    projects = [p.strip() for p in args.projects.split(",") if p.strip()]
    t0 = time.time()
    ds = Dataset(seed=args.seed, events=args.events, org=args.org.strip("/"), projects=projects,
                 n_items=args.items or None)
    gen = time.time() - t0
    mv = tuple(int(x) for x in args.max_api_version.split(".")) if args.max_api_version else None
    state = SimState(ds, args.org, batch_size=args.batch_size, auth=args.auth,
                     gzip_ok=not args.no_gzip, omit_token_ratio=args.omit_token_ratio,
                     nextlink_base=args.nextlink_base, nextlink_api_version=args.nextlink_api_version,
                     latency=args.latency, max_api_version=mv, auth_fail=args.auth_fail,
                     token_pad=args.token_pad)
    srv = SimServer((args.listen, args.port), state)
    port = srv.server_address[1]
    trap = None
    if args.trap_listen:
        trap = SimServer((args.trap_listen, 0), state, trap=True)
        tport = trap.server_address[1]
        state.trap_url = "http://%s:%d" % (args.trap_listen if ":" not in args.trap_listen
                                           else "[%s]" % args.trap_listen, tport)
        if args.nextlink_base == "trap":
            state.nextlink_base = state.trap_url
        threading.Thread(target=trap.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        if args.trap_port_file:
            tmp = args.trap_port_file + ".tmp.%d" % os.getpid()
            with open(tmp, "w") as f:
                f.write("%d\n" % tport)
            os.replace(tmp, args.trap_port_file)
    elif args.nextlink_base == "trap":
        raise SystemExit("--nextlink-base trap needs --trap-listen")
    if args.precompute:
        t1 = time.time()
        th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        th.start()
        nb = precompute_chain(srv, args.precompute_api_version)
        srv.shutdown()
        th.join()
        sys.stderr.write("simulator: precomputed %d bodies in %.2fs\n" % (nb, time.time() - t1))
    if args.tls_cert:
        srv.enable_tls(args.tls_cert, args.tls_key or args.tls_cert)
    if args.port_file:
        tmp = args.port_file + ".tmp.%d" % os.getpid()
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    sys.stderr.write("simulator: %d events generated in %.2fs, listening on %s:%d\n"
                     % (ds.length, gen, args.listen, port))
    sys.stderr.flush()
    import signal
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown, daemon=True).start())
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    srv.server_close()
    sys.stderr.flush()
    os._exit(0)     # skip freeing millions of objects one by one


if __name__ == "__main__":
    sys.exit(main())
