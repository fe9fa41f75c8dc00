//! Model Identity Certificates (MICs) for Nexus.
//!
//! A MIC is an ordinary X.509 v3 end-entity certificate, so every TLS stack, `openssl verify`
//! and cert-manager-style tooling can handle it, with two model-specific parts:
//!
//! * a URI subject alternative name `nexus://<tenant>/<model>@<version>` naming the model
//!   ([`ModelUri`]);
//! * a non-critical extension [`ATTESTATION_OID`] whose value is a DER-encoded
//!   [`Attestation`]: architecture hash, training provenance, capability / benchmark / safety
//!   claims and endorsements. Non-critical so that generic X.509 verifiers accept the
//!   certificate; Nexus peers read it with [`Verifier`].
//!
//! The crate has three parts, all free of I/O (time is passed in, keys and certificates are
//! bytes), so the CA service, the controller, the dataplane and `nexctl` share one
//! implementation:
//!
//! * [`attestation`]: the attestation type, its ASN.1 module and its size-limited codec;
//! * [`issue`]: root / intermediate CA creation, MIC issuance from a CSR, key + CSR generation
//!   for a model, CRL signing;
//! * `mic` (certificate reading), `revocation` (RFC 5280 reasons, serial form) and `sig`
//!   (signature algorithms): the shared layer; `issue` and `verify` each depend on it and not
//!   on each other;
//! * [`verify`]: a warm-trust-store chain verifier with typed [`Rejection`]s and a
//!   [`Requirement`] policy with a compact string syntax.
//!
//! # Example: the whole flow
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use nexus_mic::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = SystemTime::now();
//! let day = Duration::from_secs(86_400);
//! // CA service, once: an offline root and the online intermediate.
//! let root = CertificateAuthority::new_root("Nexus Root CA", now, 3650 * day)?;
//! let ca = root.new_intermediate("Nexus Intermediate CA", now, 365 * day)?;
//!
//! // Controller: a key that never leaves the model's Secret, and a CSR.
//! let model: ModelUri = "nexus://acme/coder@1.0.0".parse()?;
//! let key = generate_model_key(&model)?;
//!
//! // CA service: verify the CSR, issue the MIC.
//! let csr = Csr::from_pem(&key.csr_pem)?;
//! let attestation = Attestation::example();
//! let mic = ca.issue_mic(&MicRequest {
//!     csr: &csr,
//!     model: &model,
//!     attestation: &attestation,
//!     not_before: now,
//!     validity: DEFAULT_MIC_VALIDITY,
//! })?;
//!
//! // Dataplane, in every handshake.
//! let verifier = Verifier::new(&[root.cert_der()])?;
//! let requirement: Requirement = "capability=code-generation,context>=128000".parse()?;
//! let chain = [mic.der.as_slice(), ca.cert_der()];
//! let verified = verifier.verify(&chain, now, &NoRevocation, &requirement)?;
//! assert_eq!(verified.model, model);
//!
//! // nexctl mic inspect
//! println!("{}", Mic::from_der(&mic.der)?);
//! # Ok(())
//! # }
//! ```
//!
//! # OID arc
//!
//! Nexus has no IANA Private Enterprise Number yet, so the arc used is the one RFC 5612 reserves
//! for documentation, `1.3.6.1.4.1.32473`: `1.3.6.1.4.1.32473.1` is "Nexus",
//! `1.3.6.1.4.1.32473.1.1` the MIC attestation extension. It is defined once, in
//! [`ATTESTATION_OID`]; replace it when a PEN is registered (certificates in the field must be
//! re-issued then, which short-lived MICs make cheap).

pub mod attestation;
mod error;
pub mod issue;
mod mic;
mod model_uri;
mod requirement;
mod revocation;
mod sig;
pub mod verify;

pub use attestation::{
    Attestation, Capabilities, Claim, ClaimValue, Comparator, Digest32, Endorsement, HexBytes,
    Provenance, Score, Threshold,
};
pub use error::Error;
pub use issue::{
    CertificateAuthority, Csr, IssuedMic, IssuedServiceCert, KeyAlgorithm, MicRequest, ModelKey,
    RevokedEntry, ServiceCertRequest, der_to_pem, generate_model_key, generate_service_key,
};
pub use mic::{Mic, fingerprint_sha256, pem_to_der_chain};
pub use model_uri::ModelUri;
pub use verify::{
    CrlSet, IssuerMatch, NoRevocation, Rejection, Requirement, RevocationCheck, RevocationReason,
    RevocationStatus, VerifiedMic, Verifier,
};

/// OID components of the MIC attestation extension (see the crate docs for the arc).
pub const ATTESTATION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 32473, 1, 1];

/// The same OID as dotted text, for logs and `openssl x509 -text` comparisons.
pub const ATTESTATION_OID_STR: &str = "1.3.6.1.4.1.32473.1.1";

/// Default MIC lifetime. Short on purpose: revocation is a backstop, expiry is the main
/// defence, and the controller renews well before this runs out.
pub const DEFAULT_MIC_VALIDITY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
