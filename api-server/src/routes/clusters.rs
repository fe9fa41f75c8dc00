//! Registered clusters, and the fleet rollouts they report.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
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
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, delete_cluster))
        .routes(routes!(report_rollout))
        .routes(routes!(list_rollouts))
}

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
    #[schema(schema_with = validate::name_schema)]
    pub name: String,
    #[schema(schema_with = validate::name_schema)]
    pub region: String,
}

/// List registered clusters, newest first.
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters", params(PageParams),
    responses((status = 200, body = Page<Cluster>)))]
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

/// Register a cluster. Names are unique in the tenant.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters", request_body = CreateCluster,
    responses((status = 201, body = Cluster)))]
async fn create_cluster(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreateCluster>,
) -> Result<(StatusCode, Json<Cluster>)> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    validate::name("name", &body.name)?;
    validate::name("region", &body.region)?;
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
    .map_err(unique_to_conflict("a cluster with this name"))?;
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
    responses((status = 200, body = Cluster)))]
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

/// Deregister a cluster (and forget the rollouts it reported).
#[utoipa::path(delete, path = "/v1/clusters/{id}", tag = "clusters",
    params(("id" = Uuid, Path, description = "Cluster id")),
    responses((status = 204, description = "Deregistered")))]
async fn delete_cluster(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    delete_owned(&s, c, "clusters", "cluster", "cluster", id).await
}

// ---------------------------------------------------------------- rollouts

/// A Fabric's rollout phase, as `Fabric.status.phase` (`nexus-crds`) says it; a test holds the
/// two lists equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RolloutPhase {
    Pending,
    Progressing,
    Paused,
    Ready,
    /// Finished, with some nodes left on their previous firmware.
    Degraded,
    Halted,
    RollingBack,
    RolledBack,
}

impl RolloutPhase {
    const ALL: [RolloutPhase; 8] = [
        RolloutPhase::Pending,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Ready,
        RolloutPhase::Degraded,
        RolloutPhase::Halted,
        RolloutPhase::RollingBack,
        RolloutPhase::RolledBack,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Pending => "Pending",
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Ready => "Ready",
            RolloutPhase::Degraded => "Degraded",
            RolloutPhase::Halted => "Halted",
            RolloutPhase::RollingBack => "RollingBack",
            RolloutPhase::RolledBack => "RolledBack",
        }
    }

    /// Whether the rollout still moves (not settled: `Ready`, `Degraded` or `RolledBack`).
    pub fn in_progress(self) -> bool {
        !matches!(
            self,
            RolloutPhase::Ready | RolloutPhase::Degraded | RolloutPhase::RolledBack
        )
    }
}

impl TryFrom<String> for RolloutPhase {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        RolloutPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutReport {
    pub phase: RolloutPhase,
    /// Firmware version the Fabric rolls to.
    #[schema(schema_with = validate::version_schema)]
    pub target_version: String,
    #[serde(deserialize_with = "crate::num::u32")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub nodes_total: u32,
    /// Nodes running the target and healthy.
    #[serde(deserialize_with = "crate::num::u32")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub nodes_updated: u32,
    #[serde(deserialize_with = "crate::num::u32")]
    #[schema(minimum = 0, maximum = 1000000)]
    pub nodes_failed: u32,
    /// What is happening, in words (e.g. the condition message).
    #[serde(default)]
    #[schema(schema_with = validate::reason_schema)]
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Rollout {
    pub cluster_id: Uuid,
    pub cluster_name: String,
    pub fabric: String,
    #[sqlx(try_from = "String")]
    pub phase: RolloutPhase,
    /// Whether the phase is one that still moves (not `Ready`, `Degraded` or `RolledBack`).
    pub in_progress: bool,
    pub target_version: String,
    pub nodes_total: i32,
    pub nodes_updated: i32,
    pub nodes_failed: i32,
    pub message: String,
    pub reported_at: DateTime<Utc>,
}

const ROLLOUT_COLS: &str = "r.cluster_id, c.name AS cluster_name, r.fabric, r.phase,
    r.phase NOT IN ('Ready', 'Degraded', 'RolledBack') AS in_progress, r.target_version, r.nodes_total,
    r.nodes_updated, r.nodes_failed, r.message, r.reported_at";

/// Report a Fabric's rollout (the cluster's rollout controller, with a member key). The latest
/// report per cluster and Fabric is kept. Reports are status, not changes, so they are not audited.
#[utoipa::path(put, path = "/v1/clusters/{id}/rollouts/{fabric}", tag = "clusters",
    params(("id" = Uuid, Path, description = "Cluster id"),
           ("fabric" = String, Path, description = "Fabric name", pattern = "^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")),
    request_body = RolloutReport,
    responses((status = 200, body = Rollout)))]
