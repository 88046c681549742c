"""The throughput run (the default): rounds of the scenarios, the crypto limit, the
core alone, then --perf and the memory measurement."""

import collections
import os
import re
import subprocess
import sys
import time

from .common import AUD, CORE_SPEED, HEADER, ROOT, TEAM, VENV, WARNINGS, Fail, log
from .memory import measure_memory
from .perf import PERF_SCENARIOS, perf_scenario
from .procs import http_status, wait_http
from .report import throughput_report
from .scenarios import BY_KEY, CACHE_LINES, PAIRED, THROUGHPUT, start_nginx
from .system import cpu_busy
from .tokens import read_tokens
from .wrk import run_scenario


def core_verify_us(ctx):
    """core/examples/verify_speed on the server CPU: µs per full verification (`verify`:
    parse, RS256, claims) by the core alone, outside nginx."""
    out = subprocess.run(ctx.on_server + [CORE_SPEED], capture_output=True, text=True).stdout
    m = re.search(r"^full verify: ([\d.]+) us", out, re.M)
    if not m:
        raise Fail(f"could not read verify_speed's output:\n{out}")
    return float(m.group(1))


def openssl_verify_per_s(ctx):
    out = subprocess.run(ctx.on_server + ["openssl", "speed", "-seconds", "3", "rsa2048"],
                         capture_output=True, text=True).stdout
    m = re.search(r"^rsa 2048 bits .*?([\d.]+)\s*$", out, re.M)
    if not m:
        raise Fail(f"could not read openssl speed's output:\n{out}")
    return float(m.group(1))


def throughput(ctx):
    a = ctx.a
    ctx.servers = {}
    for i, name in enumerate(["A", "B"]):
        port = a.port_base + i
        _, worker = start_nginx(ctx, name, port, CACHE_LINES[name])
        ctx.servers[name] = {"port": port, "worker": worker}
    env = dict(os.environ, CF_ACCESS_CERTS_URL=ctx.certs_url, CF_ACCESS_TEAM_DOMAIN=TEAM,
               CF_ACCESS_AUD=AUD)
    ctx.gunicorn = ctx.procs.start(
        ctx.on_server + [os.path.join(VENV, "bin", "gunicorn"), "--preload", "-w",
                         str(a.verifier_workers), "-k", "sync", "-b",
                         f"127.0.0.1:{ctx.verifier_port}", "--log-level", "warning",
                         "verifier:app"],
        os.path.join(ctx.dir, "gunicorn.log"), cwd=os.path.join(ROOT, "bench"), env=env)
    wait_http(f"http://127.0.0.1:{ctx.verifier_port}/verify")

    # Sanity checks.
    pa, pb = (f"http://127.0.0.1:{ctx.servers[n]['port']}" for n in "AB")
    bad_sig = ctx.token[:-5] + ("AAAAA" if not ctx.token.endswith("AAAAA") else "BBBBB")
    for want, url, token in [
        (200, f"{pa}/off/index.html", None),
        (200, f"{pa}/on/index.html", ctx.token),
        (403, f"{pa}/on/index.html", None),
        (403, f"{pa}/on/index.html", bad_sig),
        (200, f"{pa}/ar/index.html", ctx.token),
        (403, f"{pa}/ar/index.html", None),
        (403, f"{pa}/ar/index.html", bad_sig),
        (200, f"{pb}/on/index.html", ctx.token),
        (200, f"{pb}/on/index.html", read_tokens(ctx.tokens, 2)[1]),
        (200, f"{pb}/on/", ctx.token),
        (403, f"{pb}/on/", None),
        (200, f"{pb}/tf/x", ctx.token),
        (403, f"{pb}/tf/x", None),
        (204, f"{pa}/done", None),
    ]:
        got = http_status(url, token)
        if got != want:
            raise Fail(f"sanity check: {url}{' (with a token)' if token else ''} answered "
                       f"{got}, expected {want}")

    busy_before = cpu_busy(3)
    log(f"CPU use by other processes before measuring: {busy_before}% of {ctx.ncpu} CPUs")
    ctx.idle_note = "the kernel's default CPU idle (halting)"
    if a.idle == "poll":
        why = ctx.idle.start()
        if why:
            WARNINGS.append(f"--idle poll: {why} (needs root); measured with the default idle "
                            "state instead, so a slow scenario also pays a cross-CPU wakeup "
                            "per response (see --help)")
        else:
            ctx.idle_note = "idle CPUs polling (`/dev/cpu_dma_latency` held at 0, `--idle poll`)"
    log(f"CPU idle: {ctx.idle_note}")
    if busy_before > 5:
        WARNINGS.append(f"other processes used {busy_before}% of the CPUs just before "
                        "measuring: numbers are noisy")
    log("warm-up (2 s per instance)")
    for name in "AB":
        subprocess.run(ctx.on_client + ["wrk", "-t", "1", "-c", str(a.connections), "-d", "2s",
                                        "-H", f"{HEADER}: {ctx.token}",
                                        f"http://127.0.0.1:{ctx.servers[name]['port']}/on/index.html"],
                       capture_output=True, timeout=30)
    start = time.time()
    results = collections.defaultdict(list)  # key -> one dict per round
    openssl_v = []
    for rnd in range(1, a.rounds + 1):
        log(f"round {rnd}/{a.rounds} (wrk -t{a.threads} -c{a.connections} -d{ctx.dur_s}s "
            f"--latency; {ctx.pinning})")
        # (1), (3), V and the core alone first, back to back: the crypto limit and what it
        # is compared with are measured within seconds of each other (a shared VM's speed
        # drifts from minute to minute). Then the other scenarios.
        for key in PAIRED:
            results[key].append(run_scenario(ctx, BY_KEY[key], rnd))
            time.sleep(1)
        v = openssl_verify_per_s(ctx)
        openssl_v.append(v)
        print(f"   {'openssl speed -seconds 3 rsa2048':<48} {v:10.0f} verify/s",
              file=sys.stderr, flush=True)
        ctx.core_us.append(core_verify_us(ctx))
        print(f"   {'core alone (verify_speed)':<48} {ctx.core_us[-1]:10.2f} us/verify",
              file=sys.stderr, flush=True)
        for s in THROUGHPUT:
            if s.key not in PAIRED:
                results[s.key].append(run_scenario(ctx, s, rnd))
                time.sleep(1)
    ctx.profiles = {}
    if a.perf:
        log("where the CPU goes: one more run per scenario, the worker sampled by perf")
        os.makedirs(os.path.join(ctx.dir, "perf"))
        for key in PERF_SCENARIOS:
            ctx.profiles[key] = perf_scenario(ctx, BY_KEY[key])
            time.sleep(1)
    ctx.idle.stop()
    memory = measure_memory(ctx) if a.rss_tokens > 0 else None
    elapsed = time.time() - start
    busy_after = cpu_busy(2)
    return throughput_report(ctx, results, openssl_v, memory, elapsed, busy_before, busy_after)
