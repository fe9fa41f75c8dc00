//! The CA's syntactic request rules, shared so that callers (the controller, the cloud API)
//! can check a request before sending it and get the same answer the CA would give.
//!
//! The CA server calls these same functions (`nexus-ca`'s `policy` module), so the rules live
//! in one place. Only rules that need no state are here: whether a tenant exists, a CSR's
//! signature or the validity limits the CA is configured with are the server's business.

use std::fmt;

/// Longest request id, in bytes.
pub const REQUEST_ID_MAX_LEN: usize = 128;
/// Longest tenant name, in bytes (a DNS label).
pub const TENANT_MAX_LEN: usize = 63;
/// Longest serial, in hex digits (RFC 5280: at most 20 octets).
pub const SERIAL_MAX_HEX: usize = 40;

/// A request field the CA would refuse with `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as named in `nexus.ca.v1` (`request_id`, `tenant`, `serial`).
    pub field: &'static str,
    /// The rule it breaks.
    pub reason: &'static str,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

impl From<Invalid> for tonic::Status {
    fn from(e: Invalid) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Whether `b` may appear in a request id: `[A-Za-z0-9._:-]`.
pub fn is_request_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

/// Request ids (idempotency keys): 1-128 characters of `[A-Za-z0-9._:-]`.
pub fn check_request_id(id: &str) -> Result<(), Invalid> {
    if !id.is_empty() && id.len() <= REQUEST_ID_MAX_LEN && id.bytes().all(is_request_id_byte) {
        Ok(())
    } else {
        Err(Invalid {
            field: "request_id",
            reason: "must be 1-128 characters of [A-Za-z0-9._:-]",
        })
    }
}

/// Tenant names in requests: 1-63 bytes. (Whether the tenant exists and is active is the
/// CA's decision; tenants are created as DNS labels.)
pub fn check_tenant(tenant: &str) -> Result<(), Invalid> {
    if tenant.is_empty() || tenant.len() > TENANT_MAX_LEN {
        Err(Invalid {
            field: "tenant",
            reason: "required, at most 63 bytes",
        })
    } else {
        Ok(())
    }
}

/// Serials: 1-40 hex digits, either case, not all zero. Returns the form the CA stores and
/// answers with: lowercase, an even number of digits, no leading zero bytes.
pub fn parse_serial(s: &str) -> Result<String, Invalid> {
    const BAD: Invalid = Invalid {
        field: "serial",
        reason: "must be 1-40 hex digits, not all zero",
    };
    if s.is_empty() || s.len() > SERIAL_MAX_HEX || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BAD);
    }
    let lower = s.to_ascii_lowercase();
    let digits = lower.trim_start_matches('0');
    if digits.is_empty() {
        return Err(BAD);
    }
    Ok(if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(check_request_id("a").is_ok());
        assert!(check_request_id("mi:acme/coder:1.0.0_x-y.z").is_err()); // '/' is not allowed
        assert!(check_request_id("mi:acme:coder:1.0.0_x-y.z").is_ok());
        assert!(check_request_id(&"a".repeat(128)).is_ok());
        assert!(check_request_id(&"a".repeat(129)).is_err());
        assert!(check_request_id("").is_err());
        assert!(check_request_id("a b").is_err());
        assert!(check_request_id("é").is_err());
    }

    #[test]
    fn tenants() {
        assert!(check_tenant("acme").is_ok());
        assert!(check_tenant("").is_err());
        assert!(check_tenant(&"a".repeat(64)).is_err());
    }

    #[test]
    fn serials() {
        assert_eq!(parse_serial("0A0b").as_deref(), Ok("0a0b"));
        assert_eq!(parse_serial("000a0b").as_deref(), Ok("0a0b"));
        assert_eq!(parse_serial("a0b").as_deref(), Ok("0a0b"));
        assert_eq!(parse_serial("1").as_deref(), Ok("01"));
        assert_eq!(parse_serial("100").as_deref(), Ok("0100"));
        assert!(parse_serial("0").is_err());
        assert!(parse_serial("").is_err());
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial("+1").is_err());
        assert!(parse_serial(&"1".repeat(41)).is_err());
        assert_eq!(parse_serial(&"f".repeat(40)), Ok("f".repeat(40)));
    }
}
