# syntax=docker/dockerfile:1
#
# The official nginx image with the Cloudflare Access module, compiled for exactly that image's
# nginx version and configure arguments by scripts/build-for-nginx, the script CI runs against
# Debian's nginx.
#
#   docker build -t nginx-cf-access .
#   docker build --build-arg NGINX_VERSION=1.28.3 -t nginx-cf-access:1.28.3 .
#   docker run --rm -p 8080:8080 \
#       -e CF_ACCESS_TEAM_DOMAIN=myteam.cloudflareaccess.com \
#       -e CF_ACCESS_AUD=4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2 \
#       -e UPSTREAM=http://app:3000 \
#       nginx-cf-access
#
# Configuration: nginx-conf/cf-access.conf is /etc/nginx/templates/default.conf.template; the
# image's entrypoint renders it from the environment into /etc/nginx/conf.d/default.conf
# (NGINX_PORT, default 8080; CF_ACCESS_TEAM_DOMAIN; CF_ACCESS_AUD; UPSTREAM) and stops with a
# message if one is missing. Mount other templates into /etc/nginx/templates (or your own
# files into /etc/nginx/conf.d) for more.
#
# Runs as uid 101 (nginx), like nginxinc/nginx-unprivileged: it listens on 8080, its pid file
# is /tmp/nginx.pid, and /etc/nginx/conf.d, /var/cache/nginx and /var/log/nginx belong to uid
# 101 and group 0 (group-writable), so `docker run --user <any uid>:0` works too (OpenShift).
# Ports below 1024 need root, or a runtime that allows them (Docker's default
# net.ipv4.ip_unprivileged_port_start=0).

ARG NGINX_VERSION=1.30.4

# --- build: the same image, plus a toolchain -------------------------------------------------
FROM nginx:${NGINX_VERSION} AS build
ARG RUST_VERSION=1.95.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The packages scripts/deps.sh would install (here for layer caching), and CA certificates
# for downloading rustup, crates and nginx's source.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential pkg-config libclang-dev libpcre2-dev libssl-dev zlib1g-dev \
        curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -fsSL https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
# nginx -V of this image's /usr/sbin/nginx gives the version and configure arguments; the
# source comes from nginx.org; the script checks that this nginx loads the result.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/build-for-nginx --nginx /usr/sbin/nginx --out /out/ngx_http_cf_access_module.so

# --- runtime: no build tools -----------------------------------------------------------------
FROM nginx:${NGINX_VERSION}
# The packages' modules path (/etc/nginx/modules is a symlink to it).
COPY --from=build /out/ngx_http_cf_access_module.so /usr/lib/nginx/modules/
COPY nginx-conf/cf-access.conf /etc/nginx/templates/default.conf.template
COPY --chmod=755 docker/19-cf-access-check.sh /docker-entrypoint.d/
ENV NGINX_PORT=8080
# load_module at the top of nginx.conf; no "user" (the master is not root) and the pid file
# in /tmp; no welcome page. Then `nginx -t` with the template rendered from sample values
# proves, at build time, that this nginx loads the module and accepts the configuration.
# hadolint ignore=SC2016
RUN sed -i -e '1i load_module modules/ngx_http_cf_access_module.so;' \
        -e '/^user /d' \
        -e 's|^pid .*|pid /tmp/nginx.pid;|' /etc/nginx/nginx.conf \
    && rm -f /etc/nginx/conf.d/default.conf \
    && CF_ACCESS_TEAM_DOMAIN=check.cloudflareaccess.com CF_ACCESS_AUD=check \
        UPSTREAM=http://127.0.0.1:3000 \
        envsubst '${NGINX_PORT} ${CF_ACCESS_TEAM_DOMAIN} ${CF_ACCESS_AUD} ${UPSTREAM}' \
        < /etc/nginx/templates/default.conf.template > /etc/nginx/conf.d/default.conf \
    && nginx -t \
    && rm -f /etc/nginx/conf.d/default.conf /tmp/nginx.pid \
    && chown -R 101:0 /etc/nginx/conf.d /var/cache/nginx /var/log/nginx \
    && chmod -R g+w /etc/nginx/conf.d /var/cache/nginx /var/log/nginx
USER 101
EXPOSE 8080
