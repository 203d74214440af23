# SPDX-License-Identifier: MIT
"""A tiny PostgreSQL client (protocol 3, simple queries, LISTEN) over the cluster's unix socket,
trust authentication only. Python standard library; enough for the benchmark's probes, which
must not fork a psql for every look (the latency probe waits for NOTIFY witlink)."""

import select
import socket
import struct
import time


class PgError(Exception):
    pass


class PgConn:
    def __init__(self, socket_dir, port, dbname="postgres", user="postgres",
                 application_name="witlink-bench", timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect("%s/.s.PGSQL.%d" % (socket_dir, port))
        self.buf = b""
        self.notifications = []     # (arrival time.time(), channel, payload)
        self.backend_pid = None
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in (
            ("user", user), ("database", dbname), ("application_name", application_name),
            ("client_encoding", "UTF8"), ("TimeZone", "UTC")))
        body = struct.pack("!i", 196608) + params + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            t, data = self._read_msg()
            if t == b"R":
                if struct.unpack("!i", data[:4])[0] != 0:
                    raise PgError("only trust authentication is supported")
            elif t == b"K":
                self.backend_pid = struct.unpack("!i", data[:4])[0]
            elif t == b"E":
                raise PgError(self._error_text(data))
            elif t == b"Z":
                break

    # -- wire ------------------------------------------------------------------------------
    def _fill(self, n, deadline=None):
        while len(self.buf) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                r, _, _ = select.select([self.sock], [], [], left)
                if not r:
                    return False
            chunk = self.sock.recv(65536)
            if not chunk:
                raise PgError("connection closed by the server")
            self.buf += chunk
        return True

    def _read_msg(self, deadline=None):
        if not self._fill(5, deadline):
            return None, None
        t = self.buf[:1]
        n = struct.unpack("!i", self.buf[1:5])[0]
        self._fill(1 + n)
        data = self.buf[5:1 + n]
        self.buf = self.buf[1 + n:]
        if t == b"A":
            pid = struct.unpack("!i", data[:4])[0]
            chan, payload = data[4:].split(b"\0")[:2]
            self.notifications.append((time.time(), chan.decode(), payload.decode(), pid))
        return t, data

    @staticmethod
    def _error_text(data):
        fields = {}
        for part in data.split(b"\0"):
            if part:
                fields[part[:1]] = part[1:].decode(errors="replace")
        return "%s: %s" % (fields.get(b"C", "?"), fields.get(b"M", "?"))

    # -- API -------------------------------------------------------------------------------
    def query(self, sql):
        """Runs one simple-query string; returns the rows of its last result (text or None)."""
        b = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", len(b) + 4) + b)
        rows, cur, err = [], [], None
        while True:
            t, data = self._read_msg()
            if t == b"T":
                cur = []
            elif t == b"D":
                n = struct.unpack("!h", data[:2])[0]
                off, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", data[off:off + 4])[0]
                    off += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(data[off:off + ln].decode())
                        off += ln
                cur.append(row)
            elif t == b"C":
                rows = cur
            elif t == b"E":
                err = self._error_text(data)
            elif t == b"Z":
                break
        if err:
            raise PgError(err)
        return rows

    def scalar(self, sql):
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def wait_notification(self, timeout):
        """Returns the first queued notification, waiting up to timeout seconds; None if none."""
        deadline = time.monotonic() + timeout
        while not self.notifications:
            t, _ = self._read_msg(deadline)
            if t is None:
                return None
        return self.notifications.pop(0)

    def close(self):
        try:
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        except OSError:
            pass
        self.sock.close()
