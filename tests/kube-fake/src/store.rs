//! The object store and the write semantics of a real API server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nexus_crds::validate::Validator;
use serde_json::{Map, Value, json};

use crate::resources::{ResourceType, TYPES};
use crate::selector;

/// A failed request, as the API server's `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `Conflict`, `Invalid`, `TooManyRequests`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details.causes` as (field, message).
    pub causes: Vec<(String, String)>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{}.{} \"{name}\" not found", rt.plural, group_or_core(rt)),
        )
    }

    /// The `Status` body.
    pub fn body(&self) -> Value {
        let causes: Vec<Value> = self
            .causes
            .iter()
            .map(|(field, message)| json!({"reason": "FieldValueInvalid", "field": field, "message": message}))
            .collect();
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": {"causes": causes},
            "code": self.code,
        })
    }
}

fn group_or_core(rt: &ResourceType) -> &'static str {
    if rt.group.is_empty() { "" } else { rt.group }
}

/// Identity of a stored object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// `ResourceType::key`.
    pub ty: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One watch event in the log.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    /// Resource version of the change.
    pub rv: u64,
    /// Object key.
    pub key: ObjKey,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: &'static str,
    /// Object after the change (before, for `DELETED`).
    pub object: Value,
}

/// One write, for assertions on field managers and on what a controller wrote.
#[derive(Clone, Debug)]
pub struct Write {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Field manager (`unknown` when the request named none, as the API server records it).
    pub manager: String,
    /// Response code.
    pub code: u16,
    /// Request body.
    pub body: Value,
}

pub(crate) struct Stored {
    pub value: Value,
    /// Pods being deleted are removed at this time (kubelet confirming termination).
    pub remove_at: Option<tokio::time::Instant>,
}

