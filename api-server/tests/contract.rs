//! The contract test: drives the running server (real PostgreSQL, the real CA, over TCP) from
//! its `/openapi.json` alone. For every operation, as every tenant role and as the operator, it
//! sends schema-valid requests generated from the document and checks that
//!
//! - none is refused as malformed (400) or invalid (422): the document states every rule;
//! - every response's status is declared for the operation, with the declared media type, and
//!   its body matches the declared schema (problem documents included, with their `code`s);
//! - a role below the operation's `x-nexus-access` gets 403, a role at or above it does not
//!   (except where the operation documents finer rules);
//! - every operation succeeded at least once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/schema_gen.rs"]
mod schema_gen;

use std::collections::{BTreeMap, BTreeSet};

use common::{OPERATOR, RealCa, USAGE};
use reqwest::Method;
use schema_gen::Gen;
use serde_json::{Value, json};
use sqlx::PgPool;

const ROLES: [&str; 4] = ["owner", "admin", "member", "viewer"];
const RANK: [(&str, u8); 4] = [("viewer", 0), ("member", 1), ("admin", 2), ("owner", 3)];
/// Operations whose outcome also depends on whose object it is or which role is granted
/// (documented on each): a permitted role may still get 403 there.
const FINER: [&str; 4] = ["create_user", "create_key", "set_role", "revoke_key"];
/// Requests per operation and caller.
const TRIES: usize = 3;

fn rank(role: &str) -> u8 {
    RANK.iter()
        .find(|(r, _)| *r == role)
        .map(|(_, n)| *n)
        .unwrap()
}

struct Client {
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
    text: String,
}

impl Client {
    async fn send(&self, method: Method, path: &str, key: &str, body: Option<&Value>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
            text,
        }
    }

    async fn ok(&self, method: Method, path: &str, key: &str, body: Value) -> Value {
        let a = self.send(method.clone(), path, key, Some(&body)).await;
        assert!(
            (200..300).contains(&a.status),
            "{method} {path}: {} {}",
            a.status,
            a.text
        );
        a.body
    }
}

/// Objects a caller's requests can name in paths and bodies.
#[derive(Debug, Default, Clone)]
struct Fixtures {
    domain: String,
    endpoint: String,
    model: String,
    serial: String,
    cluster: String,
    fabric: String,
    user: String,
    own_key: String,
    invoice: String,
    plan: String,
    self_user: String,
}

/// Gives the tenant fresh objects (made by its owner) for one caller's run.
async fn fixtures(c: &Client, owner: &str, self_user: &str, tag: usize) -> Fixtures {
    let id = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let domain = id(&c
        .ok(
            Method::POST,
            "/v1/routing-domains",
            owner,
            json!({"name": format!("fixture-{tag}")}),
        )
        .await);
    let endpoint = id(&c
        .ok(
            Method::POST,
            &format!("/v1/routing-domains/{domain}/endpoints"),
            owner,
            json!({"name": "coder", "capabilities": ["code-generation"], "context_window": 131072,
                   "latency_sla_ms": 200, "cost_per_1k_tokens": "0.0025"}),
        )
        .await);
    let model = id(&c
        .ok(
            Method::POST,
            "/v1/model-identities",
            owner,
            json!({"name": format!("fixture-{tag}"), "model_digest": "sha256:00112233445566778899"}),
        )
        .await);
    let mic = c
        .ok(
            Method::POST,
            &format!("/v1/model-identities/{model}/certificates"),
            owner,
            json!({"csr_der_base64": nexus_cloud::validate::EXAMPLE_CSR, "version": "1.0.0",
                   "attestation": common::attestation()}),
        )
        .await;
    let cluster = id(&c
        .ok(
            Method::POST,
            "/v1/clusters",
            owner,
            json!({"name": format!("fixture-{tag}"), "region": "eu"}),
        )
        .await);
    let fabric = "gpu-east".to_owned();
    c.ok(
        Method::PUT,
        &format!("/v1/clusters/{cluster}/rollouts/{fabric}"),
        owner,
        json!({"phase": "Progressing", "target_version": "2.0", "nodes_total": 4,
               "nodes_updated": 1, "nodes_failed": 0}),
    )
    .await;
    let user = id(&c
        .ok(
            Method::POST,
            "/v1/users",
            owner,
            json!({"email": format!("target{tag}@acme.example"), "role": "viewer"}),
        )
        .await);
    let own_key = id(&c
        .ok(
            Method::POST,
            "/v1/api-keys",
            owner,
            json!({"name": "fixture", "user_id": self_user, "scopes": ["read"]}),
        )
        .await);
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let inv = c
        .send(
            Method::POST,
            "/v1/invoices/generate",
            owner,
            Some(&json!({"period": period})),
        )
        .await;
    let invoice = match inv.status {
        201 => inv.body["id"].as_str().unwrap().to_owned(),
        // Finalized by an earlier run: name that invoice.
        _ => {
            let list = c.send(Method::GET, "/v1/invoices", owner, None).await;
            list.body["data"][0]["id"].as_str().unwrap().to_owned()
        }
    };
    Fixtures {
        domain,
        endpoint,
        model,
        serial: mic["serial"].as_str().unwrap().to_owned(),
        cluster,
        fabric,
        user,
        own_key,
        invoice,
        plan: "00000000-0000-4000-8000-000000000001".into(),
        self_user: self_user.to_owned(),
    }
}

