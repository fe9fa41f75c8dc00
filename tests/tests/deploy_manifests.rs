//! `deploy/`: each overlay renders (with the kustomize subset in `support/kustomize.rs`, checked
//! against `kubectl kustomize` when kubectl is on PATH), every object parses into its
//! k8s-openapi type without losing a field, and the properties the deployment promises hold:
//! two replicas and a PDB for each Deployment, Lease-based leader election for the controllers,
//! probes, requests and limits, non-root read-only containers, the agent's host access limited to
//! its justified items, NetworkPolicies allowing exactly the drawn flows, ServiceMonitors that
//! select real Service ports, Secrets either rendered, documented as the operator's or published
//! by the CA, the CRDs equal to `crds/*.yaml`, RBAC equal to the kube API calls found in the
//! controller's and the agent's sources and the CA's publishing calls (no wildcards), and mutual
//! TLS to the CA: the CA serves TLS without a token, and every caller dials `https://` with the
//! client-certificate Secret the CA publishes for its role, mounted as a directory. The agent
//! runs the node's dataplane: the binary is in its image (deploy/Dockerfile), its UDP hostPort is
//! the CRDs' default dataplane port, its MIC is a mounted Secret directory, its CRL comes over
//! HTTPS from the CA trusting the root the CA publishes, it bills usage with the usage token from
//! a spool that survives pod restarts, under the node's name, and a PodMonitor scrapes it. On a
//! real cluster (KUBECONFIG set) the dev overlay also passes server-side dry-run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/kustomize.rs"]
mod kustomize;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Secret, Service, ServiceAccount,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use nexus_e2e::{cluster_unavailable, kubectl, repo_root, skip};
use serde::de::DeserializeOwned;
use serde_json::Value;

const NS: &str = "nexus-system";

/// The rendered objects of an overlay, parsed.
#[derive(Default)]
struct Rendered {
    all: Vec<Value>,
    deployments: Vec<Deployment>,
    statefulsets: Vec<StatefulSet>,
    daemonsets: Vec<DaemonSet>,
    services: Vec<Service>,
    pdbs: Vec<PodDisruptionBudget>,
    policies: Vec<NetworkPolicy>,
    secrets: Vec<Secret>,
    configmaps: Vec<ConfigMap>,
    cluster_roles: Vec<ClusterRole>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    bindings: Vec<RoleBinding>,
    crds: Vec<CustomResourceDefinition>,
    monitors: Vec<Value>,
    pod_monitors: Vec<Value>,
    service_accounts: Vec<ServiceAccount>,
}

/// Whether every field of `original` is in `round` (k8s-openapi drops unknown fields silently:
/// a misspelt field would otherwise pass).
fn subset(original: &Value, round: &Value, at: &str) -> Result<(), String> {
    match (original, round) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let next = format!("{at}.{k}");
                match b.get(k) {
                    Some(w) => subset(v, w, &next)?,
                    // Empty maps and lists may be dropped on the way back.
                    None if v.as_object().is_some_and(|o| o.is_empty())
                        || v.as_array().is_some_and(|a| a.is_empty()) => {}
                    None => return Err(format!("{next} is not a field of the type")),
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (v, w))| subset(v, w, &format!("{at}[{i}]"))),
        (a, b) if a == b => Ok(()),
        // Quantities and int-or-strings may come back in another JSON type.
        (a, b) if a.to_string().trim_matches('"') == b.to_string().trim_matches('"') => Ok(()),
        (a, b) => Err(format!("{at}: {a} came back as {b}")),
    }
}

fn typed<T: DeserializeOwned + serde::Serialize>(o: &Value) -> T {
    let t: T = serde_json::from_value(o.clone())
        .unwrap_or_else(|e| panic!("{:?} does not parse: {e}", kustomize::id(o)));
    let round = serde_json::to_value(&t).unwrap();
    if let Err(e) = subset(o, &round, "") {
        panic!("{:?}: {e}", kustomize::id(o));
    }
    t
}

fn overlay(name: &str) -> Rendered {
    let dir = repo_root().join("deploy/overlays").join(name);
    let all = kustomize::render(&dir);
    compare_with_kubectl(&dir, &all);
    let mut r = Rendered::default();
    for o in &all {
        let (kind, ns, n) = kustomize::id(o);
        if kustomize::CLUSTER_SCOPED.contains(&kind.as_str()) {
            assert_eq!(ns, "", "{name}: {kind} {n} is cluster-scoped");
        } else {
            assert_eq!(ns, NS, "{name}: {kind} {n} lives in {NS}");
        }
        match o["kind"].as_str().unwrap_or_default() {
            "Namespace" => drop(typed::<Namespace>(o)),
            "ServiceAccount" => r.service_accounts.push(typed(o)),
            "Deployment" => r.deployments.push(typed(o)),
            "StatefulSet" => r.statefulsets.push(typed(o)),
            "DaemonSet" => r.daemonsets.push(typed(o)),
            "Service" => r.services.push(typed(o)),
            "PodDisruptionBudget" => r.pdbs.push(typed(o)),
            "NetworkPolicy" => r.policies.push(typed(o)),
            "Secret" => r.secrets.push(typed(o)),
            "ConfigMap" => r.configmaps.push(typed(o)),
            "ClusterRole" => r.cluster_roles.push(typed(o)),
            "ClusterRoleBinding" => r.cluster_bindings.push(typed(o)),
            "Role" => r.roles.push(typed(o)),
            "RoleBinding" => r.bindings.push(typed(o)),
            "CustomResourceDefinition" => r.crds.push(typed(o)),
            "ValidatingAdmissionPolicy" => drop(typed::<
                k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy,
            >(o)),
            "ValidatingAdmissionPolicyBinding" => drop(typed::<
                k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
            >(o)),
            // Not a Kubernetes type: the Prometheus Operator's. Checked field by field below.
            "ServiceMonitor" => {
                assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1");
                r.monitors.push(o.clone());
            }
            "PodMonitor" => {
                assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1");
                r.pod_monitors.push(o.clone());
            }
            other => panic!("{name}: no check knows kind {other}"),
        }
    }
    r.all = all;
    r
}

/// When kubectl is here, its kustomize must render exactly what the subset renderer does.
fn compare_with_kubectl(dir: &Path, ours: &[Value]) {
    let Ok(out) = kubectl(["kustomize".to_owned(), dir.display().to_string()]) else {
        skip(
            "deploy_manifests (comparison with kubectl kustomize)",
            "kubectl is not on PATH",
        );
        return;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
        .expect("kubectl's output parses");
    let key = |v: &[Value]| -> BTreeMap<(String, String, String), Value> {
        v.iter().map(|o| (kustomize::id(o), o.clone())).collect()
    };
    let (a, b) = (key(ours), key(&theirs));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{}: the objects differ from kubectl kustomize's",
        dir.display()
    );
    for (k, v) in &a {
        if let Some(d) = first_difference(v, &b[k], "") {
            panic!("{}: {k:?} differs from kubectl's at {d}", dir.display());
        }
    }
}

/// Where two values first differ (numbers compared by value: YAML writers differ on `1` and `1.0`).
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(v), Some(w)) => first_difference(v, w, &format!("{at}.{k}")),
                (v, w) => Some(format!("{at}.{k}: {v:?} / {w:?}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}[{i}]"))),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{at}: {a} / {b}")),
    }
}

fn name_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

/// A pod-bearing workload: (kind, name, pod template).
fn workloads(r: &Rendered) -> Vec<(&'static str, String, &PodTemplateSpec)> {
    let mut w = Vec::new();
    for d in &r.deployments {
        w.push((
            "Deployment",
            name_of(&d.metadata).to_owned(),
            &d.spec.as_ref().unwrap().template,
        ));
    }
    for s in &r.statefulsets {
        w.push((
            "StatefulSet",
            name_of(&s.metadata).to_owned(),
            &s.spec.as_ref().unwrap().template,
        ));
    }
    for d in &r.daemonsets {
        w.push((
            "DaemonSet",
            name_of(&d.metadata).to_owned(),
            &d.spec.as_ref().unwrap().template,
        ));
    }
    w
}

