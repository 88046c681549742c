"""The usual alternative to the module: an `auth_request` verifier service (used by bench/run).

A small Flask app, run under gunicorn, that does what Cloudflare's documentation suggests an
origin do in Python with PyJWT: fetch the team's certs once at start, then for every request
check the RS256 signature of the Cf-Access-Jwt-Assertion header (or the CF_Authorization
cookie) with the key named by its kid, and its audience, issuer and expiry. nginx asks it with

    location / { auth_request /_cf_access_verify; ... }
    location = /_cf_access_verify { internal; proxy_pass http://127.0.0.1:PORT/verify; ... }

and it answers 200 (let in) or 403 (refuse), with an empty body.

Configuration (environment): CF_ACCESS_CERTS_URL, CF_ACCESS_TEAM_DOMAIN, CF_ACCESS_AUD.
Run: gunicorn --preload -w 2 -b 127.0.0.1:PORT verifier:app
(--preload: the keys are fetched once, by the gunicorn master, before the workers fork.)
"""

import json
import os
import urllib.request

import jwt
from flask import Flask, request

CERTS_URL = os.environ["CF_ACCESS_CERTS_URL"]
ISSUER = "https://" + os.environ["CF_ACCESS_TEAM_DOMAIN"].removeprefix("https://").rstrip("/")
AUDIENCE = os.environ["CF_ACCESS_AUD"]
LEEWAY = 60  # seconds, as the module's default cf_access_leeway


def fetch_keys(url):
    """kid -> RSA public key, from the `keys` array of a Cloudflare certs document."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        doc = json.load(resp)
    keys = {}
    for jwk in doc.get("keys", []):
        if jwk.get("kty") == "RSA" and "kid" in jwk:
            keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="RS256").key
    if not keys:
        raise RuntimeError(f"no RSA keys at {url}")
    return keys


KEYS = fetch_keys(CERTS_URL)
app = Flask(__name__)


def forbidden():
    return "", 403


@app.route("/verify")
def verify():
    token = request.headers.get("Cf-Access-Jwt-Assertion") or request.cookies.get("CF_Authorization")
    if not token:
        return forbidden()
    try:
        key = KEYS.get(jwt.get_unverified_header(token).get("kid"))
        if key is None:
            return forbidden()
        jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.InvalidTokenError:
        return forbidden()
    return "", 200
