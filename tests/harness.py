# SPDX-License-Identifier: MIT
"""Shared helpers of the integration tests: a throwaway PostgreSQL cluster, the API simulator in
a subprocess, the daemon under test, the expected state computed from the simulator's log, and
the comparison of that truth with the warehouse.  Python 3 standard library only.

Each test is a standalone script: exit 0 pass, 1 fail, 77 skip (see run_test()).
"""

import contextlib
import glob
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import ssl
import urllib.error
import urllib.request

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
import simulator  # noqa: E402  (token helpers)
REPO_DIR = os.path.dirname(TESTS_DIR)
SIMULATOR = os.path.join(TESTS_DIR, "simulator.py")
PG_BIN = os.environ.get("WITLINK_PG_BIN", "/usr/lib/postgresql/15/bin")

SKIP = 77
HARNESS_APPNAME = "witlink-harness"     # the harness's own sessions (ignored by PgCluster.errors)


class Skip(Exception):
    """Raise to end a test with exit code 77."""


class Failure(AssertionError):
    pass


def log(msg):
    sys.stdout.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stdout.flush()


def random_seed(default=None):
    """The seed of a randomized test: WITLINK_TEST_SEED, else default, else a fresh one; logged
    so that a run can be repeated. Returns (seed, random.Random(seed))."""
    seed = int(os.environ.get("WITLINK_TEST_SEED") or default or
               random.SystemRandom().randrange(1 << 30))
    log("random seed %d (set WITLINK_TEST_SEED to repeat)" % seed)
    return seed, random.Random(seed)


def check(cond, msg):
    """Print a check line; raise Failure if cond is false."""
    if cond:
        log("ok: " + msg)
    else:
        log("FAIL: " + msg)
        raise Failure(msg)


