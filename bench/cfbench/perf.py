"""Where the worker's CPU goes (--perf): one wrk run under `perf record`."""

import collections
import os
import signal
import subprocess
import sys
import time

from .common import MODULE, Fail
from .wrk import parse_wrk, wrk_argv


PERF_GROUPS = [
    ("crypto", "RSA and SHA-256 (aws-lc, in the module)"),
    ("module", "the module's other code (base64, JSON, policy, glue)"),
    ("nginx", "nginx"),
    ("libs", "libc and other libraries"),
    ("wakeup", "kernel: waking the client (`sock_def_readable`)"),
    ("kernel", "kernel: the rest (loopback TCP, epoll, sendfile)"),
]
PERF_SCENARIOS = ["off", "hit", "full", "no-cache", "no-token"]


def perf_frame(line):
    """(symbol, object) of one `perf script -F ip,sym,dso` frame line."""
    parts = line.strip().split(None, 1)
    if len(parts) < 2:
        return "", ""
    sym, _, dso = parts[1].rpartition(" (")
    return sym, dso.rstrip(")")


def perf_groups(script, nginx):
    """CPU time (ns) by PERF_GROUPS key, from `perf script -F period,ip,sym,dso`: one block
    per sample, a line with its period then its call chain, innermost frame first."""
    totals = collections.Counter()
    for block in script.split("\n\n"):
        lines = [x for x in block.splitlines() if x.strip()]
        if len(lines) < 2 or not lines[0].strip().isdigit():
            continue
        period = int(lines[0])
        frames = [perf_frame(x) for x in lines[1:]]
        sym, dso = frames[0]
        if dso == "[kernel.kallsyms]":
            woke = any(f == ("sock_def_readable", "[kernel.kallsyms]") for f in frames)
            group = "wakeup" if woke else "kernel"
        elif dso == MODULE:
            group = "crypto" if sym.startswith("aws_lc_") else "module"
        elif dso == nginx:
            group = "nginx"
        else:
            group = "libs"
        totals[group] += period
    return totals


def perf_scenario(ctx, s):
    """One wrk run of scenario `s` with the worker sampled by perf (cpu-clock, 4,999 Hz,
    kernel call chains): its CPU time per request, by PERF_GROUPS key (µs)."""
    worker = ctx.servers[s.server]["worker"]
    data = os.path.join(ctx.dir, "perf", f"s{s.n}.data")
    rec = ctx.procs.start(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-g",
                           "-p", str(worker), "-o", data],
                          os.path.join(ctx.dir, "perf", f"s{s.n}.log"), stop_sig=signal.SIGINT,
                          grace=60.0)
    time.sleep(0.5)  # perf attaches; the worker is idle meanwhile, so it adds no samples
    try:
        out = subprocess.run(wrk_argv(ctx, s), capture_output=True, text=True,
                             timeout=ctx.dur_s + 60)
    except subprocess.TimeoutExpired:
        raise Fail(f"wrk did not finish (perf, scenario {s.n})") from None
    ctx.procs.stop(rec)
    if out.returncode != 0:
        raise Fail(f"wrk failed (perf, scenario {s.n}):\n{out.stdout}{out.stderr}")
    total = parse_wrk(out.stdout)["total"]
    script = subprocess.run(["perf", "script", "-i", data, "-F", "period,ip,sym,dso"],
                            capture_output=True, text=True).stdout
    groups = perf_groups(script, ctx.nginx)
    if not groups:
        raise Fail(f"perf recorded no samples of the worker (scenario {s.n}); see "
                   f"{os.path.join(ctx.dir, 'perf')}")
    us = {k: v / 1000 / total for k, v in groups.items()}
    print(f"   {'(%d) %s' % (s.n, s.name):<48} {sum(us.values()):6.1f} us/req under perf: "
          + ", ".join(f"{k} {us.get(k, 0):.1f}" for k, _ in PERF_GROUPS),
          file=sys.stderr, flush=True)
    return us
