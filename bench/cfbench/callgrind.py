"""Instructions per request (--instructions): nginx and the core under callgrind."""

import collections
import dataclasses
import glob
import os
import re
import signal
import subprocess
import sys
import time

from .common import AUD, CORE_EXAMPLE, DEV, HEADER, TEAM, Fail, log
from .procs import KeepAliveClient, tail
from .report import instructions_report
from .scenarios import CACHE_LINES, SCENARIOS, nginx_argv, nginx_conf
from .tokens import read_tokens


SYSCALLS_EPOLL_WAIT = {"232", "281", "441"}  # epoll_wait, epoll_pwait, epoll_pwait2 (x86_64)


def sleeping_in_epoll(pid):
    """(blocked in epoll_wait?, voluntary context switches) of the process's main thread."""
    try:
        with open(f"/proc/{pid}/task/{pid}/syscall") as f:
            nr = f.read().split(" ", 1)[0]
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            switches = next(line for line in f if line.startswith("voluntary_ctxt_switches"))
    except OSError:
        return False, None
    return nr in SYSCALLS_EPOLL_WAIT, switches


def wait_idle(pid, timeout=60.0):
    """Until nginx's event loop sleeps in epoll_wait (seen twice, 1 ms apart, with no
    context switch between): it has finished everything the last request started."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        idle, sw = sleeping_in_epoll(pid)
        if idle:
            time.sleep(0.001)
            idle2, sw2 = sleeping_in_epoll(pid)
            if idle2 and sw2 == sw:
                return
        else:
            time.sleep(0.0002)
    raise Fail(f"nginx (pid {pid}) did not go idle")


def raw_request(token, path="index.html"):
    hdr = f"{HEADER}: {token}\r\n" if token else ""
    return f"GET /{path} HTTP/1.1\r\nHost: bench\r\n{hdr}\r\n".encode()


def callgrind_control(args, pid):
    out = subprocess.run(["callgrind_control"] + args + [str(pid)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode != 0:
        raise Fail(f"callgrind_control {' '.join(args)} {pid} failed:\n{out.stdout}{out.stderr}")


class Names:
    """Callgrind's name compression: `(id) name` defines, `(id)` refers."""

    def __init__(self):
        self.ids = {}

    def get(self, text):
        text = text.strip()
        m = re.match(r"\((\d+)\)\s*(.*)$", text)
        if not m:
            return text
        if m.group(2):
            self.ids[m.group(1)] = m.group(2)
            return m.group(2)
        return self.ids[m.group(1)]


@dataclasses.dataclass
class Profile:
    total: int
    self_cost: dict  # (object, function) -> Ir
    calls: dict  # (caller object, caller function, callee object, callee function) -> Ir


def parse_callgrind(path):
    """The raw callgrind output format (valgrind's docs, "Callgrind Format Specification"):
    self cost per function, and inclusive cost per call arc."""
    obs, fls, fns = Names(), Names(), Names()
    self_cost = collections.Counter()
    calls = collections.Counter()
    ob = fn = cob = cfn = None
    in_call = False
    total = None
    with open(path, errors="replace") as f:
        for line in f:
            c = line[:1]
            if c.isdigit() or c in "+-*":
                cost = int(line.split()[1]) if len(line.split()) > 1 else 0
                if in_call:
                    calls[(ob, fn, cob or ob, cfn)] += cost
                    in_call, cob, cfn = False, None, None
                else:
                    self_cost[(ob, fn)] += cost
            elif line.startswith("fn="):
                fn = fns.get(line[3:])
            elif line.startswith("ob="):
                ob = obs.get(line[3:])
            elif line.startswith("cob="):
                cob = obs.get(line[4:])
            elif line.startswith("cfn="):
                cfn = fns.get(line[4:])
            elif line.startswith(("fl=", "fi=", "fe=")):
                fls.get(line[3:])
            elif line.startswith(("cfi=", "cfl=")):
                fls.get(line[4:])
            elif line.startswith("calls="):
                in_call = True
            elif line.startswith("events:"):
                if line.split()[1:] != ["Ir"]:
                    raise Fail(f"{path}: unexpected events {line.strip()}")
            elif line.startswith(("positions:",)):
                if line.split()[1:] != ["line"]:
                    raise Fail(f"{path}: unexpected positions {line.strip()}")
            elif line.startswith("totals:"):
                total = int(line.split()[1])
    if total is None:
        total = sum(self_cost.values())
    return Profile(total, self_cost, calls)


def short_name(name):
    """A function's name with generic parameters and the legacy mangling hash taken out, so
    that the instances of one generic function count together."""
    name = re.sub(r"::h[0-9a-f]{16}$", "", name)
    while True:
        # Innermost `<...>` right after a name: generic arguments.
        new = re.sub(r"(?<=[\w>])<[^<>]*>", "", name)
        if new == name:
            return name
        name = new


def is_module(obj):
    return obj is not None and obj.endswith("libngx_http_cf_access_module.so")


def summarize(profile, requests):
    """Per request: Ir of the event loop, the module's inclusive Ir, and the module's
    functions."""
    module_in = sum(v for (cob_, _, ob, _), v in profile.calls.items()
                    if is_module(ob) and not is_module(cob_))
    funcs = collections.Counter()
    for (ob, fn), v in profile.self_cost.items():
        if is_module(ob):
            funcs[("module", short_name(fn or "???"))] += v
    for (cob_, _, ob, fn), v in profile.calls.items():
        if is_module(cob_) and not is_module(ob):
            funcs[(os.path.basename(ob or "???") + " (called)", short_name(fn or "???"))] += v
    return {
        "total": profile.total,
        "per_request": profile.total / requests,
        "module": module_in / requests,
        "funcs": {k: v / requests for k, v in funcs.items()},
    }


