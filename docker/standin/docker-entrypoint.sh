#!/bin/sh
# The stand-in image's entrypoint, with the official nginx image's contract: when the command
# is nginx (or nginx-debug), every file in /docker-entrypoint.d/ is taken in version order:
# *.envsh is sourced (it may export variables), *.sh is executed, and its failure stops the
# container (set -e); anything else, or a file that is not executable, is skipped with a note.
# Then the command is exec'd, so nginx is PID 1 and gets `docker stop`'s SIGQUIT.
# NGINX_ENTRYPOINT_QUIET_LOGS (any value) silences the notes.
set -e

note() {
    if [ -z "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ]; then
        echo "$@"
    fi
}

if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
    scripts=$(find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -follow -type f 2>/dev/null | sort -V)
    if [ -n "$scripts" ]; then
        note "$0: running the scripts in /docker-entrypoint.d/"
        for f in $scripts; do
            case "$f" in
                *.envsh)
                    if [ -x "$f" ]; then
                        note "$0: sourcing $f"
                        # shellcheck source=/dev/null
                        . "$f"
                    else
                        note "$0: ignoring $f: not executable"
                    fi
                    ;;
                *.sh)
                    if [ -x "$f" ]; then
                        note "$0: launching $f"
                        "$f"
                    else
                        note "$0: ignoring $f: not executable"
                    fi
                    ;;
                *) note "$0: ignoring $f" ;;
            esac
        done
        note "$0: configuration complete; ready for start up"
    else
        note "$0: no files in /docker-entrypoint.d/, nothing to configure"
    fi
fi

exec "$@"
