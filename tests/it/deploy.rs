//! Deployment artifacts, checked as far as this machine allows (no container engine, no
//! cluster, no Grafana):
//!
//! * every YAML file under `deploy/` parses; the Kubernetes manifests, the Compose file, the
//!   Grafana provisioning, the Dockerfile and the systemd unit have what running ingot in
//!   production needs (probes on `/readyz` and `/healthz`, resources sized per session, a
//!   stop timeout longer than the session drain, billing data on persistent storage, scrape
//!   annotations, host ports on loopback only) and agree with each other;
//! * cluster mode: the manifests in `deploy/k8s/cluster/` (replicas without a volume, node
//!   id and advertise URL from the downward API, the database URL from a Secret, a network
//!   policy that lets the pods reach each other and PostgreSQL, the PostgreSQL example), and
//!   `deploy/docker-compose.cluster.yml` with its nginx and Prometheus configurations;
//! * the sandbox's needs: every gateway container runs as root with exactly the capabilities
//!   the per-session uids take, no privilege escalation and `deploy/seccomp-ingot.json`,
//!   which allows the namespaces Chromium's sandbox creates and Landlock and refuses what
//!   Docker's default refuses; the systemd unit keeps root to the same capabilities,
//!   delegates its cgroup and leaves out what breaks the sandbox (`systemd-analyze verify`
//!   accepts it); the AppArmor profile lets Chromium create user namespaces;
//! * `promtool check config` accepts `deploy/prometheus.yml` and `deploy/prometheus-cluster.yml`;
//! * `dashboards/ingot.json` is a Grafana dashboard that imports as is: a `datasource`
//!   variable used by every panel, unique panel ids, PromQL that parses and rates over
//!   `$__rate_interval`, and the panels the issue asks for (the cluster row's included);
//! * against a live gateway after a small workload, every metric the dashboard queries is
//!   one that `/metrics` exports (histograms as `_bucket`, `_sum` and `_count`);
//! * a real Prometheus scraping a gateway on loopback returns `ingot_` series through its
//!   HTTP query API.
//!
//! Needs Debian's `prometheus` package (`promtool` and `prometheus`) and Chromium.

use crate::common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

const INSTALL_PROMETHEUS: &str = "install Debian's prometheus package: \
     apt-get install --no-install-recommends prometheus (or run deploy/install-deps.sh --tests)";

// ---------------------------------------------------------------------------------------
// Files and formats
// ---------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// YAML files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries.map(|e| e.expect("directory entry")) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// YAML files directly in `dir`, sorted: what `kubectl apply -f dir` applies.
fn yaml_files_in(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut found: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
        })
        .collect();
    found.sort();
    found
}

/// The documents of a YAML file, empty ones (a trailing `---`) left out.
fn load_yaml(path: &Path) -> Vec<Yaml> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The only document of a YAML file under the repository root.
fn yaml_doc(rel: &str) -> Yaml {
    let mut docs = load_yaml(&root().join(rel));
    assert_eq!(docs.len(), 1, "{rel}: expected exactly one YAML document");
    docs.remove(0)
}

/// A scalar as text: YAML lets `3000`, `"3000"` and `3000.0` mean the same setting.
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn array(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// A mapping of scalars (labels, selectors, Compose environments) as strings.
fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(hash) = y.as_hash() {
        for (k, v) in hash {
            if let (Some(k), Some(v)) = (scalar(k), scalar(v)) {
                map.insert(k, v);
            }
        }
    }
    map
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// A duration such as `90s`, `1m30s`, `2min`, `500ms` or `1h`, in milliseconds. A bare
/// number counts in `bare_unit_ms` (systemd reads `TimeoutStopSec=90` as seconds).
fn duration_ms(text: &str, bare_unit_ms: u64) -> u64 {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return n * bare_unit_ms;
    }
    let mut total = 0;
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == ' ')
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" | "sec" => 1_000,
            "m" | "min" => 60_000,
            "h" | "hr" => 3_600_000,
            other => panic!("bad duration unit {other:?} in {text:?}"),
        };
        total += n * unit_ms;
        rest = &rest[unit_len..];
    }
    total
}

/// A Kubernetes memory quantity (`2464Mi`, `3Gi`, `512M`) in bytes.
fn memory_bytes(q: &str) -> f64 {
    const UNITS: [(&str, f64); 8] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().expect("memory quantity") * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("bad memory quantity {q:?}"))
}

/// A Kubernetes CPU quantity (`4`, `500m`, `0.5`) in cores.
fn cpu_cores(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().expect("cpu quantity") / 1000.0,
        None => q
            .parse()
            .unwrap_or_else(|_| panic!("bad cpu quantity {q:?}")),
    }
}

/// Runs a command to completion, killing it and failing after `within`.
fn run_within(cmd: &mut Command, within: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(output) => output.expect("wait for command"),
        Err(_) => {
            // SAFETY: kill(2) on a child this test spawned and has not reaped.
            signal(pid as i32, libc::SIGKILL);
            panic!("{cmd:?} did not finish within {within:?}");
        }
    }
}

/// An executable from Debian's prometheus package, or a failure that says how to get it.
fn prometheus_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: {INSTALL_PROMETHEUS}"))
}

/// The port the image listens on: `INGOT_LISTEN` in deploy/Dockerfile.
fn image_port() -> String {
    let dockerfile = read("deploy/Dockerfile");
    let listen = dockerfile
        .split_whitespace()
        .find_map(|w| w.strip_prefix("INGOT_LISTEN="))
        .expect("INGOT_LISTEN in deploy/Dockerfile");
    let (_, port) = listen.rsplit_once(':').expect("INGOT_LISTEN host:port");
    port.to_owned()
}

// ---------------------------------------------------------------------------------------
// deploy/: YAML, Kubernetes, Compose, Grafana provisioning, Dockerfile, systemd
// ---------------------------------------------------------------------------------------

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&root().join("deploy"));
    for required in [
        "deploy/docker-compose.yml",
        "deploy/prometheus.yml",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/ingot.yml",
        "deploy/k8s/deployment.yaml",
        "deploy/docker-compose.cluster.yml",
        "deploy/prometheus-cluster.yml",
        "deploy/k8s/cluster/deployment.yaml",
        "deploy/k8s/cluster/postgres/postgres.yaml",
    ] {
        assert!(files.contains(&root().join(required)), "{required} missing");
    }
    for file in &files {
        let docs = load_yaml(file);
        assert!(
            !docs.is_empty(),
            "{} holds no YAML document",
            file.display()
        );
        for doc in &docs {
            assert!(
                doc.as_hash().is_some(),
                "{}: every document must be a mapping, found {doc:?}",
                file.display()
            );
        }
    }
}

/// The Kubernetes objects of the given files, each with the file it came from.
fn objects_of(files: Vec<PathBuf>) -> Vec<(PathBuf, Yaml)> {
    let mut objects = Vec::new();
    for file in files {
        for doc in load_yaml(&file) {
            objects.push((file.clone(), doc));
        }
    }
    objects
}

/// The Kubernetes objects that `kubectl apply -f <dir>` applies (not those in
/// subdirectories), with the file each came from.
fn k8s_objects(dir: &str) -> Vec<(PathBuf, Yaml)> {
    let files = yaml_files_in(&root().join(dir));
    assert!(!files.is_empty(), "no manifests in {dir}");
    objects_of(files)
}

fn of_kind<'a>(objects: &'a [(PathBuf, Yaml)], kind: &str) -> Vec<&'a Yaml> {
    objects
        .iter()
        .filter(|(_, o)| o["kind"].as_str() == Some(kind))
        .map(|(_, o)| o)
        .collect()
}

/// A container's `env` as a map of literal values.
fn container_env(container: &Yaml) -> BTreeMap<String, String> {
    array(&container["env"])
        .iter()
        .filter_map(|e| Some((scalar(&e["name"])?, scalar(&e["value"])?)))
        .collect()
}

#[test]
fn kubernetes_manifests() {
    every_object_has_a_kind_and_a_name_and_no_namespace(&objects_of(yaml_files(
        &root().join("deploy/k8s"),
    )));
    let objects = k8s_objects("deploy/k8s");
    let pod = the_one_deployment_selects_its_own_pods(&objects);
    let port = the_container_declares_the_image_port(pod.container);
    probes_get_readyz_and_healthz_on_the_gateway_port(pod.container, &port);
    let env = container_env(pod.container);
    resources_are_sized_per_session(pod.container, &env);
    sigterm_drains_before_the_kubelet_kills(pod.spec, &env);
    the_public_url_is_set(&env);
    billing_records_live_on_a_claim_defined_here(&objects, &pod, &env);
    scrape_annotations_point_at_metrics_on_the_gateway_port(pod.template, &port);
    the_pod_allows_the_sandbox(&pod);
    a_service_reaches_the_pods_on_the_gateway_port(&objects, &pod.labels, &port);
    a_disruption_budget_covers_the_pods(&objects, &pod.labels);
}

/// The gateway's pod, as the one Deployment's template describes it.
struct GatewayPod<'a> {
    deployment: &'a Yaml,
    template: &'a Yaml,
    labels: BTreeMap<String, String>,
    spec: &'a Yaml,
    container: &'a Yaml,
}

/// The gateway's port, by number and name, for probes, the Service and the annotations.
struct GatewayPort {
    number: String,
    name: Option<String>,
}

impl GatewayPort {
    /// Whether a port reference (a number or a name) means this port.
    fn named_by(&self, p: &Yaml) -> bool {
        scalar(p).is_some_and(|p| p == self.number || Some(&p) == self.name.as_ref())
    }
}

fn every_object_has_a_kind_and_a_name_and_no_namespace(objects: &[(PathBuf, Yaml)]) {
    for (file, object) in objects {
        let name = scalar(&object["metadata"]["name"]);
        assert!(
            object["apiVersion"].as_str().is_some() && object["kind"].as_str().is_some(),
            "{}: object without apiVersion or kind",
            file.display()
        );
        assert!(name.is_some(), "{}: object without a name", file.display());
        assert!(
            object["metadata"]["namespace"].is_badvalue(),
            "{}: {name:?} names a namespace; the manifests must apply to any (kubectl -n)",
            file.display()
        );
    }
}

fn the_one_deployment_selects_its_own_pods(objects: &[(PathBuf, Yaml)]) -> GatewayPod<'_> {
    let deployments = of_kind(objects, "Deployment");
    assert_eq!(deployments.len(), 1, "expected one Deployment");
    let deployment = deployments[0];
    let template = &deployment["spec"]["template"];
    let pod_labels = string_map(&template["metadata"]["labels"]);
    let selector = string_map(&deployment["spec"]["selector"]["matchLabels"]);
    assert!(
        !selector.is_empty() && is_subset(&selector, &pod_labels),
        "Deployment selector {selector:?} must match its pod labels {pod_labels:?}"
    );
    let pod = &template["spec"];
    let container = array(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("ingot"))
        .expect("a container named ingot");
    GatewayPod {
        deployment,
        template,
        labels: pod_labels,
        spec: pod,
        container,
    }
}

fn the_container_declares_the_image_port(container: &Yaml) -> GatewayPort {
    let port = array(&container["ports"])
        .first()
        .expect("the ingot container declares its port");
    let port_number = scalar(&port["containerPort"]).expect("containerPort");
    assert_eq!(
        port_number,
        image_port(),
        "containerPort must be the image's INGOT_LISTEN port"
    );
    let port_name = scalar(&port["name"]);
    GatewayPort {
        number: port_number,
        name: port_name,
    }
}

fn probes_get_readyz_and_healthz_on_the_gateway_port(container: &Yaml, port: &GatewayPort) {
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} must GET {path}");
        assert!(
            port.named_by(&get["port"]),
            "{probe} must use the gateway's port"
        );
    }
}

