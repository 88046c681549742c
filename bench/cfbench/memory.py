"""The worker's memory while distinct tokens fill its cache (--rss-tokens)."""

import os
import re
import signal
import sys
import time

from .common import ROOT, WARNINGS, Fail, fmt, log, mib
from .procs import wait_http
from .scenarios import CACHE_LINES, start_nginx
from .system import status_kb


def rss_points(total, step):
    """1k, 2k, 5k, 10k, ... below `step`, then every `step`, then `total`."""
    points, p, mult = [], 1000, [2, 2.5, 2]
    i = 0
    while p < step and p < total:
        points.append(p)
        p = int(p * mult[i % 3])
        i += 1
    p = step
    while p < total:
        points.append(p)
        p += step
    return points + [total]


def measure_memory(ctx):
    port = ctx.a.port_base + 2
    _, worker = start_nginx(ctx, "C", port, CACHE_LINES["A"])
    wait_http(f"http://127.0.0.1:{port}/done")
    rows = [("0 (fresh worker)", status_kb(worker, "VmRSS"), status_kb(worker, "VmHWM"))]
    log(f"memory: sending {ctx.a.rss_tokens} distinct valid tokens to a fresh nginx "
        f"(default cache), VmRSS every {ctx.rss_step}")
    sent = bad_total = 0
    for point in rss_points(ctx.a.rss_tokens, ctx.rss_step):
        step = point - sent
        out_path = os.path.join(ctx.dir, "wrk", f"rss-{sent}.txt")
        marker = os.path.join(ctx.dir, "wrk", f"rss-{sent}.done")
        # Bounded: wrk's -d is at least 60 s, or 1 ms per token; feed.lua creates `marker`
        # when every token has been answered, and wrk is then stopped with SIGINT (it prints
        # its results as usual).
        limit = max(step // 1000, 60)
        argv = ctx.on_client + ["wrk", "-t", "1", "-c", str(ctx.a.connections), "-d", f"{limit}s",
                                "-s", os.path.join(ROOT, "bench", "feed.lua"),
                                f"http://127.0.0.1:{port}/on/index.html",
                                ctx.tokens, str(sent + 1), str(step), marker]
        wrk = ctx.procs.start(argv, out_path, stop_sig=signal.SIGKILL)
        end = time.monotonic() + limit + 30
        while wrk.poll() is None:
            if os.path.exists(marker):
                # SIGINT can be taken by wrk's worker thread instead of its main thread: repeat.
                wrk.send_signal(signal.SIGINT)
                time.sleep(0.3)
            elif time.monotonic() > end:
                wrk.kill()
            else:
                time.sleep(0.05)
        ctx.procs.stop(wrk)
        with open(out_path) as f:
            text = f.read()
        if wrk.returncode != 0:
            raise Fail(f"wrk failed (memory):\n{text}")
        m = re.search(r"^feed ok=(\d+) bad=(\d+)$", text, re.M)
        if not m:
            raise Fail(f"could not read the memory feed's output:\n{text}")
        ok, bad = int(m.group(1)), int(m.group(2))
        if ok + bad != step:
            WARNINGS.append(f"memory: {ok + bad} of {step} tokens answered in the step after "
                            f"{sent} (time limit?)")
        bad_total += bad
        sent += step
        rss, hwm = status_kb(worker, "VmRSS"), status_kb(worker, "VmHWM")
        rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
        print(f"   {sent:9d} tokens  VmRSS {mib(rss):>8} MiB  VmHWM {mib(hwm):>8} MiB  "
              f"({float(rate.group(1)) if rate else 0:.0f} req/s)", file=sys.stderr, flush=True)
        rows.append((fmt(sent), rss, hwm))
    if bad_total:
        WARNINGS.append(f"memory: {bad_total} tokens were refused (expected 0)")
    return rows, status_kb(worker, "VmHWM")
