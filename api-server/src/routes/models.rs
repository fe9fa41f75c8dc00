//! Model identities and their MICs: issuance and revocation through the CA (`nexus.ca.v1`), the
//! certificates a holder downloads and the attestation a console inspects.

use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, delete_owned, unique_to_conflict};
use crate::auth::{Caller, Principal, Role, Scope};
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{After, Page, PageParams};
use crate::validate;
use crate::{AppState, CREATED};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models, create_model))
        .routes(routes!(get_model, delete_model))
        .routes(routes!(list_mics, issue_mic))
        .routes(routes!(get_mic))
        .routes(routes!(revoke_mic))
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
    /// `registered` until a MIC is issued, then `issued`.
    pub status: String,
    /// MICs issued and neither revoked nor expired.
    pub active_mics: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    #[schema(schema_with = validate::model_name_schema)]
    pub name: String,
    #[schema(schema_with = validate::digest_schema)]
    pub model_digest: String,
    /// Claims to show beside the model (evaluation scores, provenance notes): at most 64 names
    /// of 1–64 characters, each a string (≤ 1000 characters), number (within ±1e15), boolean or null.
    #[serde(default)]
    #[schema(schema_with = validate::claims_schema)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

const MODEL_COLS: &str = "m.id, m.name, m.model_digest, m.claims, m.status, m.created_at,
    (SELECT count(*) FROM mic_certificates c WHERE c.tenant_id = m.tenant_id
        AND c.model_identity_id = m.id AND c.revoked_at IS NULL AND c.not_after > now()) AS active_mics";

/// List model identities, newest first.
#[utoipa::path(get, path = "/v1/model-identities", tag = "models", params(PageParams),
    responses((status = 200, body = Page<ModelIdentity>)))]
async fn list_models(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<ModelIdentity>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<ModelIdentity> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MODEL_COLS} FROM model_identities m WHERE m.tenant_id = $1
           AND ($2::timestamptz IS NULL OR (m.created_at, m.id) < ($2, $3))
         ORDER BY m.created_at DESC, m.id DESC LIMIT $4"
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

async fn load_model(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<ModelIdentity> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MODEL_COLS} FROM model_identities m WHERE m.id = $1 AND m.tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("model identity"))
}

/// Register a model identity. Its name is the `<model>` of the MICs issued for it.
#[utoipa::path(post, path = "/v1/model-identities", tag = "models", request_body = CreateModel,
    responses((status = 201, body = ModelIdentity)))]
async fn create_model(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateModel>,
) -> Result<(StatusCode, Json<ModelIdentity>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    validate::model_name(&body.name)?;
    validate::digest(&body.model_digest)?;
    validate::claims(&body.claims)?;
    let claims = serde_json::Value::Object(body.claims);
    let mut tx = s.pool.begin().await?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO model_identities (id, tenant_id, name, model_digest, claims) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(c.tenant_id)
    .bind(&body.name)
    .bind(&body.model_digest)
    .bind(&claims)
    .execute(&mut *tx)
    .await
    .map_err(unique_to_conflict("a model identity with this name"))?;
    let m = load_model(&mut tx, c.tenant_id, id).await?;
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
    responses((status = 200, body = ModelIdentity)))]
async fn get_model(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ModelIdentity>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let mut conn = s.pool.acquire().await?;
    Ok(Json(load_model(&mut conn, c.tenant_id, id).await?))
}

/// Delete a model identity. Its MICs stay valid until they expire: revoke them first.
#[utoipa::path(delete, path = "/v1/model-identities/{id}", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id")),
    responses((status = 204, description = "Deleted")))]
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

// ---------------------------------------------------------------- attestation (JSON form)
//
// The MIC attestation in `nexus-mic`'s JSON form, with its limits as schema constraints. Text
// fields are limited to 64 characters (≤ 256 bytes in UTF-8, `nexus-mic`'s limit). The encoded
// attestation must also fit in 16 KiB (422 `validation_failed` otherwise).

