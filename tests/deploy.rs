//! What an operator applies (deploy/, helm/) agrees with the binary it runs:
//!
//! * the Grafana dashboard's queries name only metric families, labels and label values the
//!   bridge really exports (a renamed metric or label would leave a panel silently empty);
//! * every configuration file the kustomize overlays ship as their ConfigMap loads and
//!   validates as `check-config` does, with the environment the manifests set, and agrees with
//!   the manifests around it (sockets mounted where the config puts them, probes reachable,
//!   a grace period longer than the drain).
//!
//! The Helm chart's rendered ConfigMaps go through the binary's `check-config` in
//! `deploy/check.sh`, which has the helm binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ws_spdy_bridge::config::{Config, Flags, Sources};
use ws_spdy_bridge::metrics::{
    Channel, Direction, Kind, Metrics, Outcome, Protocol, RefusalReason, labels,
};

const DASHBOARD: &str = "helm/ws-spdy-bridge/dashboards/ws-spdy-bridge.json";

/// Labels Prometheus adds to every scraped series (target labels and the ServiceMonitor's
/// `node` relabeling), which the dashboard may filter and group by.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "node",
    "instance",
    "job",
    "service",
    "endpoint",
    "container",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// What the bridge exports

/// One metric family as `/metrics` shows it.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// Label name → every value seen.
    labels: BTreeMap<String, BTreeSet<String>>,
}

/// Every family of a fresh [`Metrics`], with every series of every closed label set made to
/// exist (a counter vector shows no family until one of its series does).
fn exported_families() -> BTreeMap<String, Family> {
    let metrics = Arc::new(Metrics::new());
    for &kind in Kind::ALL {
        for &protocol in Protocol::ALL {
            for &outcome in Outcome::ALL {
                let mut guard = metrics.start_session(kind, protocol, None);
                for &channel in Channel::ALL {
                    for &direction in Direction::ALL {
                        guard.bytes(channel, direction).add(1);
                    }
                }
                guard.upgraded(Duration::from_millis(1));
                guard.set_outcome(outcome);
            }
        }
    }
    for &reason in RefusalReason::ALL {
        metrics.refused(reason);
    }
    for method in labels::CRI_METHODS.iter().chain(["NotACriMethod"].iter()) {
        for intercepted in [true, false] {
            metrics.cri_call(&format!("/runtime.v1.RuntimeService/{method}"), intercepted);
        }
    }
    parse_exposition(&metrics.encode())
}

/// Families from the text exposition format: `# TYPE` lines name them, series lines give
/// their labels (histogram series carry the family name plus `_bucket`, `_sum`, `_count`).
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').expect("series value").0;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = family_of(name, &families)
            .unwrap_or_else(|| panic!("series {name} before its # TYPE line"));
        let entry = families.get_mut(&family).expect("known family");
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (label, value) = pair.split_once('=').expect("label=value");
            entry
                .labels
                .entry(label.to_owned())
                .or_default()
                .insert(value.trim_matches('"').to_owned());
        }
    }
    families
}

/// The family a series or query name belongs to: itself, or a histogram's with its
/// `_bucket`/`_sum`/`_count` suffix stripped.
fn family_of(name: &str, families: &BTreeMap<String, Family>) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        families
            .get(base)
            .filter(|f| f.kind == "histogram")
            .map(|_| base.to_owned())
    })
}

#[test]
fn every_family_the_bridge_registers_is_seen_by_the_dashboard_check() {
    let families = exported_families();
    let names: Vec<_> = families.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "ws_spdy_bridge_bytes_total",
            "ws_spdy_bridge_close_signals_total",
            "ws_spdy_bridge_cri_calls_total",
            "ws_spdy_bridge_handshake_refusals_total",
            "ws_spdy_bridge_session_duration_seconds",
            "ws_spdy_bridge_sessions_active",
            "ws_spdy_bridge_sessions_ended_total",
            "ws_spdy_bridge_sessions_started_total",
            "ws_spdy_bridge_upstream_upgrade_duration_seconds",
        ],
        "a family was added or renamed: check the dashboard ({DASHBOARD}) still shows it"
    );
    let outcomes = &families["ws_spdy_bridge_sessions_ended_total"].labels["outcome"];
    assert!(outcomes.contains("upstream_error"), "{outcomes:?}");
    let le = &families["ws_spdy_bridge_session_duration_seconds"].labels["le"];
    assert!(le.contains("+Inf"), "{le:?}");
}

// ---------------------------------------------------------------------------------------------
// What the dashboard asks for

