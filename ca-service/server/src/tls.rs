//! The CA's own TLS: at start it issues itself a server certificate from its intermediate
//! (bootstrap: no outside PKI needed), writes it beside the root for callers to trust, and
//! re-issues it when two thirds of its life have passed; connections pick the new one up
//! without a restart. Client certificates are verified against the CA's root and its current
//! CRL, which the CA pushes to the verifier each time it signs one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nexus_tls::{ClientVerifier, ReloadingCertificate, ServerTls};

use crate::Error;
use crate::ca::{Ca, ServiceCert, ServiceCertParams};

/// How the CA serves TLS.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Directory the CA writes `tls.crt` (leaf + intermediate), `tls.key` and `ca.crt` (the
    /// root callers trust) to.
    pub dir: PathBuf,
    /// DNS names and IP addresses for the server certificate (e.g. `nexus-ca`,
    /// `nexus-ca.nexus-system.svc`, `127.0.0.1`).
    pub server_names: Vec<String>,
    /// Server certificate lifetime; re-issued after two thirds of it.
    pub server_validity: Duration,
    /// Roles a client certificate may carry to call the CA.
    pub client_roles: Vec<String>,
    /// Also accept the bearer token (over TLS only): the documented fallback.
    pub allow_token: bool,
}

impl TlsOptions {
    /// Defaults for tests: loopback names, one day, the default roles, no token.
    pub fn for_tests(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            server_validity: Duration::from_secs(86_400),
            client_roles: crate::auth::DEFAULT_ROLES
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            allow_token: false,
        }
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reader (a reload,
/// a caller) never sees half a file; `secret` files are created 0600.
fn write_atomic(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = opts.open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Writes a service certificate as `<stem>.crt`, `<stem>.key` and `ca.crt` in `dir`.
pub fn write_files(dir: &Path, stem: &str, cert: &ServiceCert) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join("ca.crt"), &cert.root_pem, false)?;
    // Key first: a reload that sees the new certificate with the old key refuses the pair
    // (keys_match) and retries on the next tick.
    write_atomic(&dir.join(format!("{stem}.key")), &cert.key_pem, true)?;
    write_atomic(&dir.join(format!("{stem}.crt")), &cert.chain_pem, false)?;
    Ok(())
}

fn server_params(opts: &TlsOptions) -> ServiceCertParams {
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for n in &opts.server_names {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.clone()),
        }
    }
    ServiceCertParams {
        role: "ca-server".into(),
        name: "nexus-ca".into(),
        dns_names: dns,
        ip_addresses: ips,
        server: true,
        client: false,
        not_before: SystemTime::now() - Duration::from_secs(60),
        validity: opts.server_validity,
    }
}

/// The CA's TLS, running.
#[derive(Debug)]
pub struct ServingTls {
    /// The rustls server config both listeners use.
    pub config: Arc<rustls::ServerConfig>,
    /// Re-issues the server certificate before it expires.
    pub renewal: tokio::task::JoinHandle<()>,
}

/// Issues the server certificate, writes the files, builds the server config with client
/// verification, attaches the verifier to the CA's CRL, and starts the renewal.
pub async fn bootstrap(ca: &Arc<Ca>, opts: &TlsOptions) -> Result<ServingTls, Error> {
    let cert = ca.issue_service_cert(&server_params(opts)).await?;
    write_files(&opts.dir, "tls", &cert)?;
    let certificate =
        ReloadingCertificate::from_files(&opts.dir.join("tls.crt"), &opts.dir.join("tls.key"))?;
    let verifier = ClientVerifier::new(&[ca.root_der().to_vec().into()], Vec::new(), false)?;
    ca.attach_tls_verifier(Arc::clone(&verifier)).await?;
    let config = ServerTls {
        certificate: Arc::clone(&certificate),
        client_verifier: Some(verifier),
    }
    .server_config()?;
    let renewal = {
        let (ca, opts) = (Arc::clone(ca), opts.clone());
        tokio::spawn(async move {
            let mut not_after = cert.not_after;
            loop {
                // Issued valid from `not_after - life` (see `server_params`).
                let life = i64::try_from(opts.server_validity.as_secs()).unwrap_or(i64::MAX);
                let renew_at = nexus_tls::renew_at(not_after.saturating_sub(life), not_after);
                let now = crate::ca::unix_now();
                let wait = u64::try_from(renew_at - now).unwrap_or(0).max(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                match renew(&ca, &opts, &certificate).await {
                    Ok(na) => not_after = na,
                    Err(e) => {
                        tracing::error!(error = %e, "re-issuing the CA's server certificate failed; retrying in a minute");
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            }
        })
    };
    tracing::info!(dir = %opts.dir.display(), names = ?opts.server_names, "TLS: server certificate issued by this CA");
    Ok(ServingTls { config, renewal })
}

async fn renew(
    ca: &Arc<Ca>,
    opts: &TlsOptions,
    certificate: &ReloadingCertificate,
) -> Result<i64, Error> {
    let cert = ca.issue_service_cert(&server_params(opts)).await?;
    write_files(&opts.dir, "tls", &cert)?;
    certificate.reload_if_changed()?;
    tracing::info!(serial = %cert.serial, "TLS: server certificate re-issued");
    Ok(cert.not_after)
}
