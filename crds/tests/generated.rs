//! The committed CRD YAML is exactly what the types generate, and it follows the Kubernetes API
//! conventions a real API server enforces.

use std::path::Path;

use nexus_crds::crd;
use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, def) in crd::all() {
        let generated = crd::to_yaml(&def).expect("the generated CRD serialises");
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/{file} is stale: regenerate it with `cargo run -p nexctl -- crds --out crds`"
        );
    }
}

fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
    out.push((path.clone(), v));
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| walk(c, format!("{path}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| walk(c, format!("{path}/{i}"), out)),
        _ => {}
    }
}

#[test]
fn crds_follow_api_conventions() {
    for (file, def) in crd::all() {
        assert_eq!(def.spec.group, "nexus.dev");
        assert_eq!(def.spec.versions.len(), 1, "{file}");
        let v = &def.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage, "{file}: served and stored");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}: status subresource"
        );
        let cols = v.additional_printer_columns.as_deref().unwrap_or_default();
        assert!(cols.len() >= 4, "{file}: printer columns for kubectl get");
        assert!(cols.iter().any(|c| c.name == "Age"), "{file}: Age column");
        // A `date` column renders as an age; kubectl shows `<invalid>` for a time in the future
        // (an expiry, a renewal, a soak end). Only past times (creation, heartbeats) are dates.
        for c in cols {
            if c.type_ == "date" {
                let past = c.json_path == ".metadata.creationTimestamp"
                    || c.json_path.ends_with(".heartbeat");
                assert!(
                    past,
                    "{file}: column {} is a date but may lie in the future",
                    c.name
                );
            }
        }
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref()),
        )
        .expect("schema serialises");
        let mut nodes = Vec::new();
        walk(&schema, String::new(), &mut nodes);
        for (path, node) in nodes {
            let Some(obj) = node.as_object() else {
                continue;
            };
            if let Some(Value::String(f)) = obj.get("format") {
                assert!(
                    crd::SUPPORTED_FORMATS.contains(&f.as_str()),
                    "{file}{path}: format {f}"
                );
            }
            if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                assert_eq!(
                    obj.get("anyOf"),
                    Some(&serde_json::json!([{"type": "integer"}, {"type": "string"}])),
                    "{file}{path}: int-or-string the Kubernetes way"
                );
                assert!(
                    !obj.contains_key("type") && !obj.contains_key("nullable"),
                    "{file}{path}"
                );
            }
            // Structural: every schema node that is a property (not an anyOf branch) has a type,
            // unless it is int-or-string or preserves unknown fields.
            if path.contains("/properties/")
                && !path.contains("/anyOf/")
                && path.rsplit('/').nth(1) == Some("properties")
            {
                assert!(
                    obj.contains_key("type")
                        || obj.contains_key("x-kubernetes-int-or-string")
                        || obj.contains_key("x-kubernetes-preserve-unknown-fields"),
                    "{file}{path}: structural schemas give every field a type"
                );
            }
            if path.ends_with("/properties/conditions") {
                assert_eq!(
                    obj.get("x-kubernetes-list-type"),
                    Some(&Value::String("map".into())),
                    "{file}{path}"
                );
                let item_props = &obj["items"]["properties"];
                for f in [
                    "type",
                    "status",
                    "reason",
                    "message",
                    "lastTransitionTime",
                    "observedGeneration",
                ] {
                    assert!(
                        item_props.get(f).is_some(),
                        "{file}{path}: standard Condition has {f}"
                    );
                }
            }
        }
        let status = &schema["properties"]["status"]["properties"];
        assert!(
            status.get("conditions").is_some(),
            "{file}: status.conditions"
        );
    }
}
