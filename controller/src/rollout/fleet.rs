//! The local driver of the rollout core: the controller's in-memory picture of the fleet —
//! every node agent's session and reported state, every Fabric with its bundle and operator
//! overrides — and the reconcile step that feeds [`core::step`] and pushes what changed down the
//! sessions.
//!
//! No I/O here but non-blocking channel sends; the clock is passed in. Local mode keeps Fabric
//! and NexusNode objects only here and re-learns node state from the agents' `Register` after a
//! restart; the kube driver ([`super::reconcile`]) keeps the same objects in the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nexus_artifact::{Cache, Lookup, Source};
use nexus_crds::Fabric;
use nexus_crds::fabric::{DataplaneMode, FabricPhase};
use nexus_crds::node::{NexusNode, NexusNodeSpec, NexusNodeStatus, NicStatus, NodeFirmware};
use nexus_fleet_api::v1 as pb;
use nexus_fleet_api::{flash_result, nic_status, routing_status};
use pb::agent_message::Msg;
use tokio::sync::mpsc;

use super::core::{self, Bundle, Member, Note};
use super::view::{self, selector_matches};

/// Sender half of an agent's response stream.
/// (Boxed: an unbounded channel allocates a block of 32 slots up front, per session.)
pub type SessionTx = mpsc::UnboundedSender<Box<pb::ControllerMessage>>;

/// Bundles up to this size travel inside the DesiredState; larger ones through FetchBundle.
pub const INLINE_BUNDLE_MAX: usize = 1024 * 1024;

/// Events kept per Fabric for the status API (local mode has no Event objects).
pub const NOTES_KEPT: usize = 50;

/// Timing knobs of the reconcile step.
#[derive(Clone, Debug)]
pub struct Timing {
    /// A node whose agent has not reported for this long counts as unavailable.
    pub heartbeat_timeout: Duration,
    /// After a (re)start, start no node for this long, so that every agent can re-register and
    /// report what it is doing before budgets are computed.
    pub start_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_timeout: view::DEFAULT_HEARTBEAT_TIMEOUT,
            start_grace: Duration::from_secs(5),
        }
    }
}

/// One connected agent.
#[derive(Debug)]
pub struct Session {
    /// Distinguishes a reconnect from the stream it replaces.
    pub id: u64,
    tx: SessionTx,
    /// Highest desired-state version sent on this session.
    sent: u64,
    /// Routing table version sent on this session.
    routing_sent: Option<String>,
}

/// A node as the controller knows it.
#[derive(Debug)]
pub struct NodeEntry {
    /// Spec (what we tell it) and status (what its agent reports).
    pub node: NexusNode,
    /// Labels from Register.
    pub labels: BTreeMap<String, String>,
    /// The open stream, if connected.
    pub session: Option<Session>,
    /// Last Progress of a flash.
    pub progress: Option<pb::Progress>,
    /// Last Nack.
    pub nack: Option<(u64, String)>,
}

/// A fabric and what only the controller holds about it.
#[derive(Debug)]
pub struct FabricEntry {
    /// The object, status included.
    pub fabric: Fabric,
    /// `spec.rollout.paused` as set through the API (an in-memory edit).
    pub paused: Option<bool>,
    /// A rollback requested through the API, for this generation.
    pub rollback_generation: Option<i64>,
    /// Member nodes, as of the last reconcile.
    pub members: Vec<String>,
    /// Recent Events (newest last).
    pub notes: Vec<Note>,
}

/// Counts of what one reconcile did (for metrics and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Nodes started (maintenance set for a flash of the target).
    pub starts: u32,
    /// Nodes that left maintenance.
    pub finishes: u32,
    /// Nodes told to roll back.
    pub rollbacks: u32,
    /// Desired states pushed.
    pub pushes: u32,
}

/// The whole fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Fabrics by name.
    pub fabrics: BTreeMap<String, FabricEntry>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// When this controller started (for the start grace).
    pub started: DateTime<Utc>,
    /// Fetched bundles and failed fetches (with back-off), by source and digest.
    pub bundles: Cache,
    /// NexRoute tables per Fabric, as the RoutingDomain controller compiled them; pushed to
    /// every node of the Fabric (see `crate::routing`).
    pub routing: BTreeMap<String, Arc<pb::RoutingTables>>,
    next_session: u64,
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn dataplane_pb(d: &nexus_crds::fabric::DataplaneConfig) -> pb::Dataplane {
    pb::Dataplane {
        mode: match d.mode {
            DataplaneMode::Overlay => "overlay".into(),
            DataplaneMode::Native => "native".into(),
        },
        udp_port: u32::from(d.udp_port),
        mtu: d.mtu,
        congestion: d.congestion.as_str().into(),
    }
}