/// Resources: requests and limits for CPU and memory, sized per session.
fn resources_are_sized_per_session(container: &Yaml, env: &BTreeMap<String, String>) {
    let resources = &container["resources"];
    let quantity = |kind: &str, what: &str| {
        scalar(&resources[kind][what]).unwrap_or_else(|| panic!("resources.{kind}.{what} missing"))
    };
    let max_sessions: f64 = env
        .get("INGOT_MAX_SESSIONS")
        .expect("INGOT_MAX_SESSIONS set, so that resources can be sized per session")
        .parse()
        .expect("INGOT_MAX_SESSIONS is a number");
    let memory_request = memory_bytes(&quantity("requests", "memory"));
    let cpu_request = cpu_cores(&quantity("requests", "cpu"));
    let per_session_memory = max_sessions * 300.0 * 1048576.0 + 64.0 * 1048576.0;
    assert!(
        memory_request >= per_session_memory,
        "memory request {memory_request} B is below {max_sessions} sessions x 300 MiB + 64 MiB"
    );
    assert!(
        cpu_request >= max_sessions * 0.5,
        "cpu request {cpu_request} is below {max_sessions} sessions x 0.5"
    );
    assert!(memory_bytes(&quantity("limits", "memory")) >= memory_request);
    assert!(cpu_cores(&quantity("limits", "cpu")) >= cpu_request);
}

/// Draining: SIGTERM starts a drain that must end before the kubelet's SIGKILL.
fn sigterm_drains_before_the_kubelet_kills(pod: &Yaml, env: &BTreeMap<String, String>) {
    let drain_ms: u64 = env
        .get("INGOT_SHUTDOWN_DRAIN_MS")
        .expect("INGOT_SHUTDOWN_DRAIN_MS set, so that sessions drain on SIGTERM")
        .parse()
        .expect("INGOT_SHUTDOWN_DRAIN_MS is a number");
    assert!(drain_ms > 0, "INGOT_SHUTDOWN_DRAIN_MS must be above 0");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace as u64 * 1000 > drain_ms,
        "terminationGracePeriodSeconds ({grace} s) must exceed the drain ({drain_ms} ms)"
    );
}

fn the_public_url_is_set(env: &BTreeMap<String, String>) {
    let public_url = env
        .get("INGOT_PUBLIC_URL")
        .expect("INGOT_PUBLIC_URL set (the Host check admits its host)");
    assert!(public_url.starts_with("http://") || public_url.starts_with("https://"));
}

