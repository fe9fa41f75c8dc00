//! Usage metering: the pure decisions (which events are acceptable, which were duplicates) and the
//! one SQL statement that stores a batch exactly once and keeps the hourly rollup in step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{Error, Result};

/// What is metered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// Bytes carried by the dataplane.
    TrafficBytes,
    /// Model identity certificates issued.
    MicsIssued,
    /// Hours a registered cluster was connected.
    ClusterHours,
}

impl Meter {
    pub const ALL: [Meter; 3] = [Meter::TrafficBytes, Meter::MicsIssued, Meter::ClusterHours];

    pub fn as_str(self) -> &'static str {
        match self {
            Meter::TrafficBytes => "traffic_bytes",
            Meter::MicsIssued => "mics_issued",
            Meter::ClusterHours => "cluster_hours",
        }
    }

    pub fn parse(s: &str) -> Option<Meter> {
        Meter::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest batch accepted by one request.
pub const MAX_BATCH: usize = 1000;

/// One usage event as sent by a dataplane or the CA.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    pub meter: Meter,
    /// Non-negative integer in the meter's base unit (bytes, MICs, cluster-hours).
    #[serde(deserialize_with = "crate::num::u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub quantity: u64,
    /// When the usage happened (RFC 3339). Accepted within the late-arrival window (48 h by
    /// default) and 5 minutes of clock skew, outside months already invoiced; otherwise the event
    /// is `rejected` in the report with a reason (the request still succeeds).
    pub timestamp: DateTime<Utc>,
    /// Free-form string dimensions, e.g. `domain` (the routing domain; usage is queryable by it),
    /// `delivery_mode`.
    #[serde(default)]
    #[schema(schema_with = dimensions_schema)]
    pub dimensions: BTreeMap<String, String>,
    /// Unique per tenant: a retried event with the same key is counted once.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\x00]*$")]
    pub idempotency_key: String,
}

fn dimensions_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let value = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL_PATTERN))
        .max_length(Some(MAX_DIMENSION_LEN));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(value.build().into())))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_NUL_PATTERN))
                .max_length(Some(MAX_DIMENSION_LEN)),
        ))
        .max_properties(Some(MAX_DIMENSIONS))
        .description(Some(
            "At most 32 entries; names and values at most 256 characters.",
        ))
        .examples([serde_json::json!({"domain": "prod", "delivery_mode": "stream"})])
        .build()
}

/// Strings stored as text or JSON cannot hold NUL (PostgreSQL refuses it).
pub const NO_NUL_PATTERN: &str = "^[^\\x00]*$";

/// Most dimensions on one event.
pub const MAX_DIMENSIONS: usize = 32;
/// Longest dimension name or value, in characters.
pub const MAX_DIMENSION_LEN: usize = 256;
/// Longest idempotency key, in characters.
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<UsageEvent>,
}

/// One usage event measured by Nexus itself, on behalf of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemUsageEvent {
    /// The tenant's slug (as the CA and model URIs name it) or id.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\x00]*$")]
    pub tenant: String,
    pub meter: Meter,
    /// Non-negative integer in the meter's base unit (bytes, MICs, cluster-hours).
    #[serde(deserialize_with = "crate::num::u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub quantity: u64,
    /// When the usage happened (RFC 3339); the window rules of tenant-reported usage apply.
    pub timestamp: DateTime<Utc>,
    /// String dimensions: `domain`, `delivery_mode`, `fabric`, `source`, ….
    #[serde(default)]
    #[schema(schema_with = dimensions_schema)]
    pub dimensions: BTreeMap<String, String>,
    /// Unique per tenant: a replayed event with the same key is counted once.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\x00]*$")]
    pub idempotency_key: String,
}

