#
# The official nginx image with the Cloudflare Access module, compiled for exactly that image's
# nginx version and configure arguments by scripts/build-for-nginx (the script CI also runs
# against Debian's nginx).
#
#   docker build -t nginx-cf-access .
#   docker run --rm -p 8080:8080 \
#       -e CF_ACCESS_TEAM_DOMAIN=myteam.cloudflareaccess.com \
#       -e CF_ACCESS_AUD=4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2 \
#       -e UPSTREAM=http://app:3000 \
#       nginx-cf-access
#
# Build arguments (all optional):
#   NGINX_VERSION  the nginx version (1.30.6, nginx's stable line; CI builds and tests the
#                  image on stand-ins for nginx:1.30.6 and nginx:1.28.3)
#   NGINX_IMAGE    the runtime image, an official nginx image (default nginx:NGINX_VERSION);
#                  the module is built in it as well, so it matches its nginx -V exactly
#   RUST_IMAGE     where the Rust toolchain comes from: any image with rustup's layout,
#                  /usr/local/cargo and /usr/local/rustup, like the official rust images;
#                  mounted for the one build step, not copied into a layer
#   NGINX_SOURCE   nginx's source: empty (download nginx-NGINX_VERSION.tar.gz from nginx.org),
#                  a URL of a release tarball, or a path in the build context (a source tree
#                  or a tarball), e.g. vendor/nginx-src/nginx after `cargo vendor vendor`
# Crates: from crates.io; or, when the build context has vendor/ (`cargo vendor --locked
# vendor`), from there, offline.
#
# Configuration: nginx-conf/cf-access.conf is /etc/nginx/templates/default.conf.template; the
# image's entrypoint renders it from the environment (NGINX_PORT, default 8080;
# CF_ACCESS_TEAM_DOMAIN; CF_ACCESS_AUD; UPSTREAM) into /tmp/nginx/conf.d/, which nginx.conf
# includes after /etc/nginx/conf.d/*.conf, and stops with a message if one is missing.
#
# Runs as uid 101 (nginx), like nginxinc/nginx-unprivileged: it listens on 8080, its pid file
# is /tmp/nginx.pid, and /etc/nginx/conf.d, /var/cache/nginx and /var/log/nginx belong to uid
# 101 and group 0 (group-writable), so `docker run --user <any uid>:0` works too (OpenShift).
# It writes only to /tmp (pid file, temporary files, rendered templates), so `--read-only
# --tmpfs /tmp --tmpfs /var/cache/nginx` works (for a proxy_cache_path in /var/cache/nginx,
# mount that tmpfs with uid=101: a tmpfs belongs to root). Ports below 1024 need root, or a
# runtime that allows them.

ARG NGINX_VERSION=1.30.6
ARG NGINX_IMAGE=nginx:${NGINX_VERSION}
ARG RUST_IMAGE=rust:1.95.0-slim

# --- the toolchain, from RUST_IMAGE ---------------------------------------------------------
FROM ${RUST_IMAGE} AS toolchain

# --- build: the runtime image, plus build dependencies; the toolchain mounted ----------------
FROM ${NGINX_IMAGE} AS build
ARG NGINX_SOURCE=
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The packages scripts/deps.sh would install (here for layer caching).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential pkg-config libclang-dev libpcre2-dev libssl-dev zlib1g-dev \
        curl ca-certificates openssl \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    CARGO_TERM_PROGRESS_WHEN=never
