# syntax=docker/dockerfile:1
# The proglog operator image: `proglog-operator` on distroless.
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/proglog/proglog-operator:0.1.0 .
#
# The chart runs it with `run` as user 65532 with a read-only root file system; settings
# come as flags or PROGLOG_OPERATOR_* variables. `render -f FILE` works in it too.

# The base images are build arguments (CI passes local stand-ins built from Debian packages,
# see .ci/images.sh); the defaults are the public images.
ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p proglog-operator --bin proglog-operator \
 && mkdir -p /out \
 && cp target/release/proglog-operator /out/

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="proglog-operator" \
      org.opencontainers.image.description="proglog: the Kubernetes operator of LogCluster resources" \
      org.opencontainers.image.source="https://github.com/proglog/proglog" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/proglog-operator /usr/local/bin/proglog-operator
USER 65532:65532
# HTTP /metrics /healthz /readyz (--metrics-addr).
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/proglog-operator"]
CMD ["run"]
