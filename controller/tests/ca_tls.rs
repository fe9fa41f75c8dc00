//! The controller's CA client over mutual TLS against the real CA (`nexus-ca` with
//! `start_tls`, on PostgreSQL): a client certificate of role `controller` issues; no
//! certificate, a certificate of another CA, one of a role the CA does not admit, and a revoked
//! one issue nothing — each refused at the CA, and the controller sees a refusal it can report.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nexus_controller::Error;
use nexus_controller::ca_client::GrpcIssuer;
use nexus_controller::identity::reconcile::{IssueRequest, Issuer};
use nexus_tls::ClientTlsFiles;
use sqlx::PgPool;

const KEK_HEX: &str = "4444444444444444444444444444444444444444444444444444444444444444";

async fn start(pool: &PgPool, dir: &Path) -> nexus_ca::RunningServer {
    let kek = Arc::new(nexus_ca::kek::Kek::parse(KEK_HEX).unwrap());
    nexus_ca::start_tls(
        pool.clone(),
        nexus_ca::Settings::for_tests(kek, "unused-token-0123456789abcdef", &["acme"]),
        nexus_ca::tls::TlsOptions::for_tests(dir),
    )
    .await
    .unwrap()
}

async fn client_cert(
    ca: &nexus_ca::RunningServer,
    dir: &Path,
    role: &str,
) -> (PathBuf, PathBuf, String) {
    let cert = ca
        .ca()
        .issue_service_cert(&nexus_ca::ca::ServiceCertParams {
            role: role.into(),
            name: format!("{role}-client"),
            dns_names: vec![],
            ip_addresses: vec![],
            server: false,
            client: true,
            not_before: SystemTime::now() - Duration::from_secs(60),
            validity: Duration::from_secs(3600),
        })
        .await
        .unwrap();
    let (c, k) = (
        dir.join(format!("{role}.crt")),
        dir.join(format!("{role}.key")),
    );
    std::fs::write(&c, &cert.chain_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c, k, cert.serial)
}

fn request(n: u32) -> IssueRequest {
    let uri = nexus_mic::ModelUri::new("acme", "coder", "1.0.0").unwrap();
    let key = nexus_mic::generate_model_key(&uri).unwrap();
    IssueRequest {
        tenant: "acme".into(),
        model: uri,
        csr_der: key.csr_der,
        attestation_der: nexus_mic::Attestation::example().to_der().unwrap(),
        validity: Duration::from_secs(86_400),
        request_id: format!("mtls-{n}"),
    }
}

fn issuer(ca: &nexus_ca::RunningServer, root: &Path, cert: Option<(&Path, &Path)>) -> GrpcIssuer {
    let files = ClientTlsFiles {
        ca: root.to_owned(),
        cert: cert.map(|(c, _)| c.to_owned()),
        key: cert.map(|(_, k)| k.to_owned()),
        server_name: Some("localhost".into()),
    };
    GrpcIssuer::new(
        &format!("https://127.0.0.1:{}", ca.grpc_addr.port()),
        None,
        Some(&files),
    )
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_controller_issues_over_mutual_tls_and_each_impostor_is_refused(pool: PgPool) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = start(&pool, dir.path()).await;
    let root = dir.path().join("ca.crt");
    let (ctl_cert, ctl_key, ctl_serial) = client_cert(&ca, dir.path(), "controller").await;
    let (agent_cert, agent_key, _) = client_cert(&ca, dir.path(), "agent").await;

    let issued = issuer(&ca, &root, Some((&ctl_cert, &ctl_key)))
        .issue(request(1))
        .await
        .unwrap();
    assert!(issued.chain_pem.contains("BEGIN CERTIFICATE"));

    // A certificate from another CA (same role name): not this CA's client.
    let other_dir = tempfile::tempdir().unwrap();
    // The other CA needs a database of its own (its own root).
    let db = format!("ca_tls_other_{}", std::process::id());
    let other_pool = {
        let opts = pool.connect_options();
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&pool)
            .await
            .unwrap();
        PgPool::connect_with((*opts).clone().database(&db))
            .await
            .unwrap()
    };
    let other = start(&other_pool, other_dir.path()).await;
    let (stranger_cert, stranger_key, _) =
        client_cert(&other, other_dir.path(), "controller").await;

    let refused = |e: Error| match e {
        Error::IssuerUnavailable(m) | Error::IssuerRefused { message: m, .. } => m,
        other => panic!("unexpected error: {other}"),
    };
    for (n, cert, why) in [
        (2, None, "no client certificate"),
        (
            3,
            Some((stranger_cert.as_path(), stranger_key.as_path())),
            "another CA's certificate",
        ),
        (
            4,
            Some((agent_cert.as_path(), agent_key.as_path())),
            "a role the CA does not admit",
        ),
    ] {
        let e = issuer(&ca, &root, cert).issue(request(n)).await;
        assert!(e.is_err(), "{why}: issued anyway");
        let _ = refused(e.err().unwrap());
    }

    // Revoked: the CA's own CRL refuses the certificate at the handshake.
    ca.ca()
        .revoke_service_cert(&ctl_serial, nexus_mic::RevocationReason::KeyCompromise)
        .await
        .unwrap();
    let mut revoked_refused = false;
    for _ in 0..50 {
        if issuer(&ca, &root, Some((&ctl_cert, &ctl_key)))
            .issue(request(5))
            .await
            .is_err()
        {
            revoked_refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(revoked_refused, "a revoked client certificate is refused");

    let _ = other.stop_handle().send(true);
    let _ = other.wait().await;
    other_pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&pool)
    .await;
}
