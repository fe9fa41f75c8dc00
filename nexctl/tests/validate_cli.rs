//! `nexctl validate` and `nexctl crds` as a user runs them: exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn nexctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nexctl"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn examples_validate_with_exit_code_0() {
    let out = nexctl()
        .arg("validate")
        .arg(repo().join("deploy/examples"))
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn each_bad_fixture_exits_1_naming_the_field() {
    let dir = repo().join("crds/tests/fixtures/bad");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .expect("expect line");
        let out = nexctl().arg("validate").arg(&path).output().expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}: {stdout}", path.display());
        assert!(
            stdout.contains(expect),
            "{}: want {expect:?} in {stdout}",
            path.display()
        );
        // file and document index are printed too
        let name = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("utf-8 name");
        assert!(stdout.contains(name), "{stdout}");
        n += 1;
    }
    assert!(n >= 20);
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        nexctl()
            .arg("validate")
            .output()
            .expect("runs")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        nexctl()
            .args(["validate", "/definitely/not/here"])
            .output()
            .expect("runs")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        nexctl()
            .arg("frobnicate")
            .output()
            .expect("runs")
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn crds_out_writes_the_committed_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = nexctl()
        .args(["crds", "--out"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(out.status.success());
    for f in [
        "fabric.yaml",
        "nexusnode.yaml",
        "routingdomain.yaml",
        "modelidentity.yaml",
    ] {
        let written = std::fs::read_to_string(dir.path().join(f)).expect("written");
        let committed = std::fs::read_to_string(repo().join("crds").join(f)).expect("committed");
        assert_eq!(written, committed, "{f}");
    }
    // Without --out: all four as one multi-document stream that kubectl apply -f - accepts.
    let out = nexctl().arg("crds").output().expect("runs");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.matches("kind: CustomResourceDefinition").count(), 4);
}
