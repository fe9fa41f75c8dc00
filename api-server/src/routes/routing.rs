//! Routing domains, their endpoint advertisements, and endpoint admission as the RoutingDomain
//! controller reports it.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, delete_owned, unique_to_conflict};
use crate::auth::{Principal, Role, Scope};
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{After, Page, PageParams};
use crate::validate;
use crate::{AppState, CREATED};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_domains, create_domain))
        .routes(routes!(get_domain, update_domain, delete_domain))
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(get_endpoint, delete_endpoint))
        .routes(routes!(set_admission))
}

// ---------------------------------------------------------------- routing domains

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RoutingDomain {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// Endpoints the controller admitted.
    pub endpoints_admitted: i64,
    /// Endpoints the controller rejected (each says why).
    pub endpoints_rejected: i64,
    /// Endpoints not yet judged by the controller.
    pub endpoints_pending: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    #[schema(schema_with = validate::name_schema)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = validate::description_schema)]
    pub description: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateDomain {
    /// New name; unchanged when absent.
    #[serde(default, deserialize_with = "crate::num::not_null")]
    #[schema(schema_with = validate::name_schema)]
    pub name: Option<String>,
    /// New description; unchanged when absent.
    #[serde(default, deserialize_with = "crate::num::not_null")]
    #[schema(schema_with = validate::description_schema)]
    pub description: Option<String>,
}

const DOMAIN_COLS: &str = "d.id, d.name, d.description, d.created_at,
    (SELECT count(*) FROM endpoints e WHERE e.domain_id = d.id AND e.admission = 'admitted') AS endpoints_admitted,
    (SELECT count(*) FROM endpoints e WHERE e.domain_id = d.id AND e.admission = 'rejected') AS endpoints_rejected,
    (SELECT count(*) FROM endpoints e WHERE e.domain_id = d.id AND e.admission = 'pending') AS endpoints_pending";

async fn load_domain(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<RoutingDomain> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DOMAIN_COLS} FROM routing_domains d WHERE d.id = $1 AND d.tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("routing domain"))
}

/// List routing domains, newest first.
#[utoipa::path(get, path = "/v1/routing-domains", tag = "routing", params(PageParams),
    responses((status = 200, body = Page<RoutingDomain>)))]
async fn list_domains(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<RoutingDomain>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<RoutingDomain> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DOMAIN_COLS} FROM routing_domains d WHERE d.tenant_id = $1
           AND ($2::timestamptz IS NULL OR (d.created_at, d.id) < ($2, $3))
         ORDER BY d.created_at DESC, d.id DESC LIMIT $4"
    )))
    .bind(c.tenant_id)
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(Page::new(rows, limit, |r| After {
        created_at: r.created_at,
        id: r.id,
    })))
}

/// Create a routing domain. Names are unique in the tenant.
#[utoipa::path(post, path = "/v1/routing-domains", tag = "routing", request_body = CreateDomain,
    responses((status = 201, body = RoutingDomain)))]
async fn create_domain(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateDomain>,
) -> Result<(StatusCode, Json<RoutingDomain>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    validate::name("name", &body.name)?;
    validate::text("description", &body.description, 1000)?;
    let mut tx = s.pool.begin().await?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO routing_domains (id, tenant_id, name, description) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(c.tenant_id)
    .bind(&body.name)
    .bind(&body.description)
    .execute(&mut *tx)
    .await
    .map_err(unique_to_conflict("a routing domain with this name"))?;
    let d = load_domain(&mut tx, c.tenant_id, id).await?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "routing_domain.create",
        "routing_domain",
        &d.id.to_string(),
        serde_json::json!({"name": d.name}),
    )
    .await?;
    tx.commit().await?;
    Ok((CREATED, Json(d)))
}

/// One routing domain, with its endpoints' admission counts.
#[utoipa::path(get, path = "/v1/routing-domains/{id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")),
    responses((status = 200, body = RoutingDomain)))]
async fn get_domain(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RoutingDomain>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let mut conn = s.pool.acquire().await?;
    Ok(Json(load_domain(&mut conn, c.tenant_id, id).await?))
}

/// Rename a routing domain or change its description.
#[utoipa::path(patch, path = "/v1/routing-domains/{id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")), request_body = UpdateDomain,
    responses((status = 200, body = RoutingDomain)))]
