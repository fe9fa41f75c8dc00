//! Command-line front ends, shared by the `nexus-agent` binary and `nexctl`.
//!
//! `nexctl` embeds these as subcommands:
//! - `nexctl firmware <keygen|pack|sign|inspect|verify>` → [`FirmwareCommand`] + [`run_firmware`];
//! - `nexctl agent flash --sim DIR BUNDLE` → [`AgentFlashArgs`] + [`run_agent_flash`].
//!
//! Errors are `anyhow` here because this is the outermost layer: it adds file-name context and is
//! printed to a person.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nexus_firmware::bundle::{self, BuildInfo, Manifest, SigningKey, TrustStore};
use semver::{Version, VersionReq};

use crate::devlink::DevlinkDriver;
use crate::flash::{FlashOutcome, recover};
use crate::nic::{NicDriver, Progress, Stage};
use crate::sim::{Faults, PowerLossPoint, SimDriver, SimNic, SimOptions};
use crate::status::{InProgress, Operation, StatusFile};
use crate::{agent_version, flash_bundle, flash_now, read_bundle_file, read_trust_store};

fn parse_hex_u16(s: &str) -> Result<u16, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u16::from_str_radix(t, 16).map_err(|e| format!("{s:?} is not a 16-bit hex id: {e}"))
}

/// `nexctl firmware ...`: build, sign and check firmware bundles.
#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Generate an Ed25519 release key (PKCS#8 DER, mode 0600) and add its public half to a trust
    /// store file.
    Keygen(KeygenArgs),
    /// Build an unsigned bundle from a firmware image.
    Pack(PackArgs),
    /// Sign a bundle with a release key.
    Sign(SignArgs),
    /// Show a bundle's manifest and signature without trusting it.
    Inspect(InspectArgs),
    /// Check a bundle's signature against a trust store, and optionally its fit for a device.
    Verify(VerifyArgs),
}

/// Arguments of `firmware keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key name, as recorded in bundles and trust stores ([A-Za-z0-9._-]).
    #[arg(long)]
    pub id: String,
    /// Where to write the private key.
    #[arg(long)]
    pub out: PathBuf,
    /// Trust store file to create or extend with the public key.
    #[arg(long)]
    pub trust_store: Option<PathBuf>,
}

/// Arguments of `firmware pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// Firmware image.
    #[arg(long)]
    pub payload: PathBuf,
    /// Output bundle.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Vendor name.
    #[arg(long)]
    pub vendor: String,
    /// PCI vendor id, hex (e.g. 15b3).
    #[arg(long, value_parser = parse_hex_u16)]
    pub pci_vendor: u16,
    /// PCI device id(s), hex; repeat for several.
    #[arg(long = "pci-device", value_parser = parse_hex_u16, required = true)]
    pub pci_devices: Vec<u16>,
    /// Firmware version (semver).
    #[arg(long)]
    pub version: Version,
    /// Agent versions allowed to flash it (semver requirement).
    #[arg(long, default_value = ">=0.1")]
    pub agent_version: VersionReq,
    /// Source revision, recorded in the manifest.
    #[arg(long)]
    pub commit: Option<String>,
    /// Builder, recorded in the manifest.
    #[arg(long)]
    pub builder: Option<String>,
}

/// Arguments of `firmware sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Bundle to sign.
    pub bundle: PathBuf,
    /// PKCS#8 private key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Key name recorded in the signature (must match the trust store entry).
    #[arg(long)]
    pub key_id: String,
    /// Output; defaults to replacing the input.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// Arguments of `firmware inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Bundle file.
    pub bundle: PathBuf,
}

