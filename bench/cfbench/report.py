"""The Markdown reports (printed, and saved in target/bench-results/)."""

import collections
import os
import re
import statistics
import subprocess
import sys
import time

from .common import RESULTS, ROOT, VENV, WARNINGS, fmt, log, mib, percentile
from .perf import PERF_GROUPS, PERF_SCENARIOS
from .scenarios import BY_KEY, IDENTITY_DELAY_MS, IDENTITY_GROUPS, TARGETS, THROUGHPUT


def perf_report(ctx, profiles):
    keys = [k for k in PERF_SCENARIOS if k in profiles]
    head = " | ".join(f"({BY_KEY[k].n}) {k}" for k in keys)
    lines = [
        "",
        "Where the worker's CPU goes (`--perf`: one more wrk run per scenario with the worker",
        "sampled by `perf record -e cpu-clock -F 4999 -g`; µs of CPU per request, by the",
        "innermost frame; perf's own overhead is in the totals):",
        "",
        f"| µs/request | {head} |",
        "|---|" + "---:|" * len(keys),
    ]
    for g, label in PERF_GROUPS:
        lines.append(f"| {label} | "
                     + " | ".join(f"{profiles[k].get(g, 0):.1f}" for k in keys) + " |")
    lines.append("| **total** | "
                 + " | ".join(f"**{sum(profiles[k].values()):.1f}**" for k in keys) + " |")
    return lines


def sessions_report(sessions):
    """The first request of a session, with and without cf_access_identity."""
    lat = sessions["lat"]
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    p90 = {k: percentile(v, 90) for k, v in lat.items()}
    n = len(lat["identity"])
    added = p50["identity"] - p50["plain"]
    counted = ("" if sessions["fetches"] is None else
               f" The module counted {sessions['fetches']} get-identity fetches "
               f"({sessions['failures']} failed).")
    return [
        "",
        f"First request of a session (nginx A): {n} fresh tokens (never sent to it) to (11)'s "
        f"location and {n} to (2)'s,",
        "one request each, alternately, one at a time on one keep-alive connection (a Python "
        "client on the client CPU);",
        "each is a full verification, and for (11) then one get-identity subrequest to the "
        f"stand-in ({IDENTITY_DELAY_MS} ms per answer);",
        "and the stand-in alone: each of (11)'s tokens' get-identity sent straight to it, a new "
        "connection each, as nginx's subrequest:",
        "",
        "| first request of a session | p50 (ms) | p90 (ms) |",
        "|---|---:|---:|",
        f"| (2)'s location: cf_access on, full verification | {p50['plain']:.2f} | "
        f"{p90['plain']:.2f} |",
        f"| (11)'s location: + cf_access_identity (get-identity) | {p50['identity']:.2f} | "
        f"{p90['identity']:.2f} |",
        f"| **added by the identity** | **{added:.2f}** | {p90['identity'] - p90['plain']:.2f} |",
        f"| the stand-in alone (get-identity, {IDENTITY_DELAY_MS} ms delay) | "
        f"{p50['stand-in']:.2f} | {p90['stand-in']:.2f} |",
        "",
        f"Added latency of a session's first request: {added:.2f} ms at the median: the "
        f"stand-in's {p50['stand-in']:.2f} ms (its {IDENTITY_DELAY_MS} ms delay included) + "
        f"{added - p50['stand-in']:.2f} ms around it in nginx (the subrequest and its upstream",
        "connection, the answer checked, parsed and cached; less the Python client's own cost "
        "of a connection, which the stand-in alone includes)." + counted,
    ]