/// What a MIC attests about a model beyond its name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// SHA-256 of the model's architecture description, 64 hex digits.
    #[schema(schema_with = validate::hex32_schema)]
    pub architecture_hash: String,
    pub provenance: Provenance,
    pub capabilities: Capabilities,
    /// Benchmark results (at most 64).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub benchmarks: Vec<Claim>,
    /// Safety evaluation results (at most 64).
    #[serde(default)]
    #[schema(max_items = 64)]
    pub safety_evaluations: Vec<Claim>,
    /// Third parties vouching for the model (at most 16).
    #[serde(default)]
    #[schema(max_items = 16)]
    pub endorsements: Vec<Endorsement>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// SHA-256 digests of the training data sets (at most 64).
    #[serde(default)]
    #[schema(schema_with = validate::hex32_list_schema)]
    pub dataset_digests: Vec<String>,
    /// Who published the weights.
    #[schema(schema_with = validate::short_text_schema)]
    pub publisher: String,
    /// The model this one was derived from, usually a model URI.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::num::not_null"
    )]
    #[schema(schema_with = validate::short_text_schema)]
    pub parent_model: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    #[schema(schema_with = validate::capabilities_schema)]
    pub capabilities: Vec<String>,
    /// Context window in tokens.
    #[serde(deserialize_with = "crate::num::u64")]
    #[schema(minimum = 0)]
    pub context_window: u64,
    /// Input/output modalities such as `text`, `image` (at most 16).
    #[serde(default)]
    #[schema(schema_with = validate::modalities_schema)]
    pub modalities: Vec<String>,
}

/// A named score: in clear, or committed to for a zero-knowledge proof.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    #[schema(schema_with = validate::capability_schema)]
    pub name: String,
    pub value: ClaimValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimValue {
    /// The score, a decimal with at most 6 fractional digits.
    Plain(ScoreText),
    /// A 32-byte Poseidon commitment to the score (64 hex digits).
    Commitment(Hex32),
}

/// A score as text (see `validate::SCORE_PATTERN`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScoreText(pub String);

impl utoipa::PartialSchema for ScoreText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        validate::score_schema().into()
    }
}
impl ToSchema for ScoreText {}

/// 32 bytes as hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hex32(pub String);

impl utoipa::PartialSchema for Hex32 {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        validate::hex32_schema().into()
    }
}
impl ToSchema for Hex32 {}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub comparator: Comparator,
    #[schema(schema_with = validate::score_schema)]
    pub bound: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comparator {
    AtLeast,
    AtMost,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    #[schema(schema_with = validate::short_text_schema)]
    pub issuer: String,
    /// The endorser's signature, 1–512 bytes as hex.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::num::not_null"
    )]
    #[schema(schema_with = validate::signature_schema)]
    pub signature: Option<String>,
}

impl Attestation {
    /// Checks the cloud's limits, then encodes through `nexus-mic` (its own checks and the size).
    pub fn to_der(&self) -> Result<Vec<u8>> {
        let texts = std::iter::once(("provenance.publisher", &self.provenance.publisher))
            .chain(
                self.provenance
                    .parent_model
                    .iter()
                    .map(|p| ("provenance.parent_model", p)),
            )
            .chain(
                self.endorsements
                    .iter()
                    .map(|e| ("endorsements.issuer", &e.issuer)),
            );
        for (field, t) in texts {
            validate::short_text(field, t)?;
        }
        for s in self
            .benchmarks
            .iter()
            .chain(&self.safety_evaluations)
            .flat_map(|c| {
                let v = match &c.value {
                    ClaimValue::Plain(s) => Some(&s.0),
                    ClaimValue::Commitment(_) => None,
                };
                v.into_iter().chain(c.threshold.as_ref().map(|t| &t.bound))
            })
        {
            validate::score(s)?;
        }
        let value = serde_json::to_value(self).map_err(|e| Error::Internal(e.to_string()))?;
        let a: nexus_mic::attestation::Attestation = serde_json::from_value(value)
            .map_err(|e| Error::invalid(format!("attestation: {e}")))?;
        a.to_der()
            .map_err(|e| Error::invalid(format!("attestation: {e}")))
    }

    fn from_mic(a: &nexus_mic::attestation::Attestation) -> Result<Attestation> {
        let value = serde_json::to_value(a).map_err(|e| Error::Internal(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| Error::Internal(format!("attestation: {e}")))
    }
}

// ---------------------------------------------------------------- MICs

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueMic {
    #[schema(schema_with = validate::csr_schema)]
    pub csr_der_base64: String,
    #[schema(schema_with = validate::version_schema)]
    pub version: String,
    pub attestation: Attestation,
    /// Requested lifetime in seconds; 0 or absent: the CA's default (24 h). At most 90 days,
    /// and the CA's `--max-validity` may be lower (422 `ca_refused`).
    #[serde(default, deserialize_with = "crate::num::u64")]
    #[schema(minimum = 0, maximum = 7776000)]
    pub validity_seconds: u64,
    /// Idempotency key: a retry with the same id returns the first certificate.
    #[serde(default, deserialize_with = "crate::num::not_null")]
    #[schema(schema_with = validate::request_id_schema)]
    pub request_id: Option<String>,
}

/// Whether a MIC can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MicStatus {
    Valid,
    Revoked,
    Expired,
}