/// Arguments of `firmware verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Bundle file.
    pub bundle: PathBuf,
    /// Trust store JSON (`{"keys": {"name": "<hex public key>"}}`).
    #[arg(long, env = "NEXUS_TRUST_STORE")]
    pub trust_store: PathBuf,
    /// Also check it fits this PCI vendor id (hex).
    #[arg(long, value_parser = parse_hex_u16, requires = "pci_device")]
    pub pci_vendor: Option<u16>,
    /// Also check it fits this PCI device id (hex).
    #[arg(long, value_parser = parse_hex_u16, requires = "pci_vendor")]
    pub pci_device: Option<u16>,
    /// Agent version for the compatibility check (default: this build's).
    #[arg(long)]
    pub agent_version: Option<Version>,
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    Ok(crate::fsutil::write_atomic_as(path, bytes, private)?)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs a `firmware` subcommand, printing results to stdout.
pub fn run_firmware(cmd: FirmwareCommand) -> anyhow::Result<()> {
    match cmd {
        FirmwareCommand::Keygen(a) => {
            let der = bundle::generate_pkcs8()?;
            let key = SigningKey::from_pkcs8(&a.id, &der)?;
            write_file(&a.out, &der, true)?;
            println!("wrote private key {} ({})", a.out.display(), a.id);
            println!("public key {}", hex::encode(key.public_key()));
            if let Some(ts) = a.trust_store {
                let mut store = if ts.exists() {
                    read_trust_store(&ts)?
                } else {
                    TrustStore::new()
                };
                store.insert(&a.id, key.public_key());
                write_file(&ts, store.to_json().as_bytes(), false)?;
                println!("added {} to trust store {}", a.id, ts.display());
            }
        }
        FirmwareCommand::Pack(a) => {
            let payload = read(&a.payload)?;
            let mut m = Manifest::new(
                a.vendor,
                a.pci_vendor,
                a.pci_devices,
                a.version,
                a.agent_version,
            );
            m.build = BuildInfo {
                commit: a.commit,
                timestamp: Some(flash_now()),
                builder: a.builder,
            };
            let b = bundle::pack(m, payload)?;
            write_file(&a.out, &b.to_bytes(), false)?;
            println!(
                "packed {} ({} bytes payload, sha256 {}), unsigned",
                a.out.display(),
                b.manifest().payload_size,
                b.manifest().payload_sha256
            );
        }
        FirmwareCommand::Sign(a) => {
            let key = SigningKey::from_pkcs8(&a.key_id, &read(&a.key)?)
                .with_context(|| format!("loading key {}", a.key.display()))?;
            let b = bundle::parse(&read_bundle_file(&a.bundle)?)
                .with_context(|| format!("parsing {}", a.bundle.display()))?;
            let signed = bundle::sign(b, &key);
            let out = a.out.unwrap_or(a.bundle);
            write_file(&out, &signed.to_bytes(), false)?;
            println!("signed {} with {}", out.display(), a.key_id);
        }
        FirmwareCommand::Inspect(a) => {
            let b = bundle::parse(&read_bundle_file(&a.bundle)?)
                .with_context(|| format!("parsing {}", a.bundle.display()))?;
            println!("{}", serde_json::to_string_pretty(b.manifest())?);
            match b.signature() {
                Some(s) => println!("signed by key {:?} (not verified; use `verify`)", s.key_id),
                None => println!("unsigned"),
            }
        }
        FirmwareCommand::Verify(a) => {
            let trust = read_trust_store(&a.trust_store)?;
            let b = bundle::parse(&read_bundle_file(&a.bundle)?)
                .with_context(|| format!("parsing {}", a.bundle.display()))?;
            let v = bundle::verify(&b, &trust)?;
            if let (Some(vendor), Some(device)) = (a.pci_vendor, a.pci_device) {
                v.check_compatible(
                    vendor,
                    device,
                    &a.agent_version.unwrap_or_else(agent_version),
                )?;
                println!("compatible with {vendor:04x}:{device:04x}");
            }
            println!(
                "OK: {} {} signed by {:?}, payload sha256 {}",
                v.manifest().vendor,
                v.manifest().version,
                v.key_id(),
                v.manifest().payload_sha256
            );
        }
    }
    Ok(())
}

/// A fault to inject into a simulated NIC (for demos and drills).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultArg {
    /// Power loss before the first byte is written.
    PowerLossBeforeWrite,
    /// Power loss halfway through the write.
    PowerLossMidWrite,
    /// Power loss after write and read-back, before the switch.
    PowerLossAfterWrite,
    /// Power loss after the switch, before the health check.
    PowerLossAfterSwitch,
    /// The flash write fails halfway.
    WriteError,
    /// A bit flips in flash (caught by read-back).
    CorruptWrite,
    /// The new image does not boot (rolled back).
    FailBoot,
}

