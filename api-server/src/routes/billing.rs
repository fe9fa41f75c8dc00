//! Price plans and invoices. Drafts are rated from the hourly rollup by the pure rating engine;
//! a finalized invoice never changes (the database refuses it; the API answers 409).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::audit;
use crate::auth::{Principal, Role, Scope};
use crate::error::{Error, Result, pg_code};
use crate::extract::{Json, Path, Query};
use crate::metering::{Meter, billing_lock};
use crate::pagination::{After, Page, PageParams};
use crate::rating::{self, PlanSpec};
use crate::validate;
use crate::{AppState, CREATED};

/// The public catalogue plan used when a tenant has chosen none.
pub const DEFAULT_PLAN: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_000000000001);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plans, create_plan))
        .routes(routes!(get_plan))
        .routes(routes!(generate_invoice))
        .routes(routes!(preview_invoice))
        .routes(routes!(finalize_invoice))
        .routes(routes!(list_invoices))
        .routes(routes!(get_invoice))
}

// ---------------------------------------------------------------- price plans

#[derive(Debug, Serialize, ToSchema)]
pub struct PricePlan {
    pub id: Uuid,
    /// `null` for a public catalogue plan.
    pub tenant_id: Option<Uuid>,
    pub name: String,
    pub currency: String,
    pub spec: PlanSpec,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct PlanRow {
    id: Uuid,
    tenant_id: Option<Uuid>,
    name: String,
    currency: String,
    spec: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl TryFrom<PlanRow> for PricePlan {
    type Error = Error;
    fn try_from(r: PlanRow) -> Result<PricePlan> {
        let spec = serde_json::from_value(r.spec)
            .map_err(|e| Error::Internal(format!("stored plan {} is invalid: {e}", r.id)))?;
        Ok(PricePlan {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            currency: r.currency,
            spec,
            created_at: r.created_at,
        })
    }
}

/// A price plan to create. Beyond the schema, the plan's tiers must be valid together: per
/// meter, bounds strictly increasing, only the last tier unbounded, each meter priced once, a
/// positive `unit_size`, prices ≤ 10^12 micros (422 `validation_failed` otherwise; see the
/// example).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "enterprise", "currency": "USD", "spec": {"meters": [
    {"meter": "traffic_bytes", "unit": "GB", "unit_size": 1000000000,
     "tiers": [{"up_to": 1000, "unit_price_micros": 60000}, {"up_to": null, "unit_price_micros": 15000}]},
    {"meter": "mics_issued", "unit": "MIC", "unit_size": 1,
     "tiers": [{"up_to": null, "unit_price_micros": 2500000}]}]}}))]
pub struct CreatePlan {
    #[schema(schema_with = validate::name_schema)]
    pub name: String,
    /// ISO 4217 code; default USD.
    #[schema(pattern = "^[A-Z]{3}$", min_length = 3, max_length = 3)]
    pub currency: Option<String>,
    /// Make the plan private to one tenant; public when absent.
    pub tenant_id: Option<Uuid>,
    pub spec: PlanSpec,
}

/// Price plans the caller can use: the public catalogue and its tenant's own.
#[utoipa::path(get, path = "/v1/price-plans", tag = "billing", params(PageParams),
    responses((status = 200, body = Page<PricePlan>)))]
async fn list_plans(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<PricePlan>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<PlanRow> = sqlx::query_as(
        "SELECT id, tenant_id, name, currency, spec, created_at FROM price_plans
          WHERE (tenant_id IS NULL OR tenant_id = $1)
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(c.tenant_id)
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(&s.pool)
    .await?;
    let rows = rows
        .into_iter()
        .map(PricePlan::try_from)
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(Page::new(rows, limit, |r| After {
        created_at: r.created_at,
        id: r.id,
    })))
}

/// Create a price plan (operator token only).
#[utoipa::path(post, path = "/v1/price-plans", tag = "billing", request_body = CreatePlan,
    responses((status = 201, body = PricePlan)))]