/// Billing records: the data directory is a PersistentVolumeClaim defined here.
fn billing_records_live_on_a_claim_defined_here(
    objects: &[(PathBuf, Yaml)],
    pod: &GatewayPod,
    env: &BTreeMap<String, String>,
) {
    let data_dir = env
        .get("INGOT_DATA_DIR")
        .map_or("/var/lib/ingot", String::as_str);
    let mount = array(&pod.container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(data_dir))
        .unwrap_or_else(|| panic!("nothing mounted at the data directory {data_dir}"));
    let volume = array(&pod.spec["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the data directory's volume");
    let claim = volume["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap_or_else(|| panic!("the data directory must be a PersistentVolumeClaim (billing records live there), not {volume:?}"));
    assert!(
        of_kind(objects, "PersistentVolumeClaim")
            .iter()
            .any(|c| c["metadata"]["name"].as_str() == Some(claim)),
        "no PersistentVolumeClaim named {claim}"
    );
}

/// Scrape annotations pointing at /metrics on the gateway's port.
fn scrape_annotations_point_at_metrics_on_the_gateway_port(template: &Yaml, port: &GatewayPort) {
    let annotations = string_map(&template["metadata"]["annotations"]);
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    assert_eq!(annotations.get("prometheus.io/port"), Some(&port.number));
}

/// The sandbox's needs, in the gateway's pod: root with exactly [`SANDBOX_CAPABILITIES`],
/// no privilege escalation, the seccomp profile of `deploy/` (as a `Localhost` profile), a
/// memory-backed `/dev/shm`, and no setting that turns the sandbox off.
fn the_pod_allows_the_sandbox(pod: &GatewayPod) {
    let (pod_sc, sc) = (
        &pod.spec["securityContext"],
        &pod.container["securityContext"],
    );
    let setting = |key: &str| {
        if sc[key].is_badvalue() {
            &pod_sc[key]
        } else {
            &sc[key]
        }
    };
    assert_eq!(
        setting("runAsUser").as_i64(),
        Some(0),
        "the gateway runs as root to start browsers as their own uids"
    );
    assert_ne!(setting("runAsNonRoot").as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(sc["privileged"].as_bool(), Some(true), "never privileged");
    let caps = |list: &str| -> BTreeSet<String> {
        array(&sc["capabilities"][list])
            .iter()
            .filter_map(scalar)
            .collect()
    };
    assert!(caps("drop").contains("ALL"), "drop every capability first");
    assert_eq!(caps("add"), sandbox_capabilities(""), "capabilities.add");
    let seccomp = setting("seccompProfile");
    assert_eq!(seccomp["type"].as_str(), Some("Localhost"), "{seccomp:?}");
    let profile = seccomp["localhostProfile"]
        .as_str()
        .expect("localhostProfile");
    assert_eq!(
        Path::new(profile).file_name().and_then(|n| n.to_str()),
        Some(SECCOMP_PROFILE),
        "the node's profile is deploy/{SECCOMP_PROFILE}"
    );
    the_sandbox_is_not_turned_off(&container_env(pod.container), "the pod");
    let shm = array(&pod.container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/dev/shm"))
        .expect("a volume at /dev/shm");
    let volume = array(&pod.spec["volumes"])
        .iter()
        .find(|v| v["name"] == shm["name"])
        .expect("/dev/shm's volume");
    assert_eq!(
        volume["emptyDir"]["medium"].as_str(),
        Some("Memory"),
        "/dev/shm must be memory-backed: {volume:?}"
    );
}

/// A Service that reaches the pods on the gateway's port.
fn a_service_reaches_the_pods_on_the_gateway_port(
    objects: &[(PathBuf, Yaml)],
    pod_labels: &BTreeMap<String, String>,
    port: &GatewayPort,
) {
    let services = of_kind(objects, "Service");
    let service = services
        .iter()
        .find(|s| {
            let sel = string_map(&s["spec"]["selector"]);
            !sel.is_empty() && is_subset(&sel, pod_labels)
        })
        .expect("a Service selecting the gateway's pods");
    assert!(
        array(&service["spec"]["ports"])
            .iter()
            .any(|p| port.named_by(&p["targetPort"])),
        "the Service must target the gateway's port"
    );
}

/// A PodDisruptionBudget covering the pods.
fn a_disruption_budget_covers_the_pods(
    objects: &[(PathBuf, Yaml)],
    pod_labels: &BTreeMap<String, String>,
) {
    let pdbs = of_kind(objects, "PodDisruptionBudget");
    let pdb = pdbs.first().expect("a PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    let pdb_selector = string_map(&pdb["spec"]["selector"]["matchLabels"]);
    assert!(
        !pdb_selector.is_empty() && is_subset(&pdb_selector, pod_labels),
        "the PodDisruptionBudget must select the gateway's pods"
    );
    assert!(
        !pdb["spec"]["maxUnavailable"].is_badvalue() || !pdb["spec"]["minAvailable"].is_badvalue(),
        "the PodDisruptionBudget needs maxUnavailable or minAvailable"
    );
}

#[test]
fn kubernetes_cluster_manifests() {
    let objects = k8s_objects("deploy/k8s/cluster");
    let pod = the_one_deployment_selects_its_own_pods(&objects);
    let port = the_container_declares_the_image_port(pod.container);
    probes_get_readyz_and_healthz_on_the_gateway_port(pod.container, &port);
    let env = container_env(pod.container);
    resources_are_sized_per_session(pod.container, &env);
    sigterm_drains_before_the_kubelet_kills(pod.spec, &env);
    the_public_url_is_set(&env);
    scrape_annotations_point_at_metrics_on_the_gateway_port(pod.template, &port);
    the_pod_allows_the_sandbox(&pod);
    a_service_reaches_the_pods_on_the_gateway_port(&objects, &pod.labels, &port);
    a_disruption_budget_covers_the_pods(&objects, &pod.labels);

    let replicas = three_replicas_roll_over_without_unavailability(pod.deployment);
    the_budget_lets_one_gateway_go_at_a_time(&objects, replicas);
    profiles_live_in_an_empty_dir_and_nothing_claims_a_volume(&objects, &pod, &env);
    the_node_id_and_the_advertise_url_come_from_the_downward_api(pod.container, &port);
    let secret = the_database_url_comes_from_a_secret(pod.container, &env);
    let postgres = k8s_objects("deploy/k8s/cluster/postgres");
    let postgres_pods = the_postgres_example_provides_the_secret_and_a_service(&postgres, &secret);
    the_network_policy_lets_gateways_reach_each_other_and_postgres(
        &objects,
        &pod.labels,
        &port,
        &postgres_pods,
    );
}

/// A container's `env` entries in order: name and entry.
fn env_entries(container: &Yaml) -> Vec<(String, &Yaml)> {
    array(&container["env"])
        .iter()
        .map(|e| (scalar(&e["name"]).expect("env entry without a name"), e))
        .collect()
}

/// The `$(NAME)` references in an env value.
fn env_references(value: &str) -> Vec<&str> {
    value
        .split("$(")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name))
        .collect()
}

/// Three replicas (returned), rolled over one at a time with none unavailable: the pods
/// share no volume, so old and new may run side by side.
fn three_replicas_roll_over_without_unavailability(deployment: &Yaml) -> i64 {
    let replicas = deployment["spec"]["replicas"].as_i64().expect("replicas");
    assert_eq!(replicas, 3, "cluster mode runs three replicas");
    let strategy = &deployment["spec"]["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        scalar(&strategy["rollingUpdate"]["maxUnavailable"]).as_deref(),
        Some("0"),
        "a rollout must not take a gateway away before its successor is ready"
    );
    assert!(
        scalar(&strategy["rollingUpdate"]["maxSurge"]).is_some_and(|s| s != "0" && s != "0%"),
        "maxSurge must let a new pod start beside the old ones"
    );
    replicas
}

/// The budget lets a drain evict a gateway (never all of them at once).
fn the_budget_lets_one_gateway_go_at_a_time(objects: &[(PathBuf, Yaml)], replicas: i64) {
    let pdb = of_kind(objects, "PodDisruptionBudget")[0];
    let spec = &pdb["spec"];
    match (
        spec["maxUnavailable"].as_i64(),
        spec["minAvailable"].as_i64(),
    ) {
        (Some(max), _) => assert!(
            (1..replicas).contains(&max),
            "maxUnavailable {max} of {replicas} replicas"
        ),
        (None, Some(min)) => assert!(
            (1..replicas).contains(&min),
            "minAvailable {min} of {replicas} replicas"
        ),
        _ => panic!("the cluster's budget needs a numeric maxUnavailable or minAvailable"),
    }
}

/// The data directory is an emptyDir (the ledger is in PostgreSQL), and no volume of the
/// pod is a claim: a ReadWriteOnce claim would pin every replica to one volume.
fn profiles_live_in_an_empty_dir_and_nothing_claims_a_volume(
    objects: &[(PathBuf, Yaml)],
    pod: &GatewayPod,
    env: &BTreeMap<String, String>,
) {
    let data_dir = env
        .get("INGOT_DATA_DIR")
        .map_or("/var/lib/ingot", String::as_str);
    let mount = array(&pod.container["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(data_dir))
        .unwrap_or_else(|| panic!("nothing mounted at the data directory {data_dir}"));
    let volume = array(&pod.spec["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the data directory's volume");
    assert!(
        volume["emptyDir"].as_hash().is_some(),
        "the data directory must be an emptyDir in cluster mode, not {volume:?}"
    );
    for volume in array(&pod.spec["volumes"]) {
        assert!(
            volume["persistentVolumeClaim"].is_badvalue(),
            "cluster gateways use no PersistentVolumeClaim: {volume:?}"
        );
    }
    assert!(
        pod.spec["volumeClaimTemplates"].is_badvalue()
            && of_kind(objects, "PersistentVolumeClaim").is_empty(),
        "no PersistentVolumeClaim in the cluster manifests"
    );
}

/// `INGOT_NODE_ID` is the pod name; `INGOT_ADVERTISE_URL` is built from the pod IP, which
/// an earlier variable takes from `status.podIP`, and names the gateway's port.
fn the_node_id_and_the_advertise_url_come_from_the_downward_api(
    container: &Yaml,
    port: &GatewayPort,
) {
    let entries = env_entries(container);
    let field = |e: &Yaml| {
        e["valueFrom"]["fieldRef"]["fieldPath"]
            .as_str()
            .map(str::to_owned)
    };
    let node_id = entries
        .iter()
        .find(|(n, _)| n == "INGOT_NODE_ID")
        .expect("INGOT_NODE_ID set");
    assert_eq!(
        field(node_id.1).as_deref(),
        Some("metadata.name"),
        "INGOT_NODE_ID must be the pod name (unique among live pods)"
    );
    let (at, advertise) = entries
        .iter()
        .enumerate()
        .find(|(_, (n, _))| n == "INGOT_ADVERTISE_URL")
        .map(|(i, (_, e))| (i, e["value"].as_str().expect("INGOT_ADVERTISE_URL value")))
        .expect("INGOT_ADVERTISE_URL set (required when listening on 0.0.0.0)");
    assert!(
        advertise.starts_with("http://") && advertise.ends_with(&format!(":{}", port.number)),
        "INGOT_ADVERTISE_URL {advertise} must be http://<pod IP>:{}",
        port.number
    );
    let from_pod_ip = env_references(advertise).into_iter().any(|name| {
        entries[..at]
            .iter()
            .any(|(n, e)| n == name && field(e).as_deref() == Some("status.podIP"))
    });
    assert!(
        from_pod_ip,
        "INGOT_ADVERTISE_URL {advertise} must use $(VAR) of a variable defined before it \
         from the downward API's status.podIP"
    );
}

/// `INGOT_DATABASE_URL` comes from a Secret, never a literal; returns (Secret, key).
fn the_database_url_comes_from_a_secret(
    container: &Yaml,
    env: &BTreeMap<String, String>,
) -> (String, String) {
    assert!(
        !env.contains_key("INGOT_DATABASE_URL"),
        "INGOT_DATABASE_URL holds a password: take it from a Secret, not a literal"
    );
    let entries = env_entries(container);
    let (_, entry) = entries
        .iter()
        .find(|(n, _)| n == "INGOT_DATABASE_URL")
        .expect("INGOT_DATABASE_URL set: it makes the pods a cluster");
    let reference = &entry["valueFrom"]["secretKeyRef"];
    let name = scalar(&reference["name"]).expect("INGOT_DATABASE_URL from a secretKeyRef");
    let key = scalar(&reference["key"]).expect("secretKeyRef key");
    (name, key)
}

/// The PostgreSQL example: marked as not for production, a Secret with the gateways' key
/// whose URL names the example's Service, and PostgreSQL behind that Service with the same
/// password. Returns the labels of the PostgreSQL pods.
fn the_postgres_example_provides_the_secret_and_a_service(
    objects: &[(PathBuf, Yaml)],
    (secret_name, key): &(String, String),
) -> BTreeMap<String, String> {
    for (file, _) in objects {
        let text = std::fs::read_to_string(file).expect("read manifest");
        assert!(
            text.to_lowercase()
                .contains("use a managed database in production"),
            "{}: say that it is for trying out, and to use a managed database in production",
            file.display()
        );
    }
    let secret = of_kind(objects, "Secret")
        .into_iter()
        .find(|s| scalar(&s["metadata"]["name"]).as_ref() == Some(secret_name))
        .unwrap_or_else(|| panic!("the example defines no Secret {secret_name}"));
    let data = string_map(&secret["stringData"]);
    let url = data
        .get(key)
        .unwrap_or_else(|| panic!("Secret {secret_name} has no stringData {key}"));
    let db = postgres_url(url);

    let sets = of_kind(objects, "StatefulSet");
    assert_eq!(sets.len(), 1, "one PostgreSQL StatefulSet");
    let template = &sets[0]["spec"]["template"];
    let labels = string_map(&template["metadata"]["labels"]);
    let container = array(&template["spec"]["containers"])
        .iter()
        .find(|c| {
            c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("postgres:"))
        })
        .expect("a postgres container");
    let env = container_env(container);
    assert_eq!(env.get("POSTGRES_USER"), Some(&db.user), "URL's user");
    assert_eq!(env.get("POSTGRES_DB"), Some(&db.database), "URL's database");
    let password = env_entries(container)
        .into_iter()
        .find(|(n, _)| n == "POSTGRES_PASSWORD")
        .map(|(_, e)| e["valueFrom"]["secretKeyRef"].clone())
        .expect("POSTGRES_PASSWORD from a secretKeyRef");
    assert_eq!(password["name"].as_str(), Some(secret_name.as_str()));
    let password_key = password["key"].as_str().expect("password key");
    assert_eq!(
        data.get(password_key),
        Some(&db.password),
        "the URL's password must be PostgreSQL's"
    );

    let service = of_kind(objects, "Service")
        .into_iter()
        .find(|s| scalar(&s["metadata"]["name"]).as_ref() == Some(&db.host))
        .unwrap_or_else(|| panic!("no Service {} (the URL's host)", db.host));
    let selector = string_map(&service["spec"]["selector"]);
    assert!(
        !selector.is_empty() && is_subset(&selector, &labels),
        "Service {} must select the PostgreSQL pods",
        db.host
    );
    assert!(
        array(&service["spec"]["ports"])
            .iter()
            .any(|p| scalar(&p["port"]).as_deref() == Some(db.port.as_str())),
        "Service {} must serve the URL's port {}",
        db.host,
        db.port
    );
    labels
}

/// The parts of a `postgres://user:password@host:port/database` URL, as written.
struct PostgresUrl {
    user: String,
    password: String,
    host: String,
    port: String,
    database: String,
}

fn postgres_url(url: &str) -> PostgresUrl {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .unwrap_or_else(|| panic!("{url} must start with postgres://"));
    let (userinfo, rest) = rest
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("{url}: no user"));
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let (address, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
    PostgresUrl {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port: port.to_owned(),
        database: database.to_owned(),
    }
}

/// A NetworkPolicy on the gateways whose egress lets them reach each other on the gateway
/// port (forwarding) and PostgreSQL on 5432 (the example's pods, if it selects pods).
fn the_network_policy_lets_gateways_reach_each_other_and_postgres(
    objects: &[(PathBuf, Yaml)],
    pod_labels: &BTreeMap<String, String>,
    port: &GatewayPort,
    postgres_pods: &BTreeMap<String, String>,
) {
    let policy = of_kind(objects, "NetworkPolicy")
        .into_iter()
        .find(|p| {
            let sel = string_map(&p["spec"]["podSelector"]["matchLabels"]);
            !sel.is_empty() && is_subset(&sel, pod_labels)
        })
        .expect("a NetworkPolicy on the gateways' pods");
    let rules = array(&policy["spec"]["egress"]);
    let tcp_port = |rule: &Yaml, wanted: &dyn Fn(&Yaml) -> bool| {
        array(&rule["ports"])
            .iter()
            .any(|p| p["protocol"].as_str().unwrap_or("TCP") == "TCP" && wanted(&p["port"]))
    };
    let selects = |rule: &Yaml, labels: &BTreeMap<String, String>| {
        array(&rule["to"]).iter().any(|to| {
            let sel = string_map(&to["podSelector"]["matchLabels"]);
            !sel.is_empty() && is_subset(&sel, labels) && to["namespaceSelector"].is_badvalue()
        })
    };
    assert!(
        rules
            .iter()
            .any(|r| selects(r, pod_labels) && tcp_port(r, &|p| port.named_by(p))),
        "the gateways must reach each other on port {} (forwarding to a session's node)",
        port.number
    );
    let database_rules: Vec<&Yaml> = rules
        .iter()
        .filter(|r| tcp_port(r, &|p| scalar(p).as_deref() == Some("5432")))
        .collect();
    assert!(
        !database_rules.is_empty(),
        "the gateways must reach PostgreSQL on 5432"
    );
    assert!(
        database_rules
            .iter()
            .any(|r| r["to"].is_badvalue() || selects(r, postgres_pods)),
        "the 5432 rule must admit the example PostgreSQL's pods {postgres_pods:?}"
    );
}

/// `source:target[:mode]` of a Compose volume or port.
fn split_mount(spec: &str) -> (&str, &str) {
    let mut parts = spec.splitn(3, ':');
    let source = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    (source, target)
}

fn service_volumes(service: &Yaml) -> Vec<String> {
    array(&service["volumes"])
        .iter()
        .filter_map(scalar)
        .collect()
}

#[test]
fn compose_and_grafana_provisioning() {
    let deploy = root().join("deploy");
    let compose = yaml_doc("deploy/docker-compose.yml");
    let names = compose_runs_ingot_prometheus_and_grafana(&compose);
    let image_port =
        published_ports_bind_to_loopback_and_ingot_publishes_the_image_port(&compose, &names);
    ingot_is_built_from_the_repository_and_keeps_its_data(&deploy, &compose);
    let targets = prometheus_reads_the_mounted_config_and_scrapes_ingot(
        &compose,
        &names,
        &image_port,
        "prometheus.yml",
    );
    assert!(targets.contains("ingot"), "Prometheus must scrape ingot");
    grafana_provisioning_is_mounted_and_agrees_with_the_files(&deploy, &compose);
}

/// The Compose services' names; ingot, prometheus and grafana among them.
fn compose_runs_ingot_prometheus_and_grafana(compose: &Yaml) -> BTreeSet<String> {
    let names: BTreeSet<String> = compose["services"]
        .as_hash()
        .expect("services")
        .keys()
        .filter_map(scalar)
        .collect();
    for required in ["ingot", "prometheus", "grafana"] {
        assert!(
            names.contains(required),
            "Compose service {required} missing"
        );
    }
    names
}

/// Every published port binds to loopback only, and ingot publishes the image's port, which
/// is returned.
fn published_ports_bind_to_loopback_and_ingot_publishes_the_image_port(
    compose: &Yaml,
    names: &BTreeSet<String>,
) -> String {
    let svc = |name: &str| &compose["services"][name];
    published_ports_bind_to_loopback(compose, names);
    let image_port = image_port();
    assert!(
        array(&svc("ingot")["ports"])
            .iter()
            .filter_map(scalar)
            .any(|p| p.rsplit_once(':').is_some_and(|(_, c)| c == image_port)),
        "ingot must publish the image's port {image_port}"
    );
    image_port
}

/// Every port a service publishes binds to loopback only.
fn published_ports_bind_to_loopback(compose: &Yaml, names: &BTreeSet<String>) {
    for name in names {
        for port in array(&compose["services"][name.as_str()]["ports"]) {
            let port = scalar(port).expect("port as a string");
            assert!(
                port.starts_with("127.0.0.1:"),
                "service {name} publishes {port}; bind host ports to 127.0.0.1"
            );
        }
    }
}

/// ingot: built from the repository with deploy/Dockerfile, drained before it is killed,
/// its data directory on a named volume.
fn ingot_is_built_from_the_repository_and_keeps_its_data(deploy: &Path, compose: &Yaml) {
    let ingot = &compose["services"]["ingot"];
    built_from_the_repository_and_drained_before_the_kill(deploy, "ingot", ingot);
    let named_volumes: BTreeSet<String> = compose["volumes"]
        .as_hash()
        .map(|h| h.keys().filter_map(scalar).collect())
        .unwrap_or_default();
    let data = service_volumes(ingot)
        .into_iter()
        .find(|v| split_mount(v).1 == "/var/lib/ingot")
        .expect("a volume at /var/lib/ingot");
    assert!(
        named_volumes.contains(split_mount(&data).0),
        "the data directory must be a named volume (billing records), got {data}"
    );
}

/// An ingot service: built from the repository with deploy/Dockerfile, a public URL set,
/// drained before it is killed, with room in /dev/shm. Returns its environment.
fn built_from_the_repository_and_drained_before_the_kill(
    deploy: &Path,
    name: &str,
    ingot: &Yaml,
) -> BTreeMap<String, String> {
    let context = deploy.join(ingot["build"]["context"].as_str().expect("build.context"));
    assert_eq!(
        context.canonicalize().expect("build context"),
        root().canonicalize().expect("root"),
        "{name} must be built from the repository root"
    );
    let dockerfile = ingot["build"]["dockerfile"]
        .as_str()
        .expect("build.dockerfile");
    assert_eq!(dockerfile, "deploy/Dockerfile", "{name}: build.dockerfile");
    assert!(context.join(dockerfile).is_file());
    let env = string_map(&ingot["environment"]);
    assert!(
        env.contains_key("INGOT_PUBLIC_URL"),
        "{name}: INGOT_PUBLIC_URL unset"
    );
    let drain_ms: u64 = env
        .get("INGOT_SHUTDOWN_DRAIN_MS")
        .unwrap_or_else(|| panic!("{name}: INGOT_SHUTDOWN_DRAIN_MS"))
        .parse()
        .expect("drain is a number");
    let grace =
        scalar(&ingot["stop_grace_period"]).unwrap_or_else(|| panic!("{name}: stop_grace_period"));
    assert!(
        duration_ms(&grace, 1000) > drain_ms,
        "{name}: stop_grace_period {grace} must exceed INGOT_SHUTDOWN_DRAIN_MS {drain_ms}"
    );
    assert!(
        scalar(&ingot["shm_size"]).is_some(),
        "{name}: Chromium needs shm_size"
    );
    the_service_allows_the_sandbox(deploy, name, ingot, &env);
    env
}

/// Prometheus: `deploy/<file>` mounted as its configuration, whose ingot job scrapes
/// Compose services on the image's port; returns those services.
fn prometheus_reads_the_mounted_config_and_scrapes_ingot(
    compose: &Yaml,
    names: &BTreeSet<String>,
    image_port: &str,
    file: &str,
) -> BTreeSet<String> {
    let prometheus = &compose["services"]["prometheus"];
    let source = format!("./{file}");
    let config = service_volumes(prometheus)
        .into_iter()
        .find(|v| split_mount(v).0 == source)
        .unwrap_or_else(|| panic!("{source} mounted into prometheus"));
    let flags: Vec<String> = array(&prometheus["command"])
        .iter()
        .filter_map(scalar)
        .collect();
    assert!(
        flags.contains(&format!("--config.file={}", split_mount(&config).1)),
        "prometheus must read the mounted config; flags {flags:?}"
    );
    let scrape = yaml_doc(&format!("deploy/{file}"));
    let job = ingot_job(&scrape);
    let targets: Vec<String> = array(&job["static_configs"])
        .iter()
        .flat_map(|s| array(&s["targets"]).iter().filter_map(scalar))
        .collect();
    assert!(!targets.is_empty(), "the ingot job has no targets");
    for target in &targets {
        let (host, port) = target.rsplit_once(':').expect("host:port target");
        assert!(
            names.contains(host),
            "target {target} is not a Compose service"
        );
        assert_eq!(
            port, image_port,
            "target {target}: ingot listens on {image_port}"
        );
    }
    targets
        .iter()
        .filter_map(|t| t.rsplit_once(':').map(|(host, _)| host.to_owned()))
        .collect()
}

/// Grafana: provisioning and dashboards mounted, and they agree with the files.
fn grafana_provisioning_is_mounted_and_agrees_with_the_files(deploy: &Path, compose: &Yaml) {
    let grafana = &compose["services"]["grafana"];
    let volumes = service_volumes(grafana);
    let mounted = |source: &str| {
        let spec = volumes
            .iter()
            .find(|v| split_mount(v).0 == source)
            .unwrap_or_else(|| panic!("{source} not mounted into grafana"));
        assert!(deploy.join(source).is_dir(), "{source} is not a directory");
        split_mount(spec).1.to_owned()
    };
    assert_eq!(
        mounted("./grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_dir = mounted("../dashboards");

    let datasources = yaml_doc("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasources["apiVersion"].as_i64(), Some(1));
    let source = array(&datasources["datasources"])
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a prometheus data source");
    let url = source["url"].as_str().expect("data source url");
    assert_eq!(
        url, "http://prometheus:9090",
        "the data source must reach the Compose prometheus service"
    );

    let providers = yaml_doc("deploy/grafana/provisioning/dashboards/ingot.yml");
    assert_eq!(providers["apiVersion"].as_i64(), Some(1));
    let provider = array(&providers["providers"])
        .first()
        .expect("a dashboard provider");
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert_eq!(
        provider["options"]["path"].as_str(),
        Some(dashboards_dir.as_str()),
        "the provider must read where Compose mounts ../dashboards"
    );
}

/// The `ingot` scrape job of a Prometheus configuration.
fn ingot_job(config: &Yaml) -> &Yaml {
    let job = array(&config["scrape_configs"])
        .iter()
        .find(|j| j["job_name"].as_str() == Some("ingot"))
        .expect("a scrape job named ingot");
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");
    assert_eq!(path, "/metrics");
    job
}

/// A YAML document with merge keys (`<<: *anchor`, which Compose supports and yaml-rust2
/// leaves as a `<<` key) resolved: the merged mappings' keys, unless set beside them.
fn resolve_merge_keys(y: Yaml) -> Yaml {
    match y {
        Yaml::Hash(hash) => {
            let merge = Yaml::String("<<".into());
            let mut out = yaml_rust2::yaml::Hash::new();
            let mut merged = Vec::new();
            for (k, v) in hash {
                if k == merge {
                    merged.push(v);
                } else {
                    out.insert(k, resolve_merge_keys(v));
                }
            }
            for source in merged.into_iter().flat_map(|m| match m {
                Yaml::Array(a) => a,
                other => vec![other],
            }) {
                let Yaml::Hash(source) = resolve_merge_keys(source) else {
                    panic!("`<<` must merge a mapping");
                };
                for (k, v) in source {
                    if !out.contains_key(&k) {
                        out.insert(k, v);
                    }
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.into_iter().map(resolve_merge_keys).collect()),
        other => other,
    }
}

/// A Compose service's `depends_on`, list or mapping, as service name and its settings.
fn depends_on(service: &Yaml) -> BTreeMap<String, Yaml> {
    let d = &service["depends_on"];
    match d.as_hash() {
        Some(hash) => hash
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, v.clone())))
            .collect(),
        None => array(d)
            .iter()
            .filter_map(scalar)
            .map(|n| (n, Yaml::Null))
            .collect(),
    }
}

#[test]
fn compose_cluster() {
    let deploy = root().join("deploy");
    let compose = resolve_merge_keys(yaml_doc("deploy/docker-compose.cluster.yml"));
    let names: BTreeSet<String> = compose["services"]
        .as_hash()
        .expect("services")
        .keys()
        .filter_map(scalar)
        .collect();
    published_ports_bind_to_loopback(&compose, &names);
    let postgres = postgres_is_private_and_answers_pg_isready(&compose);
    let nodes = three_nodes_are_built_from_the_repository_and_drained(&deploy, &compose);
    each_node_has_its_own_id_and_advertise_url(&nodes);
    let public_url =
        the_nodes_share_one_database_their_keys_and_a_public_url(&compose, &nodes, &postgres);
    nginx_balances_over_the_nodes_with_websockets(&deploy, &compose, &nodes, &public_url);
    let scraped = prometheus_reads_the_mounted_config_and_scrapes_ingot(
        &compose,
        &names,
        &image_port(),
        "prometheus-cluster.yml",
    );
    let node_names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(scraped, node_names, "Prometheus must scrape every node");
    grafana_provisioning_is_mounted_and_agrees_with_the_files(&deploy, &compose);
}

/// An ingot node of the cluster Compose file.
struct ComposeNode<'a> {
    name: String,
    service: &'a Yaml,
    env: BTreeMap<String, String>,
}

/// PostgreSQL: the postgres:16 image, a `pg_isready` health check (the nodes wait for it),
/// no host port. Returns its service name.
fn postgres_is_private_and_answers_pg_isready(compose: &Yaml) -> String {
    let services = compose["services"].as_hash().expect("services");
    let (name, postgres) = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("postgres:16"))
        })
        .expect("a postgres:16 service");
    let name = scalar(name).expect("service name");
    let test = &postgres["healthcheck"]["test"];
    let test = match test.as_vec() {
        Some(words) => words
            .iter()
            .filter_map(scalar)
            .collect::<Vec<_>>()
            .join(" "),
        None => scalar(test).unwrap_or_default(),
    };
    assert!(
        test.contains("pg_isready"),
        "{name}: a healthcheck with pg_isready, got {test:?}"
    );
    assert!(
        array(&postgres["ports"]).is_empty(),
        "{name}: PostgreSQL must not be published on the host"
    );
    name
}

/// Three services built from deploy/Dockerfile, each drained before it is killed.
fn three_nodes_are_built_from_the_repository_and_drained<'a>(
    deploy: &Path,
    compose: &'a Yaml,
) -> Vec<ComposeNode<'a>> {
    let nodes: Vec<ComposeNode> = compose["services"]
        .as_hash()
        .expect("services")
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile"))
        .map(|(name, service)| {
            let name = scalar(name).expect("service name");
            let env = built_from_the_repository_and_drained_before_the_kill(deploy, &name, service);
            ComposeNode { name, service, env }
        })
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "three ingot nodes built from deploy/Dockerfile"
    );
    nodes
}