impl FaultArg {
    fn into_faults(faults: &[FaultArg], image_size_hint: u64) -> Faults {
        let mut f = Faults::default();
        for fault in faults {
            match fault {
                Self::PowerLossBeforeWrite => f.power_loss = Some(PowerLossPoint::BeforeWrite),
                Self::PowerLossMidWrite => f.power_loss = Some(PowerLossPoint::MidWrite),
                Self::PowerLossAfterWrite => f.power_loss = Some(PowerLossPoint::AfterWrite),
                Self::PowerLossAfterSwitch => f.power_loss = Some(PowerLossPoint::AfterSwitch),
                Self::WriteError => f.write_error_at = Some(image_size_hint / 2),
                Self::CorruptWrite => f.corrupt_write = true,
                Self::FailBoot => f.fail_trial_boot = true,
            }
        }
        f
    }
}

/// Arguments of `nexctl agent flash` (and `nexus-agent flash`).
#[derive(Debug, Args)]
pub struct AgentFlashArgs {
    /// Simulated NIC directory.
    #[arg(long)]
    pub sim: PathBuf,
    /// Signed bundle.
    pub bundle: PathBuf,
    /// Trust store JSON (`{"keys": {"name": "<hex public key>"}}`).
    #[arg(long, env = "NEXUS_TRUST_STORE")]
    pub trust_store: PathBuf,
    /// Write the agent status JSON here.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Simulated flash speed in bytes/s (default: unthrottled).
    #[arg(long)]
    pub speed: Option<u64>,
    /// Inject a fault (repeatable).
    #[arg(long = "fault", value_enum)]
    pub faults: Vec<FaultArg>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn progress_bar() -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Verify => "verify",
        Stage::Write => "write",
        Stage::ReadBack => "read-back",
        Stage::Switch => "switch",
        Stage::HealthCheck => "boot",
        Stage::Done => "done",
    }
}

/// Flashes a simulated NIC with a progress bar: recovery first, then verify → write → read-back
/// → switch → health check. Exits with an error if the bundle is refused, the flash aborted, or
/// the new image was rolled back.
pub fn run_agent_flash(a: AgentFlashArgs) -> anyhow::Result<()> {
    let trust = read_trust_store(&a.trust_store)?;
    let bytes = read_bundle_file(&a.bundle)?;
    let faults = FaultArg::into_faults(&a.faults, bytes.len() as u64);
    let mut status = StatusFile::open(a.status_file.as_deref(), "sim");
    let mut nic = SimNic::open(
        &a.sim,
        SimOptions {
            bytes_per_sec: a.speed,
            faults,
        },
    )
    .with_context(|| format!("opening simulated NIC {}", a.sim.display()))?;
    let recovery = recover(&mut nic)?;
    if recovery.outcome != crate::RecoveryOutcome::Clean {
        eprintln!("recovered: {:?}", recovery.outcome);
    }
    status.record(Operation::Recovery {
        at: flash_now(),
        report: recovery,
    })?;
    let nic_id = crate::BankedNic::id(&nic);
    let pb = progress_bar();
    let mut last_stage = None;
    let mut status_err = None;
    let result = flash_bundle(
        &mut nic,
        &bytes,
        &trust,
        &agent_version(),
        &mut |p: &Progress| {
            pb.set_message(stage_name(p.stage));
            pb.set_length(p.bytes_total);
            pb.set_position(p.bytes_done);
            if last_stage != Some(p.stage) {
                last_stage = Some(p.stage);
                let ip = InProgress {
                    nic: nic_id.clone(),
                    progress: *p,
                };
                if let Err(e) = status.update(|s| s.in_progress = Some(ip)) {
                    status_err.get_or_insert(e);
                }
            }
        },
    );
    pb.finish_and_clear();
    if let Some(e) = status_err {
        tracing::warn!(error = %e, "could not write status file");
    }
    match result {
        Ok(report) => {
            status.record(Operation::Flash {
                at: flash_now(),
                report: report.clone(),
            })?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            match &report.outcome {
                FlashOutcome::Updated => {
                    if !a.json {
                        println!(
                            "updated {} from {} to {} (bank {}, signed by {})",
                            report.nic,
                            report.from_version.as_deref().unwrap_or("none"),
                            report.to_version,
                            report.bank,
                            report.signed_by
                        );
                    }
                    Ok(())
                }
                FlashOutcome::RolledBack { reason } => bail!(
                    "{} rolled back to bank {} ({}): {reason}",
                    report.nic,
                    report.running_bank,
                    report.from_version.as_deref().unwrap_or("none")
                ),
            }
        }
        Err(e) => {
            status.record(Operation::FlashFailed {
                at: flash_now(),
                nic: nic_id,
                reason: e.metric_label().to_owned(),
                error: e.to_string(),
            })?;
            Err(e.into())
        }
    }
}

