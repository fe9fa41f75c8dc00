//! The ModelIdentity controller: keeps a short-lived Model Identity Certificate in a Secret,
//! renews it, re-issues it when the spec changes and revokes it when the resource goes away.
//!
//! `decide` is the pure core; this module holds the pure conversions around it (spec →
//! attestation, Secret ↔ certificate); `reconcile` is the kube adapter.

pub mod decide;
pub mod reconcile;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::ByteString;
use nexus_crds::ModelIdentity;
use nexus_crds::identity::ScoreClaim;
use nexus_mic::{Attestation, ModelUri};
use sha2::{Digest, Sha256};

use crate::Error;
use decide::SecretCert;

/// Finalizer that guarantees revocation before the resource disappears.
pub const FINALIZER: &str = "nexus.dev/revoke-certificate";
/// Secret annotation: hash of the spec the certificate was issued for.
pub const SPEC_HASH_ANNOTATION: &str = "nexus.dev/spec-hash";
/// Secret annotation: serial of the certificate.
pub const SERIAL_ANNOTATION: &str = "nexus.dev/serial";
/// Secret keys, as cert-manager writes them (plus the decoded attestation).
pub const TLS_CRT: &str = "tls.crt";
/// Private key (PKCS#8 PEM).
pub const TLS_KEY: &str = "tls.key";
/// Root CA certificate.
pub const CA_CRT: &str = "ca.crt";
/// The attestation the certificate carries, as JSON.
pub const ATTESTATION_JSON: &str = "attestation.json";

/// The tenant a ModelIdentity belongs to: `spec.tenant`, defaulting to its namespace.
pub fn tenant(mi: &ModelIdentity) -> Result<String, Error> {
    mi.spec
        .tenant
        .clone()
        .or_else(|| mi.metadata.namespace.clone())
        .ok_or_else(|| {
            Error::field(
                "spec.tenant",
                "no tenant and no namespace to default it from",
            )
        })
}

/// The MIC URI `nexus://<tenant>/<model>@<version>`.
pub fn model_uri(mi: &ModelIdentity) -> Result<ModelUri, Error> {
    Ok(ModelUri::new(
        &tenant(mi)?,
        &mi.spec.model.name,
        &mi.spec.model.version,
    )?)
}

/// Hash of everything in the spec that ends up in the certificate; a change means re-issue.
/// Lifetime fields are included so a new `duration` takes effect at once.
pub fn spec_hash(mi: &ModelIdentity) -> String {
    let s = &mi.spec;
    let material = serde_json::json!({
        "tenant": tenant(mi).ok(),
        "model": s.model,
        "architectureHash": s.architecture_hash,
        "provenance": s.provenance,
        "capabilities": s.capabilities,
        "benchmarks": s.benchmarks,
        "safetyEvaluations": s.safety_evaluations,
        "duration": s.duration,
        "issuer": s.issuer_ref.name,
    });
    hex::encode(Sha256::digest(material.to_string().as_bytes()))
}

fn parse_digest(field: &str, s: &str) -> Result<nexus_mic::attestation::Digest32, Error> {
    s.trim_start_matches("sha256:")
        .parse()
        .map_err(|_| Error::field(field, format!("{s:?} is not a sha256 digest")))
}

fn claim(field: &str, c: &ScoreClaim) -> Result<nexus_mic::attestation::Claim, Error> {
    use nexus_mic::attestation::{Claim, ClaimValue};
    let value = match (&c.value, &c.commitment) {
        (Some(v), None) => ClaimValue::Plain(v.parse().map_err(|_| {
            Error::field(format!("{field}.{}", c.name), format!("bad score {v:?}"))
        })?),
        (None, Some(h)) => ClaimValue::Commitment(parse_digest(field, h)?),
        _ => {
            return Err(Error::field(
                format!("{field}.{}", c.name),
                "set exactly one of value or commitment",
            ));
        }
    };
    Ok(Claim {
        name: c.name.clone(),
        value,
        threshold: None,
    })
}