/// An operation of the document.
#[derive(Debug, Clone)]
struct Op {
    method: String,
    template: String,
    id: String,
    op: Value,
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(Op {
                method: method.clone(),
                template: template.clone(),
                id: op["operationId"].as_str().unwrap().to_owned(),
                op: op.clone(),
            });
        }
    }
    // What destroys fixtures runs last, children before their parents.
    let destructive = |o: &Op| {
        o.method == "delete" || o.template.ends_with("/finalize") || o.template.ends_with("/revoke")
    };
    ops.sort_by_key(|o| {
        let depth = if destructive(o) {
            usize::MAX - o.template.len()
        } else {
            0
        };
        (destructive(o), depth, o.template.clone(), o.method.clone())
    });
    ops
}

/// A validator for `schema`, whose `$ref`s point into the document's components.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({"allOf": [schema], "components": doc["components"]});
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}: {schema}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// A request for `op` from the document: path, query and body.
fn request(g: &mut Gen<'_>, doc: &Value, op: &Op, fx: &Fixtures) -> (String, Option<Value>) {
    let mut path = op.template.clone();
    let mut query = Vec::new();
    for p in op.op["parameters"].as_array().cloned().unwrap_or_default() {
        let name = p["name"].as_str().unwrap();
        let schema = &p["schema"];
        match p["in"].as_str().unwrap() {
            "path" => {
                let known = match (op.template.split('/').nth(2).unwrap(), name) {
                    ("routing-domains", "id") => Some(&fx.domain),
                    (_, "endpoint_id") => Some(&fx.endpoint),
                    ("model-identities", "id") => Some(&fx.model),
                    (_, "serial") => Some(&fx.serial),
                    ("clusters", "id") => Some(&fx.cluster),
                    (_, "fabric") => Some(&fx.fabric),
                    ("users", "id") => Some(&fx.user),
                    ("api-keys", "id") => Some(&fx.own_key),
                    ("invoices", "id") => Some(&fx.invoice),
                    ("price-plans", "id") => Some(&fx.plan),
                    _ => None,
                };
                // Mostly the caller's objects; sometimes whatever the schema allows (a 404).
                let v = match known {
                    Some(k) if !g.chance(0.15) => k.clone(),
                    _ => g.value(schema, 0).as_str().unwrap().to_owned(),
                };
                assert!(
                    validator(doc, schema).is_valid(&json!(v)),
                    "{} path {name}={v}",
                    op.id
                );
                path = path.replace(&format!("{{{name}}}"), &v);
            }
            "query" => {
                if p["required"].as_bool().unwrap_or(false) || g.chance(0.5) {
                    let v = g.value(schema, 0);
                    assert!(
                        validator(doc, schema).is_valid(&v),
                        "{} query {name}={v}",
                        op.id
                    );
                    let text = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    query.push((name.to_owned(), text));
                }
            }
            other => panic!("parameter in {other}"),
        }
    }
    if !query.is_empty() {
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        path = format!("{path}?{}", q.join("&"));
    }
    let body = op.op["requestBody"]["content"]["application/json"]["schema"]
        .as_object()
        .map(|_| {
            let schema = &op.op["requestBody"]["content"]["application/json"]["schema"];
            let resolved = g.resolve(schema).clone();
            // The one body with rules across fields (price tiers): its documented example.
            let mut body = match resolved.get("examples").or(resolved.get("example")) {
                Some(Value::Array(ex)) if !ex.is_empty() => ex[0].clone(),
                Some(ex) if ex.is_object() => ex.clone(),
                _ => g.value(schema, 0),
            };
            // Ids in bodies name the caller's objects where a field says which.
            if let Some(o) = body.as_object_mut() {
                if o.contains_key("plan_id") && g.chance(0.7) {
                    o.insert("plan_id".into(), json!(fx.plan));
                }
                if o.get("user_id").is_some_and(|v| !v.is_null()) && g.chance(0.7) {
                    o.insert("user_id".into(), json!(fx.self_user));
                }
            }
            let errs = errors(&validator(doc, schema), &body);
            assert!(
                errs.is_empty(),
                "{}: generated body invalid {errs:?}: {body}",
                op.id
            );
            body
        });
    (path, body)
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks one answer against the operation's declared responses.
fn check(doc: &Value, op: &Op, caller: &str, req: &str, body: &Option<Value>, a: &Answer) {
    let ctx = || {
        format!(
            "{} {} as {caller}: {req} {} → {} {}",
            op.method.to_uppercase(),
            op.template,
            body.as_ref().map(|b| b.to_string()).unwrap_or_default(),
            a.status,
            a.text
        )
    };
    assert!(
        a.status != 400 && a.status != 422,
        "schema-valid request refused: {}",
        ctx()
    );
    let mut declared = &op.op["responses"][a.status.to_string()];
    assert!(declared.is_object(), "undeclared status: {}", ctx());
    if let Some(r) = declared["$ref"].as_str() {
        declared = doc.pointer(r.trim_start_matches('#')).unwrap();
    }
    match declared["content"].as_object() {
        None => assert!(a.text.is_empty(), "declared no body: {}", ctx()),
        Some(content) => {
            let media = a.content_type.split(';').next().unwrap_or_default().trim();
            let schema = &content
                .get(media)
                .unwrap_or_else(|| panic!("undeclared media type {media:?}: {}", ctx()))["schema"];
            let errs = errors(&validator(doc, schema), &a.body);
            assert!(
                errs.is_empty(),
                "body does not match its schema {errs:?}: {}",
                ctx()
            );
        }
    }
}

#[sqlx::test]
async fn every_operation_as_every_role_matches_the_document(pool: PgPool) {
    let ca = RealCa::start(&["acme"]).await;
    let config = ca.config();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = nexus_cloud::AppState::new(pool.clone(), config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus_cloud::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
    };

    // The document, from the server; it validates as OpenAPI's own JSON Schema dialect would.
    let doc_answer = c.send(Method::GET, "/openapi.json", "", None).await;
    assert_eq!(doc_answer.status, 200);
    let doc = doc_answer.body;
    assert_eq!(doc["openapi"], "3.1.0");

    // The operator creates the tenant (slug known to the CA); its owner adds one user per role.
    let t = c
        .ok(
            Method::POST,
            "/v1/tenants",
            OPERATOR,
            json!({"name": "Acme", "slug": "acme", "owner_email": "owner@acme.example"}),
        )
        .await;
    let owner = t["api_key"].as_str().unwrap().to_owned();
    let mut keys: BTreeMap<&str, (String, String)> = BTreeMap::new();
    keys.insert(
        "owner",
        (
            owner.clone(),
            t["owner_user_id"].as_str().unwrap().to_owned(),
        ),
    );
    for role in ["admin", "member", "viewer"] {
        let u = c
            .ok(
                Method::POST,
                "/v1/users",
                &owner,
                json!({"email": format!("{role}@acme.example"), "role": role}),
            )
            .await;
        let uid = u["id"].as_str().unwrap().to_owned();
        let k = c
            .ok(
                Method::POST,
                "/v1/api-keys",
                &owner,
                json!({"name": role, "user_id": uid, "scopes": ["read", "write", "admin"]}),
            )
            .await;
        keys.insert(role, (k["api_key"].as_str().unwrap().to_owned(), uid));
    }

    let ops = operations(&doc);
    assert!(ops.len() >= 45, "{} operations", ops.len());
    let mut succeeded: BTreeSet<String> = BTreeSet::new();
    let mut statuses: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    // A fixed seed keeps CI repeatable; NEXUS_CONTRACT_SEED explores other requests.
    let seed = std::env::var("NEXUS_CONTRACT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut g = Gen::new(&doc, seed);
    let callers: Vec<&str> = ROLES
        .iter()
        .copied()
        .chain(["operator", "service"])
        .collect();
    for (tag, caller) in callers.iter().enumerate() {
        let (key, self_user) = match *caller {
            "operator" => (OPERATOR.to_owned(), keys["owner"].1.clone()),
            "service" => (USAGE.to_owned(), keys["owner"].1.clone()),
            role => keys[role].clone(),
        };
        let fx = fixtures(&c, &owner, &self_user, tag).await;
        for op in &ops {
            let access = &op.op["x-nexus-access"];
            let service = access["service"].as_bool() == Some(true);
            let allowed = match (access["operator"].as_bool(), *caller) {
                (Some(true), who) => who == "operator" || (service && who == "service"),
                (_, "operator" | "service") => false,
                (_, role) => rank(role) >= rank(access["role"].as_str().unwrap()),
            };
            for _ in 0..TRIES {
                let (path, body) = request(&mut g, &doc, op, &fx);
                let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
                let a = c.send(method, &path, &key, body.as_ref()).await;
                check(&doc, op, caller, &path, &body, &a);
                if !allowed {
                    assert_eq!(
                        a.status, 403,
                        "{} as {caller} must be forbidden: {}",
                        op.id, a.text
                    );
                } else if !FINER.contains(&op.id.as_str()) {
                    assert_ne!(
                        a.status, 403,
                        "{} as {caller} must be allowed: {}",
                        op.id, a.text
                    );
                }
                if (200..300).contains(&a.status) {
                    succeeded.insert(op.id.clone());
                }
                statuses.entry(op.id.clone()).or_default().insert(a.status);
            }
        }
    }
    let never: Vec<&String> = ops
        .iter()
        .map(|o| &o.id)
        .filter(|id| !succeeded.contains(*id))
        .collect();
    println!("statuses seen per operation: {statuses:#?}");
    assert!(
        never.is_empty(),
        "operations that never succeeded: {never:?}"
    );

    // Unknown routes and methods are problem documents too.
    let a = c.send(Method::GET, "/v1/no-such-thing", &owner, None).await;
    assert_eq!(
        (a.status, a.content_type.as_str()),
        (404, "application/problem+json")
    );
    let a = c.send(Method::PATCH, "/v1/usage", &owner, None).await;
    assert_eq!(
        (a.status, a.content_type.as_str()),
        (405, "application/problem+json")
    );
    assert_eq!(a.body["code"], "method_not_allowed");

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    ca.stop().await;
}

/// The console's committed snapshot (`web/openapi.json`, which its client is generated from) is
/// exactly what the server serves. Refresh it with `nexus-cloud openapi > web/openapi.json`.
#[test]
fn console_snapshot_is_the_served_document() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../web/openapi.json");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(path).expect("web/openapi.json is committed"),
    )
    .unwrap();
    assert!(
        committed == nexus_cloud::openapi(),
        "web/openapi.json is stale: run `cargo run -p nexus-cloud -- openapi > web/openapi.json`"
    );
}

/// Every operation has an access entry, and every entry names an operation.
#[test]
fn access_table_matches_the_routes() {
    let doc = nexus_cloud::openapi();
    let ids: BTreeSet<String> = operations(&doc).into_iter().map(|o| o.id).collect();
    let table: BTreeSet<String> = nexus_cloud::doc::ACCESS
        .iter()
        .map(|o| o.id.to_owned())
        .collect();
    assert_eq!(ids, table);
    for op in operations(&doc) {
        assert!(op.op["security"].is_array(), "{} has no security", op.id);
        for (status, r) in op.op["responses"].as_object().unwrap() {
            let r = match r["$ref"].as_str() {
                Some(p) => doc.pointer(p.trim_start_matches('#')).unwrap(),
                None => r,
            };
            if status.starts_with('4') || status.starts_with('5') {
                assert!(
                    r["content"]["application/problem+json"].is_object(),
                    "{} {status} is not problem+json",
                    op.id
                );
            }
        }
    }
}