impl SystemUsageEvent {
    /// The event as its tenant would have reported it.
    pub fn event(&self) -> UsageEvent {
        UsageEvent {
            meter: self.meter,
            quantity: self.quantity,
            timestamp: self.timestamp,
            dimensions: self.dimensions.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemUsageBatch {
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<SystemUsageEvent>,
}

/// Why one event of a batch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Older than the late-arrival window.
    TooOld,
    /// Further in the future than the allowed clock skew.
    InFuture,
    /// Falls in a month whose invoice is finalized.
    PeriodClosed,
    /// Idempotency key empty or longer than 255 characters.
    InvalidIdempotencyKey,
    /// Quantity above 2^63-1.
    QuantityTooLarge,
    /// More than 32 dimensions, or a name or value longer than 256 characters.
    InvalidDimensions,
    /// System-reported usage naming no known tenant.
    UnknownTenant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored now, billed once.
    Accepted,
    /// Same idempotency key and same content as an event already stored: not billed again.
    Duplicate,
    /// Same idempotency key as a stored event but different content: not stored, not billed.
    /// A client bug worth surfacing (Stripe answers such reuse with an error).
    Conflict,
    /// Refused (see `reason`).
    Rejected,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventResult {
    pub index: usize,
    pub idempotency_key: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub conflicts: usize,
    pub rejected: usize,
    pub results: Vec<EventResult>,
}

/// The acceptance window for event timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// How late an event may arrive.
    pub late: Duration,
    /// How far ahead of the server clock an event may be stamped.
    pub skew: Duration,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            late: Duration::hours(48),
            skew: Duration::minutes(5),
        }
    }
}

/// The rules on an event's fields that the API document states (lengths, NUL, counts): an
/// event breaking one makes the whole request invalid (422), unlike the time and period rules,
/// which reject that event alone. `None` when the event is well formed.
pub fn shape_error(e: &UsageEvent) -> Option<String> {
    let chars = |s: &str| s.chars().count();
    let key = &e.idempotency_key;
    if key.is_empty() || chars(key) > MAX_KEY_LEN || key.contains('\0') {
        return Some(format!(
            "idempotency_key must be 1–{MAX_KEY_LEN} characters without NUL"
        ));
    }
    if i64::try_from(e.quantity).is_err() {
        return Some("quantity must be at most 9223372036854775807".into());
    }
    if e.dimensions.len() > MAX_DIMENSIONS {
        return Some(format!("dimensions: at most {MAX_DIMENSIONS} entries"));
    }
    for (k, v) in &e.dimensions {
        if chars(k) > MAX_DIMENSION_LEN
            || chars(v) > MAX_DIMENSION_LEN
            || k.contains('\0')
            || v.contains('\0')
        {
            return Some(format!(
                "dimensions: names and values are at most {MAX_DIMENSION_LEN} characters without NUL"
            ));
        }
    }
    None
}

/// Decides whether one event may be stored: pure, `now` and the closed periods are inputs.
pub fn check_event(
    e: &UsageEvent,
    now: DateTime<Utc>,
    window: Window,
    closed: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<(), RejectReason> {
    let chars = |s: &str| s.chars().count();
    let nul = |s: &str| s.contains('\0');
    if e.idempotency_key.is_empty()
        || chars(&e.idempotency_key) > MAX_KEY_LEN
        || nul(&e.idempotency_key)
    {
        return Err(RejectReason::InvalidIdempotencyKey);
    }
    if i64::try_from(e.quantity).is_err() {
        return Err(RejectReason::QuantityTooLarge);
    }
    if e.dimensions.len() > MAX_DIMENSIONS
        || e.dimensions.iter().any(|(k, v)| {
            chars(k) > MAX_DIMENSION_LEN || chars(v) > MAX_DIMENSION_LEN || nul(k) || nul(v)
        })
    {
        return Err(RejectReason::InvalidDimensions);
    }
    if e.timestamp < now - window.late {
        return Err(RejectReason::TooOld);
    }
    if e.timestamp > now + window.skew {
        return Err(RejectReason::InFuture);
    }
    if closed
        .iter()
        .any(|(start, end)| e.timestamp >= *start && e.timestamp < *end)
    {
        return Err(RejectReason::PeriodClosed);
    }
    Ok(())
}

/// What the database holds for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub meter: String,
    pub quantity: i64,
    pub timestamp: DateTime<Utc>,
    pub dimensions: BTreeMap<String, String>,
}

impl Stored {
    /// Whether `e` is the same event (timestamps compared at the database's microsecond precision).
    pub fn matches(&self, e: &UsageEvent) -> bool {
        self.meter == e.meter.as_str()
            && u64::try_from(self.quantity).ok() == Some(e.quantity)
            && self.timestamp.timestamp_micros() == e.timestamp.timestamp_micros()
            && self.dimensions == e.dimensions
    }
}

