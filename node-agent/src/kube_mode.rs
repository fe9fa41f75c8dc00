//! `nexus-agent kube`: the agent's half of a `NexusNode` in a real cluster.
//!
//! - [`decide`] (pure): the node's spec, the local NIC inventory and the agent's memory of what it
//!   already handled → [`Action`]: nothing, flash a bundle, switch to the inactive bank (a
//!   rollback, no download) or refuse.
//! - [`node_status`] (pure): the `NexusNode.status` to publish, with `Ready` and
//!   `FirmwareCurrent` conditions.
//! - [`KubeAgent`] (adapter): reads its own `NexusNode`, fetches bundles through
//!   `nexus-artifact` (URLs, ConfigMaps in the namespace the source names) or from the rollout
//!   controller's bundle endpoint, checks the spec's sha256 before anything else, runs the
//!   verified flash state machine over the simulated NICs and writes only `status`, by
//!   server-side apply with field manager [`FIELD_MANAGER`]. While a fetch or flash runs, the
//!   heartbeat goes on (a long flash must not look like a dead agent).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::Api;
use kube::api::{Patch, PatchParams};
use nexus_artifact::{Fetcher, Source};
use nexus_crds::common::{Condition, Time};
use nexus_crds::node::{
    FlashOutcome as CrdOutcome, FlashResult, NicStatus, NodeRoutingStatus, condition,
};
use nexus_crds::{NexusNode, NexusNodeSpec, NexusNodeStatus};
use nexus_fleet_agent::{FlashTarget, RoutingTarget};
use nexus_fleet_api::v1 as pb;
use sha2::{Digest, Sha256};

use crate::fleet::SimFleetTarget;
use crate::sim::{SimDriver, SimNic, SimOptions};
use crate::{AgentError, RecoveryOutcome, agent_version, recover};

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "nexus-agent";

/// What the agent should do about its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The NICs run what the spec asks, or this desired version was already handled.
    Nothing,
    /// Fetch the bundle, check its digest and signature, flash.
    Flash {
        /// Target version.
        version: String,
        /// Where the bundle is.
        source: Source,
        /// Expected sha256 of the bundle.
        sha256: String,
    },
    /// The inactive bank already holds a bootable image of the target: switch to it.
    SwitchBank {
        /// Target version.
        version: String,
    },
    /// The spec cannot be carried out; report why.
    Refuse {
        /// Target version.
        version: String,
        /// Why.
        reason: String,
    },
}

/// What the agent remembers between polls (rebuilt from the published status after a restart).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Memory {
    /// `spec.desiredVersion` handled last.
    pub applied_version: Option<i64>,
    /// The most recent flash.
    pub last_flash: Option<FlashResult>,
    /// The routing tables programmed (or refused) last. Not restored from the status after a
    /// restart: the agent programs `spec.routing` again (an idempotent diff on the device).
    pub routing: Option<NodeRoutingStatus>,
}

fn inactive_holds(nic: &NicStatus, version: &str) -> bool {
    let Some(active) = nic.active_bank else {
        return false;
    };
    nic.banks
        .iter()
        .any(|b| b.bank != active && b.bootable && b.version.as_deref() == Some(version))
}

/// The routing table version to fetch and program, if any: `spec.routing` when the agent has
/// neither programmed nor refused that version (a refused version is not tried again until the
/// spec names another one; the dataplane keeps its tables meanwhile).
pub fn routing_to_program(spec: &NexusNodeSpec, memory: &Memory) -> Option<String> {
    let want = &spec.routing.as_ref()?.version;
    let done = memory.routing.as_ref().is_some_and(|r| {
        r.programmed_version.as_ref() == Some(want) || r.refused_version.as_ref() == Some(want)
    });
    (!done).then(|| want.clone())
}

/// `memory` after programming `version` succeeded (`Ok`) or was refused (`Err(why)`).
pub fn routing_outcome(
    memory: Option<&NodeRoutingStatus>,
    version: &str,
    result: Result<(), String>,
) -> NodeRoutingStatus {
    let programmed = memory.and_then(|r| r.programmed_version.clone());
    match result {
        Ok(()) => NodeRoutingStatus {
            programmed_version: Some(version.to_owned()),
            refused_version: None,
            refused_reason: None,
        },
        Err(why) => NodeRoutingStatus {
            programmed_version: programmed,
            refused_version: Some(version.to_owned()),
            refused_reason: Some(truncate(why, 1024)),
        },
    }
}

/// The NICs the spec manages: those it names, or all when it names none (a controller that
/// predates NIC selection).
pub fn managed<'a>(spec: &'a NexusNodeSpec, nics: &'a [NicStatus]) -> Vec<&'a NicStatus> {
    nics.iter()
        .filter(|n| spec.nics.is_empty() || spec.nics.contains(&n.pci_address))
        .collect()
}

