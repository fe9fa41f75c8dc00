//! Tenant resources: routing domains, their endpoint advertisements, model identities, clusters.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, check_name, unique_to_conflict};
use crate::auth::{Principal, Role, Scope};
use crate::error::{Error, Problem, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{After, Page, PageParams};
use crate::{AppState, CREATED};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_domains, create_domain))
        .routes(routes!(get_domain, delete_domain))
        .routes(routes!(list_endpoints, create_endpoint))
        .routes(routes!(get_endpoint, delete_endpoint))
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, delete_model))
        .routes(routes!(issue_mic))
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, delete_cluster))
}

// ---------------------------------------------------------------- routing domains

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RoutingDomain {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// List routing domains.
#[utoipa::path(get, path = "/v1/routing-domains", tag = "routing", params(PageParams),
    responses((status = 200, body = Page<RoutingDomain>), (status = "4XX", body = Problem)))]
async fn list_domains(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<RoutingDomain>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<RoutingDomain> = sqlx::query_as(
        "SELECT id, name, description, created_at FROM routing_domains WHERE tenant_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
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

/// Create a routing domain (member, write).
#[utoipa::path(post, path = "/v1/routing-domains", tag = "routing", request_body = CreateDomain,
    responses((status = 201, body = RoutingDomain), (status = "4XX", body = Problem)))]
async fn create_domain(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateDomain>,
) -> Result<(StatusCode, Json<RoutingDomain>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    check_name("name", &body.name)?;
    if body.description.len() > 1000 {
        return Err(Error::invalid("description is longer than 1000 bytes"));
    }
    let mut tx = s.pool.begin().await?;
    let d: RoutingDomain = sqlx::query_as(
        "INSERT INTO routing_domains (id, tenant_id, name, description) VALUES ($1, $2, $3, $4)
         RETURNING id, name, description, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(c.tenant_id)
    .bind(&body.name)
    .bind(&body.description)
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_to_conflict("a routing domain"))?;
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

/// One routing domain.
#[utoipa::path(get, path = "/v1/routing-domains/{id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")),
    responses((status = 200, body = RoutingDomain), (status = "4XX", body = Problem)))]
async fn get_domain(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<RoutingDomain>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let d = sqlx::query_as(
        "SELECT id, name, description, created_at FROM routing_domains WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("routing domain"))?;
    Ok(Json(d))
}

/// Delete a routing domain and its endpoint advertisements (member, write).
#[utoipa::path(delete, path = "/v1/routing-domains/{id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")),
    responses((status = 204), (status = "4XX", body = Problem)))]
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

/// Deletes one row of a tenant-owned table; 404 when the tenant has no such row.
async fn delete_owned(
    s: &AppState,
    c: &crate::auth::Caller,
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

// ---------------------------------------------------------------- endpoint advertisements

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
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub name: String,
    /// e.g. ["code-generation", "chat"].
    pub capabilities: Vec<String>,
    /// Tokens, > 0.
    pub context_window: u32,
    /// Milliseconds, > 0.
    pub latency_sla_ms: u32,
    /// Exact decimal string in the currency (no floats): up to 12 integer and 12 fractional digits.
    pub cost_per_1k_tokens: String,
}

/// Checks an exact non-negative decimal: digits, optionally a point and more digits.
pub fn check_decimal(s: &str) -> Result<()> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let ok = (1..=12).contains(&int.len())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 12
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(s.contains('.') && frac.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "cost_per_1k_tokens {s:?} is not a decimal like \"0.0025\" (≤12 digits each side)"
        )))
    }
}

const ENDPOINT_COLS: &str = "id, domain_id, name, capabilities, context_window, latency_sla_ms,
    trim_scale(cost_per_1k_tokens)::text AS cost_per_1k_tokens, created_at";

async fn domain_exists(s: &AppState, tenant: Uuid, domain: Uuid) -> Result<()> {
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM routing_domains WHERE id = $1 AND tenant_id = $2")
            .bind(domain)
            .bind(tenant)
            .fetch_optional(&s.pool)
            .await?;
    found.map(|_| ()).ok_or(Error::NotFound("routing domain"))
}

/// List a routing domain's endpoint advertisements.
#[utoipa::path(get, path = "/v1/routing-domains/{id}/endpoints", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id"), PageParams),
    responses((status = 200, body = Page<Endpoint>), (status = "4XX", body = Problem)))]
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

