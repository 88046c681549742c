#!/bin/sh
# Runs in the official nginx image's entrypoint just before 20-envsubst-on-templates.sh, which
# renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/. It stops the container with
# a clear message instead of letting nginx fail on a half-rendered configuration:
#
# * every ${NAME} (upper case) that a template uses must be set and not empty; otherwise the
#   rendered file says e.g. "cf_access_aud ;" or keeps "${UPSTREAM}";
# * the output directory must be writable by the user the container runs as; otherwise the
#   entrypoint only logs an error and nginx starts with stale or no configuration. The image
#   renders into /tmp/nginx/conf.d (NGINX_ENVSUBST_OUTPUT_DIR), so that a --read-only
#   container with a tmpfs on /tmp works: this script creates that directory when missing.
#
# No templates (e.g. NGINX_ENVSUBST_TEMPLATE_DIR pointing elsewhere, or your own conf.d
# mounted instead): nothing to check.
set -eu

ME=$(basename "$0")
template_dir="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
output_dir="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"

[ -d "$template_dir" ] || exit 0
[ -d "$output_dir" ] || mkdir -p "$output_dir" 2>/dev/null || true
# shellcheck disable=SC2016 # literal ${NAME} patterns
names=$(find "$template_dir" -follow -type f -name "*$suffix" \
    -exec grep -ho '\${[A-Z_][A-Z0-9_]*}' {} + | tr -d '${}' | sort -u)
[ -n "$names" ] || exit 0

missing=
for name in $names; do
    if [ -z "$(printenv "$name" || true)" ]; then
        missing="$missing $name"
    fi
done
if [ -n "$missing" ]; then
    echo "$ME: error: the templates in $template_dir need these environment variables:$missing" >&2
    echo "$ME: e.g. docker run -e CF_ACCESS_TEAM_DOMAIN=myteam.cloudflareaccess.com -e CF_ACCESS_AUD=<AUD tag> -e UPSTREAM=http://app:3000 ..." >&2
    exit 1
fi

if [ ! -w "$output_dir" ]; then
    echo "$ME: error: $output_dir is not writable by uid $(id -u) gid $(id -g)," \
        "so the templates cannot be rendered: run as uid 101 or in group 0" \
        "(docker run --user <uid>:0), or mount your own $output_dir and" \
        "set NGINX_ENVSUBST_TEMPLATE_DIR to an empty directory" >&2
    exit 1
fi
