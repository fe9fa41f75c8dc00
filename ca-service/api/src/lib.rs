//! The gRPC contract of the NexTrust CA service, package `nexus.ca.v1`.
//!
//! Generated from `proto/nexus/ca/v1/ca.proto` at build time (prost + tonic). Both sides are
//! exported: [`v1::certificate_authority_client::CertificateAuthorityClient`] for the
//! controller and the cloud API, [`v1::certificate_authority_server`] for `nexus-ca`.
//!
//! Also the CA's shared rules: [`validate`] (request syntax, so callers can check before
//! sending) and [`merkle`] (the issuance log's hashing, proofs and their verifiers).
//!
//! Kept deliberately light (tonic, prost, sha2 and ring only) because every caller of the CA links it.

/// `nexus.ca.v1`: messages, the client and the server trait.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("nexus.ca.v1");
}

pub mod merkle;
pub mod validate;

/// Fully qualified gRPC service name, e.g. for health checks or reflection allow-lists.
pub const SERVICE_NAME: &str = "nexus.ca.v1.CertificateAuthority";

/// Metadata key carrying the caller's bearer token (`authorization: Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";