fn labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Label-selector semantics (matchLabels and matchExpressions).
fn selects(sel: &LabelSelector, l: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| l.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => l.get(&e.key).is_some_and(|v| vals.contains(v)),
            "NotIn" => l.get(&e.key).is_none_or(|v| !vals.contains(v)),
            "Exists" => l.contains_key(&e.key),
            "DoesNotExist" => !l.contains_key(&e.key),
            other => panic!("selector operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

fn spec(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().expect("a pod template has a spec")
}

fn all_containers(p: &PodSpec) -> impl Iterator<Item = (&Container, bool)> {
    p.init_containers
        .iter()
        .flatten()
        .map(|c| (c, true))
        .chain(p.containers.iter().map(|c| (c, false)))
}

/// The one container allowed to run as root: the agent's init container that hands the two
/// host directories to the agent's user, with CAP_CHOWN and nothing else.
const ROOT_EXCEPTION: (&str, &str) = ("nexus-agent", "host-dirs");
/// The one workload without probes: kube mode of the agent serves no HTTP endpoint (its
/// liveness is the NexusNode heartbeat the rollout controller watches; its dataplane's
/// readiness is the agent's to probe).
const NO_PROBES: &str = "nexus-agent";
/// The host directories the agent may mount: firmware for the NIC drivers, the simulated NICs'
/// flash, the dataplane's usage spool.
const HOST_PATHS: [&str; 3] = [
    "/lib/firmware/nexus",
    "/var/lib/nexus/sim",
    "/var/lib/nexus/usage-spool",
];

/// Whether `n` is a valid container port name (IANA_SVC_NAME: at most 15 characters, lower-case
/// letters, digits and inner single hyphens, at least one letter), which the API server enforces.
fn iana_svc_name(n: &str) -> bool {
    (1..=15).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn check_workloads(name: &str, r: &Rendered) {
    let src = std::fs::read_to_string(repo_root().join("deploy/base/agent.yaml")).unwrap();
    for (kind, w, t) in workloads(r) {
        let p = spec(t);
        let ctx = format!("{name}: {kind} {w}");
        let pod_sc = p.security_context.clone().unwrap_or_default();
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault"),
            "{ctx}: seccomp"
        );
        assert!(
            !p.host_network.unwrap_or(false)
                && !p.host_pid.unwrap_or(false)
                && !p.host_ipc.unwrap_or(false),
            "{ctx}: no host namespaces"
        );
        for (c, init) in all_containers(p) {
            let ctx = format!("{ctx} container {}", c.name);
            let sc = c.security_context.clone().unwrap_or_default();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{ctx}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{ctx}");
            assert_ne!(sc.privileged, Some(true), "{ctx}");
            let caps = sc.capabilities.clone().unwrap_or_default();
            assert!(
                caps.drop.unwrap_or_default().contains(&"ALL".to_owned()),
                "{ctx}: drop ALL"
            );
            let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
            if (w.as_str(), c.name.as_str()) == ROOT_EXCEPTION {
                assert!(init, "{ctx}: the root exception is an init container");
                assert_eq!(
                    caps.add,
                    Some(vec!["CHOWN".to_owned()]),
                    "{ctx}: CAP_CHOWN only"
                );
            } else {
                assert!(non_root, "{ctx}: runs as non-root");
                assert!(
                    caps.add.unwrap_or_default().is_empty(),
                    "{ctx}: adds no capability"
                );
            }
            let res = c.resources.clone().unwrap_or_default();
            let req = res.requests.unwrap_or_default();
            let lim = res.limits.unwrap_or_default();
            assert!(
                req.contains_key("cpu") && req.contains_key("memory"),
                "{ctx}: requests"
            );
            assert!(
                lim.contains_key("memory") && lim.contains_key("cpu"),
                "{ctx}: limits"
            );
            assert!(
                c.image
                    .as_deref()
                    .is_some_and(|i| i.contains(':') && !i.ends_with(":latest")),
                "{ctx}: a pinned image tag"
            );
            for port in c.ports.iter().flatten() {
                if let Some(n) = &port.name {
                    assert!(
                        iana_svc_name(n),
                        "{ctx}: port name {n:?} is no IANA_SVC_NAME"
                    );
                }
                if let Some(hp) = port.host_port {
                    // The only host port: the dataplane's, checked in check_dataplane.
                    assert_eq!(w, "nexus-agent", "{ctx}: only the agent takes a host port");
                    let proto = port.protocol.as_deref().unwrap_or("TCP");
                    assert!(
                        src.contains(&format!("# hostPort {hp}/{proto}:")),
                        "{ctx}: host port {hp}/{proto} has no justifying comment in agent.yaml"
                    );
                }
            }
            if !init && w != NO_PROBES {
                assert!(
                    c.readiness_probe.is_some() && c.liveness_probe.is_some(),
                    "{ctx}: probes"
                );
                let ports: BTreeSet<String> = c
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| p.name.clone())
                    .collect();
                for probe in [&c.readiness_probe, &c.liveness_probe]
                    .into_iter()
                    .flatten()
                {
                    if let Some(h) = &probe.http_get {
                        let port = serde_json::to_value(&h.port).unwrap();
                        assert!(
                            port.as_str().is_some_and(|n| ports.contains(n)),
                            "{ctx}: probe port {port} is a named container port"
                        );
                    }
                }
            }
        }
        for v in p.volumes.iter().flatten() {
            if let Some(h) = &v.host_path {
                assert_eq!(w, "nexus-agent", "{ctx}: only the agent mounts host paths");
                assert!(
                    HOST_PATHS.contains(&h.path.as_str()),
                    "{ctx}: unexpected host path {}",
                    h.path
                );
                assert!(
                    src.contains(&format!("# hostPath {}:", h.path)),
                    "{ctx}: host path {} has no justifying comment in agent.yaml",
                    h.path
                );
            }
        }
    }
    let agent = workloads(r)
        .into_iter()
        .find(|(_, n, _)| n == NO_PROBES)
        .unwrap();
    assert!(
        src.contains("No probes:"),
        "the agent's lack of probes is explained"
    );
    let args = spec(agent.2).containers[0].args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--bundle-server".to_owned()),
        "the agent fetches bundles from the controller (so it needs no ConfigMap access)"
    );
}

fn check_replicas_pdbs(name: &str, r: &Rendered) {
    for d in &r.deployments {
        let n = name_of(&d.metadata);
        let s = d.spec.as_ref().unwrap();
        assert_eq!(
            s.replicas,
            Some(2),
            "{name}: Deployment {n} runs two replicas"
        );
    }
    for (kind, w, t) in workloads(r) {
        if kind == "DaemonSet" {
            continue;
        }
        let l = labels(t);
        let pdbs: Vec<&PodDisruptionBudget> = r
            .pdbs
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|sel| selects(sel, &l))
            })
            .collect();
        assert_eq!(
            pdbs.len(),
            1,
            "{name}: {kind} {w} has one PodDisruptionBudget"
        );
    }
    // Leader election: both controllers take a Lease under their pod's name.
    for d in &r.deployments {
        let n = name_of(&d.metadata);
        if !n.ends_with("-controller") {
            continue;
        }
        let c = &spec(&d.spec.as_ref().unwrap().template).containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert!(!args.contains(&"--no-leader-election".to_owned()), "{n}");
        assert!(
            c.env.iter().flatten().any(|e| e.name == "POD_NAME"),
            "{n}: its Lease identity is the pod name"
        );
    }
}

fn check_services_monitors(name: &str, r: &Rendered) {
    let ws = workloads(r);
    for s in &r.services {
        let n = name_of(&s.metadata);
        let sp = s.spec.as_ref().unwrap();
        let sel = LabelSelector {
            match_labels: sp.selector.clone(),
            ..Default::default()
        };
        let backing: Vec<_> = ws
            .iter()
            .filter(|(_, _, t)| selects(&sel, &labels(t)))
            .collect();
        assert_eq!(backing.len(), 1, "{name}: Service {n} selects one workload");
        let ports: BTreeSet<String> = spec(backing[0].2)
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.clone())
            .collect();
        for p in sp.ports.iter().flatten() {
            let target = serde_json::to_value(&p.target_port).unwrap();
            assert!(
                target.as_str().is_some_and(|t| ports.contains(t)),
                "{name}: Service {n} port {:?} targets a named container port",
                p.name
            );
        }
    }
    for m in &r.monitors {
        let sel: LabelSelector = serde_json::from_value(m["spec"]["selector"].clone()).unwrap();
        let svcs: Vec<&Service> = r
            .services
            .iter()
            .filter(|s| selects(&sel, &s.metadata.labels.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            svcs.len(),
            1,
            "{name}: ServiceMonitor {} selects one Service",
            m["metadata"]["name"]
        );
        for e in m["spec"]["endpoints"].as_array().unwrap() {
            let port = e["port"].as_str().unwrap();
            assert!(
                svcs[0]
                    .spec
                    .as_ref()
                    .unwrap()
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.name.as_deref() == Some(port)),
                "{name}: ServiceMonitor port {port}"
            );
            assert_eq!(e["path"], "/metrics");
        }
    }
    // PodMonitors: pods behind no Service (the node dataplanes, in the agent's pods).
    for m in &r.pod_monitors {
        let mn = m["metadata"]["name"].as_str().unwrap_or_default();
        let sel: LabelSelector = serde_json::from_value(m["spec"]["selector"].clone()).unwrap();
        let backing: Vec<_> = ws
            .iter()
            .filter(|(_, _, t)| selects(&sel, &labels(t)))
            .collect();
        assert_eq!(
            backing.len(),
            1,
            "{name}: PodMonitor {mn} selects one workload"
        );
        let ports: BTreeSet<String> = spec(backing[0].2)
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.name.clone())
            .collect();
        let endpoints = m["spec"]["podMetricsEndpoints"].as_array();
        assert!(
            endpoints.is_some_and(|e| !e.is_empty()),
            "{name}: PodMonitor {mn} has endpoints"
        );
        for e in endpoints.into_iter().flatten() {
            let port = e["port"].as_str().unwrap_or_default();
            assert!(
                ports.contains(port),
                "{name}: PodMonitor {mn} port {port:?} is a named container port"
            );
            assert_eq!(e["path"], "/metrics");
        }
    }
    // Every Deployment with an HTTP port is scraped.
    let scraped: BTreeSet<String> = r
        .monitors
        .iter()
        .map(|m| m["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    for d in &r.deployments {
        assert!(
            scraped.contains(name_of(&d.metadata)),
            "{name}: {} is scraped",
            name_of(&d.metadata)
        );
    }
}

