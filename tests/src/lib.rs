//! Helpers shared by the end-to-end tests in `tests/tests/`.
//!
//! Tests that need a real Kubernetes API server run only when `KUBECONFIG` is set (and `kubectl`
//! is on PATH); otherwise they print why they skipped and pass, so `cargo test` stays green on a
//! laptop and in CI machines without a cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `Some(reason)` when no cluster is reachable for this test run.
pub fn cluster_unavailable() -> Option<String> {
    if std::env::var_os("KUBECONFIG").is_none() {
        return Some("KUBECONFIG is not set".into());
    }
    match Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
    {
        Ok(o) if o.status.success() => None,
        _ => Some("kubectl is not on PATH".into()),
    }
}

/// Runs `kubectl` with the given arguments.
pub fn kubectl<I, S>(args: I) -> std::io::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new("kubectl").args(args).output()
}

/// Says, on the real stderr (not the test harness's captured one), that a test was skipped.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
