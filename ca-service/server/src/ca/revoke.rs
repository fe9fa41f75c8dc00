//! Revocation (RFC 5280 reasons, idempotent by request id) and per-serial status.

use std::time::SystemTime;

use nexus_mic::RevocationReason;
use sqlx::Row;

use super::{
    Ca, RevokeParams, Revoked, Status, check_tenant_name, reason_code, reason_from_db,
    request_hash, ts, unix,
};
use crate::{Error, policy};

impl Ca {
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
}
