//! `nexctl` commands backed by the rollout controller's HTTP API (local mode): `get fabrics|nodes`
//! and `rollout status|pause|resume|rollback`. Argument structs and `run` functions only; nexctl
//! wires them into its command tree.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use nexus_crds::fabric::FabricPhase;
use nexus_crds::{Fabric, NexusNode};
use serde::Deserialize;

use crate::rollout::local::{CONNECTED_ANNOTATION, NACK_ANNOTATION, PROGRESS_ANNOTATION};

/// Where the controller's HTTP API is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Base URL of the rollout controller's status API (`nexus-controller local --status-listen`).
    #[arg(
        long,
        env = "NEXUS_CONTROLLER_URL",
        default_value = "http://127.0.0.1:7601"
    )]
    pub server: String,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Resource {
    /// Fabrics with their rollout status.
    #[value(alias = "fabric", alias = "fab")]
    Fabrics,
    /// NexusNodes: desired and running firmware, heartbeat, last flash.
    #[value(alias = "node", alias = "nxn")]
    Nodes,
}

/// Output format.
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum Output {
    /// A table.
    #[default]
    Table,
    /// The objects as JSON.
    Json,
}

/// `nexctl get fabrics|nodes [NAME]`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// Kind to list.
    pub resource: Resource,
    /// One object (fabrics only).
    pub name: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// `nexctl rollout …`.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Rollout subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutCommand {
    /// Show a fabric's rollout: phase, waves, per-node state.
    Status {
        /// Fabric name.
        fabric: String,
        /// Follow with live progress bars until the rollout settles.
        #[arg(short, long)]
        watch: bool,
        /// Poll interval with --watch.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Start no new nodes (nodes flashing finish).
    Pause {
        /// Fabric name.
        fabric: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// Fabric name.
        fabric: String,
    },
    /// Halt and flash every updated node back to its previous firmware.
    Rollback {
        /// Fabric name.
        fabric: String,
    },
}

use nexus_crds::common::parse_duration_arg as parse_duration;

#[derive(Deserialize)]
struct List<T> {
    items: Vec<T>,
}

fn client() -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")
}

async fn get_json<T: serde::de::DeserializeOwned>(
    c: &reqwest::Client,
    url: String,
) -> anyhow::Result<T> {
    let resp = c
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!(
            "GET {url}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default().trim()
        );
    }
    resp.json().await.with_context(|| format!("decoding {url}"))
}

/// Runs `nexctl get`.
pub async fn run_get(args: GetArgs) -> anyhow::Result<()> {
    let c = client()?;
    let base = args.server.server.trim_end_matches('/');
    match args.resource {
        Resource::Fabrics => {
            let items: Vec<Fabric> = match &args.name {
                Some(n) => vec![get_json(&c, format!("{base}/v1/fabrics/{n}")).await?],
                None => {
                    get_json::<List<Fabric>>(&c, format!("{base}/v1/fabrics"))
                        .await?
                        .items
                }
            };
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&items)?),
                Output::Table => print!("{}", fabrics_table(&items)),
            }
        }
        Resource::Nodes => {
            let items = get_json::<List<NexusNode>>(&c, format!("{base}/v1/nodes"))
                .await?
                .items;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&items)?),
                Output::Table => print!("{}", nodes_table(&items)),
            }
        }
    }
    Ok(())
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// The `get fabrics` table.
pub fn fabrics_table(items: &[Fabric]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "PHASE",
            "FIRMWARE",
            "BUNDLE",
            "NODES",
            "UPDATED",
            "FAILED",
            "UNAVAILABLE",
            "BATCH",
            "PAUSED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for f in items {
        let st = f.status.clone().unwrap_or_default();
        rows.push(vec![
            f.metadata.name.clone().unwrap_or_default(),
            st.phase.map_or("-".into(), |p| format!("{p:?}")),
            f.spec.firmware.version.clone(),
            st.bundle.map_or("-".into(), |b| format!("{:?}", b.state)),
            st.nodes.total.to_string(),
            st.nodes.updated.to_string(),
            st.nodes.failed.to_string(),
            st.nodes.unavailable.to_string(),
            st.current_batch.map_or("-".into(), |b| b.index.to_string()),
            f.spec.rollout.paused.to_string(),
        ]);
    }
    table(rows)
}