/// Every PromQL text in the dashboard: panel targets (`expr`) and template variables
/// (`query`, `definition`), wherever they are nested.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s))
                        if s.contains("ws_spdy_bridge_") || s.contains("label_values") =>
                    {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// A `name{matchers}` selector in a query, matchers as (label, operator, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every `ws_spdy_bridge_…` name in `expr`, with the matchers of its `{…}` if it has one.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ws_spdy_bridge_") {
        // Not the tail of a longer identifier.
        let preceded = rest[..at].chars().next_back().is_some_and(is_name_char);
        let after = &rest[at..];
        let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
        let name = after[..len].to_owned();
        rest = &after[len..];
        if preceded {
            continue;
        }
        let mut matchers = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let end = body.find('}').expect("closing brace");
            matchers = parse_matchers(&body[..end]);
            rest = &body[end + 1..];
        }
        out.push(Selector { name, matchers });
    }
    out
}

/// `a="x", b=~"y|z"` → [(a, =, x), (b, =~, y|z)]. Values here never hold commas or quotes.
fn parse_matchers(body: &str) -> Vec<(String, String, String)> {
    body.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let op_at = m.find(['=', '!']).expect("matcher operator");
            let label = m[..op_at].trim().to_owned();
            let rest = &m[op_at..];
            let op_len = rest.find('"').expect("quoted matcher value");
            let op = rest[..op_len].trim().to_owned();
            let value = rest[op_len..].trim().trim_matches('"').to_owned();
            (label, op, value)
        })
        .collect()
}

/// The label lists of every `by (…)` and `without (…)` in `expr`.
fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for keyword in ["by", "without"] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + keyword.len()..].trim_start();
            rest = &rest[at + keyword.len()..];
            if before.is_some_and(is_name_char) || !after.starts_with('(') {
                continue;
            }
            let inner = &after[1..after.find(')').expect("closing parenthesis")];
            out.extend(
                inner
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// The label a `label_values(selector, label)` template query lists.
fn label_values_label(query: &str) -> Option<String> {
    let inner = query.split_once("label_values(")?.1;
    let inner = inner.rsplit_once(')')?.0;
    Some(inner.rsplit_once(',')?.1.trim().to_owned())
}

/// Every problem with one query: unknown names, suffixes on non-histograms, unknown labels,
/// label values the bridge never exports.
fn check_query(query: &str, families: &BTreeMap<String, Family>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut labels_here: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for sel in selectors(query) {
        let Some(family_name) = family_of(&sel.name, families) else {
            problems.push(format!("{}: not a metric the bridge exports", sel.name));
            continue;
        };
        let family = &families[&family_name];
        labels_here.extend(family.labels.keys().map(String::as_str));
        for (label, op, value) in &sel.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(known) = family.labels.get(label) else {
                problems.push(format!("{}: no label {label:?}", sel.name));
                continue;
            };
            // Positive matchers on closed label sets must name values that exist.
            if (op == "=" || op == "=~") && !value.contains('$') {
                for alternative in value.split('|') {
                    if !known.contains(alternative) {
                        problems.push(format!(
                            "{}: {label}={alternative:?} is never exported (known: {known:?})",
                            sel.name
                        ));
                    }
                }
            }
        }
    }
    for label in grouping_labels(query) {
        if !labels_here.contains(label.as_str()) {
            problems.push(format!(
                "groups by {label:?}, which no metric in the query has"
            ));
        }
    }
    if let Some(label) = label_values_label(query)
        && !labels_here.contains(label.as_str())
    {
        problems.push(format!("label_values of {label:?}, which the metric lacks"));
    }
    problems
}

/// The `{{label}}` names a legend format uses.
fn legend_labels(format: &str) -> Vec<&str> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}").map(|(l, _)| l.trim()))
        .collect()
}

#[test]
fn dashboard_queries_name_only_exported_metrics_labels_and_values() {
    let families = exported_families();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "found only {} queries", queries.len());

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for query in &queries {
        for sel in selectors(query) {
            if let Some(f) = family_of(&sel.name, &families) {
                used.insert(f);
            }
        }
        problems.extend(
            check_query(query, &families)
                .into_iter()
                .map(|p| format!("{p}\n    in: {query}")),
        );
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));

    // What the dashboard is for (the deploy issue): each of these must have a panel.
    for required in [
        "ws_spdy_bridge_sessions_ended_total",
        "ws_spdy_bridge_bytes_total",
        "ws_spdy_bridge_session_duration_seconds",
        "ws_spdy_bridge_upstream_upgrade_duration_seconds",
        "ws_spdy_bridge_sessions_active",
        "ws_spdy_bridge_handshake_refusals_total",
    ] {
        assert!(used.contains(required), "no panel queries {required}");
    }
}

