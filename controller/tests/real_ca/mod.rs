//! The real NexTrust CA (`nexus-ca`) on a fresh PostgreSQL database, for controller tests: no
//! in-process stand-in, so the CA's own request validation applies to what the controller sends.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use nexus_controller::identity::reconcile::{IssueRequest, Issuer};
use nexus_controller::identity::{self as id, IssuedCertificate};
use nexus_crds::ModelIdentity;
use serde_json::Value;

use nexus_ca::kek::Kek;
use nexus_ca_api::v1 as pb;
use nexus_controller::ca_client::GrpcIssuer;
use sqlx::PgPool;

pub const TOKEN: &str = "controller-test-token-0123456789";
const KEK_HEX: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Starts the CA for tenant `acme` and returns it with a client of it.
pub async fn start(pool: &PgPool) -> (nexus_ca::RunningServer, Arc<GrpcIssuer>) {
    let kek = Arc::new(Kek::parse(KEK_HEX).unwrap());
    let server = nexus_ca::start(
        pool.clone(),
        nexus_ca::Settings::for_tests(kek, TOKEN, &["acme"]),
    )
    .await
    .unwrap();
    let issuer = GrpcIssuer::new(
        &format!("http://{}", server.grpc_addr),
        Some(TOKEN.into()),
        None,
    )
    .unwrap();
    (server, Arc::new(issuer))
}

/// Whether the CA says `serial` (tenant `acme`) is revoked.
pub async fn revoked(ca: &nexus_ca::RunningServer, serial: &str) -> bool {
    let mut client = pb::certificate_authority_client::CertificateAuthorityClient::connect(
        format!("http://{}", ca.grpc_addr),
    )
    .await
    .unwrap();
    let mut req = tonic::Request::new(pb::StatusRequest {
        tenant: "acme".into(),
        serial: serial.to_owned(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    client.status(req).await.unwrap().into_inner().revoked_at > 0
}

/// ModelIdentity `name` (namespace `acme`, Secret `<name>-mic`) from the example manifest.
pub fn model_identity(name: &str) -> ModelIdentity {
    let text = include_str!("../../../deploy/examples/modelidentity.yaml");
    let mut v: Value = serde_saphyr::from_str(text).unwrap();
    v["metadata"]["name"] = name.into();
    v["spec"]["model"]["name"] = name.into();
    v["spec"]["secretName"] = format!("{name}-mic").into();
    serde_json::from_value(v).unwrap()
}

/// Issues `mi`'s MIC through the CA, as the ModelIdentity controller does; returns it with the
/// data of the Secret the controller writes (`tls.crt`, `tls.key`, `ca.crt`, …).
pub async fn issue_mic(
    issuer: &GrpcIssuer,
    mi: &ModelIdentity,
    request_id: &str,
) -> (IssuedCertificate, BTreeMap<String, ByteString>) {
    let uri = id::model_uri(mi).unwrap();
    let attestation = id::attestation(mi).unwrap();
    let (validity, _) = id::lifetimes(mi).unwrap();
    let key = nexus_mic::generate_model_key(&uri).unwrap();
    let issued = issuer
        .issue(IssueRequest {
            tenant: id::tenant(mi).unwrap(),
            model: uri,
            csr_der: key.csr_der.clone(),
            attestation_der: attestation.to_der().unwrap(),
            validity,
            request_id: request_id.to_owned(),
        })
        .await
        .unwrap();
    let data = id::secret_data(&issued, &key.private_key_pem, &attestation).unwrap();
    (issued, data)
}
