//! The single issuance-log writer: batches pending certificates, assigns consecutive log
//! indices and writes each batch in one SQL statement (one round trip, one commit).

use std::collections::HashSet;
use std::time::Instant;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::{Ca, LOG_WRITER_LOCK, append_leaves, read_leaves, ts};
use crate::Error;
use crate::merkle::{self, Hash};

/// Most certificates written in one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// A certificate on its way to the log writer.
#[derive(Debug)]
pub(super) struct NewCert {
    pub(super) serial: String,
    pub(super) tenant: String,
    pub(super) model_uri: String,
    pub(super) fingerprint: String,
    pub(super) der: Vec<u8>,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    pub(super) leaf_hash: Hash,
    pub(super) renewed_from: Option<String>,
    pub(super) request_id: String,
    pub(super) operation: &'static str,
    pub(super) request_hash: Vec<u8>,
}

pub(super) enum WriteOutcome {
    Written {
        log_index: u64,
    },
    /// Another request with the same tenant and request id won the race.
    Duplicate,
}

pub(super) struct Pending {
    pub(super) cert: NewCert,
    pub(super) reply: oneshot::Sender<Result<WriteOutcome, Error>>,
}

/// Starts the single log writer on its own thread, with its own single-threaded runtime and
/// database connections: its cycle time (and so the issuance throughput) must not depend on
/// how many CPU-bound signing requests are queued on the main runtime.
pub(super) async fn spawn_writer(
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
                    // A writer that stalls inside its batch transaction (a frozen process, a
                    // half-open connection) must not hold the log lock for ever: PostgreSQL
                    // ends such a session and another replica's writer goes on.
                    .connect_with((*opts).clone().options([
                        ("idle_in_transaction_session_timeout", "10s"),
                        ("statement_timeout", "30s"),
                    ]))
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
        let started = Instant::now();
        let result = self.insert_batch(&contenders, &mut log.tree, pool).await;
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((won, next)) => {
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

    /// Writes the winners of `batch` at the end of the log; returns who won and the first
    /// index they were given.
    ///
    /// One transaction: take [`LOG_WRITER_LOCK`] (so one replica writes at a time), catch the
    /// in-memory tree up with what other replicas committed (the next index follows the last
    /// committed one), then one statement claims the request ids, numbers the winners in batch
    /// order and inserts their certificates and audit rows. If this process dies in between,
    /// PostgreSQL rolls the transaction back and releases the lock; no index is half-used.
    async fn insert_batch(
        &self,
        batch: &[Pending],
        tree: &mut merkle::Tree,
        pool: &PgPool,
    ) -> Result<(HashSet<(String, String)>, u64), Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LOG_WRITER_LOCK)
            .execute(&mut *tx)
            .await?;
        // A new statement, so a new snapshot: it sees everything the previous holder committed.
        let fresh = read_leaves(&mut *tx, tree.size()).await?;
        let before = tree.size();
        append_leaves(tree, fresh)?;
        if tree.size() > before {
            self.metrics.log_synced.inc_by(tree.size() - before);
            tracing::debug!(
                entries = tree.size() - before,
                "log entries written by another replica"
            );
        }
        let next = tree.size();
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
             usage AS (
                 INSERT INTO usage_outbox (serial, tenant)
                 SELECT serial, tenant FROM winners
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
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((rows.into_iter().map(|(t, r, _)| (t, r)).collect(), next))
    }
}
