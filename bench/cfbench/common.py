"""Paths, the token pool's team and audience, and what every part uses: Fail, log,
the warnings gathered for the report, number formatting."""

import os
import sys


# bench/cfbench/common.py: the repository is two directories up from this one.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEAM = "bench.cloudflareaccess.com"
AUD = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"
TOKDIR = os.path.join(ROOT, "target", "bench-tokens")
RESULTS = os.path.join(ROOT, "target", "bench-results")
VENV = os.path.join(ROOT, "bench", ".venv")
MODULE = os.path.join(ROOT, "target", "release", "libngx_http_cf_access_module.so")
DEV = os.path.join(ROOT, "target", "release", "cf-access-dev")
CORE_EXAMPLE = os.path.join(ROOT, "target", "release", "examples", "verify_instructions")
CORE_SPEED = os.path.join(ROOT, "target", "release", "examples", "verify_speed")
TOKEN_TTL = 30 * 86400
TOKEN_MIN_VALID = 86400
HEADER = "Cf-Access-Jwt-Assertion"
FILE_MTIME = 1735732800  # 2025-01-01 12:00:00 UTC: the static file's mtime


WARNINGS = []


class Fail(Exception):
    """A reason to stop: printed as `bench/run: ...`, exit 2."""


def log(msg):
    print(f">> {msg}", file=sys.stderr, flush=True)


def fmt(v):
    return f"{v:,.0f}"


def mib(kb):
    return f"{kb / 1024:.1f}"


def percentile(values, p):
    """The p-th percentile (nearest rank) of `values`."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, -(-len(v) * p // 100) - 1))]
