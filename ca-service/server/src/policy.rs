//! Issuance policy: a pure decision over the request, the tenant record and the limits.
//!
//! No I/O and no clock: the caller looks the tenant up and passes it in; the answer is either
//! the checked inputs for signing ([`Approved`]) or the first reason to refuse. Checks, in
//! order: tenant exists and is active; validity within `1..=max`; model URI well-formed and
//! in the tenant's namespace; attestation within [`MAX_ATTESTATION_LEN`] and decodable; CSR a
//! PKCS#10 request whose self-signature verifies, with a supported key type and no URI SAN
//! other than the model's.

use std::time::Duration;

use nexus_mic::attestation::MAX_ATTESTATION_LEN;
use nexus_mic::{Attestation, Csr, ModelUri};

use crate::Error;

/// Largest CSR accepted (a P-384 CSR with a long URI is well under 2 KiB).
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// Lifetime bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Used when the request asks for 0 seconds.
    pub default_validity: Duration,
    /// Longest lifetime granted.
    pub max_validity: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_validity: nexus_mic::DEFAULT_MIC_VALIDITY,
            max_validity: Duration::from_secs(2160 * 3600),
        }
    }
}

/// The tenant record, as looked up by the caller.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant name (a DNS label).
    pub name: String,
    /// Whether it may get certificates.
    pub active: bool,
}

/// What an issuance (or renewal, with the model taken from the renewed MIC) asks for.
#[derive(Debug, Clone, Copy)]
pub struct IssueInput<'a> {
    /// Requesting tenant.
    pub tenant: &'a str,
    /// PKCS#10, DER.
    pub csr_der: &'a [u8],
    /// Model name.
    pub model: &'a str,
    /// Model version.
    pub version: &'a str,
    /// Attestation, nexus-mic DER.
    pub attestation_der: &'a [u8],
    /// Requested lifetime, 0 for the default.
    pub validity_seconds: u64,
}

/// A request that passed every check, ready to sign.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The verified CSR.
    pub csr: Csr,
    /// `nexus://tenant/model@version`.
    pub model: ModelUri,
    /// The decoded attestation.
    pub attestation: Attestation,
    /// Lifetime to grant.
    pub validity: Duration,
}

/// Checks a tenant record (`None`: unknown).
pub fn check_tenant(name: &str, tenant: Option<&Tenant>) -> Result<(), Error> {
    match tenant {
        None => Err(Error::UnknownTenant(name.to_owned())),
        Some(t) if !t.active => Err(Error::TenantInactive(name.to_owned())),
        Some(_) => Ok(()),
    }
}

/// Resolves a requested lifetime against the limits.
pub fn check_validity(requested: u64, limits: &Limits) -> Result<Duration, Error> {
    let max = limits.max_validity.as_secs();
    match requested {
        0 => Ok(limits.default_validity.min(limits.max_validity)),
        s if s > max => Err(Error::Validity { requested: s, max }),
        s => Ok(Duration::from_secs(s)),
    }
}

/// Decodes an attestation after the size check.
pub fn check_attestation(der: &[u8]) -> Result<Attestation, Error> {
    if der.len() > MAX_ATTESTATION_LEN {
        return Err(nexus_mic::Error::AttestationTooLarge {
            size: der.len(),
            max: MAX_ATTESTATION_LEN,
        }
        .into());
    }
    if der.is_empty() {
        return Err(Error::InvalidArgument {
            field: "attestation_der",
            reason: "required".into(),
        });
    }
    Ok(Attestation::from_der(der)?)
}

/// Parses and verifies a CSR and matches its URI SANs against `model`.
pub fn check_csr(der: &[u8], model: &ModelUri) -> Result<Csr, Error> {
    if der.is_empty() {
        return Err(Error::InvalidArgument {
            field: "csr_der",
            reason: "required".into(),
        });
    }
    if der.len() > MAX_CSR_LEN {
        return Err(Error::InvalidArgument {
            field: "csr_der",
            reason: format!("{} bytes, over the {MAX_CSR_LEN}-byte limit", der.len()),
        });
    }
    let csr = Csr::from_der(der)?;
    let uri = model.to_string();
    if !csr.requested_uris().is_empty() && csr.requested_uris() != [uri.as_str()] {
        return Err(nexus_mic::Error::CsrMismatch {
            requested: csr.requested_uris().join(", "),
            expected: uri,
        }
        .into());
    }
    Ok(csr)
}

/// The whole issuance decision.
pub fn check_issue(
    input: &IssueInput<'_>,
    tenant: Option<&Tenant>,
    limits: &Limits,
) -> Result<Approved, Error> {
    check_tenant(input.tenant, tenant)?;
    let validity = check_validity(input.validity_seconds, limits)?;
    let model = ModelUri::new(input.tenant, input.model, input.version)?;
    let attestation = check_attestation(input.attestation_der)?;
    let csr = check_csr(input.csr_der, &model)?;
    Ok(Approved {
        csr,
        model,
        attestation,
        validity,
    })
}