/// NIC backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverKind {
    /// Simulated NICs in `--sim-dir`.
    Sim,
    /// Real NICs via `devlink`.
    Devlink,
}

/// The `nexus-agent` binary's arguments.
#[derive(Debug, Parser)]
#[command(
    name = "nexus-agent",
    version,
    about = "Nexus node agent: NIC inventory and safe firmware flashing"
)]
pub struct AgentArgs {
    /// NIC backend.
    #[arg(long, value_enum, default_value = "sim", env = "NEXUS_AGENT_DRIVER")]
    pub driver: DriverKind,
    /// Directory of a simulated NIC, or of several (one per subdirectory).
    #[arg(long, env = "NEXUS_SIM_DIR", required_if_eq("driver", "sim"))]
    pub sim_dir: Option<PathBuf>,
    /// Where to write the JSON status file.
    #[arg(long, env = "NEXUS_AGENT_STATUS_FILE")]
    pub status_file: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Fleet mode: dial the rollout controller and apply what it pushes.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// What to do (default: `discover`).
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

/// `nexus-agent --controller URL`: the fleet push protocol (sim driver).
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Rollout controller fleet endpoint, e.g. `http://127.0.0.1:7600`; runs until interrupted.
    #[arg(long, env = "NEXUS_CONTROLLER")]
    pub controller: Option<String>,
    /// Node name reported to the controller (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Node label `key=value`, matched by Fabric node selectors (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Trust store JSON for bundles the controller pushes.
    #[arg(long = "controller-trust-store", env = "NEXUS_TRUST_STORE")]
    pub trust_store: Option<PathBuf>,
    /// Seconds between status reports (the heartbeat).
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
    /// Simulated flash speed in bytes/s.
    #[arg(long = "sim-speed")]
    pub sim_speed: Option<u64>,
    /// The node dataplane's P4Runtime endpoint (e.g. `http://127.0.0.1:9559`): the agent loads
    /// the NexRoute pipeline there and programs the routing tables the controller pushes.
    /// Without it, pushed tables are refused with that reason.
    #[arg(long, env = "NEXUS_P4RUNTIME")]
    pub p4runtime: Option<String>,
    /// The dataplane's P4Runtime device id.
    #[arg(long, default_value_t = 1)]
    pub p4_device_id: u64,
    /// PEM roots the controller's certificate must chain to (an `https://` --controller).
    #[arg(long = "controller-tls-ca", env = "NEXUS_CONTROLLER_TLS_CA")]
    pub controller_tls_ca: Option<PathBuf>,
    /// This node's certificate (role `node`, its name as common name), re-read when it
    /// changes; the controller refuses it under any other node name.
    #[arg(long = "tls-cert", env = "NEXUS_NODE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `--tls-cert`.
    #[arg(long = "tls-key", env = "NEXUS_NODE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Name the controller's certificate must carry (default: the --controller host).
    #[arg(long = "controller-tls-server-name")]
    pub controller_tls_server_name: Option<String>,
    /// The Nexus CA's gRPC endpoint (`https://…`): the agent obtains its node certificate
    /// there with `--join-token` when `--tls-cert` does not exist yet, and renews it there
    /// (with the certificate it holds) after two thirds of its life.
    #[arg(long = "ca-url", env = "NEXUS_CA_URL", requires = "tls_cert")]
    pub ca_url: Option<String>,
    /// The CA's root (PEM) to trust at `--ca-url` (default: `--controller-tls-ca`).
    #[arg(long = "ca-tls-ca", env = "NEXUS_CA_TLS_CA")]
    pub ca_tls_ca: Option<PathBuf>,
    /// Name the CA's certificate must carry (default: the --ca-url host).
    #[arg(long = "ca-tls-server-name")]
    pub ca_tls_server_name: Option<String>,
    /// One-time join token (`nexus-ca join-token --node <name>`), used only while the node
    /// has no certificate yet.
    #[arg(
        long = "join-token",
        env = "NEXUS_JOIN_TOKEN",
        hide_env_values = true,
        requires = "ca_url"
    )]
    pub join_token: Option<String>,
}

