//! MIC issuance through a CA: a fake `nexus.ca.v1` server stands in for nexus-ca.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::{Api, OPERATOR};
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_server::{
    CertificateAuthority, CertificateAuthorityServer,
};
use serde_json::json;
use sqlx::PgPool;
use tonic::{Request, Response, Status};

#[derive(Default, Clone)]
struct FakeCa {
    seen: Arc<Mutex<Vec<pb::IssueRequest>>>,
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl CertificateAuthority for FakeCa {
    async fn issue(&self, req: Request<pb::IssueRequest>) -> R<pb::Certificate> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth != "Bearer ca-secret" {
            return Err(Status::unauthenticated("bad token"));
        }
        let r = req.into_inner();
        if r.csr_der.is_empty() {
            return Err(Status::invalid_argument("csr_der: empty"));
        }
        let mut seen = self.seen.lock().unwrap();
        // Idempotent per request_id, like the real CA.
        let serial = match seen.iter().position(|s| s.request_id == r.request_id) {
            Some(i) => format!("{:x}", 0xabc0 + i),
            None => {
                seen.push(r.clone());
                format!("{:x}", 0xabc0 + seen.len() - 1)
            }
        };
        Ok(Response::new(pb::Certificate {
            serial,
            leaf_der: vec![1, 2, 3],
            chain_der: vec![4],
            root_der: vec![5],
            not_before: 1_764_000_000,
            not_after: 1_764_086_400,
            fingerprint_sha256: "00".repeat(32),
            log_index: 7,
            model_uri: format!("nexus://{}/{}@{}", r.tenant, r.model, r.version),
            renewed_from: String::new(),
        }))
    }
    async fn renew(&self, _: Request<pb::RenewRequest>) -> R<pb::Certificate> {
        Err(Status::unimplemented("fake"))
    }
    async fn revoke(&self, _: Request<pb::RevokeRequest>) -> R<pb::RevokeResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn status(&self, _: Request<pb::StatusRequest>) -> R<pb::StatusResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_crl(&self, _: Request<pb::GetCrlRequest>) -> R<pb::Crl> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_signed_tree_head(
        &self,
        _: Request<pb::GetSignedTreeHeadRequest>,
    ) -> R<pb::SignedTreeHead> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_inclusion_proof(
        &self,
        _: Request<pb::GetInclusionProofRequest>,
    ) -> R<pb::InclusionProof> {
        Err(Status::unimplemented("fake"))
    }
    async fn verify_claim_proof(
        &self,
        _: Request<pb::VerifyClaimProofRequest>,
    ) -> R<pb::VerifyClaimProofResponse> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_zk_verifying_key(
        &self,
        _: Request<pb::GetZkVerifyingKeyRequest>,
    ) -> R<pb::ZkVerifyingKey> {
        Err(Status::unimplemented("fake"))
    }
}

#[sqlx::test]
async fn issues_mics_through_the_ca_and_meters_them_once(pool: PgPool) {
    let fake = FakeCa::default();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let svc = CertificateAuthorityServer::new(fake.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve(addr),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let config = nexus_cloud::Config {
        ca_endpoint: Some(format!("http://{addr}")),
        ca_token: Some("ca-secret".into()),
        ..common::config()
    };
    let api = Api::with_config(pool.clone(), config);
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
    let csr = base64::engine::general_purpose::STANDARD.encode([0x30, 0x01, 0x00]);
    let body = json!({"csr_der_base64": csr, "version": "1.2.0", "request_id": "issue-1"});
    let r = api
        .post(
            &format!("/v1/model-identities/{id}/certificates"),
            k,
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.body["model_uri"],
        format!("nexus://{}/coder@1.2.0", t.tenant_id)
    );
    assert_eq!(r.body["leaf_der_base64"], "AQID");
    // A retry with the same request_id is the same certificate, metered once.
    let again = api
        .post(&format!("/v1/model-identities/{id}/certificates"), k, body)
        .await;
    assert_eq!(again.body["serial"], r.body["serial"]);
    let mics: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE meter = 'mics_issued'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(mics, 1);
    assert_eq!(
        api.get(&format!("/v1/model-identities/{id}"), k).await.body["status"],
        "issued"
    );
    // CA refusals map to problems.
    let bad = json!({"csr_der_base64": "", "version": "1"});
    api.post(&format!("/v1/model-identities/{id}/certificates"), k, bad)
        .await
        .problem(422, "validation_failed");
    let bad = json!({"csr_der_base64": "!!", "version": "1"});
    api.post(&format!("/v1/model-identities/{id}/certificates"), k, bad)
        .await
        .problem(422, "validation_failed");
    assert_eq!(
        fake.seen.lock().unwrap().len(),
        1,
        "one issuance reached the CA"
    );
    let _ = OPERATOR;
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
    let body = json!({"csr_der_base64": "MAEA", "version": "1"});
    api.post(
        &format!("/v1/model-identities/{id}/certificates"),
        &t.api_key,
        body,
    )
    .await
    .problem(503, "ca_unavailable");
}