/// Builds the report from the per-event checks, the keys the database actually inserted, and
/// what it holds for the other keys. The first occurrence of an inserted key is `accepted`;
/// every other valid event is a `duplicate` if it matches the stored event, else a `conflict`.
pub fn classify(
    events: &[UsageEvent],
    checks: &[Result<(), RejectReason>],
    inserted: &HashSet<String>,
    stored: &HashMap<String, Stored>,
) -> IngestReport {
    let mut fresh: HashSet<&str> = inserted.iter().map(String::as_str).collect();
    let mut results = Vec::with_capacity(events.len());
    let (mut accepted, mut duplicates, mut conflicts, mut rejected) = (0, 0, 0, 0);
    for (i, (e, c)) in events.iter().zip(checks).enumerate() {
        let (outcome, reason) = match c {
            Err(r) => {
                rejected += 1;
                (Outcome::Rejected, Some(*r))
            }
            Ok(()) if fresh.remove(e.idempotency_key.as_str()) => {
                accepted += 1;
                (Outcome::Accepted, None)
            }
            Ok(())
                if stored
                    .get(&e.idempotency_key)
                    .is_some_and(|s| !s.matches(e)) =>
            {
                conflicts += 1;
                (Outcome::Conflict, None)
            }
            Ok(()) => {
                duplicates += 1;
                (Outcome::Duplicate, None)
            }
        };
        results.push(EventResult {
            index: i,
            idempotency_key: e.idempotency_key.clone(),
            outcome,
            reason,
        });
    }
    IngestReport {
        accepted,
        duplicates,
        conflicts,
        rejected,
        results,
    }
}

/// Stores a batch for `tenant_id`: validates each event, inserts the valid ones exactly once per
/// (tenant, idempotency key), and adds the inserted ones to the hourly rollup, in one transaction.
pub async fn ingest(
    pool: &sqlx::PgPool,
    tenant_id: Uuid,
    events: &[UsageEvent],
    now: DateTime<Utc>,
    window: Window,
) -> Result<IngestReport> {
    if events.len() > MAX_BATCH {
        return Err(Error::invalid(format!(
            "a batch holds at most {MAX_BATCH} events; got {}",
            events.len()
        )));
    }
    let mut tx = pool.begin().await?;
    billing_lock(&mut tx, tenant_id, false).await?;
    // Months already invoiced for good: usage in them would change a finalized invoice.
    let closed: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT period_start, period_end FROM invoices
          WHERE tenant_id = $1 AND status = 'finalized' AND period_end > $2",
    )
    .bind(tenant_id)
    .bind(now - window.late)
    .fetch_all(&mut *tx)
    .await?;
    let checks: Vec<Result<(), RejectReason>> = events
        .iter()
        .map(|e| check_event(e, now, window, &closed))
        .collect();

    let n = checks.iter().filter(|c| c.is_ok()).count();
    let (mut keys, mut meters, mut qty, mut ts, mut dims) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (e, _) in events.iter().zip(&checks).filter(|(_, c)| c.is_ok()) {
        keys.push(e.idempotency_key.as_str());
        meters.push(e.meter.as_str());
        qty.push(i64::try_from(e.quantity).unwrap_or(i64::MAX)); // checked above
        ts.push(e.timestamp);
        dims.push(serde_json::to_string(&e.dimensions).unwrap_or_else(|_| "{}".into()));
    }
    let inserted: Vec<String> = if n == 0 {
        Vec::new()
    } else {
        sqlx::query_scalar(
            "WITH input AS (
                 SELECT * FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::timestamptz[], $6::text[])
                     AS t(idempotency_key, meter, quantity, ts, dimensions)
             ), ins AS (
                 INSERT INTO usage_events (tenant_id, idempotency_key, meter, quantity, ts, dimensions)
                 SELECT $1, idempotency_key, meter, quantity, ts, dimensions::jsonb FROM input
                 ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
                 RETURNING idempotency_key, meter, quantity, ts, dimensions
             ), roll AS (
                 INSERT INTO usage_hourly (tenant_id, meter, hour, quantity, events)
                 SELECT $1, meter, date_trunc('hour', ts, 'UTC'), sum(quantity), count(*)
                   FROM ins GROUP BY 2, 3 ORDER BY 2, 3
                 ON CONFLICT (tenant_id, meter, hour) DO UPDATE
                    SET quantity = usage_hourly.quantity + EXCLUDED.quantity,
                        events = usage_hourly.events + EXCLUDED.events
             ), roll_domain AS (
                 INSERT INTO usage_hourly_domain (tenant_id, meter, domain, hour, quantity, events)
                 SELECT $1, meter, coalesce(dimensions->>'domain', ''), date_trunc('hour', ts, 'UTC'),
                        sum(quantity), count(*)
                   FROM ins GROUP BY 2, 3, 4 ORDER BY 2, 3, 4
                 ON CONFLICT (tenant_id, meter, domain, hour) DO UPDATE
                    SET quantity = usage_hourly_domain.quantity + EXCLUDED.quantity,
                        events = usage_hourly_domain.events + EXCLUDED.events
             )
             SELECT idempotency_key FROM ins",
        )
        .bind(tenant_id)
        .bind(&keys)
        .bind(&meters)
        .bind(&qty)
        .bind(&ts)
        .bind(&dims)
        .fetch_all(&mut *tx)
        .await?
    };
    let inserted: HashSet<String> = inserted.into_iter().collect();
    // Keys that were not stored by this batch (or repeat in it): compare with what is stored.
    let mut seen = HashSet::new();
    let again: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !inserted.contains(*k) || !seen.insert(*k))
        .collect();
    let mut stored = HashMap::new();
    if !again.is_empty() {
        let rows: Vec<(String, String, i64, DateTime<Utc>, serde_json::Value)> = sqlx::query_as(
            "SELECT idempotency_key, meter, quantity, ts, dimensions FROM usage_events
              WHERE tenant_id = $1 AND idempotency_key = ANY($2)",
        )
        .bind(tenant_id)
        .bind(&again)
        .fetch_all(&mut *tx)
        .await?;
        for (key, meter, quantity, timestamp, dims) in rows {
            let dimensions = serde_json::from_value(dims).unwrap_or_default();
            stored.insert(
                key,
                Stored {
                    meter,
                    quantity,
                    timestamp,
                    dimensions,
                },
            );
        }
    }
    tx.commit().await?;
    Ok(classify(events, &checks, &inserted, &stored))
}

