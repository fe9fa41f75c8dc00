//! Tenants, users, API keys and the audit log.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{audit, unique_to_conflict};
use crate::auth::{Principal, Role, Scope, insert_key};
use crate::error::{Error, Result};
use crate::extract::{Json, Path, Query};
use crate::pagination::{After, Page, PageParams};
use crate::validate;
use crate::{AppState, CREATED, NewTenant, create_tenant};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant_handler))
        .routes(routes!(get_tenant))
        .routes(routes!(whoami))
        .routes(routes!(set_plan))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, set_role))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(list_audit))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schema(schema_with = validate::name_schema)]
    pub name: String,
    /// DNS label naming the tenant in model URIs (`nexus://<slug>/…`) and to the CA. Unique.
    #[schema(schema_with = validate::slug_schema)]
    pub slug: String,
    #[schema(schema_with = validate::email_schema)]
    pub owner_email: String,
}

/// Create a tenant with an owner user and owner API key (operator token only).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 201, body = NewTenant)))]
async fn create_tenant_handler(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateTenant>,
) -> Result<(StatusCode, Json<NewTenant>)> {
    p.operator()?;
    validate::name("name", &body.name)?;
    validate::slug(&body.slug)?;
    validate::email(&body.owner_email)?;
    let t = create_tenant(&s.pool, &body.name, &body.slug, &body.owner_email).await?;
    Ok((CREATED, Json(t)))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// DNS label naming the tenant in model URIs and to the CA.
    pub slug: String,
    /// Price plan; `null` means the public `standard` plan.
    pub plan_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The caller's tenant.
#[utoipa::path(get, path = "/v1/tenant", tag = "tenants",
    responses((status = 200, body = Tenant)))]
async fn get_tenant(State(s): State<AppState>, p: Principal) -> Result<Json<Tenant>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let t = sqlx::query_as("SELECT id, name, slug, plan_id, created_at FROM tenants WHERE id = $1")
        .bind(c.tenant_id)
        .fetch_optional(&s.pool)
        .await?
        .ok_or(Error::NotFound("tenant"))?;
    Ok(Json(t))
}

/// Who the caller is: its tenant, its user and role, and what its key may do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub tenant: Tenant,
    pub user: User,
    pub key_id: Uuid,
    /// The key's scopes. What the caller may do is its role intersected with these.
    pub scopes: Vec<Scope>,
}

/// The caller: tenant, user, role and key scopes (any role). Consoles use it to sign in.
#[utoipa::path(get, path = "/v1/me", tag = "tenants",
    responses((status = 200, body = Me)))]
