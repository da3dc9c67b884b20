#!/usr/bin/env bash
# Start a private containerd 1.6 (CRI plugin, runc) under DIR for the integration tests.
#
# Usage: start.sh DIR
#
# Everything lives under DIR: config.toml, root/, state/, runc/ (runc root), the gRPC socket
# DIR/containerd.sock, the CNI conf/bin dirs, the image tarball and the logs. Nothing is written
# to the host's containerd paths except what containerd 1.6 hard-codes (see README.md).
#
# Idempotent: if a containerd started by this script for DIR is still alive and answering, it is
# reused; a stale one (pid file but dead, or not answering) is cleaned up with stop.sh first.
# Exit codes: 0 running, 2 cannot run here (not root, packages cannot be installed), 1 failure.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)
sock="$dir/containerd.sock"
log="$dir/containerd.log"
pidfile="$dir/containerd.pid"

now_ms() { date +%s%3N; }
t0=$(now_ms)

if [ "$(id -u)" != 0 ]; then
    echo "start.sh: containerd needs root (uid is $(id -u))" >&2
    exit 2
fi

# ---- packages --------------------------------------------------------------------------------
# busybox must be the static build: it is the only file of the container images.
need_install=0
for bin in containerd ctr containerd-shim-runc-v2 runc nsenter ip; do
    command -v "$bin" >/dev/null 2>&1 || need_install=1
done
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || need_install=1
if [ "$need_install" = 1 ]; then
    echo "start.sh: installing containerd runc busybox-static iproute2 util-linux with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq containerd runc busybox-static iproute2 util-linux; } >&2; then
        echo "start.sh: apt-get install failed" >&2
        exit 2
    fi
fi

# ---- already running? ------------------------------------------------------------------------
if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null && ctr -a "$sock" version >/dev/null 2>&1; then
        echo "start.sh: containerd already running for $dir (pid $pid)"
        echo "start.sh: socket $sock"
        echo "start.sh: log $log"
        exit 0
    fi
    echo "start.sh: stale state in $dir, cleaning up with stop.sh" >&2
    "$here/stop.sh" "$dir" >&2 || true
fi

mkdir -p "$dir"/{root,state,runc,tmp,opt,cni/bin,cni/conf,cni/cache,images}

# ---- snapshotter -----------------------------------------------------------------------------
# overlayfs when the kernel lets us mount one on this file system, native otherwise.
snapshotter=native
probe="$dir/tmp/overlay-probe"
mkdir -p "$probe"/{l,u,w,m}
if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
    umount "$probe/m"
    snapshotter=overlayfs
fi
rm -rf "$probe"

# ---- CNI -------------------------------------------------------------------------------------
# A pod with its own network namespace needs CNI in containerd 1.6 (it always runs go-cni's
# loopback network and then the first conf in conf_dir). Our plugin, one shell script installed
# under both names:
#   type "loopback": brings lo up;
#   type "wsb-net":  brings lo up, makes eth0 a port-less bridge holding a loopback-range /32
#                    (this kernel has no "dummy" link type) and reports it, which is all
#                    containerd needs from a pod network. Nothing leaves the namespace.
# The libcni result cache cannot be moved by containerd 1.6's config (it is /var/lib/cni);
# stop.sh removes this instance's entries.
netname="wsb-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
cat >"$dir/cni/bin/wsb-net" <<'PLUGIN'
#!/bin/sh
# Minimal CNI plugin for the ws-spdy-bridge tests. Reads the network config on stdin.
conf=$(cat)
ver=$(printf '%s' "$conf" | sed -n 's/.*"cniVersion"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
typ=$(printf '%s' "$conf" | sed -n 's/.*"type"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
[ -n "$ver" ] || ver=0.4.0
case "$CNI_COMMAND" in
VERSION)
    echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}'
    ;;
ADD)
    if [ "$typ" = loopback ]; then
        nsenter --net="$CNI_NETNS" ip link set lo up || exit 1
        printf '{"cniVersion":"%s","interfaces":[{"name":"lo","sandbox":"%s"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}],"dns":{}}\n' "$ver" "$CNI_NETNS"
    else
        nsenter --net="$CNI_NETNS" sh -c "
            ip link set lo up &&
            { ip link show $CNI_IFNAME >/dev/null 2>&1 || ip link add $CNI_IFNAME type bridge; } &&
            ip addr replace 127.0.0.2/32 dev $CNI_IFNAME &&
            ip link set $CNI_IFNAME up" >&2 || exit 1
        printf '{"cniVersion":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"version":"4","address":"127.0.0.2/32","interface":0}],"dns":{}}\n' "$ver" "$CNI_IFNAME" "$CNI_NETNS"
    fi
    ;;
DEL|CHECK|GC|STATUS)
    # The namespace goes away with the sandbox; nothing outside it was touched.
    ;;
*)
    printf '{"cniVersion":"%s","code":4,"msg":"unknown CNI_COMMAND %s"}\n' "$ver" "$CNI_COMMAND"
    exit 1
    ;;
esac
PLUGIN
chmod 0755 "$dir/cni/bin/wsb-net"
ln -sf wsb-net "$dir/cni/bin/loopback"
cat >"$dir/cni/conf/10-wsb.conflist" <<CONF
{
  "cniVersion": "0.4.0",
  "name": "$netname",
  "plugins": [ { "type": "wsb-net" } ]
}
CONF

