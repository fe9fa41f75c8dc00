//! `nexctl import` on an A2A Agent Card and an MCP server.json: the printed endpoint list,
//! dropped into a RoutingDomain, passes `nexctl validate`; the descriptor decodes.

use std::path::PathBuf;
use std::process::Command;

fn nexctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nexctl"))
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dataplane/route/examples")
        .join(name)
}

fn import(file: &PathBuf, extra: &[&str]) -> (i32, String, String) {
    let out = nexctl()
        .arg("import")
        .arg(file)
        .args(extra)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn imported_endpoints_make_a_valid_routing_domain() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, n) in [("agent-card.json", 2), ("server.json", 1)] {
        let (code, stdout, stderr) = import(&example(file), &[]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("endpoints:"), "{stdout}");
        assert_eq!(stdout.matches("modelIdentityRef:").count(), n, "{stdout}");
        // Indent the list under spec: and validate the whole manifest as the API server would.
        let body: String = stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("  {l}\n"))
            .collect();
        let manifest = format!(
            "apiVersion: nexus.dev/v1alpha1\nkind: RoutingDomain\nmetadata:\n  name: imported\n  namespace: acme\nspec:\n  tenant: acme\n  fabricRef:\n    name: gpu-east\n{body}"
        );
        let path = dir.path().join(format!("{file}.yaml"));
        std::fs::write(&path, manifest).expect("write");
        let v = nexctl().arg("validate").arg(&path).output().expect("runs");
        assert!(
            v.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
}

#[test]
fn descriptor_output_and_refusals() {
    let (code, stdout, stderr) = import(&example("agent-card.json"), &["--output", "descriptor"]);
    assert_eq!(code, 0, "{stderr}");
    let hex_line = stdout
        .lines()
        .find(|l| l.starts_with("# "))
        .expect("hex line");
    let hex = hex_line.rsplit(' ').next().expect("hex");
    let bytes = hex::decode(hex).expect("hex decodes");
    let view = nexus_route::SadView::parse_exact(&bytes).expect("a valid descriptor");
    assert_eq!(view.class(), nexus_route::id::capability_id("code-review"));

    let dir = tempfile::tempdir().expect("tempdir");
    let stdio = dir.path().join("stdio.json");
    std::fs::write(
        &stdio,
        r#"{"name": "io.github.x/weather", "version": "1.0.0",
            "packages": [{"registryType": "npm", "identifier": "w", "version": "1.0.0",
                          "transport": {"type": "stdio"}}]}"#,
    )
    .expect("write");
    let (code, _, stderr) = import(&stdio, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("stdio"), "{stderr}");
    let (code, _, stderr) = import(&example("server.json"), &["--format", "a2a"]);
    assert_eq!(code, 1, "{stderr}");
    let (code, _, _) = import(&dir.path().join("missing.json"), &[]);
    assert_eq!(code, 2);
}
