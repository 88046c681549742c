"""The scenarios and the targets, as data, and the nginx configurations they need."""

import dataclasses
import os
import signal
import time

from .common import AUD, MODULE, TEAM, Fail
from .procs import children, tail


@dataclasses.dataclass(frozen=True)
class Scenario:
    n: int
    key: str
    name: str
    server: str  # "A": the default cache; "B": cf_access_cache_size 0
    access: str  # the location (LOCATIONS): "off", "on" (cf_access), "auth_request", "tf"
    # (try_files) or "identity" (cf_access on + cf_access_identity)
    token: str  # "one": one token repeated; "pool": a new token every request; "none"
    status: int  # what every response must be
    path: str = "index.html"  # what is requested, after the location's prefix
    verifier: bool = False  # the gunicorn verifier's CPU counts too
    instructions: bool = False  # measured by --instructions
    throughput: bool = True  # measured by the throughput run
    note: str = ""


SCENARIOS = [
    # Instructions only: an nginx that loads the module but protects nothing (no key store,
    # no refresher thread), to show what the module's mere presence costs.
    Scenario(0, "unused", "module loaded, no cf_access on anywhere", "A", "off", "one", 200,
             instructions=True, throughput=False),
    Scenario(1, "off", "cf_access off (baseline)", "A", "off", "one", 200,
             instructions=True),
    Scenario(2, "hit", "on, one token (cache hits)", "A", "on", "one", 200,
             instructions=True),
    Scenario(3, "full", "on, a new token every request (full verify)", "B", "on",
             "pool", 200, instructions=True, note="¹"),
    Scenario(4, "no-token", "on, no token (403)", "A", "on", "none", 403,
             instructions=True),
    Scenario(5, "no-cache", "on, cache off, one token", "B", "on", "one", 200),
    Scenario(6, "auth_request", "auth_request + Python verifier", "A", "auth_request",
             "one", 200, verifier=True, note="²"),
    Scenario(7, "dir", "on, cache off, one token, directory URL (index)", "B", "on", "one",
             200, path=""),
    Scenario(8, "try_files", "on, cache off, one token, try_files redirect", "B", "tf", "one",
             200, path="x"),
    # Instructions only: (1) and (2) for the directory URL (the index module's internal
    # redirect to /index.html).
    Scenario(9, "hit-dir", "on, one token (cache hits), directory URL", "A", "on", "one", 200,
             path="", instructions=True, throughput=False),
    Scenario(10, "off-dir", "cf_access off, directory URL", "A", "off", "one", 200,
             path="", instructions=True, throughput=False),
    # (2) with cf_access_identity: after the first request (one get-identity subrequest),
    # every request is a token-cache hit and an identity-cache hit.
    Scenario(11, "identity", "on + identity, one token (both cached)", "A",
             "identity", "one", 200, instructions=True, note="³"),
]
BY_KEY = {s.key: s for s in SCENARIOS}
# Run first in every round, right before `openssl speed` and the core alone (see throughput()).
PAIRED = ["off", "full"]
THROUGHPUT = [s for s in SCENARIOS if s.throughput]
# The order of the other scenarios in a round: (11) right after (2), the scenario its target
# compares it with, so that the two are measured within seconds of each other.
ROUND_ORDER = [s for s in THROUGHPUT if s.key not in PAIRED and s.key != "identity"]
ROUND_ORDER.insert(ROUND_ORDER.index(BY_KEY["hit"]) + 1, BY_KEY["identity"])
# Throughput: one nginx serves several scenarios, each from its own location.
LOCATIONS = {"off": "/off/", "on": "/on/", "auth_request": "/ar/", "tf": "/tf/",
             "identity": "/id/"}
# cf-access-dev serve's get-identity stand-in (the first request of every session waits
# for it): every user is in these groups, and every answer takes this long.
IDENTITY_GROUPS = ["Eng", "Finance"]
IDENTITY_DELAY_MS = 20
CACHE_LINES = {
    "A": "# cf_access_cache_size: the module's default",
    "B": "cf_access_cache_size 0;",
}


@dataclasses.dataclass(frozen=True)
class Target:
    label: str
    num: str  # scenario key
    den: str  # scenario key, or "limit": the crypto limit 1/(1/B + 1/V)
    at_least: float | None  # None: for information