/// Unique node ids; each node advertises its own service name on the image's port and
/// listens on every address there.
fn each_node_has_its_own_id_and_advertise_url(nodes: &[ComposeNode]) {
    let port = image_port();
    let mut ids = BTreeSet::new();
    let mut data_volumes = BTreeSet::new();
    for node in nodes {
        let name = &node.name;
        let id = node
            .env
            .get("INGOT_NODE_ID")
            .unwrap_or_else(|| panic!("{name}: INGOT_NODE_ID"));
        assert!(ids.insert(id.clone()), "{name}: node id {id} used twice");
        assert_eq!(
            node.env.get("INGOT_ADVERTISE_URL"),
            Some(&format!("http://{name}:{port}")),
            "{name}: the other nodes reach it by its service name"
        );
        assert_eq!(
            node.env.get("INGOT_LISTEN"),
            Some(&format!("0.0.0.0:{port}")),
            "{name}: INGOT_LISTEN"
        );
        // Two nodes must not share a data directory (a node locks its own).
        if let Some(data) = service_volumes(node.service)
            .into_iter()
            .find(|v| split_mount(v).1 == "/var/lib/ingot")
        {
            assert!(
                data_volumes.insert(split_mount(&data).0.to_owned()),
                "{name}: data volume {data} shared with another node"
            );
        }
    }
}