/// The server's state.
pub struct State {
    pub(crate) rv: u64,
    pub(crate) objects: BTreeMap<ObjKey, Stored>,
    /// Field manager owning each section of each object (see [`sections`]).
    pub(crate) owners: BTreeMap<ObjKey, BTreeMap<String, String>>,
    pub(crate) log: Vec<LoggedEvent>,
    pub(crate) writes: Vec<Write>,
    pub(crate) requests: Vec<(String, String, u16)>,
    pub(crate) validator: Option<Arc<Validator>>,
    /// How long an evicted or deleted pod stays terminating.
    pub pod_termination: std::time::Duration,
    pub(crate) faults: Vec<crate::Fault>,
    next_uid: u64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("rv", &self.rv)
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Sections of an object that field ownership is tracked for: each top-level field other than
/// `apiVersion`, `kind`, `metadata`, and the owner-visible parts of metadata. (A real server
/// tracks every leaf field; one writer per section is this project's convention, so the fake
/// tracks sections and reports a conflict when two managers write the same one.)
pub(crate) fn sections(obj: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    for (k, v) in map {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                for sub in ["labels", "annotations"] {
                    if let Some(m) = v.get(sub).and_then(Value::as_object) {
                        for (lk, lv) in m {
                            out.insert(format!("metadata.{sub}.{lk}"), lv.clone());
                        }
                    }
                }
                for sub in ["finalizers", "ownerReferences"] {
                    if let Some(x) = v.get(sub) {
                        out.insert(format!("metadata.{sub}"), x.clone());
                    }
                }
            }
            // Each field of `spec` is its own section, so two writers can share a spec (the
            // rollout writes a NexusNode's firmware, the routing controller its `routing`).
            "spec" if v.as_object().is_some_and(|m| !m.is_empty()) => {
                for (sk, sv) in v.as_object().into_iter().flatten() {
                    out.insert(format!("spec.{sk}"), sv.clone());
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn set_section(obj: &mut Value, section: &str, value: Option<Value>) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if let Some(rest) = section.strip_prefix("metadata.") {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(meta) = meta.as_object_mut() else {
            return;
        };
        if let Some((sub, key)) = rest.split_once('.') {
            let m = meta.entry(sub).or_insert_with(|| Value::Object(Map::new()));
            if let Some(m) = m.as_object_mut() {
                match value {
                    Some(v) => {
                        m.insert(key.to_owned(), v);
                    }
                    None => {
                        m.remove(key);
                    }
                }
            }
        } else {
            match value {
                Some(v) => {
                    meta.insert(rest.to_owned(), v);
                }
                None => {
                    meta.remove(rest);
                }
            }
        }
    } else if let Some(field) = section.strip_prefix("spec.") {
        let spec = map
            .entry("spec")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(spec) = spec.as_object_mut() {
            match value {
                Some(v) => {
                    spec.insert(field.to_owned(), v);
                }
                None => {
                    spec.remove(field);
                }
            }
        }
    } else {
        match value {
            Some(v) => {
                map.insert(section.to_owned(), v);
            }
            None => {
                map.remove(section);
            }
        }
    }
}

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Everything but metadata and status: what bumps `metadata.generation` when it changes.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// What kind of write a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteKind {
    /// POST.
    Create,
    /// PUT.
    Replace,
    /// JSON merge patch (and strategic merge patch, treated the same).
    Merge,
    /// Server-side apply.
    Apply {
        /// `force=true`.
        force: bool,
    },
}

impl State {
    pub(crate) fn new(validator: Option<Arc<Validator>>) -> Self {
        Self {
            rv: 1,
            objects: BTreeMap::new(),
            owners: BTreeMap::new(),
            log: Vec::new(),
            writes: Vec::new(),
            requests: Vec::new(),
            validator,
            pod_termination: std::time::Duration::from_secs(5),
            faults: Vec::new(),
            next_uid: 1,
        }
    }

    pub(crate) fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjKey {
        ObjKey {
            ty: rt.key(),
            namespace: if rt.namespaced {
                namespace.unwrap_or("default").to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, key: ObjKey, kind: &'static str, object: Value) {
        let rv = self.rv;
        self.log.push(LoggedEvent {
            rv,
            key,
            kind,
            object,
        });
    }

    /// Removes terminated pods whose time has come and objects whose last finalizer is gone.
    pub(crate) fn sweep(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<ObjKey> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.remove_at.is_some_and(|t| t <= now) && finalizers(&s.value).is_empty()
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.remove(&k);
        }
    }

    /// Removes an object for good: DELETED event, then garbage collection of its dependents.
    fn remove(&mut self, key: &ObjKey) {
        let Some(stored) = self.objects.remove(key) else {
            return;
        };
        self.owners.remove(key);
        self.bump();
        let uid = meta_str(&stored.value, "uid")
            .unwrap_or_default()
            .to_owned();
        let mut obj = stored.value;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        }
        self.record(key.clone(), "DELETED", obj);
        // Garbage collection (kube-controller-manager): dependents go with their owner.
        let dependents: Vec<ObjKey> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.value
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for d in dependents {
            let _ = self.delete_key(&d, false);
        }
    }

    /// Deletes: with finalizers the object only gets a deletionTimestamp (and, as the real server
    /// does, a new generation); pods stay terminating for `pod_termination` unless forced.
    pub(crate) fn delete_key(&mut self, key: &ObjKey, force: bool) -> Result<Value, ApiError> {
        let rt = TYPES
            .iter()
            .find(|t| t.key() == key.ty)
            .copied()
            .ok_or_else(|| ApiError::new(404, "NotFound", "unknown type"))?;
        let Some(stored) = self.objects.get(key) else {
            return Err(ApiError::not_found(&rt, &key.name));
        };
        let has_finalizers = !finalizers(&stored.value).is_empty();
        let is_pod = rt.kind == "Pod" && !force && !self.pod_termination.is_zero();
        if !has_finalizers && !is_pod {
            let obj = stored.value.clone();
            self.remove(key);
            return Ok(obj);
        }
        if meta_str(&stored.value, "deletionTimestamp").is_some() {
            return Ok(stored.value.clone());
        }
        let rv = self.bump();
        let termination = self.pod_termination;
        let Some(stored) = self.objects.get_mut(key) else {
            return Err(ApiError::not_found(&rt, &key.name));
        };
        if let Some(m) = stored
            .value
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            m.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
            if let Some(g) = m.get("generation").and_then(Value::as_i64) {
                m.insert("generation".into(), json!(g + 1));
            }
        }
        if is_pod {
            stored.remove_at = Some(tokio::time::Instant::now() + termination);
        }
        let obj = stored.value.clone();
        self.record(key.clone(), "MODIFIED", obj.clone());
        Ok(obj)
    }

    /// Validates a Nexus object after a write, the way the API server validates CRs against the
    /// CRD's structural schema and CEL rules. Returns the defaulted object.
    fn admit(&self, rt: &ResourceType, obj: Value) -> Result<Value, ApiError> {
        if !rt.nexus {
            return Ok(obj);
        }
        let Some(v) = &self.validator else {
            return Ok(obj);
        };
        let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
        // The validator checks what a user may write; server-populated metadata is not its
        // business (the real server's schema for metadata is only "type: object").
        let mut check = obj.clone();
        if let Some(m) = check.get_mut("metadata").and_then(Value::as_object_mut) {
            m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
        }
        match v.admit(check) {
            Ok(defaulted) => {
                // Keep the server's metadata, take the defaulted rest.
                let mut out = defaulted;
                if let (Some(o), Some(m)) = (out.as_object_mut(), obj.get("metadata")) {
                    o.insert("metadata".into(), m.clone());
                }
                Ok(out)
            }
            Err(problems) => {
                let causes: Vec<(String, String)> = problems
                    .iter()
                    .map(|p| (p.path.clone(), p.message.clone()))
                    .collect();
                let summary: Vec<String> = problems
                    .iter()
                    .map(|p| format!("{}: Invalid value: {}", p.path, p.message))
                    .collect();
                Err(ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!(
                        "{}.{} \"{name}\" is invalid: {}",
                        rt.kind,
                        rt.group,
                        summary.join(", ")
                    ),
                    causes,
                })
            }
        }
    }

