//! API keys, roles and scopes. A key is `nxk_<prefix>_<secret>`: the prefix finds the row, an
//! argon2id hash of the secret proves it. The full key is shown once, at creation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{Error, Result};

/// Roles, weakest first: each can do what the ones before it can.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

impl TryFrom<String> for Role {
    type Error = String;
    fn try_from(s: String) -> Result<Role, String> {
        Role::parse(&s).ok_or_else(|| format!("unknown role {s:?}"))
    }
}

/// What a key may be used for, independent of its user's role.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// The authenticated caller of a tenant route.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub key_id: Uuid,
    pub role: Role,
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// The caller, if its role is at least `role` and its key carries `scope`.
    pub fn require(&self, role: Role, scope: Scope) -> Result<&Caller> {
        if self.role < role {
            return Err(Error::Forbidden(format!(
                "this action needs role {} or higher; the key's user is {}",
                role.as_str(),
                self.role.as_str()
            )));
        }
        if !self.scopes.contains(&scope) {
            return Err(Error::Forbidden(format!(
                "this action needs a key with scope {}",
                scope.as_str()
            )));
        }
        Ok(self)
    }

    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }
}

/// Who is calling: the platform operator (bootstrap token), a Nexus component reporting usage
/// (the usage token: dataplanes, the CA, the controller), or a tenant's key.
#[derive(Debug, Clone)]
pub enum Principal {
    Operator,
    /// The usage token. It may only report usage on tenants' behalf: a token spread over every
    /// node must not be able to create tenants or price plans.
    Service,
    Tenant(Caller),
}

impl Principal {
    pub fn tenant(&self, role: Role, scope: Scope) -> Result<&Caller> {
        match self {
            Principal::Tenant(c) => c.require(role, scope),
            Principal::Operator | Principal::Service => Err(Error::Forbidden(
                "the operator and usage tokens cannot act inside a tenant".into(),
            )),
        }
    }

    pub fn operator(&self) -> Result<()> {
        match self {
            Principal::Operator => Ok(()),
            Principal::Service | Principal::Tenant(_) => Err(Error::Forbidden(
                "this action needs the operator token".into(),
            )),
        }
    }

    /// The operator or a usage-reporting component.
    pub fn service(&self) -> Result<()> {
        match self {
            Principal::Operator | Principal::Service => Ok(()),
            Principal::Tenant(_) => Err(Error::Forbidden(
                "this action needs the usage token or the operator token".into(),
            )),
        }
    }
}

/// A newly minted key: the full text (shown once) and what is stored.
#[derive(Debug)]
pub struct NewKey {
    pub token: String,
    pub prefix: String,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

fn argon2() -> Result<Argon2<'static>> {
    // OWASP's argon2id minimum (19 MiB, 2 passes, 1 lane).
    let params =
        Params::new(19 * 1024, 2, 1, Some(32)).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_secret(secret: &[u8], salt: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 32];
    argon2()?
        .hash_password_into(secret, salt, &mut out)
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(out)
}

/// Mints a key: 8 random bytes of prefix, 32 of secret, 16 of salt. CPU-heavy: call off the runtime.
pub fn mint_key() -> Result<NewKey> {
    let mut rng = rand::rng();
    let mut prefix = [0u8; 8];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut prefix);
    rng.fill_bytes(&mut secret);
    rng.fill_bytes(&mut salt);
    let prefix = hex::encode(prefix);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let hash = hash_secret(secret.as_bytes(), &salt)?;
    Ok(NewKey {
        token: format!("nxk_{prefix}_{secret}"),
        prefix,
        salt: salt.to_vec(),
        hash,
    })
}