def thread_file(out_prefix, dump):
    """The dump's file for the event loop's thread (the first)."""
    files = sorted(glob.glob(f"{out_prefix}.{dump}-01")) or sorted(glob.glob(f"{out_prefix}.{dump}"))
    if not files:
        raise Fail(f"no callgrind dump {out_prefix}.{dump}-01: "
                   f"{sorted(glob.glob(out_prefix + '*'))}")
    return files[0]


# ngx_time_update: nginx's clock, the only work that depends on how long a run takes (it
# formats its time strings when the wall-clock second changes): not counted (collection is
# toggled off inside it).
VALGRIND = ["valgrind", "--tool=callgrind", "--separate-threads=yes", "--compress-strings=no",
            "--compress-pos=no", "--toggle-collect=ngx_time_update",
            # After --toggle-collect, which turns it off.
            "--collect-atstart=yes"]


def instructions_scenario(ctx, s, run_no, tokens):
    a = ctx.a
    port = a.port_base + 5
    name = f"I{run_no}-{s.key}"
    access = "unused" if s.key == "unused" else s.access
    d = nginx_conf(ctx, name, port, CACHE_LINES[s.server], instructions_access=access)
    out = os.path.join(d, "callgrind.out")
    p = ctx.procs.start(ctx.on_server + VALGRIND + [f"--callgrind-out-file={out}"]
                        + nginx_argv(ctx, d), os.path.join(d, "valgrind.log"),
                        stop_sig=signal.SIGQUIT, grace=60)
    try:
        client = None
        end = time.monotonic() + 180
        while client is None:
            try:
                client = KeepAliveClient(port)
            except OSError:
                if p.poll() is not None or time.monotonic() > end:
                    raise Fail(f"nginx under callgrind did not start:\n"
                               f"{tail(os.path.join(d, 'error.log'))}"
                               f"{tail(os.path.join(d, 'valgrind.log'))}") from None
                time.sleep(0.2)
        n, w = a.requests, a.warmup
        if s.token == "pool":
            # Measured: tokens 1..n (as the core's figure); warm-up: the next w.
            measured = [raw_request(t, s.path) for t in tokens[:n]]
            warm = [raw_request(t, s.path) for t in tokens[n:n + w]]
        else:
            one = raw_request(tokens[0] if s.token == "one" else None, s.path)
            measured, warm = [one] * n, [one] * w
        for raw in warm:
            wait_idle(p.pid)
            if client.request(raw) != s.status:
                raise Fail(f"{s.key}: warm-up request answered otherwise than {s.status}")
        wait_idle(p.pid)
        callgrind_control(["-z"], p.pid)
        wait_idle(p.pid)
        t0 = time.monotonic()
        for raw in measured:
            wait_idle(p.pid)
            status = client.request(raw)
            if status != s.status:
                raise Fail(f"{s.key}: a request answered {status}, expected {s.status}")
        wait_idle(p.pid)
        callgrind_control(["-d"], p.pid)
        took = time.monotonic() - t0
        client.close()
    finally:
        ctx.procs.stop(p)
    summary = summarize(parse_callgrind(thread_file(out, 1)), a.requests)
    print(f"   run {run_no} {'(%d) %s' % (s.n, s.key):<14} {summary['per_request']:12,.1f} Ir/request"
          f"  module {summary['module']:10,.1f}  ({took:.0f} s)", file=sys.stderr, flush=True)
    return summary


def core_instructions(ctx, tokens_file):
    """The core example under callgrind: Ir per token of measure_rsa/verify/decide."""
    d = os.path.join(ctx.dir, "core")
    os.makedirs(d, exist_ok=True)
    certs = os.path.join(d, "certs.json")
    with open(certs, "wb") as f:
        f.write(subprocess.check_output([DEV, "jwks", "--key", ctx.key]))
    out = os.path.join(d, "callgrind.out")
    n = ctx.a.requests
    res = subprocess.run(ctx.on_server + VALGRIND + [f"--callgrind-out-file={out}",
                                                    CORE_EXAMPLE, certs, TEAM, AUD, tokens_file,
                                                    str(n)],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise Fail(f"verify_instructions failed:\n{res.stdout}{res.stderr[-3000:]}")
    files = sorted(glob.glob(out + "-01")) or [out]
    prof = parse_callgrind(files[0])
    got = {}
    for (_, _, _, callee), v in prof.calls.items():
        for what in ("rsa", "verify", "decide"):
            if short_name(callee or "").endswith(f"verify_instructions::measure_{what}"):
                got[what] = got.get(what, 0) + v / n
    if set(got) != {"rsa", "verify", "decide"}:
        raise Fail(f"verify_instructions: measured functions not found in {files[0]}: {got}")
    print(f"   core alone: RSA {got['rsa']:,.1f}  verify {got['verify']:,.1f}  "
          f"decide {got['decide']:,.1f} Ir per token", file=sys.stderr, flush=True)
    return got


def instructions(ctx):
    a = ctx.a
    tokens = read_tokens(ctx.tokens, a.requests + a.warmup)
    chosen = [s for s in SCENARIOS if s.instructions]
    runs = []
    for run_no in range(1, a.instr_runs + 1):
        log(f"instructions, run {run_no}/{a.instr_runs}: {a.warmup} warm-up + {a.requests} "
            "measured requests per scenario, nginx under callgrind")
        per = {s.key: instructions_scenario(ctx, s, run_no, tokens) for s in chosen}
        per["core"] = core_instructions(ctx, ctx.tokens)
        runs.append(per)
    return instructions_report(ctx, chosen, runs)
