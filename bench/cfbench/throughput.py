"""The throughput run (the default): rounds of the scenarios, the crypto limit, the
core alone, the first request of a session (cf_access_identity), then --perf and the memory
measurement."""

import collections
import os
import re
import socket
import statistics
import subprocess
import sys
import time

from .common import (AUD, CORE_SPEED, HEADER, ROOT, TEAM, VENV, WARNINGS, Fail, log,
                     percentile)
from .memory import measure_memory
from .perf import PERF_SCENARIOS, perf_scenario
from .procs import KeepAliveClient, http_get, http_status, wait_http
from .report import throughput_report
from .scenarios import (BY_KEY, CACHE_LINES, IDENTITY_DELAY_MS, IDENTITY_GROUPS, LOCATIONS,
                        PAIRED, ROUND_ORDER, start_nginx)
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


# The first request of a session: this many fresh tokens to /id/ (cf_access_identity), and
# as many to /on/ (no identity), one request each, and each /id/ token's get-identity straight
# to the stand-in: ~SESSIONS x 43 ms.
SESSIONS = 200
SESSIONS_TIME_LIMIT = 30  # seconds


def identity_counters(ctx):
    """nginx A's cf_access_identity counters (its /metrics): fetches, cache hits, failures."""
    status, _, body = http_get(f"http://127.0.0.1:{ctx.servers['A']['port']}/metrics")
    got = {}
    for key in ("fetches", "cache_hits", "failures"):
        m = re.search(rf"^cf_access_identity_{key}_total (\d+)$", body.decode(), re.M)
        got[key] = int(m.group(1)) if status == 200 and m else None
    return got


def stand_in_ms(ctx, token):
    """One get-identity request straight to the stand-in, as nginx's subrequest makes it (a
    new connection, HTTP/1.0, the token in the cookie): ms until its answer is complete."""
    host, port = ctx.identity_url.split("/")[2].split(":")
    path = "/" + ctx.identity_url.split("/", 3)[3]
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                     f"Cookie: CF_Authorization={token}\r\n\r\n".encode())
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    ms = (time.perf_counter() - t0) * 1e3
    if not answer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise Fail(f"first request of a session: the stand-in answered {answer[:40]!r}")
    return ms


def first_requests(ctx):
    """The first request of a session: SESSIONS fresh tokens (never sent to nginx A) to /id/,
    each one get-identity subrequest to the stand-in (IDENTITY_DELAY_MS) after its full
    verification, and SESSIONS others to /on/ (the full verification only), alternately, one
    request at a time on one keep-alive connection, from the client CPU; and, in between, the
    stand-in alone (each /id/ token's get-identity, sent straight to it). Returns the
    latencies (ms) of each, and the identity fetches and failures counted meanwhile."""
    port = ctx.servers["A"]["port"]
    tokens = read_tokens(ctx.tokens, 1 + 2 * SESSIONS)[1:]
    kinds = {"plain": (LOCATIONS["on"], tokens[:SESSIONS]),
             "identity": (LOCATIONS["identity"], tokens[SESSIONS:])}
    log(f"first request of a session: {SESSIONS} fresh tokens to {LOCATIONS['identity']} "
        f"(cf_access_identity, stand-in answering in {IDENTITY_DELAY_MS} ms) and {SESSIONS} "
        f"to {LOCATIONS['on']}, one at a time on one keep-alive connection")
    before = identity_counters(ctx)
    pinned = None
    if ctx.on_client and hasattr(os, "sched_setaffinity"):
        pinned = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(ctx.on_client[-1])})
    lat = {k: [] for k in list(kinds) + ["stand-in"]}
    client = KeepAliveClient(port)
    try:
        # The connection's first request (a cached token) is not measured.
        client.request(f"GET {LOCATIONS['on']}index.html HTTP/1.1\r\nHost: bench\r\n"
                       f"{HEADER}: {ctx.token}\r\n\r\n".encode())
        end = time.monotonic() + SESSIONS_TIME_LIMIT
        for i in range(SESSIONS):
            # Alternately first: neither kind always follows the other.
            for kind in (("plain", "identity") if i % 2 == 0 else ("identity", "plain")):
                loc, toks = kinds[kind]
                raw = (f"GET {loc}index.html HTTP/1.1\r\nHost: bench\r\n"
                       f"{HEADER}: {toks[i]}\r\n\r\n").encode()
                t0 = time.perf_counter()
                status = client.request(raw)
                lat[kind].append((time.perf_counter() - t0) * 1e3)
                if status != 200:
                    raise Fail(f"first request of a session: {loc}index.html with a fresh "
                               f"token answered {status}, expected 200")
            lat["stand-in"].append(stand_in_ms(ctx, kinds["identity"][1][i]))
            if time.monotonic() > end:
                WARNINGS.append(f"first request of a session: stopped after {i + 1} of "
                                f"{SESSIONS} tokens ({SESSIONS_TIME_LIMIT} s limit)")
                break
    finally:
        client.close()
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
    after = identity_counters(ctx)
    n = len(lat["identity"])
    fetches = failures = None
    if None not in before.values() and None not in after.values():
        fetches = after["fetches"] - before["fetches"]
        failures = after["failures"] - before["failures"]
        if fetches != n or failures:
            WARNINGS.append(f"first request of a session: {fetches} get-identity fetches and "
                            f"{failures} failures for {n} fresh tokens (expected {n} and 0)")
    else:
        WARNINGS.append("first request of a session: no cf_access_identity counters in "
                        "nginx A's /metrics")
    for kind in lat:
        print(f"   {'first request, ' + kind:<48} p50 {statistics.median(lat[kind]):7.3f} ms  "
              f"p90 {percentile(lat[kind], 90):7.3f} ms", file=sys.stderr, flush=True)
    return {"lat": lat, "fetches": fetches, "failures": failures}


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
        (200, f"{pa}/id/index.html", ctx.token),
        (403, f"{pa}/id/index.html", None),
        (403, f"{pa}/id/index.html", bad_sig),
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
    status, headers, _ = http_get(f"{pa}/idg/index.html", ctx.token)
    groups = headers.get("X-Groups") or ""
    if status != 200 or any(f'"{g}"' not in groups and g not in groups.split(",")
                            for g in IDENTITY_GROUPS):
        raise Fail(f"sanity check: {pa}/idg/index.html answered {status} with $cf_access_groups "
                   f"[{groups}], expected 200 and the stand-in's groups {IDENTITY_GROUPS}")

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
        for s in ROUND_ORDER:
            if s.key == "identity":
                before = identity_counters(ctx)
            results[s.key].append(run_scenario(ctx, s, rnd))
            if s.key == "identity":
                after = identity_counters(ctx)
                if before["fetches"] is not None and after["fetches"] is not None and \
                        after["fetches"] != before["fetches"]:
                    WARNINGS.append(f"scenario {s.n} round {rnd}: "
                                    f"{after['fetches'] - before['fetches']} get-identity "
                                    "fetches (expected 0: the identity is cached)")
            time.sleep(1)
    ctx.sessions = first_requests(ctx)
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
