//! The REST edge (axum): the gRPC operations as JSON (binary fields base64), plus `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! Errors are `{"error": {"code": "<stable code>", "message": "..."}}` with the HTTP status of
//! [`Error::http_status`]; 5xx never carry internals. `GET /v1/crl`, `GET /v1/log/sth` and the
//! probes are public; everything else needs a caller allowed by [`Access`]: over TLS a client
//! certificate issued by this CA with an allowed role (or, as a fallback where enabled, the
//! bearer token); in plaintext mode `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use nexus_mic::RevocationReason;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::auth::Access;
use crate::ca::{self, Ca};

pub use crate::auth::TokenCheck;

#[derive(Clone)]
struct AppState {
    ca: Arc<Ca>,
    access: Arc<Access>,
}

/// The REST router.
pub fn router(ca: Arc<Ca>, access: Arc<Access>) -> Router {
    Router::new()
        .route("/v1/certificates", post(issue))
        .route("/v1/certificates/{serial}/renew", post(renew))
        .route("/v1/certificates/{serial}/revoke", post(revoke))
        .route("/v1/certificates/{serial}/status", get(status))
        .route("/v1/crl", get(crl))
        .route("/v1/log/sth", get(sth))
        .route("/v1/log/proof/{serial}", get(proof))
        .route("/v1/log/consistency", get(consistency))
        .route("/v1/zk/verify", post(zk_verify))
        .route("/v1/zk/verifying-key", get(zk_vk))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        .with_state(AppState { ca, access })
}

/// An error as a JSON response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if !self.0.is_client_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({
            "error": { "code": self.0.code(), "message": self.0.public_message() }
        });
        (status, Json(body)).into_response()
    }
}

/// Extractor: the caller is allowed (a client certificate with an allowed role, or the bearer
/// token where accepted; see [`Access`]).
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<nexus_tls::TlsConnInfo>>()
            .and_then(|c| c.0.peer.as_deref());
        state.access.check(peer, header)?;
        Ok(Authorized)
    }
}

