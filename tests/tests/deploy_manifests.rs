//! `deploy/kubernetes` renders with kustomize (offline, via `kubectl kustomize`), and on a real
//! cluster (KUBECONFIG set) the rendered objects pass server-side dry-run.

use nexus_e2e::{cluster_unavailable, kubectl, repo_root, skip};

#[test]
fn deploy_manifests_render_and_apply() {
    let dir = repo_root().join("deploy/kubernetes");
    let Ok(out) = kubectl(["kustomize".to_owned(), dir.display().to_string()]) else {
        skip(
            "deploy_manifests_render_and_apply",
            "kubectl is not on PATH",
        );
        return;
    };
    assert!(
        out.status.success(),
        "kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    for kind in [
        "Namespace",
        "ClusterRole",
        "Deployment",
        "DaemonSet",
        "Service",
        "Role",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "renders a {kind}"
        );
    }
    // The controller's ClusterRole allows what the controllers call, including evictions.
    assert!(rendered.contains("pods/eviction"));
    assert!(rendered.contains("fabrics/status"));
    // The agent: no ConfigMaps (bundles come from the controller), its writes restricted to its
    // own node by an admission policy bound to Deny.
    let docs: Vec<&str> = rendered.split("\n---\n").collect();
    let agent_role = docs
        .iter()
        .find(|d| d.contains("kind: ClusterRole\n") && d.contains("name: nexus-agent\n"))
        .expect("the agent's ClusterRole");
    assert!(!agent_role.contains("configmaps"), "{agent_role}");
    assert!(!agent_role.contains("secrets"), "{agent_role}");
    assert!(rendered.contains("kind: ValidatingAdmissionPolicy\n"));
    assert!(rendered.contains("authentication.kubernetes.io/node-name"));
    assert!(rendered.contains("validationActions:\n  - Deny"));
    assert!(rendered.contains("--bundle-server"));

    if let Some(why) = cluster_unavailable() {
        skip("deploy_manifests_render_and_apply (cluster part)", &why);
        return;
    }
    let file = std::env::temp_dir().join(format!("nexus-deploy-{}.yaml", std::process::id()));
    std::fs::write(&file, rendered).expect("write rendered manifests");
    let out = kubectl([
        "apply",
        "--dry-run=server",
        "-f",
        &file.display().to_string(),
    ])
    .expect("kubectl runs");
    assert!(
        out.status.success(),
        "server dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(file);
}