#[test]
fn dashboard_legends_use_only_labels_their_query_keeps() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut problems = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let format = target["legendFormat"].as_str().unwrap_or_default();
            let kept = grouping_labels(expr);
            for label in legend_labels(format) {
                if !kept.iter().any(|k| k == label) {
                    problems.push(format!(
                        "panel {:?}: legend {{{{{label}}}}} but the query keeps {kept:?}",
                        panel["title"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_query_checker_catches_wrong_names_labels_and_values() {
    let families = exported_families();
    let bad = [
        "rate(ws_spdy_bridge_sessions_total[5m])",
        "ws_spdy_bridge_sessions_active_bucket",
        "sum by (outcome) (ws_spdy_bridge_sessions_active)",
        r#"ws_spdy_bridge_sessions_ended_total{outcome="failed"}"#,
        r#"ws_spdy_bridge_bytes_total{chanel="stdin"}"#,
        "label_values(ws_spdy_bridge_sessions_active, outcome)",
    ];
    for query in bad {
        assert!(
            !check_query(query, &families).is_empty(),
            "not caught: {query}"
        );
    }
    let good = r#"histogram_quantile(0.9, sum by (le, kind) (rate(ws_spdy_bridge_session_duration_seconds_bucket{namespace=~"$namespace", kind=~"exec|attach"}[5m])))"#;
    assert_eq!(check_query(good, &families), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The kustomize overlays' configuration files

/// A self-signed certificate and key in a scratch directory, removed when dropped: the
/// overlays' TLS paths point at a Secret's mount, which a test replaces by environment.
struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    fn new(name: &str) -> TlsFiles {
        let dir = std::env::temp_dir().join(format!(
            "ws-spdy-bridge-deploy-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["ws-spdy-bridge".into()]).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        TlsFiles { dir }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "WS_SPDY_BRIDGE_TLS__CERT_FILE".into(),
                self.dir.join("tls.crt").display().to_string(),
            ),
            (
                "WS_SPDY_BRIDGE_TLS__KEY_FILE".into(),
                self.dir.join("tls.key").display().to_string(),
            ),
        ]
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Loads an overlay's config.yaml as `serve` and `check-config` do: the file, then `env`
/// (what the manifests set, with a node address filled in), then the files it names.
fn load_overlay(overlay: &str, env: Vec<(String, String)>) -> Config {
    let file = repo(&format!("deploy/overlays/{overlay}/config.yaml"));
    let cfg = Config::load(&Sources {
        file: Some(file),
        env,
        flags: Flags::default(),
    })
    .unwrap_or_else(|e| panic!("{overlay}/config.yaml:\n{e}"));
    let files = cfg.check_files();
    assert!(files.is_empty(), "{overlay}: {files:?}");
    cfg
}

/// `key: value` of the first line in `text` whose key is `key` (manifests are plain YAML).
fn manifest_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.trim().trim_start_matches("- ").split_once(':')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Memory limit of the bridge container, MiB, from a manifest's `memory: NNNMi` under
/// `limits:` (the last `memory:` of the first `limits:` block).
fn memory_limit_mib(text: &str) -> u64 {
    let after = &text[text.find("limits:").expect("a limits block")..];
    let value = manifest_value(after, "memory").expect("memory limit");
    value
        .strip_suffix("Mi")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("memory limit {value:?} is not in Mi"))
}

/// What every shape needs of its configuration, whatever the mode. `pod` is the manifest with
/// the pod spec, `container` the part of it that holds the bridge container.
fn check_common(overlay: &str, cfg: &Config, pod: &str, container: &str) {
    // Probes and Prometheus reach the admin listener from outside the container.
    assert!(
        cfg.metrics.listen.ip().is_unspecified(),
        "{overlay}: metrics.listen {} is not reachable by probes",
        cfg.metrics.listen
    );
    assert_eq!(
        cfg.metrics.listen.port(),
        9765,
        "{overlay}: the manifests probe 9765"
    );
    // The kubelet's SIGKILL must come after the drain.
    let grace: u64 = manifest_value(pod, "terminationGracePeriodSeconds")
        .expect("terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let drain = cfg.drain.deadline + cfg.drain.close_timeout;
    assert!(
        Duration::from_secs(grace) > drain,
        "{overlay}: grace period {grace}s <= drain {drain:?}"
    );
    // The memory limit holds max_sessions busy sessions (~2 MiB of buffers each at the
    // default caps) over ~12 MiB at rest (docs/deploy.md, "Sizing").
    let needed = 12 + 2 * cfg.limits.max_sessions as u64;
    let limit = memory_limit_mib(container);
    assert!(
        limit >= needed,
        "{overlay}: memory limit {limit}Mi < {needed}Mi for {} sessions",
        cfg.limits.max_sessions
    );
}

#[test]
fn cri_daemonset_config_loads_and_matches_its_mounts() {
    let cfg = load_overlay("cri-daemonset", Vec::new());
    let cri = cfg.cri.as_ref().expect("a cri section");
    let patch = read("deploy/overlays/cri-daemonset/daemonset-cri.yaml");
    let workload = read("deploy/components/daemonset/daemonset.yaml");
    check_common("cri-daemonset", &cfg, &workload, &workload);

    // Both sockets live in host directories the pod mounts at the same path.
    let mounts: Vec<_> = patch
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mountPath:"))
        .map(str::trim)
        .collect();
    for endpoint in [&cri.listen, &cri.runtime_endpoint] {
        let path = ws_spdy_bridge::config::unix_path(endpoint.as_deref().unwrap());
        let dir = path.parent().unwrap().to_str().unwrap();
        assert!(
            mounts.contains(&dir),
            "{} not under a mount {mounts:?}",
            path.display()
        );
        assert!(
            patch.contains(&format!("path: {dir}")),
            "{dir} is not a hostPath"
        );
    }
    // The kubelet reaches the advertised URL on the node's loopback, in the host network.
    let advertise = cri.advertise_url.as_ref().unwrap();
    assert_eq!(advertise.host(), Some("127.0.0.1"));
    assert_eq!(advertise.port_u16(), Some(cfg.listen.port()));
    assert!(
        cfg.listen.ip().is_loopback(),
        "streaming must stay on loopback"
    );
    assert_eq!(manifest_value(&patch, "hostNetwork"), Some("true"));
    assert!(
        cfg.tls.is_none(),
        "the kubelet connects over plain HTTP on loopback"
    );
}

#[test]
fn standalone_daemonset_config_loads_with_the_node_address_and_tls() {
    let tls = TlsFiles::new("standalone");
    let patch = read("deploy/overlays/standalone-daemonset/daemonset-standalone.yaml");
    // The DaemonSet sets the upstream from the node's IP.
    let upstream = manifest_value(&patch, "value").expect("WS_SPDY_BRIDGE_UPSTREAM__URL value");
    assert!(patch.contains("name: WS_SPDY_BRIDGE_UPSTREAM__URL"));
    let mut env = tls.env();
    env.push((
        "WS_SPDY_BRIDGE_UPSTREAM__URL".into(),
        upstream.replace("$(HOST_IP)", "192.0.2.10"),
    ));
    let cfg = load_overlay("standalone-daemonset", env);
    let workload = read("deploy/components/daemonset/daemonset.yaml");
    check_common("standalone-daemonset", &cfg, &workload, &workload);
    assert!(cfg.cri.is_none());
    assert_eq!(
        cfg.upstream.url.as_ref().unwrap().to_string(),
        "http://192.0.2.10:10010/"
    );
    assert!(
        cfg.listen.ip().is_unspecified(),
        "clients come from the pod network"
    );
    let tls_cfg = cfg.tls.as_ref().expect("TLS from the Secret");
    assert!(tls_cfg.cert_file.starts_with(&tls.dir));
    // Without the environment, the file names the Secret's mount.
    let plain =
        std::fs::read_to_string(repo("deploy/overlays/standalone-daemonset/config.yaml")).unwrap();
    assert!(plain.contains("/etc/ws-spdy-bridge/tls/tls.crt"));
    assert!(patch.contains("mountPath: /etc/ws-spdy-bridge/tls"));
}

#[test]
fn sidecar_config_loads_and_fronts_the_pods_loopback() {
    let tls = TlsFiles::new("sidecar");
    let cfg = load_overlay("sidecar", tls.env());
    let deployment = read("deploy/overlays/sidecar/deployment.yaml");
    let bridge = &deployment[deployment
        .find("- name: ws-spdy-bridge")
        .expect("the bridge container")..];
    check_common("sidecar", &cfg, &deployment, bridge);
    let upstream = cfg.upstream.url.as_ref().unwrap();
    assert_eq!(upstream.host(), Some("127.0.0.1"));
    // The stand-in runtime listens where the bridge looks.
    let port = upstream.port_u16().unwrap();
    assert!(
        deployment.contains(&format!("\"127.0.0.1:{port}\"")),
        "the runtime container does not listen on 127.0.0.1:{port}"
    );
    assert!(cfg.tls.is_some());
}