/// Decides what to do. No I/O, no clock. `default_namespace` is for ConfigMap sources that name
/// none.
pub fn decide(
    spec: &NexusNodeSpec,
    nics: &[NicStatus],
    memory: &Memory,
    default_namespace: &str,
) -> Action {
    let Some(fw) = &spec.firmware else {
        return Action::Nothing;
    };
    let stale: Vec<&NicStatus> = managed(spec, nics)
        .into_iter()
        .filter(|n| n.running_firmware.as_deref() != Some(fw.version.as_str()))
        .collect();
    if stale.is_empty() {
        return Action::Nothing;
    }
    // A failed or refused attempt at this very desired state is not retried: the controller
    // retries by writing a new desiredVersion. (An interrupted one is: nothing failed.)
    let handled = memory.applied_version == Some(spec.desired_version)
        && memory
            .last_flash
            .as_ref()
            .is_some_and(|f| f.version == fw.version && f.result != CrdOutcome::Interrupted);
    if handled {
        return Action::Nothing;
    }
    if stale.iter().all(|n| inactive_holds(n, &fw.version)) {
        return Action::SwitchBank {
            version: fw.version.clone(),
        };
    }
    let refuse = |reason: String| Action::Refuse {
        version: fw.version.clone(),
        reason,
    };
    let Some(src) = &fw.bundle else {
        return refuse(format!(
            "the spec names no bundle for {} (an A/B switch) and the inactive bank does not hold a bootable {}",
            fw.version, fw.version
        ));
    };
    let Some(sha256) = fw.sha256.clone() else {
        return refuse("the spec pins no sha256 for the bundle".into());
    };
    match Source::from_crd(src, default_namespace) {
        Ok(Source::Oci(reference)) => {
            refuse(nexus_artifact::Error::OciUnsupported { reference }.to_string())
        }
        Ok(source) => Action::Flash {
            version: fw.version.clone(),
            source,
            sha256,
        },
        Err(e) => refuse(e.to_string()),
    }
}

pub use nexus_crds::common::time_from_chrono as to_time;