def wait_until(pred, timeout, interval=0.1, what="condition"):
    """Poll pred() until it returns a truthy value or timeout seconds pass. Returns the value,
    or None on timeout. Exceptions from pred count as 'not yet'."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            v = None
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _is_root():
    return os.geteuid() == 0


KEEP = bool(os.environ.get("WITLINK_TEST_KEEP"))    # keep temporary directories for debugging

# WITLINKD_WRAPPER runs the daemon under a tool, e.g. "valgrind --error-exitcode=99
# --leak-check=full --errors-for-leak-kinds=definite" (valgrind gets --log-file in the daemon's
# directory, and run_test() fails the test when a log reports an error or a definite leak).
WRAPPER = shlex.split(os.environ.get("WITLINKD_WRAPPER", ""))
# Every timeout of the harness is multiplied by this (default 6 under a wrapper, else 1) ...
TIME_FACTOR = float(os.environ.get("WITLINK_TEST_TIME_FACTOR") or (6 if WRAPPER else 1))
# ... and the tests that call scaled() shrink their data sets by this (e.g. 0.1 under valgrind).
SCALE = float(os.environ.get("WITLINK_TEST_SCALE") or 1)


def scaled(n, minimum=1):
    """n events (or batches, ...) times WITLINK_TEST_SCALE, at least minimum."""
    return max(int(minimum), int(round(n * SCALE)))


def slow(seconds):
    """A timeout scaled by WITLINK_TEST_TIME_FACTOR."""
    return seconds * TIME_FACTOR


def under_valgrind():
    return bool(WRAPPER) and os.path.basename(WRAPPER[0]).startswith("valgrind")


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL when the test process dies (even by SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class PgCluster:
    """A throwaway PostgreSQL cluster on a unix socket in a temporary directory."""

    def __init__(self, durable=False, port=None, settings=None, bin_dir=PG_BIN):
        self.bin = bin_dir
        self.durable = durable
        self.settings = dict(settings or {})
        self.port = port or free_port()
        self.dir = None
        self.data = None
        self.logfile = None
        self.running = False
        self._as_postgres = _is_root()

    # -- plumbing -------------------------------------------------------------------------
    def _cmd(self, args):
        if self._as_postgres:
            return ["runuser", "-u", "postgres", "--"] + args
        return args

    def _run(self, args, timeout=120, check=True):
        p = subprocess.run(self._cmd(args), cwd=self.dir, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, text=True)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (" ".join(args[:2]), p.returncode, p.stdout,
                                                         p.stderr))
        return p

    @staticmethod
    def available(bin_dir=PG_BIN):
        return os.path.exists(os.path.join(bin_dir, "initdb")) and \
            os.path.exists(os.path.join(bin_dir, "pg_ctl"))

    # -- lifecycle ------------------------------------------------------------------------
    def init(self):
        if not self.available(self.bin):
            raise Skip("PostgreSQL binaries not found in %s" % self.bin)
        self.dir = tempfile.mkdtemp(prefix="witlink-pg-")
        os.chmod(self.dir, 0o755)
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "postgres.log")
        args = [os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--locale=C"]
        if not self.durable:
            args.append("--no-sync")
        self._run(args)
        conf = {
            "listen_addresses": "''",
            "unix_socket_directories": "'%s'" % self.dir,
            "port": str(self.port),
            "max_connections": "60",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %a: '",
            "timezone": "'UTC'",
        }
        if not self.durable:
            conf.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        conf.update({k: str(v) for k, v in self.settings.items()})   # values verbatim (quote strings)
        lines = "".join("%s = %s\n" % kv for kv in conf.items())
        path = os.path.join(self.data, "postgresql.conf")
        with open(path, "a") as f:
            f.write("\n# witlink test harness\n" + lines)
        return self

    def start(self):
        if self.dir is None:
            self.init()
        self._run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.logfile, "-w",
                   "-t", "60", "start"], timeout=90)
        self.running = True
        return self

    def stop(self, mode="fast"):
        if self.dir and self.running:
            self._run([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t",
                       "60", "stop"], timeout=90, check=False)
            self.running = False

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    def cleanup(self):
        try:
            if self.running:
                self.stop("immediate")
        finally:
            if self.dir:
                if KEEP:
                    log("keeping PostgreSQL directory %s" % self.dir)
                else:
                    shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    # -- access ---------------------------------------------------------------------------
    @property
    def conninfo(self):
        return "host=%s port=%d user=postgres dbname=postgres" % (self.dir, self.port)

    def env(self):
        e = dict(os.environ)
        e.update({"PGHOST": self.dir, "PGPORT": str(self.port), "PGUSER": "postgres",
                  "PGDATABASE": "postgres", "PGCLIENTENCODING": "UTF8", "PGTZ": "UTC",
                  "PGAPPNAME": HARNESS_APPNAME})
        return e

    def psql(self, sql, timeout=120, check=True, args=()):
        """Run SQL through psql (-X -A -t -q, ON_ERROR_STOP), return stdout."""
        cmd = [os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
               "-h", self.dir, "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        cmd += list(args)
        p = subprocess.run(cmd, input=sql, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True, env=self.env())
        if check and p.returncode != 0:
            raise RuntimeError("psql failed (%d): %s\nSQL: %s" % (p.returncode, p.stderr.strip(),
                                                                 sql[:500]))
        return p.stdout

    def query_json(self, sql, timeout=120):
        out = self.psql("select coalesce(json_agg(t), '[]') from (%s) t;" % sql.rstrip().rstrip(";"),
                        timeout=timeout)
        return json.loads(out)

    def scalar(self, sql, timeout=60):
        out = self.psql(sql, timeout=timeout).strip()
        return out

    def errors(self):
        """ERROR/FATAL/PANIC lines of the server log with the statement that caused each (not
        those of the harness's own psql sessions)."""
        try:
            with open(self.logfile, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for i, line in enumerate(lines):
            if (" %s: " % HARNESS_APPNAME) in line:
                continue
            if " ERROR: " in line or " PANIC: " in line or (" FATAL: " in line and "terminating connection due to administrator" not in line):
                nxt = lines[i + 1] if i + 1 < len(lines) and "STATEMENT:" in lines[i + 1] else ""
                out.append(line + ("\n    " + nxt.strip() if nxt else ""))
        return out

    def log_tail(self, n=30):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------
# The API simulator


class Simulator:
    """tests/simulator.py in a subprocess on 127.0.0.1, port 0."""

    def __init__(self, seed=1, events=10000, org="fabrikam",
                 projects=("Fabrikam-Fiber", "Contoso Web", "Ωmega.Proj"), batch_size=1000,
                 auth="pat:sim-secret-PAT-0123456789", extra_args=(), startup_timeout=120,
                 trap=False, tls=False, tls_san="IP:127.0.0.1,DNS:localhost"):
        """trap: also listen on 127.0.0.2 and record every request there (trap_requests());
        tls: serve HTTPS with a self-signed certificate made with openssl (cert_path)."""
        self.seed, self.n_events, self.org = seed, events, org
        self.trap = trap
        self.tls = tls
        self.tls_san = tls_san
        self.trap_port = None
        self.cert_path = None
        self._ssl_ctx = None
        self.projects = list(projects)
        self.batch_size = batch_size
        self.auth = auth
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.proc = None
        self.port = None
        self.dir = None

    @property
    def secret(self):
        return self.auth.split(":", 1)[1] if ":" in self.auth else ""

    @property
    def auth_kind(self):
        return self.auth.split(":", 1)[0]

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="witlink-sim-")
        port_file = os.path.join(self.dir, "port")
        self.stderr_path = os.path.join(self.dir, "simulator.stderr")
        cmd = [sys.executable, SIMULATOR, "--listen", "127.0.0.1", "--port", "0",
               "--port-file", port_file, "--seed", str(self.seed), "--events", str(self.n_events),
               "--org", self.org, "--projects", ",".join(self.projects),
               "--batch-size", str(self.batch_size), "--auth", self.auth] + self.extra_args
        trap_file = os.path.join(self.dir, "trap-port")
        if self.trap:
            cmd += ["--trap-listen", "127.0.0.2", "--trap-port-file", trap_file]
        if self.tls:
            self.cert_path = os.path.join(self.dir, "cert.pem")
            key = os.path.join(self.dir, "key.pem")
            make_self_signed_cert(self.cert_path, key, san=self.tls_san)
            cmd += ["--tls-cert", self.cert_path, "--tls-key", key]
            self._ssl_ctx = ssl.create_default_context(cafile=self.cert_path)
            self._ssl_ctx.check_hostname = False      # the control calls trust the file, any name
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if os.path.exists(port_file) and (not self.trap or os.path.exists(trap_file)):
                with open(port_file) as f:
                    self.port = int(f.read().strip())
                if self.trap:
                    with open(trap_file) as f:
                        self.trap_port = int(f.read().strip())
                break
            if self.proc.poll() is not None:
                raise RuntimeError("simulator exited (%s): %s" % (self.proc.returncode, self.stderr_tail()))
            time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("simulator did not start in %ss" % self.startup_timeout)
        return self

    def stderr_tail(self, n=20):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_err", None):
            self._err.close()
            self._err = None
        if self.dir:
            if not KEEP:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- URLs -----------------------------------------------------------------------------
    @property
    def root_url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    @property
    def trap_url(self):
        return "http://127.0.0.2:%d" % self.trap_port if self.trap_port else None

    @property
    def base_url(self):
        return "%s/%s" % (self.root_url, self.org.strip("/"))

    # -- control API ----------------------------------------------------------------------
    def _call(self, method, path, body=None, timeout=120):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.root_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_ctx) as r:
            return json.loads(r.read().decode())

    def append(self, count):
        return self._call("POST", "/_sim/append", {"count": count})["log_length"]

    def events(self, offset=0, limit=None):
        q = "?offset=%d" % offset + ("&limit=%d" % limit if limit is not None else "")
        return self._call("GET", "/_sim/events" + q, timeout=300)

    def requests(self, since=0):
        return self._call("GET", "/_sim/requests?since=%d" % since)

    def clear_requests(self):
        return self._call("POST", "/_sim/requests/clear", {})

    def set_faults(self, faults, append=False):
        return self._call("POST", "/_sim/faults", {"faults": faults, "append": append})["faults"]

    def faults(self):
        return self._call("GET", "/_sim/faults")["faults"]

    def config(self, **kw):
        return self._call("POST", "/_sim/config", kw)

    def stats(self):
        return self._call("GET", "/_sim/stats")

    def token(self, pos):
        return self._call("GET", "/_sim/token?pos=%d" % pos)["token"]

    def trap_requests(self):
        """Every request the trap listener (127.0.0.2) received, with its headers."""
        return self._call("GET", "/_sim/trap")


