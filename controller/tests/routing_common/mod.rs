//! What the RoutingDomain tests of both modes share: the domain they apply and how they read
//! its status and a dataplane's tables.

#![allow(dead_code, clippy::unwrap_used)]

use nexus_crds::routing::{AdmittedEndpoint, RoutingDomainStatus};
use serde_json::{Value, json};

/// RoutingDomain `acme/code` on `fabric` with `(name, address, modelIdentityRef)` endpoints,
/// requiring the code-generation and HumanEval claims. (JSON is YAML: local mode reads it as a
/// manifest file.)
pub fn domain(fabric: &str, endpoints: &[(&str, &str, &str)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(name, addr, identity)| {
            json!({
                "name": name,
                "address": addr,
                "capability": {
                    "capabilities": ["code-generation", "chat"],
                    "modelFamily": "llm",
                    "contextWindow": 131072,
                    "modalities": ["text"],
                    "latencySlaMs": 180,
                },
                "modelIdentityRef": { "name": identity },
            })
        })
        .collect();
    json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "RoutingDomain",
        "metadata": { "name": "code", "namespace": "acme" },
        "spec": {
            "tenant": "acme",
            "fabricRef": { "name": fabric },
            "endpoints": eps,
            "policy": { "trust": {
                "requiredClaims": ["capability:code-generation", "benchmark:humaneval"],
            } },
        },
    })
}

/// Status and reason of condition `t`.
pub fn cond<'a>(st: &'a RoutingDomainStatus, t: &str) -> Option<(&'a str, &'a str)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Status and reason of `Ready`.
pub fn ready(st: &RoutingDomainStatus) -> Option<(&str, &str)> {
    cond(st, "Ready")
}

/// The message of `Ready`.
pub fn ready_message(st: &RoutingDomainStatus) -> &str {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.as_str())
        .unwrap_or_default()
}

/// Names of the admitted endpoints.
pub fn names(v: &[AdmittedEndpoint]) -> Vec<String> {
    v.iter().map(|e| e.name.clone()).collect()
}

/// The version a dataplane runs, read over P4Runtime by a second (non-primary) client.
pub async fn programmed(url: &str) -> Option<String> {
    let mut c = nexus_p4::client::Controller::connect(url.to_owned(), 1, 99)
        .await
        .unwrap();
    c.programmed_version().await.unwrap()
}
