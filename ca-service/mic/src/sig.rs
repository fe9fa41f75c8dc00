//! Signature algorithms a MIC hierarchy may use, mapped onto `ring` verifiers.
//!
//! Deliberately small: ECDSA P-256/P-384 and Ed25519. RSA is refused, both for CSRs and CAs,
//! because it makes certificates and handshakes larger and slower for no gain in a new PKI.
//! OIDs are compared as encoded bytes (no OID registry lookups on the hot path).

use ring::signature::{self, VerificationAlgorithm};
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};

const ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
const ED25519: &[u8] = &[0x2B, 0x65, 0x70];
const EC_PUBLIC_KEY: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];

/// Public key types a MIC or MIC CA may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 (the default for everything Nexus generates).
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::Ed25519 => "Ed25519",
        })
    }
}

/// Classifies a public key, or describes why it is not supported.
pub(crate) fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyAlgorithm, String> {
    let alg = spki.algorithm.algorithm.as_bytes();
    if alg == ED25519 {
        return Ok(KeyAlgorithm::Ed25519);
    }
    if alg == EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve.as_ref().map(|c| c.as_bytes()) {
            Some(c) if c == P256 => Ok(KeyAlgorithm::EcdsaP256),
            Some(c) if c == P384 => Ok(KeyAlgorithm::EcdsaP384),
            Some(_) => Err("ECDSA on an unsupported curve".to_owned()),
            None => Err("ECDSA without a named curve".to_owned()),
        };
    }
    if alg == RSA {
        return Err("RSA".to_owned());
    }
    Err(format!("OID {}", spki.algorithm.algorithm))
}

/// The `ring` verifier for a signature algorithm made with a key of type `key`, if supported.
pub(crate) fn verifier(
    sig_alg: &AlgorithmIdentifier<'_>,
    key: KeyAlgorithm,
) -> Option<&'static dyn VerificationAlgorithm> {
    let oid = sig_alg.algorithm.as_bytes();
    match key {
        KeyAlgorithm::EcdsaP256 if oid == ECDSA_SHA256 => Some(&signature::ECDSA_P256_SHA256_ASN1),
        KeyAlgorithm::EcdsaP256 if oid == ECDSA_SHA384 => Some(&signature::ECDSA_P256_SHA384_ASN1),
        KeyAlgorithm::EcdsaP384 if oid == ECDSA_SHA384 => Some(&signature::ECDSA_P384_SHA384_ASN1),
        KeyAlgorithm::EcdsaP384 if oid == ECDSA_SHA256 => Some(&signature::ECDSA_P384_SHA256_ASN1),
        KeyAlgorithm::Ed25519 if oid == ED25519 => Some(&signature::ED25519),
        _ => None,
    }
}

/// Verifies `sig` over `msg` with a raw public key (the SPKI's BIT STRING contents).
pub(crate) fn verify(
    alg: &'static dyn VerificationAlgorithm,
    public_key: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> bool {
    signature::UnparsedPublicKey::new(alg, public_key)
        .verify(msg, sig)
        .is_ok()
}
