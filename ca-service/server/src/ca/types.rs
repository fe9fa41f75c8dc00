//! The CA's request and answer types, shared by the gRPC and REST edges.

use nexus_mic::RevocationReason;

use crate::merkle::Hash;

/// Issue a MIC.
#[derive(Debug, Clone)]
pub struct IssueParams {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub request_id: String,
    /// PKCS#10 DER.
    pub csr_der: Vec<u8>,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// nexus-mic attestation DER.
    pub attestation_der: Vec<u8>,
    /// 0 for the default.
    pub validity_seconds: u64,
}

/// Renew a MIC.
#[derive(Debug, Clone)]
pub struct RenewParams {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub request_id: String,
    /// Serial renewed (hex).
    pub serial: String,
    /// Fresh CSR.
    pub csr_der: Vec<u8>,
    /// Replacement attestation; empty keeps the old one.
    pub attestation_der: Vec<u8>,
    /// 0 for the default.
    pub validity_seconds: u64,
}

/// Revoke a MIC.
#[derive(Debug, Clone)]
pub struct RevokeParams {
    /// Tenant.
    pub tenant: String,
    /// Idempotency key.
    pub request_id: String,
    /// Serial (hex).
    pub serial: String,
    /// RFC 5280 reason.
    pub reason: RevocationReason,
}

/// An issued MIC and its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Serial, lowercase hex.
    pub serial: String,
    /// Leaf DER.
    pub leaf_der: Vec<u8>,
    /// Intermediate DER.
    pub chain_der: Vec<u8>,
    /// Root DER.
    pub root_der: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf, hex.
    pub fingerprint: String,
    /// Issuance log index.
    pub log_index: u64,
    /// The model URI.
    pub model_uri: String,
    /// Renewed serial, if a renewal.
    pub renewed_from: Option<String>,
}

/// Outcome of a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial.
    pub serial: String,
    /// Reason recorded (the first one, if already revoked).
    pub reason: RevocationReason,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Revoked by an earlier request.
    pub already_revoked: bool,
    /// A CRL number listing it.
    pub crl_number: u64,
}

/// Revocation status of one serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not issued to this tenant.
    Unknown,
    /// Issued, not revoked.
    Good {
        /// Unix seconds.
        not_after: i64,
    },
    /// Revoked.
    Revoked {
        /// Unix seconds.
        not_after: i64,
        /// Reason.
        reason: RevocationReason,
        /// Unix seconds.
        revoked_at: i64,
    },
}

/// The current CRL.
#[derive(Debug, Clone)]
pub struct CrlInfo {
    /// DER.
    pub der: Vec<u8>,
    /// CRL number.
    pub number: u64,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds.
    pub next_update: i64,
    /// Rows in the revocations table when it was signed: another replica's revocation changes
    /// the count, and the cached CRL is re-signed.
    pub revocations_seen: i64,
}

/// A signed tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sth {
    /// Leaves.
    pub tree_size: u64,
    /// Milliseconds since the epoch.
    pub timestamp_ms: u64,
    /// MTH.
    pub root_hash: Hash,
    /// ECDSA P-256 SHA-256 DER signature over [`sth_signed_data`].
    pub signature: Vec<u8>,
    /// Log key SPKI DER.
    pub log_public_key_der: Vec<u8>,
}

pub use crate::merkle::sth_signed_data;

/// An inclusion proof with the tree head it leads to.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    /// Serial.
    pub serial: String,
    /// Leaf index.
    pub leaf_index: u64,
    /// Leaf hash.
    pub leaf_hash: Hash,
    /// Audit path.
    pub audit_path: Vec<Hash>,
    /// Tree head of the proof's size.
    pub sth: Sth,
}

/// A consistency proof between two tree sizes, with the current tree head.
#[derive(Debug, Clone)]
pub struct ConsistencyProof {
    /// Older size.
    pub first: u64,
    /// Newer size.
    pub second: u64,
    /// `PROOF(first, D[second])`.
    pub proof: Vec<Hash>,
    /// The current signed tree head (`tree_size ≥ second`).
    pub sth: Sth,
}

/// Verify a claim proof against a MIC.
#[derive(Debug, Clone)]
pub struct ZkVerifyParams {
    /// Tenant.
    pub tenant: String,
    /// MIC serial.
    pub serial: String,
    /// Claim name in the attestation.
    pub claim: String,
    /// Least threshold required (nexus-zk fixed point).
    pub min_threshold: u64,
    /// `nexus_zk::ClaimProof` JSON.
    pub claim_proof_json: String,
}

/// Answer of a claim-proof check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkVerdict {
    /// Verified.
    pub valid: bool,
    /// Why not.
    pub reason: String,
    /// Commitment from the certificate, hex.
    pub commitment_hex: String,
    /// Threshold the proof shows.
    pub proven_threshold: u64,
}
