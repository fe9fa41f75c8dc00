//! The RoutingDomain controller's decisions, sans I/O: from the domains that name a Fabric, the
//! admission verdicts on their endpoints and what each node of the Fabric reports it runs, to
//! the one routing table every node of that Fabric must run and each domain's status.
//!
//! Both drivers (local mode in `super::local`, kube mode) call [`plan_fabric`] and only move
//! its output: tables to nodes, statuses to the API. Time is an input.
//!
//! # Rules
//! - One table per Fabric: every node of a Fabric carries every domain that names it, so a node
//!   runs one table version, which it reports; a domain is programmed on a node when the node
//!   reports that version.
//! - A domain whose trust policy does not parse keeps all its endpoints out and says why; a
//!   domain that does not compile (two advertised names with the same 32-bit id) is left out of
//!   the table, with the compiler's reason, and the other domains are compiled without it.
//! - A tenant's first domain (by `namespace/name`) is its default: descriptors from that tenant
//!   with no domain id route there.
//! - The earliest `notAfter` among admitted MICs is when to plan again, so an expiring MIC
//!   withdraws its endpoint within one push; revocations come in with the next CRL refresh.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use nexus_crds::common::set_condition;
use nexus_crds::routing::{RoutingDomainSpec, RoutingDomainStatus, condition};
use nexus_p4::compile::{CompiledTables, DomainInput, compile};
use nexus_p4::p4info::Schema;
use nexus_route::admission::DomainAdmission;

/// One RoutingDomain as the core sees it.
#[derive(Debug, Clone, Copy)]
pub struct Domain<'a> {
    /// Namespace (local mode: `default`).
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The spec.
    pub spec: &'a RoutingDomainSpec,
}

impl Domain<'_> {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a node reports about its routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRouting {
    /// Node name.
    pub node: String,
    /// The table version it runs.
    pub programmed: Option<String>,
    /// The last version it refused, and why (it keeps running `programmed`).
    pub refused: Option<(String, String)>,
}

/// The plan for one Fabric.
#[derive(Debug, Clone)]
pub struct FabricPlan {
    /// The table every node of the Fabric must run (`None`: no domain compiled; nodes keep what
    /// they run).
    pub tables: Option<CompiledTables>,
    /// Status per domain, by `namespace/name`.
    pub statuses: BTreeMap<String, RoutingDomainStatus>,
    /// When to plan again at the latest (an admitted MIC expires then).
    pub replan_at: Option<DateTime<Utc>>,
}

