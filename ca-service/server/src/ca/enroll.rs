//! Node enrollment: how a node agent gets the certificate it presents on the fleet protocol
//! (role `node`, CN = its node name), without an operator copying keys around.
//!
//! * An operator creates a **one-time join token** (`nexus-ca join-token`, like `kubeadm
//!   token create`): `<id>.<secret>`, the secret stored only as its SHA-256, valid for a TTL,
//!   optionally bound to one node name.
//! * The agent generates its key, sends a CSR with the token ([`Ca::join`]) over TLS (it
//!   trusts the CA's root from its own configuration) and receives a certificate for its key.
//!   The token is spent in the same transaction that records the certificate. Repeating
//!   exactly that join (same node, same key: the answer was lost) returns the same
//!   certificate; any other use is refused.
//! * Before the certificate expires the agent renews it ([`Ca::renew_node_cert`]) over mutual
//!   TLS with the certificate it holds, for a fresh key; the new certificate names the same
//!   node. A revoked node certificate fails the TLS handshake (the CA's CRL), so it can never
//!   renew.

use std::time::{Duration, SystemTime};

use nexus_mic::{Csr, ServiceCertRequest};
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Ca, ts, unix_now};
use crate::{Error, policy};

/// The role node certificates carry.
pub const NODE_ROLE: &str = "node";

/// Characters of both halves of a join token.
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;

/// A join token as created: the only time the secret is known outside the requester.
#[derive(Clone)]
pub struct JoinToken {
    /// The public half (what listings and the audit log show).
    pub id: String,
    /// `<id>.<secret>`: what the node agent is given.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A node certificate, without its key (the node holds that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    /// Serial, lowercase hex.
    pub serial: String,
    /// The node name (the certificate's CN).
    pub node_name: String,
    /// Leaf, DER.
    pub leaf_der: Vec<u8>,
    /// The intermediate, DER.
    pub chain_der: Vec<u8>,
    /// The root, DER.
    pub root_der: Vec<u8>,
    /// Unix seconds.
    pub not_after: i64,
}

impl NodeCert {
    /// Leaf then intermediate, PEM: the `tls.crt` a node presents.
    pub fn chain_pem(&self) -> String {
        format!(
            "{}{}",
            nexus_mic::der_to_pem("CERTIFICATE", &self.leaf_der),
            nexus_mic::der_to_pem("CERTIFICATE", &self.chain_der)
        )
    }
}

fn random_chars(n: usize) -> Result<String, Error> {
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 32];
    while out.len() < n {
        rng.fill(&mut buf)
            .map_err(|_| Error::State("no randomness".into()))?;
        // Rejection sampling: 252 = 7 × 36, so every character is equally likely.
        for b in buf.iter().filter(|b| **b < 252) {
            if out.len() == n {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*b % 36)]));
        }
    }
    Ok(out)
}

/// Splits `<id>.<secret>`; `None` for anything else (the caller answers [`Error::JoinRefused`]).
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.trim().split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
    (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then_some((id, secret))
}

/// A node name as Kubernetes accepts one (an RFC 1123 subdomain), which is also what the
/// controller registers nodes under.
pub fn check_node_name(name: &str) -> Result<(), Error> {
    if policy::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "node_name",
            reason: "must be a lowercase RFC 1123 subdomain (a Kubernetes node name)".into(),
        })
    }
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

