//! The server survives a PostgreSQL crash and restart without restarting itself, and loses no
//! acknowledged usage event. Runs a private cluster (initdb/pg_ctl); skips with a printed reason
//! when the server binaries are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::http::Method;
use common::{Api, event, now};
use serde_json::json;

fn bindir() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    from_pg_config
        .into_iter()
        .chain(std::iter::once(PathBuf::from("/usr/lib/postgresql/15/bin")))
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (initdb refuses root).
fn pg(bin: &Path, args: &[&str]) -> std::process::Output {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().expect("run a PostgreSQL binary")
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn ctl(&self, args: &[&str]) -> bool {
        let dir = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.dir.display()
        );
        let mut all = vec!["-D", dir.to_str().unwrap(), "-o", opts.as_str(), "-l"];
        let log = self.dir.join("log");
        all.push(log.to_str().unwrap());
        all.extend_from_slice(args);
        let out = pg(&self.bin.join("pg_ctl"), &all);
        if !out.status.success() {
            eprintln!("pg_ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ctl(&["-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn survives_postgres_restart_without_losing_acknowledged_events() {
    let Some(bin) = bindir() else {
        println!("skipped: no initdb/pg_ctl found (pg_config --bindir)");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("nexus-cloud-pg-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = Command::new("chown")
        .args(["postgres:postgres", dir.to_str().unwrap()])
        .status();
    let data = dir.join("data");
    let init = pg(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
    if !init.status.success() {
        println!(
            "skipped: initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let cluster = Cluster { bin, dir, port };
    assert!(cluster.ctl(&["-w", "start"]));

    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let pool = nexus_cloud::connect(&url, 4).await.unwrap();
    nexus_cloud::migrate(&pool).await.unwrap();
    let api = Api::new(pool.clone());
    let t = api.tenant("t").await;
    let k = t.api_key.as_str();
    let batch1: Vec<_> = (0..200)
        .map(|i| event(&format!("a{i}"), "traffic_bytes", 10, &now()))
        .collect();
    let r = api
        .post("/v1/usage/events", k, json!({"events": batch1}))
        .await;
    assert_eq!(r.body["accepted"], 200, "{}", r.text);

    // Crash PostgreSQL (no clean shutdown): acknowledged events must be on disk.
    assert!(cluster.ctl(&["-m", "immediate", "stop"]));
    let down = api.get("/v1/usage?meter=traffic_bytes", k).await;
    down.problem(503, "database_unavailable");
    assert_eq!(
        api.raw(Method::GET, "/readyz", None, None, vec![])
            .await
            .status,
        503
    );

    assert!(cluster.ctl(&["-w", "start"]));
    let mut ready = false;
    for _ in 0..40 {
        if api
            .raw(Method::GET, "/readyz", None, None, vec![])
            .await
            .status
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ready, "the pool did not recover after PostgreSQL came back");

    // Same app, same pool: the retry of batch 1 is all duplicates, batch 2 is new.
    let r = api
        .post("/v1/usage/events", k, json!({"events": batch1}))
        .await;
    assert_eq!(r.body["duplicates"], 200, "{}", r.text);
    let batch2: Vec<_> = (0..100)
        .map(|i| event(&format!("b{i}"), "traffic_bytes", 10, &now()))
        .collect();
    let r = api
        .post("/v1/usage/events", k, json!({"events": batch2}))
        .await;
    assert_eq!(r.body["accepted"], 100, "{}", r.text);
    let q = api.get("/v1/usage?meter=traffic_bytes", k).await;
    let total: i64 = q.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["events"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 300);
    pool.close().await;
    drop(cluster);
}