/// JSON body parse errors become our error shape.
struct JsonBody<T>(T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError(Error::InvalidArgument {
                field: "body",
                reason: e.body_text(),
            })),
        }
    }
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, Error> {
    B64.decode(s.trim()).map_err(|_| Error::InvalidArgument {
        field,
        reason: "not base64".into(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    tenant: String,
    request_id: String,
    /// base64 DER
    csr_der: String,
    model: String,
    version: String,
    /// base64 DER
    attestation_der: String,
    #[serde(default)]
    validity_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    tenant: String,
    request_id: String,
    csr_der: String,
    #[serde(default)]
    attestation_der: String,
    #[serde(default)]
    validity_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    tenant: String,
    request_id: String,
    #[serde(default = "unspecified")]
    reason: RevocationReason,
}

fn unspecified() -> RevocationReason {
    RevocationReason::Unspecified
}

#[derive(Debug, Deserialize)]
struct TenantQuery {
    tenant: String,
}

#[derive(Debug, Serialize)]
struct CertJson {
    serial: String,
    leaf_der: String,
    leaf_pem: String,
    chain_der: String,
    root_der: String,
    not_before: i64,
    not_after: i64,
    fingerprint_sha256: String,
    log_index: u64,
    model_uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    renewed_from: Option<String>,
}

impl From<ca::IssuedCert> for CertJson {
    fn from(c: ca::IssuedCert) -> Self {
        Self {
            leaf_pem: nexus_mic::der_to_pem("CERTIFICATE", &c.leaf_der),
            serial: c.serial,
            leaf_der: B64.encode(&c.leaf_der),
            chain_der: B64.encode(&c.chain_der),
            root_der: B64.encode(&c.root_der),
            not_before: c.not_before,
            not_after: c.not_after,
            fingerprint_sha256: c.fingerprint,
            log_index: c.log_index,
            model_uri: c.model_uri,
            renewed_from: c.renewed_from,
        }
    }
}

#[derive(Debug, Serialize)]
struct SthJson {
    tree_size: u64,
    timestamp_ms: u64,
    root_hash: String,
    signature: String,
    log_public_key_der: String,
}

impl From<ca::Sth> for SthJson {
    fn from(s: ca::Sth) -> Self {
        Self {
            tree_size: s.tree_size,
            timestamp_ms: s.timestamp_ms,
            root_hash: B64.encode(s.root_hash),
            signature: B64.encode(&s.signature),
            log_public_key_der: B64.encode(&s.log_public_key_der),
        }
    }
}

async fn issue(
    State(s): State<AppState>,
    _: Authorized,
    JsonBody(b): JsonBody<IssueBody>,
) -> Result<(StatusCode, Json<CertJson>), ApiError> {
    let out =
        s.ca.issue(ca::IssueParams {
            tenant: b.tenant,
            request_id: b.request_id,
            csr_der: b64("csr_der", &b.csr_der)?,
            model: b.model,
            version: b.version,
            attestation_der: b64("attestation_der", &b.attestation_der)?,
            validity_seconds: b.validity_seconds,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(out.into())))
}

async fn renew(
    State(s): State<AppState>,
    _: Authorized,
    Path(serial): Path<String>,
    JsonBody(b): JsonBody<RenewBody>,
) -> Result<(StatusCode, Json<CertJson>), ApiError> {
    let out =
        s.ca.renew(ca::RenewParams {
            tenant: b.tenant,
            request_id: b.request_id,
            serial,
            csr_der: b64("csr_der", &b.csr_der)?,
            attestation_der: if b.attestation_der.is_empty() {
                Vec::new()
            } else {
                b64("attestation_der", &b.attestation_der)?
            },
            validity_seconds: b.validity_seconds,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(out.into())))
}

async fn revoke(
    State(s): State<AppState>,
    _: Authorized,
    Path(serial): Path<String>,
    JsonBody(b): JsonBody<RevokeBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r =
        s.ca.revoke(ca::RevokeParams {
            tenant: b.tenant,
            request_id: b.request_id,
            serial,
            reason: b.reason,
        })
        .await?;
    Ok(Json(serde_json::json!({
        "serial": r.serial,
        "reason": r.reason,
        "revoked_at": r.revoked_at,
        "already_revoked": r.already_revoked,
        "crl_number": r.crl_number,
    })))
}

async fn status(
    State(s): State<AppState>,
    _: Authorized,
    Path(serial): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let st = s.ca.status(&q.tenant, &serial).await?;
    let now = chrono::Utc::now().timestamp();
    Ok(Json(match st {
        ca::Status::Unknown => serde_json::json!({ "serial": serial, "status": "unknown" }),
        ca::Status::Good { not_after } => serde_json::json!({
            "serial": serial, "status": "good", "not_after": not_after, "expired": not_after < now,
        }),
        ca::Status::Revoked {
            not_after,
            reason,
            revoked_at,
        } => serde_json::json!({
            "serial": serial, "status": "revoked", "reason": reason, "revoked_at": revoked_at,
            "not_after": not_after, "expired": not_after < now,
        }),
    }))
}

async fn crl(State(s): State<AppState>) -> Result<Response, ApiError> {
    let c = s.ca.crl().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        c.der,
    )
        .into_response())
}

async fn sth(State(s): State<AppState>) -> Result<Json<SthJson>, ApiError> {
    Ok(Json(s.ca.signed_tree_head().await?.into()))
}

async fn proof(
    State(s): State<AppState>,
    _: Authorized,
    Path(serial): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = s.ca.inclusion_proof(&q.tenant, &serial).await?;
    Ok(Json(serde_json::json!({
        "serial": p.serial,
        "leaf_index": p.leaf_index,
        "leaf_hash": B64.encode(p.leaf_hash),
        "audit_path": p.audit_path.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        "sth": SthJson::from(p.sth),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    first: u64,
    #[serde(default)]
    second: u64,
}

/// `GET /v1/log/consistency?first=M&second=N`: RFC 6962 `PROOF(M, D[N])` (`second` omitted or
/// 0: the current size), as CT's `get-sth-consistency`.
async fn consistency(
    State(s): State<AppState>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = s.ca.consistency_proof(q.first, q.second).await?;
    Ok(Json(serde_json::json!({
        "first": p.first,
        "second": p.second,
        "consistency": p.proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
        "sth": SthJson::from(p.sth),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZkBody {
    tenant: String,
    serial: String,
    claim: String,
    #[serde(default)]
    min_threshold: u64,
    /// The nexus-zk ClaimProof object.
    claim_proof: serde_json::Value,
}

async fn zk_verify(
    State(s): State<AppState>,
    _: Authorized,
    JsonBody(b): JsonBody<ZkBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let v =
        s.ca.verify_claim_proof(ca::ZkVerifyParams {
            tenant: b.tenant,
            serial: b.serial,
            claim: b.claim,
            min_threshold: b.min_threshold,
            claim_proof_json: b.claim_proof.to_string(),
        })
        .await?;
    Ok(Json(serde_json::json!({
        "valid": v.valid,
        "reason": v.reason,
        "commitment_hex": v.commitment_hex,
        "proven_threshold": v.proven_threshold,
    })))
}

async fn zk_vk(State(s): State<AppState>) -> Json<serde_json::Value> {
    let vk = s.ca.zk_verifying_key();
    Json(serde_json::json!({
        "scheme": nexus_zk::SCHEME,
        "verifying_key": vk.to_base64(),
        "fingerprint": vk.fingerprint(),
    }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.ca.metrics().encode(),
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(s.ca.pool())
        .await
    {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}