fn run_fleet(sim_dir: PathBuf, f: FleetArgs, controller: String) -> anyhow::Result<()> {
    use nexus_fleet_agent::{Agent, AgentConfig};
    let trust = read_trust_store(
        &f.trust_store
            .context("--controller-trust-store is required with --controller")?,
    )?;
    let target = crate::fleet::SimFleetTarget::new(sim_dir, trust, f.sim_speed);
    target.recover_all()?;
    let node = match f.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into()),
    };
    let enrollment = match &f.ca_url {
        None => None,
        Some(url) => Some(crate::enroll::Enrollment {
            ca_url: url.clone(),
            ca_root: f
                .ca_tls_ca
                .clone()
                .or_else(|| f.controller_tls_ca.clone())
                .context("--ca-url needs the CA's root: --ca-tls-ca or --controller-tls-ca")?,
            ca_server_name: f.ca_tls_server_name.clone(),
            node_name: node.clone(),
            cert: f.tls_cert.clone().context("--ca-url needs --tls-cert")?,
            key: f.tls_key.clone().context("--ca-url needs --tls-key")?,
            join_token: f.join_token.clone(),
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The certificate must exist before the controller channel reads it.
    let renewals = match enrollment {
        None => None,
        Some(e) => {
            let valid = rt.block_on(e.ensure())?;
            Some(rt.spawn(e.run_renewals(valid)))
        }
    };
    let mut cfg = AgentConfig::new(controller, node);
    cfg.tls = nexus_tls::client_files(
        f.controller_tls_ca.clone(),
        f.tls_cert.clone(),
        f.tls_key.clone(),
        f.controller_tls_server_name.clone(),
    )
    .context("controller TLS flags")?;
    cfg.agent_version = agent_version().to_string();
    cfg.heartbeat = Duration::from_secs(f.heartbeat_secs.max(1));
    for l in &f.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label {l:?}: expected key=value"))?;
        cfg.labels.insert(k.to_owned(), v.to_owned());
    }
    let mut agent = Agent::new(cfg.clone(), std::sync::Arc::new(target));
    if let Some(ep) = f.p4runtime {
        agent = agent.with_routing(std::sync::Arc::new(crate::routing::P4RuntimeTables::new(
            ep,
            f.p4_device_id,
        )));
    }
    rt.block_on(async move {
        tracing::info!(node = %cfg.node_name, controller = %cfg.endpoint, "fleet mode");
        tokio::select! {
            () = agent.run() => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        }
        if let Some(r) = renewals {
            r.abort();
        }
    });
    Ok(())
}

/// `nexus-agent` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Power on / recover simulated NICs, list NICs, write the status file.
    Discover,
    /// Flash a bundle onto one NIC.
    Flash(DaemonFlashArgs),
    /// Create a simulated NIC.
    SimCreate(SimCreateArgs),
    /// Recover, then keep the inventory fresh and serve `/status` and `/healthz` over HTTP.
    Serve(ServeArgs),
    /// Kube mode: follow this node's `NexusNode` spec and write its status (sim driver).
    Kube(KubeArgs),
}

