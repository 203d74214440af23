#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What `meson install` ships, checked offline (no service is started):

- the generated witlinkd.service and witlinkd@.service: `systemd-analyze verify --man=no` prints
  nothing (ExecStart pointed at the built binary, as verify checks that it exists), and
  `systemd-analyze security --offline=true` rates the exposure at most 1.5; the directives the
  daemon's contract relies on are present;
- systemd/witlinkd.catalog: `journalctl --update-catalog` indexes it, and it documents every
  MESSAGE_ID of include/log.h and nothing else, each with Subject, Defined-By: witlinkd, Support;
- the man pages: built, rendered without warnings, witlinkd(8) names every option of --help;
- `meson install --destdir` puts the binary, both units, the catalog, the config and both man
  pages where systemd and man look for them, and installing again keeps an edited config."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402
from harness import Skip, check, log  # noqa: E402

MAX_EXPOSURE = 1.5
UNITS = ["witlinkd.service", "witlinkd@.service"]
REQUIRED = [
    r"^Type=notify$", r"^WatchdogSec=\d+", r"^ExecReload=/bin/kill -HUP \$MAINPID$",
    r"^Restart=on-failure$", r"^RestartPreventExitStatus=78$", r"^LoadCredential=\S+",
    r"^DynamicUser=yes$", r"^ExecStart=\S+/witlinkd -c \S+\.conf$",
]


def source_file(rel):
    return os.path.join(os.environ.get("SRCDIR") or harness.REPO_DIR, rel)


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace", timeout=kw.pop("timeout", 120), **kw)


def build_options(builddir):
    with open(os.path.join(builddir, "meson-info", "intro-buildoptions.json")) as f:
        return {o["name"]: o["value"] for o in json.load(f)}


def check_units(builddir, binary, tmp):
    if not shutil.which("systemd-analyze"):
        raise Skip("systemd-analyze is not installed")
    udir = os.path.join(tmp, "units")
    os.makedirs(udir)
    paths = []
    for u in UNITS:
        src = os.path.join(builddir, u)
        check(os.path.isfile(src), "meson generated %s" % u)
        text = open(src).read()
        for pat in REQUIRED:
            m = re.search(pat, text, re.M)
            check(m, "%s has %s" % (u, m.group(0) if m else pat))
        check(not re.search(r"@[a-z_]+@", text), "%s has no unsubstituted @variable@" % u)
        # verify checks that ExecStart's binary exists: point it at the one just built.
        text = re.sub(r"^ExecStart=\S+", "ExecStart=" + binary, text, flags=re.M)
        path = os.path.join(udir, u)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)

    r = run(["systemd-analyze", "verify", "--man=no"] + paths, cwd=udir)
    out = (r.stdout + r.stderr).strip()
    log("systemd-analyze verify --man=no %s: exit %d, output: %s" % (" ".join(UNITS), r.returncode,
                                                                     out or "(none)"))
    check(r.returncode == 0 and not out, "systemd-analyze verify prints nothing")

    for path in paths:
        u = os.path.basename(path)
        r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", path], cwd=udir)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
        check(m is not None, "systemd-analyze security --offline=true rates %s" % u)
        left = [line.strip() for line in r.stdout.splitlines() if line.startswith("✗")]
        log("systemd-analyze security --offline=true %s: exposure %s; open items:\n    %s"
            % (u, m.group(1), "\n    ".join(left)))
        check(float(m.group(1)) <= MAX_EXPOSURE, "%s: exposure %s <= %.1f" % (u, m.group(1), MAX_EXPOSURE))


def check_catalog(tmp):
    ids = {}
    with open(source_file("include/log.h")) as f:
        for name, mid in re.findall(r'#define MESSAGE_ID_(\w+) "([0-9a-f]{32})"', f.read()):
            ids[mid] = name
    check(len(ids) >= 10, "include/log.h defines %d MESSAGE_IDs" % len(ids))
    text = open(source_file("systemd/witlinkd.catalog")).read()
    entries = {}
    for m in re.finditer(r"^-- ([0-9a-f]{32})\n(.*?)(?=^-- |\Z)", text, re.S | re.M):
        head, _, body = m.group(2).partition("\n\n")
        fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
        entries[m.group(1)] = (fields, body.strip())
    missing = sorted(ids[i] for i in ids if i not in entries)
    check(not missing, "the catalog documents every MESSAGE_ID of include/log.h%s"
          % (" (missing: %s)" % missing if missing else ""))
    stale = sorted(i for i in entries if i not in ids)
    check(not stale, "the catalog has no entry that include/log.h lacks %s" % (stale or ""))
    for mid, (fields, body) in entries.items():
        check(fields.get("Subject") and fields.get("Defined-By") == "witlinkd" and fields.get("Support")
              and len(body) > 80, "catalog entry %s (%s) has Subject, Defined-By: witlinkd, Support "
              "and an explanation" % (mid, ids.get(mid)))

    if not shutil.which("journalctl"):
        log("journalctl not installed; catalog index not checked")
        return
    root = os.path.join(tmp, "catroot")
    os.makedirs(os.path.join(root, "usr/lib/systemd/catalog"))
    shutil.copy(source_file("systemd/witlinkd.catalog"), os.path.join(root, "usr/lib/systemd/catalog"))
    r = run(["journalctl", "--root=" + root, "--update-catalog"])
    check(r.returncode == 0 and not r.stderr.strip(),
          "journalctl --update-catalog indexes the catalog cleanly %s" % r.stderr.strip())
    r = run(["journalctl", "--root=" + root, "--list-catalog", "--no-pager"])
    listed = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    check(set(listed) == set(ids), "journalctl --list-catalog lists exactly the %d ids" % len(ids))
    check(all(v.startswith("witlinkd: ") for v in listed.values()), "every entry is Defined-By witlinkd")