/// Where a Fabric's bundle comes from, in local mode (ConfigMaps need the API server).
pub fn bundle_source(f: &Fabric) -> Result<Source, nexus_artifact::Error> {
    Source::from_crd(&f.spec.firmware.bundle, "")
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new(Utc::now())
    }
}

impl Fleet {
    /// An empty fleet, started at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            fabrics: BTreeMap::new(),
            nodes: BTreeMap::new(),
            started: now,
            bundles: Cache::new(),
            routing: BTreeMap::new(),
            next_session: 1,
        }
    }

    /// Adds or updates a fabric read from a manifest. A changed spec bumps `metadata.generation`
    /// (as the API server would); status and overrides are kept; a new bundle is fetched again.
    pub fn upsert_fabric(&mut self, mut fabric: Fabric) {
        let Some(name) = fabric.metadata.name.clone() else {
            return;
        };
        match self.fabrics.get_mut(&name) {
            Some(e) => {
                if e.fabric.spec != fabric.spec {
                    e.fabric.metadata.generation =
                        Some(e.fabric.metadata.generation.unwrap_or(1) + 1);
                    e.fabric.spec = fabric.spec;
                    e.fabric.metadata.labels = fabric.metadata.labels;
                }
            }
            None => {
                fabric.metadata.generation = Some(1);
                fabric.metadata.creation_timestamp = Some(view::to_time(Utc::now()));
                fabric.status = None;
                self.fabrics.insert(
                    name,
                    FabricEntry {
                        fabric,
                        paused: None,
                        rollback_generation: None,
                        members: Vec::new(),
                        notes: Vec::new(),
                    },
                );
            }
        }
    }

    /// A fabric as clients see it: the in-memory overrides applied to the spec.
    pub fn fabric_view(e: &FabricEntry) -> Fabric {
        let mut f = e.fabric.clone();
        if let Some(p) = e.paused {
            f.spec.rollout.paused = p;
        }
        f
    }

    /// Drops fabrics whose manifests are gone.
    pub fn retain_fabrics(&mut self, names: &BTreeSet<String>) {
        self.fabrics.retain(|n, _| names.contains(n));
    }

    /// A new session: records the agent's inventory and, on a controller that does not know the
    /// node's desired state (a restart), adopts the one the agent reports. Returns the session id.
    pub fn register(&mut self, reg: pb::Register, tx: SessionTx, now: DateTime<Utc>) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        let entry = self
            .nodes
            .entry(reg.node_name.clone())
            .or_insert_with(|| NodeEntry {
                node: NexusNode {
                    metadata: ObjectMeta {
                        name: Some(reg.node_name.clone()),
                        creation_timestamp: Some(view::to_time(now)),
                        ..ObjectMeta::default()
                    },
                    spec: NexusNodeSpec {
                        fabric: String::new(),
                        desired_version: 0,
                        firmware: None,
                        nics: Vec::new(),
                        pipeline: None,
                        dataplane: Default::default(),
                        maintenance: false,
                        routing: None,
                    },
                    status: None,
                },
                labels: BTreeMap::new(),
                session: None,
                progress: None,
                nack: None,
            });
        entry.labels = reg.labels.into_iter().collect();
        let spec = &mut entry.node.spec;
        if let Some(cur) = reg.current {
            let v = i64::try_from(cur.version).unwrap_or(i64::MAX);
            if v > spec.desired_version {
                spec.desired_version = v;
                spec.fabric = cur.fabric;
                spec.maintenance = cur.maintenance;
                spec.nics = cur
                    .firmware
                    .as_ref()
                    .map(|f| f.pci_addresses.clone())
                    .unwrap_or_default();
                spec.firmware = cur.firmware.map(|f| NodeFirmware {
                    version: f.version,
                    bundle: opt(&f.bundle_url).map(|url| nexus_crds::common::ArtifactSource {
                        url: Some(url),
                        ..Default::default()
                    }),
                    sha256: opt(&f.sha256),
                });
            }
        }
        let status = entry
            .node
            .status
            .get_or_insert_with(NexusNodeStatus::default);
        status.agent_version = opt(&reg.agent_version);
        status.nics = reg.nics.iter().map(nic_status).collect();
        status.last_flash = reg.last_flash.as_ref().and_then(flash_result);
        status.routing = reg.routing.as_ref().and_then(routing_status);
        status.heartbeat = Some(view::to_time(now));
        entry.session = Some(Session {
            id,
            tx,
            sent: 0,
            routing_sent: None,
        });
        id
    }

    /// One message from an agent's session `session`. Returns whether it changed anything the
    /// planner looks at (a heartbeat that only repeats the last report does not).
    pub fn on_message(&mut self, node: &str, session: u64, msg: Msg, now: DateTime<Utc>) -> bool {
        let Some(e) = self.nodes.get_mut(node) else {
            return false;
        };
        if e.session.as_ref().map(|s| s.id) != Some(session) {
            return false; // a stream that was replaced by a reconnect
        }
        let status = e.node.status.get_or_insert_with(NexusNodeStatus::default);
        status.heartbeat = Some(view::to_time(now));
        match msg {
            Msg::Register(_) => false,
            Msg::Status(s) => {
                let nics: Vec<NicStatus> = s.nics.iter().map(nic_status).collect();
                let last_flash = s.last_flash.as_ref().and_then(flash_result);
                let changed = nics != status.nics || last_flash != status.last_flash;
                let routing = s.routing.as_ref().and_then(routing_status);
                let changed = changed || routing != status.routing;
                status.nics = nics;
                status.last_flash = last_flash;
                status.routing = routing;
                status.applied_version = Some(i64::try_from(s.applied_version).unwrap_or(i64::MAX));
                if !s.busy {
                    e.progress = None;
                }
                changed
            }
            Msg::Ack(a) => {
                let v = i64::try_from(a.version).unwrap_or(i64::MAX);
                status.applied_version = Some(status.applied_version.unwrap_or(0).max(v));
                e.progress = None;
                true
            }
            Msg::Nack(n) => {
                e.nack = Some((n.version, n.reason));
                e.progress = None;
                true
            }
            Msg::Progress(p) => {
                e.progress = Some(p);
                false
            }
        }
    }

    /// The stream `session` of `node` ended.
    pub fn disconnect(&mut self, node: &str, session: u64) {
        if let Some(e) = self.nodes.get_mut(node)
            && e.session.as_ref().map(|s| s.id) == Some(session)
        {
            e.session = None;
        }
    }

    /// Closes every session (shutdown): the response streams end.
    pub fn disconnect_all(&mut self) {
        for e in self.nodes.values_mut() {
            e.session = None;
        }
    }

    /// Bundles to fetch now: (source, expected sha256). Each is claimed in the cache (later
    /// calls see it in flight) until [`Fleet::bundle_fetched`] records the outcome; a failed
    /// source is not offered again before its back-off passes.
    pub fn bundles_to_fetch(&mut self, now: DateTime<Utc>) -> Vec<(Source, String)> {
        let mut out = Vec::new();
        for e in self.fabrics.values() {
            let Ok(src) = bundle_source(&e.fabric) else {
                continue;
            };
            let sha = e.fabric.spec.firmware.sha256.clone();
            if out.iter().any(|(s, d)| *s == src && *d == sha) {
                continue;
            }
            if self.bundles.lookup(&src, &sha, now) == Lookup::Fetch {
                out.push((src, sha));
            }
        }
        out
    }

    /// Records a fetch claimed by [`Fleet::bundles_to_fetch`].
    pub fn bundle_fetched(
        &mut self,
        source: &Source,
        sha256: &str,
        result: Result<nexus_artifact::Verified, nexus_artifact::Error>,
        now: DateTime<Utc>,
    ) {
        self.bundles.record(source, sha256, result, now);
    }

    /// The bundle state of a fabric, for the core.
    fn bundle_state(&self, f: &Fabric, now: DateTime<Utc>) -> Bundle {
        let sha = &f.spec.firmware.sha256;
        let src = match bundle_source(f) {
            Ok(s) => s,
            Err(e) => {
                return Bundle::Failed {
                    message: e.to_string(),
                    retry_at: now + chrono::Duration::hours(1),
                };
            }
        };
        match self.bundles.peek(&src, sha, now) {
            Lookup::Verified(_) => Bundle::Verified,
            Lookup::Failed {
                error, retry_at, ..
            } => Bundle::Failed {
                message: error.to_string(),
                retry_at,
            },
            // In flight, or due: the fetch loop takes it from here.
            Lookup::InFlight | Lookup::Fetch => Bundle::Fetching,
        }
    }

    fn desired_state(&self, e: &NodeEntry) -> Option<pb::DesiredState> {
        let spec = &e.node.spec;
        let mut firmware = None;
        if let Some(fw) = &spec.firmware {
            let running = e
                .node
                .status
                .as_ref()
                .and_then(|s| {
                    s.nics
                        .iter()
                        .find(|n| spec.nics.contains(&n.pci_address))
                        .or_else(|| s.nics.first())
                })
                .and_then(|n| n.running_firmware.clone());
            let mut bundle = Vec::new();
            if running.as_deref() != Some(fw.version.as_str())
                && fw.bundle.is_some()
                && let Some(sha) = &fw.sha256
            {
                // The agent must flash: it needs the verified bytes, so wait for them.
                let bytes = self.bundles.by_digest(sha)?;
                if bytes.len() <= INLINE_BUNDLE_MAX {
                    bundle = bytes.to_vec();
                }
                // Larger bundles: the agent fetches them once with FetchBundle(sha256), so a
                // wave of pushes does not hold a copy per node.
            }
            firmware = Some(pb::FirmwareTarget {
                version: fw.version.clone(),
                bundle_url: fw
                    .bundle
                    .as_ref()
                    .and_then(|b| b.url.clone())
                    .unwrap_or_default(),
                bundle,
                sha256: fw.sha256.clone().unwrap_or_default(),
                pci_addresses: spec.nics.clone(),
            });
        }
        Some(pb::DesiredState {
            version: u64::try_from(spec.desired_version).unwrap_or(0),
            fabric: spec.fabric.clone(),
            firmware,
            pipeline: spec.pipeline.as_ref().map(|p| pb::Pipeline {
                name: p.name.clone(),
                version: p.version.clone(),
                url: p.source.url.clone().unwrap_or_default(),
            }),
            dataplane: Some(dataplane_pb(&spec.dataplane)),
            maintenance: spec.maintenance,
        })
    }

    /// The verified bytes of the bundle with this sha256, if any.
    pub fn verified_bundle(&self, sha256: &str) -> Option<Arc<Vec<u8>>> {
        self.bundles.by_digest(sha256)
    }

    /// Sends every connected node whose desired state is newer than what its session has seen.
    fn push(&mut self) -> u32 {
        let mut sends = Vec::new();
        for (name, e) in &self.nodes {
            let Some(s) = &e.session else { continue };
            let v = u64::try_from(e.node.spec.desired_version).unwrap_or(0);
            if v == 0 || v <= s.sent {
                continue;
            }
            if let Some(d) = self.desired_state(e) {
                sends.push((name.clone(), d));
            }
        }
        let mut n = self.push_routing();
        for (name, d) in sends {
            if let Some(s) = self.nodes.get_mut(&name).and_then(|e| e.session.as_mut()) {
                s.sent = d.version;
                if s.tx
                    .send(Box::new(pb::ControllerMessage::desired(d)))
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// Sends each connected node its Fabric's routing tables when its session has not seen
    /// that version. Returns how many were sent.
    pub fn push_routing(&mut self) -> u32 {
        let mut n = 0;
        for e in self.nodes.values_mut() {
            let Some(s) = e.session.as_mut() else {
                continue;
            };
            let Some(t) = self.routing.get(&e.node.spec.fabric) else {
                continue;
            };
            if s.routing_sent.as_deref() == Some(t.version.as_str()) {
                continue;
            }
            s.routing_sent = Some(t.version.clone());
            if s.tx
                .send(Box::new(pb::ControllerMessage::routing((**t).clone())))
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// What the nodes of `fabric` report about their routing tables.
    pub fn node_routing(&self, fabric: &str) -> Vec<crate::routing::core::NodeRouting> {
        self.nodes
            .iter()
            .filter(|(_, e)| e.node.spec.fabric == fabric)
            .map(|(name, e)| {
                let r = e.node.status.as_ref().and_then(|s| s.routing.clone());
                crate::routing::core::NodeRouting {
                    node: name.clone(),
                    programmed: r.as_ref().and_then(|r| r.programmed_version.clone()),
                    refused: r.and_then(|r| {
                        Some((r.refused_version?, r.refused_reason.unwrap_or_default()))
                    }),
                }
            })
            .collect()
    }

    /// Which nodes each fabric manages: a node stays with the fabric it was assigned to while
    /// that fabric still selects it; an unassigned node goes to the first fabric (by name) that
    /// selects it and manages one of its NICs. Returns members and conflicts per fabric.
    fn membership(&self) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
        let mut out: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let selects = |f: &FabricEntry, e: &NodeEntry| {
            selector_matches(&f.fabric.spec.node_selector, &e.labels)
                && view::matching_nics(&f.fabric.spec.nic, &e.node)
                    .next()
                    .is_some()
        };
        for (n, e) in &self.nodes {
            let assigned = &e.node.spec.fabric;
            let owner = match self.fabrics.get(assigned) {
                Some(f) if selects(f, e) => Some(assigned.clone()),
                _ => self
                    .fabrics
                    .iter()
                    .find(|(_, f)| selects(f, e))
                    .map(|(name, _)| name.clone()),
            };
            for (fname, f) in &self.fabrics {
                if !selects(f, e) {
                    continue;
                }
                let entry = out.entry(fname.clone()).or_default();
                if owner.as_deref() == Some(fname.as_str()) {
                    entry.0.push(n.clone());
                } else {
                    entry.1.push(n.clone());
                }
            }
        }
        out
    }

    /// One reconcile of every fabric at `now`: the core's step for each, applied to the nodes,
    /// then pushed. Returns what it did and when to run again at the latest.
    pub fn reconcile(
        &mut self,
        now: DateTime<Utc>,
        timing: &Timing,
    ) -> (Applied, Option<Duration>) {
        let mut applied = Applied::default();
        let mut requeue: Option<Duration> = None;
        let grace_end =
            self.started + chrono::Duration::from_std(timing.start_grace).unwrap_or_default();
        let in_grace = now < grace_end;
        if in_grace {
            // Wake up when the grace ends rather than on the next tick.
            requeue = (grace_end - now).to_std().ok();
        }
        let membership = self.membership();
        let names: Vec<String> = self.fabrics.keys().cloned().collect();
        for name in names {
            let Some(fe) = self.fabrics.get(&name) else {
                continue;
            };
            let fabric = Self::fabric_view(fe);
            let rollback = fe.rollback_generation.is_some()
                && fe.rollback_generation == fabric.metadata.generation;
            let (members, conflicting) = membership.get(&name).cloned().unwrap_or_default();
            let bundle = self.bundle_state(&fabric, now);
            let former: Vec<&NexusNode> = self
                .nodes
                .iter()
                .filter(|(n, e)| e.node.spec.fabric == name && !members.contains(n))
                .map(|(_, e)| &e.node)
                .collect();
            let input = core::Input {
                fabric: &fabric,
                members: members
                    .iter()
                    .filter_map(|m| Some((m, self.nodes.get(m)?)))
                    .map(|(m, e)| Member {
                        name: m.clone(),
                        nexus_node: Some(&e.node),
                        kube: None,
                    })
                    .collect(),
                former,
                conflicting,
                bundle,
                now,
                heartbeat_timeout: timing.heartbeat_timeout,
                hold_starts: in_grace,
                rollback_requested: rollback,
            };
            let step = match core::step(&input) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(fabric = %name, error = %e, "invalid Fabric");
                    continue;
                }
            };
            requeue = Some(requeue.map_or(step.requeue, |q| q.min(step.requeue)));
            for (n, spec) in step.node_specs {
                let Some(e) = self.nodes.get_mut(&n) else {
                    continue;
                };
                let was = &e.node.spec;
                if spec.maintenance && !was.maintenance {
                    applied.starts += u32::from(
                        spec.firmware.as_ref().map(|f| &f.version)
                            == Some(&fabric.spec.firmware.version),
                    );
                }
                if !spec.maintenance && was.maintenance {
                    applied.finishes += 1;
                }
                if spec.firmware != was.firmware
                    && spec.firmware.as_ref().is_some_and(|f| f.bundle.is_none())
                {
                    applied.rollbacks += 1;
                }
                e.node.spec = spec;
            }
            for n in &step.release {
                if let Some(e) = self.nodes.get_mut(n) {
                    e.node.spec.fabric = String::new();
                    e.node.spec.desired_version += 1;
                }
            }
            for note in &step.notes {
                if note.warning {
                    tracing::warn!(fabric = %name, reason = %note.reason, "{}", note.message);
                } else {
                    tracing::info!(fabric = %name, reason = %note.reason, "{}", note.message);
                }
            }
            let Some(fe) = self.fabrics.get_mut(&name) else {
                continue;
            };
            let mut status = step.status;
            if in_grace && status.phase == Some(FabricPhase::Ready) {
                // Not every agent has re-registered since a restart: nothing is Ready yet.
                status.phase = Some(FabricPhase::Pending);
            }
            fe.fabric.status = Some(status);
            fe.members = members;
            fe.notes.extend(step.notes);
            let excess = fe.notes.len().saturating_sub(NOTES_KEPT);
            fe.notes.drain(..excess);
        }
        applied.pushes = self.push();
        (applied, requeue)
    }
}
