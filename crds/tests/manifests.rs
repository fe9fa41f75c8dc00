//! Examples in deploy/examples are valid and decode into the Rust types; every bad fixture is
//! rejected with the field path its first line (`# expect: …`) names.

#![cfg(feature = "validate")]

use std::path::{Path, PathBuf};

use nexus_crds::validate::Validator;
use serde_json::Value;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("fixture dir exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn examples_are_valid_and_decode() {
    let validator = Validator::new().expect("validator builds from generated CRDs");
    let examples = files(&root().join("deploy/examples"));
    let mut kinds = std::collections::BTreeSet::new();
    for file in &examples {
        let text = std::fs::read_to_string(file).expect("example readable");
        let reports = validator.validate_yaml(&text).expect("example is YAML");
        assert!(!reports.is_empty(), "{}: no documents", file.display());
        for r in reports {
            assert!(
                r.problems.is_empty(),
                "{}[{}]: {:?}",
                file.display(),
                r.index,
                r.problems
            );
            kinds.insert(r.kind.clone().expect("examples have kinds"));
        }
        // Decoding straight into the Rust types, independently of the validator.
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        for d in docs {
            let kind = d["kind"].as_str().expect("kind").to_owned();
            let ok = match kind.as_str() {
                "Fabric" => serde_json::from_value::<nexus_crds::Fabric>(d).map(|_| ()),
                "NexusNode" => serde_json::from_value::<nexus_crds::NexusNode>(d).map(|_| ()),
                "RoutingDomain" => {
                    serde_json::from_value::<nexus_crds::RoutingDomain>(d).map(|_| ())
                }
                "ModelIdentity" => {
                    serde_json::from_value::<nexus_crds::ModelIdentity>(d).map(|_| ())
                }
                other => panic!("unexpected kind {other}"),
            };
            ok.unwrap_or_else(|e| panic!("{}: {kind} does not decode: {e}", file.display()));
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["Fabric", "ModelIdentity", "NexusNode", "RoutingDomain"],
        "every kind has an example"
    );
}

#[test]
fn bad_fixtures_are_rejected_with_their_field_path() {
    let validator = Validator::new().expect("validator builds");
    let bad = files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad"));
    assert!(bad.len() >= 20, "a broad set of bad fixtures");
    for file in bad {
        let text = std::fs::read_to_string(&file).expect("fixture readable");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: …`", file.display()));
        let found: Vec<String> = match validator.validate_yaml(&text) {
            Err(e) => vec![format!("not valid YAML: {e}")],
            Ok(reports) => reports
                .iter()
                .flat_map(|r| r.problems.iter().map(|p| p.to_string()))
                .collect(),
        };
        assert!(
            found.iter().any(|p| p.contains(expect)),
            "{}: expected a problem containing {expect:?}, got {found:?}",
            file.display()
        );
    }
}

#[test]
fn valid_document_stays_valid_after_defaulting() {
    // Defaults are applied before CEL rules run, as on the API server: a ModelIdentity with no
    // duration/renewBefore gets 24h/8h and passes `renewBefore < duration`.
    let validator = Validator::new().expect("validator builds");
    let text = std::fs::read_to_string(
        root().join("crds/tests/fixtures/bad/modelidentity-renew-before-too-long.yaml"),
    )
    .expect("fixture");
    let fixed = text.replace("  duration: 4h\n  renewBefore: 6h\n", "");
    let reports = validator.validate_yaml(&fixed).expect("YAML");
    assert!(reports.iter().all(|r| r.problems.is_empty()), "{reports:?}");
}
