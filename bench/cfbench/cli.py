"""The command line: --help, the options, and main."""

import argparse
import datetime
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from .callgrind import instructions
from .common import CORE_EXAMPLE, CORE_SPEED, DEV, FILE_MTIME, MODULE, ROOT, Fail, log
from .deps import ensure_deps, ensure_venv, find_nginx
from .procs import Procs, port_free, run, tail, wait_http
from .report import save_report
from .scenarios import IDENTITY_DELAY_MS, IDENTITY_GROUPS
from .system import IdlePoll
from .throughput import SESSIONS, throughput
from .tokens import ensure_tokens, read_tokens
from .wrk import parse_duration


HELP = """\
bench/run: benchmark ngx_http_cf_access (one command, loopback only, bounded in time)

WHAT IT DOES (throughput, the default):
  1. cargo build --release --workspace (module, cf-access-dev, the vendored nginx binary);
     installs what is missing: build dependencies, wrk and openssl (apt), and a Python venv
     in bench/.venv with flask, pyjwt[crypto], cryptography, gunicorn (pip) for the
     auth_request verifier.
  2. Starts, on 127.0.0.1 only: `cf-access-dev serve` (the certs endpoint, and the stand-in
     for get-identity: --group Eng --group Finance --identity-delay-ms 20), two nginx
     instances with ONE worker each (keep-alive on, access_log off, error_log at warn, so
     the info-level denial lines are not written; a 512-byte static file), and gunicorn
     running bench/verifier.py (Flask + PyJWT; keys fetched once at start from the same
     certs endpoint; --verifier-workers sync workers).
       nginx A: the module's default cache    -> scenarios 1, 2, 4, 6, 11
       nginx B: cf_access_cache_size 0        -> scenarios 3, 5, 7, 8
     (cf_access_cache_size is an http-level directive, hence two instances; nothing is
     restarted between scenarios.) The server side (nginx, gunicorn, openssl speed) is
     pinned to CPU 0 and wrk to CPU 1 with taskset, when there are 2+ CPUs: the module and
     the auth_request alternative get the same one CPU.
  3. Runs the scenarios round-robin, --rounds times, with
     wrk -t THREADS -c CONNECTIONS -d DURATION --latency, and reports medians:
       1  off          cf_access off (the token header is sent anyway, and ignored)
       2  hit          cf_access on, one valid token repeated (cache hits)
       3  full         cf_access on, cf_access_cache_size 0, a different valid token on
                       every request from a pool of --pool distinct tokens (wrk Lua,
                       bench/rotate.lua): every request is a full RS256 verification
       4  no-token     cf_access on, no token: the 403 path
       5  no-cache     cf_access on, cf_access_cache_size 0, one token repeated
       6  auth_request auth_request to the gunicorn verifier, one token repeated
       7  dir          as 5, for the directory URL /on/ (the index module redirects
                       internally to /on/index.html)
       8  try_files    as 5, for /tf/x: `try_files $uri /on/index.html` (an internal
                       redirect, as every single-page application has)
      11  identity     as 2, with `cf_access_identity /_cf_identity` (an internal location
                       proxying to the stand-in's get-identity): the session's identity is
                       fetched once, before the runs, so every request is a token-cache hit
                       and an identity-cache hit (the module's /metrics must count no fetch)
     and, in each round, `openssl speed -seconds 3 rsa2048` on CPU 0: V = verify/s, and
     core/examples/verify_speed on CPU 0: the core's µs per full verification, alone.
     Each round runs 1 and 3 first, then V and the core alone, then the rest (11 right
     after 2), so that the crypto limit and (3), and (11) and (2), are measured within
     seconds of each other; the ratios are
     reported as the ratio of the medians and as the median of the rounds' own ratios.
     Also reported: the server side's CPU use during each run (nginx worker, + gunicorn
     for 6) and that CPU time per request, which shows when something else (wrk, other
     processes) limited a run; a warning is printed when the worker was not saturated.
     While measuring, /dev/cpu_dma_latency is held at 0 (--idle poll, the default; needs
     root), so idle CPUs poll instead of halting, as tuned's latency-performance profile
     does. Without it, on a VM, every response that wakes a sleeping wrk costs the nginx
     worker an IPI (a VM exit): ~1 µs per request when nginx is fast and wrk rarely
     sleeps, ~6-7 µs when nginx is slow enough that wrk sleeps between responses (full
     verification). That cost belongs to the load generator sharing the VM, not to the
     module, and it would be charged to (3) but not to the baseline. --idle os measures
     with the kernel's default idle state, to see it.
     Then the first request of a session: 200 fresh tokens (never sent to nginx A) to
     11's location, each a full verification and one get-identity subrequest (the stand-in
     answers in 20 ms), and 200 others to 2's location (the full verification only),
     alternately, one request at a time on one keep-alive connection, and in between
     each get-identity straight to the stand-in (~9 s, at most 30 s): p50 and p90 of each,
     the latency the identity adds (the difference of the p50s), and nginx's part of it.
     --perf: then one more run per scenario 1-5 with the worker sampled by `perf record
     -e cpu-clock -g` (linux-perf; root), reported as µs of CPU per request by where it
     was spent: aws-lc (RSA, SHA-256), the module's other code, nginx, libc, the kernel
     waking the client (`sock_def_readable` in the call chain), the rest of the kernel.
  4. Memory: a fresh nginx C (default cache) is sent --rss-tokens distinct valid tokens
     (each once; wrk + bench/feed.lua), the worker's VmRSS is sampled after 1k, 2k, 5k,
     10k, ... tokens and then every --rss-step tokens, and its peak (VmHWM) reported: it
     should flatten once the cache (default 10,000 tokens) is full.
  5. Prints a Markdown table (ready for docs/performance.md), the ratios against the targets
         (2)/(1) >= 0.95
         (3) >= 0.90 x the crypto limit 1/(1/B + 1/V), B = (1) req/s, V = openssl verify/s
         (2)/(6) >= 30
         (7)/(5) >= 0.95 and (8)/(5) >= 0.95: an internal redirect does not verify again
         (11)/(2) >= 0.95: a cached identity costs a cache hit almost nothing
         CPU µs/req (3) - (1) <= 1.2 x the core alone (verify_speed)
     marked PASS/MISS, and the exact command line. The report is also saved in
     target/bench-results/.

INSTRUCTIONS PER REQUEST (--instructions; --with-instructions adds them to a throughput run):
  A figure that does not move with the machine's load. For each of the scenarios off, hit,
  full and no-token (and 0: the module loaded but protecting nothing, so no key store and
  no refresher thread; 9, hit-dir, and 10, off-dir: cache hits and `cf_access off` for
  the directory URL GET /, which the index module redirects internally to /index.html:
  (9)/(10) must be within 2% of (2)/(1); and 11, identity: cache hits with
  cf_access_identity, the identity fetched in the warm-up: (2)/(11) >= 0.95), a fresh nginx runs in ONE process (master_process off) under
  `valgrind --tool=callgrind`; a small Python client sends --warmup requests of that kind
  over one keep-alive connection, the counters are zeroed (callgrind_control -z), then
  --requests requests of the same kind are sent and the counters dumped (callgrind_control
  -d). Every scenario requests GET /index.html from `location / { cf_access on|off; }`
  (another location has cf_access on, as in any real use). Before every request and before every callgrind_control the client waits until nginx
  sleeps in epoll_wait, so nginx does the same work in every run. Reported: instructions
  (Ir) per request of nginx's event-loop thread (the module's key refresher thread is
  counted apart, and is idle), the ratios to `cf_access off`, the module's share (the
  inclusive cost of nginx's calls into libngx_http_cf_access_module.so) and its top
  functions (self cost, generic parameters merged). Scenario full uses the first
  --requests tokens of the pool, one per request, through `cf_access_cache_size 0`.
  Then core/examples/verify_instructions.rs verifies the same tokens under callgrind,
  outside nginx: the core's Ir per RS256 signature check, per `verify`, and per `decide`
  (what the module calls, cache disabled); and the ratio
  (full - off) / core decide: what a full verification costs in nginx over the core alone.
  Nginx's clock (ngx_time_update, which formats its time strings when the wall-clock
  second changes) is not counted (callgrind --toggle-collect), as the only work that
  depends on how long a run takes, and the static file has a fixed mtime. Everything is run
  --instr-runs times (default 2) and the report says whether the counts are identical
  (they are, to the instruction, for the same build and token pool).

  Tokens come from `cf-access-dev mint --count` (signed on every CPU) with a key kept in
  target/bench-tokens/, and are cached there (tokens.txt, valid 30 days) for later runs;
  RSA-2048 signing does ~1-2k tokens/s per core, so the first 1,000,000 take minutes.
  Everything started is stopped on exit, Ctrl-C included.

EXAMPLES:
  bench/run                                   # defaults: 3 rounds x 9 x 10 s, 1M tokens
  bench/run -d 5s -r 1 --rss-tokens 100000    # a quick check (~1.5 min once minted)
  bench/run --instructions                    # instructions per request (~2 min), twice
  bench/run -d 5s -r 5 --rss-tokens 0 --perf  # throughput, and where the worker's CPU goes
"""


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run", usage="bench/run [OPTIONS]", description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--duration", default="10s", metavar="TIME",
                   help="wrk duration per scenario and round (default 10s)")
    p.add_argument("-c", "--connections", type=int, default=50, metavar="N",
                   help="wrk connections (default 50)")
    p.add_argument("-t", "--threads", type=int, default=1, metavar="N",
                   help="wrk threads (default 1: wrk has one CPU to itself)")
    p.add_argument("-r", "--rounds", type=int, default=3, metavar="N",
                   help="rounds of all scenarios; medians are reported (default 3)")
    p.add_argument("--pool", type=int, default=20000, metavar="N",
                   help="distinct tokens rotated in scenario 3 (default 20000)")
    p.add_argument("--rss-tokens", type=int, default=1000000, metavar="N",
                   help="distinct tokens sent for the memory measurement (default 1000000; "
                        "0 skips it)")
    p.add_argument("--rss-step", type=int, metavar="N",
                   help="sample VmRSS every N tokens (default: --rss-tokens / 10), and at 1k, "
                        "2k, 5k, 10k, ... below N")
    p.add_argument("--verifier-workers", type=int, default=2, metavar="N",
                   help="gunicorn sync workers for scenario 6 (default 2)")
    p.add_argument("--mint-threads", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="threads signing tokens (default: number of CPUs)")
    p.add_argument("--port-base", type=int, default=18100, metavar="P",
                   help="ports P..P+5 on 127.0.0.1 (default 18100)")
    p.add_argument("--instructions", action="store_true",
                   help="measure instructions per request (callgrind) instead of throughput")
    p.add_argument("--with-instructions", action="store_true",
                   help="throughput, memory and then instructions, in one report")
    p.add_argument("--requests", type=int, default=2000, metavar="N",
                   help="instructions: measured requests per scenario (default 2000)")
    p.add_argument("--warmup", type=int, default=200, metavar="N",
                   help="instructions: warm-up requests per scenario (default 200)")
    p.add_argument("--instr-runs", type=int, default=2, metavar="N",
                   help="instructions: run everything N times and check that the counts are "
                        "identical (default 2)")
    p.add_argument("--idle", choices=["poll", "os"], default="poll",
                   help="throughput: keep idle CPUs polling while measuring (poll, the default; "
                        "needs root) or leave the kernel's idle state (os)")
    p.add_argument("--perf", action="store_true",
                   help="throughput: also profile the worker with perf, one more run per "
                        "scenario, and report where its CPU goes (needs root)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--no-build", action="store_true",
                   help="skip cargo build (use the existing target/release build)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (configs, logs, raw wrk and callgrind output)")
    a = p.parse_args(argv)
    for name in ("connections", "threads", "rounds", "pool", "verifier_workers", "mint_threads",
                 "requests", "warmup", "instr_runs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.rss_tokens < 0 or (a.rss_step is not None and a.rss_step < 1):
        p.error("--rss-tokens must be >= 0 and --rss-step >= 1")
    if a.connections < a.threads:
        p.error("--connections must be >= --threads")
    if a.instructions and a.with_instructions:
        p.error("--instructions and --with-instructions are exclusive")
    if not 1024 <= a.port_base <= 65535 - 5:
        p.error("--port-base: 1024..65530")
    return a


def main(argv):
    a = parse_args(argv)
    ctx = argparse.Namespace(a=a, procs=Procs(), dir=None, idle=IdlePoll(), profiles={},
                             core_us=[])
    try:
        ctx.dur_s = parse_duration(a.duration)
        do_throughput = not a.instructions
        do_instr = a.instructions or a.with_instructions
        os.chdir(ROOT)
        ctx.cmdline = " ".join(["bench/run"] + [shlex.quote(x) for x in argv])
        ctx.ncpu = os.cpu_count() or 1
        ctx.rss_step = a.rss_step or max(a.rss_tokens // 10, 1)
        if not a.no_pin and ctx.ncpu >= 2 and shutil.which("taskset"):
            ctx.on_server, ctx.on_client, ctx.server_cpu = ["taskset", "-c", "0"], ["taskset", "-c", "1"], 0
            ctx.pinning = "nginx, gunicorn and openssl on CPU 0, wrk on CPU 1 (taskset)"
        else:
            ctx.on_server, ctx.on_client, ctx.server_cpu = [], [], ""
            ctx.pinning = "not pinned"

        ensure_deps(["wrk", "openssl"] + (["valgrind"] if do_instr else [])
                    + (["linux-perf"] if a.perf and do_throughput else []))
        if do_throughput:
            ensure_venv()
        if not a.no_build:
            log("cargo build --release --workspace")
            run(["cargo", "build", "--release", "--workspace"])
            examples = (["verify_speed"] if do_throughput else []) + \
                (["verify_instructions"] if do_instr else [])
            for example in examples:
                run(["cargo", "build", "--release", "-p", "cf-access-core", "--example", example])
        ctx.nginx = find_nginx()
        if not (os.path.isfile(MODULE) and os.access(DEV, os.X_OK)):
            raise Fail("no release build of the module / cf-access-dev")
        for needed, path in ((do_instr, CORE_EXAMPLE), (do_throughput, CORE_SPEED)):
            if needed and not os.access(path, os.X_OK):
                raise Fail(f"no {path} (cargo build --release -p cf-access-core --example "
                           f"{os.path.basename(path)})")
        nginx_v = subprocess.run([ctx.nginx, "-V"], capture_output=True, text=True).stderr
        if do_throughput and "http_auth_request_module" not in nginx_v:
            raise Fail(f"{ctx.nginx} lacks --with-http_auth_request_module")
        ctx.nginx_version = nginx_v.splitlines()[0].replace("nginx version: ", "")
        ports = [a.port_base + i for i in range(6)]
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise Fail(f"127.0.0.1:{busy[0]} is already in use (choose another --port-base)")
        ctx.certs_url = f"http://127.0.0.1:{a.port_base + 3}/cdn-cgi/access/certs"
        ctx.identity_url = f"http://127.0.0.1:{a.port_base + 3}/cdn-cgi/access/get-identity"
        ctx.verifier_port = a.port_base + 4

        need = 0
        if do_throughput:
            # Token 1: scenarios 1, 2, 5-8, 11; then 2 x SESSIONS fresh ones for the first
            # request of a session (nginx A has seen token 1 only).
            need = max(a.pool, a.rss_tokens, 1 + 2 * SESSIONS)
        if do_instr:
            need = max(need, a.requests + a.warmup)
        ctx.tokens, ctx.key = ensure_tokens(need, a.mint_threads)
        # The one token of scenarios 1, 2, 5 and 6 (and of the instruction figures).
        ctx.token = read_tokens(ctx.tokens, 1)[0]

        ctx.dir = tempfile.mkdtemp(prefix="cf-access-bench.")
        os.chmod(ctx.dir, 0o755)  # nginx workers run as nobody
        os.makedirs(os.path.join(ctx.dir, "wrk"))
        for loc in ("off", "on", "ar", "id"):
            os.makedirs(os.path.join(ctx.dir, "html", loc))
            page = os.path.join(ctx.dir, "html", loc, "index.html")
            with open(page, "w") as f:
                f.write("x" * 512)
            # Last-Modified and ETag come from it: the same digits in every run.
            os.utime(page, (FILE_MTIME, FILE_MTIME))
        groups = [x for g in IDENTITY_GROUPS for x in ("--group", g)]
        ctx.procs.start([DEV, "serve", "--listen", f"127.0.0.1:{a.port_base + 3}", "--key",
                         ctx.key] + groups + ["--identity-delay-ms", str(IDENTITY_DELAY_MS)],
                        os.path.join(ctx.dir, "certs.log"))
        wait_http(ctx.certs_url)

        ctx.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip() or "?"
        if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "core"]).returncode:
            git += " + uncommitted changes in src/ or core/"
        ctx.git = git
        with open("/proc/cpuinfo") as f:
            ctx.cpu_model = next((line.split(":", 1)[1].strip() for line in f
                                  if line.startswith("model name")), "?")

        report = []
        if do_throughput:
            report += throughput(ctx)
        if do_instr:
            if report:
                report.append("")
            report += instructions(ctx)
        save_report(report, "instructions" if a.instructions else "bench")
        return 0
    except Fail as e:
        print(f"bench/run: {e}", file=sys.stderr)
        if ctx.dir and os.path.isdir(ctx.dir):
            for f in sorted(glob.glob(os.path.join(ctx.dir, "*.log"))
                            + glob.glob(os.path.join(ctx.dir, "*", "error.log"))):
                if os.path.getsize(f):
                    print(f"--- {os.path.relpath(f, ctx.dir)} (last lines)\n{tail(f)}",
                          file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"bench/run: {shlex.join(map(str, e.cmd))} failed (exit {e.returncode})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/run: interrupted", file=sys.stderr)
        return 130
    finally:
        ctx.idle.stop()
        ctx.procs.stop_all()
        if ctx.dir and os.path.isdir(ctx.dir):
            if a.keep:
                print(f"work directory kept: {ctx.dir}", file=sys.stderr)
            else:
                shutil.rmtree(ctx.dir, ignore_errors=True)


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)
