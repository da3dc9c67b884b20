"""Checks rendered manifests beyond their schemas; deploy/check.sh runs it in its venv.

    python validate.py split RENDERED OUT_DIR
        Writes the documents kubernetes-validate has schemas for to OUT_DIR/core.yaml, every
        bridge config.yaml embedded in a ConfigMap to OUT_DIR/config-<n>.yaml, and the bridge
        container's WS_SPDY_BRIDGE_* variables to OUT_DIR/config-<n>.env (NAME=VALUE lines,
        $(HOST_IP) as a documentation address).
    python validate.py check RENDERED SHAPE
        Cross-references inside one rendering (SHAPE: cri, standalone or sidecar): Service and
        ServiceMonitor selectors reach the pods, named ports exist, volumes name objects that
        exist, and the pods meet their PodSecurity level ("restricted" for standalone and
        sidecar; for cri, the least the host sockets need).
    python validate.py promql DASHBOARD RULES_OUT
        Turns every dashboard query into a Prometheus recording rule (Grafana variables
        replaced) so that promtool can parse it.

Exits 1 with one line per problem.
"""

import json
import re
import sys

import yaml

# Kinds whose schemas kubernetes-validate does not ship: checked here instead.
CRD_GROUPS = ("monitoring.coreos.com/",)
# Secrets the operator creates (docs/deploy.md): referenced, never rendered.
EXTERNAL_SECRETS = {"ws-spdy-bridge-tls"}


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(doc):
    if doc["kind"] in ("DaemonSet", "Deployment"):
        return doc["spec"]["template"]
    return None


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def split(rendered, out_dir):
    docs = load(rendered)
    core = [d for d in docs if not d["apiVersion"].startswith(CRD_GROUPS)]
    skipped = [f'{d["kind"]}/{d["metadata"]["name"]}' for d in docs if d not in core]
    with open(f"{out_dir}/core.yaml", "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    env = []
    for d in docs:
        template = pod_spec(d)
        for c in template["spec"]["containers"] if template else []:
            if c["name"] != "ws-spdy-bridge":
                continue
            for e in c.get("env", []):
                if e["name"].startswith("WS_SPDY_BRIDGE_") and "value" in e:
                    env.append(f'{e["name"]}={e["value"].replace("$(HOST_IP)", "192.0.2.10")}')
    n = 0
    for d in docs:
        if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}):
            n += 1
            with open(f"{out_dir}/config-{n}.yaml", "w") as f:
                f.write(d["data"]["config.yaml"])
            with open(f"{out_dir}/config-{n}.env", "w") as f:
                f.write("".join(f"{line}\n" for line in env))
    if skipped:
        print(f"  note: not in kubernetes-validate's schemas, checked by validate.py: {', '.join(skipped)}")
    if n == 0:
        print(f"{rendered}: no ConfigMap with a config.yaml")
        return 1
    return 0


def container_ports(template):
    names = set()
    for c in template["spec"]["containers"]:
        for p in c.get("ports", []):
            names.add(p.get("name"))
    return names


