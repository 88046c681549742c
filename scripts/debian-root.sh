# shellcheck shell=bash
# Sourced by scripts/debian-nginx, scripts/build-deb and scripts/check-deb for a Debian
# release other than this machine's: a root file system of that release (mmdebstrap),
# commands run in it (chroot, as root, with this machine's /proc, /sys, /dev and /dev/pts
# mounted while they run), and its binaries run here with its own loader and libraries.

# make_debian_root RELEASE DIR VARIANT PACKAGES: DIR becomes a root file system of RELEASE
# (mmdebstrap --variant=VARIANT, with the comma-separated PACKAGES), unless DIR/.release says
# it already is one with those packages.
make_debian_root() {
    local release=$1 dir=$2 variant=$3 include=$4 want
    want="$release $variant $include"
    if [ -f "$dir/.release" ] && [ "$(cat "$dir/.release")" = "$want" ]; then
        echo ">> $release root file system in $dir: present"
        return 0
    fi
    if ! command -v mmdebstrap >/dev/null 2>&1; then
        echo ">> installing mmdebstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
    fi
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    echo ">> mmdebstrap --variant=$variant $release ($include) into $dir"
    # Releases past their Valid-Until (testing snapshots) are still what Debian serves; the
    # root's own apt keeps the option for later apt-get calls in it.
    if ! mmdebstrap --variant="$variant" --include="$include" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        "$release" "$dir" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$dir.log" 2>&1; then
        tail -n 20 "$dir.log" >&2
        echo "mmdebstrap $release failed (log $dir.log)" >&2
        return 1
    fi
    # Installing nginx must not start a web server (nor any service) in the root.
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    echo "$want" >"$dir/.release"
}

# in_root DIR COMMAND...: runs COMMAND chrooted into DIR, with /proc, /sys, /dev and /dev/pts
# mounted there while it runs (unmounted again, also when it fails).
in_root() {
    local dir=$1 status=0 m
    shift
    for m in proc sys dev dev/pts; do
        mkdir -p "$dir/$m"
        mount --bind "/$m" "$dir/$m"
    done
    chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@" || status=$?
    for m in dev/pts dev sys proc; do
        umount -l "$dir/$m" 2>/dev/null || true
    done
    return "$status"
}

# loader_wrapper ROOT BINARY OUT: OUT becomes a script that runs ROOT's BINARY with ROOT's own
# dynamic loader and libraries, on this machine's file system (no chroot: paths of this
# machine, such as test prefixes, work as they are).
loader_wrapper() {
    local root=$1 binary=$2 out=$3 interp loader='' candidate multiarch
    interp=$(readelf -l "$root$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
    # /lib64 is a merged-/usr link that only an installed system has.
    for candidate in "$root$interp" "$root/usr$interp"; do
        [ -z "$interp" ] || [ ! -e "$candidate" ] || { loader=$candidate; break; }
    done
    if [ -z "$loader" ]; then
        echo "no dynamic loader '$interp' for $binary in $root" >&2
        return 1
    fi
    multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
    cat >"$out" <<EOF
#!/bin/sh
# $binary of the root file system $root, run with that root's
# dynamic loader and libraries (scripts/debian-root.sh).
exec '$loader' --library-path '$root/usr/lib/$multiarch:$root/lib/$multiarch' '$root$binary' "\$@"
EOF
    chmod 755 "$out"
}