/// Secrets and ConfigMaps the pods read: rendered, published by the CA, or the operator's
/// (documented).
fn check_references(name: &str, r: &Rendered, external: &[&str]) {
    let mut wanted = BTreeSet::new();
    for (_, _, t) in workloads(r) {
        let p = spec(t);
        for (c, _) in all_containers(p) {
            for e in c.env.iter().flatten() {
                if let Some(k) = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                {
                    wanted.insert(("Secret", k.name.clone()));
                }
            }
        }
        for v in p.volumes.iter().flatten() {
            if let Some(s) = &v.secret {
                wanted.insert(("Secret", s.secret_name.clone().unwrap()));
            }
            if let Some(c) = &v.config_map {
                wanted.insert(("ConfigMap", c.name.clone()));
            }
        }
    }
    let published = ca_publishes(r);
    let have: BTreeSet<(&str, String)> = r
        .secrets
        .iter()
        .map(|s| ("Secret", name_of(&s.metadata).to_owned()))
        .chain(published.client_certs.keys().map(|n| ("Secret", n.clone())))
        .chain(
            r.configmaps
                .iter()
                .map(|c| ("ConfigMap", name_of(&c.metadata).to_owned())),
        )
        .chain(std::iter::once(("ConfigMap", published.root.clone())))
        .collect();
    let missing: BTreeSet<String> = wanted.difference(&have).map(|(_, n)| n.clone()).collect();
    let external: BTreeSet<String> = external.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        missing, external,
        "{name}: objects the operator must create"
    );
    let doc = std::fs::read_to_string(
        repo_root()
            .join("deploy/overlays")
            .join(name)
            .join("kustomization.yaml"),
    )
    .unwrap()
        + &std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    for n in &external {
        assert!(
            doc.contains(n.as_str()),
            "{name}: how to create {n} is documented"
        );
    }
}

fn check_crds(r: &Rendered) {
    let mut names = BTreeSet::new();
    for f in ["fabric", "modelidentity", "nexusnode", "routingdomain"] {
        let ours = std::fs::read_to_string(repo_root().join(format!("deploy/base/crds/{f}.yaml")))
            .unwrap();
        let generated =
            std::fs::read_to_string(repo_root().join(format!("crds/{f}.yaml"))).unwrap();
        assert!(
            ours == generated,
            "deploy/base/crds/{f}.yaml differs from crds/{f}.yaml: cp crds/*.yaml deploy/base/crds/"
        );
        names.insert(f);
    }
    assert_eq!(r.crds.len(), names.len(), "every CRD is installed");
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS to the CA: what it serves and publishes, who mounts it, what scrapes it.

/// The workloads that call the CA, and the role their client certificate must carry.
const CA_CALLERS: [(&str, &str); 2] = [
    ("nexus-identity-controller", "controller"),
    ("nexus-cloud", "cloud-api"),
];

/// How a caller names its CA files (environment variable, file of the mounted Secret).
const CA_CALLER_FILES: [(&str, &str); 3] = [
    ("NEXUS_CA_TLS_CA", "ca.crt"),
    ("NEXUS_CA_TLS_CERT", "tls.crt"),
    ("NEXUS_CA_TLS_KEY", "tls.key"),
];

/// The values of `flag` in `args` (`--flag value` or `--flag=value`).
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            let v = it
                .next()
                .unwrap_or_else(|| panic!("{flag} without a value"));
            out.push(v.clone());
        } else if let Some(v) = a.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            out.push(v.to_owned());
        }
    }
    out
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// The pod spec of workload `w`.
fn workload<'a>(r: &'a Rendered, w: &str) -> &'a PodSpec {
    let (_, _, t) = workloads(r)
        .into_iter()
        .find(|(_, n, _)| n == w)
        .unwrap_or_else(|| panic!("{w} is deployed"));
    spec(t)
}

