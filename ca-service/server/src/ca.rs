//! The CA's operations, independent of the transport (gRPC and REST both call these).
//!
//! Issuance path: one read (tenant + request id), the pure [`policy`] check, signing with the
//! intermediate, then a hand-off to the single *log writer* (its own thread and connections).
//! The writer takes every pending certificate that is waiting, assigns consecutive log indices
//! and writes them — idempotency rows, certificates, audit rows — in one SQL statement (one
//! round trip, one commit), then appends their leaf hashes to the in-memory Merkle tree and
//! answers. Batching keeps PostgreSQL commits (and fsyncs) far below one per certificate under
//! load, and a single writer makes the log order the commit order. Only one CA process may
//! write a database (see the README).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use nexus_mic::{Attestation, ClaimValue, Mic, MicRequest, ModelUri, RevocationReason};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, RwLock, mpsc, oneshot};

use crate::keys::CaKeys;
use crate::merkle::{self, Hash};
use crate::metrics::Metrics;
use crate::policy::{self, Limits, Tenant};
use crate::{Error, Settings};

/// Most certificates written in one transaction.
const MAX_BATCH: usize = 512;
/// MICs start this long before issuance, for clock skew.
const BACKDATE: Duration = Duration::from_secs(60);

/// Issue a MIC.
#[derive(Debug, Clone)]
pub struct IssueParams {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub request_id: String,
    /// PKCS#10 DER.
    pub csr_der: Vec<u8>,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// nexus-mic attestation DER.
    pub attestation_der: Vec<u8>,
    /// 0 for the default.
    pub validity_seconds: u64,
}

/// Renew a MIC.
#[derive(Debug, Clone)]
pub struct RenewParams {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub request_id: String,
    /// Serial renewed (hex).
    pub serial: String,
    /// Fresh CSR.
    pub csr_der: Vec<u8>,
    /// Replacement attestation; empty keeps the old one.
    pub attestation_der: Vec<u8>,
    /// 0 for the default.
    pub validity_seconds: u64,
}

/// Revoke a MIC.
#[derive(Debug, Clone)]
pub struct RevokeParams {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub request_id: String,
    /// Serial (hex).
    pub serial: String,
    /// RFC 5280 reason.
    pub reason: RevocationReason,
}

/// An issued MIC and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Leaf DER.
    pub leaf_der: Vec<u8>,
    /// Intermediate DER.
    pub chain_der: Vec<u8>,
    /// Root DER.
    pub root_der: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
    /// Issuance log index.
    pub log_index: u64,
    /// The model URI.
    pub model_uri: String,
    /// Renewed serial, if a renewal.
    pub renewed_from: Option<String>,
}

/// Outcome of a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial.
    pub serial: String,
    /// Reason recorded (the first one, if already revoked).
    pub reason: RevocationReason,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Revoked by an earlier request.
    pub already_revoked: bool,
    /// A CRL number listing it.
    pub crl_number: u64,
}

/// Revocation status of one serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not issued to this tenant.
    Unknown,
    /// Issued, not revoked.
    Good {
        /// Unix seconds.
        not_after: i64,
    },
    /// Revoked.
    Revoked {
        /// Unix seconds.
        not_after: i64,
        /// Reason.
        reason: RevocationReason,
        /// Unix seconds.
        revoked_at: i64,
    },
}

/// The current CRL.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    /// DER.
    pub der: Vec<u8>,
    /// CRL number.
    pub number: u64,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
}

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sth {
    /// Leaves.
    pub tree_size: u64,
    /// Milliseconds since the epoch.
    pub timestamp_ms: u64,
    /// MTH.
    pub root_hash: Hash,
    /// ECDSA P-256 SHA-256 DER signature over [`sth_signed_data`].
    pub signature: Vec<u8>,
    /// Log key SPKI DER.
    pub log_public_key_der: Vec<u8>,
}

/// The RFC 6962 `TreeHeadSignature` bytes a tree head's signature covers.
pub fn sth_signed_data(timestamp_ms: u64, tree_size: u64, root: &Hash) -> Vec<u8> {
    let mut v = Vec::with_capacity(50);
    v.push(0); // version v1
    v.push(1); // signature_type tree_hash
    v.extend_from_slice(&timestamp_ms.to_be_bytes());
    v.extend_from_slice(&tree_size.to_be_bytes());
    v.extend_from_slice(root);
    v
}

