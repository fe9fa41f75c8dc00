//! The local dataplane nodes of `nexctl up`: `nexus-dataplane` in process (NexStream on UDP,
//! the demo model, the node's P4Runtime target), each with a node agent that joins the demo
//! Fabric and programs the routing tables the controller pushes; and the demo RoutingDomain
//! that advertises both as `code-generation` endpoints of the demo model's MIC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// The routing domain of the demo endpoints (written by [`write_domain`]).
pub const DEMO_DOMAIN: &str = "default/demo";

/// Where the dataplanes bill the traffic they serve.
#[derive(Debug, Clone)]
pub struct Billing {
    /// The cloud API's base URL.
    pub cloud_url: String,
    /// Its usage token.
    pub usage_token: String,
    /// Parent of each node's usage spool (`<spools>/dp-node-<i>`), kept across starts so
    /// usage a stopped run could not deliver is sent by the next.
    pub spools: PathBuf,
}

/// Starts `n` dataplanes serving the demo model with `mic_dir`'s MIC, enforcing the CA's CRL
/// and billing served traffic per tenant. Ports: UDP `base + i`, HTTP `base + 10 + i`,
/// P4Runtime `base + 20 + i` (all 0: any).
pub async fn start(
    n: usize,
    base: u16,
    mic_dir: &Path,
    crl_url: &str,
    billing: &Billing,
) -> anyhow::Result<Vec<nexus_dataplane::Running>> {
    let port = |off: u16, i: usize| {
        if base == 0 {
            0
        } else {
            base.saturating_add(off)
                .saturating_add(u16::try_from(i).unwrap_or(0))
        }
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let args = <nexus_dataplane::Args as clap::Parser>::try_parse_from([
            "nexus-dataplane".to_owned(),
            format!("--listen=127.0.0.1:{}", port(0, i)),
            format!("--mic-dir={}", mic_dir.display()),
            format!("--crl={crl_url}"),
            "--crl-refresh=10".to_owned(),
            "--demo-model".to_owned(),
            format!("--http-listen=127.0.0.1:{}", port(10, i)),
            format!("--p4runtime-listen=127.0.0.1:{}", port(20, i)),
            format!("--node-name=dp-node-{i}"),
            format!("--usage-url={}", billing.cloud_url),
            format!("--usage-token={}", billing.usage_token),
            format!(
                "--usage-spool={}",
                billing.spools.join(format!("dp-node-{i}")).display()
            ),
            "--usage-interval=1".to_owned(),
        ])?;
        let running = nexus_dataplane::start(&args)
            .await
            .with_context(|| format!("starting dataplane node {i}"))?;
        out.push(running);
    }
    Ok(out)
}

/// A node agent per dataplane (`dp-node-<i>`, in the demo Fabric) that programs the routing
/// tables into that dataplane over P4Runtime.
pub fn agents(
    controller: &str,
    dataplanes: &[nexus_dataplane::Running],
) -> Vec<tokio::task::JoinHandle<()>> {
    use nexus_fleet_agent::memnic::MemNic;
    use nexus_fleet_agent::session::{Agent, AgentConfig};
    dataplanes
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let p4 = d.p4runtime?;
            let mut cfg = AgentConfig::new(controller.to_owned(), format!("dp-node-{i}"));
            cfg.labels.insert("nexus.dev/fabric".into(), "demo".into());
            cfg.heartbeat = Duration::from_secs(2);
            let nic = Arc::new(MemNic::new("1.0", Duration::from_secs(3)));
            let agent = Agent::new(cfg, nic).with_routing(Arc::new(
                nexus_agent::routing::P4RuntimeTables::new(format!("http://{p4}"), 1),
            ));
            Some(tokio::spawn(agent.run()))
        })
        .collect()
}

