//! Local mode of the RoutingDomain controller (`nexctl up`, bare metal): RoutingDomains from
//! the manifest directory, each endpoint's MIC from a Secret-layout directory
//! (`<identities>/<modelIdentityRef>/tls.crt`, chain leaf first, and an optional `proofs.json`
//! from `nexctl zk prove`), the CA's CRL and Groth16 verifying key from its REST API, and the
//! tables pushed to the Fabric's agents over the fleet protocol. Statuses are served at
//! `GET /v1/routing-domains`.
//!
//! Every pass re-admits every endpoint, so a revoked MIC is withdrawn in the first push after
//! the CRL that lists it is fetched, and an expired one in the first pass after its `notAfter`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use nexus_crds::routing::{RoutingDomain, RoutingDomainStatus};
use nexus_fleet_api::v1 as pb;
use nexus_mic::{CrlSet, RevocationCheck, RevocationStatus, Verifier};
use nexus_p4::p4info::{Schema, nexroute_p4info};
use nexus_route::admission::{Context, DomainAdmission, Evidence, admit_domain, parse_proofs_json};
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

use super::core::{AdmissionFailure, Domain, plan_fabric};
use crate::rollout::server::Shared;

/// Where local mode finds the evidence admission needs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RoutingArgs {
    /// ModelIdentity Secrets in local mode: `<dir>/<name>/tls.crt` (chain, leaf first) and an
    /// optional `<dir>/<name>/proofs.json`, for each endpoint's `modelIdentityRef`.
    #[arg(long = "identities")]
    pub identities: Option<PathBuf>,
    /// PEM file of the CA certificates MICs must chain to (the Nexus CA's root).
    #[arg(long = "trust-anchors")]
    pub trust_anchors: Option<PathBuf>,
    /// The CA's REST base URL (e.g. `http://127.0.0.1:7443`): its CRL at `/v1/crl` and its
    /// Groth16 verifying key at `/v1/zk/verifying-key`. Without it revocation is not checked.
    #[arg(long = "ca-url")]
    pub ca_url: Option<String>,
    /// PEM roots an `https://` --ca-url must chain to (the Nexus CA's `ca.crt`); only these
    /// are trusted for it.
    #[arg(long = "ca-tls-ca", requires = "ca_url")]
    pub ca_tls_ca: Option<PathBuf>,
}

/// The domains local mode knows, by `namespace/name`, with the status it computed.
pub type Domains = BTreeMap<String, RoutingDomain>;

/// Fails every revocation check closed: a CA is configured but its CRL could not be fetched.
struct Unknown;

impl RevocationCheck for Unknown {
    fn status(&self, _: &[u8], _: &[u8]) -> RevocationStatus {
        RevocationStatus::Unknown
    }
}

/// What the CA publishes, refreshed now and then.
#[derive(Default)]
struct CaFeed {
    crl: Option<Vec<u8>>,
    zk_key: Option<nexus_zk::VerifyingKey>,
    fetched: Option<Instant>,
}

/// How often the CRL and verifying key are fetched again.
const CA_REFRESH: Duration = Duration::from_secs(5);