/// Request ids: the rule of [`nexus_ca_api::validate::check_request_id`], shared with callers.
pub fn check_request_id(id: &str) -> Result<(), Error> {
    nexus_ca_api::validate::check_request_id(id).map_err(Error::from)
}

/// Serials: [`nexus_ca_api::validate::parse_serial`] (lowercase hex, no leading zero bytes).
pub fn parse_serial(s: &str) -> Result<String, Error> {
    nexus_ca_api::validate::parse_serial(s).map_err(Error::from)
}

/// An RFC 1123 DNS label (roles, Kubernetes object names): Kubernetes' own rule,
/// [`nexus_crds::common::is_dns_label`].
pub use nexus_crds::common::{is_dns_label, is_dns_subdomain};

/// Compares two secrets' digests in time that does not depend on where they differ.
pub fn digests_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn check_tenant_name(tenant: &str) -> Result<(), Error> {
    nexus_ca_api::validate::check_tenant(tenant).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(active: bool) -> Tenant {
        Tenant {
            name: "acme".into(),
            active,
        }
    }

    fn check(input: IssueInput<'_>, t: Option<&Tenant>) -> Result<Approved, Error> {
        check_issue(&input, t, &Limits::default())
    }

    fn good_parts() -> Result<(Vec<u8>, Vec<u8>), Error> {
        let uri = ModelUri::new("acme", "coder", "1.0")?;
        let key = nexus_mic::generate_model_key(&uri)?;
        Ok((key.csr_der, Attestation::example().to_der()?))
    }

    fn input<'a>(csr: &'a [u8], att: &'a [u8]) -> IssueInput<'a> {
        IssueInput {
            tenant: "acme",
            csr_der: csr,
            model: "coder",
            version: "1.0",
            attestation_der: att,
            validity_seconds: 0,
        }
    }

    #[test]
    fn accepts_a_good_request_with_default_validity() -> Result<(), Error> {
        let (csr, att) = good_parts()?;
        let ok = check(input(&csr, &att), Some(&tenant(true)))?;
        assert_eq!(ok.validity, nexus_mic::DEFAULT_MIC_VALIDITY);
        assert_eq!(ok.model.to_string(), "nexus://acme/coder@1.0");
        Ok(())
    }

    #[test]
    fn refusals_have_stable_codes() -> Result<(), Error> {
        let (csr, att) = good_parts()?;
        let t = tenant(true);
        let code = |r: Result<Approved, Error>| r.err().map(|e| e.code());
        assert_eq!(code(check(input(&csr, &att), None)), Some("unknown_tenant"));
        assert_eq!(
            code(check(input(&csr, &att), Some(&tenant(false)))),
            Some("tenant_inactive")
        );
        let long = IssueInput {
            validity_seconds: 2160 * 3600 + 1,
            ..input(&csr, &att)
        };
        assert_eq!(code(check(long, Some(&t))), Some("invalid_validity"));
        let bad_uri = IssueInput {
            model: "bad model",
            ..input(&csr, &att)
        };
        assert_eq!(code(check(bad_uri, Some(&t))), Some("invalid_model_uri"));
        let big = vec![0u8; MAX_ATTESTATION_LEN + 1];
        assert_eq!(
            code(check(input(&csr, &big), Some(&t))),
            Some("attestation_too_large")
        );
        assert_eq!(
            code(check(input(&csr, b"\x30\x00"), Some(&t))),
            Some("invalid_attestation")
        );
        assert_eq!(
            code(check(input(b"garbage", &att), Some(&t))),
            Some("invalid_csr")
        );
        let mut tampered = csr.clone();
        let n = tampered.len();
        tampered[n - 3] ^= 0x55;
        assert_eq!(
            code(check(input(&tampered, &att), Some(&t))),
            Some("invalid_csr")
        );
        let other = IssueInput {
            version: "2.0",
            ..input(&csr, &att)
        };
        assert_eq!(code(check(other, Some(&t))), Some("csr_mismatch"));
        Ok(())
    }

    #[test]
    fn request_ids_and_serials() {
        assert!(check_request_id("3f2a-controller:uid:7").is_ok());
        assert!(check_request_id("").is_err());
        assert!(check_request_id("a b").is_err());
        assert!(check_request_id(&"a".repeat(129)).is_err());
        assert_eq!(parse_serial("00ABcd").ok().as_deref(), Some("abcd"));
        assert_eq!(parse_serial("abc").ok().as_deref(), Some("0abc"));
        assert!(parse_serial("00").is_err());
        assert!(parse_serial("xyz").is_err());
    }
}
