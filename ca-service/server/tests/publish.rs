//! The CA publishing its callers' client certificates as Kubernetes Secrets (and its root as
//! a ConfigMap): the real CA on PostgreSQL against the in-memory API server
//! (`nexus-kube-fake`, server-side apply with field managers, injected failures). A round
//! writes what is missing, nothing when all is current (no write loop), re-issues a revoked
//! certificate, survives a refused write and retries it, and yields to a replica holding the
//! publishing lock.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use nexus_ca::kek::Kek;
use nexus_ca::publish::{PUBLISH_LOCK, PublishConfig, round};
use nexus_ca::{RunningServer, Settings};
use nexus_kube_fake::FakeApiServer;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const KEK_HEX: &str = "4444444444444444444444444444444444444444444444444444444444444444";
const NS: &str = "nexus-system";

async fn ca(pool: &PgPool) -> Result<RunningServer, nexus_ca::Error> {
    let kek = Arc::new(Kek::parse(KEK_HEX)?);
    nexus_ca::start(
        pool.clone(),
        Settings::for_tests(kek, "publish-test-token-0123456789", &["acme"]),
    )
    .await
}

fn config() -> Result<PublishConfig, String> {
    Ok(PublishConfig {
        client_certs: vec![
            format!("{NS}/nexus-controller-ca-client=controller").parse()?,
            format!("{NS}/nexus-cloud-ca-client=cloud-api").parse()?,
        ],
        root: Some(format!("{NS}/nexus-ca-root").parse()?),
        validity: Duration::from_secs(3000),
        interval: Duration::from_secs(60),
    })
}

/// The Secret's certificate serial and role, after checking the files a caller would mount
/// load as a matching pair.
fn published(
    fake: &FakeApiServer,
    name: &str,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let s: Secret = fake.get(Some(NS), name).ok_or("no Secret")?;
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = s.data.ok_or("no data")?;
    let dir = tempfile::tempdir()?;
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(key), &data.get(key).ok_or(key)?.0)?;
    }
    // keys_match: the key is the certificate's.
    nexus_tls::ReloadingCertificate::from_files(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
    )?;
    let certs = nexus_tls::read_certs(&dir.path().join("tls.crt"))?;
    assert_eq!(certs.len(), 2, "leaf and intermediate");
    let peer = nexus_tls::PeerIdentity::from_der(certs[0].as_ref()).ok_or("leaf")?;
    assert_eq!(peer.common_name.as_deref(), Some(name));
    Ok((
        peer.serial.clone(),
        peer.role().unwrap_or_default().to_owned(),
    ))
}

#[sqlx::test(migrations = false)]
async fn the_ca_keeps_its_callers_client_certificate_secrets_current(pool: PgPool) -> TestResult {
    let server = ca(&pool).await?;
    let ca = server.ca();
    let fake = FakeApiServer::new();
    let client = fake.client();
    let cfg = config()?;

    assert_eq!(round(ca, &client, &cfg).await?, 2);
    let (ctl_serial, role) = published(&fake, "nexus-controller-ca-client")?;
    assert_eq!(role, "controller");
    let (cloud_serial, role) = published(&fake, "nexus-cloud-ca-client")?;
    assert_eq!(role, "cloud-api");
    let root: ConfigMap = fake
        .get(Some(NS), "nexus-ca-root")
        .ok_or("no root ConfigMap")?;
    let root_pem = root
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .ok_or("no ca.crt")?;
    assert_eq!(
        root_pem,
        nexus_mic::der_to_pem("CERTIFICATE", ca.root_der())
    );
    assert!(
        fake.writes()
            .iter()
            .all(|w| w.manager == "nexus-ca" && w.method == "PATCH"),
        "server-side apply under one field manager"
    );

    // Everything current: no certificate, no write.
    fake.clear_log();
    assert_eq!(round(ca, &client, &cfg).await?, 0);
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    // A revoked certificate is replaced at the next round; the other stays.
    ca.revoke_service_cert(&ctl_serial, nexus_mic::RevocationReason::KeyCompromise)
        .await?;
    assert_eq!(round(ca, &client, &cfg).await?, 1);
    let (renewed, _) = published(&fake, "nexus-controller-ca-client")?;
    assert_ne!(renewed, ctl_serial);
    assert_eq!(published(&fake, "nexus-cloud-ca-client")?.0, cloud_serial);

    // A write the API server refuses (422, say a Secret of another type in the way) is an
    // error for the round, counted, and retried by the next one.
    fake.delete("Secret", Some(NS), "nexus-cloud-ca-client")
        .map_err(|e| format!("{e:?}"))?;
    fake.inject("PATCH", "secrets/nexus-cloud-ca-client", 422, 1);
    assert!(round(ca, &client, &cfg).await.is_err());
    assert!(
        ca.metrics()
            .encode()
            .contains("nexus_ca_publish_errors_total 1")
    );
    assert_eq!(round(ca, &client, &cfg).await?, 1);
    assert_ne!(published(&fake, "nexus-cloud-ca-client")?.0, cloud_serial);

    // Another replica mid-round (holding the lock): this one writes nothing.
    fake.delete("Secret", Some(NS), "nexus-cloud-ca-client")
        .map_err(|e| format!("{e:?}"))?;
    let mut other = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PUBLISH_LOCK)
        .execute(&mut *other)
        .await?;
    fake.clear_log();
    assert_eq!(round(ca, &client, &cfg).await?, 0);
    assert!(fake.writes().is_empty());
    other.rollback().await?;
    assert_eq!(round(ca, &client, &cfg).await?, 1);

    server.shutdown().await?;
    Ok(())
}