async fn report_rollout(
    State(s): State<AppState>,
    p: Principal,
    Path((id, fabric)): Path<(Uuid, String)>,
    Json(body): Json<RolloutReport>,
) -> Result<Json<Rollout>> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    if !validate::fabric(&fabric) {
        return Err(Error::NotFound("fabric"));
    }
    validate::version(&body.target_version)?;
    validate::text("message", &body.message, 1000)?;
    let max = 1_000_000;
    if body.nodes_total > max || body.nodes_updated > max || body.nodes_failed > max {
        return Err(Error::invalid("node counts must be at most 1000000"));
    }
    let cluster: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM clusters WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(c.tenant_id)
            .fetch_optional(&s.pool)
            .await?;
    cluster.ok_or(Error::NotFound("cluster"))?;
    let n = |v: u32| i32::try_from(v).unwrap_or(i32::MAX); // ≤ 10^6, checked above
    let r: Rollout = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH up AS (
            INSERT INTO cluster_rollouts (tenant_id, cluster_id, fabric, phase, target_version,
                    nodes_total, nodes_updated, nodes_failed, message, reported_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
            ON CONFLICT (cluster_id, fabric) DO UPDATE SET phase = EXCLUDED.phase,
                target_version = EXCLUDED.target_version, nodes_total = EXCLUDED.nodes_total,
                nodes_updated = EXCLUDED.nodes_updated, nodes_failed = EXCLUDED.nodes_failed,
                message = EXCLUDED.message, reported_at = EXCLUDED.reported_at
            RETURNING *)
         SELECT {ROLLOUT_COLS} FROM up r JOIN clusters c ON c.id = r.cluster_id"
    )))
    .bind(c.tenant_id)
    .bind(id)
    .bind(&fabric)
    .bind(body.phase.as_str())
    .bind(&body.target_version)
    .bind(n(body.nodes_total))
    .bind(n(body.nodes_updated))
    .bind(n(body.nodes_failed))
    .bind(&body.message)
    .fetch_one(&s.pool)
    .await?;
    Ok(Json(r))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RolloutQuery {
    /// Only rollouts still in progress (default false: all).
    pub in_progress: Option<bool>,
}

/// The tenant's Fabric rollouts as its clusters last reported them (at most 500, most recently
/// reported first).
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutList {
    pub data: Vec<Rollout>,
}

/// Fleet rollouts across the tenant's clusters.
#[utoipa::path(get, path = "/v1/rollouts", tag = "clusters", params(RolloutQuery),
    responses((status = 200, body = RolloutList)))]
async fn list_rollouts(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<RolloutQuery>,
) -> Result<Json<RolloutList>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let data: Vec<Rollout> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROLLOUT_COLS} FROM cluster_rollouts r JOIN clusters c ON c.id = r.cluster_id
          WHERE r.tenant_id = $1 AND (NOT $2 OR r.phase NOT IN ('Ready', 'Degraded', 'RolledBack'))
          ORDER BY r.reported_at DESC, r.cluster_id, r.fabric LIMIT 500"
    )))
    .bind(c.tenant_id)
    .bind(q.in_progress.unwrap_or(false))
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(RolloutList { data }))
}

#[cfg(test)]
mod tests {
    use super::RolloutPhase;
    use nexus_crds::fabric::FabricPhase;

    /// Exhaustive: a phase added to the CRD fails to compile here until the API knows it.
    fn from_crd(p: FabricPhase) -> RolloutPhase {
        match p {
            FabricPhase::Pending => RolloutPhase::Pending,
            FabricPhase::Progressing => RolloutPhase::Progressing,
            FabricPhase::Paused => RolloutPhase::Paused,
            FabricPhase::Ready => RolloutPhase::Ready,
            FabricPhase::Degraded => RolloutPhase::Degraded,
            FabricPhase::Halted => RolloutPhase::Halted,
            FabricPhase::RollingBack => RolloutPhase::RollingBack,
            FabricPhase::RolledBack => RolloutPhase::RolledBack,
        }
    }

    #[test]
    fn phases_are_the_crds() {
        for p in RolloutPhase::ALL {
            let crd: FabricPhase = serde_json::from_value(serde_json::json!(p.as_str()))
                .unwrap_or_else(|e| panic!("{p:?} is not a FabricPhase: {e}"));
            assert_eq!(from_crd(crd), p);
            assert_eq!(serde_json::json!(crd), serde_json::json!(p));
        }
    }
}
