//! RFC 5280 revocation vocabulary shared by issuance (CRL signing) and verification (CRL
//! checks). Its own module so that `issue` and `verify` both depend on it and not on each
//! other.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// RFC 5280 CRL reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The model's private key leaked.
    KeyCompromise,
    /// The issuing CA's key leaked.
    CaCompromise,
    /// The model changed owner or tenant.
    AffiliationChanged,
    /// Replaced by a newer MIC (renewal, new attestation).
    Superseded,
    /// The model was retired (its ModelIdentity was deleted).
    CessationOfOperation,
    /// Temporarily suspended.
    CertificateHold,
    /// Removed from a CRL (delta CRLs only).
    RemoveFromCrl,
    /// Its claims were withdrawn (e.g. a failed re-evaluation).
    PrivilegeWithdrawn,
    /// Attribute authority compromise.
    AaCompromise,
}

impl RevocationReason {
    /// From the RFC 5280 numeric code (7 is unassigned).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Unspecified,
            1 => Self::KeyCompromise,
            2 => Self::CaCompromise,
            3 => Self::AffiliationChanged,
            4 => Self::Superseded,
            5 => Self::CessationOfOperation,
            6 => Self::CertificateHold,
            8 => Self::RemoveFromCrl,
            9 => Self::PrivilegeWithdrawn,
            10 => Self::AaCompromise,
            _ => return None,
        })
    }
}

impl From<RevocationReason> for rcgen::RevocationReason {
    fn from(r: RevocationReason) -> Self {
        use RevocationReason as R;
        match r {
            R::Unspecified => Self::Unspecified,
            R::KeyCompromise => Self::KeyCompromise,
            R::CaCompromise => Self::CaCompromise,
            R::AffiliationChanged => Self::AffiliationChanged,
            R::Superseded => Self::Superseded,
            R::CessationOfOperation => Self::CessationOfOperation,
            R::CertificateHold => Self::CertificateHold,
            R::RemoveFromCrl => Self::RemoveFromCrl,
            R::PrivilegeWithdrawn => Self::PrivilegeWithdrawn,
            R::AaCompromise => Self::AaCompromise,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FromStr for RevocationReason {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(Error::Json)
    }
}

/// Strips leading zero bytes: the form serials are compared in (CRLs, revocation checks).
pub(crate) fn normalize_serial(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
    &serial[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_without_leading_zeros() {
        assert_eq!(normalize_serial(&[0, 0, 5, 0]), &[5, 0]);
        assert_eq!(normalize_serial(&[0, 0]), &[] as &[u8]);
    }

    #[test]
    fn reasons_round_trip_by_code_and_name() {
        for code in 0..=10u8 {
            if let Some(r) = RevocationReason::from_code(code) {
                let name = serde_json::to_value(r).map(|v| v.as_str().map(str::to_owned));
                let Ok(Some(name)) = name else {
                    panic!("reason {r} has no name")
                };
                assert_eq!(name.parse::<RevocationReason>().ok(), Some(r));
            } else {
                assert_eq!(code, 7);
            }
        }
    }
}