/// An inclusion proof with the tree head it leads to.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    /// Serial.
    pub serial: String,
    /// Leaf index.
    pub leaf_index: u64,
    /// Leaf hash.
    pub leaf_hash: Hash,
    /// Audit path.
    pub audit_path: Vec<Hash>,
    /// Tree head of the proof's size.
    pub sth: Sth,
}

/// Verify a claim proof against a MIC.
#[derive(Debug, Clone)]
pub struct ZkVerifyParams {
    /// Tenant.
    pub tenant: String,
    /// MIC serial.
    pub serial: String,
    /// Claim name in the attestation.
    pub claim: String,
    /// Least threshold required (nexus-zk fixed point).
    pub min_threshold: u64,
    /// `nexus_zk::ClaimProof` JSON.
    pub claim_proof_json: String,
}

/// Answer of a claim-proof check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkVerdict {
    /// Verified.
    pub valid: bool,
    /// Why not.
    pub reason: String,
    /// Commitment from the certificate, hex.
    pub commitment_hex: String,
    /// Threshold the proof shows.
    pub proven_threshold: u64,
}

/// A certificate on its way to the log writer.
#[derive(Debug)]
struct NewCert {
    serial: String,
    tenant: String,
    model_uri: String,
    fingerprint: String,
    der: Vec<u8>,
    not_before: i64,
    not_after: i64,
    leaf_hash: Hash,
    renewed_from: Option<String>,
    request_id: String,
    operation: &'static str,
    request_hash: Vec<u8>,
}

enum WriteOutcome {
    Written {
        log_index: u64,
    },
    /// Another request with the same tenant and request id won the race.
    Duplicate,
}

struct Pending {
    cert: NewCert,
    reply: oneshot::Sender<Result<WriteOutcome, Error>>,
}

struct LogState {
    tree: merkle::Tree,
    sth: Option<Sth>,
}

