//! One run, every contender, same loopback, same runtime flavour (current-thread; servers on
//! one core, clients on another, TCP_NODELAY everywhere), open-loop load recorded in HDR
//! histograms, and a user-space link emulator (UDP proxy for QUIC, TCP proxy for TCP)
//! applied alike where a scenario needs delay or loss. Writes `docs/bench/dataplane.md` and
//! `docs/bench/dataplane.svg`.
//!
//! Run: `cargo run --release -p nexus-dataplane-bench -- --out docs/bench`

mod contenders;
mod report;
mod tunlink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// Output directory for the table and the plot.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Seconds of open-loop load per contender in the warm unary scenario.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Requests per second of the open-loop load.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Rounds of the warm unary and handshake scenarios. Each round runs every contender
    /// once, in a fresh random order, so that the shared machine's changing background load
    /// falls on all of them alike; the table gives the pooled distribution and the median of
    /// the per-round ratios.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Run only these scenarios (comma-separated: unary, cold, tokens, hol, tensor, far, loss,
    /// handshakes) and print the table without writing files.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    /// Whether scenario `name` runs.
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lat {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub n: u64,
}

impl Lat {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5) as f64,
            p90: h.value_at_quantile(0.9) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            n: h.len(),
        }
    }
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Open-loop load: calls start on a fixed schedule regardless of completions (no coordinated
/// omission: a slow server does not slow the arrivals), evenly spaced. tokio's timer has 1 ms
/// granularity, so it would issue every call due within one millisecond together, in bursts
/// (two at a time at 2,000 calls/s), and each burst's later calls would wait behind the
/// earlier ones. The schedule is kept instead by a ticker thread on the client's core, which
/// sleeps with the kernel's high-resolution timer and hands each due call to the runtime.
/// Latency is measured from the moment a call is issued: the ticker wakes up to a few tens of
/// microseconds late, and measuring from the nominal schedule would add that to every
/// contender alike.
pub async fn open_loop<F, Fut>(rate: u32, seconds: f64, f: F) -> anyhow::Result<Histogram<u64>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let h = Arc::new(Mutex::new(hist()));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let n = (f64::from(rate) * seconds) as u32;
    let mut ticks = ticker(interval, n);
    let mut tasks = Vec::with_capacity(n as usize);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while ticks.recv().await.is_some() {
        let fut = f();
        let issued = Instant::now();
        let (h, errors) = (Arc::clone(&h), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            match fut.await {
                Ok(()) => {
                    let us = issued.elapsed().as_micros() as u64;
                    if let Ok(mut h) = h.lock() {
                        let _ = h.record(us.max(1));
                    }
                }
                Err(_) => {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let e = errors.load(std::sync::atomic::Ordering::Relaxed);
    if e > 0 {
        anyhow::bail!("{e} calls failed");
    }
    let h = h.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(h.clone())
}

/// `n` ticks `interval` apart, from a thread pinned to the calling thread's core (the client
/// core: the ticker must not take the servers' core). The channel closes after the last.
fn ticker(interval: Duration, n: u32) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let core = CLIENT_CORE.get().and_then(|&c| {
        core_affinity::get_core_ids()?
            .into_iter()
            .find(|id| id.id == c)
    });
    std::thread::spawn(move || {
        if let Some(c) = core {
            core_affinity::set_for_current(c);
        }
        let start = Instant::now();
        for i in 0..n {
            let due = start + interval * i;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    rx
}

/// The core `main` pinned the client thread to.
static CLIENT_CORE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Closed-loop throughput with `workers` concurrent callers: calls per second.
pub async fn closed_loop<F, Fut>(workers: usize, seconds: f64, f: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                f().await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / seconds)
}

fn pin(core: usize) -> Option<usize> {
    let ids = core_affinity::get_core_ids()?;
    let id = ids.get(core % ids.len().max(1))?;
    core_affinity::set_for_current(*id).then_some(id.id)
}

fn main() -> anyhow::Result<()> {
    // The process default, which tonic's TLS uses: the same suite order as every contender.
    let _ = nexus_stream::trust::session_provider().install_default();
    let args = Args::parse();
    // Servers: one thread, one current-thread runtime, core 0.
    let (tx, rx) = std::sync::mpsc::channel();
    let pki = Arc::new(nexus_stream::testing::TestPki::new()?);
    let server_pki = Arc::clone(&pki);
    std::thread::spawn(move || {
        let _ = pin(0);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!(e)));
                return;
            }
        };
        rt.block_on(async move {
            match contenders::start_servers(&server_pki).await {
                Ok(s) => {
                    let _ = tx.send(Ok(s));
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    });
    let servers = rx.recv().context("server thread")??;
    // Link emulators: their own thread and runtime (not pinned), shared by all contenders.
    let (ltx, lrx) = std::sync::mpsc::channel();
    let link_servers = servers.clone();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ltx.send(Err(anyhow::anyhow!(e)));
                return;
            }
        };
        rt.block_on(async move {
            match contenders::start_links(&link_servers).await {
                Ok(l) => {
                    let _ = ltx.send(Ok(l));
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = ltx.send(Err(e));
                }
            }
        });
    });
    let links = lrx.recv().context("link thread")??;
    if let Some(core) = pin(1) {
        let _ = CLIENT_CORE.set(core);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(contenders::run_all(&pki, &servers, &links, &args))?;
    let md = report::markdown(&results);
    if args.only.is_empty() {
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("dataplane.md"), &md)?;
        std::fs::write(args.out.join("dataplane.svg"), report::svg(&results))?;
    }
    println!("{md}");
    Ok(())
}

/// Addresses of everything started for the run.
#[derive(Debug, Clone)]
pub struct Servers {
    pub nexus: SocketAddr,
    /// The same Nexus server with `Congestion::Bbr` (the head-of-line scenario's opt-in row).
    pub nexus_bbr: SocketAddr,
    /// A Nexus server granting peers 1 MiB per stream (the long-path tensor scenario).
    pub nexus_narrow: SocketAddr,
    /// The Nexus server endpoint's counters (what actually arrived, for best-effort delivery).
    pub nexus_metrics: Arc<nexus_stream::Metrics>,
    pub quinn: SocketAddr,
    pub tcp: SocketAddr,
    pub https: SocketAddr,
    pub grpc: SocketAddr,
}