/// Every node names the same database (the postgres service, with its user, password and
/// database), waits for it to be healthy, and has the same API keys and public URL, which
/// is returned.
fn the_nodes_share_one_database_their_keys_and_a_public_url(
    compose: &Yaml,
    nodes: &[ComposeNode],
    postgres: &str,
) -> String {
    let pg_env = string_map(&compose["services"][postgres]["environment"]);
    let same = |key: &str| {
        let values: BTreeSet<Option<&String>> = nodes.iter().map(|n| n.env.get(key)).collect();
        assert_eq!(values.len(), 1, "{key} differs between nodes: {values:?}");
        values.into_iter().next().flatten().cloned()
    };
    let url = same("INGOT_DATABASE_URL").expect("INGOT_DATABASE_URL on every node");
    let db = postgres_url(&url);
    assert_eq!(
        db.host, postgres,
        "INGOT_DATABASE_URL must name the postgres service"
    );
    assert_eq!(db.port, "5432");
    assert_eq!(Some(&db.user), pg_env.get("POSTGRES_USER"), "URL's user");
    assert_eq!(
        Some(&db.database),
        pg_env.get("POSTGRES_DB"),
        "URL's database"
    );
    assert_eq!(
        Some(&db.password),
        pg_env.get("POSTGRES_PASSWORD"),
        "URL's password"
    );
    for node in nodes {
        let condition = depends_on(node.service)
            .get(postgres)
            .and_then(|d| scalar(&d["condition"]));
        assert_eq!(
            condition.as_deref(),
            Some("service_healthy"),
            "{} must wait for PostgreSQL to be healthy",
            node.name
        );
    }
    let keys = same("INGOT_API_KEYS").or_else(|| same("INGOT_API_KEYS_FILE"));
    assert!(keys.is_some(), "API keys on every node");
    same("INGOT_PUBLIC_URL").expect("INGOT_PUBLIC_URL on every node")
}

/// nginx: publishes the public URL's port on loopback, waits for the nodes, and proxies to
/// an upstream of exactly the nodes, with what CDP WebSockets and the Host check need.
fn nginx_balances_over_the_nodes_with_websockets(
    deploy: &Path,
    compose: &Yaml,
    nodes: &[ComposeNode],
    public_url: &str,
) {
    let services = compose["services"].as_hash().expect("services");
    let (name, nginx) = services
        .iter()
        .find(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("nginx")))
        .expect("an nginx service");
    let name = scalar(name).expect("service name");
    let waits_for = depends_on(nginx);
    for node in nodes {
        assert!(
            waits_for.contains_key(&node.name),
            "{name} must depend on {}",
            node.name
        );
    }

    let ports: Vec<String> = array(&nginx["ports"]).iter().filter_map(scalar).collect();
    assert_eq!(ports.len(), 1, "{name} publishes one port: {ports:?}");
    let mut parts = ports[0].split(':');
    let (_, host_port, container_port) = (parts.next(), parts.next(), parts.next());
    let (host_port, container_port) = (
        host_port.expect("host port"),
        container_port.expect("container port"),
    );
    let public = public_url.trim_end_matches('/');
    assert!(
        [
            format!("http://localhost:{host_port}"),
            format!("http://127.0.0.1:{host_port}"),
        ]
        .iter()
        .any(|u| u == public),
        "INGOT_PUBLIC_URL {public_url} must be nginx's published port {host_port}"
    );

    let config = service_volumes(nginx)
        .into_iter()
        .find(|v| split_mount(v).1.starts_with("/etc/nginx/"))
        .unwrap_or_else(|| panic!("{name}: no configuration mounted under /etc/nginx"));
    let source = split_mount(&config).0;
    let text = std::fs::read_to_string(deploy.join(source))
        .unwrap_or_else(|e| panic!("read {source}: {e}"));
    let conf = NginxConf::parse(&text);
    assert!(
        conf.in_block("server", "listen").iter().any(|w| w
            .get(1)
            .is_some_and(|l| l.rsplit(':').next() == Some(container_port))),
        "{source}: a server must listen on the published container port {container_port}"
    );
    let pass = conf.proxy("proxy_pass");
    let upstream = pass
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{source}: proxy_pass {pass} must be http://<upstream>"));
    let servers: BTreeSet<String> = conf
        .directives
        .iter()
        .filter(|d| {
            d.words[0] == "server"
                && d.blocks.last().map(|b| b.join(" ")) == Some(format!("upstream {upstream}"))
        })
        .map(|d| d.words[1].clone())
        .collect();
    let port = image_port();
    let expected: BTreeSet<String> = nodes.iter().map(|n| format!("{}:{port}", n.name)).collect();
    assert_eq!(
        servers, expected,
        "{source}: upstream {upstream} must be the nodes"
    );

    assert_eq!(
        conf.proxy("proxy_http_version"),
        "1.1",
        "{source}: WebSockets need HTTP/1.1"
    );
    let header = |name: &str| {
        conf.proxy_all("proxy_set_header")
            .into_iter()
            .find(|w| w[1].eq_ignore_ascii_case(name))
            .map(|w| w[2].clone())
            .unwrap_or_else(|| panic!("{source}: proxy_set_header {name} missing"))
    };
    assert_eq!(
        header("Upgrade"),
        "$http_upgrade",
        "{source}: Upgrade header"
    );
    let connection = header("Connection");
    let upgrades = connection.eq_ignore_ascii_case("upgrade")
        || conf.directives.iter().any(|d| {
            d.blocks.last().map(|b| b.join(" ")) == Some(format!("map $http_upgrade {connection}"))
                && d.words == ["default", "upgrade"]
        });
    assert!(
        upgrades,
        "{source}: Connection must be \"upgrade\" for WebSocket handshakes, got {connection}"
    );
    assert_eq!(
        header("Host"),
        "$http_host",
        "{source}: pass the client's Host (ingot's Host check admits the public URL's host)"
    );
    let read_timeout = duration_ms(&conf.proxy("proxy_read_timeout"), 1000);
    assert!(
        read_timeout >= 300_000,
        "{source}: proxy_read_timeout of {read_timeout} ms closes quiet CDP connections"
    );
}

/// An nginx configuration as directives, each with the headers of the blocks it is in.
struct NginxConf {
    directives: Vec<NginxDirective>,
}

struct NginxDirective {
    /// Headers of the enclosing blocks, outermost first (`["location", "/"]`).
    blocks: Vec<Vec<String>>,
    words: Vec<String>,
}

impl NginxConf {
    fn parse(text: &str) -> NginxConf {
        enum Token {
            Word(String),
            End,
            Open,
            Close,
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '#' => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                '\'' | '"' => {
                    let word: String = chars.by_ref().take_while(|&q| q != c).collect();
                    tokens.push(Token::Word(word));
                }
                ';' => tokens.push(Token::End),
                '{' => tokens.push(Token::Open),
                '}' => tokens.push(Token::Close),
                c if c.is_whitespace() => {}
                c => {
                    let mut word = String::from(c);
                    while let Some(&n) = chars.peek() {
                        if n.is_whitespace() || matches!(n, ';' | '{' | '}') {
                            break;
                        }
                        word.push(n);
                        chars.next();
                    }
                    tokens.push(Token::Word(word));
                }
            }
        }
        let mut directives = Vec::new();
        let mut blocks: Vec<Vec<String>> = Vec::new();
        let mut words = Vec::new();
        for token in tokens {
            match token {
                Token::Word(w) => words.push(w),
                Token::End => directives.push(NginxDirective {
                    blocks: blocks.clone(),
                    words: std::mem::take(&mut words),
                }),
                Token::Open => blocks.push(std::mem::take(&mut words)),
                Token::Close => {
                    assert!(words.is_empty(), "nginx: a directive without `;`");
                    blocks.pop().expect("nginx: unbalanced }");
                }
            }
        }
        assert!(
            blocks.is_empty() && words.is_empty(),
            "nginx: unterminated block or directive"
        );
        NginxConf { directives }
    }

    /// Words of the directives `name` directly in a block `kind ...`.
    fn in_block(&self, kind: &str, name: &str) -> Vec<&Vec<String>> {
        self.directives
            .iter()
            .filter(|d| {
                d.words.first().map(String::as_str) == Some(name)
                    && d.blocks.last().and_then(|b| b.first()).map(String::as_str) == Some(kind)
            })
            .map(|d| &d.words)
            .collect()
    }

    /// Words of the directives `name` that apply to `location /`: in it, or in its server.
    fn proxy_all(&self, name: &str) -> Vec<&Vec<String>> {
        self.directives
            .iter()
            .filter(|d| {
                d.words.first().map(String::as_str) == Some(name)
                    && match d.blocks.last() {
                        Some(b) => b == &["location", "/"] || b == &["server"],
                        None => false,
                    }
            })
            .map(|d| &d.words)
            .collect()
    }

    /// The argument of the one directive `name` that applies to `location /`.
    fn proxy(&self, name: &str) -> String {
        let found = self.proxy_all(name);
        assert_eq!(
            found.len(),
            1,
            "nginx: one {name} for location /, got {found:?}"
        );
        found[0].get(1).cloned().unwrap_or_default()
    }
}

#[test]
fn systemd_unit() {
    let text = read("deploy/ingot.service");
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let section = current.clone().expect("a setting before any [Section]");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line}"));
        sections
            .get_mut(&section)
            .expect("section")
            .push((key.trim().to_owned(), value.trim().to_owned()));
    }
    for required in ["Unit", "Service", "Install"] {
        assert!(sections.contains_key(required), "[{required}] missing");
    }
    let get = |section: &str, key: &str| -> Vec<String> {
        sections[section]
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let exec = get("Service", "ExecStart");
    assert_eq!(exec.len(), 1, "exactly one ExecStart");
    assert!(exec[0].starts_with('/'), "ExecStart needs an absolute path");
    assert!(!get("Install", "WantedBy").is_empty(), "WantedBy missing");
    the_unit_allows_the_sandbox(&get);
    assert_eq!(
        get("Service", "KillMode"),
        ["mixed"],
        "KillMode=mixed: SIGTERM to ingot alone, so that it drains; not to every Chromium"
    );
    let env: BTreeMap<String, String> = get("Service", "Environment")
        .iter()
        .flat_map(|v| {
            v.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let drain_ms: u64 = env
        .get("INGOT_SHUTDOWN_DRAIN_MS")
        .expect("Environment=INGOT_SHUTDOWN_DRAIN_MS")
        .parse()
        .expect("drain is a number");
    let stop = get("Service", "TimeoutStopSec");
    let stop = stop.first().expect("TimeoutStopSec");
    assert!(
        duration_ms(stop, 1000) > drain_ms,
        "TimeoutStopSec={stop} must exceed the drain ({drain_ms} ms)"
    );
    let state = get("Service", "StateDirectory");
    let state = state.first().expect("StateDirectory (the data directory)");
    assert_eq!(
        env.get("INGOT_DATA_DIR"),
        Some(&format!("/var/lib/{state}")),
        "INGOT_DATA_DIR must be the StateDirectory"
    );
}

#[test]
fn dockerfile() {
    let instructions = dockerfile_instructions();
    let last = it_is_a_multi_stage_build_from_rust_to_debian_slim(&instructions);
    let runtime = &instructions[last..];
    the_runtime_stage_installs_chromium_tini_and_fonts(runtime);
    it_runs_tini_as_pid_1_and_the_gateway_as_root(runtime);
    it_listens_on_3000_and_keeps_the_data_directory_on_a_volume(runtime);
    what_the_build_copies_exists_and_is_not_dockerignored(&instructions);
}

/// Instructions with continuation lines joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions: Vec<String> = Vec::new();
    let mut pending = String::new();
    for line in read("deploy/Dockerfile").lines() {
        if line.trim_start().starts_with('#') || (pending.is_empty() && line.trim().is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                instructions.push(pending.split_whitespace().collect::<Vec<_>>().join(" "));
                pending.clear();
            }
        }
    }
    instructions
}

/// Instructions that start with `prefix`.
fn with_prefix<'a>(
    instructions: &'a [String],
    prefix: &'a str,
) -> impl Iterator<Item = &'a String> + 'a {
    instructions.iter().filter(move |i| i.starts_with(prefix))
}

/// Returns where the last stage, the runtime image, starts.
fn it_is_a_multi_stage_build_from_rust_to_debian_slim(instructions: &[String]) -> usize {
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    assert!(
        instructions[stages[0]].starts_with("FROM rust:1-bookworm "),
        "build stage: {}",
        instructions[stages[0]]
    );
    let last = *stages.last().unwrap();
    assert_eq!(instructions[last], "FROM debian:bookworm-slim");
    last
}

