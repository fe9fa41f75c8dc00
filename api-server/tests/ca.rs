//! MIC issuance and revocation through the real CA (`nexus-ca`, in process, its own database):
//! the certificates `openssl verify` accepts, the attestation read back from the certificate,
//! metering exactly once, and revocation reaching the CA's signed CRL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::{Api, RealCa, attestation};
use serde_json::json;
use sqlx::PgPool;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[sqlx::test]
async fn issues_inspects_and_revokes_mics_through_the_real_ca(pool: PgPool) {
    let ca = RealCa::start(&["t"]).await;
    let api = Api::with_config(pool.clone(), ca.config());
    let t = api.tenant("t").await;
    let k = t.api_key.as_str();
    let m = api
        .post(
            "/v1/model-identities",
            k,
            json!({"name": "coder", "model_digest": "sha256:00112233445566778899"}),
        )
        .await;
    let id = m.body["id"].as_str().unwrap().to_owned();
    let body = json!({"csr_der_base64": nexus_cloud::validate::EXAMPLE_CSR, "version": "1.2.0",
                      "request_id": "issue-1", "attestation": attestation()});
    let uri = format!("/v1/model-identities/{id}/certificates");
    let r = api.post(&uri, k, body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["model_uri"], "nexus://t/coder@1.2.0");
    assert_eq!(r.body["status"], "valid");
    // The attestation is read back from the certificate the CA signed.
    assert_eq!(
        r.body["attestation"]["capabilities"]["context_window"],
        131072
    );
    assert_eq!(
        r.body["attestation"]["benchmarks"][0]["value"]["plain"],
        "0.91"
    );
    let serial = r.body["serial"].as_str().unwrap().to_owned();

    // The chain verifies with openssl against the root the API hands out.
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    std::fs::write(path("chain.pem"), r.body["chain_pem"].as_str().unwrap()).unwrap();
    std::fs::write(path("root.pem"), r.body["root_pem"].as_str().unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let leaf = b64
        .decode(r.body["leaf_der_base64"].as_str().unwrap())
        .unwrap();
    std::fs::write(path("leaf.der"), &leaf).unwrap();
    let (ok, text) = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        &path("leaf.der"),
        "-out",
        &path("leaf.pem"),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        &path("root.pem"),
        "-untrusted",
        &path("chain.pem"),
        &path("leaf.pem"),
    ]);
    assert!(ok, "openssl verify: {text}");

    // A retry with the same request_id is the same certificate, metered once.
    let again = api.post(&uri, k, body).await;
    assert_eq!(again.body["serial"], serial.as_str());
    let mics: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE meter = 'mics_issued'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(mics, 1);
    let model = api.get(&format!("/v1/model-identities/{id}"), k).await;
    assert_eq!(model.body["status"], "issued");
    assert_eq!(model.body["active_mics"], 1);
    let list = api.get(&uri, k).await;
    assert_eq!(list.body["data"][0]["serial"], serial.as_str());

    // Revocation goes through the CA, shows in the API, and lands in the CA's signed CRL.
    let revoke = format!("{uri}/{serial}/revoke");
    let rv = api
        .post(&revoke, k, json!({"reason": "key_compromise"}))
        .await;
    assert_eq!(rv.status, 200, "{}", rv.text);
    assert_eq!(rv.body["status"], "revoked");
    assert_eq!(rv.body["revocation_reason"], "key_compromise");
    let again = api.post(&revoke, k, json!({})).await;
    assert_eq!(
        again.body["revoked_at"], rv.body["revoked_at"],
        "idempotent"
    );
    let crl = reqwest::get(format!("http://{}/v1/crl", ca.server.http_addr))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(path("crl.der"), &crl).unwrap();
    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        &path("crl.der"),
        "-noout",
        "-text",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.to_lowercase()
            .replace(':', "")
            .contains(&serial.trim_start_matches('0').to_lowercase()),
        "CRL lists {serial}: {text}"
    );
    let model = api.get(&format!("/v1/model-identities/{id}"), k).await;
    assert_eq!(model.body["active_mics"], 0);
    let audit = api.get("/v1/audit-events", k).await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"mic.issue") && actions.contains(&"mic.revoke"),
        "{actions:?}"
    );

    // What the CA refuses is a 422 with its reason; a request the API refuses never reaches it.
    let junk = b64.encode([0x30, 0x03, 0x02, 0x01, 0x00]);
    api.post(
        &uri,
        k,
        json!({"csr_der_base64": junk, "version": "1", "attestation": attestation()}),
    )
    .await
    .problem(422, "ca_refused");
    api.post(
        &uri,
        k,
        json!({"csr_der_base64": "!!", "version": "1", "attestation": attestation()}),
    )
    .await
    .problem(422, "validation_failed");
    ca.stop().await;
}