/// Arguments of `nexus-agent kube`.
#[derive(Debug, Args)]
pub struct KubeArgs {
    /// This node's name, which is also the name of its (cluster-scoped) NexusNode.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Trust store JSON: only bundles signed by one of its keys are flashed.
    #[arg(long, env = "NEXUS_TRUST_STORE")]
    pub trust_store: PathBuf,
    /// Status heartbeat and spec poll interval, a Go duration (`10s`).
    #[arg(long, default_value = "10s", value_parser = parse_heartbeat)]
    pub heartbeat: Duration,
    /// Namespace of ConfigMap bundle sources that name none.
    #[arg(long, default_value = "nexus-system")]
    pub config_map_namespace: String,
    /// The rollout controller's bundle endpoint, e.g.
    /// `http://nexus-rollout-controller.nexus-system.svc:7602/v1/bundles`: bundles are fetched
    /// from it by sha256 (verified by the controller), so the agent needs no access to the
    /// Fabric's ConfigMaps or URLs. Without it the agent reads the source itself.
    #[arg(long, env = "NEXUS_BUNDLE_SERVER")]
    pub bundle_server: Option<String>,
    /// The controller's routing tables endpoint, e.g.
    /// `http://nexus-rollout-controller.nexus-system.svc:7602/v1/routing`: the version
    /// `spec.routing` names is fetched at `<this>/<version>`. Default: derived from
    /// `--bundle-server` (`…/v1/bundles` → `…/v1/routing`, the same controller).
    #[arg(long, env = "NEXUS_ROUTING_SERVER")]
    pub routing_server: Option<String>,
    /// The node dataplane's P4Runtime endpoint (e.g. `http://127.0.0.1:9559`): the agent
    /// becomes its primary controller, loads the NexRoute pipeline and programs the tables
    /// `spec.routing` names, reporting them in `status.routing`. Without it those tables are
    /// refused with that reason.
    #[arg(long, env = "NEXUS_P4RUNTIME")]
    pub p4runtime: Option<String>,
    /// The dataplane's P4Runtime device id.
    #[arg(long, default_value_t = 1)]
    pub p4_device_id: u64,
    /// Supervise the node's dataplane: path of `nexus-dataplane`, started with the NexusNode's
    /// `spec.dataplane` (UDP port, MTU), restarted with backoff when it exits and when the
    /// configuration changes, reported in `status.dataplane`. It inherits this process's
    /// environment (`NEXUS_DATAPLANE_MIC_DIR`, `NEXUS_DATAPLANE_CRL`, usage settings, …).
    #[arg(long, env = "NEXUS_DATAPLANE_BIN")]
    pub dataplane_bin: Option<PathBuf>,
    /// HTTP address the supervised dataplane serves /readyz and /metrics on.
    #[arg(long, default_value = "127.0.0.1:7701")]
    pub dataplane_http: std::net::SocketAddr,
    /// Extra flag for the supervised dataplane (repeatable), e.g. `--dataplane-arg=--demo-model`.
    #[arg(long = "dataplane-arg", allow_hyphen_values = true)]
    pub dataplane_args: Vec<String>,
    /// Seconds the dataplane may drain after SIGTERM before it is killed.
    #[arg(long, default_value_t = 15)]
    pub dataplane_grace: u64,
    /// This node's address as routing domains name its endpoints (in the DaemonSet: the
    /// host's IP, reached through the hostPort): the dataplane advertises it with the
    /// Fabric's UDP port, so calls routed to this node by capability are served here.
    #[arg(long, env = "NEXUS_AGENT_ADVERTISE_IP")]
    pub dataplane_advertise_ip: Option<std::net::IpAddr>,
    /// The UDP port the node forwards to this pod (the DaemonSet's hostPort). With it, the
    /// NexusNode's `DataplaneReachable` condition says whether the Fabric's `udpPort` is that
    /// port, i.e. whether peers on other nodes can reach the dataplane.
    #[arg(long)]
    pub dataplane_host_port: Option<u16>,
}