def throughput_report(ctx, results, openssl_v, memory, elapsed, busy_before, busy_after):
    a = ctx.a

    def med(key, field):
        return statistics.median(r[field] for r in results[key])

    for key in ("off", "hit"):
        if med(key, "cpu") < 90:
            n = BY_KEY[key].n
            WARNINGS.append(f"({n}): the nginx worker used only {med(key, 'cpu'):.0f}% of its "
                            f"CPU: something else limited the rate (the load generator, or other "
                            f"processes on CPU 0), so ratios with ({n}) are not the module's")
    v = statistics.median(openssl_v)
    b = med("off", "rps")
    core = statistics.median(ctx.core_us)
    in_nginx = med("full", "us") - med("off", "us")
    limit = 1 / (1 / b + 1 / v)

    def ratio_rounds(t):
        """The target's ratio of the medians, and its range round by round (the scenarios
        of one round ran within a minute of each other)."""
        num = [r["rps"] for r in results[t.num]]
        if t.den == "limit":
            per = [x * (1 / o["rps"] + 1 / w) for x, o, w in zip(num, results["off"], openssl_v)]
            return statistics.median(num) / limit, per
        per = [x / d["rps"] for x, d in zip(num, results[t.den])]
        return med(t.num, "rps") / med(t.den, "rps"), per

    py = os.path.join(VENV, "bin", "python")
    pyv = subprocess.run([py, "-c", "import sys, jwt, gunicorn, importlib.metadata as m; "
                          "print('Python %s, Flask %s, PyJWT %s, gunicorn %s' % "
                          "(sys.version.split()[0], m.version('flask'), jwt.__version__, "
                          "gunicorn.__version__))"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"### Benchmark: {ctx.date}, {ctx.git}",
        "",
        f"`{ctx.cmdline}` on {ctx.ncpu} x {ctx.cpu_model}, {ctx.nginx_version}, one worker; "
        f"{ctx.pinning}; {ctx.idle_note};",
        f"wrk -t{a.threads} -c{a.connections} -d{ctx.dur_s}s, keep-alive, a 512-byte static "
        "file, access_log off;",
        f"medians of {a.rounds} interleaved round(s). Server CPU: the nginx worker's CPU use "
        "(% of one core),",
        "for (6) + the gunicorn processes'; CPU µs/req: that CPU time per request.",
        "",
        "| # | scenario | req/s | (min–max) | p50 (ms) | p99 (ms) | server CPU % | CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in THROUGHPUT:
        rps = [r["rps"] for r in results[s.key]]
        cpu = f"{med(s.key, 'cpu'):.0f}"
        if s.verifier:
            cpu += f"+{med(s.key, 'vcpu'):.0f}"
        note = f" {s.note}" if s.note else ""
        lines.append(f"| {s.n} | {s.name}{note} | {fmt(statistics.median(rps))} | "
                     f"{fmt(min(rps))}–{fmt(max(rps))} | {med(s.key, 'p50'):.2f} | "
                     f"{med(s.key, 'p99'):.2f} | {cpu} | {med(s.key, 'us'):.1f} |")
    lines += [
        "",
        f"¹ {fmt(a.pool)} distinct valid tokens, rotated by wrk, through an nginx with "
        "`cf_access_cache_size 0`,",
        "  so every request is a full RS256 verification even when the pool repeats.",
        "² `auth_request` to bench/verifier.py (Flask + PyJWT, keys fetched once at start) "
        "under gunicorn,",
        f"  {a.verifier_workers} sync workers on the same CPU as nginx (no keep-alive to the "
        "verifier: sync workers close",
        f"  every connection). {pyv}.",
        "³ `cf_access_identity` through an internal location (`proxy_pass` to the "
        "get-identity stand-in of",
        f"  `cf-access-dev serve`: groups {', '.join(IDENTITY_GROUPS)}; {IDENTITY_DELAY_MS} ms "
        "per answer): the token's session was fetched once,",
        "  before the runs; then every request is a token-cache hit and an identity-cache hit.",
        "",
        f"openssl speed -seconds 3 rsa2048 (CPU 0): V = {fmt(v)} verify/s. Crypto limit for (3):",
        f"1/(1/B + 1/V) = {fmt(limit)} req/s, with B = (1) = {fmt(b)} req/s.",
        "",
        f"The core alone (core/examples/verify_speed, CPU 0): {core:.1f} µs per full "
        "verification. In nginx,",
        f"(3) − (1) = {in_nginx:.1f} µs of worker CPU per request: {in_nginx / core:.2f} × the "
        f"core's ({'PASS' if in_nginx / core <= 1.2 else 'MISS'} against <= 1.2).",
        "",
        "| ratio | of the medians | median of the rounds' | round by round | target | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t in TARGETS:
        r, per = ratio_rounds(t)
        spread = f"{min(per):.3f}" if len(per) == 1 else f"{min(per):.3f}–{max(per):.3f}"
        paired = f"{statistics.median(per):.3f}"
        if t.at_least is None:
            lines.append(f"| {t.label} | {r:.3f} | {paired} | {spread} | | |")
        else:
            verdict = "PASS" if r >= t.at_least else "MISS"
            shown = f"{t.at_least:.2f}" if t.at_least < 1 else f"{t.at_least:g}"
            lines.append(f"| {t.label} | {r:.3f} | {paired} | {spread} | >= {shown} | "
                         f"{verdict} |")
    if getattr(ctx, "sessions", None):
        lines += sessions_report(ctx.sessions)
    if ctx.profiles:
        lines += perf_report(ctx, ctx.profiles)
    if memory:
        rows, hwm = memory
        lines += [
            "",
            f"Memory of the worker (fresh nginx, default cache) while {fmt(a.rss_tokens)} "
            "distinct valid tokens",
            "are sent once each:",
            "",
            "| tokens sent | VmRSS (MiB) | VmHWM (MiB) |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {n} | {mib(rss)} | {mib(h)} |" for n, rss, h in rows]
        lines += ["", f"VmHWM after {fmt(a.rss_tokens)} distinct tokens: {mib(hwm)} MiB."]
    lines += [
        "",
        f"Command: `{ctx.cmdline}` (measuring took {elapsed:.0f} s; CPUs busy with other work: "
        f"{busy_before}% before, {busy_after}% after)",
    ]
    return lines


def crate_of(name):
    """The crate of a Rust function (`<T as Trait>::f` counts for T's crate); "aws-lc (C)"
    for the C code in the module (aws-lc is all of it)."""
    m = re.match(r"<(.+?) as (.+?)>::", name)
    if m and "::" not in m.group(1):  # <T as Trait>::f, T a generic parameter
        name = m.group(2)
    path = re.sub(r"^(mut |const |dyn )+", "", name.lstrip("<&*"))
    if "::" not in path:
        return "aws-lc (C)"
    return path.split("::", 1)[0]


def instructions_report(ctx, chosen, runs):
    a = ctx.a
    r = runs[0]
    off = r["off"]["per_request"]
    core = r["core"]
    vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"### Instructions per request: {ctx.date}, {ctx.git}",
        "",
        f"`{ctx.cmdline}`: {ctx.nginx_version} in one process (`master_process off`) under "
        f"{vg} (callgrind),",
        f"{fmt(a.requests)} requests of one kind over one keep-alive connection after "
        f"{fmt(a.warmup)} warm-up requests, a fresh nginx per scenario;",
        "Ir = instructions executed by nginx's event loop thread, per request, nginx's clock "
        "(ngx_time_update) not counted;",
        "module = the inclusive cost of nginx's calls into libngx_http_cf_access_module.so.",
        "",
        "| # | scenario | Ir/request | vs (1) | module Ir/request |",
        "|---|---|---:|---:|---:|",
    ]
    for s in chosen:
        x = r[s.key]
        lines.append(f"| {s.n} | {s.name} | {fmt(x['per_request'])} | "
                     f"{x['per_request'] / off:.3f} | {fmt(x['module'])} |")
    hit, full = r["hit"]["per_request"], r["full"]["per_request"]
    lines += [
        "",
        "Core alone (core/examples/verify_instructions.rs, the same tokens, under callgrind), "
        "Ir per token:",
        f"RS256 signature check {fmt(core['rsa'])}, `verify` {fmt(core['verify'])}, "
        f"`decide` with the cache disabled {fmt(core['decide'])}.",
        "",
        "| ratio | value | target (instruction analogue) | |",
        "|---|---:|---:|---|",
        f"| (1)/(2): off vs cache hit | {off / hit:.3f} | >= 0.95 | "
        f"{'PASS' if off / hit >= 0.95 else 'MISS'} |",
        f"| ((1) + RSA alone)/(3): full verification vs its crypto limit | "
        f"{(off + core['rsa']) / full:.3f} | >= 0.90 | "
        f"{'PASS' if (off + core['rsa']) / full >= 0.90 else 'MISS'} |",
        f"| (2)/(1) | {hit / off:.3f} | | |",
        f"| (3)/(1) | {full / off:.3f} | | |",
        f"| ((3) − (1)) / core `decide`: a full verification in nginx vs in the core alone | "
        f"{(full - off) / core['decide']:.3f} | | |",
        f"| ((2) − (1)): a cache hit's cost over `cf_access off`, Ir | {fmt(hit - off)} | | |",
    ]
    if "hit-dir" in r and "off-dir" in r:
        # The index module's internal redirect must not make the module check twice: a
        # directory URL's cache hit costs over its own `cf_access off` what a file URL's does.
        dir_ratio = r["hit-dir"]["per_request"] / r["off-dir"]["per_request"]
        ok = dir_ratio <= 1.02 * (hit / off)
        lines += [
            f"| (9)/(10): cache hit vs `cf_access off`, directory URL | {dir_ratio:.3f} | "
            f"<= 1.02 x (2)/(1) = {1.02 * hit / off:.3f} | {'PASS' if ok else 'MISS'} |",
            f"| ((9) − (10)): a directory URL's cache hit over `cf_access off`, Ir | "
            f"{fmt(r['hit-dir']['per_request'] - r['off-dir']['per_request'])} | | |",
        ]
    if "identity" in r:
        # cf_access_identity, once the session's identity is cached: what an identity-cache
        # hit adds to a token-cache hit.
        ident = r["identity"]["per_request"]
        lines += [
            f"| (2)/(11): cache hit vs identity-cache hit (`cf_access_identity`) | "
            f"{hit / ident:.3f} | >= 0.95 | {'PASS' if hit / ident >= 0.95 else 'MISS'} |",
            f"| ((11) − (2)): an identity-cache hit's cost over a cache hit, Ir | "
            f"{fmt(ident - hit)} | | |",
        ]
    if len(runs) > 1:
        def counts(run):
            return [run[s.key]["total"] for s in chosen], run["core"]
        same = all(counts(run) == counts(r) for run in runs)
        lines += ["", f"Runs: {len(runs)}; Ir counted in each run:", ""]
        lines.append("| scenario | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
        lines.append("|---|" + "---:|" * len(runs))
        for s in chosen:
            lines.append(f"| ({s.n}) {s.key} | " + " | ".join(
                fmt(run[s.key]["total"]) for run in runs) + " |")
        for what in ("rsa", "verify", "decide"):
            lines.append(f"| core {what} × {fmt(a.requests)} | " + " | ".join(
                fmt(run["core"][what] * a.requests) for run in runs) + " |")
        lines += ["", "Identical in every run: " + ("yes" if same else "NO") + "."]
        if not same:
            WARNINGS.append("the instruction counts differ between runs")
    for key in [k for k in ("hit", "identity", "full") if k in r]:
        s = BY_KEY[key]
        x = r[key]
        top = sorted(x["funcs"].items(), key=lambda kv: -kv[1])[:15]
        mod_self = sum(v for (where, _), v in x["funcs"].items() if where == "module")
        crates = collections.Counter()
        for (where, fn), v in x["funcs"].items():
            crates[crate_of(fn) if where == "module" else where] += v
        lines += [
            "",
            f"The module on path ({s.n}) {key}: {fmt(x['module'])} Ir/request inclusive "
            f"({x['module'] / x['per_request'] * 100:.1f}% of the request), "
            f"{fmt(mod_self)} in its own code; top 15 (self cost; \"called\": "
            "functions of other objects the module calls, inclusive):",
            "",
            "| function | where | Ir/request | % of the module |",
            "|---|---|---:|---:|",
        ]
        for (where, fn), v in top:
            fn = fn.replace("|", "\\|")
            lines.append(f"| `{fn}` | {where} | {fmt(v)} | {v / x['module'] * 100:.1f} |")
        lines += ["", "By crate: " + ", ".join(
            f"{name} {fmt(v)}" for name, v in crates.most_common() if v >= 0.5) + "."]
    return lines


def save_report(report, kind):
    """Prints the report (the warnings last) and saves it as target/bench-results/KIND-*.md."""
    if WARNINGS:
        report += ["", "Warnings:"] + [f"- {w}" for w in WARNINGS]
    text = "\n".join(report) + "\n"
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text, end="", flush=True)
    print(file=sys.stderr)
    log(f"report saved to {os.path.relpath(path, ROOT)}")
