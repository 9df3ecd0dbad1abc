# syntax=docker/dockerfile:1
# The Plex push gateway as a container image, built in two stages: the Rust toolchain image
# compiles the release binary, and a Debian slim image runs it alone as the user `plex`.
#
#   docker build -t plex .
#   echo "$(openssl rand -hex 32)" > inner-password
#   docker run --rm -p 9578:9578 -p 9579:9579 --ulimit nofile=1048576:1048576 \
#     -v "$PWD/inner-password:/run/secrets/plex-inner:ro" \
#     -e PLEX_INNER_PASSWORD_FILE=/run/secrets/plex-inner -e PLEX_AUTH_MODE=jwt \
#     -e PLEX_JWT_SECRET_FILE=/run/secrets/plex-jwt ... plex
#
# Every setting is a PLEX_* variable (README.md, "Configuration"; `docker run plex --help`).
# Secrets are best mounted as files and named by PLEX_*_FILE, which keeps them out of
# `docker inspect`. A container on a host meant for a million connections also wants the
# host's kernel settings of deploy/sysctl-plex.conf.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target directory are cache mounts, so a rebuild after a source change
# recompiles the crate, not its dependencies; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin plex-server \
    && cp target/release/plex-server /usr/local/bin/plex-server

FROM debian:bookworm-slim
# A fixed uid, so that mounted secret files can be made readable to it alone.
RUN groupadd --system --gid 10001 plex \
    && useradd --system --uid 10001 --gid plex --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin plex
COPY --from=builder /usr/local/bin/plex-server /usr/local/bin/plex-server
USER plex
ENV PLEX_PORT=9578 \
    PLEX_HTTP_PORT=9579 \
    PLEX_BIND_ADDRESS=0.0.0.0 \
    PLEX_HTTP_BIND_ADDRESS=0.0.0.0 \
    PLEX_LOG_FORMAT=json \
    RUST_LOG=info
# The TLS and WebSocket listeners have no default port: set PLEX_TLS_PORT or PLEX_WS_PORT
# and publish it as well (-p 9443:9443).
EXPOSE 9578 9579
# The slim image has no curl or wget; bash (always there) speaks enough HTTP through
# /dev/tcp. The probe needs the HTTP listener on loopback or 0.0.0.0. With curl installed
# the same is `curl -fsS http://127.0.0.1:9579/healthz`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PLEX_HTTP_PORT:-9579} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM (what `docker stop` sends) shuts down gracefully within ShutdownTimeout (5 s),
# inside docker's 10 s grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/plex-server"]
