//! The fleet protocol over mutual TLS: the local controller's fleet endpoint with a server
//! certificate and node certificates from the real NexTrust CA (`nexus-ca` on PostgreSQL,
//! role `node`, the node's name as common name). A node registers under its own name; each
//! refusal is tested — no certificate, a certificate of another CA, an expired one, a revoked
//! one (the CA's CRL, re-read by the controller), and a node presenting its certificate under
//! another node's name.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nexus_controller::rollout::local::{FleetTlsArgs, LocalArgs, LocalController};
use nexus_fleet_api::v1 as pb;
use nexus_fleet_api::v1::fleet_client::FleetClient;
use nexus_tls::ClientTlsFiles;
use sqlx::PgPool;

const KEK_HEX: &str = "5555555555555555555555555555555555555555555555555555555555555555";

async fn ca(pool: &PgPool) -> nexus_ca::RunningServer {
    let kek = Arc::new(nexus_ca::kek::Kek::parse(KEK_HEX).unwrap());
    nexus_ca::start(
        pool.clone(),
        nexus_ca::Settings::for_tests(kek, "fleet-tls-token-0123456789abcdef", &["acme"]),
    )
    .await
    .unwrap()
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    root: PathBuf,
    serial: String,
}

#[allow(clippy::too_many_arguments)]
async fn cert(
    ca: &nexus_ca::RunningServer,
    dir: &Path,
    role: &str,
    name: &str,
    server: bool,
    not_before: SystemTime,
    validity: Duration,
) -> Files {
    let c = ca
        .ca()
        .issue_service_cert(&nexus_ca::ca::ServiceCertParams {
            role: role.into(),
            name: name.into(),
            dns_names: if server {
                vec!["localhost".into()]
            } else {
                vec![]
            },
            ip_addresses: vec![],
            server,
            client: !server,
            not_before,
            validity,
        })
        .await
        .unwrap();
    let stem = format!("{role}-{name}-{}", c.serial);
    let files = Files {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        root: dir.join(format!("{stem}-root.crt")),
        serial: c.serial.clone(),
    };
    std::fs::write(&files.cert, &c.chain_pem).unwrap();
    std::fs::write(&files.key, &c.key_pem).unwrap();
    std::fs::write(&files.root, &c.root_pem).unwrap();
    files
}

fn now() -> SystemTime {
    SystemTime::now() - Duration::from_secs(60)
}

