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