/// A node's rollout state in words.
pub fn node_state(n: &NexusNode) -> String {
    let st = n.status.clone().unwrap_or_default();
    let running = st.nics.first().and_then(|x| x.running_firmware.clone());
    let target = n.spec.firmware.as_ref().map(|f| f.version.clone());
    let ann = n.metadata.annotations.clone().unwrap_or_default();
    if let Some(p) = ann.get(PROGRESS_ANNOTATION) {
        return format!("Flashing ({p})");
    }
    if ann.get(CONNECTED_ANNOTATION).map(String::as_str) == Some("false") {
        return "Disconnected".into();
    }
    if let Some(f) = &st.last_flash
        && Some(&f.version) == target.as_ref()
        && running != target
    {
        return format!("{:?}", f.result);
    }
    match (&target, &running) {
        (Some(t), Some(r)) if t == r && n.spec.maintenance => "Finishing".into(),
        (Some(t), Some(r)) if t == r => "Current".into(),
        (Some(_), _) => "Flashing".into(),
        (None, _) => "Pending".into(),
    }
}

/// The `get nodes` table.
pub fn nodes_table(items: &[NexusNode]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "FABRIC",
            "TARGET",
            "RUNNING",
            "STATE",
            "MAINTENANCE",
            "LAST FLASH",
            "NACK",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in items {
        let st = n.status.clone().unwrap_or_default();
        let ann = n.metadata.annotations.clone().unwrap_or_default();
        rows.push(vec![
            n.metadata.name.clone().unwrap_or_default(),
            n.spec.fabric.clone(),
            n.spec
                .firmware
                .as_ref()
                .map_or("-".into(), |f| f.version.clone()),
            st.nics
                .first()
                .and_then(|x| x.running_firmware.clone())
                .unwrap_or_else(|| "-".into()),
            node_state(n),
            n.spec.maintenance.to_string(),
            st.last_flash
                .map_or("-".into(), |f| format!("{} {:?}", f.version, f.result)),
            ann.get(NACK_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table(rows)
}

/// Runs `nexctl rollout …`.
pub async fn run_rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let c = client()?;
    let base = args.server.server.trim_end_matches('/').to_owned();
    let (fabric, verb) = match args.command {
        RolloutCommand::Status {
            fabric,
            watch,
            interval,
        } => {
            return status(&c, &base, &fabric, watch, interval).await;
        }
        RolloutCommand::Pause { fabric } => (fabric, "pause"),
        RolloutCommand::Resume { fabric } => (fabric, "resume"),
        RolloutCommand::Rollback { fabric } => (fabric, "rollback"),
    };
    let url = format!("{base}/v1/fabrics/{fabric}/{verb}");
    let resp = c
        .post(&url)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !resp.status().is_success() {
        bail!(
            "POST {url}: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default().trim()
        );
    }
    println!("fabric/{fabric}: {verb} requested");
    Ok(())
}

fn settled(p: Option<FabricPhase>) -> bool {
    matches!(
        p,
        Some(FabricPhase::Ready | FabricPhase::Halted | FabricPhase::RolledBack)
    )
}

async fn snapshot(
    c: &reqwest::Client,
    base: &str,
    fabric: &str,
) -> anyhow::Result<(Fabric, Vec<NexusNode>)> {
    let f: Fabric = get_json(c, format!("{base}/v1/fabrics/{fabric}")).await?;
    let nodes = get_json::<List<NexusNode>>(c, format!("{base}/v1/nodes"))
        .await?
        .items
        .into_iter()
        .filter(|n| n.spec.fabric == fabric)
        .collect();
    Ok((f, nodes))
}

fn summary(f: &Fabric) -> String {
    let st = f.status.clone().unwrap_or_default();
    format!(
        "fabric/{} → {}: {} | bundle {} | {}/{} updated, {} updating, {} failed, {} unavailable, {} rolled back",
        f.metadata.name.clone().unwrap_or_default(),
        f.spec.firmware.version,
        st.phase.map_or("-".into(), |p| format!("{p:?}")),
        st.bundle.map_or("-".into(), |b| match b.message {
            Some(m) => format!("{:?} ({m})", b.state),
            None => format!("{:?}", b.state),
        }),
        st.nodes.updated,
        st.nodes.total,
        st.nodes.updating,
        st.nodes.failed,
        st.nodes.unavailable,
        st.nodes.rolled_back,
    )
}

async fn status(
    c: &reqwest::Client,
    base: &str,
    fabric: &str,
    watch: bool,
    interval: Duration,
) -> anyhow::Result<()> {
    if !watch {
        let (f, nodes) = snapshot(c, base, fabric).await?;
        println!("{}", summary(&f));
        if let Some(b) = f.status.as_ref().and_then(|s| s.current_batch.as_ref()) {
            println!("wave {} ({} node(s))", b.index, b.nodes.len());
        }
        print!("{}", nodes_table(&nodes));
        return Ok(());
    }
    let multi = MultiProgress::new();
    let bar_style = ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let line_style = ProgressStyle::with_template("{prefix:>8} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let header = multi.add(
        ProgressBar::new(0)
            .with_style(line_style.clone())
            .with_prefix("fabric"),
    );
    let overall = multi.add(
        ProgressBar::new(0)
            .with_style(bar_style.clone())
            .with_prefix("nodes"),
    );
    let wave = multi.add(
        ProgressBar::new(0)
            .with_style(bar_style)
            .with_prefix("wave"),
    );
    let mut node_lines: BTreeMap<String, ProgressBar> = BTreeMap::new();
    loop {
        let (f, nodes) = snapshot(c, base, fabric).await?;
        let st = f.status.clone().unwrap_or_default();
        header.set_message(summary(&f));
        overall.set_length(u64::from(st.nodes.total));
        overall.set_position(u64::from(st.nodes.updated));
        let by_name: BTreeMap<String, &NexusNode> = nodes
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
        let batch = st.current_batch.clone().unwrap_or_default();
        let done = batch
            .nodes
            .iter()
            .filter(|n| by_name.get(*n).is_some_and(|x| node_state(x) == "Current"))
            .count();
        wave.set_length(batch.nodes.len() as u64);
        wave.set_position(done as u64);
        wave.set_message(format!("wave {}", batch.index));
        // One line per node of the current wave.
        node_lines.retain(|name, bar| {
            let keep = batch.nodes.contains(name);
            if !keep {
                bar.finish_and_clear();
                multi.remove(bar);
            }
            keep
        });
        for name in &batch.nodes {
            let bar = node_lines.entry(name.clone()).or_insert_with(|| {
                multi.add(
                    ProgressBar::new(0)
                        .with_style(line_style.clone())
                        .with_prefix("node"),
                )
            });
            let state = by_name
                .get(name)
                .map_or_else(|| "unknown".into(), |n| node_state(n));
            bar.set_message(format!("{name}: {state}"));
        }
        if settled(st.phase) {
            for b in node_lines.values() {
                b.finish();
            }
            header.finish();
            overall.finish();
            wave.finish();
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_node_states() {
        let node: NexusNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode",
            "metadata": {"name": "node-1", "annotations": {PROGRESS_ANNOTATION: "Write 10/20", CONNECTED_ANNOTATION: "true"}},
            "spec": {"fabric": "sim", "desiredVersion": 3, "maintenance": true,
                     "firmware": {"version": "2.0", "bundle": {"url": "file:///b"}, "sha256": "0".repeat(64)}},
            "status": {"nics": [{"pciAddress": "0000:3b:00.0", "vendor": "v", "model": "m", "pciVendorId": "1d0f",
                                  "pciDeviceId": "efa1", "runningFirmware": "1.0"}]}
        }))
        .expect("node");
        assert_eq!(node_state(&node), "Flashing (Write 10/20)");
        let t = nodes_table(std::slice::from_ref(&node));
        assert!(t.starts_with("NAME"), "{t}");
        assert!(
            t.contains("node-1") && t.contains("2.0") && t.contains("1.0"),
            "{t}"
        );
        let mut done = node.clone();
        done.metadata.annotations = None;
        if let Some(n) = done.status.as_mut().and_then(|s| s.nics.first_mut()) {
            n.running_firmware = Some("2.0".into());
        }
        done.spec.maintenance = false;
        assert_eq!(node_state(&done), "Current");
        let args = <GetArgs as clap::FromArgMatches>::from_arg_matches(
            &<GetArgs as clap::Args>::augment_args(clap::Command::new("get"))
                .try_get_matches_from(["get", "fabrics", "-o", "json"])
                .expect("parses"),
        )
        .expect("args");
        assert!(matches!(args.resource, Resource::Fabrics));
    }
}
