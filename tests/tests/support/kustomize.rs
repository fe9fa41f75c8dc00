//! The subset of kustomize that `deploy/` uses, so the manifests render without a kustomize
//! binary: `resources` (files and directories holding a kustomization), `namespace`, and
//! `patches` given inline as RFC 6902 JSON patches with a `target` of kind and name. Any other
//! field of a kustomization is refused, so `deploy/` cannot start using a feature this renderer
//! would silently ignore. When `kubectl` is on PATH the test also compares this rendering with
//! `kubectl kustomize`'s.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// Kinds that have no namespace (the namespace transformer leaves them alone).
pub const CLUSTER_SCOPED: [&str; 6] = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// The YAML documents of a file, empty ones dropped.
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// (kind, namespace, name) of an object.
pub fn id(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

/// Renders the kustomization in `dir`.
pub fn render(dir: &Path) -> Vec<Value> {
    let k = documents(&dir.join("kustomization.yaml"))
        .pop()
        .unwrap_or_else(|| panic!("{}: empty kustomization", dir.display()));
    let allowed = ["apiVersion", "kind", "namespace", "resources", "patches"];
    for key in k.as_object().expect("a kustomization is a mapping").keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{}: kustomization field `{key}` is outside the subset this renderer implements",
            dir.display()
        );
    }
    assert_eq!(k["kind"], "Kustomization");
    let mut out: Vec<Value> = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let path = dir.join(r.as_str().expect("a resource is a path"));
        if path.is_dir() {
            out.extend(render(&path));
        } else {
            out.extend(documents(&path));
        }
    }
    if let Some(ns) = k["namespace"].as_str() {
        for o in &mut out {
            let kind = o["kind"].as_str().unwrap_or_default();
            if !CLUSTER_SCOPED.contains(&kind) {
                o["metadata"]["namespace"] = Value::String(ns.to_owned());
            }
        }
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        let target = &p["target"];
        let ops: Vec<Value> = serde_saphyr::from_str(p["patch"].as_str().expect("inline patch"))
            .unwrap_or_else(|e| panic!("{}: patch: {e}", dir.display()));
        let mut hits = 0;
        for o in out
            .iter_mut()
            .filter(|o| o["kind"] == target["kind"] && o["metadata"]["name"] == target["name"])
        {
            for op in &ops {
                apply_op(o, op).unwrap_or_else(|e| panic!("{}: {op}: {e}", dir.display()));
            }
            hits += 1;
        }
        assert!(
            hits > 0,
            "{}: patch target {target} matches nothing",
            dir.display()
        );
    }
    let mut seen = BTreeSet::new();
    for o in &out {
        assert!(
            seen.insert(id(o)),
            "{}: duplicate object {:?}",
            dir.display(),
            id(o)
        );
    }
    out
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// One RFC 6902 operation (add, remove, replace).
fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = op["path"].as_str().ok_or("no path")?;
    let (parent_path, last) = path.rsplit_once('/').ok_or("path must start with /")?;
    let last = unescape(last);
    let parent = doc
        .pointer_mut(parent_path)
        .ok_or_else(|| format!("no {parent_path}"))?;
    let value = op.get("value").cloned();
    match (op["op"].as_str(), parent) {
        (Some("add"), Value::Object(m)) => {
            m.insert(last, value.ok_or("add needs a value")?);
        }
        (Some("add"), Value::Array(a)) => {
            let v = value.ok_or("add needs a value")?;
            if last == "-" {
                a.push(v);
            } else {
                let i: usize = last.parse().map_err(|_| "bad index")?;
                if i > a.len() {
                    return Err("index out of range".into());
                }
                a.insert(i, v);
            }
        }
        (Some("replace"), Value::Object(m)) if m.contains_key(&last) => {
            m.insert(last, value.ok_or("replace needs a value")?);
        }
        (Some("replace"), Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| "bad index")?;
            *a.get_mut(i).ok_or("index out of range")? = value.ok_or("replace needs a value")?;
        }
        (Some("remove"), Value::Object(m)) => {
            m.remove(&last).ok_or("nothing to remove")?;
        }
        (Some("remove"), Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| "bad index")?;
            if i >= a.len() {
                return Err("index out of range".into());
            }
            a.remove(i);
        }
        (other, _) => return Err(format!("unsupported op {other:?} at {path}")),
    }
    Ok(())
}