/// Advertise an endpoint in a routing domain (member, write).
#[utoipa::path(post, path = "/v1/routing-domains/{id}/endpoints", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id")), request_body = CreateEndpoint,
    responses((status = 201, body = Endpoint), (status = "4XX", body = Problem)))]
async fn create_endpoint(
    State(s): State<AppState>,
    p: Principal,
    Path(domain): Path<Uuid>,
    Json(body): Json<CreateEndpoint>,
) -> Result<(StatusCode, Json<Endpoint>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    domain_exists(&s, c.tenant_id, domain).await?;
    check_name("name", &body.name)?;
    check_decimal(&body.cost_per_1k_tokens)?;
    if body.capabilities.len() > 64
        || body
            .capabilities
            .iter()
            .any(|c| check_name("capability", c).is_err())
    {
        return Err(Error::invalid(
            "capabilities: at most 64 names of 1–100 characters",
        ));
    }
    let (Ok(ctx), Ok(sla)) = (
        i32::try_from(body.context_window),
        i32::try_from(body.latency_sla_ms),
    ) else {
        return Err(Error::invalid(
            "context_window and latency_sla_ms must fit in 31 bits",
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
    .map_err(unique_to_conflict("an endpoint"))?;
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
    responses((status = 200, body = Endpoint), (status = "4XX", body = Problem)))]
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

/// Withdraw an endpoint advertisement (member, write).
#[utoipa::path(delete, path = "/v1/routing-domains/{id}/endpoints/{endpoint_id}", tag = "routing",
    params(("id" = Uuid, Path, description = "Routing domain id"), ("endpoint_id" = Uuid, Path, description = "Endpoint id")),
    responses((status = 204), (status = "4XX", body = Problem)))]
async fn delete_endpoint(
    State(s): State<AppState>,
    p: Principal,
    Path((domain, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    domain_exists(&s, c.tenant_id, domain).await?;
    delete_owned(&s, c, "endpoints", "endpoint", "endpoint", id).await
}

// ---------------------------------------------------------------- model identities

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ModelIdentity {
    pub id: Uuid,
    pub name: String,
    /// Digest of the model artefact, e.g. "sha256:…".
    pub model_digest: String,
    /// Claims to attest (evaluation scores, capabilities, provenance).
    pub claims: serde_json::Value,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    pub name: String,
    pub model_digest: String,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// List model identities.
#[utoipa::path(get, path = "/v1/model-identities", tag = "models", params(PageParams),
    responses((status = 200, body = Page<ModelIdentity>), (status = "4XX", body = Problem)))]
async fn list_models(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<ModelIdentity>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<ModelIdentity> = sqlx::query_as(
        "SELECT id, name, model_digest, claims, status, created_at FROM model_identities WHERE tenant_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
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

/// Register a model identity (member, write).
#[utoipa::path(post, path = "/v1/model-identities", tag = "models", request_body = CreateModel,
    responses((status = 201, body = ModelIdentity), (status = "4XX", body = Problem)))]
async fn create_model(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateModel>,
) -> Result<(StatusCode, Json<ModelIdentity>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    check_name("name", &body.name)?;
    let digest_ok = body.model_digest.split_once(':').is_some_and(|(alg, hex)| {
        !alg.is_empty()
            && (16..=128).contains(&hex.len())
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if !digest_ok {
        return Err(Error::invalid(
            "model_digest must look like \"sha256:<hex>\"",
        ));
    }
    let claims = serde_json::Value::Object(body.claims);
    if claims.to_string().len() > 16 * 1024 {
        return Err(Error::invalid("claims are larger than 16 KiB"));
    }
    let mut tx = s.pool.begin().await?;
    let m: ModelIdentity = sqlx::query_as(
        "INSERT INTO model_identities (id, tenant_id, name, model_digest, claims) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, model_digest, claims, status, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(c.tenant_id)
    .bind(&body.name)
    .bind(&body.model_digest)
    .bind(&claims)
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_to_conflict("a model identity"))?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "model_identity.create",
        "model_identity",
        &m.id.to_string(),
        serde_json::json!({"name": m.name, "model_digest": m.model_digest}),
    )
    .await?;
    tx.commit().await?;
    Ok((CREATED, Json(m)))
}

/// One model identity.
#[utoipa::path(get, path = "/v1/model-identities/{id}", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id")),
    responses((status = 200, body = ModelIdentity), (status = "4XX", body = Problem)))]