/// Groups a system batch by tenant: for each tenant named, the indices of its events, in order.
/// Tenants are named by slug or id; `resolve` maps a name to its id when the tenant exists.
pub fn group_by_tenant(
    events: &[SystemUsageEvent],
    resolve: impl Fn(&str) -> Option<Uuid>,
) -> (BTreeMap<Uuid, Vec<usize>>, Vec<usize>) {
    let mut groups: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match resolve(&e.tenant) {
            Some(t) => groups.entry(t).or_default().push(i),
            None => unknown.push(i),
        }
    }
    (groups, unknown)
}

/// Stores a system batch: each tenant's events through [`ingest`] (one transaction per tenant,
/// in tenant-id order so concurrent batches take billing locks in one order), unknown tenants
/// rejected. A failure part-way leaves the earlier tenants stored; the sender's retry of the
/// whole batch then reports those as duplicates and bills them once.
pub async fn ingest_system(
    pool: &sqlx::PgPool,
    events: &[SystemUsageEvent],
    now: DateTime<Utc>,
    window: Window,
) -> Result<IngestReport> {
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.tenant.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, slug FROM tenants WHERE slug = ANY($1) OR id::text = ANY($1)")
            .bind(&names)
            .fetch_all(pool)
            .await?;
    let mut by_name: HashMap<String, Uuid> = HashMap::new();
    for (id, slug) in rows {
        by_name.insert(slug, id);
        by_name.insert(id.to_string(), id);
    }
    let (groups, unknown) = group_by_tenant(events, |n| {
        by_name
            .get(n)
            .or_else(|| {
                Uuid::parse_str(n)
                    .ok()
                    .and_then(|u| by_name.get(&u.to_string()))
            })
            .copied()
    });
    let mut results: Vec<Option<EventResult>> = vec![None; events.len()];
    for (tenant, idx) in groups {
        let own: Vec<UsageEvent> = idx.iter().map(|&i| events[i].event()).collect();
        let r = ingest(pool, tenant, &own, now, window).await?;
        for (res, &i) in r.results.into_iter().zip(&idx) {
            results[i] = Some(EventResult { index: i, ..res });
        }
    }
    for i in unknown {
        results[i] = Some(EventResult {
            index: i,
            idempotency_key: events[i].idempotency_key.clone(),
            outcome: Outcome::Rejected,
            reason: Some(RejectReason::UnknownTenant),
        });
    }
    let results: Vec<EventResult> = results.into_iter().flatten().collect();
    let n = |o: Outcome| results.iter().filter(|r| r.outcome == o).count();
    Ok(IngestReport {
        accepted: n(Outcome::Accepted),
        duplicates: n(Outcome::Duplicate),
        conflicts: n(Outcome::Conflict),
        rejected: n(Outcome::Rejected),
        results,
    })
}

