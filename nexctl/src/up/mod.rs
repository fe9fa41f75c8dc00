//! `nexctl up`: the whole Nexus stack on one machine, with nothing to configure.
//!
//! 1. PostgreSQL: `DATABASE_URL` when given, else a private cluster in `<data-dir>/postgres`
//!    started from the installed server binaries.
//! 2. The NexTrust CA (`nexus-ca`), in process: gRPC and REST. Its key-encryption key and caller
//!    token are created once in the data directory (mode 0600).
//! 3. The Nexus Cloud API (`nexus-cloud`), in process, wired to the CA; a demo tenant with an
//!    owner API key (kept in `<data-dir>/demo.json` so restarts reuse it).
//! 4. The rollout controller in local mode, reading Fabric manifests from `<data-dir>/fabrics`
//!    (a demo Fabric and its firmware image are written there on first start), and a fleet of
//!    simulated node agents (in-memory A/B NICs running firmware 1.0) over real gRPC, so a
//!    rollout to 2.0 starts at once: `nexctl rollout status demo --watch`.
//!
//! Ctrl-C (or SIGTERM) stops accepting, lets in-flight requests finish, and stops PostgreSQL.

mod dataplanes;
mod demo;
use nexus_private_pg as pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `nexctl up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the stack keeps its state (database cluster, keys, demo credentials).
    #[arg(long, env = "NEXUS_DATA_DIR", default_value = ".nexus")]
    data_dir: PathBuf,
    /// Use this PostgreSQL server instead of a private cluster (databases nexus_ca and
    /// nexus_cloud are created in it).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Port of the private PostgreSQL cluster.
    #[arg(long, default_value_t = 55432)]
    pg_port: u16,
    /// CA gRPC address.
    #[arg(long, default_value = "127.0.0.1:9443")]
    ca_grpc: SocketAddr,
    /// CA REST, /metrics and health address.
    #[arg(long, default_value = "127.0.0.1:9080")]
    ca_http: SocketAddr,
    /// Cloud API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// Rollout controller: fleet gRPC address (agents dial it).
    #[arg(long, default_value = "127.0.0.1:7600")]
    fleet_grpc: SocketAddr,
    /// Rollout controller: status API address (`nexctl get`, `nexctl rollout`).
    #[arg(long, default_value = "127.0.0.1:7601")]
    fleet_http: SocketAddr,
    /// Simulated nodes in the demo fleet (0: none).
    #[arg(long, default_value_t = 20)]
    sim_nodes: usize,
    /// Simulated flash time per node.
    #[arg(long, default_value = "3s", value_parser = nexus_crds::common::parse_duration_arg)]
    sim_flash_time: Duration,
    /// Local dataplane nodes serving the demo model (0: none).
    #[arg(long, default_value_t = 2)]
    dataplanes: usize,
    /// First dataplane port: node i listens on UDP `port + i`, HTTP `port + 10 + i`,
    /// P4Runtime `port + 20 + i` (0: any free ports).
    #[arg(long, default_value_t = 7710)]
    dataplane_port: u16,
    /// Start, print what is running, check it answers, and stop (for scripts and tests).
    #[arg(long)]
    check: bool,
}

fn step(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(100));
    pb.set_message(msg.to_owned());
    pb
}

fn done(pb: ProgressBar, msg: String) {
    pb.finish_and_clear();
    println!("✔ {msg}");
}

/// Reads a secret from `path`, creating it with `make` (mode 0600) on first use.
fn secret_file(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_owned());
    }
    let value = make()?;
    std::fs::write(path, &value).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(value)
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(hex::encode(buf))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(up(args))
}

async fn up(args: Args) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data = args.data_dir.canonicalize()?;

    // 1. PostgreSQL.
    let mut private_pg = None;
    let (ca_url, cloud_url) = match &args.database_url {
        Some(url) => {
            let pb = step("connecting to PostgreSQL");
            ensure_databases(url).await?;
            done(pb, "PostgreSQL: using DATABASE_URL".into());
            (with_db(url, "nexus_ca")?, with_db(url, "nexus_cloud")?)
        }
        None => {
            let pb = step("starting a private PostgreSQL cluster");
            let dir = pg::cluster_dir(&data);
            let port = args.pg_port;
            let pg = tokio::task::spawn_blocking(move || pg::PrivatePostgres::start(&dir, port))
                .await??;
            pg.ensure_database("nexus_ca")?;
            pg.ensure_database("nexus_cloud")?;
            pg::wait_ready(&pg.url("nexus_ca")).await?;
            let urls = (pg.url("nexus_ca"), pg.url("nexus_cloud"));
            done(
                pb,
                format!(
                    "PostgreSQL: private cluster in {} on 127.0.0.1:{port}",
                    pg::cluster_dir(&data).display()
                ),
            );
            private_pg = Some(pg);
            urls
        }
    };

    // 2. The CA.
    let pb = step("starting the NexTrust CA");
    let kek_hex = secret_file(&data.join("ca-kek"), || random_hex(32))?;
    let ca_token = secret_file(&data.join("ca-token"), || random_hex(24))?;
    let kek = nexus_ca::kek::Kek::parse(&kek_hex).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&ca_url)
        .await
        .context("connecting the CA to PostgreSQL")?;
    let settings = nexus_ca::Settings {
        grpc_listen: args.ca_grpc,
        http_listen: args.ca_http,
        kek: Arc::new(kek),
        auth_token: ca_token.clone(),
        tenants: vec!["demo".to_owned()],
        limits: nexus_ca::policy::Limits::default(),
        crl_validity: Duration::from_secs(3600),
        crl_refresh: Duration::from_secs(900),
        node_cert_validity: Duration::from_secs(7 * 86_400),
    };
    let ca = nexus_ca::start(ca_pool, settings)
        .await
        .map_err(|e| anyhow::anyhow!("starting the CA: {e}"))?;
    done(
        pb,
        format!(
            "CA: gRPC http://{} · REST http://{}",
            ca.grpc_addr, ca.http_addr
        ),
    );

    // 3. The cloud API.
    let pb = step("starting the Nexus Cloud API");
    let pool = nexus_cloud::connect(&cloud_url, 16)
        .await
        .map_err(|e| anyhow::anyhow!("connecting the cloud API to PostgreSQL: {e}"))?;
    nexus_cloud::migrate(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("migrating: {e}"))?;
    // The token the dataplanes bill served traffic with (they run in this process; a fresh
    // one per start).
    let usage_token = format!("usage-{}", uuid::Uuid::new_v4().simple());
    let config = nexus_cloud::Config {
        ca_endpoint: Some(format!("http://{}", ca.grpc_addr)),
        ca_token: Some(ca_token.clone()),
        usage_token: Some(usage_token.clone()),
        ..nexus_cloud::Config::default()
    };
    let state = nexus_cloud::AppState::new(pool.clone(), config);
    let demo = demo_tenant(&data, &state).await?;
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("binding the cloud API to {}", args.api))?;
    let api_addr = listener.local_addr()?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_reporter = stop_rx.clone();
    let api_task = tokio::spawn(nexus_cloud::serve(listener, state, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    done(
        pb,
        format!("Cloud API: http://{api_addr} (OpenAPI at /openapi.json)"),
    );

    // 4. Rollout controller (local mode) and a simulated fleet.
    let pb = step("starting the rollout controller and the simulated fleet");
    let fabrics = demo_fabric(&data)?;
    let controller = nexus_controller::rollout::local::LocalController::start(
        nexus_controller::rollout::local::LocalArgs {
            manifests: fabrics.clone(),
            listen: args.fleet_grpc,
            status_listen: args.fleet_http,
            heartbeat_timeout: Duration::from_secs(10),
            start_grace: Duration::from_secs(2),
            rescan: Duration::from_secs(2),
            routing: nexus_controller::routing::local::RoutingArgs {
                identities: Some(data.join("mics")),
                trust: nexus_controller::routing::evidence::TrustArgs {
                    trust_anchors: Some(data.join("mics").join(demo::DEMO_MODEL).join("ca.crt")),
                    ca_url: Some(format!("http://{}", ca.http_addr)),
                    ca_tls_ca: None,
                },
            },
            tls: Default::default(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the rollout controller: {e}"))?;
    let agents = start_sim_fleet(
        &format!("http://{}", controller.grpc_addr),
        args.sim_nodes,
        args.sim_flash_time,
    );
    done(
        pb,
        format!(
            "Rollout controller: fleet gRPC {} · status http://{} · {} simulated nodes · Fabrics in {}",
            controller.grpc_addr,
            controller.http_addr,
            args.sim_nodes,
            fabrics.display()
        ),
    );

    // 5. What the demo tenant sees in the console: its model's MIC, issued through the public
    //    API by the real CA, and this cluster's rollouts and hours, reported by the controller.
    let pb = step("issuing the demo model's MIC and registering the local cluster");
    let api = demo::Api::new(format!("http://{api_addr}"), demo.api_key.clone())?;
    let identity = demo::demo_identity(&data, &api).await?;
    let (mic_dir, serial) = (identity.dir.clone(), identity.serial.clone());
    let cloud =
        nexus_controller::cloud::CloudClient::new(&format!("http://{api_addr}"), &demo.api_key)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cluster_id = demo::local_cluster(&cloud).await?;
    let reporter = {
        let shared = controller.shared.clone();
        let stop = stop_rx_reporter.clone();
        tokio::spawn(nexus_controller::cloud::run_reporter(
            cloud,
            cluster_id.clone(),
            Duration::from_secs(2),
            move || {
                let shared = shared.clone();
                async move { shared.fabrics().await }
            },
            stop,
        ))
    };
    done(
        pb,
        format!(
            "{}@{} MIC serial {serial} in {} · cluster nexctl-up ({cluster_id}) reports to the cloud API",
            demo::DEMO_MODEL,
            demo::DEMO_MODEL_VERSION,
            mic_dir.display()
        ),
    );

    // 6. Dataplane nodes with the demo model, programmed with the demo RoutingDomain's tables.
    let pb = step("starting the dataplane nodes");
    let dps = dataplanes::start(
        args.dataplanes,
        args.dataplane_port,
        &mic_dir,
        &format!("http://{}/v1/crl", ca.http_addr),
        &dataplanes::Billing {
            cloud_url: format!("http://{api_addr}"),
            usage_token: usage_token.clone(),
            spools: data.join("dataplanes"),
        },
    )
    .await?;
    dataplanes::write_domain(&fabrics, &identity.tenant, &dps)?;
    let dp_agents = dataplanes::agents(&format!("http://{}", controller.grpc_addr), &dps);
    done(
        pb,
        format!(
            "Dataplanes: {} (demo model, MIC {}; HTTP {}) · RoutingDomain demo in {}",
            dps.iter()
                .map(|d| d.udp.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            demo::DEMO_MODEL,
            dps.iter()
                .map(|d| d.http.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fabrics.join("routing.yaml").display()
        ),
    );

    println!();
    println!(
        "Demo tenant API key (keep it; also in {}):",
        data.join("demo.json").display()
    );
    println!("  {}", demo.api_key);
    println!("Console: http://{api_addr}/ (sign in with that key)");
    println!();
    println!("Try:");
    println!(
        "  curl -s -H 'Authorization: Bearer {}' http://{api_addr}/v1/routing-domains",
        demo.api_key
    );
    println!("  curl -s http://{}/v1/crl -o crl.der", ca.http_addr);
    println!("  curl -s http://{}/metrics | head", api_addr);
    println!(
        "  NEXUS_CONTROLLER_URL=http://{} target/debug/nexctl rollout status demo --watch",
        controller.http_addr
    );
    if let Some(d) = dps.first() {
        println!(
            "  target/debug/nexctl call --capability code-generation --domain default/demo --addr {} --mic-dir {} 'hello'",
            d.udp,
            mic_dir.display()
        );
        println!(
            "  head -c 64M /dev/urandom > t.bin && target/debug/nexctl call --capability code-generation --domain default/demo --addr {} --mic-dir {} --tensor t.bin",
            d.udp,
            mic_dir.display()
        );
        println!(
            "  curl -s http://{}/v1/routing-domains",
            controller.http_addr
        );
    }
    println!();

    if args.check {
        let api_ok =
            http_get_ok(api_addr, "/v1/routing-domains", Some(&demo.api_key), "demo").await;
        println!(
            "{} cloud API answers with the demo key",
            if api_ok { "✔" } else { "✘" }
        );
        let mut fleet_ok = false;
        for _ in 0..50 {
            fleet_ok = http_get_ok(controller.http_addr, "/v1/nodes", None, "sim-node-").await;
            if fleet_ok || args.sim_nodes == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "{} rollout controller sees the simulated fleet",
            if fleet_ok { "✔" } else { "✘" }
        );
        let mut reported = false;
        for _ in 0..50 {
            reported = http_get_ok(
                api_addr,
                "/v1/rollouts",
                Some(&demo.api_key),
                "\"fabric\":\"demo\"",
            )
            .await;
            if reported || args.sim_nodes == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "{} the console shows the demo rollout and MIC {serial}",
            if reported { "✔" } else { "✘" }
        );
        let mut routed = None;
        let mut tensor_routed = false;
        if let Some(d) = dps.first() {
            let mut last = String::new();
            for _ in 0..150 {
                match dataplanes::routed_call(d.udp, &mic_dir).await {
                    Ok(r) => {
                        routed = Some(r);
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match &routed {
                Some(text) => println!(
                    "✔ a call routed by capability (code-generation, by the tables of {}) answered: {text:?}",
                    d.udp
                ),
                None => println!("✘ no call routed by capability: {last}"),
            }
            if routed.is_some() {
                match dataplanes::routed_tensor(d.udp, &mic_dir).await {
                    Ok(ack) => {
                        tensor_routed = true;
                        println!(
                            "✔ a tensor routed by capability ({} MiB in {} shards, checksum verified end to end)",
                            ack.bytes >> 20,
                            ack.shards
                        );
                    }
                    Err(e) => println!("✘ no tensor routed by capability: {e}"),
                }
            }
        }
        let mut billed = None;
        if routed.is_some() {
            // The serving dataplane harvests its per-tenant traffic every second and its
            // reporter delivers it: well inside the minute the product promises.
            for _ in 0..300 {
                if let Ok(b) = dataplanes::billed_traffic(api_addr, &demo.api_key).await
                    && b.usage > 0
                    && b.invoiced > 0
                {
                    billed = Some(b);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match &billed {
                Some(b) => println!(
                    "✔ its traffic is billed to the demo tenant: {} bytes in usage, {} bytes on the draft invoice",
                    b.usage, b.invoiced
                ),
                None => {
                    println!("✘ the routed call's traffic did not reach the demo tenant's usage")
                }
            }
        }
        let ok = api_ok
            && (fleet_ok || args.sim_nodes == 0)
            && (reported || args.sim_nodes == 0)
            && (routed.is_some() || dps.is_empty())
            && (tensor_routed || dps.is_empty())
            && (billed.is_some() || dps.is_empty());
        for a in &dp_agents {
            a.abort();
        }
        reporter.abort();
        shutdown(stop_tx, api_task, ca, private_pg).await?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }

    println!("Running. Press Ctrl-C to stop.");
    wait_for_signal().await;
    println!("\nstopping…");
    for a in &agents {
        a.abort();
    }
    reporter.abort();
    for a in &dp_agents {
        a.abort();
    }
    for d in &dps {
        d.drain(Duration::from_secs(2)).await;
    }
    controller.stop().await;
    shutdown(stop_tx, api_task, ca, private_pg).await?;
    println!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown(
    stop_tx: tokio::sync::watch::Sender<bool>,
    api_task: tokio::task::JoinHandle<std::io::Result<()>>,
    ca: nexus_ca::RunningServer,
    private_pg: Option<pg::PrivatePostgres>,
) -> anyhow::Result<()> {
    let _ = stop_tx.send(true);
    api_task.await??;
    ca.shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("stopping the CA: {e}"))?;
    if let Some(mut pg) = private_pg {
        tokio::task::spawn_blocking(move || pg.stop()).await??;
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Writes the demo Fabric (firmware 2.0 for the simulated fleet) and its image on first start;
/// returns the manifest directory. Edit or add manifests there while the stack runs.
fn demo_fabric(data: &Path) -> anyhow::Result<PathBuf> {
    use sha2::Digest;
    let dir = data.join("fabrics");
    std::fs::create_dir_all(&dir)?;
    let image = data.join("firmware-2.0.bin");
    if !image.exists() {
        let mut bytes = vec![0u8; 256 * 1024];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        std::fs::write(&image, bytes)?;
    }
    let manifest = dir.join("demo.yaml");
    if !manifest.exists() {
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&image)?));
        std::fs::write(
            &manifest,
            format!(
                "# Demo fabric of `nexctl up`: the simulated fleet runs 1.0; this rolls it to 2.0.
# Edit and save (e.g. set rollout.paused: true) — the controller re-reads this directory.
apiVersion: nexus.dev/v1alpha1
kind: Fabric
metadata:
  name: demo
spec:
  nodeSelector:
    matchLabels:
      nexus.dev/fabric: demo
  nic:
    vendor: nexus-sim
    pciVendorId: \"1d0f\"
    pciDeviceIds: [\"efa1\"]
  firmware:
    version: \"2.0\"
    bundle:
      url: file://{}
    sha256: {sha}
  rollout:
    canary: 1
    maxUnavailable: 25%
    soakTime: 5s
    failureThreshold: 1
",
                image.display()
            ),
        )?;
    }
    Ok(dir)
}

/// Simulated node agents (in-memory A/B NICs on firmware 1.0) dialing the controller.
fn start_sim_fleet(
    endpoint: &str,
    nodes: usize,
    flash_time: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    use nexus_fleet_agent::memnic::MemNic;
    use nexus_fleet_agent::session::{Agent, AgentConfig};
    (0..nodes)
        .map(|i| {
            let mut cfg = AgentConfig::new(endpoint.to_owned(), format!("sim-node-{i:03}"));
            cfg.labels.insert("nexus.dev/fabric".into(), "demo".into());
            cfg.heartbeat = Duration::from_secs(2);
            let nic = Arc::new(MemNic::new("1.0", flash_time));
            tokio::spawn(async move {
                let _ = Agent::new(cfg, nic).run().await;
            })
        })
        .collect()
}

/// The demo tenant: reused from `demo.json` when its key still authenticates, else created.
async fn demo_tenant(
    data: &Path,
    state: &nexus_cloud::AppState,
) -> anyhow::Result<nexus_cloud::DemoTenant> {
    let path = data.join("demo.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(key) = v.get("api_key").and_then(|k| k.as_str())
        && nexus_cloud::auth::authenticate(state, key).await.is_ok()
        && let Ok(demo) = serde_json::from_value::<DemoFile>(v.clone())
    {
        return Ok(nexus_cloud::DemoTenant {
            tenant_id: demo.tenant_id,
            user_id: demo.user_id,
            api_key: demo.api_key,
            routing_domain_id: demo.routing_domain_id,
        });
    }
    let demo = nexus_cloud::seed_demo(&state.pool)
        .await
        .map_err(|e| anyhow::anyhow!("seeding the demo tenant: {e}"))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&demo)?)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(demo)
}

#[derive(serde::Deserialize)]
struct DemoFile {
    tenant_id: uuid::Uuid,
    user_id: uuid::Uuid,
    api_key: String,
    routing_domain_id: uuid::Uuid,
}

/// A plain HTTP/1.1 GET expecting 200 and `needle` in the body.
async fn http_get_ok(addr: SocketAddr, path: &str, key: Option<&str>, needle: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp).await;
    resp.starts_with("HTTP/1.1 200") && resp.contains(needle)
}

/// Creates the two databases on a server given by URL, if missing.
async fn ensure_databases(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| "connecting to DATABASE_URL".to_string())?;
    for db in ["nexus_ca", "nexus_cloud"] {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(db)
                .fetch_optional(&mut c)
                .await?;
        if exists.is_none() {
            // `db` is one of two fixed identifiers above, never input.
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut c)
                .await?;
        }
    }
    Ok(())
}

/// The same server URL with another database name.
fn with_db(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_and_path = &base[scheme_end..];
    let server = match host_and_path.find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    Ok(match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    })
}

#[cfg(test)]
mod tests {
    use super::with_db;

    #[test]
    fn database_url_rewrites_only_the_database() {
        assert_eq!(
            with_db("postgres://postgres@127.0.0.1:5432/postgres", "nexus_ca")
                .ok()
                .as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/nexus_ca")
        );
        assert_eq!(
            with_db("postgres://u:p@h/db?sslmode=disable", "x")
                .ok()
                .as_deref(),
            Some("postgres://u:p@h/x?sslmode=disable")
        );
        assert_eq!(
            with_db("postgres://h:1", "x").ok().as_deref(),
            Some("postgres://h:1/x")
        );
    }
}