fn the_runtime_stage_installs_chromium_tini_and_fonts(runtime: &[String]) {
    let has = |prefix: &'static str| with_prefix(runtime, prefix);
    let install = has("RUN ")
        .find(|i| i.contains("apt-get install"))
        .expect("apt-get install in the runtime stage");
    for package in [
        "--no-install-recommends",
        "chromium",
        // The default engine of headless sessions, and the X server of headful ones.
        "chromium-headless-shell",
        "xvfb",
        "tini",
        "ca-certificates",
        "fonts-liberation",
    ] {
        assert!(
            install.split_whitespace().any(|w| w == package),
            "runtime packages lack {package}"
        );
    }
}

/// tini is PID 1; the gateway runs as root (no `USER`, or root), which starting each
/// session's browser as its own uid takes; no `ENV` turns the sandbox off, and Debian's
/// setuid sandbox helper is not installed (the namespace sandbox needs none).
fn it_runs_tini_as_pid_1_and_the_gateway_as_root(runtime: &[String]) {
    let has = |prefix: &'static str| with_prefix(runtime, prefix);
    if let Some(user) = has("USER ").last() {
        let user = user.trim_start_matches("USER ").split(':').next().unwrap();
        assert!(
            user == "root" || user == "0",
            "the gateway must run as root to start browsers as their own uids, not as {user}"
        );
    }
    assert!(
        !has("ENV ").any(|e| e.contains("INGOT_INSECURE_SHARED_BROWSER_USER")),
        "the image must not turn the sandbox off"
    );
    assert!(
        !has("RUN ").any(|r| r.split_whitespace().any(|w| w == "chromium-sandbox")),
        "chromium-sandbox (a setuid helper) is not needed"
    );
    let entrypoint = has("ENTRYPOINT ").last().expect("ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint.trim_start_matches("ENTRYPOINT ")).expect("exec form");
    assert_eq!(
        entrypoint,
        ["/usr/bin/tini", "--", "/usr/local/bin/ingot"],
        "tini must be PID 1 so that Chromium's children are reaped"
    );
}

fn it_listens_on_3000_and_keeps_the_data_directory_on_a_volume(runtime: &[String]) {
    let has = |prefix: &'static str| with_prefix(runtime, prefix);
    let env: Vec<&str> = has("ENV ")
        .flat_map(|i| i.split_whitespace().skip(1))
        .collect();
    assert!(env.contains(&"INGOT_LISTEN=0.0.0.0:3000"), "ENV {env:?}");
    assert!(
        env.contains(&"INGOT_DATA_DIR=/var/lib/ingot"),
        "ENV {env:?}"
    );
    assert!(
        has("VOLUME ").any(|v| v.contains("/var/lib/ingot")),
        "the data directory must be a VOLUME"
    );
}

/// What the build copies from the context exists and is not excluded by .dockerignore.
fn what_the_build_copies_exists_and_is_not_dockerignored(instructions: &[String]) {
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let allow_list = ignore.first().map(String::as_str) == Some("*");
    for copy in instructions
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from="))
    {
        let words: Vec<&str> = copy.split_whitespace().skip(1).collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            assert!(root().join(source).exists(), "COPY {source}: no such path");
            let allowed = if allow_list {
                ignore
                    .iter()
                    .any(|l| l.trim_end_matches('/') == format!("!{source}"))
            } else {
                !ignore.iter().any(|l| l.trim_end_matches('/') == source)
            };
            assert!(
                allowed,
                ".dockerignore keeps {source} out of the build context"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The sandbox's needs: capabilities, seccomp, AppArmor, cgroups, the systemd unit
// ---------------------------------------------------------------------------------------

/// What the gateway needs to start each session's browser as a uid of its own, and no more
/// (deploy/README.md, "What a container must allow"): set the browser's uid and groups,
/// hand it its session directory, signal it, and read its memory in `/proc`.
const SANDBOX_CAPABILITIES: [&str; 7] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "KILL",
    "SETGID",
    "SETUID",
    "SYS_PTRACE",
];

/// The seccomp profile in `deploy/`, by file name.
const SECCOMP_PROFILE: &str = "seccomp-ingot.json";

/// [`SANDBOX_CAPABILITIES`], each with `prefix` (`CAP_` for systemd).
fn sandbox_capabilities(prefix: &str) -> BTreeSet<String> {
    SANDBOX_CAPABILITIES
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect()
}

/// No setting in `env` turns the sandbox off.
fn the_sandbox_is_not_turned_off(env: &BTreeMap<String, String>, what: &str) {
    if let Some(v) = env.get("INGOT_INSECURE_SHARED_BROWSER_USER") {
        assert!(
            matches!(v.as_str(), "false" | "0" | ""),
            "{what} sets INGOT_INSECURE_SHARED_BROWSER_USER={v}: the sandbox would be off"
        );
    }
}

/// A Compose gateway service: root (no `user`, or root), exactly the sandbox's capabilities,
/// no new privileges, the seccomp profile of `deploy/` by a path relative to the Compose file,
/// never privileged, and the sandbox on.
fn the_service_allows_the_sandbox(
    deploy: &Path,
    name: &str,
    service: &Yaml,
    env: &BTreeMap<String, String>,
) {
    if let Some(user) = scalar(&service["user"]) {
        let user = user.split(':').next().unwrap_or_default().to_owned();
        assert!(user == "0" || user == "root", "{name}: user {user}");
    }
    assert_ne!(
        service["privileged"].as_bool(),
        Some(true),
        "{name}: privileged"
    );
    let list = |key: &str| -> BTreeSet<String> {
        array(&service[key]).iter().filter_map(scalar).collect()
    };
    assert!(list("cap_drop").contains("ALL"), "{name}: cap_drop ALL");
    assert_eq!(list("cap_add"), sandbox_capabilities(""), "{name}: cap_add");
    let options = list("security_opt");
    assert!(
        options.contains("no-new-privileges:true") || options.contains("no-new-privileges"),
        "{name}: no-new-privileges"
    );
    let seccomp: Vec<&str> = options
        .iter()
        .filter_map(|o| o.strip_prefix("seccomp=").or(o.strip_prefix("seccomp:")))
        .collect();
    assert_eq!(
        seccomp.len(),
        1,
        "{name}: one seccomp profile, got {options:?}"
    );
    assert_ne!(seccomp[0], "unconfined", "{name}: keep a syscall filter");
    assert_eq!(
        deploy
            .join(seccomp[0])
            .canonicalize()
            .expect("the seccomp profile"),
        deploy
            .join(SECCOMP_PROFILE)
            .canonicalize()
            .expect("deploy's profile"),
        "{name}: the seccomp profile is deploy/{SECCOMP_PROFILE}"
    );
    the_sandbox_is_not_turned_off(env, name);
}

/// The unit's settings that the sandbox depends on; `get(section, key)` lists a key's values.
fn the_unit_allows_the_sandbox(get: &dyn Fn(&str, &str) -> Vec<String>) {
    let service = |key: &str| get("Service", key);
    assert!(
        service("User")
            .last()
            .is_none_or(|u| u == "root" || u == "0"),
        "the gateway runs as root to start browsers as their own uids"
    );
    let bounding: BTreeSet<String> = service("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        bounding,
        sandbox_capabilities("CAP_"),
        "CapabilityBoundingSet"
    );
    let ambient = service("AmbientCapabilities");
    assert!(
        ambient.iter().all(|a| a.is_empty()),
        "no ambient capabilities"
    );
    let yes = |key: &str| service(key).last().map(String::as_str) == Some("yes");
    assert!(yes("Delegate"), "Delegate=yes: a cgroup per session");
    assert!(yes("NoNewPrivileges"), "NoNewPrivileges=yes");
    for key in ["PrivateUsers", "ProtectControlGroups"] {
        assert!(!yes(key), "{key}=yes breaks the sandbox");
    }
    assert!(
        service("ProtectProc").last().is_none_or(|v| v == "default"),
        "ProtectProc hides the browsers' processes from the gateway"
    );
    if let Some(allowed) = service("RestrictNamespaces").last() {
        let allowed: BTreeSet<&str> = allowed.split_whitespace().collect();
        for ns in ["user", "pid", "net"] {
            assert!(
                allowed.contains(ns),
                "RestrictNamespaces must allow {ns}: Chromium's sandbox creates it"
            );
        }
    }
    let needed = [
        "@mount",
        "chroot",
        "clone",
        "clone3",
        "unshare",
        "@process",
        "@privileged",
        "@setuid",
        "setuid",
        "setgid",
        "setgroups",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
        "seccomp",
        "prctl",
    ];
    for filter in service("SystemCallFilter") {
        let Some(denied) = filter.strip_prefix('~') else {
            panic!("SystemCallFilter={filter}: an allow-list would need every call Chromium makes")
        };
        for call in denied.split_whitespace() {
            assert!(
                !needed.contains(&call),
                "SystemCallFilter denies {call}, which the sandbox needs"
            );
        }
    }
    let mode = service("StateDirectoryMode");
    let mode = u32::from_str_radix(mode.last().expect("StateDirectoryMode"), 8).expect("octal");
    assert_eq!(
        mode & 0o005,
        0o001,
        "StateDirectoryMode {mode:o}: browsers' uids pass through the data directory, and list nothing"
    );
}

/// `systemd-analyze verify` accepts the unit without a warning (with a stand-in for the
/// binary, which it wants to exist). Skipped, with a note, where systemd is not installed.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze not found: the unit's syntax is not verified");
        return;
    };
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("ingot-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let unit = dir.join("ingot.service");
    let text = read("deploy/ingot.service")
        .replace("ExecStart=/usr/local/bin/ingot", "ExecStart=/bin/true");
    std::fs::write(&unit, text).expect("write the unit");
    let out = run_within(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_the_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("ingot.service"))
        .collect();
    assert!(
        out.status.success() && about_the_unit.is_empty(),
        "systemd-analyze verify: {said}"
    );
}

/// The names a profile's rules allow without conditions, and those allowed only for
/// certain arguments.
fn seccomp_rules(profile: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut always, mut conditional) = (BTreeSet::new(), BTreeSet::new());
    for rule in profile["syscalls"].as_array().expect("syscalls") {
        assert_eq!(rule["action"], "SCMP_ACT_ALLOW", "only allow rules: {rule}");
        let names = rule["names"].as_array().expect("names");
        let has_args = rule["args"].as_array().is_some_and(|a| !a.is_empty());
        let has_includes = rule.get("includes").is_some() || rule.get("excludes").is_some();
        assert!(!has_includes, "no capability-dependent rules: {rule}");
        for name in names {
            let name = name.as_str().expect("a name").to_owned();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "not a system call name: {name}"
            );
            let fresh = if has_args {
                conditional.insert(name.clone())
            } else {
                always.insert(name.clone())
            };
            assert!(fresh || has_args, "{name} listed twice");
        }
    }
    (always, conditional)
}