fn parse_heartbeat(s: &str) -> Result<Duration, String> {
    match nexus_crds::common::parse_duration(s) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err("the heartbeat must be at least 1s".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn run_kube(sim_dir: PathBuf, k: KubeArgs) -> anyhow::Result<()> {
    let trust = read_trust_store(&k.trust_store)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let mut agent =
            crate::kube_mode::KubeAgent::new(client, k.node_name.clone(), sim_dir, trust);
        agent.default_namespace = k.config_map_namespace;
        let routing_server = k.routing_server.clone().or_else(|| {
            k.bundle_server
                .as_deref()
                .and_then(crate::kube_mode::routing_server_from_bundles)
        });
        let target = k.p4runtime.clone().map(|ep| {
            std::sync::Arc::new(crate::routing::P4RuntimeTables::new(ep, k.p4_device_id))
                as std::sync::Arc<dyn nexus_fleet_agent::RoutingTarget>
        });
        agent = agent.with_routing(routing_server, target);
        agent.bundle_server = k.bundle_server;
        agent.heartbeat = k.heartbeat;
        if let Some(bin) = &k.dataplane_bin {
            let mut launch = crate::supervise::Launch::new(bin, k.dataplane_http);
            launch.args = k.dataplane_args.clone();
            launch.grace = Duration::from_secs(k.dataplane_grace);
            launch.advertise_ip = k.dataplane_advertise_ip;
            launch.host_port = k.dataplane_host_port;
            agent = agent.with_dataplane(launch);
        }
        // Recovery first, before any spec is read; the first status write reports it.
        for r in agent.recover(chrono::Utc::now())? {
            tracing::info!(nic = %r.nic, outcome = ?r.outcome, "start-up recovery");
        }
        tracing::info!(node = %k.node_name, "kube mode");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let interval = k.heartbeat;
        let stopped = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
                _ = term.recv() => tracing::info!("terminated"),
            }
        };
        agent.run_until(interval, stopped).await;
        // The pod is going away: let the dataplane drain before the agent exits.
        agent.stop_dataplane().await;
        anyhow::Ok(())
    })
}

/// Arguments of `nexus-agent serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9477")]
    pub listen: std::net::SocketAddr,
    /// Seconds between inventory refreshes.
    #[arg(long, default_value_t = 30)]
    pub interval_secs: u64,
}

/// Lists NICs into `status`. With `recover`, simulated NICs are first powered on and recovered
/// (what the agent does once at start; later refreshes only look).
fn inventory(
    driver: DriverKind,
    sim_dir: Option<&Path>,
    recover_first: bool,
    status: &mut StatusFile,
) -> Result<Vec<crate::NicInfo>, crate::AgentError> {
    let nics = match driver {
        DriverKind::Sim => {
            let dir = sim_dir.ok_or_else(|| crate::AgentError::NotFound("--sim-dir".into()))?;
            let mut drv = SimDriver::new(dir);
            if recover_first {
                for dir in drv.nic_dirs()? {
                    let mut nic = SimNic::open(&dir, SimOptions::default())?;
                    let report = recover(&mut nic)?;
                    status.record(Operation::Recovery {
                        at: flash_now(),
                        report,
                    })?;
                }
            }
            drv.discover()?
        }
        DriverKind::Devlink => DevlinkDriver::system().discover()?,
    };
    status.update(|s| s.nics = nics.clone())?;
    Ok(nics)
}

/// Arguments of `nexus-agent flash`.
#[derive(Debug, Args)]
pub struct DaemonFlashArgs {
    /// Signed bundle.
    pub bundle: PathBuf,
    /// Trust store JSON (`{"keys": {"name": "<hex public key>"}}`).
    #[arg(long, env = "NEXUS_TRUST_STORE")]
    pub trust_store: PathBuf,
    /// devlink handle (`pci/0000:3b:00.0`); for `sim`, defaults to `--sim-dir`.
    #[arg(long)]
    pub nic: Option<String>,
    /// Simulated flash speed in bytes/s.
    #[arg(long)]
    pub speed: Option<u64>,
    /// Inject a fault into the simulated NIC (repeatable).
    #[arg(long = "fault", value_enum)]
    pub faults: Vec<FaultArg>,
}

