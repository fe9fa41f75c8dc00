//! The real NexTrust CA (`nexus-ca`) on a fresh PostgreSQL database, for controller tests: no
//! in-process stand-in, so the CA's own request validation applies to what the controller sends.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

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