TARGETS = [
    Target("(2)/(1): cache hit vs cf_access off", "hit", "off", 0.95),
    Target("(3)/crypto limit: full verification", "full", "limit", 0.90),
    Target("(3)/(1) (for information)", "full", "off", None),
    Target("(2)/(6): module vs auth_request", "hit", "auth_request", 30),
    Target("(7)/(5): directory URL vs file URL, cache off", "dir", "no-cache", 0.95),
    Target("(8)/(5): try_files redirect vs file URL, cache off", "try_files", "no-cache", 0.95),
    Target("(11)/(2): identity-cache hit vs cache hit", "identity", "hit", 0.95),
]


def identity_location(ctx):
    """The internal location cf_access_identity's subrequests go to: get-identity of the
    bench's cf-access-dev serve, the token in the CF_Authorization cookie."""
    return f"""location = /_cf_identity {{
            internal;
            proxy_pass {ctx.identity_url};
            proxy_pass_request_headers off;
            proxy_set_header Cookie "CF_Authorization=$cf_access_token";
            proxy_read_timeout 5s;
            subrequest_output_buffer_size 64k;
        }}"""


def nginx_conf(ctx, name, port, cache_line, instructions_access=None):
    """A configuration with one worker and the locations of every scenario; or, for the
    instruction figures, one process (master_process off) with `location / { cf_access
    <instructions_access>; }` only, so that the scenarios' requests (GET /index.html) and
    location lookups are the same."""
    d = os.path.join(ctx.dir, name)
    os.makedirs(d, exist_ok=True)
    html = os.path.join(ctx.dir, "html")
    if instructions_access:
        process = "master_process off;\ndaemon off;\nworker_processes 1;"
        root = os.path.join(html, "on")
        # Every request on one connection (nginx closes it after 1000 by default).
        locations = f"keepalive_requests 1000000;\n        location / {{ cf_access {instructions_access}; }}"
        if instructions_access == "identity":
            locations = locations.replace("cf_access identity;",
                                          "cf_access on; cf_access_identity /_cf_identity;")
            locations += "\n        " + identity_location(ctx)
        if instructions_access != "unused":
            # As in any real use, something is protected: the module has a key store and
            # its refresher thread (which makes libc's syscall wrappers take their
            # multi-threaded path), also for scenario (1).
            locations += "\n        location /elsewhere/ { cf_access on; }"
        else:
            locations = locations.replace(f"cf_access {instructions_access}", "cf_access off")
    else:
        process = "worker_processes 1;\ndaemon off;"
        root = html
        locations = f"""location /off/ {{ cf_access off; }}
        location /on/  {{ cf_access on; }}
        location /tf/  {{ cf_access on; try_files $uri /on/index.html; }}
        location /ar/  {{ auth_request /_verify; }}
        location /id/  {{ cf_access on; cf_access_identity /_cf_identity; }}
        # For the sanity check only: the groups the identity brought.
        location /idg/ {{
            cf_access on; cf_access_identity /_cf_identity;
            alias {html}/id/;
            add_header X-Groups $cf_access_groups always;
        }}
        {identity_location(ctx)}
        location = /metrics {{ cf_access off; cf_access_metrics; }}
        location = /_verify {{
            internal;
            proxy_pass http://127.0.0.1:{ctx.verifier_port}/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}"""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"""load_module {MODULE};
{process}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/html;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    cf_access_team_domain {TEAM};
    cf_access_aud         {AUD};
    cf_access_certs_url   {ctx.certs_url};
    {cache_line}

    server {{
        listen 127.0.0.1:{port};
        root {root};

        {locations}
        location = /done {{ return 204; }}
    }}
}}
""")
    return d


def nginx_argv(ctx, d):
    return [ctx.nginx, "-p", d, "-c", os.path.join(d, "nginx.conf"), "-e",
            os.path.join(d, "error.log")]


def start_nginx(ctx, name, port, cache_line):
    """A master with one worker, on the server CPU; returns (master Popen, worker pid)."""
    d = nginx_conf(ctx, name, port, cache_line)
    master = ctx.procs.start(ctx.on_server + nginx_argv(ctx, d), os.path.join(d, "stdout.log"),
                             stop_sig=signal.SIGQUIT)
    for _ in range(100):
        kids = children(master.pid)
        if kids:
            return master, kids[0]
        if master.poll() is not None:
            raise Fail(f"nginx {name} did not start:\n{tail(os.path.join(d, 'error.log'))}")
        time.sleep(0.1)
    raise Fail(f"nginx {name} has no worker")
