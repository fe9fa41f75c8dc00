//! The end-to-end suite with faults: the real binaries over loopback, no fakes between them —
//! `nexus-ca` and `nexus-cloud` on a PostgreSQL cluster of the test's own, `nexus-controller
//! local`, three `nexus-agent` processes flashing simulated NICs with a signed bundle,
//! `nexus-usage-report` spooling usage, and two `nexus-dataplane` nodes serving a model whose
//! MIC the CA issued, programmed over P4Runtime by their agents with the routing tables the
//! controller compiles from a RoutingDomain. Each flow runs to completion while a process is
//! SIGKILLed and restarted in the middle of it: the controller and an agent mid-rollout, the CA
//! between issuances, the cloud API mid-ingest, a dataplane with unsent usage, and PostgreSQL
//! itself mid-ingest. Afterwards: every node runs the target and stays bootable, every MIC
//! request was answered, the issuance log is consistent, a call routed by capability was
//! answered and its bytes are on the tenant's usage and draft invoice, and all usage was billed
//! exactly once.
//!
//! Every link to the CA and the fleet protocol run over TLS with identities the CA issued, as
//! on a production install: the CA serves gRPC and REST with its own server certificate; the
//! cloud API calls it with a `cloud-api` client certificate; the controller's fleet endpoint
//! requires node certificates, which every agent obtains at first start with a one-time join
//! token (`nexus-ca join-token`) and finds on disk after its SIGKILL; the controller and the
//! dataplanes fetch the CRL over HTTPS trusting only the CA's root.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test (it builds every
//! package's binaries before running any test); the test says which one is missing otherwise.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEK_HEX: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
const USAGE_TOKEN: &str = "e2e-usage-token-0123456789abcdef";
const NODES: usize = 3;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo test --workspace` or \
         `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// A child process that can be SIGKILLed and started again with the same arguments.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn start(
        dir: &Path,
        name: &str,
        program: &str,
        args: &[&dyn AsRef<std::ffi::OsStr>],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            program: bin(program),
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            log: dir.join(format!("{name}.log")),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_json(http: &reqwest::Client, url: String, key: Option<&str>) -> Option<Value> {
    let mut req = http.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

fn signed_bundle() -> (Vec<u8>, String) {
    use nexus_firmware::bundle::{self, Manifest, testing};
    let (key, trust) = testing::key("release", 42);
    let m = Manifest::new(
        "mellanox",
        0x15b3,
        vec![0x101d],
        "2.0.0".parse().unwrap(),
        semver::VersionReq::parse(">=0.1, <1").unwrap(),
    );
    let payload: Vec<u8> = (0..400_000).map(|i| (i % 241) as u8).collect();
    let b = bundle::sign(bundle::pack(m, payload).unwrap(), &key).to_bytes();
    (b, trust.to_json())
}

/// Runs a `nexus-ca` administrative command on the CA's database; its standard output.
fn ca_admin(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(bin("nexus-ca"))
        .args(["--database-url", db_url])
        .args(args)
        .env("NEXUS_CA_KEK", KEK_HEX)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nexus-ca {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A node agent's fleet-over-mTLS arguments: the controller's `https://` endpoint and the
/// CA's root, and where its node certificate lives — obtained at first start with a one-time
/// join token bound to this node (`--ca-url --join-token`), found there after a restart.
fn node_tls_args(
    ca_db: &str,
    ca_grpc: SocketAddr,
    fleet: SocketAddr,
    ca_root: &Path,
    node: &str,
    node_dir: &Path,
) -> [String; 6] {
    let token = ca_admin(ca_db, &["join-token", "--node", node, "--ttl", "10m"]);
    [
        format!("--controller=https://{fleet}"),
        format!("--controller-tls-ca={}", ca_root.display()),
        format!("--tls-cert={}", node_dir.join("tls/tls.crt").display()),
        format!("--tls-key={}", node_dir.join("tls/tls.key").display()),
        format!("--ca-url=https://{ca_grpc}"),
        format!("--join-token={}", token.trim()),
    ]
}

struct Stack {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    http: reqwest::Client,
    ca: Proc,
    ca_http: SocketAddr,
    ca_grpc: SocketAddr,
    /// The CA's database, for its administrative commands (join tokens, certificates).
    ca_db: String,
    /// The CA's root: every TLS link of the stack chains to it.
    ca_root: PathBuf,
    cloud: Proc,
    cloud_addr: SocketAddr,
    controller: Proc,
    controller_http: SocketAddr,
    fleet: SocketAddr,
    trust_path: PathBuf,
    manifests: PathBuf,
    agents: Vec<Proc>,
    dataplanes: Vec<Dataplane>,
}

async fn create_db(admin: &sqlx::PgPool, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin)
        .await
        .unwrap();
}

fn with_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => url.to_owned(),
    }
}