/// Splits `nxk_<prefix>_<secret>`.
pub fn parse_key(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("nxk_")?;
    let (prefix, secret) = rest.split_once('_')?;
    (prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((prefix, secret))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Remembers which full tokens already passed the argon2 check, so each request does not pay for
/// it again. Only the hash computation is skipped: revocation and expiry are read from the
/// database on every request.
#[derive(Debug, Default)]
pub struct VerifiedKeys(Mutex<HashMap<[u8; 32], Uuid>>);

impl VerifiedKeys {
    fn get(&self, fp: &[u8; 32]) -> Option<Uuid> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(fp)
            .copied()
    }
    fn put(&self, fp: [u8; 32], id: Uuid) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 50_000 {
            m.clear();
        }
        m.insert(fp, id);
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    salt: Vec<u8>,
    hash: Vec<u8>,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    role: String,
}

/// Resolves a bearer token to a caller. Revoked, expired and unknown keys are all `Unauthenticated`.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal> {
    if let Some(admin) = &state.config.admin_token
        && !admin.is_empty()
        && ct_eq(admin.as_bytes(), token.as_bytes())
    {
        return Ok(Principal::Operator);
    }
    if let Some(usage) = &state.config.usage_token
        && !usage.is_empty()
        && ct_eq(usage.as_bytes(), token.as_bytes())
    {
        return Ok(Principal::Service);
    }
    let (prefix, secret) = parse_key(token).ok_or(Error::Unauthenticated)?;
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.tenant_id, k.user_id, k.salt, k.hash, k.scopes, k.expires_at, k.revoked_at, u.role
           FROM api_keys k JOIN users u ON u.id = k.user_id AND u.tenant_id = k.tenant_id
          WHERE k.prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or(Error::Unauthenticated)?;
    if row.revoked_at.is_some() || row.expires_at.is_some_and(|e| e <= Utc::now()) {
        return Err(Error::Unauthenticated);
    }
    let fp: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if state.verified.get(&fp) != Some(row.id) {
        let secret = secret.as_bytes().to_vec();
        let salt = row.salt.clone();
        let computed = tokio::task::spawn_blocking(move || hash_secret(&secret, &salt))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        if !ct_eq(&computed, &row.hash) {
            return Err(Error::Unauthenticated);
        }
        state.verified.put(fp, row.id);
    }
    let role = Role::parse(&row.role).ok_or_else(|| Error::Internal("bad role".into()))?;
    let scopes = row.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
    if let Err(wait) = state.limiter.check(row.id).await? {
        state.metrics.rate_limited.inc();
        return Err(Error::RateLimited {
            retry_after_secs: u64::try_from(wait.as_micros().div_ceil(1_000_000))
                .unwrap_or(u64::MAX)
                .max(1),
        });
    }
    Ok(Principal::Tenant(Caller {
        tenant_id: row.tenant_id,
        user_id: row.user_id,
        key_id: row.id,
        role,
        scopes,
    }))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::Unauthenticated)?;
        let token = value
            .strip_prefix("Bearer ")
            .ok_or(Error::Unauthenticated)?
            .trim();
        authenticate(state, token).await
    }
}

/// Inserts a key row for `user_id`; returns (key id, full token). Hashing runs off the runtime.
pub async fn insert_key(
    conn: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    user_id: Uuid,
    name: &str,
    scopes: &[Scope],
    expires_at: Option<DateTime<Utc>>,
) -> Result<(Uuid, String, DateTime<Utc>)> {
    let key = tokio::task::spawn_blocking(mint_key)
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let id = Uuid::new_v4();
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let created: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO api_keys (id, tenant_id, user_id, name, prefix, salt, hash, scopes, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING created_at",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(user_id)
    .bind(name)
    .bind(&key.prefix)
    .bind(&key.salt)
    .bind(&key.hash)
    .bind(&scopes)
    .bind(expires_at)
    .fetch_one(conn)
    .await?;
    Ok((id, key.token, created))
}

pub type Verified = Arc<VerifiedKeys>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_and_verify() -> Result<()> {
        let k = mint_key()?;
        let (prefix, secret) = parse_key(&k.token).ok_or(Error::Unauthenticated)?;
        assert_eq!(prefix, k.prefix);
        assert!(ct_eq(&hash_secret(secret.as_bytes(), &k.salt)?, &k.hash));
        assert!(!ct_eq(&hash_secret(b"wrong", &k.salt)?, &k.hash));
        Ok(())
    }

    #[test]
    fn rejects_malformed_tokens() {
        assert!(parse_key("nxk_short_x").is_none());
        assert!(parse_key("abc").is_none());
        assert!(parse_key("nxk_0123456789abcdef_").is_none());
        assert!(parse_key("nxk_0123456789abcdeg_x").is_none());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Member && Role::Member < Role::Admin);
        assert!(Role::Admin < Role::Owner);
        let c = Caller {
            tenant_id: Uuid::nil(),
            user_id: Uuid::nil(),
            key_id: Uuid::nil(),
            role: Role::Member,
            scopes: vec![Scope::Read],
        };
        assert!(c.require(Role::Viewer, Scope::Read).is_ok());
        assert!(c.require(Role::Admin, Scope::Read).is_err());
        assert!(c.require(Role::Member, Scope::Write).is_err());
    }
}
