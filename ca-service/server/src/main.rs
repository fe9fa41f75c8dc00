//! `nexus-ca`: the NexTrust CA service binary. See the crate docs and the README.

use anyhow::Context;
use clap::Parser;
use sqlx::postgres::PgPoolOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = nexus_ca::Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what an administrative command prints (a join token).
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    let settings = args.settings().context("configuration")?;
    let pool = PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    if let Some(command) = &args.command {
        return admin(command, pool, &settings).await;
    }
    let usage_cfg = match (&args.usage_url, &args.usage_token, &args.usage_keys_dir) {
        (Some(url), Some(token), _) => Some(nexus_ca::usage::UsageConfig::with_token(url, token)),
        (Some(url), None, Some(dir)) => {
            Some(nexus_ca::usage::UsageConfig::from_dir(url, dir).context("usage keys directory")?)
        }
        (Some(_), None, None) => {
            anyhow::bail!("--usage-url needs --usage-token (or --usage-keys-dir)")
        }
        (None, _, _) => None,
    };
    let server = match args.tls_options() {
        Some(tls) => nexus_ca::start_tls(pool, settings, tls).await,
        None => nexus_ca::start(pool, settings).await,
    }
    .context("starting the CA")?;
    let _usage = match usage_cfg {
        Some(cfg) => {
            tracing::info!(?cfg, "reporting issued MICs as usage");
            Some(nexus_ca::usage::spawn(
                std::sync::Arc::clone(server.ca()),
                cfg,
            ))
        }
        _ => None,
    };
    let _publisher = match args.publish_config() {
        Some(cfg) => {
            let client = kube::Client::try_default().await.context(
                "--publish-* needs Kubernetes credentials (the in-cluster service account)",
            )?;
            tracing::info!(?cfg, "publishing client certificates to the cluster");
            Some(nexus_ca::publish::spawn(
                std::sync::Arc::clone(server.ca()),
                client,
                cfg,
            ))
        }
        None => None,
    };
    let stop = server.stop_handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    server.wait().await.context("serving")?;
    Ok(())
}

async fn admin(
    command: &nexus_ca::Command,
    pool: sqlx::PgPool,
    settings: &nexus_ca::Settings,
) -> anyhow::Result<()> {
    let ca = nexus_ca::server::open(pool, settings)
        .await
        .context("opening the CA")?;
    match command {
        nexus_ca::Command::ClientCert {
            role,
            name,
            out,
            validity,
        } => {
            let params = nexus_ca::ca::ServiceCertParams {
                role: role.clone(),
                name: name.clone(),
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
                server: false,
                client: true,
                not_before: std::time::SystemTime::now() - std::time::Duration::from_secs(60),
                validity: *validity,
            };
            issue_files(&ca, &params, out).await?;
        }
        nexus_ca::Command::ServerCert {
            name,
            dns_names,
            ip_addresses,
            out,
            validity,
        } => {
            if dns_names.is_empty() && ip_addresses.is_empty() {
                anyhow::bail!("a server certificate needs at least one --dns or --ip");
            }
            let params = nexus_ca::ca::ServiceCertParams {
                role: "server".into(),
                name: name.clone(),
                dns_names: dns_names.clone(),
                ip_addresses: ip_addresses.clone(),
                server: true,
                client: false,
                not_before: std::time::SystemTime::now() - std::time::Duration::from_secs(60),
                validity: *validity,
            };
            issue_files(&ca, &params, out).await?;
        }
        nexus_ca::Command::JoinToken {
            node,
            ttl,
            description,
        } => {
            let t = ca
                .create_join_token(node.as_deref(), *ttl, description)
                .await
                .context("creating the join token")?;
            // The token alone on stdout (scriptable); what it is for on stderr.
            eprintln!(
                "join token {} for {}, valid until {} (Unix seconds); use once: nexus-agent --join-token …",
                t.id,
                node.as_deref().unwrap_or("any node"),
                t.expires_at
            );
            println!("{}", t.token);
        }
        nexus_ca::Command::RevokeCert { serial } => {
            ca.revoke_service_cert(serial, nexus_mic::RevocationReason::CessationOfOperation)
                .await
                .context("revoking")?;
            println!("revoked {serial}; the CRL lists it now");
        }
    }
    Ok(())
}

/// Issues a service certificate and writes `<name>.crt`, `<name>.key` and `ca.crt` to `out`.
async fn issue_files(
    ca: &nexus_ca::ca::Ca,
    params: &nexus_ca::ca::ServiceCertParams,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let cert = ca.issue_service_cert(params).await.context("issuing")?;
    let name = &params.name;
    nexus_ca::tls::write_files(out, name, &cert).context("writing the files")?;
    println!(
        "issued {name} (role {}), serial {}; wrote {name}.crt, {name}.key, ca.crt to {}",
        params.role,
        cert.serial,
        out.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
