"""What the benchmark needs installed: packages (scripts/deps.sh), the verifier's
Python venv, the vendored nginx binary."""

import glob
import os
import subprocess
import sys

from .common import ROOT, VENV, Fail, log
from .procs import run


def ensure_deps(debs):
    run(["bash", "-c", '. scripts/deps.sh && ensure_deps "$@"', "deps"] + debs, cwd=ROOT)


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    check = [py, "-c", "import flask, jwt, cryptography, gunicorn"]
    if os.access(py, os.X_OK) and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    try:
        import ensurepip  # noqa: F401  (Debian ships it in python3-venv)
        import venv  # noqa: F401
    except ImportError:
        ensure_deps(["python3-venv"])
    log(f"creating the Python venv {VENV} (flask, pyjwt[crypto], cryptography, gunicorn)")
    run([sys.executable, "-m", "venv", VENV])
    run([os.path.join(VENV, "bin", "pip"), "install", "-q", "--disable-pip-version-check",
         "-r", os.path.join(ROOT, "bench", "requirements.txt")])
    return py


def find_nginx():
    found = glob.glob(os.path.join(ROOT, "target/release/build/nginx-sys-*/out/objs/nginx"))
    found = [p for p in found if os.access(p, os.X_OK)]
    if not found:
        raise Fail("no nginx binary under target/release/build/nginx-sys-*/out/objs/")
    return max(found, key=os.path.getmtime)
