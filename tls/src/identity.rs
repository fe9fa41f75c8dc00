//! Who a verified peer certificate names.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// URI SAN prefix carrying a caller's role: `spiffe://nexus/role/<role>` (SPIFFE-shaped, so
/// a mesh that speaks SPIFFE reads it too).
pub const ROLE_URI_PREFIX: &str = "spiffe://nexus/role/";

/// The URI SAN for `role`.
pub fn role_uri(role: &str) -> String {
    format!("{ROLE_URI_PREFIX}{role}")
}

/// The identity in a peer's end-entity certificate. Only built from certificates rustls has
/// already verified (chain, validity, revocation), so it can be trusted for authorisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Serial, lowercase hex without leading zero bytes (the CA's form).
    pub serial: String,
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
}

impl PeerIdentity {
    /// Reads a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let raw = cert.raw_serial();
        let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
        let serial = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Some(Self {
            serial,
            common_name,
            uris,
            dns_names,
        })
    }

    /// The role from the first `spiffe://nexus/role/<role>` URI SAN.
    pub fn role(&self) -> Option<&str> {
        self.uris
            .iter()
            .find_map(|u| u.strip_prefix(ROLE_URI_PREFIX))
            .filter(|r| !r.is_empty())
    }
}
