# syntax=docker/dockerfile:1
# The proglog node image: `proglog-node` (the entrypoint) and the `proglog` CLI, on distroless.
#
#   docker build -f docker/node.Dockerfile -t ghcr.io/proglog/proglog-node:0.1.0 .
#
# The operator runs it as user and group 65532 with a read-only root file system, the data
# volume at /var/lib/proglog and an emptyDir at /tmp; its settings come as PROGLOG_*
# variables (every node flag reads one). The tag the operator uses by default is the
# workspace version (Cargo.toml).

# The base images are build arguments (CI passes local stand-ins built from Debian packages,
# see .ci/images.sh); the defaults are the public images.
ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# Debug info is stripped (the workspace's release profile keeps it for profiling); symbol
# names stay, so panics still have readable backtraces.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p proglog-node --bin proglog-node --bin proglog \
 && mkdir -p /out/bin /out/proglog/data \
 && cp target/release/proglog-node target/release/proglog /out/bin/ \
 && chown -R 65532:65532 /out/proglog

# glibc from Debian 12, like the build image; no shell, no package manager.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="proglog-node" \
      org.opencontainers.image.description="proglog: a replicated commit log node and its CLI" \
      org.opencontainers.image.source="https://github.com/proglog/proglog" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/bin/ /usr/local/bin/
# The data directory (the operator's pods mount their volume on /var/lib/proglog), owned by
# the node's user so that a plain `docker run` works too.
COPY --from=build --chown=65532:65532 /out/proglog /var/lib/proglog
ENV PROGLOG_DATA_DIR=/var/lib/proglog/data
WORKDIR /var/lib/proglog
USER 65532:65532
# gRPC (client, peers, admin), gossip (TCP and UDP), HTTP /metrics /healthz /readyz.
EXPOSE 8400/tcp 8401/tcp 8401/udp 9400/tcp
VOLUME ["/var/lib/proglog"]
ENTRYPOINT ["/usr/local/bin/proglog-node"]
