//! `nexctl call`: one NexAPI call from the shell, MIC-authenticated like any dataplane peer.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use nexus_api::{Client, InferRequest};

/// Send an inference request (or open a token stream) to a Nexus dataplane endpoint.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// UDP address of the dataplane (e.g. 127.0.0.1:7700).
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: SocketAddr,
    /// Route by capability instead of by address (e.g. `code-generation`): the dataplane at
    /// `--addr` looks it up in its NexRoute tables and serves the call itself or relays it to
    /// the endpoint they pick. With `--via`, ask that dataplane's tables for the endpoint
    /// instead and call the endpoint directly.
    #[arg(long)]
    capability: Option<String>,
    /// HTTP address of a dataplane whose tables resolve `--capability` to an endpoint that
    /// is then called directly (e.g. http://127.0.0.1:7701).
    #[arg(long, requires = "capability")]
    via: Option<String>,
    /// Tenant the call is for (the caller's MIC names it), for `--capability`.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Routing domain `namespace/name` for `--capability` (default: the tenant's default);
    /// the serving node bills the call's traffic under it.
    #[arg(long)]
    domain: Option<String>,
    /// Directory with this caller's MIC: tls.crt, tls.key, ca.crt.
    #[arg(long, env = "NEXUS_MIC_DIR")]
    mic_dir: PathBuf,
    /// Stream tokens as they are generated instead of waiting for the whole answer.
    #[arg(long)]
    stream: bool,
    /// Model name (empty: the endpoint's default).
    #[arg(long, default_value = "")]
    model: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Send this file's bytes as a tensor (opaque bytes, in shards on parallel streams)
    /// instead of an inference request; the endpoint checksums what it reassembled and the
    /// acknowledgement is printed with the transfer's rate.
    #[arg(long, conflicts_with = "stream")]
    tensor: Option<PathBuf>,
    /// The prompt.
    #[arg(required_unless_present = "tensor")]
    prompt: Option<String>,
}

/// Runs the call; exit 1 when the endpoint refuses or fails it.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = match (&args.capability, &args.via) {
            (Some(cap), Some(via)) => {
                match resolve(via, &args.tenant, cap, args.domain.as_deref()).await {
                    Ok(a) => {
                        eprintln!("{cap} → {a} (resolved by the NexRoute tables at {via})");
                        a
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            _ => args.addr,
        };
        // A call routed in a domain names it, so the serving node bills its traffic there.
        let connected = match &args.domain {
            Some(d) => Client::connect_dir_in(&args.mic_dir, addr, d).await,
            None => Client::connect_dir(&args.mic_dir, addr).await,
        };
        let client = match connected {
            Ok(c) => match (&args.capability, &args.via) {
                (Some(cap), None) => {
                    eprintln!("{cap} → routed by the NexRoute tables of {addr}");
                    c.route_by(cap)
                }
                _ => c,
            },
            Err(e) => {
                eprintln!("error: connecting to {addr}: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        if let Some(path) = &args.tensor {
            return send_tensor(&client, path).await;
        }
        let req = InferRequest {
            model: args.model,
            prompt: args.prompt.unwrap_or_default(),
            max_tokens: args.max_tokens,
        };
        if args.stream {
            let mut tokens = client
                .stream_tokens(&req)
                .await
                .context("opening token stream")?;
            let mut out = std::io::stdout().lock();
            while let Some(t) = tokens.next().await {
                match t {
                    Ok(t) => {
                        out.write_all(t.as_bytes())?;
                        out.flush()?;
                    }
                    Err(e) => {
                        eprintln!("\nerror: {e}");
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            writeln!(out)?;
        } else {
            match client.infer(&req).await {
                Ok(r) => println!("{}", serde_json::to_string_pretty(&r)?),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Sends `path`'s bytes as an opaque tensor (checked: the endpoint's checksum must match)
/// and prints the acknowledgement and the rate.
async fn send_tensor(client: &Client, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let data =
        std::fs::read(path).with_context(|| format!("reading the tensor {}", path.display()))?;
    let Ok(len) = u32::try_from(data.len()) else {
        eprintln!(
            "error: {} is {} bytes; a tensor is at most {} bytes",
            path.display(),
            data.len(),
            u32::MAX
        );
        return Ok(ExitCode::from(1));
    };
    let header = nexus_api::Header::opaque(1, 0, len);
    let shard = client.shard_size(u64::from(len));
    let started = std::time::Instant::now();
    match client.send_tensor_checked(&header, &data, shard).await {
        Ok(ack) => {
            let secs = started.elapsed().as_secs_f64();
            println!("{}", serde_json::to_string_pretty(&ack)?);
            eprintln!(
                "{} bytes in {} shards, {:.3} s, {:.1} MB/s; the endpoint's checksum matches",
                ack.bytes,
                ack.shards,
                secs,
                ack.bytes as f64 / secs.max(1e-9) / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Which endpoint the NexRoute tables of the dataplane at `via` (its HTTP address) pick for
/// `capability` in `tenant`'s domain.
pub async fn resolve(
    via: &str,
    tenant: &str,
    capability: &str,
    domain: Option<&str>,
) -> anyhow::Result<SocketAddr> {
    let base = if via.starts_with("http://") || via.starts_with("https://") {
        via.trim_end_matches('/').to_owned()
    } else {
        format!("http://{via}")
    };
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/resolve"))
        .json(&serde_json::json!({"tenant": tenant, "capability": capability, "domain": domain}))
        .send()
        .await
        .with_context(|| format!("asking {base} to resolve {capability}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{base} cannot route {capability}: {}",
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no answer")
        );
    }
    v.get("next_hop")
        .and_then(|h| h.as_str())
        .and_then(|h| h.parse().ok())
        .with_context(|| format!("{base} answered without a next hop: {v}"))
}