async fn refresh(feed: &mut CaFeed, http: &reqwest::Client, base: &str) {
    if feed.fetched.is_some_and(|t| t.elapsed() < CA_REFRESH) {
        return;
    }
    feed.fetched = Some(Instant::now());
    let base = base.trim_end_matches('/');
    match http.get(format!("{base}/v1/crl")).send().await {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(b) => feed.crl = Some(b.to_vec()),
            Err(e) => warn!(error = %e, "reading the CA's CRL"),
        },
        Ok(r) => warn!(status = %r.status(), "the CA refused its CRL"),
        Err(e) => warn!(error = %e, "fetching the CA's CRL"),
    }
    if feed.zk_key.is_none() {
        let key = async {
            let v: serde_json::Value = http
                .get(format!("{base}/v1/zk/verifying-key"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            nexus_zk::VerifyingKey::from_base64(v.get("verifying_key")?.as_str()?).ok()
        };
        feed.zk_key = key.await;
    }
}

/// One endpoint's evidence as read from disk.
#[derive(Default)]
struct Loaded {
    chain: Option<Vec<Vec<u8>>>,
    proofs: Vec<nexus_zk::ClaimProof>,
}

fn load_identity(dir: &Path, name: &str) -> Loaded {
    let d = dir.join(name);
    let chain = std::fs::read_to_string(d.join("tls.crt"))
        .ok()
        .and_then(|pem| nexus_mic::pem_to_der_chain(&pem).ok())
        .filter(|c| !c.is_empty());
    let proofs = match std::fs::read_to_string(d.join("proofs.json")) {
        Ok(text) => parse_proofs_json(&text).unwrap_or_else(|e| {
            warn!(identity = name, error = %e, "ignoring unreadable proofs.json");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    Loaded { chain, proofs }
}

/// The tables in the fleet protocol's form.
fn to_pb(fabric: &str, t: &nexus_p4::compile::CompiledTables) -> pb::RoutingTables {
    pb::RoutingTables {
        fabric: fabric.to_owned(),
        version: t.version.clone(),
        entities: t.entities.iter().map(Message::encode_to_vec).collect(),
    }
}

/// One pass: admit, plan and push for every Fabric that a domain names.
fn pass(
    shared: &Shared,
    fleet: &mut crate::rollout::fleet::Fleet,
    domains: &mut Domains,
    read: Vec<RoutingDomain>,
    schema: &Schema,
    args: &RoutingArgs,
    feed: &CaFeed,
) {
    let now = SystemTime::now();
    // Keep generations as the API server would: bump on a spec change.
    let mut next = Domains::new();
    for mut d in read {
        let ns = d
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let Some(name) = d.metadata.name.clone() else {
            continue;
        };
        let key = format!("{ns}/{name}");
        d.metadata.namespace = Some(ns);
        match domains.remove(&key) {
            Some(old) if old.spec == d.spec => {
                d.metadata.generation = old.metadata.generation;
                d.status = old.status;
            }
            Some(old) => {
                d.metadata.generation = Some(old.metadata.generation.unwrap_or(1) + 1);
                d.status = old.status;
            }
            None => d.metadata.generation = Some(1),
        }
        next.insert(key, d);
    }
    *domains = next;

    let anchors = args
        .trust_anchors
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| format!("reading {}: {e}", p.display()))
                .and_then(|pem| Verifier::from_pem(&pem).map_err(|e| e.to_string()))
        })
        .transpose();
    let verifier = match anchors {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err((
            "NoTrustAnchors",
            "the controller has no trust anchors (--trust-anchors): no endpoint can be admitted"
                .to_owned(),
        )),
        Err(e) => Err(("NoTrustAnchors", e)),
    };
    let identities = args.identities.clone().unwrap_or_default();
    let evidence: BTreeMap<String, Loaded> = domains
        .values()
        .flat_map(|d| d.spec.endpoints.iter())
        .map(|ep| ep.model_identity_ref.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|n| {
            let l = load_identity(&identities, &n);
            (n, l)
        })
        .collect();
    // The CRL is signed by the CA that issued the MICs: try every CA certificate we hold.
    let mut crls = CrlSet::new();
    let mut crl_ok = false;
    if let (Some(crl), Ok(_)) = (&feed.crl, &verifier) {
        let mut issuers: Vec<Vec<u8>> = args
            .trust_anchors
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|pem| nexus_mic::pem_to_der_chain(&pem).ok())
            .unwrap_or_default();
        issuers.extend(
            evidence
                .values()
                .filter_map(|l| l.chain.as_ref())
                .flat_map(|c| c.iter().skip(1).cloned()),
        );
        crl_ok = issuers.iter().any(|i| crls.add_crl(crl, i).is_ok());
        if !crl_ok {
            warn!("the CA's CRL is not signed by any CA certificate the controller knows");
        }
    }
    let revocation: &dyn RevocationCheck = match (&args.ca_url, crl_ok) {
        (None, _) => &nexus_mic::NoRevocation,
        (Some(_), true) => &crls,
        (Some(_), false) => &Unknown,
    };
    let schema_ok = schema;
    let mut fabrics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, d) in domains.iter() {
        fabrics
            .entry(d.spec.fabric_ref.name.clone())
            .or_default()
            .push(k.clone());
    }
    let chrono_now = Utc::now();
    for (fabric, keys) in &fabrics {
        let mut inputs = Vec::new();
        let mut previous = BTreeMap::new();
        for k in keys {
            let Some(d) = domains.get(k) else { continue };
            if let Some(st) = &d.status {
                previous.insert(k.clone(), st.clone());
            }
            let admission: Result<DomainAdmission, AdmissionFailure> = match &verifier {
                Err((reason, msg)) => Err((*reason, msg.clone())),
                Ok(v) => {
                    let ctx = Context {
                        verifier: v,
                        revocation,
                        zk_key: feed.zk_key.as_ref(),
                        now,
                    };
                    admit_domain(&d.spec, &ctx, |ep| {
                        let l = evidence.get(&ep.model_identity_ref.name);
                        Evidence {
                            chain: l.and_then(|l| l.chain.as_deref()),
                            proofs: l.map(|l| l.proofs.as_slice()).unwrap_or(&[]),
                        }
                    })
                    .map_err(|e| ("InvalidPolicy", format!("the trust policy: {e}")))
                }
            };
            inputs.push((
                Domain {
                    namespace: d.metadata.namespace.as_deref().unwrap_or("default"),
                    name: d.metadata.name.as_deref().unwrap_or_default(),
                    generation: d.metadata.generation,
                    spec: &d.spec,
                },
                admission,
            ));
        }
        let nodes = fleet.node_routing(fabric);
        let plan = plan_fabric(schema_ok, &inputs, &nodes, &previous, chrono_now);
        match &plan.tables {
            Some(t) => {
                let changed = fleet
                    .routing
                    .get(fabric)
                    .is_none_or(|old| old.version != t.version);
                if changed {
                    info!(%fabric, version = %t.version, entities = t.entities.len(), "routing tables compiled");
                    fleet
                        .routing
                        .insert(fabric.clone(), Arc::new(to_pb(fabric, t)));
                }
            }
            None => {
                fleet.routing.remove(fabric);
            }
        }
        drop(inputs);
        for (k, st) in plan.statuses {
            if let Some(d) = domains.get_mut(&k) {
                d.status = Some(st);
            }
        }
    }
    fleet.routing.retain(|f, _| fabrics.contains_key(f));
    fleet.push_routing();
    shared.changed.notify_one();
}