async fn update_domain(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateDomain>,
) -> Result<Json<RoutingDomain>> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    if let Some(n) = &body.name {
        validate::name("name", n)?;
    }
    if let Some(d) = &body.description {
        validate::text("description", d, 1000)?;
    }
    let mut tx = s.pool.begin().await?;
    let before = load_domain(&mut tx, c.tenant_id, id).await?;
    sqlx::query(
        "UPDATE routing_domains SET name = coalesce($3, name), description = coalesce($4, description)
          WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .bind(&body.name)
    .bind(&body.description)
    .execute(&mut *tx)
    .await
    .map_err(unique_to_conflict("a routing domain with this name"))?;
    let d = load_domain(&mut tx, c.tenant_id, id).await?;
    if d.name != before.name || d.description != before.description {
        audit(
            &mut tx,
            c.tenant_id,
            &c.actor(),
            "routing_domain.update",
            "routing_domain",
            &id.to_string(),
            serde_json::json!({"name": {"from": before.name, "to": d.name},
                               "description_changed": d.description != before.description}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(d))
}

/// Delete a routing domain and its endpoint advertisements.
#[utoipa::path(delete, path = "/v1/routing-domains/{id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_domain(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    delete_owned(
        &s,
        c,
        "routing_domains",
        "routing_domain",
        "routing domain",
        id,
    )
    .await
}

// ---------------------------------------------------------------- endpoint advertisements

/// Whether the RoutingDomain controller lets traffic reach an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionState {
    /// Not judged yet.
    Pending,
    /// The endpoint's MIC meets the domain's trust policy.
    Admitted,
    /// Refused; `reason` says why.
    Rejected,
}

impl AdmissionState {
    fn as_str(self) -> &'static str {
        match self {
            AdmissionState::Pending => "pending",
            AdmissionState::Admitted => "admitted",
            AdmissionState::Rejected => "rejected",
        }
    }
}

impl TryFrom<String> for AdmissionState {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "pending" => Ok(AdmissionState::Pending),
            "admitted" => Ok(AdmissionState::Admitted),
            "rejected" => Ok(AdmissionState::Rejected),
            _ => Err(format!("unknown admission state {s:?}")),
        }
    }
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub domain_id: Uuid,
    pub name: String,
    pub capabilities: Vec<String>,
    pub context_window: i32,
    pub latency_sla_ms: i32,
    /// Exact decimal string, e.g. "0.0025".
    pub cost_per_1k_tokens: String,
    #[sqlx(try_from = "String")]
    pub admission: AdmissionState,
    /// Why the endpoint was rejected (empty otherwise).
    pub admission_reason: String,
    /// When the controller last reported; `null` before its first report.
    pub admission_observed_at: Option<DateTime<Utc>>,
    /// Version of the routing table the controller programmed with this decision.
    pub admission_table_version: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    #[schema(schema_with = validate::name_schema)]
    pub name: String,
    /// Capability names, e.g. ["code-generation", "chat"].
    #[schema(schema_with = validate::capabilities_schema)]
    pub capabilities: Vec<String>,
    /// Tokens.
    #[serde(deserialize_with = "crate::num::u32")]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub context_window: u32,
    /// Milliseconds.
    #[serde(deserialize_with = "crate::num::u32")]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub latency_sla_ms: u32,
    #[schema(schema_with = validate::decimal_schema)]
    pub cost_per_1k_tokens: String,
}

const ENDPOINT_COLS: &str = "id, domain_id, name, capabilities, context_window, latency_sla_ms,
    trim_scale(cost_per_1k_tokens)::text AS cost_per_1k_tokens, admission, admission_reason,
    admission_observed_at, admission_table_version, created_at";

async fn domain_exists(s: &AppState, tenant: Uuid, domain: Uuid) -> Result<()> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM routing_domains WHERE id = $1 AND tenant_id = $2")
            .bind(domain)
            .bind(tenant)
            .fetch_optional(&s.pool)
            .await?;
    found.map(|_| ()).ok_or(Error::NotFound("routing domain"))
}

/// List a routing domain's endpoint advertisements with their admission state.
#[utoipa::path(get, path = "/v1/routing-domains/{id}/endpoints", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id"), PageParams),
    responses((status = 200, body = Page<Endpoint>)))]
async fn list_endpoints(
    State(s): State<AppState>,
    p: Principal,
    Path(domain): Path<Uuid>,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Endpoint>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    domain_exists(&s, c.tenant_id, domain).await?;
    let rows: Vec<Endpoint> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints WHERE tenant_id = $1 AND domain_id = $5
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    )))
    .bind(c.tenant_id)
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .bind(domain)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(Page::new(rows, limit, |r| After {
        created_at: r.created_at,
        id: r.id,
    })))
}

/// Advertise an endpoint in a routing domain. It starts `pending` until the RoutingDomain
/// controller judges its MIC against the domain's trust policy.
#[utoipa::path(post, path = "/v1/routing-domains/{id}/endpoints", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")), request_body = CreateEndpoint,
    responses((status = 201, body = Endpoint)))]
