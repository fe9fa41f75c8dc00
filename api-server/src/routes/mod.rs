//! HTTP handlers: parse, authorize, call a core, write. Every tenant query filters on the caller's
//! `tenant_id`, so another tenant's object is indistinguishable from a missing one (404).

pub mod billing;
pub mod clusters;
pub mod models;
pub mod routing;
pub mod tenants;
pub mod usage;

use axum::http::StatusCode;
use sqlx::PgConnection;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result, pg_code};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(tenants::router())
        .merge(routing::router())
        .merge(models::router())
        .merge(clusters::router())
        .merge(usage::router())
        .merge(billing::router())
}

/// Appends one audit record (the table refuses UPDATE and DELETE).
pub async fn audit(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    actor: &str,
    action: &str,
    target_type: &str,
    target_id: &str,
    details: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, tenant_id, actor, action, target_type, target_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::new_v4())
    .bind(tenant_id)
    .bind(actor)
    .bind(action)
    .bind(target_type)
    .bind(target_id)
    .bind(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Maps a unique-violation to a 409 naming what already exists.
pub fn unique_to_conflict(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| {
        if pg_code(&e).as_deref() == Some("23505") {
            Error::conflict("already_exists", format!("{what} already exists"))
        } else {
            Error::Db(e)
        }
    }
}

/// Deletes one row of a tenant-owned table and audits it; 404 when the tenant has no such row.
pub async fn delete_owned(
    s: &AppState,
    c: &Caller,
    table: &'static str,
    kind: &'static str,
    what: &'static str,
    id: Uuid,
) -> Result<StatusCode> {
    let mut tx = s.pool.begin().await?;
    // `table` is one of a fixed set of literals chosen by the caller of this function.
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {table} WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(c.tenant_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(Error::NotFound(what));
    }
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        &format!("{kind}.delete"),
        kind,
        &id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
