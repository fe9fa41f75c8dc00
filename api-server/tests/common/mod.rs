//! Test helpers: an in-process app on a `#[sqlx::test]` database and a small JSON client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use nexus_cloud::{AppState, Config, NewTenant};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt as _;

pub const OPERATOR: &str = "operator-test-token";
/// The usage token of Nexus components (`--usage-token`).
pub const USAGE: &str = "usage-test-token";

pub struct Api {
    pub app: Router,
    pub pool: PgPool,
}

pub struct Resp {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Asserts an RFC 9457 problem with this status and code.
    pub fn problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "body: {}",
            self.text
        );
        assert_eq!(self.body["status"], status);
        assert_eq!(self.body["code"], code, "body: {}", self.text);
        assert!(
            self.body["type"]
                .as_str()
                .unwrap()
                .starts_with("https://nexus.dev/problems/")
        );
    }
}

pub fn config() -> Config {
    Config {
        admin_token: Some(OPERATOR.into()),
        usage_token: Some(USAGE.into()),
        rate_per_sec: 0,
        console_dir: None,
        ..Config::default()
    }
}

impl Api {
    pub fn new(pool: PgPool) -> Api {
        Api::with_config(pool, config())
    }

    pub fn with_config(pool: PgPool, config: Config) -> Api {
        let app = nexus_cloud::app(AppState::new(pool.clone(), config));
        Api { app, pool }
    }

    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            content_type,
            headers,
            body,
            text,
        }
    }

    pub async fn call(&self, method: Method, uri: &str, key: &str, body: Option<Value>) -> Resp {
        match body {
            Some(b) => {
                self.raw(
                    method,
                    uri,
                    Some(key),
                    Some("application/json"),
                    b.to_string().into_bytes(),
                )
                .await
            }
            None => self.raw(method, uri, Some(key), None, Vec::new()).await,
        }
    }

    pub async fn get(&self, uri: &str, key: &str) -> Resp {
        self.call(Method::GET, uri, key, None).await
    }

    pub async fn post(&self, uri: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, uri, key, Some(body)).await
    }

    pub async fn tenant(&self, name: &str) -> NewTenant {
        nexus_cloud::create_tenant(&self.pool, name, name, &format!("owner@{name}.example"))
            .await
            .unwrap()
    }

    /// Creates a user with `role` and a key with `scopes` for it; returns the key.
    pub async fn user_key(
        &self,
        owner_key: &str,
        email: &str,
        role: &str,
        scopes: &[&str],
    ) -> String {
        let u = self
            .post(
                "/v1/users",
                owner_key,
                serde_json::json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(u.status, 201, "{}", u.text);
        let k = self
            .post(
                "/v1/api-keys",
                owner_key,
                serde_json::json!({"name": email, "user_id": u.body["id"], "scopes": scopes}),
            )
            .await;
        assert_eq!(k.status, 201, "{}", k.text);
        k.body["api_key"].as_str().unwrap().to_owned()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

pub fn event(key: &str, meter: &str, quantity: u64, ts: &str) -> Value {
    serde_json::json!({
        "meter": meter, "quantity": quantity, "timestamp": ts,
        "dimensions": {"domain": "d1", "delivery_mode": "stream"},
        "idempotency_key": key,
    })
}

/// The real NexTrust CA (`nexus-ca`), in process, on a database of its own (created here and
/// dropped by [`RealCa::stop`]), serving gRPC and REST on ephemeral loopback ports.
pub struct RealCa {
    pub server: nexus_ca::RunningServer,
    pub token: String,
    admin: PgPool,
    db: String,
    pool: PgPool,
}

impl RealCa {
    pub async fn start(tenants: &[&str]) -> RealCa {
        RealCa::start_with(tenants, None).await
    }

    async fn start_with(tenants: &[&str], tls: Option<&std::path::Path>) -> RealCa {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = PgPool::connect(&base).await.unwrap();
        let db = format!("nexus_ca_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&admin)
            .await
            .unwrap();
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{db}"),
            None => panic!("DATABASE_URL {base} names no database"),
        };
        let pool = PgPool::connect(&url).await.unwrap();
        let token = "ca-test-token-0123456789".to_owned();
        let kek = std::sync::Arc::new(nexus_ca::kek::Kek::generate().unwrap());
        let settings = nexus_ca::Settings::for_tests(kek, &token, tenants);
        let server = match tls {
            Some(dir) => nexus_ca::start_tls(
                pool.clone(),
                settings,
                nexus_ca::tls::TlsOptions::for_tests(dir),
            )
            .await
            .unwrap(),
            None => nexus_ca::start(pool.clone(), settings).await.unwrap(),
        };
        RealCa {
            server,
            token,
            admin,
            db,
            pool,
        }
    }

    /// The CA over TLS (`nexus_ca::start_tls`): its root and server certificate are written to
    /// `dir` (`ca.crt`), callers authenticate with client certificates it issues.
    pub async fn start_tls(tenants: &[&str], dir: &std::path::Path) -> RealCa {
        RealCa::start_with(tenants, Some(dir)).await
    }

    /// `--ca-endpoint` and `--ca-token` for a cloud API talking to this CA.
    pub fn config(&self) -> Config {
        Config {
            ca_endpoint: Some(format!("http://{}", self.server.grpc_addr)),
            ca_token: Some(self.token.clone()),
            ..config()
        }
    }

    pub async fn stop(self) {
        let _ = self.server.stop_handle().send(true);
        let _ = self.server.wait().await;
        self.pool.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.db
        )))
        .execute(&self.admin)
        .await;
    }
}

/// A minimal valid attestation in the API's JSON form.
pub fn attestation() -> Value {
    serde_json::json!({
        "architecture_hash": "ab".repeat(32),
        "provenance": {"publisher": "Acme AI Labs"},
        "capabilities": {"capabilities": ["code-generation"], "context_window": 131072,
                         "modalities": ["text"]},
        "benchmarks": [{"name": "humaneval", "value": {"plain": "0.91"}}]
    })
}
