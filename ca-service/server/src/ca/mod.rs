//! The CA's operations, independent of the transport (gRPC and REST both call these).
//!
//! Issuance path: one read (tenant + request id), the pure [`crate::policy`] check, signing with the
//! intermediate, then a hand-off to the single *log writer* (its own thread and connections).
//! The writer takes every pending certificate that is waiting, assigns consecutive log indices
//! and writes them — idempotency rows, certificates, audit rows — in one SQL statement (one
//! round trip, one commit), then appends their leaf hashes to the in-memory Merkle tree and
//! answers. Batching keeps PostgreSQL commits (and fsyncs) far below one per certificate under
//! load, and a single writer makes the log order the commit order. Only one CA process may
//! write a database (see the README).

mod crl;
mod enroll;
mod issue;
mod log;
mod revoke;
mod service_certs;
mod types;
mod writer;
mod zk;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use nexus_mic::{ModelUri, RevocationReason};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, RwLock, mpsc};

use crate::keys::CaKeys;
use crate::merkle::{self, Hash};
use crate::metrics::Metrics;
use crate::policy::{Limits, Tenant, check_tenant_name};
use crate::{Error, Settings};

pub use enroll::{JoinToken, NODE_ROLE, NodeCert, check_node_name, parse_token};
pub use service_certs::{ServiceCert, ServiceCertParams};
pub use types::*;
use writer::{MAX_BATCH, Pending, spawn_writer};

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
    node_cert_validity: Duration,
    log: RwLock<LogState>,
    crl: RwLock<Option<CrlInfo>>,
    crl_lock: Mutex<()>,
    /// The TLS client verifier fed with each new CRL (set when serving TLS).
    tls_verifier: std::sync::OnceLock<Arc<nexus_tls::ClientVerifier>>,
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

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    unix(SystemTime::now())
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

/// Advisory-lock key of the issuance-log writer ("NXCALOG1"): every replica's writer takes it
/// for the length of each batch transaction, so exactly one assigns log positions at a time.
pub const LOG_WRITER_LOCK: i64 = 0x4E58_4341_4C4F_4731;

/// Committed log entries from `from` on, in order: `(log_index, leaf_hash)`.
///
/// Committed entries always form a prefix of the log (positions are assigned under
/// [`LOG_WRITER_LOCK`] and each batch commits atomically before the lock is released), so a
/// read from any snapshot is gap-free.
async fn read_leaves<'e, E>(executor: E, from: u64) -> Result<Vec<(u64, Hash)>, Error>
where
    E: sqlx::PgExecutor<'e>,
{
    let rows = sqlx::query(
        "SELECT log_index, leaf_hash FROM certificates WHERE log_index >= $1 ORDER BY log_index",
    )
    .bind(i64::try_from(from).unwrap_or(i64::MAX))
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            let index: i64 = row.try_get("log_index")?;
            let leaf: Vec<u8> = row.try_get("leaf_hash")?;
            let leaf: Hash = leaf
                .try_into()
                .map_err(|_| Error::State("leaf hash is not 32 bytes".into()))?;
            let index = u64::try_from(index)
                .map_err(|_| Error::State(format!("negative log index {index}")))?;
            Ok((index, leaf))
        })
        .collect()
}

/// Appends entries read from the database to the in-memory tree. Entries the tree already
/// has must match (a mismatch means the log was rewritten: refuse to go on); a gap is an error.
fn append_leaves(tree: &mut merkle::Tree, leaves: Vec<(u64, Hash)>) -> Result<(), Error> {
    for (index, leaf) in leaves {
        let size = tree.size();
        if index < size {
            if tree.leaf(index) != Some(leaf) {
                return Err(Error::State(format!(
                    "issuance log entry {index} differs from the one already logged"
                )));
            }
        } else if index == size {
            tree.push(leaf);
        } else {
            return Err(Error::State(format!(
                "issuance log has a gap: entry {size} is missing before {index}"
            )));
        }
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
        let mut tree = merkle::Tree::new();
        append_leaves(&mut tree, read_leaves(&pool, 0).await?)?;
        metrics.log_size.set(tree.size() as i64);
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let ca = Arc::new(Self {
            pool,
            keys,
            limits: settings.limits,
            crl_validity: settings.crl_validity,
            node_cert_validity: settings.node_cert_validity,
            log: RwLock::new(LogState { tree, sth: None }),
            crl: RwLock::new(None),
            crl_lock: Mutex::new(()),
            tls_verifier: std::sync::OnceLock::new(),
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

    /// Brings the in-memory tree up to the committed log, which other replicas' writers may
    /// have extended. One indexed read; the write lock only when there is something new.
    pub(crate) async fn sync_log(&self) -> Result<(), Error> {
        let size = self.log.read().await.tree.size();
        let fresh = read_leaves(&self.pool, size).await?;
        if fresh.is_empty() {
            return Ok(());
        }
        let mut log = self.log.write().await;
        let before = log.tree.size();
        append_leaves(&mut log.tree, fresh)?;
        self.metrics.log_synced.inc_by(log.tree.size() - before);
        self.metrics.log_size.set(log.tree.size() as i64);
        Ok(())
    }
}
