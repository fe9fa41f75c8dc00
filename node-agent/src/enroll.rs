//! The node's own certificate for the fleet protocol: obtained once with a one-time join token
//! (as `kubeadm join` does), then renewed before it expires with the certificate the node
//! holds — both from the Nexus CA's `NodeEnrollment` service. The key is generated here and
//! never leaves the node; only CSRs travel.
//!
//! The files are the ones the agent presents to the controller (`--tls-cert`, `--tls-key`):
//! the controller channel re-reads them every [`nexus_tls::CLIENT_CERT_RELOAD`], so a renewed
//! certificate is used without a restart. When to renew is [`renew_at`] (pure).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::node_enrollment_client::NodeEnrollmentClient;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Where and how the node enrolls.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The CA's gRPC endpoint (`https://…`).
    pub ca_url: String,
    /// The CA's root (PEM): trusted for the CA's server certificate.
    pub ca_root: PathBuf,
    /// Name the CA's certificate must carry (default: the URL's host).
    pub ca_server_name: Option<String>,
    /// This node's name (the certificate's CN; the controller admits it only under it).
    pub node_name: String,
    /// The certificate file (leaf + intermediate, PEM).
    pub cert: PathBuf,
    /// The key file (PKCS#8 PEM, 0600).
    pub key: PathBuf,
    /// The one-time join token, used only while there is no certificate yet.
    pub join_token: Option<String>,
}

/// The validity of the certificate in the files, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: i64,
    /// notAfter.
    pub not_after: i64,
}

/// When to renew a certificate: [`nexus_tls::renew_at`], the rule every rotated Nexus
/// certificate follows (after two thirds of its life).
pub fn renew_at(v: Validity) -> i64 {
    nexus_tls::renew_at(v.not_before, v.not_after)
}