#[sqlx::test]
async fn unreachable_ca_is_503(pool: PgPool) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = nexus_cloud::Config {
        ca_endpoint: Some(format!("http://127.0.0.1:{port}")),
        ..common::config()
    };
    let api = Api::with_config(pool, config);
    let t = api.tenant("t").await;
    let m = api
        .post(
            "/v1/model-identities",
            &t.api_key,
            json!({"name": "m", "model_digest": "sha256:00112233445566778899"}),
        )
        .await;
    let id = m.body["id"].as_str().unwrap();
    let body = json!({"csr_der_base64": nexus_cloud::validate::EXAMPLE_CSR, "version": "1",
                      "attestation": attestation()});
    api.post(
        &format!("/v1/model-identities/{id}/certificates"),
        &t.api_key,
        body,
    )
    .await
    .problem(503, "ca_unavailable");
}

/// Issues a client certificate of the CA for `role`, written as a Secret mounts it.
async fn client_cert(
    ca: &RealCa,
    dir: &std::path::Path,
    role: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = ca
        .server
        .ca()
        .issue_service_cert(&nexus_ca::ca::ServiceCertParams {
            role: role.into(),
            name: format!("{role}-client"),
            dns_names: vec![],
            ip_addresses: vec![],
            server: false,
            client: true,
            not_before: std::time::SystemTime::now() - std::time::Duration::from_secs(60),
            validity: std::time::Duration::from_secs(3600),
        })
        .await
        .unwrap();
    let (c, k) = (
        dir.join(format!("{role}.crt")),
        dir.join(format!("{role}.key")),
    );
    std::fs::write(&c, &cert.chain_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    (c, k)
}

/// The cloud API reaches the CA over mutual TLS with a client certificate of role
/// `cloud-api` the CA issued, and no token; without a certificate, or with one of a role the
/// CA does not admit, nothing is issued.
#[sqlx::test]
async fn the_cloud_api_reaches_the_ca_over_mutual_tls(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = RealCa::start_tls(&["t"], dir.path()).await;
    let endpoint = format!("https://127.0.0.1:{}", ca.server.grpc_addr.port());
    let (cert, key) = client_cert(&ca, dir.path(), "cloud-api").await;
    let (agent_cert, agent_key) = client_cert(&ca, dir.path(), "agent").await;
    let tls =
        |cert: Option<&std::path::Path>, key: Option<&std::path::Path>| nexus_tls::ClientTlsFiles {
            ca: dir.path().join("ca.crt"),
            cert: cert.map(std::path::Path::to_owned),
            key: key.map(std::path::Path::to_owned),
            server_name: Some("localhost".into()),
        };
    let config = |files| nexus_cloud::Config {
        ca_endpoint: Some(endpoint.clone()),
        ca_tls: Some(files),
        ca_token: None,
        ..common::config()
    };
    // The CA knows tenant `t` only.
    let setup = Api::new(pool.clone());
    let t = setup.tenant("t").await;
    let m = setup
        .post(
            "/v1/model-identities",
            &t.api_key,
            json!({"name": "coder", "model_digest": "sha256:00112233445566778899"}),
        )
        .await;
    let uri = format!(
        "/v1/model-identities/{}/certificates",
        m.body["id"].as_str().unwrap()
    );
    let body = |request_id: &str| {
        json!({"csr_der_base64": nexus_cloud::validate::EXAMPLE_CSR, "version": "1.0.0",
               "request_id": request_id, "attestation": attestation()})
    };

    let api = Api::with_config(pool.clone(), config(tls(Some(&cert), Some(&key))));
    let ok = api.post(&uri, &t.api_key, body("mtls-1")).await;
    assert_eq!(ok.status, 201, "{}", ok.text);
    assert_eq!(ok.body["status"], "valid");

    for (i, (files, why)) in [
        (tls(None, None), "no client certificate"),
        (
            tls(Some(&agent_cert), Some(&agent_key)),
            "a role the CA does not admit",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let api = Api::with_config(pool.clone(), config(files));
        let refused = api
            .post(&uri, &t.api_key, body(&format!("mtls-refused-{i}")))
            .await;
        assert_eq!(refused.status, 503, "{why}: {}", refused.text);
    }
    ca.stop().await;
}