/// Why a domain could not be admitted at all: a CamelCase reason for its Ready condition
/// (`InvalidPolicy`, `NoTrustAnchors`) and a message.
pub type AdmissionFailure = (&'static str, String);

/// Plans the routing table of a Fabric's nodes. `domains` pairs each domain naming the Fabric
/// with its admission; `previous` holds the statuses written last time (to keep condition
/// transition times).
pub fn plan_fabric(
    schema: &Schema,
    domains: &[(Domain<'_>, Result<DomainAdmission, AdmissionFailure>)],
    nodes: &[NodeRouting],
    previous: &BTreeMap<String, RoutingDomainStatus>,
    now: DateTime<Utc>,
) -> FabricPlan {
    let mut order: Vec<usize> = (0..domains.len()).collect();
    order.sort_by_key(|&i| domains[i].0.key());
    let mut defaults: BTreeMap<u32, usize> = BTreeMap::new();
    let mut inputs: Vec<(usize, DomainInput)> = Vec::new();
    for &i in &order {
        let (d, admission) = &domains[i];
        let Ok(admission) = admission else { continue };
        let tenant_id = nexus_route::id::tenant_id(&d.spec.tenant);
        let default_for_tenant = *defaults.entry(tenant_id).or_insert(i) == i;
        inputs.push((
            i,
            DomainInput {
                name: d.key(),
                tenant_id,
                domain_id: nexus_route::id::domain_id(d.namespace, d.name),
                default_for_tenant,
                endpoints: admission
                    .admitted
                    .iter()
                    .map(|a| a.advertisement.clone())
                    .collect(),
            },
        ));
    }
    // Compile everything; on failure find the domains that fail alone and leave them out.
    let mut compile_errors: BTreeMap<usize, String> = BTreeMap::new();
    let all: Vec<DomainInput> = inputs.iter().map(|(_, d)| d.clone()).collect();
    let tables = match compile(schema, &all) {
        Ok(t) => Some(t),
        Err(_) => {
            let mut kept = Vec::new();
            for (i, d) in &inputs {
                match compile(schema, std::slice::from_ref(d)) {
                    Ok(_) => kept.push(d.clone()),
                    Err(e) => {
                        compile_errors.insert(*i, e.to_string());
                    }
                }
            }
            match compile(schema, &kept) {
                Ok(t) => Some(t),
                Err(e) => {
                    for (i, _) in &inputs {
                        compile_errors.entry(*i).or_insert_with(|| e.to_string());
                    }
                    None
                }
            }
        }
    };
    let version = tables.as_ref().map(|t| t.version.clone());
    let programmed = nodes
        .iter()
        .filter(|n| n.programmed.is_some() && n.programmed == version)
        .count();
    let refusals: Vec<String> = nodes
        .iter()
        .filter_map(|n| {
            n.refused
                .as_ref()
                .filter(|(v, _)| Some(v) == version.as_ref())
                .map(|(_, why)| format!("{} refused it: {why}", n.node))
        })
        .collect();

    let mut statuses = BTreeMap::new();
    let mut replan_at: Option<DateTime<Utc>> = None;
    for (i, (d, admission)) in domains.iter().enumerate() {
        let key = d.key();
        let mut st = RoutingDomainStatus {
            observed_generation: d.generation,
            conditions: previous
                .get(&key)
                .map(|p| p.conditions.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        let (ready, reason, message) = match admission {
            Err((reason, why)) => (false, *reason, why.clone()),
            Ok(a) => {
                st.admitted = a.status_admitted();
                st.rejected = a.status_rejected();
                st.admitted_count = u32::try_from(st.admitted.len()).unwrap_or(u32::MAX);
                st.rejected_count = u32::try_from(st.rejected.len()).unwrap_or(u32::MAX);
                if let Some(exp) = a
                    .next_expiry()
                    .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                {
                    replan_at = Some(replan_at.map_or(exp, |r| r.min(exp)));
                }
                if let Some(e) = compile_errors.get(&i) {
                    (false, "CompileFailed", e.clone())
                } else if let Some(v) = &version {
                    st.routing_table_version = Some(v.clone());
                    st.nodes_programmed = u32::try_from(programmed).unwrap_or(u32::MAX);
                    if nodes.is_empty() {
                        (false, "NoNodes", "the Fabric has no nodes yet".to_owned())
                    } else if !refusals.is_empty() {
                        (false, "TableRefused", refusals.join("; "))
                    } else if programmed == nodes.len() {
                        (
                            true,
                            "Programmed",
                            format!("{} endpoints on {} nodes", st.admitted_count, nodes.len()),
                        )
                    } else {
                        (
                            false,
                            "Programming",
                            format!("{programmed}/{} nodes run the table", nodes.len()),
                        )
                    }
                } else {
                    (false, "CompileFailed", "no table compiled".to_owned())
                }
            }
        };
        set_condition(
            &mut st.conditions,
            condition::READY,
            ready,
            reason,
            message,
            d.generation,
            now,
        );
        let degraded = st.rejected_count > 0 || !refusals.is_empty();
        let why = if st.rejected_count > 0 {
            format!("{} endpoints rejected", st.rejected_count)
        } else if !refusals.is_empty() {
            refusals.join("; ")
        } else {
            String::new()
        };
        set_condition(
            &mut st.conditions,
            condition::DEGRADED,
            degraded,
            if st.rejected_count > 0 {
                "EndpointsRejected"
            } else if degraded {
                "TableRefused"
            } else {
                "AsExpected"
            },
            why,
            d.generation,
            now,
        );
        statuses.insert(key, st);
    }
    FabricPlan {
        tables,
        statuses,
        replan_at,
    }
}
