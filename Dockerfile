# ws-spdy-bridge: one static binary on an empty base image.
#
#   docker build -t ws-spdy-bridge:0.1.0 .
#
# Where no base image can be pulled (or to package a binary you built yourself), build the
# binary on the host and give it to the final stage instead of the Rust stage:
#
#   RUSTFLAGS='-C target-feature=+crt-static' \
#       cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ws-spdy-bridge
#   buildah bud --isolation chroot --build-arg BINARY_FROM=prebuilt -t ws-spdy-bridge:0.1.0 .
#
# (deploy/image.sh does both, and checks the result.)
#
# The binary is glibc, linked statically (static-pie): it needs no shared library, no NSS
# module and no CA bundle (the bridge trusts only the CA files its configuration names). Names
# resolve through /etc/hosts and /etc/resolv.conf, which Kubernetes mounts into every container.

# Which stage provides /ws-spdy-bridge: "build" (compile here) or "prebuilt" (take
# target/image/ws-spdy-bridge, a stripped copy deploy/image.sh makes, from the build context).
# The other stage is skipped, as BuildKit (Docker 23+) and buildah do; Docker's legacy builder
# runs every stage and so needs that file to exist.
ARG BINARY_FROM=build
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ws-spdy-bridge \
    && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/ws-spdy-bridge /out/ws-spdy-bridge \
    && strip /out/ws-spdy-bridge \
    && ldd /out/ws-spdy-bridge 2>&1 | grep -q 'statically linked' \
    && /out/ws-spdy-bridge --version

FROM scratch AS prebuilt
COPY target/image/ws-spdy-bridge /out/ws-spdy-bridge

FROM ${BINARY_FROM} AS binary

FROM scratch
COPY --from=binary /out/ws-spdy-bridge /ws-spdy-bridge
# Non-root by default (the "nonroot" id of distroless images). The CRI-interception shape runs
# the same image as uid 0, for the runtime's root-owned socket (deploy/overlays/cri-daemonset).
USER 65532:65532
# Streaming listener, admin listener (/metrics, /healthz, /readyz).
EXPOSE 8765 9765
ENTRYPOINT ["/ws-spdy-bridge"]
CMD ["serve", "--config", "/etc/ws-spdy-bridge/config/config.yaml"]
