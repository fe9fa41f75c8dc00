//! `nexus-fleet-sim`: N simulated node agents (in-memory A/B NICs) dialling one controller, for
//! trying local-mode rollouts by hand.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nexus_fleet_agent::memnic::Faults;
use nexus_fleet_agent::{Agent, AgentConfig, MemNic};

/// Simulated node agents for the fleet protocol.
#[derive(Debug, Parser)]
#[command(name = "nexus-fleet-sim", version)]
struct Args {
    /// Controller fleet endpoint.
    #[arg(long, default_value = "http://127.0.0.1:7600")]
    controller: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Node name prefix (nodes are PREFIX-00000, PREFIX-00001, …).
    #[arg(long, default_value = "node")]
    prefix: String,
    /// Firmware every NIC runs at start.
    #[arg(long, default_value = "1.0")]
    firmware: String,
    /// Duration of one full flash.
    #[arg(long, default_value = "2s", value_parser = humantime)]
    flash_time: Duration,
    /// Status period.
    #[arg(long, default_value = "2s", value_parser = humantime)]
    heartbeat: Duration,
    /// Node labels, `key=value` (repeatable); default `nexus.dev/fabric=sim`.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Indices of nodes whose flash of VERSION fails its health check, as `INDEX:VERSION`.
    #[arg(long = "fail")]
    fail: Vec<String>,
}

fn humantime(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {s:?}: use ms, s or m")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let mut labels = std::collections::HashMap::new();
    if args.labels.is_empty() {
        labels.insert("nexus.dev/fabric".to_owned(), "sim".to_owned());
    }
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected key=value"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let mut tasks = Vec::new();
    for i in 0..args.nodes {
        let nic = MemNic::new(&args.firmware, args.flash_time);
        let fail: Vec<String> = args
            .fail
            .iter()
            .filter_map(|f| f.split_once(':'))
            .filter(|(idx, _)| idx.parse() == Ok(i))
            .map(|(_, v)| v.to_owned())
            .collect();
        nic.set_faults(Faults {
            fail_versions: fail,
        });
        let mut cfg = AgentConfig::new(args.controller.clone(), format!("{}-{i:05}", args.prefix));
        cfg.labels = labels.clone();
        cfg.heartbeat = args.heartbeat;
        tasks.push(tokio::spawn(Agent::new(cfg, Arc::new(nic)).run()));
    }
    tracing::info!(nodes = args.nodes, controller = %args.controller, "simulated agents running; ctrl-c to stop");
    tokio::signal::ctrl_c().await?;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