/// RFC 5280 reasons a tenant may give for revoking its own MIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    #[default]
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key_compromise",
            RevocationReason::AffiliationChanged => "affiliation_changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation_of_operation",
            RevocationReason::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }

    fn to_pb(self) -> pb::RevocationReason {
        match self {
            RevocationReason::Unspecified => pb::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => pb::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => pb::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => pb::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => pb::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => pb::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// A MIC issued for one of the tenant's model identities.
#[derive(Debug, Serialize, ToSchema)]
pub struct Mic {
    pub id: Uuid,
    pub model_identity_id: Uuid,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// `nexus://<tenant>/<model>@<version>`.
    pub model_uri: String,
    /// SHA-256 of the leaf certificate, lowercase hex.
    pub fingerprint_sha256: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// Position in the CA's issuance log; `null` for MICs issued before it was recorded.
    pub log_index: Option<i64>,
    pub status: MicStatus,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revocation_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MicRow {
    id: Uuid,
    model_identity_id: Uuid,
    serial: String,
    model_uri: String,
    fingerprint_sha256: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    log_index: Option<i64>,
    revoked_at: Option<DateTime<Utc>>,
    revocation_reason: Option<String>,
    created_at: DateTime<Utc>,
    leaf_der: Option<Vec<u8>>,
    chain_der: Option<Vec<u8>>,
    root_der: Option<Vec<u8>>,
}

const MIC_COLS: &str = "id, model_identity_id, serial, model_uri, fingerprint_sha256, not_before,
    not_after, log_index, revoked_at, revocation_reason, created_at, leaf_der, chain_der, root_der";

impl MicRow {
    fn summary(&self, now: DateTime<Utc>) -> Mic {
        let status = if self.revoked_at.is_some() {
            MicStatus::Revoked
        } else if self.not_after <= now {
            MicStatus::Expired
        } else {
            MicStatus::Valid
        };
        Mic {
            id: self.id,
            model_identity_id: self.model_identity_id,
            serial: self.serial.clone(),
            model_uri: self.model_uri.clone(),
            fingerprint_sha256: self.fingerprint_sha256.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            log_index: self.log_index,
            status,
            revoked_at: self.revoked_at,
            revocation_reason: self.revocation_reason.clone(),
            created_at: self.created_at,
        }
    }
}

/// A MIC with what a holder downloads and what it attests.
#[derive(Debug, Serialize, ToSchema)]
pub struct MicDetail {
    #[serde(flatten)]
    pub mic: Mic,
    /// Subject DN of the leaf.
    pub subject: Option<String>,
    /// Issuer DN of the leaf (the intermediate CA).
    pub issuer: Option<String>,
    /// Key type of the certified key, e.g. `ECDSA P-256`.
    pub key_algorithm: Option<String>,
    /// The attestation, decoded from the certificate itself.
    pub attestation: Option<Attestation>,
    /// Leaf then intermediate, PEM: what the model presents in handshakes.
    pub chain_pem: Option<String>,
    /// The root CA certificate, PEM: what peers trust.
    pub root_pem: Option<String>,
}

/// The CA certificates and MIC as the CA returned them, in the response of an issuance.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedMic {
    #[serde(flatten)]
    pub mic: MicDetail,
    /// Leaf certificate, DER, standard base64.
    pub leaf_der_base64: String,
    /// Intermediate CA certificate, DER, standard base64.
    pub chain_der_base64: String,
    pub root_der_base64: String,
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn detail(row: &MicRow, now: DateTime<Utc>) -> Result<MicDetail> {
    let parsed = match &row.leaf_der {
        Some(der) => Some(
            nexus_mic::Mic::from_der(der)
                .map_err(|e| Error::Internal(format!("stored MIC {}: {e}", row.serial)))?,
        ),
        None => None,
    };
    let chain_pem = match (&row.leaf_der, &row.chain_der) {
        (Some(l), Some(c)) => Some(format!("{}{}", pem(l), pem(c))),
        _ => None,
    };
    Ok(MicDetail {
        mic: row.summary(now),
        subject: parsed.as_ref().map(|m| m.subject.clone()),
        issuer: parsed.as_ref().map(|m| m.issuer.clone()),
        key_algorithm: parsed
            .as_ref()
            .and_then(|m| m.key_algorithm.map(|k| k.to_string())),
        attestation: parsed
            .as_ref()
            .map(|m| Attestation::from_mic(&m.attestation))
            .transpose()?,
        chain_pem,
        root_pem: row.root_der.as_deref().map(pem),
    })
}

fn ca_error(s: tonic::Status) -> Error {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Error::BadRequest {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "ca_refused",
            detail: format!("the CA refused the request: {}", s.message()),
        },
        Code::AlreadyExists => Error::conflict(
            "request_id_reused",
            format!(
                "request_id was used for a different request: {}",
                s.message()
            ),
        ),
        Code::NotFound => Error::NotFound("certificate"),
        code => {
            tracing::warn!(?code, message = s.message(), "CA call failed");
            Error::Unavailable {
                code: "ca_unavailable",
                detail:
                    "the certificate authority is unavailable; retry (with the same request_id)"
                        .into(),
            }
        }
    }
}

fn ca_client(s: &AppState) -> Result<CertificateAuthorityClient<tonic::transport::Channel>> {
    match s.ca.clone() {
        Some(channel) => Ok(CertificateAuthorityClient::new(channel)),
        None => Err(Error::Unavailable {
            code: "ca_not_configured",
            detail: "MICs need a CA: start nexus-cloud with --ca-endpoint".into(),
        }),
    }
}

fn ca_request<T>(s: &AppState, msg: T) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = &s.config.ca_token {
        let v = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Internal("CA token is not a valid header value".into()))?;
        req.metadata_mut().insert(nexus_ca_api::AUTHORIZATION, v);
    }
    Ok(req)
}

