//! Offline validation of Nexus manifests, doing what the API server would do on `kubectl apply`:
//! structural defaulting, the OpenAPI schema (types, bounds, patterns, required fields, unknown
//! fields under strict field validation), list semantics (`x-kubernetes-list-type` map and set),
//! the CEL rules of `x-kubernetes-validations`, and finally decoding into the Rust type.
//!
//! The schema used is the one [`crate::crd::all`] generates — the very one committed and applied —
//! so the offline answer and the cluster's answer come from one source.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::common::{is_dns_label, is_dns_subdomain};
use crate::{Fabric, ModelIdentity, NexusNode, RoutingDomain};

/// One thing wrong with one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path, e.g. `spec.rollout.maxUnavailable` or `spec.endpoints[1].name`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The outcome for one YAML document of a file.
#[derive(Clone, Debug)]
pub struct DocumentReport {
    /// 0-based index of the document in its file.
    pub index: usize,
    /// `kind` of the document, when it has one.
    pub kind: Option<String>,
    /// `metadata.name`, when it has one.
    pub name: Option<String>,
    /// Problems; empty means valid.
    pub problems: Vec<Problem>,
}

struct Rule {
    program: cel::Program,
    source: String,
    message: String,
    field_path: Option<String>,
}

struct KindSchema {
    kind: &'static str,
    namespaced: bool,
    /// The CRD's openAPIV3Schema, as committed.
    schema: Value,
    /// Compiled JSON Schema of the same, made strict (no unknown fields) and nullable-aware.
    json_schema: jsonschema::Validator,
    /// CEL rules, compiled once, keyed by the address of the schema node that declares them.
    rules: BTreeMap<String, Vec<Rule>>,
    decode: Decoder,
}

/// Decodes a validated document into its Rust type, reporting serde's error.
type Decoder = fn(Value) -> Result<(), String>;

/// Validates manifests of every Nexus kind. Build once, use for many documents.
pub struct Validator {
    kinds: Vec<KindSchema>,
    cel_env: Arc<cel::Env>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field(
                "kinds",
                &self.kinds.iter().map(|k| k.kind).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The validator could not be built from the generated CRDs: a bug in this crate, not in input.
#[derive(Debug, thiserror::Error)]
#[error("invalid generated schema for {kind}: {message}")]
pub struct SchemaError {
    kind: String,
    message: String,
}

fn decode_as<T: serde::de::DeserializeOwned>(v: Value) -> Result<(), String> {
    serde_json::from_value::<T>(v)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Validator {
    /// Builds a validator from the CRDs this crate generates.
    pub fn new() -> Result<Self, SchemaError> {
        let cel_env = Arc::new(cel::Env::stdlib());
        let decoders: [(&str, Decoder); 4] = [
            ("Fabric", decode_as::<Fabric>),
            ("NexusNode", decode_as::<NexusNode>),
            ("RoutingDomain", decode_as::<RoutingDomain>),
            ("ModelIdentity", decode_as::<ModelIdentity>),
        ];
        let mut kinds = Vec::new();
        for (_, crd) in crate::crd::all() {
            let kind = decoders
                .iter()
                .find(|(k, _)| *k == crd.spec.names.kind)
                .ok_or_else(|| SchemaError {
                    kind: crd.spec.names.kind.clone(),
                    message: "no decoder".into(),
                })?;
            let err = |message: String| SchemaError {
                kind: kind.0.into(),
                message,
            };
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .ok_or_else(|| err("no openAPIV3Schema".into()))
                .and_then(|s| serde_json::to_value(s).map_err(|e| err(e.to_string())))?;
            let mut strict = to_strict_json_schema(&schema);
            // The API server handles these itself, so CRD schemas leave them out.
            if let Some(props) = strict.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
                props.insert("kind".into(), serde_json::json!({"type": "string"}));
                props.insert("metadata".into(), serde_json::json!({"type": "object"}));
            }
            let json_schema = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft4)
                .build(&strict)
                .map_err(|e| err(e.to_string()))?;
            let mut rules = BTreeMap::new();
            collect_rules(&schema, String::new(), &cel_env, &mut rules).map_err(err)?;
            kinds.push(KindSchema {
                kind: kind.0,
                namespaced: crd.spec.scope == "Namespaced",
                schema,
                json_schema,
                rules,
                decode: kind.1,
            });
        }
        Ok(Self { kinds, cel_env })
    }

    /// Kinds this validator knows.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|k| k.kind)
    }