async fn create_plan(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<CreatePlan>,
) -> Result<(StatusCode, Json<PricePlan>)> {
    p.operator()?;
    validate::name("name", &body.name)?;
    body.spec
        .validate()
        .map_err(|e| Error::invalid(e.to_string()))?;
    let currency = body.currency.unwrap_or_else(|| "USD".into());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::invalid("currency must be a 3-letter ISO 4217 code"));
    }
    let spec = serde_json::to_value(&body.spec).map_err(|e| Error::Internal(e.to_string()))?;
    let row: PlanRow = sqlx::query_as(
        "INSERT INTO price_plans (id, tenant_id, name, currency, spec) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, tenant_id, name, currency, spec, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(body.tenant_id)
    .bind(&body.name)
    .bind(&currency)
    .bind(&spec)
    .fetch_one(&s.pool)
    .await
    .map_err(|e| {
        if pg_code(&e).as_deref() == Some("23503") {
            Error::NotFound("tenant")
        } else {
            Error::Db(e)
        }
    })?;
    Ok((CREATED, Json(row.try_into()?)))
}

/// One price plan (public, or the caller's tenant's own).
#[utoipa::path(get, path = "/v1/price-plans/{id}", tag = "billing",
    params(("id" = Uuid, Path, description = "Price plan id")),
    responses((status = 200, body = PricePlan)))]
async fn get_plan(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<PricePlan>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let row: PlanRow = sqlx::query_as(
        "SELECT id, tenant_id, name, currency, spec, created_at FROM price_plans
          WHERE id = $1 AND (tenant_id IS NULL OR tenant_id = $2)",
    )
    .bind(id)
    .bind(c.tenant_id)
    .fetch_optional(&s.pool)
    .await?
    .ok_or(Error::NotFound("price plan"))?;
    Ok(Json(row.try_into()?))
}

// ---------------------------------------------------------------- invoices

/// A billing month `YYYY-MM` → [start, end) in UTC.
pub fn parse_period(p: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let bad = || Error::invalid(format!("period {p:?} is not a month like \"2026-11\""));
    let (y, m) = p.split_once('-').ok_or_else(bad)?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(y, 4) || !digits(m, 2) {
        return Err(bad());
    }
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let start = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
    let next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .ok_or_else(bad)?;
    let at = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| Utc.from_utc_datetime(&t));
    Ok((at(start).ok_or_else(bad)?, at(next).ok_or_else(bad)?))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct InvoiceLine {
    pub position: i32,
    pub meter: String,
    pub description: String,
    /// Metered quantity in this tier, in the meter's base unit.
    pub quantity: i64,
    pub unit: String,
    pub unit_price_micros: i64,
    /// Price of one billing unit as an exact decimal string, e.g. "0.080000".
    #[sqlx(skip)]
    pub unit_price: String,
    pub amount_micros: i64,
    /// The line's amount as an exact decimal string, e.g. "12.340000".
    #[sqlx(skip)]
    pub amount: String,
}