async fn get_model(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ModelIdentity>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let m = sqlx::query_as(
        "SELECT id, name, model_digest, claims, status, created_at FROM model_identities WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("model identity"))?;
    Ok(Json(m))
}

/// Delete a model identity (member, write).
#[utoipa::path(delete, path = "/v1/model-identities/{id}", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id")),
    responses((status = 204), (status = "4XX", body = Problem)))]
async fn delete_model(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    delete_owned(
        &s,
        c,
        "model_identities",
        "model_identity",
        "model identity",
        id,
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueMic {
    /// PKCS#10 CSR, DER, standard base64. Key: ECDSA P-256/P-384 or Ed25519.
    pub csr_der_base64: String,
    /// Model version, the `@<version>` of `nexus://<tenant>/<model>@<version>`.
    pub version: String,
    /// MIC attestation (nexus-mic DER encoding), standard base64.
    #[serde(default)]
    pub attestation_der_base64: String,
    /// Requested lifetime; default the CA's (24 h).
    #[serde(default)]
    pub validity_seconds: u64,
    /// Idempotency key: a retry with the same id returns the first certificate.
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedMic {
    pub serial: String,
    pub model_uri: String,
    /// Leaf certificate, DER, standard base64.
    pub leaf_der_base64: String,
    /// Intermediate CA certificate, DER, standard base64.
    pub chain_der_base64: String,
    pub root_der_base64: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub fingerprint_sha256: String,
    pub log_index: u64,
}

fn b64_field(name: &str, s: &str, max: usize) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::invalid(format!("{name} is not standard base64")))?;
    if bytes.len() > max {
        return Err(Error::invalid(format!("{name} is larger than {max} bytes")));
    }
    Ok(bytes)
}

fn ca_error(s: tonic::Status) -> Error {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            Error::invalid(format!("the CA refused the request: {}", s.message()))
        }
        Code::AlreadyExists => Error::conflict(
            "request_id_reused",
            format!(
                "request_id was used for a different request: {}",
                s.message()
            ),
        ),
        Code::PermissionDenied => Error::Forbidden(format!("the CA refused: {}", s.message())),
        code => {
            tracing::warn!(?code, message = s.message(), "CA call failed");
            Error::Unavailable {
                code: "ca_unavailable",
                detail: "the certificate authority is unavailable; retry with the same request_id"
                    .into(),
            }
        }
    }
}

/// Issue a MIC for a model identity through the CA (member, write), and meter it (`mics_issued`,
/// exactly once per serial). 503 `ca_not_configured` when the server has no `--ca-endpoint`.
#[utoipa::path(post, path = "/v1/model-identities/{id}/certificates", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id")), request_body = IssueMic,
    responses((status = 201, body = IssuedMic), (status = 503, body = Problem), (status = "4XX", body = Problem)))]