def make_self_signed_cert(cert, key, cn="127.0.0.1", san="IP:127.0.0.1,DNS:localhost"):
    """A throwaway self-signed certificate (openssl), by default for 127.0.0.1 and localhost."""
    if not shutil.which("openssl"):
        raise Skip("openssl not found")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=%s" % cn,
                    "-addext", "subjectAltName=" + san],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def token_pos(tok):
    """Log position encoded in a simulator token (None if it is not one)."""
    return simulator.token_pos(tok)


# ---------------------------------------------------------------------------------------------
# The daemon


def daemon_binary():
    p = os.environ.get("WITLINKD") or os.path.join(REPO_DIR, "build", "witlinkd")
    return os.path.abspath(p)


def require_daemon():
    p = daemon_binary()
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        raise Skip("daemon binary %s not found (set WITLINKD or build with meson/ninja)" % p)
    return p


class Source:
    """One [source NAME] section."""

    def __init__(self, name, url, token=None, auth="pat", projects=None, **options):
        self.name, self.url, self.token, self.auth = name, url, token, auth
        self.projects = projects
        self.options = options      # other keys: types, link-types, api-version, ... (use '-' or '_')

    @classmethod
    def for_simulator(cls, sim, name=None, projects=None, **options):
        return cls(name or sim.org.split("/")[-1], sim.base_url, sim.secret if sim.auth != "none" else None,
                   auth=sim.auth_kind if sim.auth != "none" else "pat", projects=projects, **options)