/// The CA service core.
pub struct Ca {
    pool: PgPool,
    keys: CaKeys,
    limits: Limits,
    crl_validity: Duration,
    log: RwLock<LogState>,
    crl: RwLock<Option<CrlInfo>>,
    crl_lock: Mutex<()>,
    writer: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("intermediate", &self.keys.intermediate)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

fn reason_code(r: RevocationReason) -> i16 {
    use RevocationReason as R;
    match r {
        R::Unspecified => 0,
        R::KeyCompromise => 1,
        R::CaCompromise => 2,
        R::AffiliationChanged => 3,
        R::Superseded => 4,
        R::CessationOfOperation => 5,
        R::CertificateHold => 6,
        R::RemoveFromCrl => 8,
        R::PrivilegeWithdrawn => 9,
        R::AaCompromise => 10,
    }
}

fn reason_from_db(code: i16) -> RevocationReason {
    u8::try_from(code)
        .ok()
        .and_then(RevocationReason::from_code)
        .unwrap_or(RevocationReason::Unspecified)
}

/// Length-prefixed SHA-256 over the request's content (not its id): same content, same hash,
/// whichever transport it came by.
fn request_hash(op: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha256::new();
    for f in std::iter::once(op.as_bytes()).chain(fields.iter().copied()) {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    h.finalize().to_vec()
}

fn check_tenant_name(tenant: &str) -> Result<(), Error> {
    if tenant.is_empty() || tenant.len() > 63 {
        return Err(Error::InvalidArgument {
            field: "tenant",
            reason: "required, at most 63 bytes".into(),
        });
    }
    Ok(())
}

struct Lookup {
    tenant: Option<Tenant>,
    previous: Option<(String, Vec<u8>, String)>, // operation, hash, serial
}

impl Ca {
    /// Loads the log from the database, starts the log writer and signs a first CRL.
    pub async fn start(
        pool: PgPool,
        keys: CaKeys,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, Error> {
        let rows = sqlx::query("SELECT log_index, leaf_hash FROM certificates ORDER BY log_index")
            .fetch_all(&pool)
            .await?;
        let mut tree = merkle::Tree::new();
        for (i, row) in rows.iter().enumerate() {
            let index: i64 = row.try_get("log_index")?;
            let leaf: Vec<u8> = row.try_get("leaf_hash")?;
            let leaf: Hash = leaf
                .try_into()
                .map_err(|_| Error::State("leaf hash is not 32 bytes".into()))?;
            if index != i as i64 {
                return Err(Error::State(format!(
                    "issuance log has a gap: entry {i} has index {index}"
                )));
            }
            tree.push(leaf);
        }
        metrics.log_size.set(tree.size() as i64);
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let ca = Arc::new(Self {
            pool,
            keys,
            limits: settings.limits,
            crl_validity: settings.crl_validity,
            log: RwLock::new(LogState { tree, sth: None }),
            crl: RwLock::new(None),
            crl_lock: Mutex::new(()),
            writer: tx,
            metrics,
        });
        spawn_writer(Arc::downgrade(&ca), rx, &ca.pool).await?;
        ca.refresh_crl().await?;
        Ok(ca)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Root certificate DER.
    pub fn root_der(&self) -> &[u8] {
        &self.keys.root_der
    }

    /// Intermediate certificate DER.
    pub fn intermediate_der(&self) -> &[u8] {
        self.keys.intermediate.cert_der()
    }

    /// The Groth16 verifying key.
    pub fn zk_verifying_key(&self) -> &nexus_zk::VerifyingKey {
        &self.keys.zk_vk
    }

    /// The Groth16 proving key, serialised.
    pub fn zk_proving_key_bytes(&self) -> &[u8] {
        &self.keys.zk_pk_bytes
    }

    /// Seeds tenants (idempotent).
    pub async fn seed_tenants(&self, names: &[String]) -> Result<(), Error> {
        for name in names {
            ModelUri::new(name, "x", "0").map_err(|_| Error::InvalidArgument {
                field: "tenant",
                reason: format!("`{name}` is not a DNS label"),
            })?;
            let mut tx = self.pool.begin().await?;
            let inserted =
                sqlx::query("INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if inserted > 0 {
                sqlx::query("INSERT INTO audit_log (tenant, action) VALUES ($1, 'tenant_seed')")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    async fn lookup(&self, tenant: &str, request_id: &str) -> Result<Lookup, Error> {
        let row = sqlx::query(
            "SELECT t.name, t.active, i.operation, i.request_hash, i.serial
             FROM (SELECT $1::text AS name) q
             LEFT JOIN tenants t ON t.name = q.name
             LEFT JOIN idempotency i ON i.tenant = q.name AND i.request_id = $2",
        )
        .bind(tenant)
        .bind(request_id)
        .fetch_one(&self.pool)
        .await?;
        let name: Option<String> = row.try_get("name")?;
        let active: Option<bool> = row.try_get("active")?;
        let tenant = name.map(|name| Tenant {
            name,
            active: active.unwrap_or(false),
        });
        let op: Option<String> = row.try_get("operation")?;
        let hash: Option<Vec<u8>> = row.try_get("request_hash")?;
        let serial: Option<String> = row.try_get("serial")?;
        let previous = match (op, hash, serial) {
            (Some(o), Some(h), Some(s)) => Some((o, h, s)),
            _ => None,
        };
        Ok(Lookup { tenant, previous })
    }

    /// Issues a MIC.
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

    /// Revokes a MIC of the tenant and re-signs the CRL.
    #[tracing::instrument(name = "revoke", skip_all, fields(tenant = %p.tenant, serial = %p.serial))]
    pub async fn revoke(&self, p: RevokeParams) -> Result<Revoked, Error> {
        let r = self.revoke_inner(p).await;
        match &r {
            Err(e) => self.metrics.fail("revoke", e),
            Ok(r) if !r.already_revoked => {
                self.metrics.revoked.inc();
            }
            Ok(_) => {}
        }
        r
    }

    async fn revoke_inner(&self, p: RevokeParams) -> Result<Revoked, Error> {
        check_tenant_name(&p.tenant)?;
        policy::check_request_id(&p.request_id)?;
        let serial = policy::parse_serial(&p.serial)?;
        if matches!(p.reason, RevocationReason::RemoveFromCrl) {
            return Err(Error::InvalidArgument {
                field: "reason",
                reason: "removeFromCRL is for delta CRLs only".into(),
            });
        }
        let code = reason_code(p.reason);
        let hash = request_hash(
            "revoke",
            &[p.tenant.as_bytes(), serial.as_bytes(), &code.to_be_bytes()],
        );
        let lookup = self.lookup(&p.tenant, &p.request_id).await?;
        if let Some((op, prev_hash, prev_serial)) = &lookup.previous {
            if op != "revoke" || prev_hash != &hash || prev_serial != &serial {
                return Err(Error::RequestIdReused(p.request_id));
            }
        } else if lookup.tenant.is_none() {
            return Err(Error::UnknownTenant(p.tenant));
        }
        let mut tx = self.pool.begin().await?;
        let found: Option<String> = sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE serial = $1 AND tenant = $2 FOR UPDATE",
        )
        .bind(&serial)
        .bind(&p.tenant)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(Error::NotFound(serial));
        }
        let existing = sqlx::query(
            "SELECT reason, extract(epoch FROM revoked_at)::bigint AS at, request_id
             FROM revocations WHERE serial = $1",
        )
        .bind(&serial)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            tx.rollback().await?;
            let first_id: String = row.try_get("request_id")?;
            let crl_number = self.crl.read().await.as_ref().map_or(0, |c| c.number);
            return Ok(Revoked {
                serial,
                reason: reason_from_db(row.try_get("reason")?),
                revoked_at: row.try_get("at")?,
                already_revoked: first_id != p.request_id,
                crl_number,
            });
        }
        let now = unix(SystemTime::now());
        sqlx::query(
            "INSERT INTO revocations (serial, reason, revoked_at, request_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(&serial)
        .bind(code)
        .bind(ts(now))
        .bind(&p.request_id)
        .execute(&mut *tx)
        .await?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency (tenant, request_id, operation, request_hash, serial)
             VALUES ($1, $2, 'revoke', $3, $4) ON CONFLICT (tenant, request_id) DO NOTHING",
        )
        .bind(&p.tenant)
        .bind(&p.request_id)
        .bind(&hash)
        .bind(&serial)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            // A concurrent request with the same id (and other content) got there first.
            return Err(Error::RequestIdReused(p.request_id));
        }
        sqlx::query(
            "INSERT INTO audit_log (tenant, action, serial, request_id, detail)
             VALUES ($1, 'revoke', $2, $3, jsonb_build_object('reason', $4::int))",
        )
        .bind(&p.tenant)
        .bind(&serial)
        .bind(&p.request_id)
        .bind(i32::from(code))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(%serial, tenant = %p.tenant, reason = %p.reason, "revoked");
        let crl = self.refresh_crl().await?;
        Ok(Revoked {
            serial,
            reason: p.reason,
            revoked_at: now,
            already_revoked: false,
            crl_number: crl.number,
        })
    }

    /// good / revoked / unknown for a serial of the tenant.
    pub async fn status(&self, tenant: &str, serial: &str) -> Result<Status, Error> {
        check_tenant_name(tenant)?;
        let serial = policy::parse_serial(serial)?;
        let row = sqlx::query(
            "SELECT extract(epoch FROM c.not_after)::bigint AS na, r.reason,
                    extract(epoch FROM r.revoked_at)::bigint AS at
             FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial
             WHERE c.serial = $1 AND c.tenant = $2",
        )
        .bind(&serial)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Status::Unknown);
        };
        let not_after: i64 = row.try_get("na")?;
        let reason: Option<i16> = row.try_get("reason")?;
        let at: Option<i64> = row.try_get("at")?;
        Ok(match (reason, at) {
            (Some(r), Some(at)) => Status::Revoked {
                not_after,
                reason: reason_from_db(r),
                revoked_at: at,
            },
            _ => Status::Good { not_after },
        })
    }

    /// The current CRL.
    pub async fn crl(&self) -> Result<CrlInfo, Error> {
        if let Some(c) = self.crl.read().await.as_ref() {
            return Ok(c.clone());
        }
        self.refresh_crl().await
    }

    /// Re-signs the CRL from the revocations table (unexpired certificates only).
    pub async fn refresh_crl(&self) -> Result<CrlInfo, Error> {
        let _guard = self.crl_lock.lock().await;
        let rows = sqlx::query(
            "SELECT r.serial, r.reason, extract(epoch FROM r.revoked_at)::bigint AS at
             FROM revocations r JOIN certificates c ON c.serial = r.serial
             WHERE c.not_after > now() - interval '1 day'
             ORDER BY r.revoked_at, r.serial",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut revoked = Vec::with_capacity(rows.len());
        for row in &rows {
            let serial: String = row.try_get("serial")?;
            let at: i64 = row.try_get("at")?;
            revoked.push(nexus_mic::RevokedEntry {
                serial: hex::decode(&serial)
                    .map_err(|_| Error::State(format!("stored serial {serial} is not hex")))?,
                revoked_at: UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0)),
                reason: reason_from_db(row.try_get("reason")?),
            });
        }
        let number: i64 = sqlx::query_scalar("SELECT nextval('crl_number_seq')")
            .fetch_one(&self.pool)
            .await?;
        let now = SystemTime::now();
        let next = now + self.crl_validity;
        let der = self
            .keys
            .intermediate
            .sign_crl(&revoked, now, next, number as u64)?;
        let info = CrlInfo {
            der,
            number: number as u64,
            this_update: unix(now),
            next_update: unix(next),
        };
        *self.crl.write().await = Some(info.clone());
        tracing::debug!(number, entries = revoked.len(), "CRL signed");
        Ok(info)
    }