/// The attestation a ModelIdentity's certificate carries.
pub fn attestation(mi: &ModelIdentity) -> Result<Attestation, Error> {
    use nexus_mic::attestation::{Capabilities, Endorsement, Provenance};
    let s = &mi.spec;
    let mut endorsements: Vec<Endorsement> = Vec::new();
    for c in s.benchmarks.iter().chain(&s.safety_evaluations) {
        if let Some(e) = &c.evaluator
            && !endorsements.iter().any(|x| &x.issuer == e)
        {
            endorsements.push(Endorsement {
                issuer: e.clone(),
                signature: None,
            });
        }
    }
    let att = Attestation {
        architecture_hash: parse_digest("architectureHash", &s.architecture_hash)?,
        provenance: Provenance {
            dataset_digests: s
                .provenance
                .dataset_digests
                .iter()
                .map(|d| parse_digest("provenance.datasetDigests", d))
                .collect::<Result<_, _>>()?,
            publisher: s.provenance.publisher.clone(),
            parent_model: s.provenance.parent_model.clone(),
        },
        capabilities: Capabilities {
            capabilities: s.capabilities.capabilities.clone(),
            context_window: u64::from(s.capabilities.context_window.unwrap_or(0)),
            modalities: s
                .capabilities
                .modalities
                .iter()
                .map(|m| {
                    serde_json::to_value(m)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect(),
        },
        benchmarks: s
            .benchmarks
            .iter()
            .map(|c| claim("benchmarks", c))
            .collect::<Result<_, _>>()?,
        safety_evaluations: s
            .safety_evaluations
            .iter()
            .map(|c| claim("safetyEvaluations", c))
            .collect::<Result<_, _>>()?,
        endorsements,
    };
    att.validate()?;
    Ok(att)
}

/// Lifetime and renewal lead from the spec.
pub fn lifetimes(mi: &ModelIdentity) -> Result<(Duration, Duration), Error> {
    let d = nexus_crds::common::parse_duration(&mi.spec.duration)?;
    let r = nexus_crds::common::parse_duration(&mi.spec.renew_before)?;
    Ok((d, r))
}

/// Serial in the canonical form used in status: lowercase hex, no separators.
pub fn normalize_serial(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A certificate as issued by the CA, ready to be written to a Secret.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// Leaf then intermediates, PEM.
    pub chain_pem: String,
    /// Root, PEM.
    pub ca_pem: String,
    /// Serial, canonical hex.
    pub serial: String,
    /// SHA-256 of the leaf DER, hex.
    pub fingerprint: String,
    /// Validity.
    pub not_before: DateTime<Utc>,
    /// Validity.
    pub not_after: DateTime<Utc>,
}

/// A certificate time. `None` for one chrono cannot represent: such a certificate is treated as
/// unreadable rather than as valid from 1970.
fn unix(t: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t, 0).single()
}

/// Reads what a Secret holds: the leaf certificate and whether the key matches it.
/// `None` when the Secret has no parseable certificate.
pub fn read_secret(
    data: &BTreeMap<String, ByteString>,
    annotations: &BTreeMap<String, String>,
) -> Option<SecretCert> {
    let crt = std::str::from_utf8(&data.get(TLS_CRT)?.0).ok()?;
    let mic = nexus_mic::Mic::from_pem(crt).ok()?;
    let key_matches = data
        .get(TLS_KEY)
        .and_then(|k| std::str::from_utf8(&k.0).ok())
        .is_some_and(|k| key_matches_cert(k, crt));
    Some(SecretCert {
        serial: normalize_serial(&mic.serial),
        not_before: unix(mic.not_before)?,
        not_after: unix(mic.not_after)?,
        spec_hash: annotations.get(SPEC_HASH_ANNOTATION).cloned(),
        key_matches,
    })
}

/// Whether a PKCS#8 PEM private key belongs to the first certificate of a PEM chain.
pub fn key_matches_cert(key_pem: &str, chain_pem: &str) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok(ders) = nexus_mic::pem_to_der_chain(chain_pem) else {
        return false;
    };
    let Some(leaf) = ders.first() else {
        return false;
    };
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(leaf) {
        Ok((_, cert)) => {
            use rcgen::PublicKeyData;
            cert.public_key().raw == key.subject_public_key_info().as_slice()
        }
        Err(_) => false,
    }
}

/// The Secret's data for an issued certificate and its key.
pub fn secret_data(
    issued: &IssuedCertificate,
    key_pem: &str,
    attestation: &Attestation,
) -> Result<BTreeMap<String, ByteString>, Error> {
    let json = attestation.to_json()?;
    Ok(BTreeMap::from([
        (
            TLS_CRT.to_owned(),
            ByteString(issued.chain_pem.clone().into_bytes()),
        ),
        (TLS_KEY.to_owned(), ByteString(key_pem.as_bytes().to_vec())),
        (
            CA_CRT.to_owned(),
            ByteString(issued.ca_pem.clone().into_bytes()),
        ),
        (ATTESTATION_JSON.to_owned(), ByteString(json.into_bytes())),
    ]))
}

impl IssuedCertificate {
    /// Builds the record from a PEM chain (leaf first) and root, reading serial and validity
    /// from the leaf itself rather than trusting a second source.
    pub fn from_pem(chain_pem: String, ca_pem: String) -> Result<Self, Error> {
        let mic = nexus_mic::Mic::from_pem(&chain_pem)?;
        Ok(Self {
            serial: normalize_serial(&mic.serial),
            fingerprint: mic.fingerprint.clone(),
            not_before: unix(mic.not_before)
                .ok_or_else(|| Error::field("certificate", "notBefore is out of range"))?,
            not_after: unix(mic.not_after)
                .ok_or_else(|| Error::field("certificate", "notAfter is out of range"))?,
            chain_pem,
            ca_pem,
        })
    }
}