impl InvoiceLine {
    fn with_decimals(mut self) -> Self {
        self.unit_price = rating::format_micros(self.unit_price_micros);
        self.amount = rating::format_micros(self.amount_micros);
        self
    }
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Invoice {
    pub id: Uuid,
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub plan_id: Uuid,
    pub currency: String,
    /// `draft` or `finalized`.
    pub status: String,
    /// Sum of the lines, in micro-units of the currency.
    pub total_micros: i64,
    /// The total as an exact decimal string, e.g. "12.340000". Show this, never a float.
    #[sqlx(skip)]
    pub total: String,
    pub created_at: DateTime<Utc>,
    pub finalized_at: Option<DateTime<Utc>>,
}

impl Invoice {
    fn with_decimals(mut self) -> Self {
        self.total = rating::format_micros(self.total_micros);
        self
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceDetail {
    #[serde(flatten)]
    pub invoice: Invoice,
    pub lines: Vec<InvoiceLine>,
}

/// What a month's invoice would say if it were drafted now (nothing is stored).
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoicePreview {
    pub period: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub plan_id: Uuid,
    pub currency: String,
    /// `finalized` when that month's invoice is final (the preview then shows it), else `draft`.
    pub status: String,
    pub total_micros: i64,
    /// The total as an exact decimal string.
    pub total: String,
    pub lines: Vec<InvoiceLine>,
}

const INVOICE_COLS: &str = "id, period, period_start, period_end, plan_id, currency, status, total_micros, created_at, finalized_at";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateInvoice {
    #[schema(schema_with = validate::period_schema)]
    pub period: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// Billing month, `YYYY-MM`; default the current month (UTC).
    #[param(pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$", example = "2026-11")]
    pub period: Option<String>,
}

/// The plan a tenant's invoices are rated with: its own choice or the public default.
async fn tenant_plan(conn: &mut PgConnection, tenant: Uuid) -> Result<(Uuid, String, PlanSpec)> {
    let plan_id: Uuid =
        sqlx::query_scalar("SELECT coalesce(plan_id, $2) FROM tenants WHERE id = $1")
            .bind(tenant)
            .bind(DEFAULT_PLAN)
            .fetch_one(&mut *conn)
            .await?;
    let (currency, spec): (String, serde_json::Value) =
        sqlx::query_as("SELECT currency, spec FROM price_plans WHERE id = $1")
            .bind(plan_id)
            .fetch_one(&mut *conn)
            .await?;
    let spec: PlanSpec = serde_json::from_value(spec)
        .map_err(|e| Error::Internal(format!("plan {plan_id} is invalid: {e}")))?;
    Ok((plan_id, currency, spec))
}

/// Rates a tenant's usage in `[start, end)` with `spec`: the lines and their total.
async fn rate_usage(
    conn: &mut PgConnection,
    tenant: Uuid,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    spec: &PlanSpec,
) -> Result<(Vec<rating::Line>, i64)> {
    let usage: Vec<(String, String)> = sqlx::query_as(
        "SELECT meter, sum(quantity)::text FROM usage_hourly
          WHERE tenant_id = $1 AND hour >= $2 AND hour < $3 GROUP BY meter",
    )
    .bind(tenant)
    .bind(start)
    .bind(end)
    .fetch_all(&mut *conn)
    .await?;
    let too_large = || {
        Error::conflict(
            "amount_too_large",
            "this month's usage rates to more than an invoice can hold (2^63−1 micro-units)",
        )
    };
    let mut rated = Vec::with_capacity(usage.len());
    for (m, q) in usage {
        let Some(meter) = Meter::parse(&m) else {
            continue;
        };
        rated.push((meter, q.parse::<u64>().map_err(|_| too_large())?));
    }
    let lines = rating::rate(spec, &rated);
    let fits = |v: u64| i64::try_from(v).is_ok();
    if lines
        .iter()
        .any(|l| !fits(l.quantity) || !fits(l.amount_micros))
    {
        return Err(too_large());
    }
    let total: u128 = lines.iter().map(|l| u128::from(l.amount_micros)).sum();
    let total = i64::try_from(total).map_err(|_| too_large())?;
    Ok((lines, total))
}

fn to_line(pos: usize, l: &rating::Line) -> Result<InvoiceLine> {
    let conv = |v: u64| i64::try_from(v).map_err(|_| Error::Internal("line overflows".into()));
    Ok(InvoiceLine {
        position: i32::try_from(pos).unwrap_or(i32::MAX),
        meter: l.meter.as_str().to_owned(),
        description: l.description.clone(),
        quantity: conv(l.quantity)?,
        unit: l.unit.clone(),
        unit_price_micros: conv(l.unit_price_micros)?,
        unit_price: String::new(),
        amount_micros: conv(l.amount_micros)?,
        amount: String::new(),
    }
    .with_decimals())
}

/// Rates the period's usage and replaces the draft's lines and total. Returns the invoice id.
async fn rate_into_draft(conn: &mut PgConnection, tenant: Uuid, period: &str) -> Result<Uuid> {
    let (start, end) = parse_period(period)?;
    let (plan_id, currency, spec) = tenant_plan(conn, tenant).await?;
    sqlx::query(
        "INSERT INTO invoices (id, tenant_id, period, period_start, period_end, plan_id, currency, status, total_micros)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'draft', 0) ON CONFLICT (tenant_id, period) DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(period)
    .bind(start)
    .bind(end)
    .bind(plan_id)
    .bind(&currency)
    .execute(&mut *conn)
    .await?;
    let (id, status): (Uuid, String) = sqlx::query_as(
        "SELECT id, status FROM invoices WHERE tenant_id = $1 AND period = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(period)
    .fetch_one(&mut *conn)
    .await?;
    if status == "finalized" {
        return Err(Error::conflict(
            "invoice_finalized",
            format!("the invoice for {period} is finalized and cannot change"),
        ));
    }
    let (lines, total) = rate_usage(conn, tenant, (start, end), &spec).await?;
    sqlx::query("DELETE FROM invoice_lines WHERE invoice_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for (pos, l) in lines.iter().enumerate() {
        let l = to_line(pos, l)?;
        sqlx::query(
            "INSERT INTO invoice_lines (id, invoice_id, tenant_id, position, meter, description, quantity, unit, unit_price_micros, amount_micros)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(Uuid::new_v4())
        .bind(id)
        .bind(tenant)
        .bind(l.position)
        .bind(&l.meter)
        .bind(&l.description)
        .bind(l.quantity)
        .bind(&l.unit)
        .bind(l.unit_price_micros)
        .bind(l.amount_micros)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE invoices SET total_micros = $2, plan_id = $3, currency = $4 WHERE id = $1")
        .bind(id)
        .bind(total)
        .bind(plan_id)
        .bind(&currency)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

async fn load_invoice(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<InvoiceDetail> {
    let invoice: Invoice = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INVOICE_COLS} FROM invoices WHERE id = $1 AND tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(Error::NotFound("invoice"))?;
    let invoice = invoice.with_decimals();
    let lines: Vec<InvoiceLine> = sqlx::query_as(
        "SELECT position, meter, description, quantity, unit, unit_price_micros, amount_micros
           FROM invoice_lines WHERE invoice_id = $1 AND tenant_id = $2 ORDER BY position",
    )
    .bind(id)
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let lines = lines.into_iter().map(InvoiceLine::with_decimals).collect();
    Ok(InvoiceDetail { invoice, lines })
}

/// Map the database's refusal to touch a finalized invoice to the API's 409.
fn immutable(e: Error) -> Error {
    match &e {
        Error::Db(d) if pg_code(d).as_deref() == Some("P0001") => Error::conflict(
            "invoice_finalized",
            "the invoice is finalized and cannot change",
        ),
        _ => e,
    }
}

/// Create or refresh the draft invoice of a month from its rated usage (admin, write).
/// 409 when that month's invoice is already finalized.
#[utoipa::path(post, path = "/v1/invoices/generate", tag = "billing", request_body = GenerateInvoice,
    responses((status = 201, body = InvoiceDetail)))]
async fn generate_invoice(
    State(s): State<AppState>,
    p: Principal,
    Json(body): Json<GenerateInvoice>,
) -> Result<(StatusCode, Json<InvoiceDetail>)> {
    let c = p.tenant(Role::Admin, Scope::Write)?;
    parse_period(&body.period)?;
    let mut tx = s.pool.begin().await?;
    let id = rate_into_draft(&mut tx, c.tenant_id, &body.period)
        .await
        .map_err(immutable)?;
    let detail = load_invoice(&mut tx, c.tenant_id, id).await?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "invoice.draft",
        "invoice",
        &id.to_string(),
        serde_json::json!({"period": body.period, "total_micros": detail.invoice.total_micros}),
    )
    .await?;
    tx.commit().await?;
    Ok((CREATED, Json(detail)))
}

/// Finalize an invoice (admin, admin scope): re-rates the month one last time, then freezes it.
/// Usage events for a finalized month are rejected from then on. 409 when already finalized.
#[utoipa::path(post, path = "/v1/invoices/{id}/finalize", tag = "billing",
    params(("id" = Uuid, Path, description = "Invoice id")),
    responses((status = 200, body = InvoiceDetail)))]
async fn finalize_invoice(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<InvoiceDetail>> {
    let c = p.tenant(Role::Admin, Scope::Admin)?;
    let mut tx = s.pool.begin().await?;
    let period: String =
        sqlx::query_scalar("SELECT period FROM invoices WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(c.tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(Error::NotFound("invoice"))?;
    billing_lock(&mut tx, c.tenant_id, true).await?;
    rate_into_draft(&mut tx, c.tenant_id, &period)
        .await
        .map_err(immutable)?;
    sqlx::query(
        "UPDATE invoices SET status = 'finalized', finalized_at = now() WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(c.tenant_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| immutable(Error::Db(e)))?;
    let detail = load_invoice(&mut tx, c.tenant_id, id).await?;
    audit(
        &mut tx,
        c.tenant_id,
        &c.actor(),
        "invoice.finalize",
        "invoice",
        &id.to_string(),
        serde_json::json!({"period": period, "total_micros": detail.invoice.total_micros}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// List invoices, newest first (viewer).
#[utoipa::path(get, path = "/v1/invoices", tag = "billing", params(PageParams),
    responses((status = 200, body = Page<Invoice>)))]
async fn list_invoices(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PageParams>,
) -> Result<Json<Page<Invoice>>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let (limit, (at, id)) = (q.limit()?, q.after()?);
    let rows: Vec<Invoice> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INVOICE_COLS} FROM invoices WHERE tenant_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    )))
    .bind(c.tenant_id)
    .bind(at)
    .bind(id)
    .bind(limit + 1)
    .fetch_all(&s.pool)
    .await?;
    let rows = rows.into_iter().map(Invoice::with_decimals).collect();
    Ok(Json(Page::new(rows, limit, |r: &Invoice| After {
        created_at: r.created_at,
        id: r.id,
    })))
}

/// What a month's invoice would say if it were drafted now, rated from its usage so far;
/// nothing is stored (viewer). A finalized month shows its final invoice.
#[utoipa::path(get, path = "/v1/invoices/preview", tag = "billing", params(PreviewQuery),
    responses((status = 200, body = InvoicePreview)))]