    /// Validates every document of a (multi-document) YAML text.
    pub fn validate_yaml(&self, text: &str) -> Result<Vec<DocumentReport>, String> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
        Ok(docs
            .into_iter()
            .enumerate()
            .filter(|(_, d)| !d.is_null())
            .map(|(index, doc)| {
                let kind = doc.get("kind").and_then(Value::as_str).map(str::to_owned);
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                DocumentReport {
                    index,
                    kind,
                    name,
                    problems: self.validate_value(doc),
                }
            })
            .collect())
    }

    /// Validates one document; an empty result means the API server would accept it.
    pub fn validate_value(&self, doc: Value) -> Vec<Problem> {
        self.admit(doc).err().unwrap_or_default()
    }

    /// What the API server does with a write: default, then validate. Returns the defaulted
    /// document (what would be stored), or every problem found.
    pub fn admit(&self, mut doc: Value) -> Result<Value, Vec<Problem>> {
        let problem = |path: &str, message: String| Problem {
            path: path.into(),
            message,
        };
        let Some(obj) = doc.as_object() else {
            return Err(vec![problem(
                "",
                "a manifest must be a YAML mapping".into(),
            )]);
        };
        let field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            return Err(vec![problem("", "apiVersion and kind are required".into())]);
        };
        let expected = format!("{}/{}", crate::common::GROUP, crate::common::VERSION);
        let Some(ks) = self.kinds.iter().find(|k| k.kind == kind.as_str()) else {
            let known: Vec<_> = self.kinds().collect();
            return Err(vec![problem(
                "kind",
                format!("unknown kind {kind:?} (Nexus kinds: {})", known.join(", ")),
            )]);
        };
        if api_version != expected {
            return Err(vec![problem(
                "apiVersion",
                format!("{kind} is served as {expected}, not {api_version:?}"),
            )]);
        }
        let mut problems = check_metadata(doc.get("metadata"), ks.namespaced);

        // The API server defaults before it validates; CEL rules see the defaulted object.
        apply_defaults(&ks.schema, &mut doc);

        for e in ks.json_schema.iter_errors(&doc) {
            let path = pointer_to_path(e.instance_path().as_str());
            problems.push(problem(&path, e.to_string()));
        }
        if problems.is_empty() {
            check_node(
                &ks.schema,
                &doc,
                String::new(),
                ks,
                &self.cel_env,
                &mut problems,
            );
        }
        if problems.is_empty()
            && let Err(e) = (ks.decode)(doc.clone())
        {
            problems.push(problem("", format!("does not decode as {kind}: {e}")));
        }
        if problems.is_empty() {
            Ok(doc)
        } else {
            Err(problems)
        }
    }
}

/// `metadata.name` is required and must be a DNS subdomain; cluster-scoped kinds take no namespace.
fn check_metadata(meta: Option<&Value>, namespaced: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    let p = |path: &str, message: &str| Problem {
        path: path.into(),
        message: message.into(),
    };
    let Some(meta) = meta.and_then(Value::as_object) else {
        return vec![p("metadata", "metadata with a name is required")];
    };
    match meta.get("name").and_then(Value::as_str) {
        None => out.push(p("metadata.name", "required")),
        Some(n) if !is_dns_subdomain(n) => out.push(p(
            "metadata.name",
            "must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.'; at most 253 characters)",
        )),
        _ => {}
    }
    if let Some(ns) = meta.get("namespace") {
        if !namespaced {
            out.push(p(
                "metadata.namespace",
                "this kind is cluster-scoped: remove the namespace",
            ));
        } else if !ns.as_str().is_some_and(is_dns_label) {
            out.push(p("metadata.namespace", "must be an RFC 1123 label"));
        }
    }
    out
}