fn ca_container(r: &Rendered) -> &Container {
    let cs = &workload(r, "nexus-ca").containers;
    assert_eq!(cs.len(), 1, "the CA runs one container");
    &cs[0]
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// What the CA's args tell it to serve and publish.
struct CaTls {
    /// Secret → the role of the client certificate the CA keeps in it (`--publish-client-cert`).
    client_certs: BTreeMap<String, String>,
    /// The ConfigMap holding its root (`--publish-root`).
    root: String,
    /// The names of its server certificate (`--tls-server-name`).
    server_names: BTreeSet<String>,
    /// The roles a client certificate may carry (`--tls-client-role`).
    client_roles: BTreeSet<String>,
}

fn ca_publishes(r: &Rendered) -> CaTls {
    let args = ca_container(r).args.clone().unwrap_or_default();
    let in_ns = |target: &str, flag: &str| -> String {
        let (ns, n) = target
            .split_once('/')
            .unwrap_or_else(|| panic!("{flag} {target}: NAMESPACE/NAME"));
        assert_eq!(ns, NS, "{flag} {target}: published in {NS}");
        n.to_owned()
    };
    let mut client_certs = BTreeMap::new();
    for v in flag_values(&args, "--publish-client-cert") {
        let (target, role) = v
            .split_once('=')
            .unwrap_or_else(|| panic!("--publish-client-cert {v}: NAMESPACE/SECRET=ROLE"));
        let secret = in_ns(target, "--publish-client-cert");
        assert!(
            client_certs.insert(secret, role.to_owned()).is_none(),
            "--publish-client-cert {v}: one role per Secret"
        );
    }
    let roots = flag_values(&args, "--publish-root");
    assert_eq!(roots.len(), 1, "the CA publishes its root once: {roots:?}");
    CaTls {
        client_certs,
        root: in_ns(&roots[0], "--publish-root"),
        server_names: flag_values(&args, "--tls-server-name")
            .into_iter()
            .collect(),
        client_roles: flag_values(&args, "--tls-client-role")
            .into_iter()
            .collect(),
    }
}

fn check_ca_tls(name: &str, r: &Rendered) {
    let tls = ca_publishes(r);
    let pod = workload(r, "nexus-ca");
    let ca = ca_container(r);
    let args = ca.args.clone().unwrap_or_default();
    let ctx = format!("{name}: the CA");

    // TLS, with a server certificate it writes into a writable per-replica volume.
    let dirs = flag_values(&args, "--tls-dir");
    assert_eq!(dirs.len(), 1, "{ctx} serves TLS (--tls-dir)");
    let m = ca
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == dirs[0])
        .unwrap_or_else(|| {
            panic!(
                "{ctx}: --tls-dir {} is a volume (read-only root FS)",
                dirs[0]
            )
        });
    assert_ne!(m.read_only, Some(true), "{ctx}: --tls-dir is writable");
    let v = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap();
    assert!(
        v.empty_dir.is_some(),
        "{ctx}: --tls-dir is an emptyDir (each replica's own key, gone with the pod)"
    );
    for n in [
        "nexus-ca",
        "nexus-ca.nexus-system.svc",
        "nexus-ca.nexus-system.svc.cluster.local",
    ] {
        assert!(
            tls.server_names.contains(n),
            "{ctx}: its certificate names {n}"
        );
    }
    for (p, what) in [
        (&ca.readiness_probe, "readiness"),
        (&ca.liveness_probe, "liveness"),
    ] {
        let h = p
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{ctx}: an HTTP {what} probe"));
        assert_eq!(
            h.scheme.as_deref(),
            Some("HTTPS"),
            "{ctx}: {what} probe over HTTPS"
        );
    }

    // No bearer token anywhere: callers authenticate with client certificates only.
    for flag in ["--tls-allow-token", "--token", "--token-file"] {
        assert!(!has_flag(&args, flag), "{ctx}: no {flag}");
    }
    for (_, w, t) in workloads(r) {
        for (c, _) in all_containers(spec(t)) {
            for e in c.env.iter().flatten() {
                assert!(
                    !["NEXUS_CA_TOKEN", "NEXUS_CA_TOKEN_FILE"].contains(&e.name.as_str()),
                    "{name}: {w} has no CA token ({})",
                    e.name
                );
            }
            for flag in ["--ca-token", "--ca-token-file"] {
                let args = c.args.clone().unwrap_or_default();
                assert!(!has_flag(&args, flag), "{name}: {w} has no {flag}");
            }
        }
    }
    if let Some(s) = r
        .secrets
        .iter()
        .find(|s| name_of(&s.metadata) == "nexus-ca")
    {
        let keys: BTreeSet<&str> = s
            .data
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .chain(s.string_data.iter().flatten().map(|(k, _)| k.as_str()))
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["kek"]),
            "{name}: Secret nexus-ca holds only the KEK"
        );
    }

    // What it publishes: certificates for roles it accepts, objects no overlay renders.
    for (secret, role) in &tls.client_certs {
        assert!(
            tls.client_roles.contains(role),
            "{ctx}: publishes {secret} with role {role}, which --tls-client-role does not accept"
        );
    }
    for s in &r.secrets {
        assert!(
            !tls.client_certs.contains_key(name_of(&s.metadata)),
            "{name}: Secret {} is the CA's to write, not the overlay's",
            name_of(&s.metadata)
        );
    }
    for c in &r.configmaps {
        assert_ne!(
            name_of(&c.metadata),
            tls.root,
            "{name}: the root ConfigMap is the CA's to write"
        );
    }

    // Its callers: https:// to a name of its certificate, the files of the Secret the CA
    // publishes for their role, mounted whole as a directory.
    let grpc = ca
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .map(|p| p.container_port)
        .expect("the CA's grpc port");
    let mut callers: BTreeSet<(String, String)> = BTreeSet::new();
    for (_, w, t) in workloads(r) {
        let p = spec(t);
        for (c, _) in all_containers(p) {
            let args = c.args.clone().unwrap_or_default();
            let Some(endpoint) = env_value(c, "NEXUS_CA_ENDPOINT")
                .map(str::to_owned)
                .or_else(|| flag_values(&args, "--ca-endpoint").pop())
            else {
                continue;
            };
            let ctx = format!("{name}: {w} container {}", c.name);
            let rest = endpoint
                .strip_prefix("https://")
                .unwrap_or_else(|| panic!("{ctx}: dials the CA over https://, not {endpoint}"));
            let (host, port) = rest
                .trim_end_matches('/')
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{ctx}: {endpoint} names its port"));
            let expected = env_value(c, "NEXUS_CA_TLS_SERVER_NAME").unwrap_or(host);
            assert!(
                tls.server_names.contains(expected),
                "{ctx}: expects {expected}, not a name of the CA's certificate {:?}",
                tls.server_names
            );
            assert_eq!(
                port.parse::<i32>().ok(),
                Some(grpc),
                "{ctx}: the CA's gRPC port"
            );
            let mut dirs = BTreeSet::new();
            for (env, file) in CA_CALLER_FILES {
                let path = env_value(c, env).unwrap_or_else(|| panic!("{ctx}: sets {env}"));
                let dir = path
                    .strip_suffix(&format!("/{file}"))
                    .unwrap_or_else(|| panic!("{ctx}: {env}={path} is the Secret's {file}"));
                dirs.insert(dir.to_owned());
            }
            assert_eq!(
                dirs.len(),
                1,
                "{ctx}: the CA files are in one directory: {dirs:?}"
            );
            let dir = dirs.pop_first().unwrap();
            let m = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == dir)
                .unwrap_or_else(|| panic!("{ctx}: {dir} is a mounted volume"));
            assert_eq!(m.read_only, Some(true), "{ctx}: {dir} is read-only");
            let role = CA_CALLERS
                .iter()
                .find(|(n, _)| *n == w)
                .map(|(_, r)| *r)
                .unwrap_or_else(|| panic!("{ctx}: calls the CA but is not in CA_CALLERS"));
            let v = p
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == m.name)
                .unwrap();
            let secret = v
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.clone())
                .unwrap_or_else(|| panic!("{ctx}: {dir} is a Secret volume"));
            assert_eq!(
                tls.client_certs.get(&secret).map(String::as_str),
                Some(role),
                "{ctx}: mounts {secret}, which the CA must publish with role {role}"
            );
            callers.insert((w.clone(), secret));
        }
    }
    // Every mount of a published Secret: a caller's, whole, never subPath (kubelet does not
    // refresh subPath mounts, so a renewed certificate would never arrive).
    let mut mounted: BTreeSet<(String, String)> = BTreeSet::new();
    for (_, w, t) in workloads(r) {
        let p = spec(t);
        for v in p.volumes.iter().flatten() {
            let Some(s) = &v.secret else { continue };
            let secret = s.secret_name.clone().unwrap_or_default();
            if !tls.client_certs.contains_key(&secret) {
                continue;
            }
            let ctx = format!("{name}: {w} volume {}", v.name);
            assert!(s.items.is_none(), "{ctx}: the whole Secret, no items");
            assert_ne!(
                s.optional,
                Some(true),
                "{ctx}: the pod waits for its certificate"
            );
            for (c, _) in all_containers(p) {
                for m in c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .filter(|m| m.name == v.name)
                {
                    assert!(
                        m.sub_path.is_none() && m.sub_path_expr.is_none(),
                        "{ctx}: mounted as a directory in {}, no subPath",
                        c.name
                    );
                }
            }
            mounted.insert((w.clone(), secret));
        }
    }
    assert_eq!(
        mounted, callers,
        "{name}: only the CA's callers mount its client certificates"
    );
    assert_eq!(
        callers
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<BTreeSet<_>>(),
        CA_CALLERS.iter().map(|(w, _)| *w).collect(),
        "{name}: the CA's callers"
    );
    assert_eq!(
        callers.iter().map(|(_, s)| s).collect::<BTreeSet<_>>(),
        tls.client_certs.keys().collect(),
        "{name}: the CA publishes exactly the client certificates its callers mount"
    );

    // Prometheus scrapes it over https, trusting the root it publishes.
    let monitor = r
        .monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "nexus-ca")
        .expect("the CA is scraped");
    for e in monitor["spec"]["endpoints"].as_array().unwrap() {
        assert_eq!(e["scheme"], "https", "{name}: the CA is scraped over https");
        let t = &e["tlsConfig"];
        assert_eq!(
            t["ca"]["configMap"]["name"].as_str(),
            Some(tls.root.as_str()),
            "{name}: Prometheus trusts the root the CA publishes"
        );
        assert_eq!(t["ca"]["configMap"]["key"], "ca.crt");
        let sn = t["serverName"].as_str().unwrap_or_default();
        assert!(
            tls.server_names.contains(sn),
            "{name}: Prometheus verifies {sn:?}, a name of the CA's certificate"
        );
        assert!(
            t.get("insecureSkipVerify").is_none_or(|v| v == false),
            "{name}: Prometheus verifies the CA"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The node dataplane, which the agent runs as its child in kube mode.

/// The Secret holding the dataplane's MIC: the operator's (README: from a ModelIdentity).
const DATAPLANE_MIC_SECRET: &str = "nexus-dataplane-mic";
/// The agent container's port serving the dataplane's `/metrics`.
const DATAPLANE_METRICS_PORT: &str = "dp-metrics";

/// What deploy/Dockerfile builds and ships.
struct Dockerfile {
    /// The packages of the build stage's `cargo build -p …`.
    built: BTreeSet<String>,
    /// Per target: destination → the binary `COPY --from=build /src/target/release/<binary>`.
    copies: BTreeMap<String, BTreeMap<String, String>>,
}

fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    let text = text.replace("\\\n", " ");
    let mut d = Dockerfile {
        built: BTreeSet::new(),
        copies: BTreeMap::new(),
    };
    let mut stage = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("FROM") => {
                stage = words
                    .iter()
                    .position(|w| w.eq_ignore_ascii_case("AS"))
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
                    .unwrap_or_default();
            }
            Some("RUN") if stage == "build" && line.contains("cargo build") => {
                for w in words.windows(2) {
                    if ["-p", "--package"].contains(&w[0]) {
                        d.built.insert(w[1].to_owned());
                    }
                }
            }
            Some("COPY") if words.contains(&"--from=build") && words.len() >= 4 => {
                let (src, dst) = (words[words.len() - 2], words[words.len() - 1]);
                if let Some(bin) = src.strip_prefix("/src/target/release/") {
                    d.copies
                        .entry(stage.clone())
                        .or_default()
                        .insert(dst.to_owned(), bin.to_owned());
                }
            }
            _ => {}
        }
    }
    d
}