    fn sign_sth(&self, tree_size: u64, root: Hash) -> Result<Sth, Error> {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let signature = self
            .keys
            .log
            .sign(&sth_signed_data(timestamp_ms, tree_size, &root))?;
        Ok(Sth {
            tree_size,
            timestamp_ms,
            root_hash: root,
            signature,
            log_public_key_der: self.keys.log.spki_der().to_vec(),
        })
    }

    /// The signed tree head of the current log (cached until the log grows).
    pub async fn signed_tree_head(&self) -> Result<Sth, Error> {
        {
            let log = self.log.read().await;
            if let Some(sth) = &log.sth
                && sth.tree_size == log.tree.size()
            {
                return Ok(sth.clone());
            }
        }
        let mut log = self.log.write().await;
        let size = log.tree.size();
        if let Some(sth) = &log.sth
            && sth.tree_size == size
        {
            return Ok(sth.clone());
        }
        let sth = self.sign_sth(size, log.tree.root())?;
        log.sth = Some(sth.clone());
        Ok(sth)
    }

    /// An audit path from a MIC of the tenant to the current tree head.
    pub async fn inclusion_proof(
        &self,
        tenant: &str,
        serial: &str,
    ) -> Result<InclusionProof, Error> {
        check_tenant_name(tenant)?;
        let serial = policy::parse_serial(serial)?;
        let index: i64 = sqlx::query_scalar(
            "SELECT log_index FROM certificates WHERE serial = $1 AND tenant = $2",
        )
        .bind(&serial)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(serial.clone()))?;
        let index = index as u64;
        let sth = self.signed_tree_head().await?;
        let log = self.log.read().await;
        let (path, leaf) = match (
            log.tree.inclusion_proof(index, sth.tree_size),
            log.tree.leaf(index),
        ) {
            (Some(p), Some(l)) => (p, l),
            // Committed but not yet appended in memory: a moment's race with the writer.
            _ => return Err(Error::Unavailable),
        };
        Ok(InclusionProof {
            serial,
            leaf_index: index,
            leaf_hash: leaf,
            audit_path: path,
            sth,
        })
    }

    /// Checks a claim proof against the commitment in a MIC's attestation.
    pub async fn verify_claim_proof(&self, p: ZkVerifyParams) -> Result<ZkVerdict, Error> {
        let r = self.verify_claim_inner(p).await;
        if let Err(e) = &r {
            self.metrics.fail("zk_verify", e);
        }
        r
    }

    async fn verify_claim_inner(&self, p: ZkVerifyParams) -> Result<ZkVerdict, Error> {
        check_tenant_name(&p.tenant)?;
        let serial = policy::parse_serial(&p.serial)?;
        let proof = nexus_zk::ClaimProof::from_json(&p.claim_proof_json)
            .map_err(|e| Error::Zk(e.to_string()))?;
        let der: Vec<u8> =
            sqlx::query_scalar("SELECT der FROM certificates WHERE serial = $1 AND tenant = $2")
                .bind(&serial)
                .bind(&p.tenant)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| Error::NotFound(serial.clone()))?;
        let mic = Mic::from_der(&der)?;
        let digest = committed_claim(&mic.attestation, &p.claim)?;
        let commitment = nexus_zk::Commitment::from_bytes(&digest)
            .map_err(|e| Error::Zk(format!("certificate commitment: {e}")))?;
        let commitment_hex = commitment.to_hex();
        if proof.claim != p.claim {
            return Ok(ZkVerdict {
                valid: false,
                reason: format!("proof is labelled `{}`, not `{}`", proof.claim, p.claim),
                commitment_hex,
                proven_threshold: proof.threshold,
            });
        }
        let vk = self.keys.zk_vk.clone();
        let min = p.min_threshold;
        let proven = proof.threshold;
        let result =
            tokio::task::spawn_blocking(move || proof.verify_against(&vk, &commitment, min))
                .await
                .map_err(|e| Error::State(format!("verify task: {e}")))?;
        Ok(ZkVerdict {
            valid: result.is_ok(),
            reason: result.err().map(|e| e.to_string()).unwrap_or_default(),
            commitment_hex,
            proven_threshold: proven,
        })
    }
}

