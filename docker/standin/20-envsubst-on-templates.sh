#!/bin/sh
# The stand-in image's template step, as in the official image: every
# $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX (default
# /etc/nginx/templates, .template) is rendered with envsubst into the same relative path
# under $NGINX_ENVSUBST_OUTPUT_DIR (default /etc/nginx/conf.d), without the suffix. Only
# ${NAME}s of variables that are set in the environment (and match NGINX_ENVSUBST_FILTER, a
# regular expression, when given) are replaced, so nginx's own $variables stay.
# A missing template directory is not an error; an output directory that cannot be written
# is logged and skipped (nginx then starts without those files).
set -e

ME=$(basename "$0")
template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}

[ -d "$template_dir" ] || exit 0
if [ ! -w "$output_dir" ]; then
    echo "$ME: error: $template_dir exists, but $output_dir is not writable" >&2
    exit 0
fi

# "${A} ${B} ..." for the environment's variable names.
defined=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p' | grep -E -- "${filter:-.}" |
    sed 's/.*/${&}/' | tr '\n' ' ')

find "$template_dir" -follow -type f -name "*$suffix" -print | sort | while read -r template; do
    relative=${template#"$template_dir"/}
    output=$output_dir/${relative%"$suffix"}
    mkdir -p "$(dirname "$output")"
    echo "$ME: rendering $template to $output"
    envsubst "$defined" <"$template" >"$output"
done