/// How long to wait before retrying a failed renewal: a tenth of what is left, between one
/// second and a minute — retries speed up as expiry nears but never hammer the CA.
pub fn retry_after(v: Validity, now: i64) -> Duration {
    let left = (v.not_after - now).max(0);
    Duration::from_secs(u64::try_from(left / 10).unwrap_or(0).clamp(1, 60))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Reads the validity of the first certificate in a PEM file.
pub fn read_validity(path: &Path) -> anyhow::Result<Validity> {
    let certs = nexus_tls::read_certs(path)?;
    let first = certs
        .first()
        .with_context(|| format!("{}: no certificate", path.display()))?;
    let (_, cert) = X509Certificate::from_der(first.as_ref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Writes `bytes` to `path` crash-safely (`fsutil::write_atomic_as`), creating its directory;
/// `private` files are 0600 from the start.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(crate::fsutil::write_atomic_as(path, bytes, private)?)
}

impl Enrollment {
    async fn client(
        &self,
        with_certificate: bool,
    ) -> anyhow::Result<NodeEnrollmentClient<tonic::transport::Channel>> {
        let files = nexus_tls::ClientTlsFiles {
            ca: self.ca_root.clone(),
            cert: with_certificate.then(|| self.cert.clone()),
            key: with_certificate.then(|| self.key.clone()),
            server_name: self.ca_server_name.clone(),
        };
        if !self.ca_url.starts_with("https://") {
            anyhow::bail!(
                "the CA endpoint {} must be https:// (a join token must not cross in clear)",
                self.ca_url
            );
        }
        let channel = nexus_tls::grpc_channel(
            &self.ca_url,
            Some(&files),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )?;
        Ok(NodeEnrollmentClient::new(channel))
    }

    /// Writes what the CA answered: the key first, then the certificate (a reload that sees
    /// the new key with the old certificate refuses the pair and retries; see `nexus-tls`).
    fn store(&self, key_pem: &str, cert: &pb::NodeCertificate) -> anyhow::Result<Validity> {
        if cert.node_name != self.node_name {
            anyhow::bail!(
                "the CA certified node {:?}, not {:?}",
                cert.node_name,
                self.node_name
            );
        }
        let chain = format!(
            "{}{}",
            nexus_mic::der_to_pem("CERTIFICATE", &cert.leaf_der),
            nexus_mic::der_to_pem("CERTIFICATE", &cert.chain_der)
        );
        let (_, leaf) = X509Certificate::from_der(&cert.leaf_der)
            .map_err(|e| anyhow::anyhow!("the CA's certificate does not parse: {e}"))?;
        if leaf.validity().not_after.timestamp() <= now() {
            anyhow::bail!(
                "the CA issued a certificate that has already expired: are the node's and the CA's clocks in step?"
            );
        }
        write_file(&self.key, key_pem.as_bytes(), true)?;
        write_file(&self.cert, chain.as_bytes(), false)?;
        read_validity(&self.cert)
    }

    /// Makes sure the node has a usable certificate: the one in the files if it is still
    /// valid, else a new one for the join token. Returns its validity.
    pub async fn ensure(&self) -> anyhow::Result<Validity> {
        if self.cert.exists() && self.key.exists() {
            match read_validity(&self.cert) {
                Ok(v) if v.not_after > now() => return Ok(v),
                Ok(_) => {
                    tracing::warn!(cert = %self.cert.display(), "the node certificate has expired")
                }
                Err(e) => tracing::warn!(error = %e, "the node certificate is unreadable"),
            }
        }
        let token = self.join_token.as_deref().context(
            "no valid node certificate and no join token: create one with `nexus-ca join-token --node <name>` and pass --join-token",
        )?;
        self.join(token).await
    }

    /// Joins with a one-time token: a fresh key, a CSR, the CA's certificate.
    pub async fn join(&self, token: &str) -> anyhow::Result<Validity> {
        let key = nexus_mic::generate_service_key(&self.node_name)?;
        let answer = self
            .client(false)
            .await?
            .join(pb::JoinRequest {
                token: token.trim().to_owned(),
                node_name: self.node_name.clone(),
                csr_der: key.csr_der.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("joining at {}: {}", self.ca_url, s.message()))?
            .into_inner();
        let v = self.store(&key.private_key_pem, &answer)?;
        tracing::info!(node = %self.node_name, serial = %answer.serial, not_after = v.not_after, "joined: node certificate issued");
        Ok(v)
    }

    /// Renews with the current certificate, for a fresh key.
    pub async fn renew(&self) -> anyhow::Result<Validity> {
        let key = nexus_mic::generate_service_key(&self.node_name)?;
        let answer = self
            .client(true)
            .await?
            .renew(pb::RenewNodeRequest {
                csr_der: key.csr_der.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("renewing at {}: {}", self.ca_url, s.message()))?
            .into_inner();
        let v = self.store(&key.private_key_pem, &answer)?;
        tracing::info!(node = %self.node_name, serial = %answer.serial, not_after = v.not_after, "node certificate renewed");
        Ok(v)
    }

    /// Renews the certificate each time two thirds of its life have passed, forever.
    pub async fn run_renewals(self, mut current: Validity) {
        loop {
            let wait = u64::try_from(renew_at(current) - now()).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match self.renew().await {
                Ok(v) => current = v,
                Err(e) => {
                    let retry = retry_after(current, now());
                    tracing::warn!(error = %e, retry_in_s = retry.as_secs(), "renewing the node certificate failed");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_after_two_thirds_and_retries_speed_up_near_expiry() {
        let week = Validity {
            not_before: 1_000,
            not_after: 1_000 + 7 * 86_400,
        };
        assert_eq!(renew_at(week), 1_000 + 7 * 86_400 * 2 / 3);
        assert_eq!(retry_after(week, 1_000), Duration::from_secs(60));
        assert_eq!(
            retry_after(week, week.not_after - 100),
            Duration::from_secs(10)
        );
        assert_eq!(retry_after(week, week.not_after), Duration::from_secs(1));
        assert_eq!(
            retry_after(week, week.not_after + 50),
            Duration::from_secs(1)
        );
        // A certificate with a backwards window renews at once.
        let odd = Validity {
            not_before: 10,
            not_after: 5,
        };
        assert_eq!(renew_at(odd), 10);
    }
}