/// The committed value of claim `name` (benchmarks first, then safety evaluations).
fn committed_claim(att: &Attestation, name: &str) -> Result<[u8; 32], Error> {
    let claim = att
        .benchmarks
        .iter()
        .chain(&att.safety_evaluations)
        .find(|c| c.name == name)
        .ok_or_else(|| Error::Zk(format!("the certificate has no claim `{name}`")))?;
    match claim.value {
        ClaimValue::Commitment(d) => Ok(d.0),
        ClaimValue::Plain(_) => Err(Error::Zk(format!(
            "claim `{name}` is in clear, not committed"
        ))),
    }
}

/// Starts the single log writer on its own thread, with its own single-threaded runtime and
/// database connections: its cycle time (and so the issuance throughput) must not depend on
/// how many CPU-bound signing requests are queued on the main runtime.
async fn spawn_writer(
    ca: std::sync::Weak<Ca>,
    rx: mpsc::Receiver<Pending>,
    pool: &PgPool,
) -> Result<(), Error> {
    let opts = pool.connect_options();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), Error>>();
    std::thread::Builder::new()
        .name("nexus-ca-log-writer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Io(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let pool = match sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect_with((*opts).clone())
                    .await
                {
                    Ok(pool) => pool,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Db(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                writer_loop(ca, rx, &pool).await;
                pool.close().await;
            });
        })?;
    ready_rx
        .await
        .map_err(|_| Error::State("log writer thread ended during start".into()))?
}

