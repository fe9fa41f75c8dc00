//! `nexus-usage-report`: spools usage events read from stdin (JSON lines, the cloud API's
//! `SystemUsageEvent`) and sends everything in the spool to the cloud API. For scripts and cron
//! jobs that meter something, and the process that the spool's crash tests kill.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use nexus_usage_client::{Config, Reporter, Spool, UsageEvent};

#[derive(Debug, Parser)]
#[command(name = "nexus-usage-report", version, about)]
struct Args {
    /// Spool directory: events are durable here before anything is sent.
    #[arg(long, env = "NEXUS_USAGE_SPOOL")]
    spool: PathBuf,
    /// The cloud API's base URL.
    #[arg(long, env = "NEXUS_USAGE_ENDPOINT")]
    endpoint: String,
    /// The usage token.
    #[arg(long, env = "NEXUS_USAGE_TOKEN", hide_env_values = true)]
    token: String,
    /// Exit once the spool is empty instead of sending until SIGTERM.
    #[arg(long)]
    until_empty: bool,
    /// Read no events from stdin; only send what is spooled.
    #[arg(long)]
    no_stdin: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let spool = Arc::new(Spool::open(&args.spool).context("open the spool")?);
    if !args.no_stdin {
        let mut events = Vec::new();
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("read stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            let e: UsageEvent =
                serde_json::from_str(&line).with_context(|| format!("stdin line {}", n + 1))?;
            events.push(e);
        }
        spool.append(&events).context("spool the events")?;
        println!("spooled {}", events.len());
    }
    let reporter = Reporter::new(spool.clone(), Config::new(args.endpoint, args.token))?;
    let mut backoff = Duration::from_millis(200);
    loop {
        match reporter.send_pending().await {
            Ok(r) => {
                backoff = Duration::from_millis(200);
                if r != Default::default() {
                    println!(
                        "sent: {} accepted, {} duplicates, {} conflicts, {} rejected",
                        r.accepted, r.duplicates, r.conflicts, r.rejected
                    );
                }
                if args.until_empty && spool.pending()?.is_empty() {
                    return Ok(());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "usage not delivered yet");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