fn cond(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status does not change.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

/// The status to publish. `previous` are the conditions published before (for transition
/// times); `flashing` is the stage of a flash in progress right now.
pub fn node_status(
    spec: &NexusNodeSpec,
    nics: Vec<NicStatus>,
    memory: &Memory,
    previous: &[Condition],
    flashing: Option<&str>,
    now: DateTime<Utc>,
) -> NexusNodeStatus {
    let t = to_time(now);
    let target = spec.firmware.as_ref().map(|f| f.version.as_str());
    // While a flash runs the NICs are in flux: not current, whatever they read right now.
    let current = flashing.is_none()
        && nics
            .iter()
            .all(|n| target.is_none_or(|v| n.running_firmware.as_deref() == Some(v)));
    let (fc_reason, fc_message) = match (target, current, &memory.last_flash) {
        (None, _, _) => ("NoTarget", "the spec names no firmware".to_owned()),
        (Some(v), true, _) => ("Current", format!("every NIC runs {v}")),
        (Some(v), false, _) if flashing.is_some() => (
            "Flashing",
            format!("flashing {v}: {}", flashing.unwrap_or_default()),
        ),
        (Some(v), false, Some(f)) if f.version == v && f.result != CrdOutcome::Succeeded => {
            let reason = match f.result {
                CrdOutcome::Refused => "FlashRefused",
                CrdOutcome::RolledBack => "FlashRolledBack",
                _ => "FlashFailed",
            };
            (reason, f.message.clone().unwrap_or_default())
        }
        (Some(v), false, _) => ("Pending", format!("{v} not yet applied")),
    };
    let firmware_current = cond(
        previous,
        condition::FIRMWARE_CURRENT,
        current,
        fc_reason,
        fc_message,
        &t,
    );
    let (ready, r_reason, r_message) = if nics.is_empty() {
        (false, "NoNics", "no NICs discovered".to_owned())
    } else if !current {
        (
            false,
            "FirmwareNotCurrent",
            "NICs do not run the spec's firmware".to_owned(),
        )
    } else {
        (
            true,
            "AgentReady",
            "NICs run the spec's firmware".to_owned(),
        )
    };
    let ready = cond(previous, condition::READY, ready, r_reason, r_message, &t);
    let applied_version = if current {
        Some(spec.desired_version)
    } else {
        memory.applied_version
    };
    NexusNodeStatus {
        applied_version,
        nics,
        last_flash: memory.last_flash.clone(),
        agent_version: Some(agent_version().to_string()),
        heartbeat: Some(t),
        // Conditions other parts of the agent own (DataplaneReachable, the supervisor's) are
        // carried over as they were.
        conditions: [ready, firmware_current]
            .into_iter()
            .chain(
                previous
                    .iter()
                    .filter(|c| c.type_ == condition::DATAPLANE_REACHABLE)
                    .cloned(),
            )
            .collect(),
        routing: memory.routing.clone(),
        dataplane: None,
    }
}

pub use nexus_fleet_api::nic_status;

fn crd_outcome(o: pb::FlashOutcome) -> CrdOutcome {
    match o {
        pb::FlashOutcome::Succeeded => CrdOutcome::Succeeded,
        pb::FlashOutcome::RolledBack => CrdOutcome::RolledBack,
        pb::FlashOutcome::Refused => CrdOutcome::Refused,
        pb::FlashOutcome::Interrupted => CrdOutcome::Interrupted,
        pb::FlashOutcome::Failed | pb::FlashOutcome::Unspecified => CrdOutcome::Failed,
    }
}

/// `s` cut to at most `max` bytes on a character boundary (the CRD's `maxLength`).
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The routing side of a kube-mode agent: the controller's tables endpoint and the dataplane.
#[derive(Clone)]
struct RoutingSetup {
    /// `http://…/v1/routing`: tables are fetched at `<server>/<version>`.
    server: Option<String>,
    /// The dataplane (`P4RuntimeTables` with `--p4runtime`); `None`: tables are refused.
    target: Option<Arc<dyn RoutingTarget>>,
    http: reqwest::Client,
}

/// The routing tables endpoint derived from the bundle endpoint (`…/v1/bundles` →
/// `…/v1/routing`), when it has that shape.
pub fn routing_server_from_bundles(bundle_server: &str) -> Option<String> {
    bundle_server
        .trim_end_matches('/')
        .strip_suffix("/v1/bundles")
        .map(|base| format!("{base}/v1/routing"))
}

/// Fetches `version` from `server` (the controller's `/v1/routing`) and checks it is that
/// version. `Err((refuse, why))`: `refuse` is false for a transient failure (tried again).
async fn fetch_tables(
    http: &reqwest::Client,
    server: &str,
    version: &str,
) -> Result<pb::RoutingTables, (bool, String)> {
    use prost::Message as _;
    let url = format!("{}/{version}", server.trim_end_matches('/'));
    let r = http
        .get(&url)
        .send()
        .await
        .map_err(|e| (false, format!("fetching {url}: {e}")))?;
    if !r.status().is_success() {
        return Err((false, format!("{url} answered {}", r.status())));
    }
    let bytes = r
        .bytes()
        .await
        .map_err(|e| (false, format!("reading {url}: {e}")))?;
    let tables = pb::RoutingTables::decode(bytes.as_ref())
        .map_err(|e| (true, format!("the tables at {url} do not decode: {e}")))?;
    if tables.version != version {
        return Err((
            true,
            format!("{url} served version {} instead", tables.version),
        ));
    }
    Ok(tables)
}

/// The kube-mode agent over simulated NICs.
pub struct KubeAgent {
    client: kube::Client,
    node: String,
    sim_dir: PathBuf,
    target: SimFleetTarget,
    /// Namespace of ConfigMap bundle sources that name none.
    pub default_namespace: String,
    /// The rollout controller's bundle endpoint (`http://…/v1/bundles/`): when set, bundles are
    /// fetched from it by digest (the controller verified them), so the agent needs no access
    /// to the ConfigMaps or URLs the Fabric names.
    pub bundle_server: Option<String>,
    /// Where the node's routing tables come from and go to ([`KubeAgent::with_routing`]).
    routing: Option<RoutingSetup>,
    /// How often status is published while something runs.
    pub heartbeat: Duration,
    fetcher: Fetcher,
    memory: Memory,
    restored: bool,
    supervisor: Option<crate::supervise::Supervisor>,
}

impl std::fmt::Debug for KubeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAgent")
            .field("node", &self.node)
            .field("sim_dir", &self.sim_dir)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl KubeAgent {
    /// An agent for NexusNode `node` over the simulated NICs under `sim_dir`.
    pub fn new(
        client: kube::Client,
        node: impl Into<String>,
        sim_dir: impl Into<PathBuf>,
        trust: nexus_firmware::bundle::TrustStore,
    ) -> Self {
        let sim_dir = sim_dir.into();
        Self {
            fetcher: Fetcher::new()
                .with_kube(client.clone())
                .with_max_bytes(crate::max_bundle_len()),
            client,
            node: node.into(),
            target: SimFleetTarget::new(sim_dir.clone(), trust, None),
            sim_dir,
            default_namespace: "nexus-system".into(),
            bundle_server: None,
            routing: None,
            heartbeat: Duration::from_secs(10),
            memory: Memory::default(),
            restored: false,
            supervisor: None,
        }
    }

    /// Supervises the node's dataplane process with the NexusNode's `spec.dataplane`
    /// (started on the first round, restarted when it changes), reported in
    /// `status.dataplane`. Must be called inside a Tokio runtime.
    pub fn with_dataplane(mut self, launch: crate::supervise::Launch) -> Self {
        self.supervisor = Some(crate::supervise::Supervisor::spawn(launch));
        self
    }

    /// Programs the NexusNode's `spec.routing` into `target` (the dataplane over P4Runtime),
    /// fetching each version from `server` (the controller's `…/v1/routing`). Without a server
    /// or a target, a version the spec names is refused with that reason.
    pub fn with_routing(
        mut self,
        server: Option<String>,
        target: Option<Arc<dyn RoutingTarget>>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        self.routing = Some(RoutingSetup {
            server,
            target,
            http,
        });
        self
    }

    /// Fetches and programs `spec.routing` when it names a version not handled yet.
    async fn program_routing(&mut self, spec: &NexusNodeSpec) {
        // A version this agent programmed that the dataplane no longer runs (it restarted
        // empty): forget it, so it is programmed again now rather than never.
        let programmed = self
            .memory
            .routing
            .as_ref()
            .and_then(|r| r.programmed_version.clone());
        let wanted = spec.routing.as_ref().map(|r| &r.version);
        let mut lost = false;
        if let (
            Some(v),
            Some(RoutingSetup {
                target: Some(target),
                ..
            }),
        ) = (&programmed, &self.routing)
            && wanted == Some(v)
            && target.still_programmed().await == Some(false)
        {
            tracing::warn!(version = %v, node = %self.node, "the dataplane lost its routing tables (restarted?); programming them again");
            if let Some(r) = self.memory.routing.as_mut() {
                r.programmed_version = None;
            }
            lost = true;
        }
        let Some(version) = routing_to_program(spec, &self.memory) else {
            return;
        };
        let result = match &self.routing {
            None => Err("this agent programs no routing tables (no --p4runtime)".to_owned()),
            Some(RoutingSetup { target: None, .. }) => Err(
                "no P4Runtime endpoint (--p4runtime): the dataplane cannot be programmed"
                    .to_owned(),
            ),
            Some(RoutingSetup { server: None, .. }) => {
                Err("no routing tables endpoint (--routing-server)".to_owned())
            }
            Some(RoutingSetup {
                server: Some(server),
                target: Some(target),
                http,
            }) => match fetch_tables(http, server, &version).await {
                Err((false, why)) => {
                    // Transient: nothing recorded, tried again on the next round.
                    tracing::warn!(%version, error = %why, "cannot fetch routing tables");
                    return;
                }
                Err((true, why)) => Err(why),
                Ok(tables) => target.program(&tables).await,
            },
        };
        if lost && result.is_err() {
            // The dataplane ran this version until it lost it: a failure now is its restart's
            // (not up yet, another controller briefly primary), not a refusal. Try next round.
            tracing::warn!(%version, node = %self.node, error = ?result, "re-programming lost tables failed; retrying");
            return;
        }
        match &result {
            Ok(()) => tracing::info!(%version, node = %self.node, "routing tables programmed"),
            Err(why) => {
                tracing::warn!(%version, node = %self.node, reason = %why, "routing tables refused")
            }
        }
        self.memory.routing = Some(routing_outcome(
            self.memory.routing.as_ref(),
            &version,
            result,
        ));
    }

    /// Stops the supervised dataplane (SIGTERM, then SIGKILL after its grace).
    pub async fn stop_dataplane(&mut self) {
        if let Some(s) = self.supervisor.take() {
            s.shutdown().await;
        }
    }

    /// Flashes at `bytes_per_sec` (simulated NICs; tests of long flashes).
    pub fn with_flash_speed(mut self, bytes_per_sec: u64) -> Self {
        self.target = SimFleetTarget::new(
            self.sim_dir.clone(),
            self.target.trust().clone(),
            Some(bytes_per_sec),
        );
        self
    }

    /// What the agent remembers.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Powers every NIC on and finishes or undoes an interrupted update; an interruption is
    /// remembered as the last flash, so the next status write reports it.
    pub fn recover(
        &mut self,
        now: DateTime<Utc>,
    ) -> Result<Vec<crate::RecoveryReport>, AgentError> {
        let mut reports = Vec::new();
        for dir in SimDriver::new(&self.sim_dir).nic_dirs()? {
            let mut nic = SimNic::open(&dir, SimOptions::default())?;
            let report = recover(&mut nic)?;
            let found = match &report.outcome {
                RecoveryOutcome::Clean => None,
                RecoveryOutcome::Completed { version } => Some((
                    version.clone(),
                    CrdOutcome::Succeeded,
                    "HealthCheck",
                    "completed after a restart".to_owned(),
                )),
                RecoveryOutcome::RolledBack { version, reason } => Some((
                    version.clone(),
                    CrdOutcome::RolledBack,
                    "HealthCheck",
                    format!("rolled back after a restart: {reason}"),
                )),
                // Not a failure of the image: the agent stopped mid-flash. Reported as
                // interrupted, so the rollout does not count it against failureThreshold, and
                // flashed again.
                RecoveryOutcome::Discarded { stage, version } => Some((
                    version.clone(),
                    CrdOutcome::Interrupted,
                    "Write",
                    format!(
                        "interrupted at {stage:?} (agent restarted); image discarded, previous bank runs; will flash again"
                    ),
                )),
            };
            if let Some((version, result, stage, message)) = found {
                tracing::warn!(nic = %report.nic, %message, "recovered interrupted update");
                self.memory.last_flash = Some(FlashResult {
                    version,
                    result,
                    stage: Some(stage.into()),
                    message: Some(truncate(message, 1024)),
                    started_at: None,
                    finished_at: Some(to_time(now)),
                });
            }
            reports.push(report);
        }
        Ok(reports)
    }

    fn nics(&self) -> Vec<NicStatus> {
        self.target.inventory().iter().map(nic_status).collect()
    }

    async fn publish(&self, status: &NexusNodeStatus) -> Result<(), AgentError> {
        let api: Api<NexusNode> = Api::all(self.client.clone());
        let mut status = status.clone();
        status.dataplane = self.supervisor.as_ref().map(|s| s.status());
        // DataplaneReachable is the supervisor's: computed here, its transition time kept
        // from the condition published before (node_status carries it over).
        let reachable = self
            .supervisor
            .as_ref()
            .and_then(|s| s.reachability())
            .map(|(ok, reason, message)| {
                if !ok {
                    tracing::warn!(node = %self.node, %message, "dataplane not reachable from other nodes");
                }
                cond(
                    &status.conditions,
                    condition::DATAPLANE_REACHABLE,
                    ok,
                    reason,
                    message,
                    &to_time(Utc::now()),
                )
            });
        status
            .conditions
            .retain(|c| c.type_ != condition::DATAPLANE_REACHABLE);
        status.conditions.extend(reachable);
        let body = serde_json::json!({
            "apiVersion": "nexus.dev/v1alpha1",
            "kind": "NexusNode",
            "metadata": { "name": self.node },
            "status": status,
        });
        api.patch_status(
            &self.node,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(AgentError::Kube)?;
        Ok(())
    }

    async fn fetch(&self, source: &Source, sha256: &str) -> Result<Vec<u8>, String> {
        let source = match &self.bundle_server {
            Some(base) => Source::Http(format!("{}/{sha256}", base.trim_end_matches('/'))),
            None => source.clone(),
        };
        self.fetcher.fetch(&source).await.map_err(|e| e.to_string())
    }

    /// Runs `work`, publishing status with a fresh heartbeat (stage `stage`) every
    /// [`KubeAgent::heartbeat`] until it is done.
    async fn with_heartbeat<T>(
        &self,
        spec: &NexusNodeSpec,
        conditions: &mut Vec<Condition>,
        stage: &str,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.tick().await;
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    let s = node_status(spec, self.nics(), &self.memory, conditions, Some(stage), Utc::now());
                    if let Err(e) = self.publish(&s).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    *conditions = s.conditions;
                }
            }
        }
    }

    /// One round: read the NexusNode, act on its spec, publish the status.
    pub async fn step(&mut self, now: DateTime<Utc>) -> Result<(), AgentError> {
        let api: Api<NexusNode> = Api::all(self.client.clone());
        let node = match api.get(&self.node).await {
            Ok(n) => n,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // The node left every Fabric: nothing to run.
                if let Some(s) = &self.supervisor {
                    s.set(None);
                }
                return Err(AgentError::Kube(kube::Error::Api(e)));
            }
            Err(e) => return Err(AgentError::Kube(e)),
        };
        let previous = node.status.clone().unwrap_or_default();
        if let Some(s) = &self.supervisor {
            s.set(Some(crate::supervise::Wanted::from_crd(
                &node.spec.dataplane,
            )));
        }
        if !self.restored {
            // After a restart, what was handled is what the status says.
            self.restored = true;
            if self.memory.applied_version.is_none() {
                self.memory.applied_version = previous.applied_version;
            }
            if self.memory.last_flash.is_none() {
                self.memory.last_flash = previous.last_flash.clone();
            }
        }
        let spec = &node.spec;
        self.program_routing(spec).await;
        let action = decide(spec, &self.nics(), &self.memory, &self.default_namespace);
        let mut conditions = previous.conditions.clone();
        let first_stage = match &action {
            Action::Flash { .. } => Some("Fetch"),
            Action::SwitchBank { .. } => Some("Switch"),
            Action::Nothing | Action::Refuse { .. } => None,
        };
        if action != Action::Nothing {
            tracing::info!(?action, node = %self.node, "acting on spec");
        }
        if first_stage.is_some() {
            let s = node_status(
                spec,
                self.nics(),
                &self.memory,
                &conditions,
                first_stage,
                now,
            );
            self.publish(&s).await?;
            conditions = s.conditions;
        }
        let started = Some(to_time(now));
        let record =
            |version: String, result: CrdOutcome, stage: &str, message: String| FlashResult {
                version,
                result,
                stage: Some(truncate(stage.to_owned(), 32)),
                message: (!message.is_empty()).then(|| truncate(message, 1024)),
                started_at: started.clone(),
                finished_at: Some(to_time(Utc::now().max(now))),
            };
        match action {
            Action::Nothing => {}
            Action::Refuse { version, reason } => {
                self.memory.last_flash =
                    Some(record(version, CrdOutcome::Refused, "Verify", reason));
                self.memory.applied_version = Some(spec.desired_version);
            }
            Action::SwitchBank { version } => {
                let fw = pb::FirmwareTarget {
                    version: version.clone(),
                    pci_addresses: spec.nics.clone(),
                    ..Default::default()
                };
                let out = self.target.apply(&fw, &|_, _, _| {}).await;
                self.memory.last_flash = Some(record(
                    version,
                    crd_outcome(out.outcome),
                    &out.stage,
                    out.message,
                ));
                self.memory.applied_version = Some(spec.desired_version);
            }
            Action::Flash {
                version,
                source,
                sha256,
            } => {
                let fetched = self
                    .with_heartbeat(spec, &mut conditions, "Fetch", self.fetch(&source, &sha256))
                    .await;
                match fetched {
                    Err(e) => {
                        // Not marked applied: fetching is retried on the next round.
                        tracing::warn!(error = %e, "cannot fetch bundle");
                        self.memory.last_flash =
                            Some(record(version, CrdOutcome::Failed, "Fetch", e));
                    }
                    Ok(bytes) => {
                        let digest = hex::encode(Sha256::digest(&bytes));
                        let out = if digest != sha256 {
                            nexus_fleet_agent::FlashOutput::err(
                                pb::FlashOutcome::Refused,
                                "Verify",
                                format!(
                                    "bundle sha256 {digest} does not match spec.firmware.sha256 {sha256}; nothing written"
                                ),
                            )
                        } else {
                            self.flash(spec, &mut conditions, &version, bytes, sha256)
                                .await
                        };
                        self.memory.last_flash = Some(record(
                            version,
                            crd_outcome(out.outcome),
                            &out.stage,
                            out.message,
                        ));
                        self.memory.applied_version = Some(spec.desired_version);
                    }
                }
            }
        }
        let status = node_status(
            spec,
            self.nics(),
            &self.memory,
            &conditions,
            None,
            Utc::now().max(now),
        );
        self.publish(&status).await
    }

    /// Flashes verified bytes, publishing each stage as it is entered and a heartbeat in
    /// between (a failed report does not stop the flash).
    async fn flash(
        &self,
        spec: &NexusNodeSpec,
        conditions: &mut Vec<Condition>,
        version: &str,
        bytes: Vec<u8>,
        sha256: String,
    ) -> nexus_fleet_agent::FlashOutput {
        let fw = pb::FirmwareTarget {
            version: version.to_owned(),
            bundle: bytes,
            sha256,
            pci_addresses: spec.nics.clone(),
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let progress = move |stage: &str, _done: u64, _total: u64| {
            let _ = tx.send(stage.to_owned());
        };
        let apply = self.target.apply(&fw, &progress);
        tokio::pin!(apply);
        let mut shown = "Write".to_owned();
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.tick().await;
        loop {
            let report = tokio::select! {
                out = &mut apply => return out,
                Some(stage) = rx.recv() => {
                    if stage == shown || stage == "Done" {
                        continue;
                    }
                    shown = stage;
                    true
                }
                _ = tick.tick() => true,
            };
            if report {
                let s = node_status(
                    spec,
                    self.nics(),
                    &self.memory,
                    conditions,
                    Some(&shown),
                    Utc::now(),
                );
                if let Err(e) = self.publish(&s).await {
                    tracing::warn!(error = %e, "cannot report progress");
                }
                *conditions = s.conditions;
            }
        }
    }

    /// Runs until interrupted: a round every `interval` (the heartbeat); errors are logged and
    /// retried on the next round.
    pub async fn run(mut self, interval: Duration) {
        self.run_until(interval, std::future::pending()).await;
    }

    /// [`KubeAgent::run`] until `stop` completes (between rounds or while waiting); the agent
    /// stays usable, e.g. to [`KubeAgent::stop_dataplane`].
    pub async fn run_until(
        &mut self,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                r = self.step(Utc::now()) => if let Err(e) = r {
                    tracing::warn!(error = %e, node = %self.node, "kube round failed");
                },
                () = &mut stop => return,
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = &mut stop => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use nexus_crds::node::NodeFirmware;
    use nexus_crds::node::{Bank as CrdBank, BankStatus};

    fn spec(version: Option<&str>, desired: i64) -> NexusNodeSpec {
        serde_json::from_value(serde_json::json!({
            "fabric": "f",
            "desiredVersion": desired,
            "firmware": version.map(|v| serde_json::json!({
                "version": v,
                "bundle": {"url": "file:///b.nxfw"},
                "sha256": "ab".repeat(32),
            })),
        }))
        .unwrap()
    }

    fn nic(running: &str, inactive: Option<(&str, bool)>) -> NicStatus {
        let mut banks = vec![BankStatus {
            bank: CrdBank::A,
            version: Some(running.into()),
            sha256: None,
            bootable: true,
        }];
        if let Some((v, bootable)) = inactive {
            banks.push(BankStatus {
                bank: CrdBank::B,
                version: Some(v.into()),
                sha256: None,
                bootable,
            });
        }
        NicStatus {
            pci_address: "0000:3b:00.0".into(),
            running_firmware: Some(running.into()),
            active_bank: Some(CrdBank::A),
            banks,
            ..Default::default()
        }
    }

    fn flash(version: &str, result: CrdOutcome) -> FlashResult {
        FlashResult {
            version: version.into(),
            result,
            stage: None,
            message: Some("why".into()),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn no_firmware_or_current_means_nothing() {
        let m = Memory::default();
        assert_eq!(
            decide(&spec(None, 1), &[nic("1.0.0", None)], &m, "nexus-system"),
            Action::Nothing
        );
        assert_eq!(
            decide(
                &spec(Some("1.0.0"), 1),
                &[nic("1.0.0", None)],
                &m,
                "nexus-system"
            ),
            Action::Nothing
        );
    }

    #[test]
    fn new_version_is_flashed() {
        let a = decide(
            &spec(Some("1.1.0"), 2),
            &[nic("1.0.0", None)],
            &Memory::default(),
            "nexus-system",
        );
        assert!(
            matches!(a, Action::Flash { ref version, .. } if version == "1.1.0"),
            "{a:?}"
        );
    }

    #[test]
    fn inactive_bootable_bank_means_switch() {
        let s = spec(Some("0.9.0"), 3);
        let m = Memory::default();
        assert_eq!(
            decide(
                &s,
                &[nic("1.0.0", Some(("0.9.0", true)))],
                &m,
                "nexus-system"
            ),
            Action::SwitchBank {
                version: "0.9.0".into()
            }
        );
        // Not bootable: a download is needed.
        assert!(matches!(
            decide(
                &s,
                &[nic("1.0.0", Some(("0.9.0", false)))],
                &m,
                "nexus-system"
            ),
            Action::Flash { .. }
        ));
    }

    #[test]
    fn oci_is_refused() {
        let mut s = spec(Some("1.1.0"), 2);
        s.firmware = Some(NodeFirmware {
            version: "1.1.0".into(),
            bundle: Some(nexus_crds::common::ArtifactSource {
                oci: Some("reg.example/fw:1.1.0".into()),
                ..Default::default()
            }),
            sha256: Some("ab".repeat(32)),
        });
        let a = decide(
            &s,
            &[nic("1.0.0", None)],
            &Memory::default(),
            "nexus-system",
        );
        assert!(
            matches!(a, Action::Refuse { ref reason, .. } if reason.contains("OCI")),
            "{a:?}"
        );
    }

    #[test]
    fn an_interrupted_flash_is_tried_again_and_only_managed_nics_count() {
        let m = Memory {
            applied_version: Some(2),
            last_flash: Some(flash("1.1.0", CrdOutcome::Interrupted)),
            ..Default::default()
        };
        assert!(matches!(
            decide(
                &spec(Some("1.1.0"), 2),
                &[nic("1.0.0", None)],
                &m,
                "nexus-system"
            ),
            Action::Flash { .. }
        ));
        // A NIC the spec does not name is not this Fabric's business.
        let mut s = spec(Some("1.1.0"), 2);
        s.nics = vec!["0000:5e:00.0".into()];
        assert_eq!(
            decide(
                &s,
                &[nic("1.0.0", None)],
                &Memory::default(),
                "nexus-system"
            ),
            Action::Nothing
        );
    }

    #[test]
    fn a_rollback_without_a_bundle_is_a_switch_or_a_refusal() {
        let mut s = spec(Some("0.9.0"), 4);
        if let Some(f) = s.firmware.as_mut() {
            f.bundle = None;
            f.sha256 = None;
        }
        assert_eq!(
            decide(
                &s,
                &[nic("1.0.0", Some(("0.9.0", true)))],
                &Memory::default(),
                "x"
            ),
            Action::SwitchBank {
                version: "0.9.0".into()
            }
        );
        let a = decide(&s, &[nic("1.0.0", None)], &Memory::default(), "x");
        assert!(
            matches!(a, Action::Refuse { ref reason, .. } if reason.contains("inactive bank")),
            "{a:?}"
        );
    }

    #[test]
    fn a_failed_desired_version_is_not_retried_until_bumped() {
        let m = Memory {
            applied_version: Some(2),
            last_flash: Some(flash("1.1.0", CrdOutcome::Refused)),
            ..Default::default()
        };
        assert_eq!(
            decide(
                &spec(Some("1.1.0"), 2),
                &[nic("1.0.0", None)],
                &m,
                "nexus-system"
            ),
            Action::Nothing
        );
        assert!(matches!(
            decide(
                &spec(Some("1.1.0"), 3),
                &[nic("1.0.0", None)],
                &m,
                "nexus-system"
            ),
            Action::Flash { .. }
        ));
    }

    #[test]
    fn status_conditions() {
        let now = Utc::now();
        let s = node_status(
            &spec(Some("1.0.0"), 4),
            vec![nic("1.0.0", None)],
            &Memory::default(),
            &[],
            None,
            now,
        );
        assert_eq!(s.applied_version, Some(4));
        assert_eq!(s.conditions[0].type_, "Ready");
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[1].reason, "Current");
        assert!(s.heartbeat.is_some());

        let m = Memory {
            applied_version: Some(5),
            last_flash: Some(flash("1.1.0", CrdOutcome::Refused)),
            ..Default::default()
        };
        let s2 = node_status(
            &spec(Some("1.1.0"), 5),
            vec![nic("1.0.0", None)],
            &m,
            &s.conditions,
            None,
            now,
        );
        assert_eq!(s2.applied_version, Some(5));
        assert_eq!(s2.conditions[0].status, "False");
        assert_eq!(s2.conditions[0].reason, "FirmwareNotCurrent");
        assert_eq!(s2.conditions[1].reason, "FlashRefused");
        assert_eq!(s2.conditions[1].message, "why");

        let flashing = node_status(
            &spec(Some("1.1.0"), 6),
            vec![nic("1.0.0", None)],
            &Memory::default(),
            &[],
            Some("Write"),
            now,
        );
        assert_eq!(flashing.conditions[1].reason, "Flashing");
        assert_eq!(flashing.applied_version, None);

        let none = node_status(
            &spec(None, 1),
            Vec::new(),
            &Memory::default(),
            &[],
            None,
            now,
        );
        assert_eq!(none.conditions[0].reason, "NoNics");
    }

    #[test]
    fn routing_is_programmed_once_per_version_and_a_refusal_keeps_the_old_one() {
        let mut spec = spec(None, 1);
        let mut m = Memory::default();
        assert_eq!(routing_to_program(&spec, &m), None, "no spec.routing");
        spec.routing = Some(nexus_crds::node::NodeRoutingSpec {
            version: "v1".into(),
        });
        assert_eq!(routing_to_program(&spec, &m).as_deref(), Some("v1"));
        m.routing = Some(routing_outcome(None, "v1", Ok(())));
        assert_eq!(routing_to_program(&spec, &m), None, "v1 runs");
        spec.routing = Some(nexus_crds::node::NodeRoutingSpec {
            version: "v2".into(),
        });
        assert_eq!(routing_to_program(&spec, &m).as_deref(), Some("v2"));
        let refused = routing_outcome(m.routing.as_ref(), "v2", Err("no".into()));
        assert_eq!(refused.programmed_version.as_deref(), Some("v1"));
        assert_eq!(refused.refused_version.as_deref(), Some("v2"));
        assert_eq!(refused.refused_reason.as_deref(), Some("no"));
        m.routing = Some(refused);
        assert_eq!(routing_to_program(&spec, &m), None, "v2 is not tried again");
        let st = node_status(&spec, vec![], &m, &[], None, Utc::now());
        assert_eq!(st.routing, m.routing);
        spec.routing = Some(nexus_crds::node::NodeRoutingSpec {
            version: "v3".into(),
        });
        let ok = routing_outcome(m.routing.as_ref(), "v3", Ok(()));
        assert_eq!(ok.programmed_version.as_deref(), Some("v3"));
        assert_eq!(ok.refused_version, None);
    }

    #[test]
    fn the_routing_endpoint_is_derived_from_the_bundle_endpoint() {
        assert_eq!(
            routing_server_from_bundles("http://c:7602/v1/bundles/").as_deref(),
            Some("http://c:7602/v1/routing")
        );
        assert_eq!(routing_server_from_bundles("http://c:7602/elsewhere"), None);
    }
}