/// The downward-API field an environment variable of `c` comes from.
fn env_field<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
}

/// The mount of `c` at `path` and its volume.
fn mounted<'a>(
    pod: &'a PodSpec,
    c: &'a Container,
    path: &str,
    ctx: &str,
) -> (&'a VolumeMount, &'a Volume) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("{ctx}: {path} is a mounted volume"));
    let v = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("{ctx}: volume {} exists", m.name));
    (m, v)
}

/// That Service `svc` (this namespace) serves port `port` (check_services_monitors checks that
/// it targets a named container port of the workload behind it).
fn service_serves(r: &Rendered, svc: &str, port: &str, ctx: &str) {
    let s = r
        .services
        .iter()
        .find(|s| name_of(&s.metadata) == svc)
        .unwrap_or_else(|| panic!("{ctx}: Service {svc} is deployed"));
    let port: i32 = port
        .parse()
        .unwrap_or_else(|_| panic!("{ctx}: port {port:?}"));
    assert!(
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .any(|p| p.port == port),
        "{ctx}: Service {svc} serves port {port}"
    );
}

/// The default `spec.dataplane.udpPort` of a CRD, in every version (as a property default and
/// in the default of `dataplane` itself).
fn default_udp_port(r: &Rendered, crd: &str) -> i64 {
    let c = r
        .crds
        .iter()
        .find(|c| name_of(&c.metadata) == crd)
        .unwrap_or_else(|| panic!("CRD {crd} is installed"));
    let mut ports = BTreeSet::new();
    for v in &c.spec.versions {
        let schema = serde_json::to_value(&v.schema).unwrap();
        let dp = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["dataplane"];
        ports.insert(dp["properties"]["udpPort"]["default"].as_i64());
        ports.insert(dp["default"]["udpPort"].as_i64());
    }
    assert_eq!(ports.len(), 1, "{crd}: one default udpPort: {ports:?}");
    ports
        .pop_first()
        .flatten()
        .unwrap_or_else(|| panic!("{crd}: spec.dataplane.udpPort has a default"))
}

fn check_dataplane(name: &str, r: &Rendered) {
    let pod = workload(r, "nexus-agent");
    assert_eq!(
        pod.containers.len(),
        1,
        "{name}: the agent runs one container"
    );
    let c = &pod.containers[0];
    let ctx = format!("{name}: the agent");
    let args = c.args.clone().unwrap_or_default();
    let src = std::fs::read_to_string(repo_root().join("deploy/base/agent.yaml")).unwrap();

    // The binary it supervises is in its image.
    let bins = flag_values(&args, "--dataplane-bin");
    assert_eq!(
        bins.len(),
        1,
        "{ctx} supervises the dataplane (--dataplane-bin)"
    );
    let image = c.image.as_deref().unwrap_or_default();
    let target = image
        .rsplit_once(':')
        .map_or(image, |(i, _)| i)
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let df = dockerfile();
    let copied = df.copies.get(target).unwrap_or_else(|| {
        panic!("{ctx}: deploy/Dockerfile has a target {target} (its image {image})")
    });
    let bin = copied.get(&bins[0]).unwrap_or_else(|| {
        panic!(
            "{ctx}: --dataplane-bin {} is copied into the {target} image: {copied:?}",
            bins[0]
        )
    });
    assert_eq!(
        bin, "nexus-dataplane",
        "{ctx}: --dataplane-bin is nexus-dataplane"
    );
    assert!(
        df.built.contains(bin),
        "{ctx}: the build stage builds -p {bin}: {:?}",
        df.built
    );

    // What the dataplane is run with. The supervisor sets the listen address and MTU from the
    // NexusNode and the HTTP address from --dataplane-http; the rest are --dataplane-args.
    let dp = flag_values(&args, "--dataplane-arg");
    for f in ["--listen", "--mtu-upper-bound", "--http-listen"] {
        assert!(
            !has_flag(&dp, f),
            "{ctx}: {f} is the supervisor's to set, not a --dataplane-arg"
        );
    }
    let one = |flag: &str| -> String {
        let v = flag_values(&dp, flag);
        assert_eq!(v.len(), 1, "{ctx}: --dataplane-arg={flag}=… once: {v:?}");
        v[0].clone()
    };
    let grace: i64 = flag_values(&args, "--dataplane-grace")
        .pop()
        .map_or(15, |g| g.parse().expect("--dataplane-grace is seconds"));
    let term = pod.termination_grace_period_seconds.unwrap_or(30);
    assert!(
        grace < term,
        "{ctx}: the dataplane's drain (--dataplane-grace {grace}) ends within the pod's {term} s"
    );

    // NexStream: the CRDs' default UDP port, at the node's address through a hostPort.
    let udp = default_udp_port(r, "nexusnodes.nexus.dev");
    assert_eq!(
        default_udp_port(r, "fabrics.nexus.dev"),
        udp,
        "the Fabric's and the NexusNode's default dataplane ports agree"
    );
    let mut host_ports = Vec::new();
    for (_, w, t) in workloads(r) {
        for (k, _) in all_containers(spec(t)) {
            for p in k.ports.iter().flatten() {
                if let Some(hp) = p.host_port {
                    host_ports.push((
                        w.clone(),
                        k.name.clone(),
                        i64::from(p.container_port),
                        i64::from(hp),
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ));
                }
            }
        }
    }
    assert_eq!(
        host_ports,
        vec![(
            "nexus-agent".to_owned(),
            c.name.clone(),
            udp,
            udp,
            "UDP".to_owned()
        )],
        "{name}: the one host port is the dataplane's UDP {udp}, the CRDs' default udpPort"
    );
    assert!(
        !pod.host_network.unwrap_or(false),
        "{ctx}: a hostPort, no hostNetwork"
    );

    // Its HTTP port: on the pod's address, a named port, scraped by a PodMonitor.
    let http = flag_values(&args, "--dataplane-http");
    assert_eq!(http.len(), 1, "{ctx}: --dataplane-http");
    let (host, port) = http[0]
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{ctx}: --dataplane-http {} names a port", http[0]));
    assert_eq!(
        host, "$(POD_IP)",
        "{ctx}: the dataplane's /metrics is on the pod's address (loopback is not scrapeable)"
    );
    assert_eq!(
        env_field(c, "POD_IP"),
        Some("status.podIP"),
        "{ctx}: POD_IP"
    );
    let metrics = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(DATAPLANE_METRICS_PORT))
        .unwrap_or_else(|| panic!("{ctx}: a {DATAPLANE_METRICS_PORT} container port"));
    assert_eq!(
        metrics.container_port.to_string(),
        port,
        "{ctx}: {DATAPLANE_METRICS_PORT} is --dataplane-http's port"
    );
    assert_eq!(metrics.protocol.as_deref().unwrap_or("TCP"), "TCP");
    let agent_labels = workloads(r)
        .into_iter()
        .find(|(_, n, _)| n == "nexus-agent")
        .map(|(_, _, t)| labels(t))
        .unwrap();
    assert!(
        r.pod_monitors.iter().any(|m| {
            let sel: LabelSelector = serde_json::from_value(m["spec"]["selector"].clone()).unwrap();
            selects(&sel, &agent_labels)
                && m["spec"]["podMetricsEndpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| e["port"] == DATAPLANE_METRICS_PORT)
        }),
        "{name}: a PodMonitor scrapes the dataplanes' {DATAPLANE_METRICS_PORT}"
    );

    // Its MIC: the whole Secret as a directory (renewals arrive), its key readable by the agent's
    // group only.
    let mic = one("--mic-dir");
    let (m, v) = mounted(pod, c, &mic, &ctx);
    assert_eq!(m.read_only, Some(true), "{ctx}: {mic} is read-only");
    assert!(
        m.sub_path.is_none() && m.sub_path_expr.is_none(),
        "{ctx}: the MIC is mounted as a directory, no subPath"
    );
    let sv = v
        .secret
        .as_ref()
        .unwrap_or_else(|| panic!("{ctx}: --mic-dir {mic} is a Secret volume"));
    assert_eq!(
        sv.secret_name.as_deref(),
        Some(DATAPLANE_MIC_SECRET),
        "{ctx}: the MIC Secret"
    );
    assert!(
        sv.items.is_none(),
        "{ctx}: the whole Secret (tls.crt, tls.key, ca.crt)"
    );
    assert_eq!(sv.default_mode, Some(0o440), "{ctx}: the MIC key is 0440");
    let group = c.security_context.as_ref().and_then(|s| s.run_as_group);
    assert!(
        group.is_some() && pod.security_context.as_ref().and_then(|s| s.fs_group) == group,
        "{ctx}: the MIC key's group (fsGroup) is the agent's group"
    );
    if sv.optional == Some(true) {
        assert!(
            src.contains("Optional: without it"),
            "{ctx}: why the MIC may be missing is explained in agent.yaml"
        );
    }

    // The CRL: over HTTPS from the CA, trusting only the root the CA publishes, mounted.
    let tls = ca_publishes(r);
    let crl = one("--crl");
    let rest = crl
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("{ctx}: the CRL over https://, not {crl}"));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    assert_eq!(path, "v1/crl", "{ctx}: the CA's CRL endpoint");
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{ctx}: {crl} names its port"));
    assert!(
        tls.server_names.contains(host),
        "{ctx}: {host} is a name of the CA's certificate {:?}",
        tls.server_names
    );
    let ca_http = ca_container(r)
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .map(|p| p.container_port)
        .expect("the CA's http port");
    assert_eq!(
        port.parse::<i32>().ok(),
        Some(ca_http),
        "{ctx}: the CA's REST port"
    );
    service_serves(r, host.split('.').next().unwrap(), port, &ctx);
    let root = one("--crl-ca");
    let dir = root
        .strip_suffix("/ca.crt")
        .unwrap_or_else(|| panic!("{ctx}: --crl-ca {root} is the root ConfigMap's ca.crt"));
    let (m, v) = mounted(pod, c, dir, &ctx);
    assert_eq!(m.read_only, Some(true), "{ctx}: {dir} is read-only");
    assert!(
        m.sub_path.is_none() && m.sub_path_expr.is_none(),
        "{ctx}: the root is mounted as a directory (it is re-published), no subPath"
    );
    let cm = v
        .config_map
        .as_ref()
        .unwrap_or_else(|| panic!("{ctx}: {dir} is a ConfigMap volume"));
    assert_eq!(cm.name, tls.root, "{ctx}: the root the CA publishes");
    assert!(cm.items.is_none(), "{ctx}: the whole ConfigMap (ca.crt)");

    // Usage: to the cloud API with the usage token (from the environment, which the dataplane
    // inherits; never in the args), from a spool on the node's disk, under the node's name.
    let url = one("--usage-url");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or_else(|| panic!("{ctx}: --usage-url {url}"));
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{ctx}: {url} names its port"));
    assert_eq!(
        host,
        format!("nexus-cloud.{NS}.svc"),
        "{ctx}: usage goes to the cloud API"
    );
    service_serves(r, "nexus-cloud", port, &ctx);
    assert!(
        !has_flag(&dp, "--usage-token"),
        "{ctx}: the usage token is not an argument"
    );
    let token = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NEXUS_DATAPLANE_USAGE_TOKEN")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{ctx}: NEXUS_DATAPLANE_USAGE_TOKEN from a Secret"));
    assert_eq!(
        (token.name.as_str(), token.key.as_str()),
        ("nexus-cloud", "usage-token"),
        "{ctx}: the cloud API's usage token"
    );
    let spool = one("--usage-spool");
    let (m, v) = mounted(pod, c, &spool, &ctx);
    assert_ne!(m.read_only, Some(true), "{ctx}: the spool is writable");
    assert!(
        v.host_path.is_some(),
        "{ctx}: the usage spool survives pod restarts (hostPath), so usage is billed exactly once"
    );
    let spool_volume = m.name.clone();
    assert!(
        pod.init_containers.iter().flatten().any(|i| {
            let cmd = i.command.clone().unwrap_or_default();
            cmd.first().is_some_and(|c| c == "chown")
                && i.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == spool_volume && cmd.contains(&m.mount_path))
        }),
        "{ctx}: the spool's host directory is handed to the agent's user"
    );
    assert_eq!(
        one("--node-name"),
        "$(NODE_NAME)",
        "{ctx}: usage keys name the node (stable across pod restarts)"
    );
    assert_eq!(
        env_field(c, "NODE_NAME"),
        Some("spec.nodeName"),
        "{ctx}: NODE_NAME"
    );
}

