//! `nexctl mic inspect` and `nexctl mic verify` on a real MIC chain issued by nexus-mic, and
//! `nexctl zk` from setup to a rejected proof.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use nexus_mic::{Attestation, CertificateAuthority, Csr, MicRequest, ModelUri};

fn nexctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nexctl"))
}

fn issue(dir: &Path) {
    let now = SystemTime::now() - Duration::from_secs(60);
    let root =
        CertificateAuthority::new_root("Nexus Root CA", now, Duration::from_secs(86400 * 30))
            .expect("root");
    let inter = root
        .new_intermediate(
            "Nexus Intermediate CA",
            now,
            Duration::from_secs(86400 * 20),
        )
        .expect("inter");
    let uri = ModelUri::new("acme", "coder-70b", "2.1.0").expect("uri");
    let key = nexus_mic::generate_model_key(&uri).expect("key");
    let csr = Csr::from_der(&key.csr_der).expect("csr");
    let att = Attestation::example();
    let mic = inter
        .issue_mic(&MicRequest {
            csr: &csr,
            model: &uri,
            attestation: &att,
            not_before: now,
            validity: Duration::from_secs(3600),
        })
        .expect("issued");
    std::fs::write(
        dir.join("tls.crt"),
        format!("{}{}", mic.pem, inter.cert_pem()),
    )
    .expect("write");
    std::fs::write(dir.join("ca.crt"), root.cert_pem()).expect("write");
}

#[test]
fn inspect_and_verify_a_mic() {
    let dir = tempfile::tempdir().expect("tempdir");
    issue(dir.path());
    let crt = dir.path().join("tls.crt");
    let ca = dir.path().join("ca.crt");

    let out = nexctl()
        .args(["mic", "inspect"])
        .arg(&crt)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("nexus://acme/coder-70b@2.1.0"), "{text}");

    let out = nexctl()
        .args(["mic", "inspect", "--json"])
        .arg(&crt)
        .output()
        .expect("runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(json["attestation"]["capabilities"].is_object());

    let verify = |req: &str| {
        nexctl()
            .args(["mic", "verify"])
            .arg(&crt)
            .arg("--ca")
            .arg(&ca)
            .args(["--require", req])
            .output()
            .expect("runs")
    };
    let ok = verify("issuer=Nexus Intermediate CA,tenant=acme");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let too_big = verify("context>=100000000");
    assert_eq!(too_big.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&too_big.stdout).contains("rejected"));
    let wrong_issuer = verify("issuer=Someone Else");
    assert_eq!(wrong_issuer.status.code(), Some(1));

    // A different root: the chain does not verify.
    let other = tempfile::tempdir().expect("tempdir");
    issue(other.path());
    let out = nexctl()
        .args(["mic", "verify"])
        .arg(&crt)
        .arg("--ca")
        .arg(other.path().join("ca.crt"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn zk_prove_and_verify_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let run = |args: &[&str]| nexctl().current_dir(d).args(args).output().expect("runs");
    assert!(run(&["zk", "setup", "--out-dir", "keys"]).status.success());
    assert!(
        run(&["zk", "commit", "--score", "0.9731", "--out", "opening.json"])
            .status
            .success()
    );
    let opening: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("opening.json")).expect("opening"))
            .expect("JSON");
    let c = opening["commitment"]
        .as_str()
        .expect("commitment")
        .to_owned();
    assert!(
        run(&[
            "zk",
            "prove",
            "--proving-key",
            "keys/zk-proving.key",
            "--opening",
            "opening.json",
            "--claim",
            "safety-eval",
            "--threshold",
            "0.9",
            "--out",
            "proof.json"
        ])
        .status
        .success()
    );
    let ok = run(&[
        "zk",
        "verify",
        "--verifying-key",
        "keys/zk-verifying.key",
        "--proof",
        "proof.json",
        "--commitment",
        &c,
        "--min-threshold",
        "0.9",
    ]);
    assert_eq!(ok.status.code(), Some(0));
    let higher = run(&[
        "zk",
        "verify",
        "--verifying-key",
        "keys/zk-verifying.key",
        "--proof",
        "proof.json",
        "--commitment",
        &c,
        "--min-threshold",
        "0.95",
    ]);
    assert_eq!(
        higher.status.code(),
        Some(1),
        "a proof of >= 0.9 does not show >= 0.95"
    );
    // Another commitment: the last hex digit changed (to one it is not).
    let last = if c.ends_with('0') { '1' } else { '0' };
    let wrong_c = format!("{}{last}", &c[..63]);
    let bad = run(&[
        "zk",
        "verify",
        "--verifying-key",
        "keys/zk-verifying.key",
        "--proof",
        "proof.json",
        "--commitment",
        &wrong_c,
    ]);
    assert_eq!(bad.status.code(), Some(1), "wrong commitment");
    let below = run(&[
        "zk",
        "prove",
        "--proving-key",
        "keys/zk-proving.key",
        "--opening",
        "opening.json",
        "--claim",
        "x",
        "--threshold",
        "0.99",
    ]);
    assert_eq!(
        below.status.code(),
        Some(1),
        "refuses to prove a false statement"
    );
}