/// `/spec/endpoints/1/name` → `spec.endpoints[1].name`.
fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// A JSON Schema equivalent of an OpenAPI v3 structural schema under strict field validation:
/// `nullable` becomes a `null` type and objects with declared properties reject unknown ones
/// (what `kubectl apply --validate=strict`, kubectl's default, does).
fn to_strict_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out: Map<String, Value> = m
                .iter()
                .filter(|(k, _)| !k.starts_with("x-kubernetes-") && *k != "nullable")
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        // Maps whose values are schemas.
                        "properties" => Value::Object(
                            v.as_object()
                                .map(|props| {
                                    props
                                        .iter()
                                        .map(|(pk, pv)| (pk.clone(), to_strict_json_schema(pv)))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        ),
                        "items" | "additionalProperties" | "not" => to_strict_json_schema(v),
                        "anyOf" | "allOf" | "oneOf" => Value::Array(
                            v.as_array()
                                .map(|a| a.iter().map(to_strict_json_schema).collect())
                                .unwrap_or_default(),
                        ),
                        _ => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            let preserve =
                m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if m.contains_key("properties") && !m.contains_key("additionalProperties") && !preserve
            {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            if m.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Fills in `default`s of absent properties, recursively, as structural defaulting does.
fn apply_defaults(schema: &Value, doc: &mut Value) {
    match doc {
        Value::Object(obj) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    if !obj.contains_key(name)
                        && let Some(d) = sub.get("default")
                    {
                        obj.insert(name.clone(), d.clone());
                    }
                    if let Some(child) = obj.get_mut(name) {
                        apply_defaults(sub, child);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                obj.values_mut().for_each(|c| apply_defaults(sub, c));
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                items.iter_mut().for_each(|c| apply_defaults(sub, c));
            }
        }
        _ => {}
    }
}

/// Compiles every `x-kubernetes-validations` rule once, keyed by schema address.
fn collect_rules(
    schema: &Value,
    addr: String,
    env: &cel::Env,
    out: &mut BTreeMap<String, Vec<Rule>>,
) -> Result<(), String> {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        let mut compiled = Vec::new();
        for r in rules {
            let source = r
                .get("rule")
                .and_then(Value::as_str)
                .ok_or("a validation without a rule")?;
            let program = env
                .compile(source)
                .map_err(|e| format!("rule {source:?} does not compile: {e}"))?;
            compiled.push(Rule {
                program,
                source: source.into(),
                message: r
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("failed rule: {source}")),
                field_path: r
                    .get("fieldPath")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
        out.insert(addr.clone(), compiled);
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            collect_rules(v, format!("{addr}/{k}"), env, out)?;
        }
    }
    if let Some(items) = schema.get("items") {
        collect_rules(items, format!("{addr}/*"), env, out)?;
    }
    Ok(())
}

/// Walks schema and document together: list-type semantics and CEL rules at every node.
fn check_node(
    schema: &Value,
    doc: &Value,
    addr: String,
    ks: &KindSchema,
    env: &Arc<cel::Env>,
    problems: &mut Vec<Problem>,
) {
    check_list_type(schema, doc, &addr, problems);
    if let Some(rules) = ks.rules.get(&schema_addr(&addr)) {
        for rule in rules {
            match eval_rule(rule, doc, env) {
                Ok(true) => {}
                Ok(false) => problems.push(Problem {
                    path: join_path(&addr, rule.field_path.as_deref()),
                    message: rule.message.clone(),
                }),
                Err(e) => problems.push(Problem {
                    path: addr_to_path(&addr),
                    message: format!("rule {:?} could not be evaluated: {e}", rule.source),
                }),
            }
        }
    }
    match doc {
        Value::Object(obj) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if let Some(child) = obj.get(k) {
                        check_node(sub, child, format!("{addr}/{k}"), ks, env, problems);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, child) in items.iter().enumerate() {
                    check_node(sub, child, format!("{addr}/{i}"), ks, env, problems);
                }
            }
        }
        _ => {}
    }
}

/// Document address → schema address (array indices become `*`).
fn schema_addr(addr: &str) -> String {
    addr.split('/')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn addr_to_path(addr: &str) -> String {
    pointer_to_path(addr)
}

/// Appends a rule's `fieldPath` (`.a.b`) to the node's path.
fn join_path(addr: &str, field_path: Option<&str>) -> String {
    let base = addr_to_path(addr);
    match field_path {
        None => base,
        Some(fp) => {
            let fp = fp.trim_start_matches('.');
            if base.is_empty() {
                fp.to_owned()
            } else {
                format!("{base}.{fp}")
            }
        }
    }
}

fn check_list_type(schema: &Value, doc: &Value, addr: &str, problems: &mut Vec<Problem>) {
    let Some(items) = doc.as_array() else { return };
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    problems.push(Problem {
                        path: addr_to_path(&format!("{addr}/{i}")),
                        message: format!("duplicate value {item}"),
                    });
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<String> = keys
                    .iter()
                    .map(|k| item.get(*k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(key.clone()) {
                    problems.push(Problem {
                        path: addr_to_path(&format!("{addr}/{i}")),
                        message: format!(
                            "duplicate entry with {} = {}",
                            keys.join(","),
                            key.join(",")
                        ),
                    });
                }
            }
        }
        _ => {}
    }
}

fn eval_rule(rule: &Rule, value: &Value, env: &Arc<cel::Env>) -> Result<bool, String> {
    let mut ctx = cel::Context::with_env(env.clone());
    ctx.add_variable("self", value.clone())
        .map_err(|e| e.to_string())?;
    match rule.program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("returned {other:?}, not a bool")),
        Err(e) => Err(e.to_string()),
    }
}
