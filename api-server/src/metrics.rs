//! Prometheus metrics (prometheus-client) and the middleware that records every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::ErrorCode;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub latency: Family<Labels, Histogram>,
    pub usage_events: Family<Labels, Counter>,
    pub rate_limited: Counter,
    pub failures: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("nexus_cloud");
        let requests = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let usage_events = Family::<Labels, Counter>::default();
        let rate_limited = Counter::default();
        let failures = Family::<Labels, Counter>::default();
        registry.register(
            "failures",
            "Error responses by problem code",
            failures.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "usage_events",
            "Usage events by outcome (accepted, duplicate, conflict, rejected)",
            usage_events.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the per-key rate limit",
            rate_limited.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            usage_events,
            rate_limited,
            failures,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    if let Some(ErrorCode(code)) = resp.extensions().get::<ErrorCode>() {
        state
            .metrics
            .failures
            .get_or_create(&vec![("error", (*code).to_owned())])
            .inc();
    }
    state
        .metrics
        .requests
        .get_or_create(&vec![
            ("method", method),
            ("route", route.clone()),
            ("status", status),
        ])
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&vec![("route", route)])
        .observe(start.elapsed().as_secs_f64());
    resp
}
