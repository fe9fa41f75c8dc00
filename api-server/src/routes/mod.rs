//! HTTP handlers: parse, authorize, call a core, write. Every tenant query filters on the caller's
//! `tenant_id`, so another tenant's object is indistinguishable from a missing one (404).

pub mod billing;
pub mod resources;
pub mod tenants;
pub mod usage;

use sqlx::PgConnection;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::AppState;
use crate::error::{Error, Result, pg_code};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(tenants::router())
        .merge(resources::router())
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
            Error::conflict(
                "already_exists",
                format!("{what} with this name already exists"),
            )
        } else {
            Error::Db(e)
        }
    }
}

/// Checks a human-facing name: 1–100 characters, no control characters.
pub fn check_name(field: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} must be 1–100 characters without control characters"
        )));
    }
    Ok(())
}