async fn issue_mic(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(body): Json<IssueMic>,
) -> Result<(StatusCode, Json<IssuedMic>)> {
    use base64::Engine as _;
    use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;

    let c = p.tenant(Role::Member, Scope::Write)?;
    let name: Option<String> =
        sqlx::query_scalar("SELECT name FROM model_identities WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(c.tenant_id)
            .fetch_optional(&s.pool)
            .await?;
    let model = name.ok_or(Error::NotFound("model identity"))?;
    let Some(channel) = s.ca.clone() else {
        return Err(Error::Unavailable {
            code: "ca_not_configured",
            detail: "MIC issuance needs a CA: start nexus-cloud with --ca-endpoint".into(),
        });
    };
    let csr = b64_field("csr_der_base64", &body.csr_der_base64, 16 * 1024)?;
    let attestation = b64_field(
        "attestation_der_base64",
        &body.attestation_der_base64,
        16 * 1024,
    )?;
    check_name("version", &body.version)?;
    let request_id = body
        .request_id
        .unwrap_or_else(|| format!("cloud-{}", Uuid::new_v4()));
    let id_ok = (1..=128).contains(&request_id.len())
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if !id_ok {
        return Err(Error::invalid(
            "request_id: 1–128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let mut req = tonic::Request::new(nexus_ca_api::v1::IssueRequest {
        tenant: c.tenant_id.to_string(),
        request_id,
        csr_der: csr,
        model,
        version: body.version,
        attestation_der: attestation,
        validity_seconds: body.validity_seconds,
    });
    if let Some(token) = &s.config.ca_token {
        let v = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Internal("CA token is not a valid header value".into()))?;
        req.metadata_mut().insert(nexus_ca_api::AUTHORIZATION, v);
    }
    let cert = CertificateAuthorityClient::new(channel)
        .issue(req)
        .await
        .map_err(ca_error)?
        .into_inner();
    let ts = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| Error::Internal("CA sent a bad time".into()))
    };
    let (not_before, not_after) = (ts(cert.not_before)?, ts(cert.not_after)?);
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "INSERT INTO mic_certificates (serial, tenant_id, model_identity_id, model_uri, fingerprint_sha256, not_before, not_after)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, serial) DO NOTHING",
    )
    .bind(&cert.serial)
    .bind(c.tenant_id)
    .bind(id)
    .bind(&cert.model_uri)
    .bind(&cert.fingerprint_sha256)
    .bind(not_before)
    .bind(not_after)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE model_identities SET status = 'issued' WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(c.tenant_id)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "mic.issue",
        "model_identity",
        &id.to_string(),
        serde_json::json!({"serial": cert.serial, "model_uri": cert.model_uri}),
    )
    .await?;
    tx.commit().await?;
    // Meter the issuance; the serial makes it exactly once even when the client retries.
    let event = crate::metering::UsageEvent {
        meter: crate::metering::Meter::MicsIssued,
        quantity: 1,
        timestamp: Utc::now(),
        dimensions: [("model_identity".to_owned(), id.to_string())].into(),
        idempotency_key: format!("mic:{}", cert.serial),
    };
    crate::metering::ingest(&s.pool, c.tenant_id, &[event], Utc::now(), s.config.window).await?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Ok((
        CREATED,
        Json(IssuedMic {
            leaf_der_base64: b64(&cert.leaf_der),
            chain_der_base64: b64(&cert.chain_der),
            root_der_base64: b64(&cert.root_der),
            serial: cert.serial,
            model_uri: cert.model_uri,
            not_before,
            not_after,
            fingerprint_sha256: cert.fingerprint_sha256,
            log_index: cert.log_index,
        }),
    ))
}

// ---------------------------------------------------------------- clusters

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Cluster {
    pub id: Uuid,
    pub name: String,
    pub region: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCluster {
    pub name: String,
    pub region: String,
}

/// List registered clusters.
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", params(PageParams),
    responses((status = 200, body = Page<Cluster>), (status = "4XX", body = Problem)))]
async fn list_clusters(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Cluster>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<Cluster> = sqlx::query_as(
        "SELECT id, name, region, created_at FROM clusters WHERE tenant_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
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

/// Register a cluster (member, write).
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = CreateCluster,
    responses((status = 201, body = Cluster), (status = "4XX", body = Problem)))]
async fn create_cluster(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateCluster>,
) -> Result<(StatusCode, Json<Cluster>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    check_name("name", &body.name)?;
    check_name("region", &body.region)?;
    let mut tx = s.pool.begin().await?;
    let cl: Cluster = sqlx::query_as(
        "INSERT INTO clusters (id, tenant_id, name, region) VALUES ($1, $2, $3, $4)
         RETURNING id, name, region, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(c.tenant_id)
    .bind(&body.name)
    .bind(&body.region)
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_to_conflict("a cluster"))?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "cluster.create",
        "cluster",
        &cl.id.to_string(),
        serde_json::json!({"name": cl.name}),
    )
    .await?;
    tx.commit().await?;
    Ok((CREATED, Json(cl)))
}

/// One cluster.
#[utoipa::path(get, path = "/v1/clusters/{id}", tag = "clusters",
    params(("id" = Uuid, Path, description = "Cluster id")),
    responses((status = 200, body = Cluster), (status = "4XX", body = Problem)))]
async fn get_cluster(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<Cluster>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let cl = sqlx::query_as(
        "SELECT id, name, region, created_at FROM clusters WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("cluster"))?;
    Ok(Json(cl))
}

/// Deregister a cluster (member, write).
#[utoipa::path(delete, path = "/v1/clusters/{id}", tag = "clusters",
    params(("id" = Uuid, Path, description = "Cluster id")),
    responses((status = 204), (status = "4XX", body = Problem)))]
async fn delete_cluster(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    delete_owned(&s, c, "clusters", "cluster", "cluster", id).await
}

#[cfg(test)]
mod tests {
    use super::check_decimal;

    #[test]
    fn decimals() {
        for ok in ["0", "0.0025", "12.5", "123456789012.123456789012"] {
            assert!(check_decimal(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1e3",
            "0.1.2",
            "1,5",
            "1234567890123",
            "NaN",
        ] {
            assert!(check_decimal(bad).is_err(), "{bad}");
        }
    }
}