/// Takes the tenant's billing lock: ingestion holds it shared, finalization exclusive, so no
/// event lands in a month while its invoice is being finalized.
pub async fn billing_lock(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    exclusive: bool,
) -> Result<()> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock(7243, hashtext($1::text))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(7243, hashtext($1::text))"
    };
    sqlx::query(sql)
        .bind(tenant.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Rollup granularity of a usage query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    #[default]
    Hour,
    Day,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, ts: DateTime<Utc>) -> UsageEvent {
        UsageEvent {
            meter: Meter::TrafficBytes,
            quantity: 10,
            timestamp: ts,
            dimensions: BTreeMap::new(),
            idempotency_key: key.into(),
        }
    }

    #[test]
    fn window_edges() {
        let now = Utc::now();
        let w = Window::default();
        assert_eq!(check_event(&ev("a", now), now, w, &[]), Ok(()));
        assert_eq!(check_event(&ev("a", now - w.late), now, w, &[]), Ok(()));
        assert_eq!(
            check_event(&ev("a", now - w.late - Duration::seconds(1)), now, w, &[]),
            Err(RejectReason::TooOld)
        );
        assert_eq!(
            check_event(&ev("a", now + w.skew + Duration::seconds(1)), now, w, &[]),
            Err(RejectReason::InFuture)
        );
        assert_eq!(
            check_event(&ev("", now), now, w, &[]),
            Err(RejectReason::InvalidIdempotencyKey)
        );
        let closed = [(now - Duration::hours(1), now + Duration::hours(1))];
        assert_eq!(
            check_event(&ev("a", now), now, w, &closed),
            Err(RejectReason::PeriodClosed)
        );
        let mut big = ev("a", now);
        big.quantity = u64::MAX;
        assert_eq!(
            check_event(&big, now, w, &[]),
            Err(RejectReason::QuantityTooLarge)
        );
    }

    #[test]
    fn classify_counts_first_occurrence_only() {
        let now = Utc::now();
        let events = vec![ev("a", now), ev("a", now), ev("b", now), ev("c", now)];
        let checks = vec![Ok(()), Ok(()), Ok(()), Err(RejectReason::TooOld)];
        let inserted: HashSet<String> = ["a".to_owned()].into();
        let stored: HashMap<String, Stored> = [(
            "a".to_owned(),
            Stored {
                meter: "traffic_bytes".into(),
                quantity: 10,
                timestamp: now,
                dimensions: BTreeMap::new(),
            },
        )]
        .into();
        let r = classify(&events, &checks, &inserted, &stored);
        assert_eq!((r.accepted, r.duplicates, r.rejected), (1, 2, 1));
        assert_eq!(r.results[0].outcome, Outcome::Accepted);
        assert_eq!(r.results[1].outcome, Outcome::Duplicate);
        assert_eq!(r.results[2].outcome, Outcome::Duplicate);
        assert_eq!(r.results[3].reason, Some(RejectReason::TooOld));
        // Same key, other content: a conflict, not a silent duplicate.
        let mut other = ev("a", now);
        other.quantity = 11;
        let r = classify(&[other], &[Ok(())], &HashSet::new(), &stored);
        assert_eq!((r.duplicates, r.conflicts), (0, 1));
        assert_eq!(r.results[0].outcome, Outcome::Conflict);
    }
}
