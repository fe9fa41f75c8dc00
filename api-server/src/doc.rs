//! The OpenAPI document's parts that utoipa's attributes cannot say once for all operations:
//! who may call each operation (security scheme, role and key scope), and every error response
//! it can give, as `application/problem+json` with the problem `code`s possible at that status.
//!
//! Handlers declare their success responses; [`ACCESS`] declares the rest per operation id. The
//! contract test (`tests/contract.rs`) drives every operation from the finished document and
//! fails when a response is not declared here, so this table cannot silently drift.

use serde_json::{Map, Value, json};

use crate::auth::{Role, Scope};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The platform operator's bootstrap token.
    Operator,
    /// The usage token of Nexus components, or the operator token.
    Service,
    /// A tenant API key whose user has at least this role, with this scope.
    Tenant(Role, Scope),
}

/// One operation's access and the errors particular to it (status, codes).
#[derive(Debug)]
pub struct Op {
    pub id: &'static str,
    pub access: Access,
    pub errors: &'static [(u16, &'static [&'static str])],
}

use Access::{Operator, Service, Tenant};
use Role::{Admin, Member, Owner, Viewer};
use Scope::{Admin as AdminScope, Read, Write};

const INVALID: (u16, &[&str]) = (422, &["validation_failed"]);
const EXISTS: (u16, &[&str]) = (409, &["already_exists"]);
const CA: (u16, &[&str]) = (503, &["ca_unavailable", "ca_not_configured"]);

/// Every operation of the API.
pub const ACCESS: &[Op] = &[
    // tenants, users, keys, audit
    op("create_tenant_handler", Operator, &[EXISTS, INVALID]),
    op("get_tenant", Tenant(Viewer, Read), &[]),
    op("whoami", Tenant(Viewer, Read), &[]),
    op(
        "set_plan",
        Tenant(Owner, AdminScope),
        &[(404, &["not_found"])],
    ),
    op("list_users", Tenant(Admin, Read), &[]),
    op("create_user", Tenant(Admin, AdminScope), &[EXISTS, INVALID]),
    op("get_user", Tenant(Admin, Read), &[]),
    op(
        "set_role",
        Tenant(Admin, AdminScope),
        &[(409, &["last_owner"])],
    ),
    op("list_keys", Tenant(Viewer, Read), &[]),
    op(
        "create_key",
        Tenant(Member, Write),
        &[(404, &["not_found"]), INVALID],
    ),
    op("revoke_key", Tenant(Viewer, Write), &[]),
    op("list_audit", Tenant(Admin, Read), &[]),
    // routing
    op("list_domains", Tenant(Viewer, Read), &[]),
    op("create_domain", Tenant(Member, Write), &[EXISTS, INVALID]),
    op("get_domain", Tenant(Viewer, Read), &[]),
    op("update_domain", Tenant(Member, Write), &[EXISTS, INVALID]),
    op("delete_domain", Tenant(Member, Write), &[]),
    op("list_endpoints", Tenant(Viewer, Read), &[]),
    op("create_endpoint", Tenant(Member, Write), &[EXISTS, INVALID]),
    op("get_endpoint", Tenant(Viewer, Read), &[]),
    op("delete_endpoint", Tenant(Member, Write), &[]),
    op("set_admission", Operator, &[INVALID]),
    // models and MICs
    op("list_models", Tenant(Viewer, Read), &[]),
    op("create_model", Tenant(Member, Write), &[EXISTS, INVALID]),
    op("get_model", Tenant(Viewer, Read), &[]),
    op("delete_model", Tenant(Member, Write), &[]),
    op(
        "issue_mic",
        Tenant(Member, Write),
        &[
            (409, &["request_id_reused"]),
            (422, &["validation_failed", "ca_refused"]),
            CA,
        ],
    ),
    op("list_mics", Tenant(Viewer, Read), &[]),
    op("get_mic", Tenant(Viewer, Read), &[]),
    op(
        "revoke_mic",
        Tenant(Member, Write),
        &[(422, &["ca_refused"]), CA],
    ),
    // clusters and rollouts
    op("list_clusters", Tenant(Viewer, Read), &[]),
    op("create_cluster", Tenant(Member, Write), &[EXISTS, INVALID]),
    op("get_cluster", Tenant(Viewer, Read), &[]),
    op("delete_cluster", Tenant(Member, Write), &[]),
    op("report_rollout", Tenant(Member, Write), &[INVALID]),
    op("list_rollouts", Tenant(Viewer, Read), &[]),
    // usage and billing
    op("ingest", Tenant(Member, Write), &[INVALID]),
    op("ingest_system", Service, &[INVALID]),
    op("query_usage", Tenant(Viewer, Read), &[]),
    op("list_plans", Tenant(Viewer, Read), &[]),
    op("create_plan", Operator, &[(404, &["not_found"]), INVALID]),
    op("get_plan", Tenant(Viewer, Read), &[]),
    op(
        "generate_invoice",
        Tenant(Admin, Write),
        &[(409, &["invoice_finalized", "amount_too_large"]), INVALID],
    ),
    op(
        "preview_invoice",
        Tenant(Viewer, Read),
        &[(409, &["amount_too_large"]), INVALID],
    ),
    op(
        "finalize_invoice",
        Tenant(Admin, AdminScope),
        &[(409, &["invoice_finalized", "amount_too_large"])],
    ),
    op("list_invoices", Tenant(Viewer, Read), &[]),
    op("get_invoice", Tenant(Viewer, Read), &[]),
];

const fn op(
    id: &'static str,
    access: Access,
    errors: &'static [(u16, &'static [&'static str])],
) -> Op {
    Op { id, access, errors }
}

/// The entry of `id` in [`ACCESS`].
pub fn access(id: &str) -> Option<&'static Op> {
    ACCESS.iter().find(|o| o.id == id)
}

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn add(errors: &mut Vec<(u16, Vec<&'static str>)>, status: u16, codes: &[&'static str]) {
    match errors.iter_mut().find(|(s, _)| *s == status) {
        Some((_, list)) => {
            for c in codes {
                if !list.contains(c) {
                    list.push(c);
                }
            }
        }
        None => errors.push((status, codes.to_vec())),
    }
}

fn reason(status: u16) -> &'static str {
    axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// Completes the generated document: per-operation security, `x-nexus-access`, and every error
/// response as `application/problem+json`.
pub fn finish(doc: &mut Value) {
    if let Some(obj) = doc.as_object_mut() {
        obj.remove("security");
    }
    doc["components"]["securitySchemes"] = json!({
        "apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "A tenant API key, `nxk_<prefix>_<secret>`. What it may do is its user's role (viewer < member < admin < owner) intersected with the key's scopes (read, write, admin)."
        },
        "operatorToken": {
            "type": "http", "scheme": "bearer",
            "description": "The platform operator's bootstrap token (`--admin-token`)."
        },
        "usageToken": {
            "type": "http", "scheme": "bearer",
            "description": "The token Nexus components report usage with (`--usage-token`); it can do nothing else."
        }
    });
    // An externally tagged enum is an object with exactly its one variant key.
    if let Some(variants) = doc["components"]["schemas"]["ClaimValue"]["oneOf"].as_array_mut() {
        for v in variants {
            v["additionalProperties"] = Value::Bool(false);
        }
    }
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let mut shared: Map<String, Value> = Map::new();
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for method in METHODS {
            if let Some(op) = item.get_mut(method) {
                finish_operation(op, &mut shared);
            }
        }
    }
    doc["components"]["responses"] = Value::Object(shared);
}