/// The single log writer: batches pending certificates into one statement each.
async fn writer_loop(ca: std::sync::Weak<Ca>, mut rx: mpsc::Receiver<Pending>, pool: &PgPool) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Some(ca) = ca.upgrade() else {
            return;
        };
        ca.write_batch(batch, pool).await;
    }
}

impl Ca {
    async fn write_batch(&self, batch: Vec<Pending>, pool: &PgPool) {
        // First occurrence of each (tenant, request id) in the batch competes; later ones are
        // duplicates by construction.
        let mut seen = HashSet::new();
        let mut contenders = Vec::with_capacity(batch.len());
        let mut duplicates = Vec::new();
        for p in batch {
            if seen.insert((p.cert.tenant.clone(), p.cert.request_id.clone())) {
                contenders.push(p);
            } else {
                duplicates.push(p);
            }
        }
        let mut log = self.log.write().await;
        let next = log.tree.size();
        let started = Instant::now();
        let result = self.insert_batch(&contenders, next, pool).await;
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(won) => {
                let mut index = next;
                let mut written = 0;
                for p in contenders {
                    if won.contains(&(p.cert.tenant.clone(), p.cert.request_id.clone())) {
                        let i = log.tree.push(p.cert.leaf_hash);
                        debug_assert_eq!(i, index);
                        index += 1;
                        written += 1;
                        let _ = p.reply.send(Ok(WriteOutcome::Written { log_index: i }));
                    } else {
                        let _ = p.reply.send(Ok(WriteOutcome::Duplicate));
                    }
                }
                self.metrics.log_size.set(log.tree.size() as i64);
                self.metrics.batch_size.observe(f64::from(written));
            }
            Err(e) => {
                tracing::error!(error = %e, "writing a batch of certificates failed");
                for p in contenders {
                    let _ = p
                        .reply
                        .send(Err(Error::State("certificate write failed".into())));
                }
            }
        }
        drop(log);
        for p in duplicates {
            let _ = p.reply.send(Ok(WriteOutcome::Duplicate));
        }
    }

    /// Writes the winners of `batch` with consecutive indices from `next`; returns who won.
    ///
    /// One statement (so one round trip and an implicit transaction): claim the request ids,
    /// number the winners in batch order, insert their certificates and audit rows.
    async fn insert_batch(
        &self,
        batch: &[Pending],
        next: u64,
        pool: &PgPool,
    ) -> Result<HashSet<(String, String)>, Error> {
        let certs: Vec<&NewCert> = batch.iter().map(|p| &p.cert).collect();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "WITH input AS (
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                     $6::timestamptz[], $7::timestamptz[], $8::bytea[], $9::text[], $10::text[],
                     $11::text[], $12::bytea[])
                 WITH ORDINALITY AS u(serial, tenant, model_uri, fingerprint, der, not_before,
                     not_after, leaf_hash, renewed_from, request_id, operation, request_hash, ord)
             ),
             claimed AS (
                 INSERT INTO idempotency (tenant, request_id, operation, request_hash, serial)
                 SELECT tenant, request_id, operation, request_hash, serial FROM input
                 ON CONFLICT (tenant, request_id) DO NOTHING
                 RETURNING tenant, request_id
             ),
             winners AS (
                 SELECT i.*, $13::bigint + row_number() OVER (ORDER BY i.ord) - 1 AS log_index
                 FROM input i JOIN claimed c ON c.tenant = i.tenant AND c.request_id = i.request_id
             ),
             certs AS (
                 INSERT INTO certificates (serial, tenant, model_uri, fingerprint, der, not_before,
                     not_after, log_index, leaf_hash, renewed_from, request_id)
                 SELECT serial, tenant, model_uri, fingerprint, der, not_before, not_after,
                     log_index, leaf_hash, renewed_from, request_id
                 FROM winners
                 RETURNING serial
             ),
             audit AS (
                 INSERT INTO audit_log (tenant, action, serial, request_id, detail)
                 SELECT tenant, operation, serial, request_id, jsonb_build_object(
                     'model_uri', model_uri, 'log_index', log_index, 'fingerprint', fingerprint)
                 FROM winners
                 RETURNING id
             )
             SELECT tenant, request_id, log_index FROM winners ORDER BY log_index",
        )
        .bind(certs.iter().map(|c| c.serial.clone()).collect::<Vec<_>>())
        .bind(certs.iter().map(|c| c.tenant.clone()).collect::<Vec<_>>())
        .bind(
            certs
                .iter()
                .map(|c| c.model_uri.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            certs
                .iter()
                .map(|c| c.fingerprint.clone())
                .collect::<Vec<_>>(),
        )
        .bind(certs.iter().map(|c| c.der.clone()).collect::<Vec<_>>())
        .bind(certs.iter().map(|c| ts(c.not_before)).collect::<Vec<_>>())
        .bind(certs.iter().map(|c| ts(c.not_after)).collect::<Vec<_>>())
        .bind(
            certs
                .iter()
                .map(|c| c.leaf_hash.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(
            certs
                .iter()
                .map(|c| c.renewed_from.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            certs
                .iter()
                .map(|c| c.request_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(certs.iter().map(|c| c.operation).collect::<Vec<_>>())
        .bind(
            certs
                .iter()
                .map(|c| c.request_hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(next as i64)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().map(|(t, r, _)| (t, r)).collect())
    }
}