// ---------------------------------------------------------------------------------------------
// NetworkPolicies: the flows they allow, computed, against the drawn list.

/// Something traffic comes from or goes to.
#[derive(Debug, Clone)]
struct Peer {
    name: String,
    /// In-cluster pods: their namespace's labels and their own.
    ns_labels: Option<BTreeMap<String, String>>,
    pod_labels: BTreeMap<String, String>,
    in_ns: bool,
    /// (port, protocol) it listens on.
    ports: Vec<(i32, String)>,
}

fn l(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn peers(r: &Rendered) -> Vec<Peer> {
    let nsl = l(&[("kubernetes.io/metadata.name", NS)]);
    let mut ps: Vec<Peer> = workloads(r)
        .into_iter()
        .map(|(_, n, t)| Peer {
            name: n,
            ns_labels: Some(nsl.clone()),
            pod_labels: labels(t),
            in_ns: true,
            ports: spec(t)
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .map(|p| {
                    (
                        p.container_port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect(),
        })
        .collect();
    let ext = |name: &str, ports: Vec<(i32, String)>| Peer {
        name: name.into(),
        ns_labels: None,
        pod_labels: BTreeMap::new(),
        in_ns: false,
        ports,
    };
    let tcp = |p: i32| (p, "TCP".to_owned());
    ps.push(Peer {
        name: "dns".into(),
        ns_labels: Some(l(&[("kubernetes.io/metadata.name", "kube-system")])),
        pod_labels: l(&[("k8s-app", "kube-dns")]),
        in_ns: false,
        ports: vec![(53, "UDP".into()), tcp(53)],
    });
    ps.push(Peer {
        name: "monitoring".into(),
        ns_labels: Some(l(&[("kubernetes.io/metadata.name", "monitoring")])),
        pod_labels: l(&[("app.kubernetes.io/name", "prometheus")]),
        in_ns: false,
        ports: vec![],
    });
    // A pod of another namespace (a tenant's client, say): what `namespaceSelector: {}` admits
    // beyond this namespace and `monitoring`.
    ps.push(Peer {
        name: "other-pod".into(),
        ns_labels: Some(l(&[("kubernetes.io/metadata.name", "tenant")])),
        pod_labels: l(&[("app.kubernetes.io/name", "client")]),
        in_ns: false,
        ports: vec![],
    });
    ps.push(ext("kube-api", vec![tcp(443), tcp(6443)]));
    ps.push(ext("external-postgres", vec![tcp(5432)]));
    ps.push(ext("outside", vec![]));
    ps
}

fn peer_matches(p: &k8s_openapi::api::networking::v1::NetworkPolicyPeer, who: &Peer) -> bool {
    if p.ip_block.is_some() {
        // Modelled as matching addresses outside the cluster's pods only.
        return who.ns_labels.is_none();
    }
    let Some(nsl) = &who.ns_labels else {
        return false;
    };
    let ns_ok = match &p.namespace_selector {
        Some(sel) => selects(sel, nsl),
        None => who.in_ns,
    };
    let pod_ok = p
        .pod_selector
        .as_ref()
        .is_none_or(|sel| selects(sel, &who.pod_labels));
    ns_ok && pod_ok
}

fn port_matches(
    ports: &Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPort>>,
    port: &(i32, String),
) -> bool {
    match ports {
        None => true,
        Some(ps) if ps.is_empty() => true,
        Some(ps) => ps.iter().any(|p| {
            let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let n = serde_json::to_value(&p.port).unwrap();
            proto == port.1 && n.as_i64() == Some(i64::from(port.0))
        }),
    }
}

/// Whether `policies` let `port` of `dst` be reached from `src`, on each side that is a pod here.
fn allowed(policies: &[NetworkPolicy], src: &Peer, dst: &Peer, port: &(i32, String)) -> bool {
    let side =
        |me: &Peer, other: &Peer, ingress: bool| -> bool {
            if !me.in_ns {
                return true;
            }
            let mut isolated = false;
            let mut ok = false;
            for np in policies {
                let s = np.spec.as_ref().unwrap();
                if !selects(&s.pod_selector.clone().unwrap_or_default(), &me.pod_labels) {
                    continue;
                }
                let types = s.policy_types.clone().unwrap_or_default();
                let kind = if ingress { "Ingress" } else { "Egress" };
                if !types.iter().any(|t| t == kind) {
                    continue;
                }
                isolated = true;
                if ingress {
                    for rule in s.ingress.iter().flatten() {
                        let from_ok = rule.from.as_ref().is_none_or(|f| {
                            f.is_empty() || f.iter().any(|p| peer_matches(p, other))
                        });
                        ok |= from_ok && port_matches(&rule.ports, port);
                    }
                } else {
                    for rule in s.egress.iter().flatten() {
                        let to_ok = rule.to.as_ref().is_none_or(|t| {
                            t.is_empty() || t.iter().any(|p| peer_matches(p, other))
                        });
                        ok |= to_ok && port_matches(&rule.ports, port);
                    }
                }
            }
            !isolated || ok
        };
    side(src, dst, false) && side(dst, src, true)
}

fn flows(r: &Rendered) -> BTreeSet<String> {
    let ps = peers(r);
    let mut out = BTreeSet::new();
    for src in &ps {
        for dst in &ps {
            // Pods here and the outside clients open connections; DNS, the API server and an
            // external database only answer.
            let initiates = src.in_ns || src.ports.is_empty();
            if src.name == dst.name || !(src.in_ns || dst.in_ns) || !initiates {
                continue;
            }
            for port in &dst.ports {
                if allowed(&r.policies, src, dst, port) {
                    out.insert(format!(
                        "{} -> {}:{}/{}",
                        src.name, dst.name, port.0, port.1
                    ));
                }
            }
        }
    }
    out
}

/// The flows ARCHITECTURE.md draws (its `deploy/` section), as the policies must allow them.
fn expected_flows(overlay: &str) -> BTreeSet<String> {
    let mut f: Vec<String> = [
        "nexus-identity-controller -> nexus-ca:9443/TCP",
        "nexus-cloud -> nexus-ca:9443/TCP",
        "nexus-agent -> nexus-rollout-controller:7602/TCP",
        "nexus-ca -> nexus-cloud:8080/TCP",
        "nexus-rollout-controller -> nexus-cloud:8080/TCP",
        // The RoutingDomain controller (in the rollout controller): the CRL and ZK key.
        "nexus-rollout-controller -> nexus-ca:9080/TCP",
        "outside -> nexus-cloud:8080/TCP",
        "other-pod -> nexus-cloud:8080/TCP",
        "monitoring -> nexus-cloud:8080/TCP",
        "outside -> nexus-ca:9080/TCP",
        "other-pod -> nexus-ca:9080/TCP",
        "monitoring -> nexus-ca:9080/TCP",
        "monitoring -> nexus-rollout-controller:7602/TCP",
        "monitoring -> nexus-identity-controller:7602/TCP",
        // The dataplane in the agent's pod: the CRL, usage; NexStream from every pod of every
        // namespace (not from outside the cluster's pods); its /metrics.
        "nexus-agent -> nexus-ca:9080/TCP",
        "nexus-agent -> nexus-cloud:8080/TCP",
        "other-pod -> nexus-agent:7400/UDP",
        "monitoring -> nexus-agent:7400/UDP",
        "monitoring -> nexus-agent:7701/TCP",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for w in [
        "nexus-rollout-controller",
        "nexus-identity-controller",
        "nexus-agent",
        "nexus-ca",
    ] {
        f.push(format!("{w} -> kube-api:443/TCP"));
        f.push(format!("{w} -> kube-api:6443/TCP"));
    }
    let mut pods = vec![
        "nexus-rollout-controller",
        "nexus-identity-controller",
        "nexus-ca",
        "nexus-cloud",
        "nexus-agent",
    ];
    match overlay {
        "dev" => {
            pods.push("nexus-postgres");
            f.push("nexus-ca -> nexus-postgres:5432/TCP".into());
            f.push("nexus-cloud -> nexus-postgres:5432/TCP".into());
        }
        _ => {
            f.push("nexus-ca -> external-postgres:5432/TCP".into());
            f.push("nexus-cloud -> external-postgres:5432/TCP".into());
        }
    }
    for p in pods {
        f.push(format!("{p} -> dns:53/UDP"));
        f.push(format!("{p} -> dns:53/TCP"));
    }
    f.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// RBAC: what the code calls, found in its sources, against what is granted.

type Grant = (String, String, String); // (apiGroup, resource, verb)
/// A grant and the one object it is limited to (`resourceNames`), "" for any object.
type NamedGrant = (String, String, String, String);

/// The CA's kube calls: it publishes its client-certificate Secrets and its root ConfigMap by
/// reading each and server-side applying it (a PATCH, which needs `create` when the object is
/// missing). The scanner below follows kube-rs `Api<K>` bindings, which the CA's publisher may
/// not use, so its calls are listed here; whatever the scanner does find in the CA's sources
/// must be among them. `get` and `patch` are granted on the published names only.
const CA_CALLS: [(&str, &str, &str); 6] = [
    ("", "secrets", "get"),
    ("", "secrets", "patch"),
    ("", "secrets", "create"),
    ("", "configmaps", "get"),
    ("", "configmaps", "patch"),
    ("", "configmaps", "create"),
];

fn any_object(s: &BTreeSet<Grant>) -> BTreeSet<NamedGrant> {
    s.iter()
        .map(|(g, r, v)| (g.clone(), r.clone(), v.clone(), String::new()))
        .collect()
}

fn kind_resource(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "Fabric" => ("nexus.dev", "fabrics"),
        "NexusNode" => ("nexus.dev", "nexusnodes"),
        "ModelIdentity" => ("nexus.dev", "modelidentities"),
        "RoutingDomain" => ("nexus.dev", "routingdomains"),
        "Secret" => ("", "secrets"),
        "ConfigMap" => ("", "configmaps"),
        "Pod" => ("", "pods"),
        "Node" => ("", "nodes"),
        "Lease" => ("coordination.k8s.io", "leases"),
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The kube API calls in the sources under `dirs`: `Api<K>` bindings (let, parameters, struct
/// fields) followed through the file, calls on them, watchers, `Controller::owns`, and event
/// `Recorder`s. Server-side apply (`Patch::Apply`) needs `create` as well as `patch`.
fn used(dirs: &[&str]) -> BTreeSet<Grant> {
    let bind = regex::Regex::new(r"(\w+)\s*:\s*&?(?:kube::)?Api<(\w+)>").unwrap();
    let call = regex::Regex::new(
        r"\b(\w+)\s*\.\s*(get|get_opt|list|create|patch|patch_status|replace|delete|evict)\s*\(",
    )
    .unwrap();
    let inline = regex::Regex::new(
        r"(?:watcher\(|\.owns\(|\.watches\(|Controller::new\()\s*(?:kube::)?Api::<(\w+)>",
    )
    .unwrap();
    let watched =
        regex::Regex::new(r"(?:watcher\(|\.owns\(|\.watches\(|Controller::new\()\s*(\w+)\s*,")
            .unwrap();
    let mut out = BTreeSet::new();
    let mut add = |k: &str, sub: &str, verb: &str| {
        let (g, r) = kind_resource(k).unwrap_or_else(|| panic!("unknown kind {k}"));
        out.insert((g.to_owned(), format!("{r}{sub}"), verb.to_owned()));
    };
    let mut files = Vec::new();
    for d in dirs {
        rust_files(&repo_root().join(d), &mut files);
    }
    let mut recorder = false;
    for f in files {
        let raw = std::fs::read_to_string(&f).unwrap();
        // Drop comments and tests: only what the shipped code calls counts.
        let code: String = raw
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        recorder |= code.contains("Recorder::new");
        // Events in order: bindings update the name → kind map, calls use it.
        let mut events: Vec<(usize, bool, regex::Captures)> = bind
            .captures_iter(&code)
            .map(|c| (c.get(0).unwrap().start(), true, c))
            .chain(
                call.captures_iter(&code)
                    .map(|c| (c.get(0).unwrap().start(), false, c)),
            )
            .collect();
        events.sort_by_key(|(at, _, _)| *at);
        let mut kinds: BTreeMap<String, String> = BTreeMap::new();
        for (at, is_bind, c) in events {
            if is_bind {
                kinds.insert(c[1].to_owned(), c[2].to_owned());
                continue;
            }
            let Some(k) = kinds.get(&c[1]).cloned() else {
                continue;
            };
            if kind_resource(&k).is_none() {
                continue;
            }
            let args = &code[at..code.len().min(at + 400)];
            let args = args.split(".await").next().unwrap_or(args);
            match &c[2] {
                "get" | "get_opt" => add(&k, "", "get"),
                "list" => add(&k, "", "list"),
                "create" => add(&k, "", "create"),
                "replace" => add(&k, "", "update"),
                "delete" => add(&k, "", "delete"),
                "patch_status" => add(&k, "/status", "patch"),
                "evict" => add(&k, "/eviction", "create"),
                "patch" => {
                    add(&k, "", "patch");
                    if args.contains("Patch::Apply") {
                        add(&k, "", "create");
                    }
                }
                _ => unreachable!(),
            }
        }
        for c in inline.captures_iter(&code) {
            add(&c[1], "", "list");
            add(&c[1], "", "watch");
        }
        for c in watched.captures_iter(&code) {
            if let Some(k) = kinds.get(&c[1]).cloned() {
                add(&k, "", "list");
                add(&k, "", "watch");
            }
        }
    }
    if recorder {
        out.insert(("events.k8s.io".into(), "events".into(), "create".into()));
        out.insert(("events.k8s.io".into(), "events".into(), "patch".into()));
    }
    out
}

fn expand(rules: &[PolicyRule]) -> BTreeSet<NamedGrant> {
    let mut out = BTreeSet::new();
    for r in rules {
        let groups = r.api_groups.clone().unwrap_or_default();
        let resources = r.resources.clone().unwrap_or_default();
        let names = r.resource_names.clone().unwrap_or_default();
        assert!(r.non_resource_urls.is_none());
        for x in groups
            .iter()
            .chain(&resources)
            .chain(&r.verbs)
            .chain(&names)
        {
            assert!(!x.contains('*'), "a wildcard in an RBAC rule: {r:?}");
        }
        if !names.is_empty() {
            for v in &r.verbs {
                assert!(
                    !["create", "deletecollection"].contains(&v.as_str()),
                    "resourceNames cannot limit {v} (the rule would grant nothing): {r:?}"
                );
            }
        }
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for g in &groups {
            for res in &resources {
                for v in &r.verbs {
                    for n in &names {
                        out.insert((g.clone(), res.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// What the ServiceAccount `sa` is granted, through every binding naming it.
fn granted(r: &Rendered, sa: &str) -> BTreeSet<NamedGrant> {
    let names_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(NS)
        })
    };
    let mut out = BTreeSet::new();
    for b in &r.cluster_bindings {
        if names_sa(&b.subjects) {
            let role = r
                .cluster_roles
                .iter()
                .find(|c| name_of(&c.metadata) == b.role_ref.name)
                .unwrap_or_else(|| panic!("ClusterRole {} is rendered", b.role_ref.name));
            out.extend(expand(role.rules.as_deref().unwrap_or_default()));
        }
    }
    for b in &r.bindings {
        if names_sa(&b.subjects) {
            assert_eq!(b.role_ref.kind, "Role", "namespaced bindings bind Roles");
            let role = r
                .roles
                .iter()
                .find(|c| name_of(&c.metadata) == b.role_ref.name)
                .unwrap_or_else(|| panic!("Role {} is rendered", b.role_ref.name));
            out.extend(expand(role.rules.as_deref().unwrap_or_default()));
        }
    }
    out
}

fn check_rbac(name: &str, r: &Rendered) {
    for c in &r.cluster_roles {
        expand(c.rules.as_deref().unwrap_or_default());
    }
    for c in &r.roles {
        expand(c.rules.as_deref().unwrap_or_default());
    }
    // Which code runs under which ServiceAccount (from the rendered pods).
    let sa_of = |w: &str| -> String {
        let (_, _, t) = workloads(r).into_iter().find(|(_, n, _)| n == w).unwrap();
        spec(t).service_account_name.clone().unwrap_or_default()
    };
    assert_eq!(sa_of("nexus-rollout-controller"), "nexus-controller");
    assert_eq!(sa_of("nexus-identity-controller"), "nexus-controller");
    assert_eq!(sa_of("nexus-agent"), "nexus-agent");
    assert_eq!(sa_of("nexus-ca"), "nexus-ca");
    let sas: BTreeSet<&str> = r
        .service_accounts
        .iter()
        .map(|s| name_of(&s.metadata))
        .collect();
    for (_, w, t) in workloads(r) {
        if let Some(sa) = &spec(t).service_account_name {
            assert!(
                sas.contains(sa.as_str()),
                "{name}: {w}'s ServiceAccount {sa} is rendered"
            );
        }
    }
    // The controller reads bundle ConfigMaps through nexus-artifact; the agent does not (it has
    // --bundle-server, checked above), so artifact/ counts for the controller only.
    let controller = used(&["controller/src", "artifact/src"]);
    let agent = used(&["node-agent/src"]);
    let show = |s: &BTreeSet<NamedGrant>| -> Vec<String> {
        s.iter()
            .map(|(g, r, v, n)| match n.as_str() {
                "" => format!("{g}/{r}:{v}"),
                n => format!("{g}/{r}/{n}:{v}"),
            })
            .collect()
    };
    assert_eq!(
        show(&granted(r, "nexus-controller")),
        show(&any_object(&controller)),
        "{name}: the controller's RBAC is what its code calls"
    );
    assert_eq!(
        show(&granted(r, "nexus-agent")),
        show(&any_object(&agent)),
        "{name}: the agent's RBAC is what its code calls"
    );
    // The CA: get and patch only what it publishes (its --publish-* args); create, which no
    // name can limit.
    let ca_calls: BTreeSet<Grant> = CA_CALLS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let scanned = used(&["ca-service/server/src"]);
    assert!(
        scanned.is_subset(&ca_calls),
        "the CA's sources call {:?}, which CA_CALLS (and its Role) lack",
        scanned.difference(&ca_calls).collect::<Vec<_>>()
    );
    let published = ca_publishes(r);
    let mut ca = BTreeSet::new();
    for (g, res, v) in &ca_calls {
        let names: Vec<String> = match (v.as_str(), res.as_str()) {
            ("create", _) => vec![String::new()],
            (_, "secrets") => published.client_certs.keys().cloned().collect(),
            (_, "configmaps") => vec![published.root.clone()],
            _ => unreachable!("CA_CALLS: {res}"),
        };
        for n in names {
            ca.insert((g.clone(), res.clone(), v.clone(), n));
        }
    }
    assert_eq!(
        show(&granted(r, "nexus-ca")),
        show(&ca),
        "{name}: the CA's RBAC is what it publishes"
    );
    // Only these talk to the API server; every other pod mounts no API token.
    for (_, w, t) in workloads(r) {
        let token = spec(t).automount_service_account_token;
        if [
            "nexus-rollout-controller",
            "nexus-identity-controller",
            "nexus-agent",
            "nexus-ca",
        ]
        .contains(&w.as_str())
        {
            assert_ne!(token, Some(false), "{name}: {w} needs its API token");
        } else {
            assert_eq!(token, Some(false), "{name}: {w} mounts no API token");
        }
    }
}

fn check(name: &str, external: &[&str]) -> Rendered {
    let r = overlay(name);
    check_workloads(name, &r);
    check_replicas_pdbs(name, &r);
    check_services_monitors(name, &r);
    check_references(name, &r, external);
    check_ca_tls(name, &r);
    check_dataplane(name, &r);
    check_crds(&r);
    check_rbac(name, &r);
    let got = flows(&r);
    let want = expected_flows(name);
    assert!(
        got == want,
        "{name}: NetworkPolicy flows differ from ARCHITECTURE.md's\n  allowed but not drawn: {:?}\n  drawn but not allowed: {:?}",
        got.difference(&want).collect::<Vec<_>>(),
        want.difference(&got).collect::<Vec<_>>()
    );
    r
}

#[test]
fn dev_overlay() {
    let r = check("dev", &["nexus-dataplane-mic", "nexus-firmware-trust"]);
    assert_eq!(
        r.statefulsets.len(),
        1,
        "the dev overlay runs PostgreSQL in the cluster"
    );
    if let Some(why) = cluster_unavailable() {
        skip("dev_overlay (server-side dry-run)", &why);
        return;
    }
    let file = std::env::temp_dir().join(format!("nexus-deploy-{}.json", std::process::id()));
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": r.all});
    std::fs::write(&file, list.to_string()).unwrap();
    let out = kubectl([
        "apply",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ])
    .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "server dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn production_overlay() {
    let r = check(
        "production",
        &[
            "nexus-ca",
            "nexus-cloud",
            "nexus-database",
            "nexus-dataplane-mic",
            "nexus-firmware-trust",
        ],
    );
    assert!(
        r.statefulsets.is_empty(),
        "production brings its own PostgreSQL"
    );
    assert!(
        r.secrets.is_empty(),
        "production renders no Secret: nothing secret is committed"
    );
}

#[test]
fn the_scanner_sees_the_calls_it_must() {
    // Guards the RBAC check against a scanner that finds nothing (and so grants nothing).
    let c = used(&["controller/src", "artifact/src"]);
    for (g, r, v) in [
        ("", "pods/eviction", "create"),
        ("nexus.dev", "fabrics/status", "patch"),
        ("nexus.dev", "nexusnodes", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "secrets", "watch"),
        ("", "configmaps", "get"),
    ] {
        assert!(
            c.contains(&(g.into(), r.into(), v.into())),
            "{g}/{r}:{v} in {c:?}"
        );
    }
}
