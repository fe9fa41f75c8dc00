//! Usage ingestion and hourly/daily usage queries.

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{Principal, Role, Scope};
use crate::error::{Error, Result};
use crate::extract::{Json, Query};
use crate::metering::{self, Granularity, IngestReport, Meter, SystemUsageBatch, UsageBatch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest))
        .routes(routes!(ingest_system))
        .routes(routes!(query_usage))
}

/// Ingest a batch of 1 to 1,000 usage events. Exactly once per (tenant, idempotency key): a
/// retried batch reports `duplicate` and is billed once; reusing a key for a different event
/// reports `conflict` and stores nothing. Events outside the late-arrival window, in the future,
/// or in an invoiced month are `rejected` one by one, with a reason; an event that breaks the
/// document's field rules makes the whole request a 422.
#[utoipa::path(post, path = "/v1/usage/events", tag = "usage", request_body = UsageBatch,
    responses((status = 200, body = IngestReport)))]
async fn ingest(
    State(s): State<AppState>,
    p: Principal,
    Json(batch): Json<UsageBatch>,
) -> Result<Json<IngestReport>> {
    let c = p.tenant(Role::Member, Scope::Write)?;
    if batch.events.is_empty() || batch.events.len() > metering::MAX_BATCH {
        return Err(Error::invalid("events must hold 1 to 1000 events"));
    }
    if let Some((i, why)) = batch
        .events
        .iter()
        .enumerate()
        .find_map(|(i, e)| metering::shape_error(e).map(|w| (i, w)))
    {
        return Err(Error::invalid(format!("events[{i}].{why}")));
    }
    let report = metering::ingest(
        &s.pool,
        c.tenant_id,
        &batch.events,
        Utc::now(),
        s.config.window,
    )
    .await?;
    count(&s, &report);
    Ok(Json(report))
}

/// Ingest usage measured by Nexus itself, for any tenant: dataplane bytes and messages per
/// tenant, domain and delivery mode, `mics_issued` from the CA, `cluster_hours` from the
/// controller. Each event names its tenant (slug or id); otherwise the rules are those of
/// `POST /v1/usage/events`: exactly once per (tenant, idempotency key), so a batch replayed from
/// a component's spool after a lost acknowledgement is billed once. An event for an unknown
/// tenant is `rejected` (`unknown_tenant`), the others still count.
#[utoipa::path(post, path = "/v1/system/usage-events", tag = "usage",
    request_body = SystemUsageBatch, responses((status = 200, body = IngestReport)))]
async fn ingest_system(
    State(s): State<AppState>,
    p: Principal,
    Json(batch): Json<SystemUsageBatch>,
) -> Result<Json<IngestReport>> {
    p.service()?;
    if batch.events.is_empty() || batch.events.len() > metering::MAX_BATCH {
        return Err(Error::invalid("events must hold 1 to 1000 events"));
    }
    if let Some((i, why)) = batch
        .events
        .iter()
        .enumerate()
        .find_map(|(i, e)| metering::shape_error(&e.event()).map(|w| (i, w)))
    {
        return Err(Error::invalid(format!("events[{i}].{why}")));
    }
    let report =
        metering::ingest_system(&s.pool, &batch.events, Utc::now(), s.config.window).await?;
    count(&s, &report);
    Ok(Json(report))
}

fn count(s: &AppState, report: &IngestReport) {
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
}

/// How usage buckets are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One series per meter (default).
    #[default]
    Meter,
    /// One series per meter and routing domain (the events' `domain` dimension).
    Domain,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// One meter; all meters when absent.
    pub meter: Option<Meter>,
    /// Start (inclusive, RFC 3339); default 24 hours before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive, RFC 3339); default now. A range with `to` ≤ `from` is empty. A range
    /// longer than 31 days (hourly) or 400 days (daily) is cut at that length: the response's
    /// `to` says where it ends, so a client can ask for the rest.
    pub to: Option<DateTime<Utc>>,
    /// `hour` (default) or `day`; days are UTC days.
    pub granularity: Option<Granularity>,
    /// `meter` (default) or `domain`.
    pub group_by: Option<GroupBy>,
    /// Only usage whose `domain` dimension is this value (events without one have `""`).
    #[param(max_length = 256)]
    pub domain: Option<String>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UsageBucket {
    pub meter: Meter,
    /// The `domain` dimension (`""` for usage without one); present when grouped by domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub start: DateTime<Utc>,
    /// Sum of the events' quantities, in the meter's base unit (saturating at 2^63−1).
    pub quantity: i64,
    pub events: i64,
}

