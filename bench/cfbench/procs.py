"""Processes started in the background (all stopped on exit), and waiting for HTTP."""

import glob
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from .common import HEADER, Fail


class Procs:
    """Everything started in the background; all of it is stopped by stop_all()."""

    def __init__(self):
        self.items = []  # (Popen, signal to stop it with, seconds to wait)

    def start(self, argv, out_path, stop_sig=signal.SIGTERM, grace=5.0, **kw):
        with open(out_path, "ab") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, **kw)
        self.items.append((p, stop_sig, grace))
        return p

    def stop(self, p):
        for item in list(self.items):
            if item[0] is p:
                self._stop([item])
                self.items.remove(item)

    def stop_all(self):
        self._stop(list(reversed(self.items)))
        self.items.clear()

    @staticmethod
    def _stop(items):
        for p, sig, _ in items:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
        for p, _, grace in items:
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                for pid in [p.pid] + children(p.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.wait()


def children(pid):
    out = []
    for d in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d.split("/")[2]))
    return out


def run(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def port_free(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_http(url, seconds=10):
    """Waits until `url` answers at all (any status)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise Fail(f"nothing answers at {url}")


def http_status(url, token=None):
    return http_get(url, token)[0]


def http_get(url, token=None):
    """(status, headers, body) of GET `url`, with `token` in the token header."""
    req = urllib.request.Request(url, headers={HEADER: token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, b""


def tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection, one request at a time."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw):
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        length = int(m.group(1)) if m else 0
        while len(self.buf) < length:
            self._more()
        self.buf = self.buf[length:]
        if re.search(rb"\r\nconnection:\s*close", head, re.I):
            raise Fail("nginx closed the keep-alive connection")
        return status

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Fail("nginx closed the connection")
        self.buf += data

    def close(self):
        self.sock.close()
