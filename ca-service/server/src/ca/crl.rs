//! The CRL: cached, re-signed on revocation and periodically.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;

use super::{Ca, CrlInfo, reason_from_db, unix};
use crate::Error;

impl Ca {
    /// The current CRL: the cached one unless a revocation was recorded since (by this or
    /// another replica on the same database).
    pub async fn crl(&self) -> Result<CrlInfo, Error> {
        let count = self.revocation_count().await?;
        if let Some(c) = self.crl.read().await.as_ref()
            && c.revocations_seen == count
        {
            return Ok(c.clone());
        }
        self.refresh_crl().await
    }

    async fn revocation_count(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM revocations)
                  + (SELECT count(*) FROM service_certs WHERE revoked_at IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Re-signs the CRL from the revocations table (unexpired certificates only).
    pub async fn refresh_crl(&self) -> Result<CrlInfo, Error> {
        let _guard = self.crl_lock.lock().await;
        // Counted before the list is read: a revocation landing in between is listed and makes
        // the next `crl()` re-sign once more, never the reverse.
        let revocations_seen = self.revocation_count().await?;
        let rows = sqlx::query(
            "SELECT serial, reason, at FROM (
                 SELECT r.serial, r.reason, r.revoked_at,
                        extract(epoch FROM r.revoked_at)::bigint AS at
                 FROM revocations r JOIN certificates c ON c.serial = r.serial
                 WHERE c.not_after > now() - interval '1 day'
                 UNION ALL
                 SELECT serial, reason, revoked_at, extract(epoch FROM revoked_at)::bigint
                 FROM service_certs
                 WHERE revoked_at IS NOT NULL AND not_after > now() - interval '1 day'
             ) r ORDER BY revoked_at, serial",
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
            revocations_seen,
        };
        *self.crl.write().await = Some(info.clone());
        if let Some(v) = self.tls_verifier.get()
            && let Err(e) = v.set_crls(vec![info.der.clone().into()])
        {
            tracing::error!(error = %e, "the TLS client verifier refused the new CRL");
        }
        tracing::debug!(number, entries = revoked.len(), "CRL signed");
        Ok(info)
    }
}
