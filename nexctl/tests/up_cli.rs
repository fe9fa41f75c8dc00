//! `nexctl up`, the README's main job, end to end: a private PostgreSQL cluster from the installed
//! server binaries, the CA and the cloud API in process, a demo tenant whose key lists its
//! routing domains; then a second start reuses the same cluster, keys and demo tenant.

use std::process::Command;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn up_brings_the_stack_up_and_down() {
    if Command::new("pg_config").arg("--bindir").output().is_err()
        && !std::path::Path::new("/usr/lib/postgresql").exists()
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED up_brings_the_stack_up_and_down: no PostgreSQL server binaries"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Searchable by the `postgres` user (which runs the cluster when tests run as root), so the
    // cluster lives inside the temporary directory and goes away with it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let data = dir.path().join("nexus");
    let pg_port = free_port().to_string();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_nexctl"))
            .env_remove("DATABASE_URL")
            .args(["up", "--check", "--pg-port", &pg_port])
            .args([
                "--api",
                "127.0.0.1:0",
                "--ca-grpc",
                "127.0.0.1:0",
                "--ca-http",
                "127.0.0.1:0",
                "--fleet-grpc",
                "127.0.0.1:0",
                "--fleet-http",
                "127.0.0.1:0",
                "--dataplane-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("nexctl runs")
    };
    let first = run();
    let out = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        out.contains("✔ cloud API answers with the demo key"),
        "{out}"
    );
    assert!(
        out.contains("✔ rollout controller sees the simulated fleet"),
        "{out}"
    );
    assert!(
        out.contains("✔ the console shows the demo rollout and MIC"),
        "{out}"
    );
    assert!(
        out.contains("✔ a call routed by capability (code-generation, by the tables of 127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains(
            "✔ a tensor routed by capability (8 MiB in 8 shards, checksum verified end to end)"
        ),
        "{out}"
    );
    let mic = data.join("mics/demo-coder");
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(mic.join(f).exists(), "the demo MIC's {f} is written");
    }
    // The chain verifies with OpenSSL against the CA's root, as a peer's would.
    if let Ok(v) = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(mic.join("ca.crt"))
        .arg("-untrusted")
        .arg(mic.join("tls.crt"))
        .arg(mic.join("tls.crt"))
        .output()
    {
        assert!(
            v.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    assert!(
        data.join("fabrics/demo.yaml").exists(),
        "the demo Fabric is written"
    );
    let key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("nxk_"))
        .expect("the API key is printed")
        .to_owned();
    let second = run();
    let out2 = String::from_utf8_lossy(&second.stdout).into_owned();
    assert_eq!(second.status.code(), Some(0), "{out2}");
    assert!(
        out2.contains(&key),
        "a restart reuses the demo tenant and its key"
    );
    let serial = |o: &str| {
        o.lines()
            .find_map(|l| l.split("MIC serial ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    };
    assert_eq!(
        serial(&out2),
        serial(&out),
        "a restart reuses the demo MIC while it is valid"
    );
    assert!(
        data.join("postgres/PG_VERSION").exists(),
        "the cluster lives in the data directory"
    );
}