async fn start_stack(admin: &sqlx::PgPool, base_url: &str) -> Stack {
    let mut tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    // NEXUS_E2E_KEEP=1 keeps every process's log (`<dir>/<name>.log`) after the test.
    if std::env::var_os("NEXUS_E2E_KEEP").is_some() {
        tmp.disable_cleanup(true);
        eprintln!("e2e: logs kept in {}", dir.display());
    }
    let id = std::process::id();
    let (ca_db, cloud_db) = (format!("e2e_ca_{id}"), format!("e2e_cloud_{id}"));
    create_db(admin, &ca_db).await;
    create_db(admin, &cloud_db).await;
    let (ca_grpc, ca_http, cloud_addr) = (free_addr(), free_addr(), free_addr());
    let ca_db_url = with_db(base_url, &ca_db);
    // TLS on every link to the CA: it serves gRPC and REST with a server certificate it
    // issues itself (for 127.0.0.1 and localhost) and writes its root to `ca-tls/ca.crt`.
    let ca_tls = dir.join("ca-tls");
    let ca = Proc::start(
        &dir,
        "ca",
        "nexus-ca",
        &[
            &"--database-url",
            &ca_db_url,
            &"--grpc-listen",
            &ca_grpc.to_string(),
            &"--http-listen",
            &ca_http.to_string(),
            &"--tenant",
            &"acme",
            &"--tls-dir",
            &ca_tls,
        ],
        &[
            ("NEXUS_CA_KEK", KEK_HEX),
            // Every MIC it issues is reported as usage with the cloud API's usage token (the
            // cloud API meters the MICs it requests itself, under the same key: billed once).
            ("NEXUS_CA_USAGE_URL", &format!("http://{cloud_addr}")),
            ("NEXUS_CA_USAGE_TOKEN", USAGE_TOKEN),
        ],
    );
    let ca_root = ca_tls.join("ca.crt");
    let root_pem = wait_for("the CA's root", 60, || async {
        std::fs::read(&ca_root).ok().filter(|b| !b.is_empty())
    })
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&root_pem).unwrap())
        .build()
        .unwrap();
    wait_for("the CA", 60, || {
        get_json(&http, format!("https://{ca_http}/v1/log/sth"), None)
    })
    .await;

    // The cloud API calls the CA with a client certificate of role cloud-api; the rollout
    // controller's fleet endpoint gets a server certificate: both from the CA's admin commands.
    ca_admin(
        &ca_db_url,
        &[
            "client-cert",
            "--role",
            "cloud-api",
            "--name",
            "cloud",
            "--out",
            &dir.join("cloud-tls").display().to_string(),
        ],
    );
    ca_admin(
        &ca_db_url,
        &[
            "server-cert",
            "--name",
            "fleet",
            "--ip",
            "127.0.0.1",
            "--out",
            &dir.join("fleet-tls").display().to_string(),
        ],
    );
    let cloud = Proc::start(
        &dir,
        "cloud",
        "nexus-cloud",
        &[
            &"serve",
            &"--listen",
            &cloud_addr.to_string(),
            &"--ca-endpoint",
            &format!("https://{ca_grpc}"),
            &"--ca-tls-ca",
            &ca_root,
            &"--ca-tls-cert",
            &dir.join("cloud-tls/cloud.crt"),
            &"--ca-tls-key",
            &dir.join("cloud-tls/cloud.key"),
            &"--no-console",
        ],
        &[
            ("DATABASE_URL", &with_db(base_url, &cloud_db)),
            ("NEXUS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("NEXUS_USAGE_TOKEN", USAGE_TOKEN),
        ],
    );
    wait_for("the cloud API", 60, || async {
        let r = http
            .get(format!("http://{cloud_addr}/readyz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // The rollout: a signed 2.0.0 bundle for three simulated NICs running 1.0.0.
    let (bundle, trust) = signed_bundle();
    let bundle_path = dir.join("fw-2.0.0.bundle");
    std::fs::write(&bundle_path, &bundle).unwrap();
    let trust_path = dir.join("trust.json");
    std::fs::write(&trust_path, trust).unwrap();
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("fabric.yaml"),
        format!(
            r#"apiVersion: nexus.dev/v1alpha1
kind: Fabric
metadata: {{name: gpu}}
spec:
  nodeSelector: {{matchLabels: {{pool: gpu}}}}
  nic: {{vendor: nvidia, pciVendorId: "15b3", pciDeviceIds: ["101d"]}}
  firmware: {{version: "2.0.0", bundle: {{url: "file://{}"}}, sha256: "{}"}}
  rollout: {{canary: 1, maxUnavailable: 1, soakTime: 0s, failureThreshold: 0}}
"#,
            bundle_path.display(),
            hex::encode(Sha256::digest(&bundle))
        ),
    )
    .unwrap();
    let (fleet, controller_http) = (free_addr(), free_addr());
    let controller = Proc::start(
        &dir,
        "controller",
        "nexus-controller",
        &[
            &"local",
            &"--manifests",
            &manifests,
            &"--listen",
            &fleet.to_string(),
            &"--status-listen",
            &controller_http.to_string(),
            &"--heartbeat-timeout",
            &"10s",
            &"--start-grace",
            &"2s",
            &"--rescan",
            &"1s",
            &"--identities",
            &dir.join("identities"),
            &"--trust-anchors",
            &dir.join("identities").join("anchors.pem"),
            &"--ca-url",
            &format!("https://{ca_http}"),
            &"--ca-tls-ca",
            &ca_root,
            // The fleet protocol over mutual TLS: node certificates from the CA (join tokens).
            &"--tls-cert",
            &dir.join("fleet-tls/fleet.crt"),
            &"--tls-key",
            &dir.join("fleet-tls/fleet.key"),
            &"--tls-client-ca",
            &ca_root,
        ],
        &[],
    );
    let mut agents = Vec::new();
    for i in 0..NODES {
        let node_dir = dir.join(format!("node-{i}"));
        let out = Command::new(bin("nexus-agent"))
            .arg("--sim-dir")
            .arg(node_dir.join("nic0"))
            .args(["sim-create", "--serial", &format!("SIM{i:07}")])
            .args(["--version", "1.0.0", "--image-size", "8192"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let node = format!("gpu-{i}");
        let tls = node_tls_args(&ca_db_url, ca_grpc, fleet, &ca_root, &node, &node_dir);
        agents.push(Proc::start(
            &dir,
            &format!("agent-{i}"),
            "nexus-agent",
            &[
                &"--sim-dir",
                &node_dir,
                &tls[0],
                &tls[1],
                &tls[2],
                &tls[3],
                &tls[4],
                &tls[5],
                &"--node-name",
                &node,
                &"--label",
                &"pool=gpu",
                &"--controller-trust-store",
                &trust_path,
                &"--heartbeat-secs",
                &"1",
                // ~2 s per flash: long enough to be killed in the middle of one.
                &"--sim-speed",
                &"200000",
            ],
            &[],
        ));
    }
    Stack {
        _dir: tmp,
        dir,
        http,
        ca,
        ca_http,
        ca_grpc,
        ca_db: ca_db_url,
        ca_root,
        cloud,
        cloud_addr,
        controller,
        controller_http,
        fleet,
        trust_path,
        manifests,
        agents,
        dataplanes: Vec::new(),
    }
}

/// One dataplane node: the process and its agent.
struct Dataplane {
    proc: Proc,
    _agent: Proc,
    udp: SocketAddr,
    http: SocketAddr,
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `nexus_dataplane_traffic_bytes` a dataplane's /metrics shows for `tenant` in `domain`.
async fn metered(
    http: &reqwest::Client,
    dp: SocketAddr,
    tenant: &str,
    domain: &str,
) -> Option<u64> {
    let text = http
        .get(format!("http://{dp}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let (t, d) = (
        format!("tenant=\"{tenant}\""),
        format!("domain=\"{domain}\""),
    );
    Some(
        text.lines()
            .filter(|l| l.starts_with("nexus_dataplane_traffic_bytes_total{"))
            .filter(|l| l.contains(&t) && l.contains(&d))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

impl Stack {
    /// Starts dataplane node `i` serving the demo model with the MIC in `identities/coder`,
    /// billing to the cloud API, with an agent in Fabric `edge` that programs its tables.
    fn start_dataplane(&mut self, i: usize) {
        let (udp, http, p4) = (free_udp(), free_addr(), free_addr());
        let name = format!("dp-{i}");
        let proc = Proc::start(
            &self.dir,
            &name,
            "nexus-dataplane",
            &[
                &format!("--listen={udp}"),
                &format!("--http-listen={http}"),
                &format!("--p4runtime-listen={p4}"),
                &format!("--mic-dir={}", self.dir.join("identities/coder").display()),
                &"--demo-model",
                &format!("--crl=https://{}/v1/crl", self.ca_http),
                &format!("--crl-ca={}", self.ca_root.display()),
                &"--crl-refresh=2",
                &format!("--node-name={name}"),
                &format!("--usage-url=http://{}", self.cloud_addr),
                &format!(
                    "--usage-spool={}",
                    self.dir.join(format!("{name}-spool")).display()
                ),
                &"--usage-interval=1",
            ],
            &[("NEXUS_DATAPLANE_USAGE_TOKEN", USAGE_TOKEN)],
        );
        let node_dir = self.dir.join(format!("{name}-node"));
        let out = Command::new(bin("nexus-agent"))
            .arg("--sim-dir")
            .arg(node_dir.join("nic0"))
            .args(["sim-create", "--serial", &format!("DP{i:08}")])
            .args(["--version", "2.0.0", "--image-size", "8192"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls = node_tls_args(
            &self.ca_db,
            self.ca_grpc,
            self.fleet,
            &self.ca_root,
            &name,
            &node_dir,
        );
        let agent = Proc::start(
            &self.dir,
            &format!("{name}-agent"),
            "nexus-agent",
            &[
                &"--sim-dir",
                &node_dir,
                &tls[0],
                &tls[1],
                &tls[2],
                &tls[3],
                &tls[4],
                &tls[5],
                &"--node-name",
                &name,
                &"--label",
                &"pool=edge",
                &"--controller-trust-store",
                &self.trust_path,
                &"--heartbeat-secs",
                &"1",
                &"--p4runtime",
                &format!("http://{p4}"),
            ],
            &[],
        );
        self.dataplanes.push(Dataplane {
            proc,
            _agent: agent,
            udp,
            http,
        });
    }

    /// Which endpoint dataplane `via`'s tables pick for `code-generation` in `default/code`.
    async fn resolve(&self, via: usize) -> Option<SocketAddr> {
        let r = self
            .http
            .post(format!("http://{}/v1/resolve", self.dataplanes[via].http))
            .json(&json!({"tenant": "acme", "capability": "code-generation", "domain": "default/code"}))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        v["next_hop"].as_str()?.parse().ok()
    }

    /// The tenant's `traffic_bytes` in `domain`: in its usage, and on its draft invoice (all
    /// domains).
    async fn billed_traffic(&self, key: &str, domain: &str) -> Option<(i64, i64)> {
        let u = get_json(
            &self.http,
            self.url("/v1/usage?meter=traffic_bytes&group_by=domain"),
            Some(key),
        )
        .await?;
        let in_domain = u["buckets"]
            .as_array()?
            .iter()
            .filter(|b| b["domain"] == domain)
            .map(|b| b["quantity"].as_i64().unwrap_or(0))
            .sum();
        let p = get_json(&self.http, self.url("/v1/invoices/preview"), Some(key)).await?;
        let invoiced = p["lines"]
            .as_array()?
            .iter()
            .filter(|l| l["meter"] == "traffic_bytes")
            .map(|l| l["quantity"].as_i64().unwrap_or(0))
            .sum();
        Some((in_domain, invoiced))
    }

    /// Waits (60 s at most) until the tenant's `traffic_bytes` in `domain` are exactly `bytes`;
    /// returns (usage, draft invoice) then.
    async fn wait_billed(&self, what: &str, key: &str, domain: &str, bytes: i64) -> (i64, i64) {
        wait_for(what, 60, || async move {
            let (used, invoiced) = self.billed_traffic(key, domain).await?;
            (used == bytes).then_some((used, invoiced))
        })
        .await
    }

    async fn fabric(&self) -> Option<Value> {
        let v = get_json(
            &self.http,
            format!("http://{}/v1/fabrics/gpu", self.controller_http),
            None,
        )
        .await?;
        Some(v)
    }

    async fn nodes_on(&self, version: &str) -> usize {
        let Some(v) = get_json(
            &self.http,
            format!("http://{}/v1/nodes", self.controller_http),
            None,
        )
        .await
        else {
            return 0;
        };
        v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|n| {
                        n["status"]["nics"].as_array().is_some_and(|nics| {
                            !nics.is_empty()
                                && nics.iter().all(|nic| nic["runningFirmware"] == version)
                        })
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cloud_addr)
    }

    async fn call(&self, key: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method.clone(), self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }
}

/// A CSR (base64 DER, as the API takes it) and the PEM private key it was made with.
fn csr_for(model: &str) -> (String, String) {
    let uri = nexus_mic::ModelUri::new("acme", model, "1.0.0").unwrap();
    let key = nexus_mic::generate_model_key(&uri).unwrap();
    (
        base64::engine::general_purpose::STANDARD.encode(&key.csr_der),
        key.private_key_pem,
    )
}

fn issue_body(csr_b64: &str, request_id: &str) -> Value {
    json!({
        "csr_der_base64": csr_b64,
        "version": "1.0.0",
        "attestation": {
            "architecture_hash": hex::encode(Sha256::digest(b"e2e arch")),
            "provenance": {"publisher": "Acme"},
            "capabilities": {"capabilities": ["code-generation"], "context_window": 131072, "modalities": ["text"]},
        },
        "request_id": request_id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_completes_with_each_process_killed_mid_flow() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A PostgreSQL cluster of this test's own, so it can be restarted mid-ingest without
    // touching the server other tests share. Its directory must be reachable by the `postgres`
    // user when the test runs as root (PostgreSQL refuses to run as root).
    let pg_root = tempfile::Builder::new()
        .prefix("nexus-e2e-pg")
        .tempdir()
        .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pg_root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let pg_dir = nexus_private_pg::cluster_dir(pg_root.path());
    let pg_port = free_addr().port();
    let mut pg = tokio::task::spawn_blocking(move || {
        nexus_private_pg::PrivatePostgres::start(&pg_dir, pg_port)
    })
    .await
    .unwrap()
    .expect("a private PostgreSQL cluster from the installed server binaries (initdb, pg_ctl)");
    let base_url = pg.url("postgres");
    nexus_private_pg::wait_ready(&base_url).await.unwrap();
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&base_url)
        .await
        .unwrap();
    let mut s = start_stack(&admin, &base_url).await;

    // 1. The rollout, with the controller and then an agent SIGKILLed while nodes flash.
    wait_for("a node flashing", 60, || async {
        let f = s.fabric().await?;
        (f["status"]["nodes"]["updating"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    s.controller.restart();
    wait_for("a node flashing again", 60, || async {
        let f = s.fabric().await?;
        let updating = f["status"]["nodes"]["updating"].as_u64().unwrap_or(0);
        let updated = f["status"]["nodes"]["updated"].as_u64().unwrap_or(0);
        (updating > 0 && updated < NODES as u64).then_some(())
    })
    .await;
    // Kill every agent that is mid-flash (a flash takes ~2 s; the interrupted one is redone).
    for a in s.agents.iter_mut() {
        a.restart();
    }
    let ready = {
        let s = &s;
        wait_for(
            "the Fabric Ready with every node on 2.0.0",
            180,
            || async move {
                let f = s.fabric().await?;
                (f["status"]["phase"] == "Ready" && s.nodes_on("2.0.0").await == NODES).then_some(f)
            },
        )
        .await
    };
    assert_eq!(ready["status"]["nodes"]["failed"], 0, "{ready}");
    // Every NIC still has a bootable bank with the old image (nothing left unbootable).
    let nodes = get_json(
        &s.http,
        format!("http://{}/v1/nodes", s.controller_http),
        None,
    )
    .await
    .unwrap();
    for n in nodes["items"].as_array().unwrap() {
        for nic in n["status"]["nics"].as_array().unwrap() {
            let banks = nic["banks"].as_array().unwrap();
            assert!(
                banks.iter().all(|b| b["bootable"] == true),
                "a bank left unbootable: {nic}"
            );
        }
    }

    // 2. MICs through the cloud API, with the CA SIGKILLed between issuances.
    let tenant = s
        .call(
            ADMIN_TOKEN,
            reqwest::Method::POST,
            "/v1/tenants",
            json!({"name": "Acme", "slug": "acme", "owner_email": "ops@acme.example"}),
        )
        .await;
    let key = tenant["api_key"].as_str().unwrap().to_owned();
    let model = s
        .call(
            &key,
            reqwest::Method::POST,
            "/v1/model-identities",
            json!({"name": "coder", "model_digest": format!("sha256:{}", hex::encode(Sha256::digest(b"w")))}),
        )
        .await;
    let model_id = model["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/model-identities/{model_id}/certificates");
    let (csr1, key1) = csr_for("coder");
    let first = s
        .call(
            &key,
            reqwest::Method::POST,
            &path,
            issue_body(&csr1, "e2e-1"),
        )
        .await;
    s.ca.restart();
    let (csr2, _) = csr_for("coder");
    let second = wait_for("an issuance after the CA restarted", 60, || async {
        let r = s
            .http
            .post(s.url(&path))
            .bearer_auth(&key)
            .json(&issue_body(&csr2, "e2e-2"))
            .send()
            .await
            .ok()?;
        if r.status().is_success() {
            r.json::<Value>().await.ok()
        } else {
            None
        }
    })
    .await;
    assert_ne!(first["serial"], second["serial"]);
    // The retried first request is answered with the first certificate, not a new one.
    let again = s
        .call(
            &key,
            reqwest::Method::POST,
            &path,
            issue_body(&csr1, "e2e-1"),
        )
        .await;
    assert_eq!(
        again["serial"], first["serial"],
        "idempotent across the restart"
    );
    let sth = get_json(&s.http, format!("https://{}/v1/log/sth", s.ca_http), None)
        .await
        .unwrap();
    assert_eq!(
        sth["tree_size"], 2,
        "exactly two MICs in the issuance log: {sth}"
    );

    // 3. Usage through the spool, with the cloud API SIGKILLed mid-ingest.
    let spool = s.dir.join("spool");
    let now = chrono::Utc::now();
    let events: String = (0..500)
        .map(|i| {
            json!({
                "tenant": "acme",
                "meter": "traffic_bytes",
                "quantity": 1000,
                "timestamp": now,
                "dimensions": {"domain": "code"},
                "idempotency_key": format!("e2e-traffic-{i}"),
            })
            .to_string()
                + "\n"
        })
        .collect();
    let endpoint = s.url("");
    let report = |stdin: Option<&str>| {
        let mut c = Command::new(bin("nexus-usage-report"));
        c.arg("--spool")
            .arg(&spool)
            .args(["--endpoint", &endpoint])
            .arg("--until-empty")
            .env("NEXUS_USAGE_TOKEN", USAGE_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if stdin.is_none() {
            c.arg("--no-stdin");
        }
        c.stdin(Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(text.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        child
    };
    s.cloud.kill();
    let mut reporter = report(Some(&events));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.cloud.spawn();
    let status = tokio::task::spawn_blocking(move || reporter.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the reporter drains its spool: {}",
        s.cloud.tail()
    );
    // The same events again (a component measuring the same thing twice): billed once.
    let mut again = report(Some(&events));
    assert!(
        tokio::task::spawn_blocking(move || again.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    let usage = wait_for("usage to show", 30, || {
        get_json(&s.http, s.url("/v1/usage?meter=traffic_bytes"), Some(&key))
    })
    .await;
    let total: i64 = usage["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["quantity"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(total, 500 * 1000, "billed exactly once: {usage}");

    // 4. A call routed by capability through the dataplanes, billed from what they carried;
    //    a dataplane SIGKILLed with usage it could not deliver sends it after restart, once.
    let ids = s.dir.join("identities");
    let coder = ids.join("coder");
    std::fs::create_dir_all(&coder).unwrap();
    std::fs::write(coder.join("tls.crt"), first["chain_pem"].as_str().unwrap()).unwrap();
    std::fs::write(coder.join("tls.key"), &key1).unwrap();
    std::fs::write(coder.join("ca.crt"), first["root_pem"].as_str().unwrap()).unwrap();
    std::fs::write(ids.join("anchors.pem"), first["root_pem"].as_str().unwrap()).unwrap();
    s.start_dataplane(0);
    s.start_dataplane(1);
    let bundle_sha = hex::encode(Sha256::digest(
        std::fs::read(s.dir.join("fw-2.0.0.bundle")).unwrap(),
    ));
    let mut endpoints = String::new();
    for (i, d) in s.dataplanes.iter().enumerate() {
        endpoints.push_str(&format!(
            "    - name: coder-{i}\n      address: \"{}\"\n      capability:\n        capabilities: [code-generation]\n        modelFamily: llm\n        contextWindow: 131072\n        modalities: [text]\n        latencySlaMs: 200\n      modelIdentityRef: {{name: coder}}\n",
            d.udp
        ));
    }
    std::fs::write(
        s.manifests.join("edge.yaml"),
        format!(
            r#"apiVersion: nexus.dev/v1alpha1
kind: Fabric
metadata: {{name: edge}}
spec:
  nodeSelector: {{matchLabels: {{pool: edge}}}}
  nic: {{vendor: nvidia, pciVendorId: "15b3", pciDeviceIds: ["101d"]}}
  firmware: {{version: "2.0.0", bundle: {{url: "file://{}"}}, sha256: "{bundle_sha}"}}
---
apiVersion: nexus.dev/v1alpha1
kind: RoutingDomain
metadata: {{name: code, namespace: default}}
spec:
  tenant: acme
  fabricRef: {{name: edge}}
  endpoints:
{endpoints}  policy:
    trust:
      requiredClaims: ["capability:code-generation"]
"#,
            s.dir.join("fw-2.0.0.bundle").display()
        ),
    )
    .unwrap();
    let hop = {
        let s = &s;
        wait_for("the routing tables on the dataplanes", 90, || s.resolve(0)).await
    };
    assert!(
        s.dataplanes.iter().any(|d| d.udp == hop),
        "{hop} is one of the endpoints"
    );
    let call = |addr: SocketAddr| {
        let coder = coder.clone();
        async move {
            let client = nexus_api::Client::connect_dir_in(&coder, addr, "default/code")
                .await
                .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
            let r = client
                .infer(&nexus_api::InferRequest {
                    model: String::new(),
                    prompt: "write a function that adds two numbers".into(),
                    max_tokens: 16,
                })
                .await
                .unwrap_or_else(|e| panic!("calling {addr}: {e}"));
            assert!(!r.text.is_empty());
        }
    };
    call(hop).await;
    let serving = s.dataplanes.iter().position(|d| d.udp == hop).unwrap();
    let first_bytes = metered(&s.http, s.dataplanes[serving].http, "acme", "default/code")
        .await
        .unwrap();
    assert!(first_bytes > 0);
    let billed = s
        .wait_billed(
            "the routed call billed",
            &key,
            "default/code",
            first_bytes as i64,
        )
        .await;
    assert!(
        billed.1 >= billed.0,
        "the draft invoice rates it: {billed:?}"
    );

    // The cloud API goes down; the call's usage is harvested into the spool (a /metrics scrape
    // harvests) and the dataplane is SIGKILLed before it could deliver it.
    s.cloud.kill();
    call(hop).await;
    let spooled = metered(&s.http, s.dataplanes[serving].http, "acme", "default/code")
        .await
        .unwrap();
    assert!(spooled > first_bytes);
    s.dataplanes[serving].proc.kill();
    s.cloud.spawn();
    s.dataplanes[serving].proc.spawn();
    s.wait_billed(
        "the killed dataplane's usage billed once",
        &key,
        "default/code",
        spooled as i64,
    )
    .await;

    // 5. PostgreSQL restarted mid-ingest: the reporters ride it out, nothing lost or doubled,
    //    and the CA issues again afterwards.
    let pg_events: String = (0..300)
        .map(|i| {
            json!({
                "tenant": "acme", "meter": "traffic_bytes", "quantity": 1000, "timestamp": now,
                "dimensions": {"domain": "pg"}, "idempotency_key": format!("e2e-pg-{i}"),
            })
            .to_string()
                + "\n"
        })
        .collect();
    let mut reporter = report(Some(&pg_events));
    pg = tokio::task::spawn_blocking(move || {
        pg.restart().unwrap();
        pg
    })
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || reporter.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the reporter drains its spool across the restart"
    );
    s.wait_billed("usage after the PostgreSQL restart", &key, "pg", 300 * 1000)
        .await;
    let (csr3, _) = csr_for("coder");
    wait_for("an issuance after the PostgreSQL restart", 60, || async {
        let r = s
            .http
            .post(s.url(&path))
            .bearer_auth(&key)
            .json(&issue_body(&csr3, "e2e-3"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // Nothing billed twice anywhere: the routed traffic is still exactly what was carried, and
    // the three MICs — each metered by the cloud API and reported by the CA — are billed once.
    assert_eq!(
        s.billed_traffic(&key, "default/code").await.unwrap().0,
        spooled as i64
    );
    {
        let s = &s;
        wait_for("the CA's usage outbox delivered", 60, || async move {
            let text = s
                .http
                .get(format!("https://{}/metrics", s.ca_http))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines()
                .any(|l| l == "nexus_ca_usage_pending 0")
                .then_some(())
        })
        .await;
    }
    let mics = get_json(&s.http, s.url("/v1/usage?meter=mics_issued"), Some(&key))
        .await
        .unwrap();
    let mics: i64 = mics["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["quantity"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(mics, 3, "each MIC billed once");

    for d in s.dataplanes.iter_mut() {
        d.proc.kill();
    }
    s.dataplanes.clear();
    for a in s.agents.iter_mut() {
        a.kill();
    }
    s.controller.kill();
    s.cloud.kill();
    s.ca.kill();
    admin.close().await;
    tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.stop()
    })
    .await
    .unwrap()
    .unwrap();
}