/// `deploy/seccomp-ingot.json` is a profile Docker, Compose and Kubernetes load: refuse by
/// default, allow the namespaces Chromium's sandbox creates (`clone`, `unshare`), its
/// `chroot`, Landlock and what the gateway does to start a browser, and refuse what Docker's
/// default profile refuses to a container without extra capabilities.
#[test]
fn the_seccomp_profile_allows_the_sandbox_and_little_else() {
    let profile: Value =
        serde_json::from_str(&read(&format!("deploy/{SECCOMP_PROFILE}"))).expect("valid JSON");
    assert_eq!(
        profile["defaultAction"], "SCMP_ACT_ERRNO",
        "refuse by default"
    );
    assert_eq!(profile["defaultErrnoRet"], 1, "EPERM, as Docker's default");
    let arches: BTreeSet<&str> = profile["architectures"]
        .as_array()
        .expect("architectures")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arch in ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"] {
        assert!(arches.contains(arch), "{arch} missing");
    }
    let (always, conditional) = seccomp_rules(&profile);
    let needed = [
        // Chromium's namespace sandbox (traced: clone with CLONE_NEWUSER|CLONE_NEWPID|
        // CLONE_NEWNET, unshare(CLONE_NEWUSER), chroot("/proc/self/fdinfo/")) and its own
        // seccomp-bpf sandbox.
        "clone",
        "clone3",
        "unshare",
        "chroot",
        "seccomp",
        "prctl",
        // Landlock, set up by the gateway before the browser's exec.
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
        // Becoming the session's uid.
        "setgroups",
        "setresgid",
        "setresuid",
        "setgid",
        "setuid",
        "capget",
        "capset",
        "execve",
        "wait4",
        "kill",
        "pidfd_open",
        "pidfd_send_signal",
        // The everyday ones.
        "read",
        "write",
        "mmap",
        "mprotect",
        "futex",
        "epoll_wait",
        "memfd_create",
        "openat",
    ];
    for call in needed {
        assert!(always.contains(call), "{SECCOMP_PROFILE} must allow {call}");
    }
    let refused = [
        "mount",
        "umount2",
        "pivot_root",
        "fsopen",
        "fsmount",
        "move_mount",
        "open_tree",
        "setns",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "pidfd_getfd",
        "perf_event_open",
        "bpf",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "init_module",
        "finit_module",
        "delete_module",
        "kexec_load",
        "kexec_file_load",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "settimeofday",
        "clock_settime",
        "sethostname",
        "open_by_handle_at",
        "io_uring_setup",
        "iopl",
        "ioperm",
    ];
    for call in refused {
        assert!(
            !always.contains(call) && !conditional.contains(call),
            "{SECCOMP_PROFILE} must refuse {call}"
        );
    }
    assert!(
        !always.contains("personality") && conditional.contains("personality"),
        "personality only for the values Docker allows"
    );
}

/// On hosts whose AppArmor restricts user namespaces, `deploy/apparmor/ingot-chromium` lets
/// the image's Chromium (the executable ingot launches) create them, and `install-deps.sh`
/// installs it there.
#[test]
fn the_apparmor_profile_lets_chromium_create_user_namespaces() {
    let profile = read("deploy/apparmor/ingot-chromium");
    let chromium = dockerfile_instructions()
        .iter()
        .filter(|i| i.starts_with("ENV "))
        .flat_map(|i| i.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find_map(|kv| kv.strip_prefix("INGOT_CHROMIUM=").map(str::to_owned))
        .expect("INGOT_CHROMIUM in the image");
    let header = profile
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("profile "))
        .expect("a profile");
    let words: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        words.get(2),
        Some(&chromium.as_str()),
        "attaches to {chromium}: {header}"
    );
    assert!(
        header.contains("flags=(unconfined)"),
        "confines nothing else: {header}"
    );
    assert!(
        profile.lines().any(|l| l.trim() == "userns,"),
        "allows user namespaces"
    );
    // The headless shell, the default engine, needs the same.
    assert!(
        profile
            .lines()
            .map(str::trim)
            .any(|l| l.starts_with("profile ")
                && l.contains(" /usr/lib/chromium/chromium-headless-shell ")
                && l.contains("flags=(unconfined)")),
        "a profile for the headless shell"
    );
    assert_eq!(
        profile.matches('{').count(),
        profile.matches('}').count(),
        "balanced braces"
    );
    let install = read("deploy/install-deps.sh");
    assert!(
        install.contains("apparmor/ingot-chromium")
            && install.contains("apparmor_restrict_unprivileged_userns"),
        "install-deps.sh installs the profile where AppArmor restricts user namespaces"
    );
}

