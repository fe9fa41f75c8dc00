//! Usage ingestion and hourly/daily usage queries.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{Principal, Role, Scope};
use crate::error::{Error, Problem, Result};
use crate::extract::{Json, Query};
use crate::metering::{self, Granularity, IngestReport, Meter, UsageBatch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .routes(routes!(query_usage))
}

/// Ingest a batch of at most 1,000 usage events (member, write). Exactly once per
/// (tenant, idempotency key): a retried batch reports `duplicate` and is billed once; reusing a key for a different event
/// reports `conflict` and stores nothing. Events
/// outside the late-arrival window, in the future, or in an invoiced month are rejected one by one.
#[utoipa::path(post, path = "/v1/usage/events", tag = "usage", request_body = UsageBatch,
    responses((status = 200, body = IngestReport), (status = "4XX", body = Problem)))]
async fn ingest(
    State(s): State<AppState>,
    p: Principal,
    Json(batch): Json<UsageBatch>,
) -> Result<Json<IngestReport>> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    if batch.events.is_empty() {
        return Err(Error::invalid("events must hold 1 to 1000 events"));
    }
    let report = metering::ingest(
        &s.pool,
        c.tenant_id,
        &batch.events,
        Utc::now(),
        s.config.window,
    )
    .await?;
    let m = &s.metrics.usage_events;
    for (outcome, n) in [
        ("accepted", report.accepted),
        ("duplicate", report.duplicates),
        ("conflict", report.conflicts),
        ("rejected", report.rejected),
    ] {
        m.get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc_by(n as u64);
    }
    Ok(Json(report))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// One meter; all meters when absent.
    pub meter: Option<Meter>,
    /// Start (inclusive, RFC 3339); default 24 hours before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive, RFC 3339); default now.
    pub to: Option<DateTime<Utc>>,
    /// `hour` (default; span ≤ 31 days) or `day` (span ≤ 400 days).
    pub granularity: Option<Granularity>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UsageBucket {
    pub meter: String,
    pub start: DateTime<Utc>,
    pub quantity: i64,
    pub events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageSeries {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    /// Non-empty buckets, by meter then time.
    pub buckets: Vec<UsageBucket>,
}

/// Usage by hour or day, from the hourly rollup.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageSeries), (status = "4XX", body = Problem)))]
async fn query_usage(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageSeries>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - Duration::hours(24));
    let granularity = q.granularity.unwrap_or_default();
    let max = match granularity {
        Granularity::Hour => Duration::days(31),
        Granularity::Day => Duration::days(400),
    };
    if from >= to || to - from > max {
        return Err(Error::bad_request(
            "invalid_range",
            format!(
                "need from < to and a span of at most {} days",
                max.num_days()
            ),
        ));
    }
    let unit = match granularity {
        Granularity::Hour => "hour",
        Granularity::Day => "day",
    };
    let buckets: Vec<UsageBucket> = sqlx::query_as(
        "SELECT meter, date_trunc($5, hour, 'UTC') AS start,
                sum(quantity)::int8 AS quantity, sum(events)::int8 AS events
           FROM usage_hourly
          WHERE tenant_id = $1 AND hour >= date_trunc('hour', $2::timestamptz, 'UTC') AND hour < $3
            AND ($4::text IS NULL OR meter = $4)
          GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(c.tenant_id)
    .bind(from)
    .bind(to)
    .bind(q.meter.map(Meter::as_str))
    .bind(unit)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(UsageSeries {
        from,
        to,
        granularity,
        buckets,
    }))
}
