//! Reading a MIC (without verifying it): for `nexctl mic inspect`, the controller's status
//! and the fuzz target. Trust decisions belong to [`crate::Verifier`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::model_uri::SCHEME;
use crate::sig::{self, KeyAlgorithm};
use crate::{Attestation, Error, ModelUri};

/// DER content octets of [`crate::ATTESTATION_OID`], compared against extension OIDs.
pub(crate) const ATTESTATION_OID_DER: &[u8] =
    &[0x2B, 0x06, 0x01, 0x04, 0x01, 0x81, 0xFD, 0x59, 0x01, 0x01];

/// Why a parsed certificate is not a well-formed MIC.
#[derive(Debug)]
pub(crate) enum MicContentError {
    /// No (or more than one) `nexus://` URI SAN, or an invalid one, or no attestation.
    NotAMic(String),
    /// The attestation extension is present but does not decode.
    Attestation(Error),
}

/// The model URI and decoded attestation of a certificate.
pub(crate) fn mic_content(
    cert: &X509Certificate<'_>,
) -> Result<(ModelUri, Attestation), MicContentError> {
    let mut uri = None;
    let mut attestation = None;
    for ext in cert.extensions() {
        if ext.oid.as_bytes() == ATTESTATION_OID_DER {
            if attestation.is_some() {
                return Err(MicContentError::NotAMic(
                    "duplicate attestation extension".into(),
                ));
            }
            attestation = Some(ext.value);
        } else if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(u) = name
                    && u.starts_with(SCHEME)
                {
                    if uri.is_some() {
                        return Err(MicContentError::NotAMic(
                            "more than one nexus:// URI SAN".into(),
                        ));
                    }
                    uri = Some(*u);
                }
            }
        }
    }
    let uri = uri.ok_or_else(|| MicContentError::NotAMic("no nexus:// URI SAN".into()))?;
    let model: ModelUri = uri
        .parse()
        .map_err(|e: Error| MicContentError::NotAMic(e.to_string()))?;
    let der = attestation.ok_or_else(|| {
        MicContentError::NotAMic(format!(
            "no attestation extension ({})",
            crate::ATTESTATION_OID_STR
        ))
    })?;
    let attestation = Attestation::from_der(der).map_err(MicContentError::Attestation)?;
    Ok((model, attestation))
}

/// A MIC's contents, parsed but not verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mic {
    /// The model the certificate names.
    pub model: ModelUri,
    /// The decoded attestation.
    pub attestation: Attestation,
    /// Subject DN, RFC 4514-ish text.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The certified key's type, `None` if this crate does not support it.
    #[serde(serialize_with = "ser_key_alg")]
    pub key_algorithm: Option<KeyAlgorithm>,
}

fn ser_key_alg<S: serde::Serializer>(k: &Option<KeyAlgorithm>, s: S) -> Result<S::Ok, S::Error> {
    match k {
        Some(k) => s.collect_str(k),
        None => s.serialize_none(),
    }
}

impl Mic {
    /// Parses a MIC from DER. Never panics on untrusted input.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let cert = match X509Certificate::from_der(der) {
            Ok(([], cert)) => cert,
            Ok(_) => {
                return Err(Error::Certificate(
                    "trailing bytes after the certificate".into(),
                ));
            }
            Err(e) => return Err(Error::Certificate(e.to_string())),
        };
        let (model, attestation) = mic_content(&cert).map_err(|e| match e {
            MicContentError::NotAMic(m) => Error::Certificate(format!("not a MIC: {m}")),
            MicContentError::Attestation(e) => e,
        })?;
        Ok(Self {
            model,
            attestation,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            fingerprint: fingerprint_sha256(der),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            key_algorithm: sig::key_algorithm(cert.public_key()).ok(),
        })
    }

    /// Parses the first certificate of a PEM bundle as a MIC.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let chain = pem_to_der_chain(pem)?;
        let first = chain
            .first()
            .ok_or_else(|| Error::Pem("no certificate".into()))?;
        Self::from_der(first)
    }
}

/// Seconds since the epoch, negative before it, saturating.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(t: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("@{t}"),
    }
}

impl fmt::Display for Mic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Model:             {}", self.model)?;
        writeln!(f, "Subject:           {}", self.subject)?;
        writeln!(f, "Issuer:            {}", self.issuer)?;
        writeln!(f, "Serial:            {}", self.serial)?;
        writeln!(f, "Fingerprint:       sha256:{}", self.fingerprint)?;
        writeln!(
            f,
            "Valid:             {} .. {}",
            rfc3339(self.not_before),
            rfc3339(self.not_after)
        )?;
        match self.key_algorithm {
            Some(k) => writeln!(f, "Key:               {k}")?,
            None => writeln!(f, "Key:               unsupported type")?,
        }
        write!(f, "{}", self.attestation)
    }
}

/// SHA-256 of `der`, lowercase hex: the fingerprint used in logs, audit records and issuer
/// requirements.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// All `CERTIFICATE` blocks of a PEM bundle, in order, as DER (other blocks are skipped).
pub fn pem_to_der_chain(pem: &str) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| Error::Pem(e.to_string()))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(Error::Pem("no CERTIFICATE block found".into()));
    }
    Ok(out)
}
