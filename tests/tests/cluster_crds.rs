//! Against a real API server (only when KUBECONFIG is set): the generated CRDs install, the
//! examples pass server-side validation, and the bad fixtures are refused by the server just as
//! `nexctl validate` refuses them offline.

use nexus_e2e::{cluster_unavailable, kubectl, repo_root, skip};

/// Fixtures whose problem only the offline validator reports (the API server silently drops a
/// namespace on a cluster-scoped object; kubectl fails on the others before reaching the server).
const OFFLINE_ONLY: &[&str] = &["fabric-namespaced.yaml"];

/// Whether a bad fixture can only be caught offline: one whose only problem is in `status` is
/// accepted by a real API server on create, because the status subresource makes the server
/// drop `status` from creates (the fixture's first line names the field it breaks).
fn offline_only(name: &str, text: &str) -> bool {
    OFFLINE_ONLY.contains(&name)
        || text
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("# expect: status."))
}

#[test]
fn status_only_fixtures_are_offline_only() {
    let bad = repo_root().join("crds/tests/fixtures/bad");
    let text =
        std::fs::read_to_string(bad.join("nexusnode-bad-pci-address.yaml")).expect("fixture");
    assert!(offline_only("nexusnode-bad-pci-address.yaml", &text));
    let text = std::fs::read_to_string(bad.join("fabric-bad-sha256.yaml")).expect("fixture");
    assert!(!offline_only("fabric-bad-sha256.yaml", &text));
}

#[test]
fn crds_install_and_validate_on_a_real_cluster() {
    if let Some(why) = cluster_unavailable() {
        skip("crds_install_and_validate_on_a_real_cluster", &why);
        return;
    }
    let root = repo_root();
    let out = kubectl(
        ["apply", "--server-side", "--field-manager=nexus-e2e", "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([root.join("crds").display().to_string()]),
    )
    .expect("kubectl runs");
    assert!(
        out.status.success(),
        "CRDs install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/fabrics.nexus.dev",
        "crd/nexusnodes.nexus.dev",
        "crd/routingdomains.nexus.dev",
        "crd/modelidentities.nexus.dev",
    ])
    .expect("kubectl runs");
    assert!(
        out.status.success(),
        "CRDs established: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = kubectl(["create", "namespace", "acme"]);

    let examples = root.join("deploy/examples");
    let out = kubectl(
        ["apply", "--dry-run=server", "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([examples.display().to_string()]),
    )
    .expect("kubectl runs");
    assert!(
        out.status.success(),
        "examples accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = root.join("crds/tests/fixtures/bad");
    for entry in std::fs::read_dir(&bad).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if offline_only(&name, &text) {
            continue;
        }
        let out = kubectl([
            "apply",
            "--dry-run=server",
            "-f",
            &path.display().to_string(),
        ])
        .expect("kubectl runs");
        assert!(
            !out.status.success(),
            "{name}: the API server accepted a bad manifest"
        );
    }
}