/// Runs the local RoutingDomain controller until `shutdown`: a pass every `every`.
pub async fn run(
    shared: Arc<Shared>,
    manifests: PathBuf,
    args: RoutingArgs,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let schema = match nexroute_p4info().and_then(Schema::new) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "the committed P4Info does not load: routing is off");
            return;
        }
    };
    let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
    if let Some(root) = &args.ca_tls_ca {
        match std::fs::read(root)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string()))
        {
            Ok(roots) => http = http.tls_certs_only(roots),
            Err(e) => {
                warn!(error = %e, root = %root.display(), "the CA's root does not load: revocation checks fail closed");
            }
        }
    }
    let http = http.build().unwrap_or_default();
    let mut feed = CaFeed::default();
    loop {
        if let Some(ca) = &args.ca_url {
            refresh(&mut feed, &http, ca).await;
        }
        let read = crate::rollout::local::read_kind::<RoutingDomain>(&manifests, "RoutingDomain")
            .unwrap_or_else(|e| {
                warn!(error = %e, "reading RoutingDomain manifests");
                Vec::new()
            });
        {
            let mut d = shared.routing.lock().await;
            let mut f = shared.fleet.lock().await;
            pass(&shared, &mut f, &mut d, read, &schema, &args, &feed);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A domain's status, for tests and the HTTP API.
pub fn status_of(domains: &Domains, key: &str) -> Option<RoutingDomainStatus> {
    domains.get(key).and_then(|d| d.status.clone())
}