class Daemon:
    """Writes a config (SPEC §4) and runs the daemon under test."""

    def __init__(self, database, sources, workdir=None, binary=None, poll_interval="2s",
                 http_timeout="10s", log_level="debug", extra_daemon=None, env=None):
        self.binary = binary or require_daemon()
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="witlink-d-")
        self.database = database
        self.sources = list(sources)
        self.daemon_opts = {"poll-interval": poll_interval, "http-timeout": http_timeout,
                            "log-level": log_level}
        self.daemon_opts.update(extra_daemon or {})
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("JOURNAL_STREAM", None)
        self.env.pop("WATCHDOG_USEC", None)
        self.env.update(env or {})
        self.config_path = os.path.join(self.dir, "witlinkd.conf")
        self.stderr_path = os.path.join(self.dir, "witlinkd.stderr")
        self.wrapper = list(WRAPPER)
        if under_valgrind() and not any(a.startswith("--log-file") for a in self.wrapper):
            self.wrapper.insert(1, "--log-file=%s" % os.path.join(self.dir, "valgrind.%p.log"))
        self.proc = None
        self._err = None
        self.runs = 0
        self.write_config()

    def write_config(self):
        lines = ["# written by tests/harness.py", "[daemon]", "database = %s" % self.database]
        for k, v in self.daemon_opts.items():
            if v is not None:
                lines.append("%s = %s" % (k, v))
        for s in self.sources:
            lines += ["", "[source %s]" % s.name, "url = %s" % s.url]
            if s.token is not None:
                tf = os.path.join(self.dir, "%s.token" % s.name)
                fd = os.open(tf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(s.token + "\n")
                os.chmod(tf, 0o600)
                lines.append("token-file = %s" % tf)
            lines.append("auth = %s" % s.auth)
            if s.projects:
                lines.append("projects = %s" % ", ".join(s.projects))
            for k, v in s.options.items():
                lines.append("%s = %s" % (k.replace("_", "-"), v))
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _open_err(self):
        self.runs += 1
        f = open(self.stderr_path, "a")
        f.write("\n===== run %d: %s =====\n" % (self.runs, time.strftime("%H:%M:%S")))
        f.flush()
        return f

    def run_once(self, timeout=120, args=()):
        """witlinkd -c FILE --once; returns (exit code, stdout, stderr of this run)."""
        cmd = [self.binary, "-c", self.config_path, "--once"] + list(args)
        return self.run(cmd, timeout)

    def run(self, cmd, timeout=60):
        if cmd and cmd[0] != self.binary:
            cmd = [self.binary] + list(cmd)
        cmd = self.wrapper + list(cmd)
        timeout = slow(timeout)
        with self._open_err() as ef:
            start = ef.tell()
            try:
                p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=ef,
                                   timeout=timeout, env=self.env, text=True, errors="replace",
                                   preexec_fn=_die_with_parent)
                rc, out = p.returncode, p.stdout
            except subprocess.TimeoutExpired as e:
                rc, out = None, (e.stdout or b"").decode(errors="replace") \
                    if isinstance(e.stdout, bytes) else (e.stdout or "")
        with open(self.stderr_path, errors="replace") as f:
            f.seek(start)
            err = f.read()
        return rc, out, err

    def start(self, args=()):
        """Run in the foreground mode (no --once) as a child process."""
        assert self.proc is None or self.proc.poll() is not None
        self._err = self._open_err()
        self.proc = subprocess.Popen(self.wrapper + [self.binary, "-c", self.config_path] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err,
                                     env=self.env, preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGTERM):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout=10):
        """Wait for the foreground process; returns its exit code or None on timeout."""
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(slow(timeout))
        except subprocess.TimeoutExpired:
            return None
        if self._err:
            self._err.close()
            self._err = None
        return rc

    def stop(self):
        """Make sure the process is gone (SIGTERM, then SIGKILL)."""
        if self.alive():
            self.kill(signal.SIGTERM)
            if self.wait(5) is None:
                self.kill(signal.SIGKILL)
                self.wait(5)
        if self._err:
            self._err.close()
            self._err = None

    def stderr_tail(self, n=40):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wrapper_problems(self):
        """What the wrapper's logs report (valgrind: errors and definite leaks), per process."""
        problems = []
        for p in sorted(glob.glob(os.path.join(self.dir, "valgrind.*.log"))):
            with open(p, errors="replace") as f:
                text = f.read()
            m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
            leak = re.search(r"definitely lost: ([\d,]+) bytes", text)
            if m is None:
                continue        # killed (SIGKILL) before valgrind could report
            if int(m.group(1)) > 0 or (leak and leak.group(1) != "0"):
                problems.append("%s: %s\n%s" % (p, m.group(0), _valgrind_excerpt(text)))
        return problems

    def cleanup(self):
        self.stop()
        if self.own_dir:
            if KEEP:
                log("keeping daemon directory %s" % self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)