# ---- config ----------------------------------------------------------------------------------
pause_ref="localhost/ws-spdy-bridge/pause:1"
busybox_ref="localhost/ws-spdy-bridge/busybox:1"
cat >"$dir/config.toml" <<CONF
version = 2
root = "$dir/root"
state = "$dir/state"
temp = "$dir/tmp"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  level = "info"
  # pprof and expvar on a private socket, for looking into a stalled test:
  # ctr pprof --debug-socket DIR/debug.sock goroutines
  address = "$dir/debug.sock"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$pause_ref"
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    disable_tcp_service = true
    enable_tls_streaming = false
    disable_apparmor = true
    enable_selinux = false
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$dir/cni/bin"
      conf_dir = "$dir/cni/conf"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "$snapshotter"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$dir/runc"
          SystemdCgroup = false
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"
  [plugins."io.containerd.snapshotter.v1.native"]
    root_path = "$dir/root/snapshots-native"
CONF

# Cgroup parent for pods started by the tests: stop.sh removes what is left under it.
echo "/ws-spdy-bridge-${netname#wsb-}" >"$dir/cgroup_parent"

# ---- start -----------------------------------------------------------------------------------
rm -f "$sock" "$sock.ttrpc" "$dir/debug.sock"
# setsid: its own session, so a terminal's signals do not reach it half-way; stdio to the log so
# the caller's pipes close when this script exits. In a non-interactive shell the background
# child is not a process-group leader, so setsid does not fork and $! is containerd's pid.
setsid containerd --config "$dir/config.toml" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"

deadline=$(( $(now_ms) + 30000 ))
until ctr -a "$sock" version >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "start.sh: containerd exited during start-up; last log lines:" >&2
        tail -n 30 "$log" >&2
        rm -f "$pidfile"
        exit 1
    fi
    if [ "$(now_ms)" -gt "$deadline" ]; then
        echo "start.sh: containerd did not answer on $sock within 30 s; last log lines:" >&2
        tail -n 30 "$log" >&2
        "$here/stop.sh" "$dir" >&2 || true
        exit 1
    fi
    sleep 0.05
done
if ! ctr -a "$sock" plugins ls 2>/dev/null | grep -E 'io\.containerd\.grpc\.v1[[:space:]]+cri[[:space:]]' | grep -q ok; then
    echo "start.sh: the CRI plugin did not load; last log lines:" >&2
    tail -n 30 "$log" >&2
    "$here/stop.sh" "$dir" >&2 || true
    exit 1
fi
t1=$(now_ms)

# ---- images ----------------------------------------------------------------------------------
# One docker-archive holding two images that share one layer: /bin/busybox from busybox-static
# plus a symlink per applet. "pause" runs a shell loop that exits at once on TERM/INT.
img="$dir/images"
rm -rf "$img/rootfs" "$img/archive"
mkdir -p "$img/rootfs/bin" "$img/rootfs/tmp" "$img/archive"
cp /bin/busybox "$img/rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$img/rootfs/bin/$applet"
done
chmod 1777 "$img/rootfs/tmp"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$img/rootfs" -cf "$img/archive/layer.tar" bin tmp
layer_sha=$(sha256sum "$img/archive/layer.tar" | cut -d' ' -f1)
mkdir -p "$img/archive/$layer_sha"
mv "$img/archive/layer.tar" "$img/archive/$layer_sha/layer.tar"
case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac
write_config() { # name, json fragment for "config"
    local body
    body=$(printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"ws-spdy-bridge tests/peers/containerd/start.sh"}]}' "$arch" "$2" "$layer_sha")
    local sha
    sha=$(printf '%s' "$body" | sha256sum | cut -d' ' -f1)
    printf '%s' "$body" >"$img/archive/$sha.json"
    echo "$sha.json"
}
busybox_cfg=$(write_config busybox '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"}')
pause_cfg=$(write_config pause '{"Env":["PATH=/bin"],"Entrypoint":["/bin/busybox","sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"],"WorkingDir":"/"}')
printf '[{"Config":"%s","RepoTags":["%s"],"Layers":["%s/layer.tar"]},{"Config":"%s","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$busybox_cfg" "$busybox_ref" "$layer_sha" "$pause_cfg" "$pause_ref" "$layer_sha" >"$img/archive/manifest.json"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$img/archive" -cf "$img/images.tar" .
rm -rf "$img/rootfs" "$img/archive"
ctr -a "$sock" -n k8s.io images import --snapshotter "$snapshotter" --platform "linux/$arch" "$img/images.tar" >>"$dir/import.log" 2>&1 || {
    echo "start.sh: image import failed:" >&2
    cat "$dir/import.log" >&2
    "$here/stop.sh" "$dir" >&2 || true
    exit 1
}
t2=$(now_ms)

echo "start.sh: containerd $(containerd --version | awk '{print $3}') running for $dir (pid $pid, snapshotter $snapshotter)"
echo "start.sh: socket $sock"
echo "start.sh: images $busybox_ref $pause_ref"
echo "start.sh: log $log (image import: $dir/import.log)"
echo "start.sh: timings: containerd up in $((t1 - t0)) ms, images imported in $((t2 - t1)) ms"
