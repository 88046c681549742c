"""Running wrk for one scenario and reading its output."""

import os
import re
import subprocess
import sys
import time

from .common import HEADER, ROOT, WARNINGS, Fail
from .procs import children
from .scenarios import LOCATIONS
from .system import CLK_TCK, cpu_ticks, steal_ticks


def parse_duration(text):
    m = re.fullmatch(r"(\d+)([sm]?)", text)
    if not m or int(m.group(1)) < 1:
        raise Fail("--duration: use whole seconds or minutes, e.g. 10s, 1m")
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def wrk_ms(value):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def parse_wrk(text):
    def one(pattern):
        m = re.search(pattern, text, re.M)
        return m.group(1) if m else None
    rps, total = one(r"^Requests/sec:\s+([\d.]+)"), one(r"^\s*(\d+) requests in")
    if rps is None or total is None:
        raise Fail(f"could not read wrk's output:\n{text}")
    return {
        "rps": float(rps),
        "total": int(total),
        "p50": wrk_ms(one(r"^\s+50%\s+(\S+)") or ""),
        "p99": wrk_ms(one(r"^\s+99%\s+(\S+)") or ""),
        "non2xx": int(one(r"Non-2xx or 3xx responses:\s+(\d+)") or 0),
        "sockerr": one(r"(Socket errors:.*)$"),
    }


def wrk_argv(ctx, s):
    """wrk, on the client CPU, sending scenario `s`'s requests for --duration."""
    srv = ctx.servers[s.server]
    url = f"http://127.0.0.1:{srv['port']}{LOCATIONS[s.access]}{s.path}"
    args, extra = [], []
    if s.token == "one":
        args = ["-H", f"{HEADER}: {ctx.token}"]
    elif s.token == "pool":
        args, extra = ["-s", os.path.join(ROOT, "bench", "rotate.lua")], [ctx.tokens, str(ctx.a.pool)]
    return ctx.on_client + ["wrk", "-t", str(ctx.a.threads), "-c", str(ctx.a.connections),
                            "-d", f"{ctx.dur_s}s", "--latency"] + args + [url] + extra


def run_scenario(ctx, s, rnd):
    pids = [ctx.servers[s.server]["worker"]]
    vpids = [ctx.gunicorn.pid] + children(ctx.gunicorn.pid) if s.verifier else []
    st0, c0, v0, t0 = steal_ticks(ctx.server_cpu), cpu_ticks(pids), cpu_ticks(vpids), time.time()
    argv = wrk_argv(ctx, s)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=ctx.dur_s + 60)
    except subprocess.TimeoutExpired:
        raise Fail(f"wrk did not finish (scenario {s.n}, round {rnd})") from None
    t1 = time.time()
    c1, v1, st1 = cpu_ticks(pids), cpu_ticks(vpids), steal_ticks(ctx.server_cpu)
    with open(os.path.join(ctx.dir, "wrk", f"s{s.n}-r{rnd}.txt"), "w") as f:
        f.write(out.stdout + out.stderr)
    if out.returncode != 0:
        raise Fail(f"wrk failed (scenario {s.n}, round {rnd}):\n{out.stdout}{out.stderr}")
    w = parse_wrk(out.stdout)
    el = t1 - t0
    cpu = (c1 - c0) / CLK_TCK / el * 100
    vcpu = (v1 - v0) / CLK_TCK / el * 100
    steal = (st1 - st0) / CLK_TCK / el * 100
    where = f"scenario {s.n} round {rnd}"
    bad = w["total"] - w["non2xx"] if s.status != 200 else w["non2xx"]
    if bad:
        WARNINGS.append(f"{where}: {bad} of {w['total']} responses were not {s.status}")
    if w["sockerr"]:
        WARNINGS.append(f"{where}: {w['sockerr']}")
    if steal >= 3:
        WARNINGS.append(f"{where}: the hypervisor took {steal:.0f}% of the server CPU (steal time)")
    if not s.verifier and cpu < 90:
        WARNINGS.append(f"{where}: the nginx worker used only {cpu:.0f}% of its CPU (other "
                        "processes on it, or the load generator limited the run)")
    r = dict(rps=w["rps"], p50=w["p50"], p99=w["p99"], cpu=cpu, vcpu=vcpu,
             us=(cpu + vcpu) / 100 / w["rps"] * 1e6)
    shown = f"{cpu:.0f}+{vcpu:.0f}" if s.verifier else f"{cpu:.0f}"
    print(f"   {'(%d) %s' % (s.n, s.name):<48} {w['rps']:10.0f} req/s  p50 {w['p50']:7.3f} ms  "
          f"p99 {w['p99']:7.3f} ms  server CPU {shown}% ({r['us']:.1f} us/req, steal {steal:.0f}%)",
          file=sys.stderr, flush=True)
    return r
