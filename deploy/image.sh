#!/usr/bin/env bash
# Builds the container image without a Docker engine, then runs it.
#
#   deploy/image.sh [IMAGE]        IMAGE defaults to localhost/ws-spdy-bridge:<crate version>
#
# 1. A static binary, built here (glibc, static-pie: -C target-feature=+crt-static).
# 2. buildah builds the Dockerfile with BINARY_FROM=prebuilt, so the final FROM-scratch stage
#    takes that binary and no base image is pulled.
# 3. The image is run with `buildah run` (chroot isolation, host network): --version, then the
#    sidecar shape for real: the image's runtime simulator and the image's bridge in front of
#    it, one command through both over WebSocket v5, checked in the bridge's metrics, and the
#    bridge's uid checked (65532: non-root).
# 4. The image is saved as an OCI archive, target/image/ws-spdy-bridge-<version>.oci.tar
#    (skopeo copy oci-archive:… docker://REGISTRY/…, or `buildah push`, to publish it).
#
# The image store is private to this tree (target/tools/containers) unless BUILDAH_ROOT is
# set; BUILDAH_ROOT=system uses buildah's default store. Needs root (chroot isolation).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
image=${1:-localhost/ws-spdy-bridge:$version}
triple=x86_64-unknown-linux-gnu

if ! command -v buildah >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
store=${BUILDAH_ROOT:-$PWD/target/tools/containers}
buildah=(buildah)
if [ "$store" != system ]; then
    # vfs: no overlay mount needed, and the image is one 11 MB layer.
    buildah=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
fi

echo "--- static binary ($triple, crt-static)"
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$triple" --bin ws-spdy-bridge
bin=target/$triple/release/ws-spdy-bridge
if readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
    echo "$bin is dynamically linked: it cannot run on a scratch image" >&2
    exit 1
fi
mkdir -p target/image
strip -o target/image/ws-spdy-bridge "$bin"

echo "--- buildah bud (BINARY_FROM=prebuilt) -> $image"
before=$("${buildah[@]}" containers -q)
"${buildah[@]}" bud --quiet --isolation chroot --layers=false \
    --build-arg BINARY_FROM=prebuilt -t "$image" . >/dev/null
# bud leaves a working container for the FROM-only "binary" stage: remove the ones it made,
# then the stages' images and earlier builds' untagged ones.
for c in $("${buildah[@]}" containers -q); do
    grep -qxF "$c" <<<"$before" || "${buildah[@]}" rm "$c" >/dev/null
done
"${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
"${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$image"
config=$("${buildah[@]}" inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}' "$image")
[ "$config" = "65532:65532 [/ws-spdy-bridge]" ] || { echo "unexpected image config: $config" >&2; exit 1; }

echo "--- run the image"
work=$(mktemp -d)
containers=()
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for c in "${containers[@]}"; do "${buildah[@]}" rm "$c" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# The pid of the process listening on 127.0.0.1:PORT.
listener_pid() {
    ss -Hltnp "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}
wait_listen() {
    for _ in $(seq 100); do
        [ -n "$(listener_pid "$1")" ] && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

sim_ctr=$("${buildah[@]}" from "$image"); containers+=("$sim_ctr")
bridge_ctr=$("${buildah[@]}" from "$image"); containers+=("$bridge_ctr")
"${buildah[@]}" run --isolation chroot "$bridge_ctr" -- /ws-spdy-bridge --version

sim_port=$(free_port); listen_port=$(free_port); admin_port=$(free_port)
chmod 0755 "$work"
cat >"$work/config.yaml" <<EOF
listen: "127.0.0.1:$listen_port"
upstream:
  url: "http://127.0.0.1:$sim_port"
limits:
  max_sessions: 100
metrics:
  listen: "127.0.0.1:$admin_port"
EOF
chmod 0644 "$work/config.yaml"
mount=(-v "$work:/etc/ws-spdy-bridge/config:ro")
"${buildah[@]}" run --isolation chroot "${mount[@]}" "$bridge_ctr" -- \
    /ws-spdy-bridge check-config /etc/ws-spdy-bridge/config/config.yaml >/dev/null

"${buildah[@]}" run --isolation chroot "$sim_ctr" -- \
    /ws-spdy-bridge runtime-sim --listen "127.0.0.1:$sim_port" >"$work/sim.log" 2>&1 &
pids+=($!)
"${buildah[@]}" run --isolation chroot "${mount[@]}" "$bridge_ctr" -- \
    /ws-spdy-bridge serve --config /etc/ws-spdy-bridge/config/config.yaml >"$work/bridge.log" 2>&1 &
pids+=($!)
wait_listen "$sim_port"
wait_listen "$admin_port"
wait_listen "$listen_port"

bridge_pid=$(listener_pid "$admin_port")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$bridge_pid/status")
[ "$uid" = 65532 ] || { echo "the bridge runs as uid $uid, not 65532" >&2; exit 1; }
curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null
curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null

# One command through the image's bridge, executed by the image's simulator inside its
# container (where /ws-spdy-bridge is the only file).
out=$("$bin" sim-exec --runtime "http://127.0.0.1:$sim_port" --bridge "127.0.0.1:$listen_port" \
    -- /ws-spdy-bridge --version)
[ "$out" = "ws-spdy-bridge $version" ] || { echo "exec through the image printed: $out" >&2; exit 1; }
metrics=$(curl -fsS "http://127.0.0.1:$admin_port/metrics")
grep -q '^ws_spdy_bridge_sessions_ended_total{kind="exec",outcome="success",protocol="v5"} 1$' <<<"$metrics" \
    || { echo "the bridge did not count a v5 exec:"; grep sessions_ended <<<"$metrics"; exit 1; } >&2
echo "exec through the image's bridge and simulator: '$out' (v5, uid $uid)"

# SIGTERM drains and exits 0; the simulator stops on SIGINT.
kill -TERM "$bridge_pid"
kill -INT "$(listener_pid "$sim_port")"
for p in "${pids[@]}"; do wait "$p"; done
pids=()

archive=target/image/ws-spdy-bridge-$version.oci.tar
rm -f "$archive"
"${buildah[@]}" push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
echo "image $image, saved as $archive ($(du -h "$archive" | cut -f1))"