def check_pod_security(name, template, shape, problems):
    spec = template["spec"]
    psc = spec.get("securityContext", {})
    for c in spec["containers"] + spec.get("initContainers", []):
        where = f"{name}/{c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities must drop ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root file system must be read-only")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        if shape != "cri":
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            if non_root is not True or uid == 0:
                problems.append(f"{where}: restricted needs runAsNonRoot and a non-zero uid")
    if shape != "cri":
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name}: host namespaces under restricted")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                problems.append(f"{name}: hostPath volume {v['name']} under restricted")
        for c in spec["containers"]:
            for p in c.get("ports", []):
                if p.get("hostPort"):
                    problems.append(f"{name}: hostPort under restricted")
    else:
        if not spec.get("hostNetwork"):
            problems.append(f"{name}: cri needs hostNetwork (the kubelet dials 127.0.0.1)")
        paths = {v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
        if len(paths) != 2:
            problems.append(f"{name}: cri needs two hostPath volumes (runtime and bridge sockets), has {sorted(paths)}")


def check(rendered, shape):
    docs = load(rendered)
    problems = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    workloads = [d for d in docs if pod_spec(d)]
    if len(workloads) != 1:
        problems.append(f"expected one workload, found {[d['kind'] for d in workloads]}")
        return problems
    wl = workloads[0]
    template = pod_spec(wl)
    labels = template["metadata"].get("labels", {})
    wname = f"{wl['kind']}/{wl['metadata']['name']}"
    expected_kind = "Deployment" if shape == "sidecar" else "DaemonSet"
    if wl["kind"] != expected_kind:
        problems.append(f"{shape}: expected a {expected_kind}, found {wname}")
    if not selects(wl["spec"]["selector"]["matchLabels"], labels):
        problems.append(f"{wname}: selector does not match its pod template")
    ports = container_ports(template)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}

    # Probes use named ports that exist; the bridge container has both probes.
    bridge = [c for c in template["spec"]["containers"] if c["name"] == "ws-spdy-bridge"]
    if not bridge:
        problems.append(f"{wname}: no ws-spdy-bridge container")
    for c in bridge:
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            p = c.get(probe, {}).get("httpGet", {})
            if p.get("path") != path or p.get("port") not in ports:
                problems.append(f"{wname}: {probe} must GET {path} on a declared port, has {p}")
        if not c.get("resources", {}).get("limits", {}).get("memory"):
            problems.append(f"{wname}: no memory limit")
        if not c.get("resources", {}).get("requests", {}).get("memory"):
            problems.append(f"{wname}: no memory request")

    # Volumes name objects that exist (or Secrets the operator creates).
    configmaps = {d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])}
    for v in template["spec"].get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in configmaps:
            problems.append(f"{wname}: volume {v['name']} names a missing ConfigMap {v['configMap']['name']}")
        if "secret" in v and v["secret"]["secretName"] not in EXTERNAL_SECRETS | {
            d["metadata"]["name"] for d in by_kind.get("Secret", [])
        }:
            problems.append(f"{wname}: volume {v['name']} names an unknown Secret")
    sa = template["spec"].get("serviceAccountName")
    if sa not in {d["metadata"]["name"] for d in by_kind.get("ServiceAccount", [])}:
        problems.append(f"{wname}: service account {sa} is not rendered")

    # Services reach the pods on declared ports; monitors reach the Services.
    services = by_kind.get("Service", [])
    for s in services:
        if not selects(s["spec"]["selector"], labels):
            problems.append(f"Service/{s['metadata']['name']}: selector misses the pods")
        for p in s["spec"]["ports"]:
            if p.get("targetPort") not in ports:
                problems.append(f"Service/{s['metadata']['name']}: targetPort {p.get('targetPort')} not a container port")
    for m in by_kind.get("ServiceMonitor", []):
        mname = f"ServiceMonitor/{m['metadata']['name']}"
        if m["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"{mname}: apiVersion {m['apiVersion']}")
        sel = m["spec"]["selector"].get("matchLabels", {})
        hit = [s for s in services if selects(sel, s["metadata"].get("labels", {}))]
        if not hit:
            problems.append(f"{mname}: selects no Service")
        for e in m["spec"]["endpoints"]:
            if not any(e["port"] in {p["name"] for p in s["spec"]["ports"]} for s in hit):
                problems.append(f"{mname}: endpoint port {e['port']} not on the Service")
            for key in ("interval", "scrapeTimeout"):
                if key in e and not re.fullmatch(r"[0-9]+(ms|s|m|h)", e[key]):
                    problems.append(f"{mname}: {key} {e[key]!r}")
            unknown = set(e) - {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings", "scheme", "tlsConfig", "honorLabels"}
            if unknown:
                problems.append(f"{mname}: unknown endpoint fields {sorted(unknown)}")
        if m["metadata"].get("namespace") not in namespaces:
            problems.append(f"{mname}: in another namespace than the Service")
    for n in by_kind.get("NetworkPolicy", []):
        if shape == "cri":
            problems.append("NetworkPolicy rendered for host-network pods, where it does not apply")
        if not selects(n["spec"]["podSelector"].get("matchLabels", {}), labels):
            problems.append(f"NetworkPolicy/{n['metadata']['name']}: podSelector misses the pods")
        for rule in n["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if p["port"] not in ports:
                    problems.append(f"NetworkPolicy/{n['metadata']['name']}: port {p['port']} not a container port")
    for ns in by_kind.get("Namespace", []):
        level = ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
        want = "privileged" if shape == "cri" else "restricted"
        if level != want:
            problems.append(f"Namespace/{ns['metadata']['name']}: enforce={level}, expected {want}")
    if shape == "cri" and wl["spec"].get("updateStrategy", {}).get("type") != "OnDelete":
        problems.append(f"{wname}: cri must update OnDelete (the kubelet restarts it through it)")
    grace = template["spec"].get("terminationGracePeriodSeconds", 30)
    if grace <= 32:
        problems.append(f"{wname}: terminationGracePeriodSeconds {grace} <= drain 30s + 2s")
    check_pod_security(wname, template, shape, problems)
    return problems


def promql(dashboard, out):
    with open(dashboard) as f:
        dash = json.load(f)
    exprs = []

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "expr" and isinstance(x, str):
                    exprs.append(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(dash)
    rules = []
    for i, e in enumerate(exprs):
        e = e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$node", ".*")
        if "$" in e:
            print(f"unknown Grafana variable in: {e}")
            return 1
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    print(f"  {len(rules)} dashboard queries")
    return 0


def main(argv):
    if len(argv) == 4 and argv[1] == "split":
        return split(argv[2], argv[3])
    if len(argv) == 4 and argv[1] == "check":
        problems = check(argv[2], argv[3])
        for p in problems:
            print(f"{argv[2]}: {p}")
        return 1 if problems else 0
    if len(argv) == 4 and argv[1] == "promql":
        return promql(argv[2], argv[3])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
