//! Issuance and renewal: request-id replay, the pure policy check, signing, the hand-off to
//! the log writer.

use std::time::{Duration, Instant, SystemTime};

use nexus_mic::{Mic, MicRequest};
use sqlx::Row;
use tokio::sync::oneshot;

use super::writer::{NewCert, Pending, WriteOutcome};
use super::{Ca, IssueParams, IssuedCert, RenewParams, check_tenant_name, request_hash, unix};
use crate::{Error, merkle, policy};

/// MICs start this long before issuance, for clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

impl Ca {
    #[tracing::instrument(name = "issue", skip_all, fields(tenant = %p.tenant, request_id = %p.request_id))]
    pub async fn issue(&self, p: IssueParams) -> Result<IssuedCert, Error> {
        let r = self.issue_inner(p).await;
        if let Err(e) = &r {
            self.metrics.fail("issue", e);
        }
        r
    }

    async fn issue_inner(&self, p: IssueParams) -> Result<IssuedCert, Error> {
        let started = Instant::now();
        check_tenant_name(&p.tenant)?;
        policy::check_request_id(&p.request_id)?;
        let hash = request_hash(
            "issue",
            &[
                p.tenant.as_bytes(),
                &p.csr_der,
                p.model.as_bytes(),
                p.version.as_bytes(),
                &p.attestation_der,
                &p.validity_seconds.to_be_bytes(),
            ],
        );
        let lookup = self.lookup(&p.tenant, &p.request_id).await?;
        if let Some(prev) = &lookup.previous {
            return self.replay(&p.tenant, &p.request_id, prev, &hash).await;
        }
        let approved = policy::check_issue(
            &policy::IssueInput {
                tenant: &p.tenant,
                csr_der: &p.csr_der,
                model: &p.model,
                version: &p.version,
                attestation_der: &p.attestation_der,
                validity_seconds: p.validity_seconds,
            },
            lookup.tenant.as_ref(),
            &self.limits,
        )?;
        let out = self
            .sign_and_log(
                approved,
                &p.tenant,
                &p.request_id,
                "issue",
                hash,
                None,
                started,
            )
            .await?;
        Ok(out)
    }

    /// Renews a MIC: same model URI, fresh key/CSR, new serial.
    #[tracing::instrument(name = "renew", skip_all, fields(tenant = %p.tenant, serial = %p.serial))]
    pub async fn renew(&self, p: RenewParams) -> Result<IssuedCert, Error> {
        let r = self.renew_inner(p).await;
        if let Err(e) = &r {
            self.metrics.fail("renew", e);
        }
        r
    }