    /// Applies one write to the object at `key`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write(
        &mut self,
        rt: &ResourceType,
        key: &ObjKey,
        kind: WriteKind,
        body: &Value,
        status_only: bool,
        manager: &str,
    ) -> Result<(Value, bool), ApiError> {
        let existing = self.objects.get(key).map(|s| s.value.clone());
        let created = existing.is_none();
        let mut next = match (&existing, kind) {
            (Some(_), WriteKind::Create) => {
                return Err(ApiError::new(
                    409,
                    "AlreadyExists",
                    format!(
                        "{}.{} \"{}\" already exists",
                        rt.plural,
                        group_or_core(rt),
                        key.name
                    ),
                ));
            }
            (None, WriteKind::Replace | WriteKind::Merge) => {
                return Err(ApiError::not_found(rt, &key.name));
            }
            (None, WriteKind::Apply { .. }) if status_only => {
                return Err(ApiError::not_found(rt, &key.name));
            }
            (None, _) => {
                let mut obj = body.clone();
                if let Some(m) = obj.as_object_mut() {
                    m.insert("apiVersion".into(), Value::String(rt.api_version()));
                    m.insert("kind".into(), Value::String(rt.kind.to_owned()));
                    if rt.status_subresource {
                        // The status subresource is on: status is not set on create.
                        m.remove("status");
                    }
                    let meta = m
                        .entry("metadata")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(meta) = meta.as_object_mut() {
                        meta.insert("name".into(), Value::String(key.name.clone()));
                        if rt.namespaced {
                            meta.insert("namespace".into(), Value::String(key.namespace.clone()));
                        }
                        meta.insert(
                            "uid".into(),
                            Value::String(format!("00000000-0000-4000-8000-{:012}", self.next_uid)),
                        );
                        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
                        meta.insert("generation".into(), json!(1));
                        meta.remove("resourceVersion");
                        meta.remove("deletionTimestamp");
                    }
                }
                self.next_uid += 1;
                obj
            }
            (Some(old), WriteKind::Replace) => {
                let want_rv = meta_str(body, "resourceVersion");
                if want_rv.is_some() && want_rv != meta_str(old, "resourceVersion") {
                    return Err(conflict(rt, &key.name));
                }
                let mut obj = body.clone();
                keep_server_metadata(&mut obj, old);
                obj
            }
            (Some(old), WriteKind::Merge) => {
                let want_rv = meta_str(body, "resourceVersion");
                if want_rv.is_some() && want_rv != meta_str(old, "resourceVersion") {
                    return Err(conflict(rt, &key.name));
                }
                let mut obj = old.clone();
                merge_patch(&mut obj, body);
                keep_server_metadata(&mut obj, old);
                obj
            }
            (Some(old), WriteKind::Apply { force }) => {
                let mut obj = old.clone();
                let applied = sections(body);
                let owners = self.owners.get(key).cloned().unwrap_or_default();
                let current = sections(old);
                let mut conflicts = Vec::new();
                for (s, v) in &applied {
                    if status_only != (s == "status") {
                        continue;
                    }
                    if let Some(owner) = owners.get(s)
                        && owner != manager
                        && current.get(s) != Some(v)
                        && !force
                    {
                        conflicts.push(format!("conflict with \"{owner}\": .{s}"));
                    }
                }
                if !conflicts.is_empty() {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Apply failed with {} conflict(s): {}",
                            conflicts.len(),
                            conflicts.join(", ")
                        ),
                    ));
                }
                // Fields this manager applied before and applies no more are removed.
                for (s, owner) in &owners {
                    if owner == manager
                        && !applied.contains_key(s)
                        && status_only == (s == "status")
                    {
                        set_section(&mut obj, s, None);
                    }
                }
                for (s, v) in &applied {
                    if status_only == (s == "status") {
                        set_section(&mut obj, s, Some(v.clone()));
                    }
                }
                obj
            }
        };
        // Subresource rules.
        if let Some(old) = &existing
            && rt.status_subresource
        {
            let old_status = old.get("status").cloned();
            if status_only {
                let new_status = next.get("status").cloned();
                next = old.clone();
                set_section(&mut next, "status", new_status);
            } else {
                set_section(&mut next, "status", old_status);
            }
        }
        // Generation.
        if let Some(old) = &existing
            && spec_part(old) != spec_part(&next)
            && let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut)
        {
            let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
            m.insert("generation".into(), json!(g + 1));
        }
        let next = self.admit(rt, next)?;
        if existing.as_ref() == Some(&next) {
            // A no-op write: nothing changes, no event (the resourceVersion stays).
            return Ok((next, false));
        }
        // Ownership.
        let before = existing.as_ref().map(sections).unwrap_or_default();
        let after = sections(&next);
        let owners = self.owners.entry(key.clone()).or_default();
        for (s, v) in &after {
            if before.get(s) != Some(v)
                || matches!(kind, WriteKind::Apply { .. }) && sections(body).contains_key(s)
            {
                owners.insert(s.clone(), manager.to_owned());
            }
        }
        owners.retain(|s, _| after.contains_key(s));
        let rv = self.bump();
        let mut next = next;
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        // The last finalizer of an object being deleted is gone: it goes.
        let deleting = meta_str(&next, "deletionTimestamp").is_some();
        self.objects.insert(
            key.clone(),
            Stored {
                value: next.clone(),
                remove_at: self.objects.get(key).and_then(|s| s.remove_at),
            },
        );
        self.record(
            key.clone(),
            if created { "ADDED" } else { "MODIFIED" },
            next.clone(),
        );
        if deleting
            && finalizers(&next).is_empty()
            && !(rt.kind == "Pod" && self.objects.get(key).is_some_and(|s| s.remove_at.is_some()))
        {
            self.remove(key);
        }
        Ok((next, true))
    }

    /// Objects of a type, optionally in one namespace.
    pub(crate) fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        let ty = rt.key();
        self.objects
            .iter()
            .filter(|(k, _)| k.ty == ty && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, s)| s.value.clone())
            .collect()
    }

    /// An eviction: refused with 429 when a PodDisruptionBudget would be violated.
    pub(crate) fn evict(&mut self, namespace: &str, name: &str) -> Result<(), ApiError> {
        let pods_rt = crate::resources::by_kind("Pod")
            .ok_or_else(|| ApiError::new(500, "InternalError", "no pod type"))?;
        let key = Self::key(&pods_rt, Some(namespace), name);
        let Some(pod) = self.objects.get(&key).map(|s| s.value.clone()) else {
            return Err(ApiError::not_found(&pods_rt, name));
        };
        if meta_str(&pod, "deletionTimestamp").is_some() {
            return Ok(());
        }
        let pdb_rt = crate::resources::by_kind("PodDisruptionBudget")
            .ok_or_else(|| ApiError::new(500, "InternalError", "no PDB type"))?;
        let pods = self.list(&pods_rt, Some(namespace));
        for pdb in self.list(&pdb_rt, Some(namespace)) {
            let Some(sel) = pdb.pointer("/spec/selector") else {
                continue;
            };
            if !selector::selector_object_matches(sel, &pod) {
                continue;
            }
            let covered: Vec<&Value> = pods
                .iter()
                .filter(|p| selector::selector_object_matches(sel, p))
                .collect();
            let expected = covered.len() as i64;
            let healthy = covered
                .iter()
                .filter(|p| meta_str(p, "deletionTimestamp").is_none())
                .count() as i64;
            let resolve = |v: &Value| -> i64 {
                match v {
                    Value::Number(n) => n.as_i64().unwrap_or(0),
                    Value::String(s) => s
                        .strip_suffix('%')
                        .and_then(|p| p.parse::<i64>().ok())
                        .map_or(0, |p| (expected * p + 99) / 100),
                    _ => 0,
                }
            };
            let desired = if let Some(min) = pdb.pointer("/spec/minAvailable") {
                resolve(min)
            } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
                expected - resolve(max)
            } else {
                0
            };
            if healthy - desired < 1 {
                let pdb_name = meta_str(&pdb, "name").unwrap_or_default();
                let mut e = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                e.causes.push((
                    "DisruptionBudget".into(),
                    format!("The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"),
                ));
                return Err(e);
            }
        }
        self.delete_key(&key, false).map(|_| ())
    }

    /// Current resource version.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Stores an object as an administrator would (`kubectl apply`): created or replaced,
    /// status included, no validation bypass for Nexus kinds.
    pub(crate) fn put_admin(
        &mut self,
        rt: &ResourceType,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let name = meta_str(&obj, "name").unwrap_or_default().to_owned();
        let ns = meta_str(&obj, "namespace").map(str::to_owned);
        let key = Self::key(rt, ns.as_deref(), &name);
        let status = obj.get("status").cloned();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let (mut v, _) = if self.objects.contains_key(&key) {
            self.write(rt, &key, WriteKind::Replace, &obj, false, "kubectl")?
        } else {
            self.write(rt, &key, WriteKind::Create, &obj, false, "kubectl")?
        };
        if let Some(s) = status
            && rt.status_subresource
        {
            let body = json!({"status": s});
            v = self
                .write(rt, &key, WriteKind::Merge, &body, true, "kubectl")?
                .0;
        }
        // Fixtures stand for state that was there before the test: they own no fields, so they
        // never make a controller's first apply conflict.
        self.owners.remove(&key);
        Ok(v)
    }

    /// Keys of every object (for tests).
    pub(crate) fn keys(&self) -> BTreeSet<ObjKey> {
        self.objects.keys().cloned().collect()
    }
}

fn conflict(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            rt.plural,
            group_or_core(rt)
        ),
    )
}

/// Server-populated metadata survives replaces and patches.
fn keep_server_metadata(obj: &mut Value, old: &Value) {
    let Some(old_meta) = old.get("metadata").and_then(Value::as_object) else {
        return;
    };
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    let meta = m
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    for k in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        match old_meta.get(k) {
            Some(v) => {
                meta.insert(k.into(), v.clone());
            }
            None => {
                meta.remove(k);
            }
        }
    }
    if let Some(kind) = old.get("kind") {
        m.insert("kind".into(), kind.clone());
    }
    if let Some(av) = old.get("apiVersion") {
        m.insert("apiVersion".into(), av.clone());
    }
}