/// Registers as `node` with `id` (or no certificate): the controller's answer.
async fn register(
    grpc: std::net::SocketAddr,
    root: &Path,
    id: Option<&Files>,
    node: &str,
) -> Result<(), String> {
    let files = ClientTlsFiles {
        ca: root.to_owned(),
        cert: id.map(|f| f.cert.clone()),
        key: id.map(|f| f.key.clone()),
        server_name: Some("localhost".into()),
    };
    let channel = nexus_tls::grpc_channel(
        &format!("https://127.0.0.1:{}", grpc.port()),
        Some(&files),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    let register = pb::AgentMessage::of(pb::agent_message::Msg::Register(pb::Register {
        node_name: node.into(),
        agent_version: "0.1.0".into(),
        ..Default::default()
    }));
    // Keep the stream open after Register, as an agent does.
    let outbound = futures::stream::iter([register]).chain(futures::stream::pending());
    match FleetClient::new(channel).connect(outbound).await {
        Ok(_) => Ok(()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

use futures::StreamExt as _;

/// The local controller with its fleet endpoint over mutual TLS: `server`'s certificate, node
/// certificates chaining to its root, revocations from the CRL file `crl`.
async fn fleet_controller(dir: &Path, server: &Files, crl: &Path) -> LocalController {
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    LocalController::start(LocalArgs {
        manifests: dir.join("manifests"),
        listen: "127.0.0.1:0".parse().unwrap(),
        status_listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_timeout: Duration::from_secs(5),
        start_grace: Duration::from_millis(100),
        rescan: Duration::from_secs(1),
        routing: Default::default(),
        tls: FleetTlsArgs {
            tls_cert: Some(server.cert.clone()),
            tls_key: Some(server.key.clone()),
            tls_client_ca: Some(server.root.clone()),
            tls_crl: Some(crl.to_owned()),
        },
    })
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn nodes_register_over_mutual_tls_under_their_own_name_only(pool: PgPool) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(&pool).await;
    let server = cert(
        &ca,
        dir.path(),
        "fleet",
        "controller",
        true,
        now(),
        Duration::from_secs(3600),
    )
    .await;
    let node_a = cert(
        &ca,
        dir.path(),
        "node",
        "node-a",
        false,
        now(),
        Duration::from_secs(3600),
    )
    .await;
    let node_b = cert(
        &ca,
        dir.path(),
        "node",
        "node-b",
        false,
        now(),
        Duration::from_secs(3600),
    )
    .await;
    let expired = cert(
        &ca,
        dir.path(),
        "node",
        "node-c",
        false,
        // Valid for ten minutes, fifty minutes ago (the CA's own validity starts an hour back).
        SystemTime::now() - Duration::from_secs(50 * 60),
        Duration::from_secs(600),
    )
    .await;
    let crl = dir.path().join("fleet.crl");
    std::fs::write(&crl, ca.ca().crl().await.unwrap().der).unwrap();
    let ctl = fleet_controller(dir.path(), &server, &crl).await;
    let (grpc, root) = (ctl.grpc_addr, server.root.clone());

    // Its own name: registered (the controller lists it).
    register(grpc, &root, Some(&node_a), "node-a")
        .await
        .unwrap();
    let nodes: serde_json::Value = reqwest::get(format!("http://{}/v1/nodes", ctl.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(nodes.to_string().contains("node-a"), "{nodes}");

    // Impersonation: node-b's certificate under node-a's name.
    let e = register(grpc, &root, Some(&node_b), "node-a")
        .await
        .unwrap_err();
    assert!(
        e.contains("PermissionDenied") && e.contains("node-b"),
        "{e}"
    );
    // A certificate without the node role (the controller's own server certificate as a
    // client certificate would not even verify; a second CA's node certificate neither).
    let e = register(grpc, &root, None, "node-a").await.unwrap_err();
    assert!(
        !e.contains("PermissionDenied"),
        "refused at the handshake: {e}"
    );
    let e = register(grpc, &root, Some(&expired), "node-c")
        .await
        .unwrap_err();
    assert!(
        !e.contains("PermissionDenied"),
        "refused at the handshake: {e}"
    );

    let other_db = format!("fleet_tls_other_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {other_db}"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {other_db}")))
        .execute(&pool)
        .await
        .unwrap();
    let other_pool = PgPool::connect_with((*pool.connect_options()).clone().database(&other_db))
        .await
        .unwrap();
    let other = {
        let kek = Arc::new(nexus_ca::kek::Kek::parse(KEK_HEX).unwrap());
        nexus_ca::start(
            other_pool.clone(),
            nexus_ca::Settings::for_tests(kek, "fleet-tls-token-0123456789abcdef", &["acme"]),
        )
        .await
        .unwrap()
    };
    let stranger = cert(
        &other,
        dir.path(),
        "node",
        "node-a",
        false,
        now(),
        Duration::from_secs(3600),
    )
    .await;
    let e = register(grpc, &root, Some(&stranger), "node-a")
        .await
        .unwrap_err();
    assert!(
        !e.contains("PermissionDenied"),
        "another CA's certificate is refused at the handshake: {e}"
    );

    // Revoked: the CA's next CRL lists node-a; the controller re-reads it.
    ca.ca()
        .revoke_service_cert(&node_a.serial, nexus_mic::RevocationReason::KeyCompromise)
        .await
        .unwrap();
    std::fs::write(&crl, ca.ca().crl().await.unwrap().der).unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if register(grpc, &root, Some(&node_a), "node-a")
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        refused,
        "a revoked node certificate is refused once the CRL is re-read"
    );
    // node-b is unaffected, and the real agent session dials over mTLS with its files.
    register(grpc, &root, Some(&node_b), "node-b")
        .await
        .unwrap();
    let mut cfg = nexus_fleet_agent::session::AgentConfig::new(
        format!("https://127.0.0.1:{}", grpc.port()),
        "node-b",
    );
    cfg.tls = Some(ClientTlsFiles {
        ca: root.clone(),
        cert: Some(node_b.cert.clone()),
        key: Some(node_b.key.clone()),
        server_name: Some("localhost".into()),
    });
    cfg.heartbeat = Duration::from_millis(300);
    let nic = Arc::new(nexus_fleet_agent::memnic::MemNic::new(
        "1.0",
        Duration::from_millis(10),
    ));
    let agent = tokio::spawn(nexus_fleet_agent::session::Agent::new(cfg, nic).run());
    let mut connected = false;
    let mut last = serde_json::Value::Null;
    for _ in 0..50 {
        let nodes: serde_json::Value = reqwest::get(format!("http://{}/v1/nodes", ctl.http_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let b = nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["metadata"]["name"] == "node-b")
            .cloned();
        last = b.clone().unwrap_or_default();
        if b.is_some_and(|b| {
            b["metadata"]["annotations"]["nexus.dev/connected"] == "true"
                // The agent reports its NIC; the bare registrations above had none.
                && b["status"]["nics"].as_array().is_some_and(|n| !n.is_empty())
        }) {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.abort();
    assert!(
        connected,
        "the agent's session is up over mutual TLS: {last}"
    );

    ctl.stop().await;
    let _ = other.stop_handle().send(true);
    let _ = other.wait().await;
    other_pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {other_db} WITH (FORCE)"
    )))
    .execute(&pool)
    .await;
}

/// The node's certificate serial in its file.
fn serial_of(path: &Path) -> String {
    let certs = nexus_tls::read_certs(path).unwrap();
    nexus_tls::PeerIdentity::from_der(certs[0].as_ref())
        .unwrap()
        .serial
}

#[sqlx::test(migrations = false)]
async fn a_node_joins_with_a_one_time_token_and_rotates_its_certificate_without_a_restart(
    pool: PgPool,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let kek = Arc::new(nexus_ca::kek::Kek::parse(KEK_HEX).unwrap());
    let mut settings =
        nexus_ca::Settings::for_tests(kek, "fleet-tls-token-0123456789abcdef", &["acme"]);
    // Short-lived node certificates: valid from a minute back (the CA's allowance for clock
    // skew) to 36 s ahead, so renewal (after two thirds: 64 s of 96) comes ~4 s after each
    // issue and the loop is seen rotating within the test.
    settings.node_cert_validity = Duration::from_secs(96);
    let ca_dir = dir.path().join("ca-tls");
    let ca = nexus_ca::start_tls(
        pool.clone(),
        settings,
        nexus_ca::tls::TlsOptions::for_tests(&ca_dir),
    )
    .await
    .unwrap();
    let ca_root = ca_dir.join("ca.crt");
    let server = cert(
        &ca,
        dir.path(),
        "fleet",
        "controller",
        true,
        now(),
        Duration::from_secs(3600),
    )
    .await;
    let crl = dir.path().join("fleet.crl");
    std::fs::write(&crl, ca.ca().crl().await.unwrap().der).unwrap();
    let ctl = fleet_controller(dir.path(), &server, &crl).await;

    let token = ca
        .ca()
        .create_join_token(Some("node-j"), Duration::from_secs(600), "fleet test")
        .await
        .unwrap()
        .token;
    let enroll = |node: &str, token: Option<&str>| nexus_agent::enroll::Enrollment {
        ca_url: format!("https://127.0.0.1:{}", ca.grpc_addr.port()),
        ca_root: ca_root.clone(),
        ca_server_name: Some("localhost".into()),
        node_name: node.into(),
        cert: dir.path().join(node).join("tls.crt"),
        key: dir.path().join(node).join("tls.key"),
        join_token: token.map(str::to_owned),
    };

    // Without a token and without a certificate the agent cannot start, and says how to fix it.
    let e = enroll("node-j", None).ensure().await.unwrap_err();
    assert!(e.to_string().contains("join-token"), "{e}");
    // The token is bound to node-j: another node cannot use it.
    let e = enroll("node-k", Some(&token)).ensure().await.unwrap_err();
    assert!(e.to_string().contains("join token refused"), "{e}");
    // A plaintext CA endpoint is refused by the agent itself.
    let mut clear = enroll("node-j", Some(&token));
    clear.ca_url = format!("http://127.0.0.1:{}", ca.grpc_addr.port());
    assert!(clear.ensure().await.is_err());

    // node-j joins: its key stays on the node (0600), and it registers over mutual TLS.
    let joined = enroll("node-j", Some(&token));
    let valid = joined.ensure().await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&joined.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let files = Files {
        cert: joined.cert.clone(),
        key: joined.key.clone(),
        root: server.root.clone(),
        serial: serial_of(&joined.cert),
    };
    register(ctl.grpc_addr, &server.root, Some(&files), "node-j")
        .await
        .unwrap();
    // Starting again with the files present does not need (or spend) the token again.
    assert_eq!(joined.ensure().await.unwrap(), valid);
    // The token is spent: a second machine claiming node-j with it gets nothing.
    let thief = nexus_agent::enroll::Enrollment {
        cert: dir.path().join("thief.crt"),
        key: dir.path().join("thief.key"),
        ..enroll("node-j", Some(&token))
    };
    let e = thief.ensure().await.unwrap_err();
    assert!(e.to_string().contains("join token refused"), "{e}");

    // The renewal loop rotates the files before expiry; the controller admits each new one.
    let first = files.serial.clone();
    let renewals = tokio::spawn(joined.clone().run_renewals(valid));
    let mut rotated = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = serial_of(&joined.cert);
        if now != first {
            rotated = Some(now);
            break;
        }
    }
    let rotated = rotated.expect("the node certificate was renewed within 15 s");
    // The old certificate can be revoked: the node no longer needs it.
    ca.ca()
        .revoke_service_cert(&first, nexus_mic::RevocationReason::Superseded)
        .await
        .unwrap();
    std::fs::write(&crl, ca.ca().crl().await.unwrap().der).unwrap();
    let files = Files {
        serial: rotated,
        ..files
    };
    register(ctl.grpc_addr, &server.root, Some(&files), "node-j")
        .await
        .unwrap();
    renewals.abort();

    ctl.stop().await;
    ca.shutdown().await.unwrap();
}