impl Ca {
    /// Creates a one-time join token valid for `ttl`, optionally only for `node_name`.
    pub async fn create_join_token(
        &self,
        node_name: Option<&str>,
        ttl: Duration,
        description: &str,
    ) -> Result<JoinToken, Error> {
        if let Some(n) = node_name {
            check_node_name(n)?;
        }
        if ttl.is_zero() || ttl > Duration::from_secs(7 * 86_400) {
            return Err(Error::InvalidArgument {
                field: "ttl",
                reason: "a join token lives between one second and 7 days".into(),
            });
        }
        let (id, secret) = (random_chars(ID_LEN)?, random_chars(SECRET_LEN)?);
        let expires_at = unix_now() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_sha256, node_name, description, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(digest(secret.as_bytes()))
        .bind(node_name)
        .bind(description)
        .bind(ts(expires_at))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (action, detail)
             VALUES ('join_token_create', jsonb_build_object('id', $1::text, 'node', $2::text, 'expires_at', $3::bigint))",
        )
        .bind(&id)
        .bind(node_name)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(token_id = %id, node = ?node_name, expires_at, "join token created");
        Ok(JoinToken {
            token: format!("{id}.{secret}"),
            id,
            expires_at,
        })
    }

    fn node_request<'a>(&self, node_name: &'a str) -> ServiceCertRequest<'a> {
        ServiceCertRequest {
            common_name: node_name,
            dns_names: &[],
            ip_addresses: &[],
            uris: &[],
            server_auth: false,
            client_auth: true,
            not_before: SystemTime::now() - Duration::from_secs(60),
            validity: self.node_cert_validity,
        }
    }

    fn sign_node_cert(&self, node_name: &str, csr: &Csr) -> Result<NodeCert, Error> {
        let role_uri = nexus_tls::role_uri(NODE_ROLE);
        let uris = [role_uri.as_str()];
        let mut req = self.node_request(node_name);
        req.uris = &uris;
        let issued = self.keys.intermediate.issue_service_cert_for(&req, csr)?;
        Ok(NodeCert {
            serial: hex::encode(&issued.serial),
            node_name: node_name.to_owned(),
            leaf_der: issued.der,
            chain_der: self.intermediate_der().to_vec(),
            root_der: self.root_der().to_vec(),
            not_after: issued.not_after,
        })
    }

    async fn record_node_cert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        cert: &NodeCert,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO service_certs (serial, role, name, der, not_after) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&cert.serial)
        .bind(NODE_ROLE)
        .bind(&cert.node_name)
        .bind(&cert.leaf_der)
        .bind(ts(cert.not_after))
        .execute(&mut **tx)
        .await?;
        sqlx::query("INSERT INTO audit_log (action, serial, detail) VALUES ($1, $2, $3)")
            .bind(action)
            .bind(&cert.serial)
            .bind(detail)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Spends a join token on a first node certificate for `node_name` and the CSR's key.
    pub async fn join(
        &self,
        token: &str,
        node_name: &str,
        csr_der: &[u8],
    ) -> Result<NodeCert, Error> {
        check_node_name(node_name)?;
        let csr = Csr::from_der(csr_der)?;
        let Some((id, secret)) = parse_token(token) else {
            tracing::warn!(node = %node_name, why = "malformed token", "join refused");
            self.metrics.join_refused();
            return Err(Error::JoinRefused);
        };
        let spki = digest(csr.spki_der());
        let mut tx = self.pool.begin().await?;
        // Row lock: two concurrent joins with one token are decided one after the other.
        let row = sqlx::query(
            "SELECT secret_sha256, node_name, expires_at > now() AS live, used_by, used_spki_sha256, used_serial
             FROM join_tokens WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let refuse = |why: &str| {
            tracing::warn!(token_id = %id, node = %node_name, why, "join refused");
            self.metrics.join_refused();
            Err(Error::JoinRefused)
        };
        let Some(row) = row else {
            return refuse("unknown token");
        };
        let stored: Vec<u8> = row.try_get("secret_sha256")?;
        if !policy::digests_equal(&stored, &digest(secret.as_bytes())) {
            return refuse("wrong secret");
        }
        let bound: Option<String> = row.try_get("node_name")?;
        if bound.as_deref().is_some_and(|b| b != node_name) {
            return refuse("token is for another node");
        }
        let used_by: Option<String> = row.try_get("used_by")?;
        if let Some(used_by) = used_by {
            let used_spki: Option<Vec<u8>> = row.try_get("used_spki_sha256")?;
            let serial: Option<String> = row.try_get("used_serial")?;
            if used_by != node_name || used_spki.as_deref() != Some(spki.as_slice()) {
                return refuse("token already used");
            }
            // The same join again: its answer was lost. Return what it got.
            let serial = serial.ok_or_else(|| Error::State("used token without serial".into()))?;
            let cert = sqlx::query(
                "SELECT der, not_after, revoked_at FROM service_certs WHERE serial = $1",
            )
            .bind(&serial)
            .fetch_one(&mut *tx)
            .await?;
            let revoked: Option<chrono::DateTime<chrono::Utc>> = cert.try_get("revoked_at")?;
            if revoked.is_some() {
                return refuse("the certificate this token gave is revoked");
            }
            let not_after: chrono::DateTime<chrono::Utc> = cert.try_get("not_after")?;
            return Ok(NodeCert {
                serial,
                node_name: node_name.to_owned(),
                leaf_der: cert.try_get("der")?,
                chain_der: self.intermediate_der().to_vec(),
                root_der: self.root_der().to_vec(),
                not_after: not_after.timestamp(),
            });
        }
        let live: bool = row.try_get("live")?;
        if !live {
            return refuse("token expired");
        }
        let cert = self.sign_node_cert(node_name, &csr)?;
        self.record_node_cert(
            &mut tx,
            &cert,
            "node_join",
            serde_json::json!({ "node": node_name, "token_id": id }),
        )
        .await?;
        sqlx::query(
            "UPDATE join_tokens SET used_at = now(), used_by = $2, used_spki_sha256 = $3, used_serial = $4
             WHERE id = $1",
        )
        .bind(id)
        .bind(node_name)
        .bind(&spki)
        .bind(&cert.serial)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.metrics.node_cert_issued("join");
        tracing::info!(node = %node_name, serial = %cert.serial, token_id = %id, "node joined");
        Ok(cert)
    }

    /// Issues a node certificate for a fresh key to the node named by the certificate the
    /// caller authenticated with (`node_name`, `serial`: from the verified TLS peer).
    pub async fn renew_node_cert(
        &self,
        node_name: &str,
        presented_serial: &str,
        csr_der: &[u8],
    ) -> Result<NodeCert, Error> {
        check_node_name(node_name)?;
        let csr = Csr::from_der(csr_der)?;
        let mut tx = self.pool.begin().await?;
        // The handshake checked the CRL the verifier holds; the database is the source of
        // truth (a revocation another replica recorded a moment ago).
        let presented = sqlx::query(
            "SELECT revoked_at IS NOT NULL AS revoked FROM service_certs
             WHERE serial = $1 AND role = $2 AND name = $3",
        )
        .bind(presented_serial)
        .bind(NODE_ROLE)
        .bind(node_name)
        .fetch_optional(&mut *tx)
        .await?;
        match presented {
            None => return Err(Error::PermissionDenied(NODE_ROLE.into())),
            Some(r) if r.try_get::<bool, _>("revoked")? => {
                return Err(Error::Revoked(presented_serial.to_owned()));
            }
            Some(_) => {}
        }
        let cert = self.sign_node_cert(node_name, &csr)?;
        self.record_node_cert(
            &mut tx,
            &cert,
            "node_renew",
            serde_json::json!({ "node": node_name, "renewed_from": presented_serial }),
        )
        .await?;
        tx.commit().await?;
        self.metrics.node_cert_issued("renew");
        tracing::info!(node = %node_name, serial = %cert.serial, from = %presented_serial, "node certificate renewed");
        Ok(cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_kubeadm_shape_and_parse_strictly() {
        let id = random_chars(ID_LEN).ok();
        let secret = random_chars(SECRET_LEN).ok();
        let (Some(id), Some(secret)) = (id, secret) else {
            panic!("randomness");
        };
        let token = format!("{id}.{secret}");
        assert_eq!(parse_token(&token), Some((id.as_str(), secret.as_str())));
        for bad in [
            "",
            ".",
            "abcdef",
            "abcdef.",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcdeF",
            "abcdef.0123456789abcdef0",
            "abc-ef.0123456789abcdef",
            "abcdef:0123456789abcdef",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_names_follow_kubernetes() {
        for ok in ["n1", "node-01", "rack1.node-3", &"a".repeat(63)] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "N1",
            "-n",
            "n-",
            "a..b",
            "n_1",
            "n 1",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(130)),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }
}