async fn preview_invoice(
    State(s): State<AppState>,
    p: Principal,
    Query(q): Query<PreviewQuery>,
) -> Result<Json<InvoicePreview>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let period = q
        .period
        .unwrap_or_else(|| Utc::now().format("%Y-%m").to_string());
    let range = parse_period(&period)?;
    let mut conn = s.pool.acquire().await?;
    let finalized: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM invoices WHERE tenant_id = $1 AND period = $2 AND status = 'finalized'",
    )
    .bind(c.tenant_id)
    .bind(&period)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = finalized {
        let d = load_invoice(&mut conn, c.tenant_id, id).await?;
        return Ok(Json(InvoicePreview {
            period: d.invoice.period,
            period_start: d.invoice.period_start,
            period_end: d.invoice.period_end,
            plan_id: d.invoice.plan_id,
            currency: d.invoice.currency,
            status: d.invoice.status,
            total_micros: d.invoice.total_micros,
            total: d.invoice.total,
            lines: d.lines,
        }));
    }
    let (plan_id, currency, spec) = tenant_plan(&mut conn, c.tenant_id).await?;
    let (lines, total) = rate_usage(&mut conn, c.tenant_id, range, &spec).await?;
    let lines = lines
        .iter()
        .enumerate()
        .map(|(i, l)| to_line(i, l))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(InvoicePreview {
        period,
        period_start: range.0,
        period_end: range.1,
        plan_id,
        currency,
        status: "draft".into(),
        total_micros: total,
        total: rating::format_micros(total),
        lines,
    }))
}

/// One invoice with its lines.
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "billing",
    params(("id" = Uuid, Path, description = "Invoice id")),
    responses((status = 200, body = InvoiceDetail)))]
async fn get_invoice(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<InvoiceDetail>> {
    let c = p.tenant(Role::Viewer, Scope::Read)?;
    let mut conn = s.pool.acquire().await?;
    Ok(Json(load_invoice(&mut conn, c.tenant_id, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike as _;

    #[test]
    fn periods() -> Result<()> {
        let (s, e) = parse_period("2026-12")?;
        assert_eq!(s.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(e.to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(s.month(), 12);
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