/// The demo RoutingDomain: both dataplanes as `code-generation` endpoints of the demo model,
/// admitted on its MIC. Rewritten on every start (the addresses may change).
pub fn write_domain(
    fabrics: &Path,
    tenant: &str,
    dataplanes: &[nexus_dataplane::Running],
) -> anyhow::Result<()> {
    let mut endpoints = String::new();
    for (i, d) in dataplanes.iter().enumerate() {
        endpoints.push_str(&format!(
            "    - name: demo-coder-{i}
      address: \"{}\"
      capability:
        capabilities: [code-generation, chat]
        modelFamily: llm
        contextWindow: 131072
        modalities: [text]
        latencySlaMs: 200
      modelIdentityRef:
        name: {}
",
            d.udp,
            super::demo::DEMO_MODEL
        ));
    }
    let text = format!(
        "# Written by `nexctl up` on every start: the demo tenant's code-generation endpoints, one per
# local dataplane, admitted on the demo model's MIC (see GET /v1/routing-domains on the
# controller's status address).
apiVersion: nexus.dev/v1alpha1
kind: RoutingDomain
metadata:
  name: demo
  namespace: default
spec:
  tenant: {tenant}
  fabricRef:
    name: demo
  endpoints:
{endpoints}  policy:
    trust:
      requiredClaims: [\"capability:code-generation\"]
"
    );
    std::fs::write(fabrics.join("routing.yaml"), text)?;
    Ok(())
}

/// A call routed by capability, as `nexctl call --capability code-generation --addr …` makes
/// it: sent to the first dataplane (`via`, its UDP address), whose NexRoute tables pick the
/// endpoint — itself, or the other node, to which it relays the call.
pub async fn routed_call(via: SocketAddr, mic_dir: &Path) -> anyhow::Result<String> {
    let client = nexus_api::Client::connect_dir_in(mic_dir, via, DEMO_DOMAIN)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {via}: {e}"))?
        .route_by("code-generation");
    let r = client
        .infer(&nexus_api::InferRequest {
            model: String::new(),
            prompt: "write a function that adds two numbers".into(),
            max_tokens: 8,
        })
        .await
        .map_err(|e| anyhow::anyhow!("calling code-generation through {via}: {e}"))?;
    Ok(r.text)
}

/// Bytes of the tensor [`routed_tensor`] sends.
pub const ROUTED_TENSOR: u32 = 8 << 20;

/// A tensor routed by capability the same way: [`ROUTED_TENSOR`] bytes in 1 MiB shards, which
/// the endpoint checksums, so the bytes are vouched for end to end — through the relay when
/// the tables pick the other node (cut-through, shard by shard). Returns the endpoint's
/// acknowledgement.
pub async fn routed_tensor(
    via: SocketAddr,
    mic_dir: &Path,
) -> anyhow::Result<nexus_api::TensorAck> {
    let client = nexus_api::Client::connect_dir_in(mic_dir, via, DEMO_DOMAIN)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {via}: {e}"))?
        .route_by("code-generation");
    let data: Vec<u8> = (0..ROUTED_TENSOR).map(|i| (i % 251) as u8).collect();
    let header = nexus_api::Header::opaque(1, 0, ROUTED_TENSOR);
    client
        .send_tensor_checked(&header, &data, 1 << 20)
        .await
        .map_err(|e| anyhow::anyhow!("sending a tensor to code-generation through {via}: {e}"))
}

/// `traffic_bytes` the cloud API shows a tenant: in its usage and on its draft invoice.
#[derive(Debug, Clone, Copy)]
pub struct BilledTraffic {
    pub usage: i64,
    pub invoiced: i64,
}

/// Reads the tenant's `traffic_bytes` through the public API with its key.
pub async fn billed_traffic(api: SocketAddr, key: &str) -> anyhow::Result<BilledTraffic> {
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("http://{api}{path}"))
            .bearer_auth(key)
            .timeout(Duration::from_secs(5))
            .send()
    };
    let usage: serde_json::Value = get("/v1/usage?meter=traffic_bytes")
        .await?
        .error_for_status()?
        .json()
        .await?;
    let preview: serde_json::Value = get("/v1/invoices/preview")
        .await?
        .error_for_status()?
        .json()
        .await?;
    let sum = |items: Option<&Vec<serde_json::Value>>, meter: bool| -> i64 {
        items
            .into_iter()
            .flatten()
            .filter(|i| !meter || i["meter"] == "traffic_bytes")
            .filter_map(|i| i["quantity"].as_i64())
            .sum()
    };
    Ok(BilledTraffic {
        usage: sum(usage["buckets"].as_array(), false),
        invoiced: sum(preview["lines"].as_array(), true),
    })
}