def _valgrind_excerpt(text, n=60):
    """The first error or leak record of a valgrind log."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"(Invalid|uninitialised|Mismatched|definitely lost in|Syscall param|"
                     r"Source and destination overlap|Conditional jump)", line):
            return "\n".join(lines[i:i + n])
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------
# The truth


class Truth:
    """Expected warehouse content for one organization: .links (rows of work_item_link) and
    .events (distinct event keys)."""

    def __init__(self, links, events, organization):
        self.links = links
        self.events = events
        self.organizations = [organization] if isinstance(organization, str) else list(organization)

    def __add__(self, other):
        return Truth(self.links + other.links, self.events + other.events,
                     self.organizations + other.organizations)

    def link_map(self):
        return {(r["organization"], r["rel"], r["source"], r["target"]): r for r in self.links}


def _visible(e, projects, types, link_types):
    if projects is not None:
        if e["sourceProject"].casefold() not in projects and e["targetProject"].casefold() not in projects \
                and (e["sourceProjectGuid"] or "").casefold() not in projects \
                and (e["targetProjectGuid"] or "").casefold() not in projects:
            return False
    if types is not None and e["sourceType"].casefold() not in types and e["targetType"].casefold() not in types:
        return False
    if link_types is not None and e["rel"].casefold() not in link_types:
        return False
    return True


def truth(events, organization, projects=None, types=None, link_types=None, upto=None,
          sticky_attributes=False):
    """Expected state computed from the simulator's event log (Simulator.events()), independently
    of the daemon.

    projects: list of project names/GUIDs (a project feed each; None = collection-wide);
    types / link_types: feed filters; upto: only log positions < upto (a committed prefix).
    sticky_attributes: keep link_type/project ids from earlier events when the last lacks them
    (default: the last event's value, NULL when absent)."""
    pj = {p.casefold() for p in projects} if projects else None
    ty = {t.casefold() for t in types} if types else None
    lt = {t.casefold() for t in link_types} if link_types else None
    state = {}
    created = {}
    seen_events = set()
    ev_list = []
    for e in events:
        if upto is not None and e["index"] >= upto:
            break
        if not _visible(e, pj, ty, lt):
            continue
        key = (organization, e["rel"], e["sourceId"], e["targetId"])
        by = e["changedBy"]["uniqueName"] if e.get("changedBy") else None
        ek = key + (e["changedDate"], e["op"])
        if ek not in seen_events:
            seen_events.add(ek)
            ev_list.append({"organization": organization, "rel": e["rel"], "source": e["sourceId"],
                            "target": e["targetId"], "changed_date": e["changedDate"], "op": e["op"],
                            "ticks": e.get("ticks"), "index": e["index"]})
        comment = e["comment"]
        if comment is not None:
            comment = comment.replace("\u0000", "\ufffd")
        prev = state.get(key)
        row = {
            "organization": organization, "rel": e["rel"], "source": e["sourceId"],
            "target": e["targetId"], "is_active": e["op"] == "create",
            "link_type": e["linkType"], "source_project_id": e["sourceProjectId"],
            "target_project_id": e["targetProjectId"], "comment": comment,
            "changed_date": e["changedDate"], "changed_by": by,
            "deleted_date": e["changedDate"] if e["op"] == "remove" else None,
            "deleted_by": by if e["op"] == "remove" else None,
            "source_project": e["sourceProject"], "target_project": e["targetProject"],
            "index": e["index"],
        }
        if sticky_attributes and prev:
            for f in ("link_type", "source_project_id", "target_project_id"):
                if row[f] is None:
                    row[f] = prev[f]
        if e["op"] == "create":
            created[key] = (e["changedDate"], by)
        row["created_date"], row["created_by"] = created.get(key, (None, None))
        state[key] = row
    return Truth(list(state.values()), ev_list, organization)


# ---------------------------------------------------------------------------------------------
# Comparison with the warehouse

_LINK_COLS = [
    ("organization", "text"), ("rel", "text"), ("source", "int"), ("target", "int"),
    ("is_active", "boolean"), ("link_type", "text"), ("source_project_id", "uuid"),
    ("target_project_id", "uuid"), ("comment", "text"), ("created_date", "text"),
    ("created_by", "text"), ("deleted_date", "text"), ("deleted_by", "text"),
    ("changed_date", "text"), ("changed_by", "text"),
]
_EVENT_COLS = [("organization", "text"), ("rel", "text"), ("source", "int"), ("target", "int"),
               ("changed_date", "text"), ("op", "text")]


def _csv_field(v):
    if v is None:
        return ""                                   # unquoted empty = NULL in COPY csv
    if v is True:
        return "t"
    if v is False:
        return "f"
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace('"', '""') + '"'


def _write_csv(path, rows, cols):
    with open(path, "w", encoding="utf-8", newline="") as f:
        for r in rows:
            f.write(",".join(_csv_field(r[c]) for c, _ in cols))
            f.write("\n")


def compare_with_truth(pg, truth_obj, where=None, check_events=True, max_report=8, quiet=False,
                       restrict_keys=False):
    """Compare witlink.work_item_link (and the event table) with the truth, inside PostgreSQL.
    Returns a list of human-readable problems (empty = equal). `where` restricts the warehouse
    side further (SQL on table alias w); restrict_keys=True compares only the link keys that the
    truth holds (e.g. one project's links when the warehouse holds several projects)."""
    if not isinstance(truth_obj, Truth):            # a plain list of link rows
        rows = list(truth_obj)
        truth_obj = Truth(rows, [], sorted({r["organization"] for r in rows}))
        check_events = False
    tmp = tempfile.mkdtemp(prefix="witlink-cmp-")
    try:
        os.chmod(tmp, 0o755)
        lpath = os.path.join(tmp, "links.csv")
        epath = os.path.join(tmp, "events.csv")
        _write_csv(lpath, truth_obj.links, _LINK_COLS)
        _write_csv(epath, truth_obj.events, _EVENT_COLS)
        orgs = "array[%s]::text[]" % ",".join("'%s'" % o.replace("'", "''") for o in truth_obj.organizations)
        wh = "w.organization = any(%s)" % orgs + (" and (%s)" % where if where else "")
        keyq = ("(%s.organization, %s.link_type_reference_name, %s.source_work_item_id, "
                "%s.target_work_item_id) in (select organization, rel, source, target from t_links)")
        if restrict_keys:
            wh += " and " + keyq.replace("%s", "w")
        lcols = ", ".join("%s %s" % (c, "text" if t in ("text", "uuid") else t) for c, t in _LINK_COLS)
        ecols = ", ".join("%s %s" % (c, "text" if t in ("text", "uuid") else t) for c, t in _EVENT_COLS)
        sel_truth = """
          select organization, rel, source, target, is_active, link_type,
                 source_project_id::uuid as source_project_id, target_project_id::uuid as target_project_id,
                 comment, created_date::timestamptz as created_date, created_by,
                 deleted_date::timestamptz as deleted_date, deleted_by,
                 changed_date::timestamptz as changed_date, changed_by
          from t_links"""
        sel_wh = """
          select w.organization::text as organization, w.link_type_reference_name::text as rel,
                 w.source_work_item_id as source, w.target_work_item_id as target,
                 w.is_active, w.link_type::text as link_type, w.source_project_id, w.target_project_id,
                 w.comment::text as comment, w.created_date, w.created_by::text as created_by,
                 w.deleted_date, w.deleted_by::text as deleted_by, w.changed_date,
                 w.changed_by::text as changed_by
          from witlink.work_item_link w where %s""" % wh
        script = """
\\set ON_ERROR_STOP 1
set timezone = 'UTC';
create temp table t_links (%(lcols)s);
\\copy t_links from '%(lpath)s' with (format csv)
create temp table t_events (%(ecols)s);
\\copy t_events from '%(epath)s' with (format csv)
create temp table t_exp as %(sel_truth)s;
create temp table t_got as %(sel_wh)s;
select json_build_object(
  'expected', (select count(*) from t_exp),
  'got', (select count(*) from t_got),
  'missing', (select coalesce(json_agg(x), '[]') from (select * from (select * from t_exp except all select * from t_got) d order by 1,2,3,4 limit %(lim)d) x),
  'missing_n', (select count(*) from (select * from t_exp except all select * from t_got) d),
  'extra', (select coalesce(json_agg(x), '[]') from (select * from (select * from t_got except all select * from t_exp) d order by 1,2,3,4 limit %(lim)d) x),
  'extra_n', (select count(*) from (select * from t_got except all select * from t_exp) d)
)::jsonb;
""" % dict(lcols=lcols, lpath=lpath, ecols=ecols, epath=epath, sel_truth=sel_truth, sel_wh=sel_wh,
           lim=max_report)
        if check_events:
            ewh = "e.organization = any(%s)" % orgs
            if restrict_keys:
                ewh += " and " + keyq.replace("%s", "e")
            script += """
create temp table e_exp as select distinct organization, rel, source, target, changed_date::timestamptz as changed_date, op from t_events;
create temp table e_got as select e.organization::text as organization, e.link_type_reference_name::text as rel,
  e.source_work_item_id as source, e.target_work_item_id as target, e.changed_date, e.changed_operation::text as op
  from witlink.work_item_link_event e where %(ewh)s;
select json_build_object(
  'expected', (select count(*) from e_exp),
  'got', (select count(*) from e_got),
  'duplicates', (select count(*) from e_got) - (select count(*) from (select distinct * from e_got) d),
  'dup_sample', (select coalesce(json_agg(x), '[]') from (select *, count(*) as n from e_got group by 1,2,3,4,5,6 having count(*) > 1 order by 1,2,3,4 limit %(lim)d) x),
  'missing', (select coalesce(json_agg(x), '[]') from (select * from (select * from e_exp except select * from e_got) d order by 1,2,3,4 limit %(lim)d) x),
  'missing_n', (select count(*) from (select * from e_exp except select * from e_got) d),
  'extra', (select coalesce(json_agg(x), '[]') from (select * from (select * from e_got except select * from e_exp) d order by 1,2,3,4 limit %(lim)d) x),
  'extra_n', (select count(*) from (select * from e_got except select * from e_exp) d)
)::jsonb;
""" % dict(ewh=ewh, lim=max_report)
        out = pg.psql(script, timeout=300)
        results = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    problems = []
    lr = results[0]
    if not quiet:
        log("links: expected %d rows, warehouse has %d" % (lr["expected"], lr["got"]))
    tmap = truth_obj.link_map()
    names = [c for c, _ in _LINK_COLS]
    if lr["missing_n"] or lr["extra_n"]:
        problems.append("work_item_link differs: %d expected rows missing or different, %d unexpected "
                        "rows or different" % (lr["missing_n"], lr["extra_n"]))
        got_by_key = {}
        for g in lr["extra"]:
            got_by_key[(g["organization"], g["rel"], g["source"], g["target"])] = g
        for vals in lr["missing"]:
            k = (vals["organization"], vals["rel"], vals["source"], vals["target"])
            g = got_by_key.pop(k, None)
            t = tmap.get(k)
            extra = (" (log index %s, %s -> %s)" % (t["index"], t["source_project"], t["target_project"])) if t else ""
            if g is None:
                problems.append("  missing %s%s: expected %s" % (k, extra, _short(vals)))
            else:
                diffs = ["%s: expected %s got %s" % (c, _short(vals[c]), _short(g[c]))
                         for c in names[4:] if vals[c] != g[c]]
                problems.append("  differs %s%s: %s" % (k, extra, "; ".join(diffs)))
        for k, g in got_by_key.items():
            problems.append("  unexpected %s: %s" % (k, _short(g)))
    if check_events and len(results) > 1:
        er = results[1]
        if not quiet:
            log("events: expected %d distinct, warehouse has %d rows (%d duplicates)"
                % (er["expected"], er["got"], er["duplicates"]))
        if er["duplicates"]:
            problems.append("work_item_link_event holds %d duplicate events, e.g. %s"
                            % (er["duplicates"], _short(er["dup_sample"][:3])))
        if er["missing_n"]:
            problems.append("work_item_link_event lacks %d events, e.g. %s"
                            % (er["missing_n"], _short(er["missing"][:4])))
        if er["extra_n"]:
            problems.append("work_item_link_event has %d unexpected events, e.g. %s"
                            % (er["extra_n"], _short(er["extra"][:4])))
    return problems


def _short(v, n=160):
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= n else s[:n] + "…(%d chars)" % len(s)


# ---------------------------------------------------------------------------------------------
# Warehouse helpers

def feeds(pg):
    """Rows of witlink.feed (empty list if the schema does not exist yet)."""
    try:
        if pg.scalar("select to_regclass('witlink.feed') is not null") != "t":
            return []
        return pg.query_json("select * from witlink.feed order by feed_id")
    except RuntimeError:
        return []


def wait_caught_up(pg, n_feeds=1, timeout=60, daemon=None):
    """Wait until n_feeds feeds exist and all are caught up. Returns the feed rows or None."""
    def pred():
        if daemon is not None and not daemon.alive():
            raise Failure("daemon exited early with %s" % daemon.proc.returncode)
        fs = feeds(pg)
        return fs if len(fs) >= n_feeds and all(f["caught_up"] for f in fs) else None
    deadline = time.monotonic() + slow(timeout)
    while time.monotonic() < deadline:
        try:
            v = pred()
        except Failure:
            raise
        if v:
            return v
        time.sleep(0.2)
    return None


# ---------------------------------------------------------------------------------------------
# Test runner


class TestContext:
    """Collects resources to clean up and the daemon whose stderr to show on failure."""

    def __init__(self):
        self.stack = contextlib.ExitStack()
        self.daemons = []
        self.pgs = []
        self.sims = []

    def pg(self, **kw):
        pg = PgCluster(**kw)
        self.stack.callback(pg.cleanup)
        pg.start()
        self.pgs.append(pg)
        return pg

    def simulator(self, **kw):
        sim = Simulator(**kw)
        self.stack.callback(sim.stop)
        sim.start()
        self.sims.append(sim)
        return sim

    def daemon(self, *a, **kw):
        d = Daemon(*a, **kw)
        self.stack.callback(d.cleanup)
        self.daemons.append(d)
        return d

    def dump(self):
        for d in self.daemons:
            log("---- daemon stderr (tail) %s ----\n%s" % (d.stderr_path, d.stderr_tail(60)))
            log("---- config ----\n%s" % open(d.config_path).read())
        for s in self.sims:
            t = s.stderr_tail(10)
            if t.strip():
                log("---- simulator stderr (tail) ----\n" + t)
        for p in self.pgs:
            t = p.log_tail(15)
            if t.strip():
                log("---- postgres log (tail) ----\n" + t)


def _check_wrapper_logs(ctx):
    """Stops the daemons and fails when the wrapper's logs (valgrind) report an error or a
    definite leak."""
    for d in ctx.daemons:
        d.stop()
    problems = [p for d in ctx.daemons for p in d.wrapper_problems()]
    if problems:
        for p in problems:
            log(p)
        raise Failure("%s reported %d problem(s)" % (WRAPPER[0], len(problems)))
    log("ok: %s reported no error and no leak (%d daemon directories)"
        % (os.path.basename(WRAPPER[0]), len(ctx.daemons)))


def run_test(fn, timeout=110):
    """Run fn(ctx) and exit 0/1/77. A SIGALRM after `timeout` seconds fails the test."""
    ctx = TestContext()
    name = os.path.basename(sys.argv[0])

    def on_alarm(*_):
        raise Failure("test timed out after %ds" % timeout)

    def on_term(signo, _):
        signal.signal(signo, signal.SIG_DFL)
        raise Failure("terminated by signal %d" % signo)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.alarm(int(slow(timeout)))
    t0 = time.monotonic()
    rc = 1
    try:
        with ctx.stack:
            try:
                try:
                    fn(ctx)
                finally:
                    if WRAPPER:         # also after a failure: report what the tool saw
                        _check_wrapper_logs(ctx)
                rc = 0
            except Skip as e:
                log("SKIP: %s" % e)
                rc = SKIP
            except Failure as e:
                log("FAILED: %s" % e)
                ctx.dump()
            except Exception:
                log("ERROR:\n" + traceback.format_exc())
                ctx.dump()
            finally:
                signal.alarm(0)
    except Exception:
        log("ERROR during cleanup:\n" + traceback.format_exc())
        if rc == 0:
            rc = 1
    log("%s: %s in %.1fs" % (name, {0: "PASS", 1: "FAIL", SKIP: "SKIP"}[rc], time.monotonic() - t0))
    sys.exit(rc)


def fail_on_problems(problems, what):
    if problems:
        for p in problems[:25]:
            log("  " + p)
        raise Failure("%s: %d problem(s)" % (what, len(problems)))
    log("ok: " + what)


# ---------------------------------------------------------------------------------------------
# Request-log checks

def feed_of_request(r):
    """The feed a data request belongs to: its path plus the query without the token."""
    q = {k.lower(): v for k, v in (r.get("query") or {}).items() if k.lower() != "continuationtoken"}
    q.pop("api-version", None)
    return (r["path"].lower(),) + tuple(sorted(q.items()))


def request_chain_problems(reqs, start_tokens=None):
    """Every data request of a feed must carry the token of that feed's previous successful
    response (200 with a complete, valid batch); the first one the given start token (None = no
    token). Returns problems."""
    expected = dict(start_tokens or {})
    problems = []
    for r in reqs:
        f = feed_of_request(r)
        exp = expected.get(f)
        if r.get("token") != exp and not (exp is None and r.get("token") in (None, "")):
            problems.append("request #%d %s asked token %r, expected %r" % (r["seq"], r["path"], r.get("token"), exp))
        if r.get("status") == 200 and r.get("valid_batch") and not r.get("aborted"):
            expected[f] = r["next_token"]
    return problems


def throttle_problems(reqs, tolerance=None, boundaries=()):
    """No request may start before the Retry-After (or X-RateLimit-Delay) of an earlier response
    to the same source has run out. Times are the simulator's: a response's end is its arrival
    time plus its duration; `tolerance` absorbs a request already on its way at that instant.
    `boundaries`: instants (time.time()) at which the daemon was restarted; a new process cannot
    know an earlier process's Retry-After, so no pair across one is compared."""
    if tolerance is None:
        tolerance = slow(0.1)
    problems = []
    waits = []          # (response end, seconds, seq, header)
    for r in reqs:
        if r.get("retry_after") is not None or r.get("ratelimit_delay") is not None:
            secs, hdr = 0.0, None
            for field in ("retry_after", "ratelimit_delay"):
                try:
                    v = float(r.get(field))
                except (TypeError, ValueError):
                    continue
                if v > secs:
                    secs, hdr = v, field
            if secs > 0:
                waits.append((r["time"] + r.get("duration", 0), secs, r["seq"], hdr))
    for r in reqs:
        for end, secs, seq, hdr in waits:
            if any(end <= b <= r["time"] for b in boundaries):
                continue
            if end + tolerance < r["time"] < end + secs - 0.02:
                problems.append("request #%d came %.2fs after response #%d whose %s was %gs"
                                % (r["seq"], r["time"] - end, seq, hdr, secs))
    return problems


def data_requests(sim, since=0):
    return [r for r in sim.requests(since) if r.get("method") == "GET"]


def wait_db_idle(pg, timeout=15):
    """Wait until no other client backend is connected (after a daemon was killed)."""
    return wait_until(lambda: pg.scalar(
        "select count(*) = 0 from pg_stat_activity where backend_type = 'client backend' "
        "and pid <> pg_backend_pid()") == "t", timeout, 0.1)


def stored_token(pg):
    """The continuation token of the only (first) feed, None if there is none yet."""
    rows = feeds(pg)
    return rows[0]["continuation_token"] if rows else None


def check_no_pg_errors(pg, what="PostgreSQL logged no ERROR (no failing statement from the daemon)"):
    errs = pg.errors()
    if errs:
        for e in errs[:5]:
            log("  " + e)
    check(not errs, what + ("" if not errs else " — %d error line(s)" % len(errs)))
