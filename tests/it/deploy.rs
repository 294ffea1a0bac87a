//! Deployment artifacts, checked as far as this machine allows (no container engine, no
//! cluster, no Grafana):
//!
//! * every YAML file under `deploy/` parses; the Kubernetes manifests, the Compose file, the
//!   Grafana provisioning, the Dockerfile and the systemd unit have what running ingot in
//!   production needs (probes on `/readyz` and `/healthz`, resources sized per session, a
//!   stop timeout longer than the session drain, billing data on persistent storage, scrape
//!   annotations, host ports on loopback only) and agree with each other;
//! * `promtool check config` accepts `deploy/prometheus.yml`;
//! * `dashboards/ingot.json` is a Grafana dashboard that imports as is: a `datasource`
//!   variable used by every panel, unique panel ids, PromQL that parses and rates over
//!   `$__rate_interval`, and the panels the issue asks for;
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

/// Every Kubernetes object under deploy/k8s, with the file it came from.
fn k8s_objects() -> Vec<(PathBuf, Yaml)> {
    let files = yaml_files(&root().join("deploy/k8s"));
    assert!(!files.is_empty(), "no manifests under deploy/k8s");
    let mut objects = Vec::new();
    for file in files {
        for doc in load_yaml(&file) {
            objects.push((file.clone(), doc));
        }
    }
    objects
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
    let objects = k8s_objects();
    every_object_has_a_kind_and_a_name_and_no_namespace(&objects);
    let pod = the_one_deployment_selects_its_own_pods(&objects);
    let port = the_container_declares_the_image_port(pod.container);
    probes_get_readyz_and_healthz_on_the_gateway_port(pod.container, &port);
    let env = container_env(pod.container);
    resources_are_sized_per_session(pod.container, &env);
    sigterm_drains_before_the_kubelet_kills(pod.spec, &env);
    the_public_url_is_set(&env);
    billing_records_live_on_a_claim_defined_here(&objects, &pod, &env);
    scrape_annotations_point_at_metrics_on_the_gateway_port(pod.template, &port);
    the_pod_runs_as_non_root(&pod);
    a_service_reaches_the_pods_on_the_gateway_port(&objects, &pod.labels, &port);
    a_disruption_budget_covers_the_pods(&objects, &pod.labels);
}

/// The gateway's pod, as the one Deployment's template describes it.
struct GatewayPod<'a> {
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

fn the_pod_runs_as_non_root(pod: &GatewayPod) {
    let non_root = [
        &pod.spec["securityContext"],
        &pod.container["securityContext"],
    ]
    .iter()
    .any(|s| s["runAsNonRoot"].as_bool() == Some(true));
    assert!(non_root, "runAsNonRoot must be set");
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
    prometheus_reads_the_mounted_config_and_scrapes_ingot(&compose, &names, &image_port);
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
    for name in names {
        for port in array(&svc(name)["ports"]) {
            let port = scalar(port).expect("port as a string");
            assert!(
                port.starts_with("127.0.0.1:"),
                "service {name} publishes {port}; bind host ports to 127.0.0.1"
            );
        }
    }
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

/// ingot: built from the repository with deploy/Dockerfile, drained before it is killed,
/// its data directory on a named volume.
fn ingot_is_built_from_the_repository_and_keeps_its_data(deploy: &Path, compose: &Yaml) {
    let ingot = &compose["services"]["ingot"];
    let context = deploy.join(ingot["build"]["context"].as_str().expect("build.context"));
    assert_eq!(
        context.canonicalize().expect("build context"),
        root().canonicalize().expect("root"),
        "ingot must be built from the repository root"
    );
    let dockerfile = ingot["build"]["dockerfile"]
        .as_str()
        .expect("build.dockerfile");
    assert_eq!(dockerfile, "deploy/Dockerfile");
    assert!(context.join(dockerfile).is_file());
    let env = string_map(&ingot["environment"]);
    assert!(
        env.contains_key("INGOT_PUBLIC_URL"),
        "INGOT_PUBLIC_URL unset"
    );
    let drain_ms: u64 = env
        .get("INGOT_SHUTDOWN_DRAIN_MS")
        .expect("INGOT_SHUTDOWN_DRAIN_MS")
        .parse()
        .expect("drain is a number");
    let grace = scalar(&ingot["stop_grace_period"]).expect("stop_grace_period");
    assert!(
        duration_ms(&grace, 1000) > drain_ms,
        "stop_grace_period {grace} must exceed INGOT_SHUTDOWN_DRAIN_MS {drain_ms}"
    );
    assert!(
        scalar(&ingot["shm_size"]).is_some(),
        "Chromium needs shm_size"
    );
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

/// Prometheus: deploy/prometheus.yml, scraping the ingot service.
fn prometheus_reads_the_mounted_config_and_scrapes_ingot(
    compose: &Yaml,
    names: &BTreeSet<String>,
    image_port: &str,
) {
    let prometheus = &compose["services"]["prometheus"];
    let config = service_volumes(prometheus)
        .into_iter()
        .find(|v| split_mount(v).0 == "./prometheus.yml")
        .expect("./prometheus.yml mounted into prometheus");
    let flags: Vec<String> = array(&prometheus["command"])
        .iter()
        .filter_map(scalar)
        .collect();
    assert!(
        flags.contains(&format!("--config.file={}", split_mount(&config).1)),
        "prometheus must read the mounted config; flags {flags:?}"
    );
    let scrape = yaml_doc("deploy/prometheus.yml");
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
    let user = get("Service", "User");
    assert!(
        user.first().is_some_and(|u| u != "root" && u != "0"),
        "the unit must run as a non-root User"
    );
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
    it_runs_tini_as_pid_1_and_not_as_root(runtime);
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

fn it_runs_tini_as_pid_1_and_not_as_root(runtime: &[String]) {
    let has = |prefix: &'static str| with_prefix(runtime, prefix);
    let user = has("USER ").last().expect("USER in the runtime stage");
    let user = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(
        user != "root" && user != "0",
        "the image must not run as root"
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

#[test]
fn promtool_accepts_scrape_config() {
    let promtool = prometheus_tool("promtool");
    let output = run_within(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(root().join("deploy/prometheus.yml")),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "promtool check config deploy/prometheus.yml failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
    ]
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