#[test]
fn promtool_accepts_scrape_config() {
    let promtool = prometheus_tool("promtool");
    for config in ["deploy/prometheus.yml", "deploy/prometheus-cluster.yml"] {
        let output = run_within(
            Command::new(&promtool)
                .args(["check", "config"])
                .arg(root().join(config)),
            Duration::from_secs(60),
        );
        assert!(
            output.status.success(),
            "promtool check config {config} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------
// dashboards/ingot.json
// ---------------------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read("dashboards/ingot.json"))
        .unwrap_or_else(|e| panic!("dashboards/ingot.json is not valid JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn exprs(panel: &Value) -> Vec<&str> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// The Grafana range variables, replaced so that the expression parses as PromQL.
fn substitute(expr: &str) -> String {
    let mut expr = expr.to_owned();
    for var in ["__rate_interval", "__interval", "__range"] {
        expr = expr
            .replace(&format!("${{{var}}}"), "5m")
            .replace(&format!("${var}"), "5m");
    }
    expr
}

/// What a PromQL expression reads.
#[derive(Default, Debug)]
struct Reads {
    /// Metric names of every selector.
    metrics: BTreeSet<String>,
    /// (function, metric, range) of every function over a range vector.
    ranges: Vec<(&'static str, String, Duration)>,
    /// (quantile, metrics read) of every histogram_quantile call.
    quantiles: Vec<(f64, BTreeSet<String>)>,
}

fn selector_name(vs: &VectorSelector) -> String {
    vs.name
        .clone()
        .or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
                .map(|m| m.value.clone())
        })
        .unwrap_or_else(|| panic!("selector {vs} names no metric; dashboards must"))
}

impl ExprVisitor for Reads {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        match expr {
            Expr::VectorSelector(vs) => {
                self.metrics.insert(selector_name(vs));
            }
            Expr::MatrixSelector(ms) => {
                self.metrics.insert(selector_name(&ms.vs));
            }
            Expr::Call(call) => {
                let args = &call.args.args;
                if let Some(Expr::MatrixSelector(ms)) = args.first().map(|a| a.as_ref()) {
                    self.ranges
                        .push((call.func.name, selector_name(&ms.vs), ms.range));
                }
                if call.func.name == "histogram_quantile"
                    && let (Some(Expr::NumberLiteral(q)), Some(inner)) =
                        (args.first().map(|a| a.as_ref()), args.get(1))
                {
                    let mut reads = Reads::default();
                    let _ = walk_expr(&mut reads, inner);
                    self.quantiles.push((q.val, reads.metrics));
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

fn reads_of(expr: &str) -> Reads {
    let parsed = parser::parse(&substitute(expr))
        .unwrap_or_else(|e| panic!("PromQL does not parse: {expr}\n{e}"));
    let mut reads = Reads::default();
    let _ = walk_expr(&mut reads, &parsed);
    reads
}

/// The PromQL selector inside a `label_values(<selector>, <label>)` variable query.
fn variable_selectors(dashboard: &Value) -> Vec<String> {
    let mut selectors = Vec::new();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        if let Some((selector, _label)) = inner.rsplit_once(',') {
            selectors.push(selector.trim().to_owned());
        }
    }
    selectors
}

/// Every metric name the dashboard reads, panels and variables.
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in all_panels(dashboard) {
        for expr in exprs(panel) {
            names.extend(reads_of(expr).metrics);
        }
    }
    for selector in variable_selectors(dashboard) {
        names.extend(reads_of(&selector).metrics);
    }
    names
}

#[test]
fn dashboard_structure() {
    let d = dashboard();
    it_has_a_uid_a_title_a_schema_version_and_no_inputs(&d);
    let ds_name = query_variables_use_the_datasource_variable(&d);
    let panels = all_panels(&d);
    every_panel_has_a_unique_id_a_place_and_queries_that_parse(&panels, &ds_name);
    top_level_panels_do_not_overlap(&d);
    the_panels_the_issue_asks_for_are_there(&panels);
}

fn it_has_a_uid_a_title_a_schema_version_and_no_inputs(d: &Value) {
    assert_eq!(d["uid"], "ingot");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let schema = d["schemaVersion"].as_i64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d["__inputs"].is_null(),
        "no __inputs: the datasource variable makes the JSON import as is"
    );
}

/// Whether a panel's, target's or variable's datasource is the dashboard's datasource
/// variable `ds_name`.
fn uses_variable(ds: &Value, ds_name: &str) -> bool {
    let ds_refs = [format!("${{{ds_name}}}"), format!("${ds_name}")];
    ds["type"] == "prometheus"
        && ds["uid"]
            .as_str()
            .is_some_and(|u| ds_refs.iter().any(|r| r == u))
}

/// A `datasource` template variable exists and every query variable uses it; returns its
/// name.
fn query_variables_use_the_datasource_variable(d: &Value) -> String {
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let ds_var = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource template variable");
    assert_eq!(ds_var["query"], "prometheus");
    let ds_name = ds_var["name"].as_str().expect("variable name");
    for var in variables.iter().filter(|v| v["type"] == "query") {
        assert!(
            uses_variable(&var["datasource"], ds_name),
            "variable {} must use ${ds_name}",
            var["name"]
        );
    }
    ds_name.to_owned()
}

fn every_panel_has_a_unique_id_a_place_and_queries_that_parse(panels: &[&Value], ds_name: &str) {
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_i64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let title = panel["title"].as_str().unwrap_or_default();
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_i64(), grid["w"].as_i64());
        assert!(
            x.zip(w)
                .is_some_and(|(x, w)| x >= 0 && w > 0 && x + w <= 24)
                && grid["y"].as_i64().is_some()
                && grid["h"].as_i64().is_some_and(|h| h > 0),
            "panel {title:?}: bad gridPos {grid}"
        );
        if is_row(panel) {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&panel["type"].as_str().unwrap_or_default()),
            "panel {title:?}: type {}",
            panel["type"]
        );
        assert!(
            uses_variable(&panel["datasource"], ds_name),
            "panel {title:?} must use the ${ds_name} variable as its datasource, not {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(
                ref_ids.insert(target["refId"].to_string()),
                "panel {title:?}: refId twice"
            );
            if !target["datasource"].is_null() {
                assert!(
                    uses_variable(&target["datasource"], ds_name),
                    "panel {title:?}: target datasource"
                );
            }
            let expr = target["expr"].as_str().expect("target expr");
            let reads = reads_of(expr);
            assert!(
                !reads.metrics.is_empty(),
                "panel {title:?}: {expr} reads no metric"
            );
            // rate() and irate() follow the scrape interval through $__rate_interval.
            for (func, metric, range) in &reads.ranges {
                if matches!(*func, "rate" | "irate") {
                    assert!(
                        *range == Duration::from_secs(300) && !expr.contains("[5m"),
                        "panel {title:?}: {func}({metric}) must use [$__rate_interval]"
                    );
                }
            }
        }
    }
}

/// Panels on the top level must not overlap.
fn top_level_panels_do_not_overlap(d: &Value) {
    let top: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    let rect = |p: &Value| {
        let g = &p["gridPos"];
        let v = |k: &str| g[k].as_i64().unwrap();
        (v("x"), v("y"), v("w"), v("h"))
    };
    for (i, a) in top.iter().enumerate() {
        for b in &top[i + 1..] {
            let ((ax, ay, aw, ah), (bx, by, bw, bh)) = (rect(a), rect(b));
            assert!(
                ax + aw <= bx || bx + bw <= ax || ay + ah <= by || by + bh <= ay,
                "panels {} and {} overlap",
                a["title"],
                b["title"]
            );
        }
    }
}

fn reads_metric(r: &Reads, m: &str) -> bool {
    r.metrics.contains(m)
}

fn has_quantile(r: &Reads, q: f64, histogram: &str) -> bool {
    let bucket = format!("{histogram}_bucket");
    r.quantiles
        .iter()
        .any(|(qq, m)| (*qq - q).abs() < 1e-9 && m.contains(&bucket))
}

/// Recognises a panel by its expressions and what they read.
type Check = Box<dyn Fn(&[String], &Reads) -> bool>;

/// The panels the issue asks for, each with how it is recognised.
fn required_panels() -> Vec<(&'static str, Check)> {
    vec![
        (
            "live sessions",
            Box::new(|_, r| reads_metric(r, "ingot_sessions_live")),
        ),
        (
            "create rate",
            Box::new(|_, r| {
                r.ranges
                    .iter()
                    .any(|(f, m, _)| *f == "rate" && m == "ingot_sessions_created_total")
            }),
        ),
        (
            "failure ratio",
            Box::new(|e, r| {
                reads_metric(r, "ingot_sessions_ended_total")
                    && e.iter()
                        .any(|e| e.contains(r#"status="failed""#) && e.contains(" / "))
            }),
        ),
        (
            "billed minutes per hour",
            Box::new(|e, r| {
                r.ranges.iter().any(|(f, m, range)| {
                    m == "ingot_billed_minutes_total"
                        && ((*f == "increase" && *range == Duration::from_secs(3600))
                            || (*f == "rate" && e.iter().any(|e| e.contains("3600"))))
                })
            }),
        ),
        (
            "browser launch p50 and p99",
            Box::new(|_, r| {
                has_quantile(r, 0.5, "ingot_browser_launch_seconds")
                    && has_quantile(r, 0.99, "ingot_browser_launch_seconds")
            }),
        ),
        (
            "create-to-ready p50 and p99",
            Box::new(|_, r| {
                has_quantile(r, 0.5, "ingot_session_create_to_ready_seconds")
                    && has_quantile(r, 0.99, "ingot_session_create_to_ready_seconds")
            }),
        ),
        (
            "session durations",
            Box::new(|_, r| has_quantile(r, 0.5, "ingot_session_duration_seconds")),
        ),
        (
            "CDP throughput",
            Box::new(|_, r| {
                r.ranges
                    .iter()
                    .any(|(f, m, _)| *f == "rate" && m == "ingot_cdp_bytes_total")
            }),
        ),
        (
            "Chromium memory",
            Box::new(|_, r| reads_metric(r, "ingot_chromium_resident_memory_bytes")),
        ),
        (
            "client connections",
            Box::new(|_, r| reads_metric(r, "ingot_client_connections")),
        ),
        // Cluster mode, per node.
        (
            "live sessions per node",
            Box::new(|e, _| {
                e.iter()
                    .any(|e| e.contains("ingot_sessions_live") && by_instance(e))
            }),
        ),
        (
            "free slots per node",
            Box::new(|e, _| {
                e.iter().any(|e| {
                    e.contains("ingot_sessions_max")
                        && e.contains(" - ")
                        && e.contains("ingot_sessions_live")
                        && by_instance(e)
                })
            }),
        ),
        (
            "cluster nodes each node sees",
            Box::new(|e, _| {
                e.iter()
                    .any(|e| e.contains("ingot_cluster_nodes") && by_instance(e))
            }),
        ),
        (
            "forwarded requests by kind and outcome",
            Box::new(|e, r| {
                r.ranges
                    .iter()
                    .any(|(f, m, _)| *f == "rate" && m == "ingot_cluster_forwarded_total")
                    && e.iter()
                        .any(|e| e.contains("kind") && e.contains("outcome"))
            }),
        ),
        (
            "lease renewals by outcome",
            Box::new(|e, r| {
                r.ranges
                    .iter()
                    .any(|(_, m, _)| m == "ingot_cluster_lease_renewals_total")
                    && e.iter().any(|e| e.contains("outcome"))
            }),
        ),
        (
            "sessions lost with a node",
            Box::new(|_, r| reads_metric(r, "ingot_sessions_lost_with_node_total")),
        ),
        (
            "directory query p50 and p99",
            Box::new(|_, r| {
                has_quantile(r, 0.5, "ingot_cluster_directory_query_seconds")
                    && has_quantile(r, 0.99, "ingot_cluster_directory_query_seconds")
            }),
        ),
    ]
}

/// Whether an expression keeps the `instance` label: one series per node.
fn by_instance(expr: &str) -> bool {
    expr.contains("by (instance")
}

/// The panels the issue asks for, recognised by what they query.
fn the_panels_the_issue_asks_for_are_there(panels: &[&Value]) {
    let reads: Vec<(String, Vec<String>, Reads)> = panels
        .iter()
        .filter(|p| !is_row(p))
        .map(|p| {
            let exprs: Vec<String> = exprs(p).into_iter().map(str::to_owned).collect();
            let mut all = Reads::default();
            for e in &exprs {
                let r = reads_of(e);
                all.metrics.extend(r.metrics);
                all.ranges.extend(r.ranges);
                all.quantiles.extend(r.quantiles);
            }
            (
                p["title"].as_str().unwrap_or_default().to_owned(),
                exprs,
                all,
            )
        })
        .collect();
    for (what, check) in &required_panels() {
        assert!(
            reads.iter().any(|(_, e, r)| check(e, r)),
            "no panel shows {what}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Against a live gateway
// ---------------------------------------------------------------------------------------

/// Metric names a `/metrics` page exports, and which of them are histograms.
struct Exported {
    series: BTreeSet<String>,
    histograms: BTreeSet<String>,
    text: String,
}

impl Exported {
    fn parse(text: String) -> Exported {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parse /metrics");
        let mut series = BTreeSet::new();
        let mut histograms = BTreeSet::new();
        for sample in &scrape.samples {
            series.insert(sample.metric.clone());
            if let prometheus_parse::Value::Histogram(_) = sample.value {
                histograms.insert(sample.metric.clone());
            }
        }
        Exported {
            series,
            histograms,
            text,
        }
    }

    /// Whether a name used in PromQL is exported; `X_bucket`, `X_sum` and `X_count` must
    /// belong to an exported histogram `X`.
    fn has(&self, name: &str) -> bool {
        if let Some(base) = name.strip_suffix("_bucket") {
            return self.histograms.contains(base);
        }
        match name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
        {
            Some(base) => self.histograms.contains(base) && self.series.contains(name),
            None => self.series.contains(name),
        }
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix(' ').or_else(|| {
                rest.strip_prefix('{')
                    .and_then(|r| r.split_once("} ").map(|(_, v)| v))
            })?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }
}

async fn scrape(gw: &Gateway) -> Exported {
    let request = gw.http.get(gw.url("/metrics")).send();
    let response = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("GET /metrics within 10 s")
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "GET /metrics");
    // Prometheus 3 (the Compose file's) refuses a scrape without a valid content type.
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "/metrics content type {content_type:?}"
    );
    let text = response.text().await.expect("/metrics body");
    Exported::parse(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_exported_metrics() {
    let _shared = shared().await;
    let wanted = dashboard_metrics(&dashboard());
    // One slot and no warm pool, so that a second create has to queue for the first's slot.
    let gw = Gateway::start(&["--max-sessions", "1", "--pool-size", "0"]).await;

    // A small workload that touches every kind of metric: a session with a CDP client, a
    // second create queued until the first is released, and both released.
    let first = gw.create(json!({})).await;
    let first_id = first["id"].as_str().expect("id").to_owned();
    let mut cdp = Cdp::connect(first["websocketUrl"].as_str().expect("websocketUrl")).await;
    cdp.call("Target.getTargets", json!({}), None).await;

    the_sampler_measures_the_browser_and_counts_the_client(&gw).await;
    a_second_create_queues_until_the_first_is_released(&gw, cdp, &first_id).await;
    every_metric_the_dashboard_reads_is_exported(&gw, &wanted).await;
}

/// The sampler measures Chromium every few seconds: wait until it saw this one.
async fn the_sampler_measures_the_browser_and_counts_the_client(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exported = scrape(gw).await;
        let memory = exported.gauge("ingot_chromium_resident_memory_bytes");
        let clients = exported.gauge("ingot_client_connections");
        if memory.is_some_and(|m| m > 0.0) && clients == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s with a live session and a client, /metrics shows Chromium memory \
             {memory:?} and client connections {clients:?}\n{}",
            exported.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A second create queues, gets the slot once the first session is released, and is
/// released too.
async fn a_second_create_queues_until_the_first_is_released(
    gw: &Gateway,
    cdp: Cdp,
    first_id: &str,
) {
    let (http, url) = (gw.http.clone(), gw.url("/v1/sessions"));
    let second = tokio::spawn(async move {
        let response = http.post(url).json(&json!({})).send().await.expect("POST");
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(gw).await.gauge("ingot_admission_queue_length") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the second create did not queue within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cdp.close().await;
    gw.release(first_id).await;
    let (status, second) = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the queued create answered within 30 s")
        .expect("create task");
    assert_eq!(
        status, 200,
        "the queued create gets the freed slot: {second}"
    );
    gw.release(second["id"].as_str().expect("id")).await;
}

/// After the workload every metric the dashboard queries is exported; prints the families
/// no panel shows.
async fn every_metric_the_dashboard_reads_is_exported(gw: &Gateway, wanted: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let exported = loop {
        let exported = scrape(gw).await;
        if wanted.iter().all(|m| exported.has(m)) || Instant::now() > deadline {
            break exported;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let d = dashboard();
    let missing: BTreeMap<&String, Vec<&str>> = wanted
        .iter()
        .filter(|m| !exported.has(m))
        .map(|m| {
            let panels = all_panels(&d)
                .into_iter()
                .filter(|p| exprs(p).iter().any(|e| reads_of(e).metrics.contains(m)))
                .filter_map(|p| p["title"].as_str())
                .collect();
            (m, panels)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "dashboards/ingot.json queries metrics that /metrics does not export \
         (metric: panels): {missing:?}\nexported: {:?}\nhistograms: {:?}",
        exported.series,
        exported.histograms
    );
    // Informational: metric families the dashboard leaves out.
    let family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| exported.histograms.contains(*base))
            })
            .unwrap_or(name)
            .to_owned()
    };
    let shown: BTreeSet<String> = wanted.iter().map(|w| family(w)).collect();
    let unshown: BTreeSet<String> = exported
        .series
        .iter()
        .map(|s| family(s))
        .filter(|f| f.starts_with("ingot_") && !shown.contains(f))
        .collect();
    eprintln!("ingot_ metrics no panel shows: {unshown:?}");
}

/// A Prometheus server from Debian's package, on a loopback port, stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second with the ingot job of
    /// deploy/prometheus.yml.
    fn start(target: &str) -> Prometheus {
        let binary = prometheus_tool("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let deploy = yaml_doc("deploy/prometheus.yml");
        let job = ingot_job(&deploy);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {}\n    metrics_path: {}\n    static_configs:\n      - targets: [\"{target}\"]\n",
            job["job_name"].as_str().expect("job_name"),
            job["metrics_path"].as_str().unwrap_or("/metrics"),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant query, or None while Prometheus cannot answer.
    async fn query(&self, http: &reqwest::Client, promql: &str) -> Option<Vec<Value>> {
        let url = url::Url::parse_with_params(
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            [("query", promql)],
        )
        .expect("query URL");
        let response = http.get(url).send().await.ok()?;
        let body: Value = response.json().await.ok()?;
        if body["status"] != "success" {
            return None;
        }
        body["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this guard spawned and has not reaped.
        signal(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sample value of the first series in a query result.
fn first_value(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_live_gateway() {
    let _shared = shared().await;
    let gw = Gateway::start(&[]).await;
    let session = gw.create(json!({})).await;
    gw.release(session["id"].as_str().expect("id")).await;

    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", gw.port));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("HTTP client");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (created, up, series) = loop {
        let created = prometheus
            .query(&http, "ingot_sessions_created_total")
            .await
            .unwrap_or_default();
        let up = prometheus
            .query(&http, r#"up{job="ingot"}"#)
            .await
            .unwrap_or_default();
        let series = prometheus
            .query(&http, r#"count({__name__=~"ingot_.+"})"#)
            .await
            .unwrap_or_default();
        if first_value(&created).is_some_and(|v| v >= 1.0) || Instant::now() > deadline {
            break (created, up, series);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        first_value(&created).is_some_and(|v| v >= 1.0),
        "Prometheus has no ingot_sessions_created_total >= 1 after 30 s: {created:?}, \
         up {up:?}\nPrometheus log:\n{}",
        prometheus.log()
    );
    assert_eq!(first_value(&up), Some(1.0), "up{{job=\"ingot\"}}: {up:?}");
    assert!(
        first_value(&series).is_some_and(|n| n >= 10.0),
        "Prometheus holds few ingot_ series: {series:?}"
    );
}