async fn whoami(State(s): State<AppState>, p: Principal) -> Result<Json<Me>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let mut conn = s.pool.acquire().await?;
    let tenant: Tenant =
        sqlx::query_as("SELECT id, name, slug, plan_id, created_at FROM tenants WHERE id = $1")
            .bind(c.tenant_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(Error::NotFound("tenant"))?;
    let user: User = sqlx::query_as(
        "SELECT id, email, role, created_at FROM users WHERE id = $1 AND tenant_id = $2",
    )
    .bind(c.user_id)
    .bind(c.tenant_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(Error::NotFound("user"))?;
    let mut scopes = c.scopes.clone();
    scopes.sort();
    scopes.dedup();
    Ok(Json(Me {
        tenant,
        user,
        key_id: c.key_id,
        scopes,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPlan {
    pub plan_id: Uuid,
}

/// Choose the tenant's price plan (owner, admin scope). Applies to invoices drafted afterwards.
#[utoipa::path(put, path = "/v1/tenant/plan", tag = "tenants", request_body = SetPlan,
    responses((status = 200, body = Tenant)))]
async fn set_plan(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<SetPlan>,
) -> Result<Json<Tenant>> {
    let c = p.tenant(Role::Owner, Scope::Admin)?;
    let mut tx = s.pool.begin().await?;
    let visible: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM price_plans WHERE id = $1 AND (tenant_id IS NULL OR tenant_id = $2)",
    )
    .bind(body.plan_id)
    .bind(c.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    visible.ok_or(Error::NotFound("price plan"))?;
    let t: Tenant = sqlx::query_as(
        "UPDATE tenants SET plan_id = $1 WHERE id = $2 RETURNING id, name, slug, plan_id, created_at",
    )
    .bind(body.plan_id)
    .bind(c.tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "tenant.set_plan",
        "price_plan",
        &body.plan_id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(t))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    #[schema(schema_with = validate::email_schema)]
    pub email: String,
    pub role: Role,
}

/// List the tenant's users (admin).
#[utoipa::path(get, path = "/v1/users", tag = "users", params(PageParams),
    responses((status = 200, body = Page<User>)))]
async fn list_users(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<User>>> {
    let c = p.tenant(Role::Admin, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<User> = sqlx::query_as(
        "SELECT id, email, role, created_at FROM users WHERE tenant_id = $1
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

/// Add a user (admin, admin scope; nobody grants a role above their own).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User)))]
async fn create_user(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateUser>,
) -> Result<(StatusCode, Json<User>)> {
    let c = p.tenant(Role::Admin, Scope::Admin)?;
    validate::email(&body.email)?;
    if body.role > c.role {
        return Err(Error::Forbidden(format!(
            "cannot grant role {} above your own ({})",
            body.role.as_str(),
            c.role.as_str()
        )));
    }
    let mut tx = s.pool.begin().await?;
    let u: User = sqlx::query_as(
        "INSERT INTO users (id, tenant_id, email, role) VALUES ($1, $2, $3, $4)
         RETURNING id, email, role, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(c.tenant_id)
    .bind(&body.email)
    .bind(body.role.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(unique_to_conflict("a user with this email"))?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "user.create",
        "user",
        &u.id.to_string(),
        serde_json::json!({"email": body.email, "role": body.role}),
    )
    .await?;
    tx.commit().await?;
    Ok((CREATED, Json(u)))
}

/// One user (admin).
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses((status = 200, body = User)))]
async fn get_user(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<User>> {
    let c = p.tenant(Role::Admin, Scope::Read)?;
    let u = sqlx::query_as(
        "SELECT id, email, role, created_at FROM users WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("user"))?;
    Ok(Json(u))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: Role,
}

/// Change a user's role (admin, admin scope). Nobody grants a role above their own, only an owner
/// changes an owner's role, and a tenant always keeps at least one owner (409 `last_owner`).
/// Takes effect on the user's keys at their next request.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users",
    params(("id" = Uuid, Path, description = "User id")), request_body = SetRole,
    responses((status = 200, body = User)))]
async fn set_role(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
    Json(body): Json<SetRole>,
) -> Result<Json<User>> {
    let c = p.tenant(Role::Admin, Scope::Admin)?;
    let mut tx = s.pool.begin().await?;
    // Serialise role changes within the tenant so two demotions cannot remove the last owner.
    sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(c.tenant_id)
        .execute(&mut *tx)
        .await?;
    let current: User = sqlx::query_as(
        "SELECT id, email, role, created_at FROM users WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound("user"))?;
    if body.role > c.role || current.role > c.role {
        return Err(Error::Forbidden(format!(
            "cannot change a {} to {}: both must be at most your own role ({})",
            current.role.as_str(),
            body.role.as_str(),
            c.role.as_str()
        )));
    }
    if current.role == Role::Owner && body.role != Role::Owner {
        let owners: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE tenant_id = $1 AND role = 'owner'",
        )
        .bind(c.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if owners <= 1 {
            return Err(Error::conflict(
                "last_owner",
                "a tenant keeps at least one owner: make another user owner first",
            ));
        }
    }
    let u: User = sqlx::query_as(
        "UPDATE users SET role = $3 WHERE id = $1 AND tenant_id = $2
         RETURNING id, email, role, created_at",
    )
    .bind(id)
    .bind(c.tenant_id)
    .bind(body.role.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if current.role != body.role {
        audit(
            &mut tx,
            c.tenant_id,
            &c.actor(),
            "user.set_role",
            "user",
            &id.to_string(),
            serde_json::json!({"from": current.role, "to": body.role}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(u))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// The public part of the key (`nxk_<prefix>_…`).
    pub prefix: String,
    #[schema(value_type = Vec<Scope>)]
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[schema(schema_with = validate::name_schema)]
    pub name: String,
    /// Owner of the key; default the caller's user. Another user's key needs role admin.
    pub user_id: Option<Uuid>,
    /// Subset of the caller's own scopes (403 `forbidden` otherwise).
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Seconds from now until the key stops working (1 minute to 10 years); never when absent.
    #[serde(default, deserialize_with = "crate::num::opt_u64")]
    #[schema(minimum = 60, maximum = 315360000)]
    pub expires_in_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The full key. Shown only in this response.
    pub api_key: String,
}

/// List API keys: admins see all of the tenant's, others their own.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", params(PageParams),
    responses((status = 200, body = Page<ApiKey>)))]
async fn list_keys(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<ApiKey>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let only_user = (c.role < Role::Admin).then_some(c.user_id);
    let rows: Vec<ApiKey> = sqlx::query_as(
        "SELECT id, user_id, name, prefix, scopes, expires_at, revoked_at, created_at
           FROM api_keys WHERE tenant_id = $1 AND ($5::uuid IS NULL OR user_id = $5)
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(c.tenant_id)
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .bind(only_user)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(Page::new(rows, limit, |r| After {
        created_at: r.created_at,
        id: r.id,
    })))
}

/// Create an API key. The response holds the key; it cannot be shown again.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateKey,
    responses((status = 201, body = CreatedKey)))]
async fn create_key(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    validate::name("name", &body.name)?;
    if body.scopes.is_empty() {
        return Err(Error::invalid(
            "scopes must name at least one of read, write, admin",
        ));
    }
    if let Some(sc) = body.scopes.iter().find(|sc| !c.scopes.contains(sc)) {
        return Err(Error::Forbidden(format!(
            "cannot grant scope {} that the calling key lacks",
            sc.as_str()
        )));
    }
    let expires_at = match body.expires_in_seconds {
        None => None,
        Some(s @ 60..=315_360_000) => i64::try_from(s)
            .ok()
            .map(|s| Utc::now() + chrono::Duration::seconds(s)),
        Some(_) => {
            return Err(Error::invalid(
                "expires_in_seconds must be from 60 (a minute) to 315360000 (ten years)",
            ));
        }
    };
    let user_id = body.user_id.unwrap_or(c.user_id);
    if user_id != c.user_id {
        c.require(Role::Admin, Scope::Admin)?;
    } else {
        c.require(Role::Member, Scope::Write)?;
    }
    let mut tx = s.pool.begin().await?;
    let role: String =
        sqlx::query_scalar("SELECT role FROM users WHERE id = $1 AND tenant_id = $2")
            .bind(user_id)
            .bind(c.tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(Error::NotFound("user"))?;
    if Role::parse(&role).is_none_or(|r| r > c.role) {
        return Err(Error::Forbidden(
            "cannot create a key for a user above your role".into(),
        ));
    }
    let (id, token, _) = insert_key(
        &mut tx,
        c.tenant_id,
        user_id,
        &body.name,
        &body.scopes,
        expires_at,
    )
    .await?;
    let key: ApiKey = sqlx::query_as(
        "SELECT id, user_id, name, prefix, scopes, expires_at, revoked_at, created_at
           FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "api_key.create",
        "api_key",
        &id.to_string(),
        serde_json::json!({"user_id": user_id, "scopes": body.scopes, "expires_at": expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok((
        CREATED,
        Json(CreatedKey {
            key,
            api_key: token,
        }),
    ))
}

/// Revoke an API key: one's own (any role, with a write-scoped key), anyone's (admin, admin
/// scope). Takes effect on the next request.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = Uuid, Path, description = "API key id")),
    responses((status = 204)))]
async fn revoke_key(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Viewer, Scope::Write)?;
    let mut tx = s.pool.begin().await?;
    let owner: Uuid = sqlx::query_scalar(
        "SELECT user_id FROM api_keys WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound("api key"))?;
    if owner != c.user_id {
        c.require(Role::Admin, Scope::Admin)?;
    }
    let n = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(c.tenant_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n > 0 {
        audit(
            &mut tx,
            c.tenant_id,
            &c.actor(),
            "api_key.revoke",
            "api_key",
            &id.to_string(),
            serde_json::json!({}),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AuditEvent {
    pub id: Uuid,
    pub actor: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The tenant's audit log, newest first (admin). Append-only: the database refuses changes.
#[utoipa::path(get, path = "/v1/audit-events", tag = "audit", params(PageParams),
    responses((status = 200, body = Page<AuditEvent>)))]
async fn list_audit(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<AuditEvent>>> {
    let c = p.tenant(Role::Admin, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<AuditEvent> = sqlx::query_as(
        "SELECT id, actor, action, target_type, target_id, details, created_at
           FROM audit_log WHERE tenant_id = $1
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
