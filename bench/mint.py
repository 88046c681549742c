#!/usr/bin/env python3
"""Keeps a pool of distinct, valid Cloudflare-shaped Access tokens on disk (used by bench/run).

    mint.py --dir DIR --key KEY.pem --team TEAM --aud TAG --need N [--procs P] [--ttl SECONDS]

DIR/tokens.txt holds one RS256 token per line, all signed by KEY.pem (a PKCS#8 PEM written by
`cf-access-dev keygen`); DIR/tokens.json describes it (kid, team, aud, count, earliest exp).
The pool is reused while it matches the key, team and aud and its tokens stay valid for at
least another --min-valid seconds; it is extended (appended to) when fewer than N tokens are
there, and re-minted from scratch otherwise. Signing runs on --procs processes (default: every
CPU): RSA-2048 signing costs ~0.8 ms per token per core, so 1,000,000 tokens take minutes.

Every token has the claims Cloudflare puts in an application token (aud, email, exp, iat, nbf,
iss, type, identity_nonce, sub, country) and a distinct email, identity_nonce and sub.
Prints the path of tokens.txt.
"""

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import secrets
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization

_KEY = None
_KID = None
_CFG = None


def kid_of(key):
    """Cloudflare-style kid, as cf-access-dev computes it: hex SHA-256 of the SPKI DER."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def _init(key_path, cfg):
    global _KEY, _KID, _CFG
    _KEY = load_key(key_path)
    _KID = kid_of(_KEY)
    _CFG = cfg


def _mint_range(args):
    start, n = args
    team, aud, now, ttl = _CFG
    out = []
    for i in range(start, start + n):
        claims = {
            "aud": [aud],
            "email": f"user{i}@example.com",
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "iss": f"https://{team}",
            "type": "app",
            "identity_nonce": secrets.token_hex(8),
            "sub": str(uuid.uuid4()),
            "country": "US",
        }
        out.append(jwt.encode(claims, _KEY, algorithm="RS256", headers={"kid": _KID, "typ": "JWT"}))
    return "\n".join(out) + "\n"


def count_lines(path):
    n = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(1 << 24)
            if not buf:
                return n
            n += buf.count(b"\n")


def truncate_lines(path, keep):
    """Cuts the file after its first `keep` lines; False if it has fewer."""
    if keep == 0:
        open(path, "w").close()
        return True
    seen = 0
    offset = 0
    with open(path, "rb+") as f:
        while True:
            buf = f.read(1 << 24)
            if not buf:
                return False
            n = buf.count(b"\n")
            if seen + n >= keep:
                pos = -1
                for _ in range(keep - seen):
                    pos = buf.index(b"\n", pos + 1)
                f.truncate(offset + pos + 1)
                return True
            seen += n
            offset += len(buf)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--team", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("--need", type=int, required=True)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ttl", type=int, default=30 * 86400, help="token lifetime (default 30 days)")
    p.add_argument("--min-valid", type=int, default=86400,
                   help="re-mint when the oldest token expires within this many seconds (default 1 day)")
    a = p.parse_args()

    os.makedirs(a.dir, exist_ok=True)
    tokens = os.path.join(a.dir, "tokens.txt")
    meta_path = os.path.join(a.dir, "tokens.json")
    kid = kid_of(load_key(a.key))
    now = int(time.time())

    meta = None
    if os.path.exists(tokens) and os.path.exists(meta_path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = None
    if meta is not None:
        if (meta.get("kid"), meta.get("team"), meta.get("aud")) != (kid, a.team, a.aud):
            print("mint: token pool was made with another key/team/aud: re-minting", file=sys.stderr)
            meta = None
        elif meta.get("exp_min", 0) < now + a.min_valid:
            print("mint: token pool expires soon: re-minting", file=sys.stderr)
            meta = None
        else:
            # The pool is the first meta["bytes"] bytes of the file: an interrupted extension
            # may have appended more (even half a line), which is cut off.
            size = os.path.getsize(tokens)
            if "bytes" not in meta:  # written by an older mint.py
                if truncate_lines(tokens, meta.get("count", 0)):
                    size = meta["bytes"] = os.path.getsize(tokens)
                else:
                    meta["bytes"] = size + 1
            if size > meta["bytes"]:
                os.truncate(tokens, meta["bytes"])
            elif size < meta["bytes"]:
                print("mint: token pool is shorter than recorded: re-minting", file=sys.stderr)
                meta = None
    if meta is None:
        meta = {"kid": kid, "team": a.team, "aud": a.aud, "count": 0, "bytes": 0, "exp_min": now + a.ttl}
        open(tokens, "w").close()

    have = meta["count"]
    missing = a.need - have
    if missing <= 0:
        print(tokens)
        return
    procs = max(1, a.procs)
    print(f"mint: {have} tokens cached in {tokens}, minting {missing} more on {procs} processes "
          f"(RSA-2048 signing; once, then reused)", file=sys.stderr)
    chunk = 2000
    jobs = [(have + s, min(chunk, missing - s)) for s in range(0, missing, chunk)]
    t0 = time.time()
    done = 0
    # Write in order, appending; the meta file is updated only at the end, so what an
    # interrupted run appended is cut off by the next one.
    with mp.Pool(procs, initializer=_init, initargs=(a.key, (a.team, a.aud, now, a.ttl))) as pool, \
            open(tokens, "a") as out:
        last = 0.0
        for text in pool.imap(_mint_range, jobs):
            out.write(text)
            done += text.count("\n")
            el = time.time() - t0
            if el - last >= 5 or done == missing:
                last = el
                rate = done / el if el > 0 else 0
                eta = (missing - done) / rate if rate > 0 else 0
                print(f"mint: {done}/{missing} ({rate:.0f}/s, {eta:.0f} s left)", file=sys.stderr)
    meta["count"] = have + missing
    meta["bytes"] = os.path.getsize(tokens)
    meta["exp_min"] = min(meta["exp_min"], now + a.ttl)
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f)
    os.replace(meta_path + ".tmp", meta_path)
    print(tokens)


if __name__ == "__main__":
    main()