def check_man(builddir, binary):
    pages = {"witlinkd.8": "docs/witlinkd.8.rst", "witlinkd.conf.5": "docs/witlinkd.conf.5.rst"}
    built = [p for p in pages if os.path.isfile(os.path.join(builddir, p))]
    if not built:
        man = build_options(builddir).get("man")
        check(man == "disabled" or not shutil.which("rst2man"),
              "the man pages are built unless -Dman=disabled or rst2man is missing (-Dman=%s)" % man)
        log("the man pages are not built (-Dman=%s, rst2man %s)"
            % (man, "found" if shutil.which("rst2man") else "not installed"))
        return False
    check(len(built) == len(pages), "both man pages are built: %s" % built)
    for p in built:
        if shutil.which("groff"):
            r = run(["groff", "-k", "-man", "-ww", "-z", os.path.join(builddir, p)])
            check(r.returncode == 0 and not r.stderr.strip(), "%s renders without warnings %s"
                  % (p, r.stderr.strip()[:300]))
    helptext = run([binary, "--help"]).stdout
    options = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", helptext)))
    man8 = open(source_file(pages["witlinkd.8"])).read()
    missing = [o for o in options if o not in man8]
    check(options and not missing, "witlinkd(8) documents every option of --help %s%s"
          % (options, " (missing: %s)" % missing if missing else ""))
    return True


def check_install(builddir, tmp, have_man):
    if not shutil.which("meson"):
        raise Skip("meson not found")
    dest = os.path.join(tmp, "dest")
    r = run(["meson", "install", "-C", builddir, "--no-rebuild", "--destdir", dest, "--quiet"],
            timeout=300)
    check(r.returncode == 0, "meson install --destdir succeeds %s" % (r.stderr.strip()[-500:]))
    found = {}
    for d, _, files in os.walk(dest):
        for f in files:
            found.setdefault(f, []).append(os.path.relpath(os.path.join(d, f), dest))
    opts = build_options(builddir)
    log("installed: " + ", ".join(sorted(p for ps in found.values() for p in ps)))

    def where(name, suffix):
        paths = [p for p in found.get(name, []) if ("/" + p).endswith(suffix)]
        check(paths, "meson install puts %s in */%s" % (name, suffix))
        return paths[0]
    where("witlinkd", "sbin/witlinkd")
    for u in UNITS:
        where(u, "systemd/system/" + u)
    where("witlinkd.catalog", "systemd/catalog/witlinkd.catalog")
    conf = where("witlinkd.conf", "witlinkd/witlinkd.conf")
    check(open(os.path.join(dest, conf)).read() == open(source_file("conf/witlinkd.conf")).read(),
          "the installed witlinkd.conf is conf/witlinkd.conf")
    with open(os.path.join(dest, conf), "a") as f:
        f.write("# edited by the operator\n")
    r = run(["meson", "install", "-C", builddir, "--no-rebuild", "--destdir", dest, "--quiet"],
            timeout=300)
    check(r.returncode == 0 and open(os.path.join(dest, conf)).read().endswith("# edited by the operator\n"),
          "installing again keeps the operator's witlinkd.conf")
    unit = open(os.path.join(dest, where("witlinkd.service", "systemd/system/witlinkd.service"))).read()
    check(("-c /" + conf) in unit, "the unit's ExecStart reads the installed config (/%s)" % conf)
    if have_man:
        where("witlinkd.8", "man8/witlinkd.8")
        where("witlinkd.conf.5", "man5/witlinkd.conf.5")
    log("prefix %s, sysconfdir %s" % (opts.get("prefix"), opts.get("sysconfdir")))


def main(ctx):
    binary = harness.require_daemon()
    builddir = os.environ.get("BUILDDIR") or os.path.dirname(binary)
    tmp = tempfile.mkdtemp(prefix="witlink-units-")
    ctx.stack.callback(shutil.rmtree, tmp, True)
    check_units(builddir, binary, tmp)
    check_catalog(tmp)
    have_man = check_man(builddir, binary)
    check_install(builddir, tmp, have_man)


if __name__ == "__main__":
    harness.run_test(main)