fn finish_operation(op: &mut Value, shared: &mut Map<String, Value>) {
    let id = op["operationId"].as_str().unwrap_or_default().to_owned();
    let params: Vec<Value> = op["parameters"].as_array().cloned().unwrap_or_default();
    let has_path = params.iter().any(|p| p["in"] == "path");
    let has_query = params.iter().any(|p| p["in"] == "query");
    let paged = params.iter().any(|p| p["name"] == "cursor");
    let has_body = op.get("requestBody").is_some();

    let mut errors: Vec<(u16, Vec<&'static str>)> = Vec::new();
    if has_body {
        add(&mut errors, 400, &["malformed_json"]);
        add(&mut errors, 413, &["body_too_large"]);
        add(&mut errors, 415, &["unsupported_media_type"]);
        add(&mut errors, 422, &["invalid_body"]);
    }
    if has_query {
        add(&mut errors, 400, &["invalid_query"]);
    }
    if paged {
        add(&mut errors, 400, &["invalid_cursor", "invalid_limit"]);
    }
    if has_path {
        add(&mut errors, 404, &["not_found"]);
    }
    add(&mut errors, 401, &["unauthenticated"]);
    add(&mut errors, 403, &["forbidden"]);
    add(&mut errors, 429, &["rate_limited"]);
    add(&mut errors, 500, &["internal"]);
    add(&mut errors, 503, &["database_unavailable"]);

    let meta = access(&id);
    if let Some(meta) = meta {
        for (status, codes) in meta.errors {
            add(&mut errors, *status, codes);
        }
        let (security, access, needs) = match meta.access {
            Access::Operator => (
                json!([{"operatorToken": []}]),
                json!({"operator": true}),
                "Needs the operator token.".to_owned(),
            ),
            // `operator: true` too, so readers that know only operators and roles (the
            // console's access table) treat it as not a tenant's operation.
            Access::Service => (
                json!([{"usageToken": []}, {"operatorToken": []}]),
                json!({"operator": true, "service": true}),
                "Needs the usage token or the operator token.".to_owned(),
            ),
            Access::Tenant(role, scope) => (
                json!([{"apiKey": []}]),
                json!({"role": role.as_str(), "scope": scope.as_str()}),
                format!(
                    "Needs role {} or higher and a key with scope {}.",
                    role.as_str(),
                    scope.as_str()
                ),
            ),
        };
        op["security"] = security;
        op["x-nexus-access"] = access;
        let desc = op["description"].as_str().unwrap_or_default().to_owned();
        op["description"] = Value::String(if desc.is_empty() {
            needs
        } else {
            format!("{desc}\n\n{needs}")
        });
    }
    errors.sort_by_key(|(s, _)| *s);

    let mut responses: Map<String, Value> =
        op["responses"].as_object().cloned().unwrap_or_default();
    // Undeclared catch-alls from handler attributes are replaced by the exact list.
    responses.retain(|k, _| !k.ends_with("XX"));
    for (status, codes) in errors {
        // One shared response per (status, codes): `Problem404` or `Problem409_already_exists`.
        let name = format!("Problem{status}_{}", codes.join("_"));
        if !shared.contains_key(&name) {
            let list = codes
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ");
            shared.insert(
                name.clone(),
                json!({
                    "description": format!("{}: problem code {list}.", reason(status)),
                    "content": {"application/problem+json": {"schema": {"allOf": [
                        {"$ref": "#/components/schemas/Problem"},
                        {"type": "object", "properties": {
                            "status": {"const": status},
                            "code": {"enum": codes}
                        }}
                    ]}}}
                }),
            );
        }
        responses.insert(
            status.to_string(),
            json!({"$ref": format!("#/components/responses/{name}")}),
        );
    }
    op["responses"] = Value::Object(responses);
}