async fn model_name_and_slug(s: &AppState, c: &Caller, id: Uuid) -> Result<(String, String)> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT m.name, t.slug FROM model_identities m JOIN tenants t ON t.id = m.tenant_id
          WHERE m.id = $1 AND m.tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?;
    row.ok_or(Error::NotFound("model identity"))
}

/// Issue a MIC for a model identity through the CA, and meter it (`mics_issued`, exactly once per
/// serial). The CSR's key stays with the caller; the CA signs the attestation into the MIC.
#[utoipa::path(post, path = "/v1/model-identities/{id}/certificates", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id")), request_body = IssueMic,
    responses((status = 201, body = IssuedMic)))]
async fn issue_mic(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(body): Json<IssueMic>,
) -> Result<(StatusCode, Json<IssuedMic>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    let (model, slug) = model_name_and_slug(&s, c, id).await?;
    let csr = validate::base64(
        "csr_der_base64",
        &body.csr_der_base64,
        validate::CSR_MAX_CHARS,
    )?;
    validate::version(&body.version)?;
    if body.validity_seconds > 7_776_000 {
        return Err(Error::invalid(
            "validity_seconds must be at most 7776000 (90 days)",
        ));
    }
    let attestation = body.attestation.to_der()?;
    let request_id = body
        .request_id
        .unwrap_or_else(|| format!("cloud-{}", Uuid::new_v4()));
    validate::request_id(&request_id)?;
    let mut client = ca_client(&s)?;
    let req = ca_request(
        &s,
        pb::IssueRequest {
            tenant: slug,
            request_id,
            csr_der: csr,
            model,
            version: body.version,
            attestation_der: attestation,
            validity_seconds: body.validity_seconds,
        },
    )?;
    let cert = client.issue(req).await.map_err(ca_error)?.into_inner();
    let ts = |secs: i64| {
        DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| Error::Internal("CA sent a bad time".into()))
    };
    let (not_before, not_after) = (ts(cert.not_before)?, ts(cert.not_after)?);
    let log_index = i64::try_from(cert.log_index).ok();
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "INSERT INTO mic_certificates (serial, tenant_id, model_identity_id, model_uri, fingerprint_sha256,
                not_before, not_after, leaf_der, chain_der, root_der, log_index)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (tenant_id, serial) DO NOTHING",
    )
    .bind(&cert.serial)
    .bind(c.tenant_id)
    .bind(id)
    .bind(&cert.model_uri)
    .bind(&cert.fingerprint_sha256)
    .bind(not_before)
    .bind(not_after)
    .bind(&cert.leaf_der)
    .bind(&cert.chain_der)
    .bind(&cert.root_der)
    .bind(log_index)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE model_identities SET status = 'issued' WHERE id = $1 AND tenant_id = $2")
        .bind(id)
        .bind(c.tenant_id)
        .execute(&mut *tx)
        .await?;
    let row: MicRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MIC_COLS} FROM mic_certificates WHERE tenant_id = $1 AND serial = $2"
    )))
    .bind(c.tenant_id)
    .bind(&cert.serial)
    .fetch_one(&mut *tx)
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
            mic: detail(&row, Utc::now())?,
            leaf_der_base64: b64(&cert.leaf_der),
            chain_der_base64: b64(&cert.chain_der),
            root_der_base64: b64(&cert.root_der),
        }),
    ))
}