    async fn renew_inner(&self, p: RenewParams) -> Result<IssuedCert, Error> {
        let started = Instant::now();
        check_tenant_name(&p.tenant)?;
        policy::check_request_id(&p.request_id)?;
        let serial = policy::parse_serial(&p.serial)?;
        let hash = request_hash(
            "renew",
            &[
                p.tenant.as_bytes(),
                serial.as_bytes(),
                &p.csr_der,
                &p.attestation_der,
                &p.validity_seconds.to_be_bytes(),
            ],
        );
        let lookup = self.lookup(&p.tenant, &p.request_id).await?;
        if let Some(prev) = &lookup.previous {
            return self.replay(&p.tenant, &p.request_id, prev, &hash).await;
        }
        policy::check_tenant(&p.tenant, lookup.tenant.as_ref())?;
        let row = sqlx::query(
            "SELECT c.der, r.serial AS revoked FROM certificates c
             LEFT JOIN revocations r ON r.serial = c.serial
             WHERE c.serial = $1 AND c.tenant = $2",
        )
        .bind(&serial)
        .bind(&p.tenant)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(serial.clone()))?;
        let revoked: Option<String> = row.try_get("revoked")?;
        if revoked.is_some() {
            return Err(Error::Revoked(serial));
        }
        let old_der: Vec<u8> = row.try_get("der")?;
        let old = Mic::from_der(&old_der)?;
        let attestation_der = if p.attestation_der.is_empty() {
            old.attestation.to_der()?
        } else {
            p.attestation_der.clone()
        };
        let approved = policy::check_issue(
            &policy::IssueInput {
                tenant: &p.tenant,
                csr_der: &p.csr_der,
                model: old.model.model(),
                version: old.model.version(),
                attestation_der: &attestation_der,
                validity_seconds: p.validity_seconds,
            },
            lookup.tenant.as_ref(),
            &self.limits,
        )?;
        self.sign_and_log(
            approved,
            &p.tenant,
            &p.request_id,
            "renew",
            hash,
            Some(serial),
            started,
        )
        .await
    }

    /// Answers a repeated request id: the first answer if the content matches.
    async fn replay(
        &self,
        tenant: &str,
        request_id: &str,
        (op, prev_hash, serial): &(String, Vec<u8>, String),
        hash: &[u8],
    ) -> Result<IssuedCert, Error> {
        if prev_hash.as_slice() != hash || !matches!(op.as_str(), "issue" | "renew") {
            return Err(Error::RequestIdReused(request_id.to_owned()));
        }
        self.load_issued(tenant, serial).await
    }

    async fn load_issued(&self, tenant: &str, serial: &str) -> Result<IssuedCert, Error> {
        let row = sqlx::query(
            "SELECT der, model_uri, fingerprint, log_index, renewed_from,
                    extract(epoch FROM not_before)::bigint AS nb,
                    extract(epoch FROM not_after)::bigint AS na
             FROM certificates WHERE serial = $1 AND tenant = $2",
        )
        .bind(serial)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(serial.to_owned()))?;
        let log_index: i64 = row.try_get("log_index")?;
        Ok(IssuedCert {
            serial: serial.to_owned(),
            leaf_der: row.try_get("der")?,
            chain_der: self.intermediate_der().to_vec(),
            root_der: self.root_der().to_vec(),
            not_before: row.try_get("nb")?,
            not_after: row.try_get("na")?,
            fingerprint: row.try_get("fingerprint")?,
            log_index: log_index as u64,
            model_uri: row.try_get("model_uri")?,
            renewed_from: row.try_get("renewed_from")?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn sign_and_log(
        &self,
        approved: policy::Approved,
        tenant: &str,
        request_id: &str,
        operation: &'static str,
        request_hash: Vec<u8>,
        renewed_from: Option<String>,
        started: Instant,
    ) -> Result<IssuedCert, Error> {
        let not_before = SystemTime::now() - BACKDATE;
        let issued = self.keys.intermediate.issue_mic(&MicRequest {
            csr: &approved.csr,
            model: &approved.model,
            attestation: &approved.attestation,
            not_before,
            validity: approved.validity,
        })?;
        let serial = hex::encode(&issued.serial);
        let nb = unix(not_before);
        let cert = NewCert {
            serial: serial.clone(),
            tenant: tenant.to_owned(),
            model_uri: approved.model.to_string(),
            fingerprint: issued.fingerprint.clone(),
            leaf_hash: merkle::leaf_hash(&issued.der),
            der: issued.der.clone(),
            not_before: nb,
            not_after: issued.not_after,
            renewed_from: renewed_from.clone(),
            request_id: request_id.to_owned(),
            operation,
            request_hash: request_hash.clone(),
        };
        let model_uri = cert.model_uri.clone();
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Pending { cert, reply })
            .await
            .map_err(|_| Error::Unavailable)?;
        let outcome = rx.await.map_err(|_| Error::Unavailable)??;
        match outcome {
            WriteOutcome::Written { log_index } => {
                self.metrics.issued.inc();
                self.metrics
                    .issue_latency
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(%serial, tenant, %model_uri, log_index, "issued");
                Ok(IssuedCert {
                    serial,
                    leaf_der: issued.der,
                    chain_der: self.intermediate_der().to_vec(),
                    root_der: self.root_der().to_vec(),
                    not_before: nb,
                    not_after: issued.not_after,
                    fingerprint: issued.fingerprint,
                    log_index,
                    model_uri,
                    renewed_from,
                })
            }
            WriteOutcome::Duplicate => {
                let lookup = self.lookup(tenant, request_id).await?;
                let prev = lookup
                    .previous
                    .ok_or_else(|| Error::State("idempotency row vanished".into()))?;
                self.replay(tenant, request_id, &prev, &request_hash).await
            }
        }
    }
}