async fn create_endpoint(
    State(s): State<AppState>,
    p: Principal,
    Path(domain): Path<Uuid>,
    Json(body): Json<CreateEndpoint>,
) -> Result<(StatusCode, Json<Endpoint>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    domain_exists(&s, c.tenant_id, domain).await?;
    validate::name("name", &body.name)?;
    validate::decimal("cost_per_1k_tokens", &body.cost_per_1k_tokens)?;
    if body.capabilities.len() > 64 {
        return Err(Error::invalid("capabilities: at most 64 names"));
    }
    for cap in &body.capabilities {
        validate::capability("capabilities", cap)?;
    }
    let (Ok(ctx), Ok(sla)) = (
        i32::try_from(body.context_window),
        i32::try_from(body.latency_sla_ms),
    ) else {
        return Err(Error::invalid(
            "context_window and latency_sla_ms must be at most 2147483647",
        ));
    };
    if ctx == 0 || sla == 0 {
        return Err(Error::invalid(
            "context_window and latency_sla_ms must be positive",
        ));
    }
    let mut tx = s.pool.begin().await?;
    let e: Endpoint = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO endpoints (id, tenant_id, domain_id, name, capabilities, context_window, latency_sla_ms, cost_per_1k_tokens)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric) RETURNING {ENDPOINT_COLS}"
    )))
    .bind(Uuid::new_v4())
    .bind(c.tenant_id)
    .bind(domain)
    .bind(&body.name)
    .bind(&body.capabilities)
    .bind(ctx)
    .bind(sla)
    .bind(&body.cost_per_1k_tokens)
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_to_conflict("an endpoint with this name"))?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "endpoint.create",
        "endpoint",
        &e.id.to_string(),
        serde_json::json!({"domain_id": domain, "name": e.name}),
    )
    .await?;
    tx.commit().await?;
    Ok((CREATED, Json(e)))
}

/// One endpoint advertisement.
#[utoipa::path(get, path = "/v1/routing-domains/{id}/endpoints/{endpoint_id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id"), ("endpoint_id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, body = Endpoint)))]
async fn get_endpoint(
    State(s): State<AppState>,
    p: Principal,
    Path((domain, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Endpoint>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let e = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = $1 AND domain_id = $2 AND tenant_id = $3"
    )))
    .bind(id)
    .bind(domain)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("endpoint"))?;
    Ok(Json(e))
}

/// Withdraw an endpoint advertisement.
#[utoipa::path(delete, path = "/v1/routing-domains/{id}/endpoints/{endpoint_id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id"), ("endpoint_id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 204, description = "Withdrawn")))]
async fn delete_endpoint(
    State(s): State<AppState>,
    p: Principal,
    Path((domain, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    domain_exists(&s, c.tenant_id, domain).await?;
    delete_owned(&s, c, "endpoints", "endpoint", "endpoint", id).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAdmission {
    pub state: AdmissionState,
    /// Why the endpoint was rejected, in words a tenant can act on.
    #[serde(default)]
    #[schema(schema_with = validate::reason_schema)]
    pub reason: String,
    /// Version of the routing table programmed with this decision.
    #[serde(default, deserialize_with = "crate::num::opt_i64_nonneg")]
    #[schema(minimum = 0)]
    pub table_version: Option<i64>,
}

/// Report an endpoint's admission (the RoutingDomain controller, with the operator token).
/// Audited in the endpoint's tenant when the state or reason changes.
#[utoipa::path(put, path = "/v1/routing-domains/{id}/endpoints/{endpoint_id}/admission", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id"), ("endpoint_id" = Uuid, Path, description = "Endpoint id")),
    request_body = SetAdmission,
    responses((status = 200, body = Endpoint)))]
async fn set_admission(
    State(s): State<AppState>,
    p: Principal,
    Path((domain, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<SetAdmission>,
) -> Result<Json<Endpoint>> {
    p.operator()?;
    validate::text("reason", &body.reason, 1000)?;
    if body.table_version.is_some_and(|v| v < 0) {
        return Err(Error::invalid("table_version must not be negative"));
    }
    let mut tx = s.pool.begin().await?;
    let before: Option<(Uuid, String, String)> = sqlx::query_as(
        "SELECT tenant_id, admission, admission_reason FROM endpoints
          WHERE id = $1 AND domain_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(domain)
    .fetch_optional(&mut *tx)
    .await?;
    let (tenant, old_state, old_reason) = before.ok_or(Error::NotFound("endpoint"))?;
    let e: Endpoint = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE endpoints SET admission = $3, admission_reason = $4, admission_observed_at = now(),
                admission_table_version = coalesce($5, admission_table_version)
          WHERE id = $1 AND domain_id = $2 RETURNING {ENDPOINT_COLS}"
    )))
    .bind(id)
    .bind(domain)
    .bind(body.state.as_str())
    .bind(&body.reason)
    .bind(body.table_version)
    .fetch_one(&mut *tx)
    .await?;
    if old_state != body.state.as_str() || old_reason != body.reason {
        audit(
            &mut tx,
            tenant,
            "operator",
            "endpoint.admission",
            "endpoint",
            &id.to_string(),
            serde_json::json!({"from": old_state, "to": body.state, "reason": body.reason}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(e))
}
