"""Processes started in the background (all stopped on exit), and waiting for HTTP."""

import glob
import os
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
    req = urllib.request.Request(url, headers={HEADER: token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""