WORKDIR /src
COPY . .
# Crates from vendor/ when the context has it; nginx's source from NGINX_SOURCE (see above).
# nginx -V of this image's /usr/sbin/nginx gives the version and configure arguments; the
# script checks that this nginx loads the result. The cache of cargo's output is one per
# base image's release: build scripts compiled on a newer glibc do not run on an older one.
# The toolchain is bind-mounted from RUST_IMAGE, writable (what cargo writes to CARGO_HOME
# is dropped with the mount): no layer holds a copy of it.
RUN --mount=type=bind,from=toolchain,source=/usr/local/rustup,target=/usr/local/rustup,rw \
    --mount=type=bind,from=toolchain,source=/usr/local/cargo,target=/usr/local/cargo,rw \
    --mount=type=cache,target=/src/target \
    if [ -d vendor ]; then \
        printf '%s\n' '[source.crates-io]' 'replace-with = "vendored-sources"' \
            '[source.vendored-sources]' 'directory = "/src/vendor"' '[net]' 'offline = true' \
            > "$CARGO_HOME/config.toml"; \
        echo "crates: vendor/ (offline)"; \
    fi \
    && cargo --version \
    && CARGO_TARGET_DIR="/src/target/$(. /etc/os-release && echo "$ID-${VERSION_CODENAME:-$VERSION_ID}")" \
        scripts/build-for-nginx --nginx /usr/sbin/nginx ${NGINX_SOURCE:+--source "$NGINX_SOURCE"} \
        --out /out/ngx_http_cf_access_module.so

# --- runtime: the nginx image and the module, no build tools ---------------------------------
FROM ${NGINX_IMAGE}
# The packages' modules path (/etc/nginx/modules is a symlink to it).
COPY --from=build /out/ngx_http_cf_access_module.so /usr/lib/nginx/modules/
COPY nginx-conf/cf-access.conf /etc/nginx/templates/default.conf.template
COPY --chmod=755 docker/19-cf-access-check.sh /docker-entrypoint.d/
ENV NGINX_PORT=8080 \
    NGINX_ENVSUBST_OUTPUT_DIR=/tmp/nginx/conf.d
# load_module at the top of nginx.conf; no "user" (the master is not root); the pid file,
# the temporary files (as in nginx-unprivileged) and the rendered templates in /tmp; no
# welcome page. Then `nginx -t` with the template
# rendered from sample values proves, at build time, that this nginx loads the module and
# accepts the configuration.
# hadolint ignore=SC2016
RUN sed -i -e '1i load_module modules/ngx_http_cf_access_module.so;' \
        -e '/^user /d' \
        -e 's|^pid .*|pid /tmp/nginx.pid;|' \
        -e 's|^\( *\)include /etc/nginx/conf.d/\*.conf;|&\n\1include /tmp/nginx/conf.d/*.conf;|' \
        -e '/^http {/a \    client_body_temp_path /tmp/client_temp;\n    proxy_temp_path /tmp/proxy_temp;\n    fastcgi_temp_path /tmp/fastcgi_temp;\n    uwsgi_temp_path /tmp/uwsgi_temp;\n    scgi_temp_path /tmp/scgi_temp;' \
        /etc/nginx/nginx.conf \
    && grep -q '^ *include /tmp/nginx/conf.d/\*.conf;' /etc/nginx/nginx.conf \
    && grep -q '^ *client_body_temp_path /tmp/client_temp;' /etc/nginx/nginx.conf \
    && rm -f /etc/nginx/conf.d/default.conf \
    && mkdir -p /tmp/nginx/conf.d \
    && CF_ACCESS_TEAM_DOMAIN=check.cloudflareaccess.com CF_ACCESS_AUD=check \
        UPSTREAM=http://127.0.0.1:3000 \
        envsubst '${NGINX_PORT} ${CF_ACCESS_TEAM_DOMAIN} ${CF_ACCESS_AUD} ${UPSTREAM}' \
        < /etc/nginx/templates/default.conf.template > /tmp/nginx/conf.d/default.conf \
    && nginx -t \
    && rm -rf /tmp/nginx /tmp/nginx.pid \
    && chown -R 101:0 /etc/nginx/conf.d /var/cache/nginx /var/log/nginx \
    && chmod -R g+w /etc/nginx/conf.d /var/cache/nginx /var/log/nginx
USER 101
EXPOSE 8080