/// Arguments of `nexus-agent sim-create`.
#[derive(Debug, Args)]
pub struct SimCreateArgs {
    /// PCI vendor id, hex.
    #[arg(long, value_parser = parse_hex_u16, default_value = "15b3")]
    pub pci_vendor: u16,
    /// PCI device id, hex.
    #[arg(long, value_parser = parse_hex_u16, default_value = "101d")]
    pub pci_device: u16,
    /// Serial number.
    #[arg(long, default_value = "SIM0000001")]
    pub serial: String,
    /// Version of the factory image in bank A.
    #[arg(long, default_value = "1.0.0")]
    pub version: String,
    /// Size of the generated factory image.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub image_size: usize,
}

/// Sets up tracing on stderr (text or JSON), filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the `nexus-agent` binary.
pub fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let driver_name = match args.driver {
        DriverKind::Sim => "sim",
        DriverKind::Devlink => "devlink",
    };
    let mut status = StatusFile::open(args.status_file.as_deref(), driver_name);
    let sim_dir = || {
        args.sim_dir
            .clone()
            .context("--sim-dir is required with --driver sim")
    };
    if let Some(controller) = args.fleet.controller.clone() {
        if args.driver != DriverKind::Sim {
            anyhow::bail!("--controller supports --driver sim only for now");
        }
        return run_fleet(sim_dir()?, args.fleet, controller);
    }
    match args.command.unwrap_or(AgentCommand::Discover) {
        AgentCommand::Discover => {
            let dir = if args.driver == DriverKind::Sim {
                Some(sim_dir()?)
            } else {
                None
            };
            let nics = inventory(args.driver, dir.as_deref(), true, &mut status)?;
            println!("{}", serde_json::to_string_pretty(&nics)?);
        }
        AgentCommand::Kube(k) => {
            if args.driver != DriverKind::Sim {
                anyhow::bail!("kube mode supports --driver sim only for now");
            }
            run_kube(sim_dir()?, k)?;
        }
        AgentCommand::Serve(sa) => {
            let dir = if args.driver == DriverKind::Sim {
                Some(sim_dir()?)
            } else {
                None
            };
            inventory(args.driver, dir.as_deref(), true, &mut status)?;
            let initial = status.status().clone();
            let driver = args.driver;
            crate::serve::serve(
                sa.listen,
                Duration::from_secs(sa.interval_secs.max(1)),
                initial,
                move || {
                    inventory(driver, dir.as_deref(), false, &mut status)?;
                    Ok(status.status().clone())
                },
            )?;
        }
        AgentCommand::Flash(f) => match args.driver {
            DriverKind::Sim => {
                let sim = f.nic.map(PathBuf::from).map_or_else(sim_dir, Ok)?;
                run_agent_flash(AgentFlashArgs {
                    sim,
                    bundle: f.bundle,
                    trust_store: f.trust_store,
                    status_file: args.status_file.clone(),
                    speed: f.speed,
                    faults: f.faults,
                    json: false,
                })?;
            }
            DriverKind::Devlink => {
                let handle = f
                    .nic
                    .context("--nic pci/<address> is required with devlink")?;
                let trust = read_trust_store(&f.trust_store)?;
                let b = bundle::parse(&read_bundle_file(&f.bundle)?)?;
                let v = bundle::verify(&b, &trust)?;
                let info = DevlinkDriver::system().flash(&handle, &v, &agent_version())?;
                println!("{}", serde_json::to_string_pretty(&info)?);
                status.update(|s| s.nics = vec![info])?;
            }
        },
        AgentCommand::SimCreate(c) => {
            let dir = sim_dir()?;
            // A recognisable, deterministic factory image.
            let image: Vec<u8> = (0..c.image_size).map(|i| (i % 251) as u8).collect();
            SimNic::create(
                &dir,
                c.pci_vendor,
                c.pci_device,
                &c.serial,
                &c.version,
                &image,
            )?;
            println!(
                "created simulated NIC {:04x}:{:04x} in {}",
                c.pci_vendor,
                c.pci_device,
                dir.display()
            );
        }
    }
    Ok(())
}
