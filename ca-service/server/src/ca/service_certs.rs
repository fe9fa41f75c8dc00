//! TLS certificates for Nexus services, issued by the CA's own intermediate: the CA's server
//! certificate (at bootstrap and before it expires) and callers' client certificates with a
//! role. Recorded in `service_certs` and revocable; revoked ones go on the CRL.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nexus_mic::{RevocationReason, ServiceCertRequest};

use super::{Ca, reason_code, ts, unix};
use crate::{Error, policy};

/// What to issue.
#[derive(Debug, Clone)]
pub struct ServiceCertParams {
    /// Role (a DNS label): `ca-server`, `controller`, `cloud-api`, …
    pub role: String,
    /// Subject CN.
    pub name: String,
    /// DNS SANs (servers).
    pub dns_names: Vec<String>,
    /// IP SANs (servers).
    pub ip_addresses: Vec<IpAddr>,
    /// serverAuth.
    pub server: bool,
    /// clientAuth (and the role URI SAN).
    pub client: bool,
    /// Start of validity (backdated a minute for clock skew by callers).
    pub not_before: SystemTime,
    /// Lifetime.
    pub validity: Duration,
}

/// An issued service certificate, as the files a service reads.
#[derive(Clone)]
pub struct ServiceCert {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// The root to trust, PEM.
    pub root_pem: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for ServiceCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCert")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn check_role(role: &str) -> Result<(), Error> {
    if policy::is_dns_label(role) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "role",
            reason: "must be a DNS label ([a-z0-9-], 1-63 characters)".into(),
        })
    }
}

impl Ca {
    /// Issues and records a service certificate.
    pub async fn issue_service_cert(&self, p: &ServiceCertParams) -> Result<ServiceCert, Error> {
        check_role(&p.role)?;
        let role_uri = nexus_tls::role_uri(&p.role);
        let dns: Vec<&str> = p.dns_names.iter().map(String::as_str).collect();
        let uris: Vec<&str> = if p.client {
            vec![role_uri.as_str()]
        } else {
            Vec::new()
        };
        let issued = self
            .keys
            .intermediate
            .issue_service_cert(&ServiceCertRequest {
                common_name: &p.name,
                dns_names: &dns,
                ip_addresses: &p.ip_addresses,
                uris: &uris,
                server_auth: p.server,
                client_auth: p.client,
                not_before: p.not_before,
                validity: p.validity,
            })?;
        let serial = hex::encode(&issued.cert.serial);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO service_certs (serial, role, name, der, not_after) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&serial)
        .bind(&p.role)
        .bind(&p.name)
        .bind(&issued.cert.der)
        .bind(ts(issued.cert.not_after))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (action, serial, detail)
             VALUES ('service_cert_issue', $1, jsonb_build_object('role', $2::text, 'name', $3::text))",
        )
        .bind(&serial)
        .bind(&p.role)
        .bind(&p.name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(%serial, role = %p.role, name = %p.name, "service certificate issued");
        Ok(ServiceCert {
            serial,
            chain_pem: format!(
                "{}{}",
                issued.cert.pem,
                nexus_mic::der_to_pem("CERTIFICATE", self.intermediate_der())
            ),
            key_pem: issued.private_key_pem,
            root_pem: nexus_mic::der_to_pem("CERTIFICATE", self.root_der()),
            not_after: issued.cert.not_after,
        })
    }

    /// Whether a service certificate is recorded as revoked (unknown serials are not).
    pub async fn service_cert_revoked(&self, serial: &str) -> Result<bool, Error> {
        let revoked: Option<bool> = sqlx::query_scalar(
            "SELECT revoked_at IS NOT NULL FROM service_certs WHERE serial = $1",
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        Ok(revoked.unwrap_or(false))
    }

    /// Revokes a service certificate and re-signs the CRL (which the TLS verifier then uses).
    pub async fn revoke_service_cert(
        &self,
        serial: &str,
        reason: RevocationReason,
    ) -> Result<(), Error> {
        let serial = policy::parse_serial(serial)?;
        let updated = sqlx::query(
            "UPDATE service_certs SET revoked_at = $2, reason = $3
             WHERE serial = $1 AND revoked_at IS NULL",
        )
        .bind(&serial)
        .bind(ts(unix(SystemTime::now())))
        .bind(reason_code(reason))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            let exists: Option<String> =
                sqlx::query_scalar("SELECT serial FROM service_certs WHERE serial = $1")
                    .bind(&serial)
                    .fetch_optional(&self.pool)
                    .await?;
            if exists.is_none() {
                return Err(Error::NotFound(serial));
            }
        } else {
            sqlx::query(
                "INSERT INTO audit_log (action, serial, detail)
                 VALUES ('service_cert_revoke', $1, jsonb_build_object('reason', $2::int))",
            )
            .bind(&serial)
            .bind(i32::from(reason_code(reason)))
            .execute(&self.pool)
            .await?;
            tracing::info!(%serial, %reason, "service certificate revoked");
        }
        self.refresh_crl().await?;
        Ok(())
    }

    /// Feeds every CRL this CA signs from now on to `verifier` (and the current one now).
    pub async fn attach_tls_verifier(
        &self,
        verifier: Arc<nexus_tls::ClientVerifier>,
    ) -> Result<(), Error> {
        if self.tls_verifier.set(verifier).is_err() {
            return Err(Error::State("a TLS verifier is already attached".into()));
        }
        self.refresh_crl().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_role;

    #[test]
    fn roles_are_dns_labels() {
        assert!(check_role("controller").is_ok());
        assert!(check_role("cloud-api").is_ok());
        assert!(check_role("").is_err());
        assert!(check_role("Controller").is_err());
        assert!(check_role("a/b").is_err());
        assert!(check_role("-x").is_err());
    }
}
