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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::Utc;
use nexus_crds::routing::{RoutingDomain, RoutingDomainStatus};
use nexus_p4::p4info::{Schema, nexroute_p4info};
use tokio::sync::watch;
use tracing::{info, warn};

use super::core::{Domain, plan_fabric};
use super::evidence::{Admitter, CaFeed, Loaded, TrustArgs, to_pb};
use crate::rollout::server::Shared;

/// Where local mode finds the evidence admission needs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RoutingArgs {
    /// ModelIdentity Secrets in local mode: `<dir>/<name>/tls.crt` (chain, leaf first) and an
    /// optional `<dir>/<name>/proofs.json`, for each endpoint's `modelIdentityRef`.
    #[arg(long = "identities")]
    pub identities: Option<PathBuf>,
    /// Trust anchors and the CA's revocation feed.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// The domains local mode knows, by `namespace/name`, with the status it computed.
pub type Domains = BTreeMap<String, RoutingDomain>;

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

    let identities = args.identities.clone().unwrap_or_default();
    let evidence: BTreeMap<String, Loaded> = domains
        .values()
        .flat_map(|d| d.spec.endpoints.iter())
        .map(|ep| ep.model_identity_ref.name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|n| {
            let l = Loaded::from_dir(&identities, &n);
            (n, l)
        })
        .collect();
    let admitter = Admitter::new(&args.trust, feed, evidence.values());
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
            let admission = admitter.admit(&d.spec, now, |n| evidence.get(n));
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
    let mut feed = CaFeed::new(&args.trust);
    loop {
        feed.refresh().await;
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