#[derive(sqlx::FromRow)]
struct BucketRow {
    meter: String,
    domain: Option<String>,
    start: DateTime<Utc>,
    quantity: i64,
    events: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageSeries {
    pub from: DateTime<Utc>,
    /// End of the answered range: the requested `to`, or earlier when the range was cut.
    pub to: DateTime<Utc>,
    pub granularity: Granularity,
    pub group_by: GroupBy,
    /// Non-empty buckets, by meter (then domain) then time.
    pub buckets: Vec<UsageBucket>,
}

/// The answered range: `[from, to)` cut to the longest span the granularity allows.
pub fn answered_range(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    granularity: Granularity,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let max = match granularity {
        Granularity::Hour => Duration::days(31),
        Granularity::Day => Duration::days(400),
    };
    let to = to.max(from);
    match from.checked_add_signed(max) {
        Some(limit) if limit < to => (from, limit),
        _ => (from, to),
    }
}

/// Usage by hour or day, per meter or per meter and routing domain, from the hourly rollups.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageSeries)))]
async fn query_usage(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageSeries>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q
        .from
        .unwrap_or_else(|| to.checked_sub_signed(Duration::hours(24)).unwrap_or(to));
    let granularity = q.granularity.unwrap_or_default();
    let group_by = q.group_by.unwrap_or_default();
    if q.domain.as_ref().is_some_and(|d| d.chars().count() > 256) {
        return Err(Error::bad_request(
            "invalid_query",
            "domain is longer than 256 characters",
        ));
    }
    let (from, to) = answered_range(from, to, granularity);
    let unit = match granularity {
        Granularity::Hour => "hour",
        Granularity::Day => "day",
    };
    // The per-domain rollup answers both shapes when a domain filter or grouping is asked for.
    let by_domain = group_by == GroupBy::Domain || q.domain.is_some();
    let sql = if by_domain {
        "SELECT meter, CASE WHEN $7 THEN domain END AS domain, date_trunc($5, hour, 'UTC') AS start,
                LEAST(sum(quantity), 9223372036854775807)::int8 AS quantity, sum(events)::int8 AS events
           FROM usage_hourly_domain
          WHERE tenant_id = $1 AND hour >= date_trunc('hour', $2::timestamptz, 'UTC') AND hour < $3
            AND ($4::text IS NULL OR meter = $4) AND ($6::text IS NULL OR domain = $6)
          GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    } else {
        "SELECT meter, NULL::text AS domain, date_trunc($5, hour, 'UTC') AS start,
                LEAST(sum(quantity), 9223372036854775807)::int8 AS quantity, sum(events)::int8 AS events
           FROM usage_hourly
          WHERE tenant_id = $1 AND hour >= date_trunc('hour', $2::timestamptz, 'UTC') AND hour < $3
            AND ($4::text IS NULL OR meter = $4) AND ($6::text IS NULL OR $7)
          GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    };
    let rows: Vec<BucketRow> = if from >= to {
        Vec::new()
    } else {
        sqlx::query_as(sql)
            .bind(c.tenant_id)
            .bind(from)
            .bind(to)
            .bind(q.meter.map(Meter::as_str))
            .bind(unit)
            .bind(q.domain.as_deref())
            .bind(group_by == GroupBy::Domain)
            .fetch_all(&s.pool)
            .await?
    };
    let buckets = rows
        .into_iter()
        .filter_map(|r| {
            Some(UsageBucket {
                meter: Meter::parse(&r.meter)?,
                domain: r.domain,
                start: r.start,
                quantity: r.quantity,
                events: r.events,
            })
        })
        .collect();
    Ok(Json(UsageSeries {
        from,
        to,
        granularity,
        group_by,
        buckets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_not_refused() {
        let t = |h: i64| DateTime::from_timestamp(1_700_000_000 + h * 3600, 0).unwrap_or_default();
        assert_eq!(answered_range(t(0), t(5), Granularity::Hour), (t(0), t(5)));
        assert_eq!(answered_range(t(5), t(0), Granularity::Hour), (t(5), t(5)));
        assert_eq!(
            answered_range(t(0), t(24 * 40), Granularity::Hour),
            (t(0), t(24 * 31))
        );
        assert_eq!(
            answered_range(t(0), t(24 * 40), Granularity::Day),
            (t(0), t(24 * 40))
        );
    }
}
