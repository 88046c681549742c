"""The pool of signed tokens, cached in target/bench-tokens/."""

import json
import os
import shutil
import subprocess
import time

from .common import AUD, DEV, ROOT, TEAM, TOKDIR, TOKEN_MIN_VALID, TOKEN_TTL, Fail, log
from .procs import run


def ensure_tokens(need, threads):
    """target/bench-tokens/tokens.txt with at least `need` distinct valid tokens (cached)."""
    os.makedirs(TOKDIR, exist_ok=True)
    key = os.path.join(TOKDIR, "key.pem")
    if not os.path.exists(key):
        run([DEV, "keygen", "--out", key], stdout=subprocess.DEVNULL)
    kid = json.loads(subprocess.check_output([DEV, "jwks", "--key", key]))["keys"][0]["kid"]
    tokens = os.path.join(TOKDIR, "tokens.txt")
    meta_path = os.path.join(TOKDIR, "tokens.json")
    now = int(time.time())
    meta = None
    if os.path.exists(tokens) and os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = None
    if meta is not None:
        size = os.path.getsize(tokens)
        if (meta.get("kid"), meta.get("team"), meta.get("aud")) != (kid, TEAM, AUD):
            log("the token pool was made with another key/team/aud: re-minting")
            meta = None
        elif meta.get("exp_min", 0) < now + TOKEN_MIN_VALID:
            log("the token pool expires soon: re-minting")
            meta = None
        elif "bytes" not in meta or size < meta["bytes"]:
            log("the token pool is not as recorded: re-minting")
            meta = None
        elif size > meta["bytes"]:
            # An interrupted extension appended more (perhaps half a line): cut it off.
            os.truncate(tokens, meta["bytes"])
    if meta is None:
        meta = {"kid": kid, "team": TEAM, "aud": AUD, "count": 0, "bytes": 0,
                "exp_min": now + TOKEN_TTL}
        open(tokens, "w").close()
    missing = need - meta["count"]
    if missing > 0:
        log(f"{meta['count']} tokens cached in {os.path.relpath(tokens, ROOT)}, minting "
            f"{missing} more with cf-access-dev on {threads} threads (once, then reused)")
        new = tokens + ".new"
        run([DEV, "mint", "--key", key, "--team", TEAM, "--aud", AUD, "--ttl", str(TOKEN_TTL),
             "--count", str(missing), "--first", str(meta["count"] + 1),
             "--threads", str(threads), "--out", new])
        with open(new, "rb") as src, open(tokens, "ab") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        os.unlink(new)
        # The meta file is written last: what an interrupted run appended is cut off next time.
        meta["count"] = need
        meta["bytes"] = os.path.getsize(tokens)
        meta["exp_min"] = min(meta["exp_min"], now + TOKEN_TTL)
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f)
        os.replace(meta_path + ".tmp", meta_path)
    return tokens, key


def read_tokens(path, n):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(line)
                if len(out) == n:
                    break
    if len(out) < n:
        raise Fail(f"{path} has fewer than {n} tokens")
    return out
