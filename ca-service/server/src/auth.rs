//! Who may call the CA, decided from what the transport established. Pure: no I/O.
//!
//! * Over TLS, a caller presents a client certificate issued by this CA; rustls has verified
//!   its chain, validity and revocation (the CA's own CRL) before a request arrives, so only
//!   its role — the URI SAN `spiffe://nexus/role/<role>` — is checked here against the allowed
//!   roles (by default `controller` and `cloud-api`).
//! * The bearer token is a fallback: accepted only when configured, and over TLS unless the
//!   operator runs the CA in plaintext mode (development, `nexctl up`), where it is the only
//!   credential and crosses the network in clear — documented as such.

use nexus_tls::PeerIdentity;
use sha2::{Digest, Sha256};

use crate::Error;

/// Compares presented bearer tokens with the configured one (by SHA-256, so the comparison
/// time does not depend on how much of the secret matched).
pub struct TokenCheck {
    digest: [u8; 32],
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck(<redacted>)")
    }
}

impl TokenCheck {
    /// For this token.
    pub fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Checks an `Authorization` header value.
    pub fn check_header(&self, value: Option<&str>) -> bool {
        let Some(token) = value.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        crate::policy::digests_equal(&d, &self.digest)
    }
}

/// Roles a client certificate may carry to call the CA when none are configured.
pub const DEFAULT_ROLES: &[&str] = &["controller", "cloud-api"];

/// The caller, once admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A client certificate of this CA with an allowed role.
    Certificate {
        /// The role.
        role: String,
        /// The certificate's serial.
        serial: String,
    },
    /// The bearer token.
    Token,
}

/// The admission rule.
#[derive(Debug)]
pub struct Access {
    token: Option<TokenCheck>,
    roles: Vec<String>,
}

impl Access {
    /// Certificates with one of `roles`; the bearer token too if `token` is given.
    pub fn new(token: Option<&str>, roles: &[String]) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()).map(TokenCheck::new),
            roles: roles.to_vec(),
        }
    }

    /// Plaintext mode: the bearer token only.
    pub fn token_only(token: &str) -> Self {
        Self::new(Some(token), &[])
    }

    /// Admits or refuses a request. A presented certificate decides alone (a wrong role is
    /// refused even with a valid token: the caller said who it is).
    pub fn check(
        &self,
        peer: Option<&PeerIdentity>,
        authorization: Option<&str>,
    ) -> Result<Caller, Error> {
        if let Some(peer) = peer {
            return match peer.role() {
                Some(role) if self.roles.iter().any(|r| r == role) => Ok(Caller::Certificate {
                    role: role.to_owned(),
                    serial: peer.serial.clone(),
                }),
                Some(role) => Err(Error::PermissionDenied(role.to_owned())),
                None => Err(Error::PermissionDenied("<none>".into())),
            };
        }
        match &self.token {
            Some(t) if t.check_header(authorization) => Ok(Caller::Token),
            _ => Err(Error::Unauthenticated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uris: &[&str]) -> PeerIdentity {
        PeerIdentity {
            serial: "0a".into(),
            common_name: Some("x".into()),
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            dns_names: vec![],
        }
    }

    #[test]
    fn certificates_decide_by_role_and_tokens_are_a_fallback() {
        let roles = vec!["controller".to_owned()];
        let a = Access::new(Some("secret-token-0123456789"), &roles);
        let ctl = peer(&["spiffe://nexus/role/controller"]);
        assert_eq!(
            a.check(Some(&ctl), None).ok(),
            Some(Caller::Certificate {
                role: "controller".into(),
                serial: "0a".into()
            })
        );
        let agent = peer(&["spiffe://nexus/role/agent"]);
        assert_eq!(
            a.check(Some(&agent), Some("Bearer secret-token-0123456789"))
                .map_err(|e| e.code()),
            Err("permission_denied")
        );
        assert_eq!(
            a.check(Some(&peer(&[])), None).map_err(|e| e.code()),
            Err("permission_denied")
        );
        assert_eq!(
            a.check(None, Some("Bearer secret-token-0123456789")).ok(),
            Some(Caller::Token)
        );
        assert_eq!(
            a.check(None, Some("Bearer wrong")).map_err(|e| e.code()),
            Err("unauthenticated")
        );
        assert_eq!(
            a.check(None, None).map_err(|e| e.code()),
            Err("unauthenticated")
        );
        // Without a configured token, only certificates.
        let strict = Access::new(None, &roles);
        assert_eq!(
            strict
                .check(None, Some("Bearer secret-token-0123456789"))
                .map_err(|e| e.code()),
            Err("unauthenticated")
        );
        assert_eq!(
            Access::new(Some(""), &roles)
                .check(None, Some("Bearer "))
                .map_err(|e| e.code()),
            Err("unauthenticated")
        );
    }
}