/// The MICs of a model identity, newest first.
#[utoipa::path(get, path = "/v1/model-identities/{id}/certificates", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id"), PageParams),
    responses((status = 200, body = Page<Mic>)))]
async fn list_mics(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Mic>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, after)) = (q.limit()?, q.after()?);
    model_name_and_slug(&s, c, id).await?;
    let rows: Vec<MicRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MIC_COLS} FROM mic_certificates WHERE tenant_id = $1 AND model_identity_id = $5
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    )))
    .bind(c.tenant_id)
    .bind(at)
    .bind(after)
    .bind(limit + 1)
    .bind(id)
    .fetch_all(&s.pool)
    .await?;
    let now = Utc::now();
    let rows: Vec<Mic> = rows.iter().map(|r| r.summary(now)).collect();
    Ok(Json(Page::new(rows, limit, |r| After {
        created_at: r.created_at,
        id: r.id,
    })))
}

async fn load_mic(s: &AppState, c: &Caller, model: Uuid, serial: &str) -> Result<MicRow> {
    if !validate::serial(serial) {
        return Err(Error::NotFound("certificate"));
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MIC_COLS} FROM mic_certificates
          WHERE tenant_id = $1 AND model_identity_id = $2 AND serial = $3"
    )))
    .bind(c.tenant_id)
    .bind(model)
    .bind(serial)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("certificate"))
}

/// One MIC: its chain (PEM, to download), its root, and the attestation decoded from the
/// certificate itself.
#[utoipa::path(get, path = "/v1/model-identities/{id}/certificates/{serial}", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id"),
           ("serial" = String, Path, description = "Serial, lowercase hex", pattern = "^[0-9a-f]{1,40}$")),
    responses((status = 200, body = MicDetail)))]
async fn get_mic(
    State(s): State<AppState>,
    p: Principal,
    Path((id, serial)): Path<(Uuid, String)>,
) -> Result<Json<MicDetail>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let row = load_mic(&s, c, id, &serial).await?;
    Ok(Json(detail(&row, Utc::now())?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeMic {
    #[serde(default)]
    pub reason: RevocationReason,
}

/// Revoke a MIC through the CA. The CA re-signs its CRL before answering, so peers refuse the
/// MIC from their next CRL fetch. Revoking a revoked MIC answers with the first revocation.
#[utoipa::path(post, path = "/v1/model-identities/{id}/certificates/{serial}/revoke", tag = "models",
    params(("id" = Uuid, Path, description = "Model identity id"),
           ("serial" = String, Path, description = "Serial, lowercase hex", pattern = "^[0-9a-f]{1,40}$")),
    request_body = RevokeMic,
    responses((status = 200, body = MicDetail)))]
async fn revoke_mic(
    State(s): State<AppState>,
    p: Principal,
    Path((id, serial)): Path<(Uuid, String)>,
    Json(body): Json<RevokeMic>,
) -> Result<Json<MicDetail>> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    let row = load_mic(&s, c, id, &serial).await?;
    if row.revoked_at.is_some() {
        return Ok(Json(detail(&row, Utc::now())?));
    }
    let (_, slug) = model_name_and_slug(&s, c, id).await?;
    let mut client = ca_client(&s)?;
    let req = ca_request(
        &s,
        pb::RevokeRequest {
            tenant: slug,
            // One revocation per serial: a retry replays the first answer.
            request_id: format!("cloud-revoke-{serial}"),
            serial: serial.clone(),
            reason: body.reason.to_pb() as i32,
        },
    )?;
    let revoked = client.revoke(req).await.map_err(ca_error)?.into_inner();
    let at = DateTime::from_timestamp(revoked.revoked_at, 0).unwrap_or_else(Utc::now);
    let reason = pb::RevocationReason::try_from(revoked.reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REVOCATION_REASON_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| body.reason.as_str().to_owned());
    let mut tx = s.pool.begin().await?;
    let n = sqlx::query(
        "UPDATE mic_certificates SET revoked_at = $4, revocation_reason = $5
          WHERE tenant_id = $1 AND model_identity_id = $2 AND serial = $3 AND revoked_at IS NULL",
    )
    .bind(c.tenant_id)
    .bind(id)
    .bind(&serial)
    .bind(at)
    .bind(&reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n > 0 {
        audit(
            &mut tx,
            c.tenant_id,
            &c.actor(),
            "mic.revoke",
            "model_identity",
            &id.to_string(),
            serde_json::json!({"serial": serial, "reason": reason, "crl_number": revoked.crl_number}),
        )
        .await?;
    }
    tx.commit().await?;
    let row = load_mic(&s, c, id, &serial).await?;
    Ok(Json(detail(&row, Utc::now())?))
}
