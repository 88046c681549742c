"""Readings from /proc (CPU time, steal, memory), and the CPUs' idle state."""

import os
import struct
import time

from .common import Fail


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pids):
    """utime + stime of `pids`, summed (ticks)."""
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        t += int(fields[11]) + int(fields[12])
    return t


def proc_stat_cpu(name):
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == name:
                return [int(x) for x in fields[1:]]
    raise Fail(f"no {name} in /proc/stat")


def steal_ticks(cpu):
    return proc_stat_cpu(f"cpu{cpu}")[7]


def cpu_busy(seconds):
    """% of all CPUs busy over `seconds` (while our servers are idle)."""
    def sample():
        v = proc_stat_cpu("cpu")
        busy = v[0] + v[1] + v[2] + v[5] + v[6]
        return busy, busy + v[3] + v[4]
    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return round((b1 - b0) / (t1 - t0) * 100) if t1 > t0 else 0


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise Fail(f"no {key} in /proc/{pid}/status")


class IdlePoll:
    """While open, /dev/cpu_dma_latency at 0 keeps idle CPUs polling instead of halting
    (what tuned's latency-performance profile does). On a VM a halted vCPU is woken by an
    IPI, which exits to the hypervisor on the waker's side: here the nginx worker pays it
    for every response that wakes an idle wrk, ~6 µs when nginx is slow enough for wrk to
    sleep between responses (full verification), ~1 µs when it is not (see --perf and
    docs/performance.md). Closing the file (or exiting) restores the default."""

    PATH = "/dev/cpu_dma_latency"

    def __init__(self):
        self.fd = None

    def start(self):
        """None, or why the CPUs could not be kept polling."""
        try:
            self.fd = os.open(self.PATH, os.O_WRONLY | os.O_CLOEXEC)
            os.write(self.fd, struct.pack("i", 0))
        except OSError as e:
            self.stop()
            return f"{self.PATH}: {e.strerror}"
        return None

    def stop(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
