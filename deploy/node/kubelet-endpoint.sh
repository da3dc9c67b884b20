#!/usr/bin/env bash
# Points a node's kubelet at the bridge's CRI socket, or back at the runtime's. Run as root on
# the node, one node at a time (docs/deploy.md, "Migrate a node").
#
#   kubelet-endpoint.sh bridge     check the bridge is ready, then restart the kubelet with
#                                  --container-runtime-endpoint=unix://$BRIDGE_SOCKET
#   kubelet-endpoint.sh runtime    restart the kubelet with its own configuration again
#   kubelet-endpoint.sh status     which endpoint the kubelet's unit is set to use
#
# The switch is a systemd drop-in that repeats the kubelet's own ExecStart with the flag added
# (the last --container-runtime-endpoint wins, over the config file too). It is written under
# /run, so a reboot undoes it: the kubelet comes back on the runtime's socket and can start
# the bridge's pod again (with the switch under /etc, a rebooted node would wait for a bridge
# that only the kubelet can start). Run `bridge` again once the pod is ready. PERSIST=1 writes
# it under /etc instead: only for a bridge that starts without the kubelet (a host service).
#
# Environment: BRIDGE_SOCKET (/run/ws-spdy-bridge/cri.sock), ADMIN_URL (http://127.0.0.1:9765,
# the bridge's admin listener in the host network), UNIT (kubelet.service), SYSTEMCTL, CURL.
set -euo pipefail

bridge_socket=${BRIDGE_SOCKET:-/run/ws-spdy-bridge/cri.sock}
admin_url=${ADMIN_URL:-http://127.0.0.1:9765}
unit=${UNIT:-kubelet.service}
systemctl=${SYSTEMCTL:-systemctl}
curl=${CURL:-curl}
if [ "${PERSIST:-0}" = 1 ]; then
    dropin_dir=${DROPIN_DIR:-/etc/systemd/system/$unit.d}
else
    dropin_dir=${DROPIN_DIR:-/run/systemd/system/$unit.d}
fi
dropin=$dropin_dir/90-ws-spdy-bridge.conf
flag="--container-runtime-endpoint=unix://$bridge_socket"

die() { echo "kubelet-endpoint: $*" >&2; exit 1; }

# The unit's command line as systemd holds it ($VARIABLES unexpanded), without our flag.
exec_start() {
    local line
    line=$("$systemctl" show "$unit" -p ExecStart --value)
    line=$(sed -n 's/.*argv\[\]=\([^;]*\) ;.*/\1/p' <<<"$line" | head -n 1)
    [ -n "$line" ] || die "cannot read ExecStart of $unit"
    line=${line//" $flag"/}
    printf '%s' "${line% }"
}

case "${1:-}" in
bridge)
    [ -S "$bridge_socket" ] || die "no socket at $bridge_socket: is the bridge pod running on this node?"
    ready=$("$curl" -fsS "$admin_url/readyz") || die "the bridge is not ready ($admin_url/readyz): $ready"
    command=$(exec_start)
    mkdir -p "$dropin_dir"
    cat >"$dropin.tmp" <<EOF
# Written by ws-spdy-bridge's kubelet-endpoint.sh: the kubelet talks CRI to the bridge.
# Remove this file (or run kubelet-endpoint.sh runtime) to undo.
[Service]
ExecStart=
ExecStart=$command $flag
EOF
    mv "$dropin.tmp" "$dropin"
    "$systemctl" daemon-reload
    "$systemctl" restart "$unit"
    # The kubelet lists pods and containers within seconds of starting: through the bridge now.
    for _ in $(seq 60); do
        if "$curl" -fsS "$admin_url/metrics" | grep -q '^ws_spdy_bridge_cri_calls_total{'; then
            echo "kubelet now uses unix://$bridge_socket ($dropin)"
            exit 0
        fi
        sleep 1
    done
    die "the kubelet made no CRI call through the bridge within 60 s; undo with: $0 runtime"
    ;;
runtime)
    if [ -e "$dropin" ]; then
        rm -f "$dropin"
        "$systemctl" daemon-reload
        "$systemctl" restart "$unit"
        echo "kubelet back on its own configured endpoint"
    else
        echo "kubelet already on its own configured endpoint (no $dropin)"
    fi
    ;;
status)
    if [ -e "$dropin" ]; then
        echo "bridge: unix://$bridge_socket ($dropin)"
    else
        echo "runtime: the kubelet's own configuration (no $dropin)"
    fi
    ;;
*)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
