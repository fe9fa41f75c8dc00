//! Compact 32-bit identifiers for names: capabilities, model families, claims, domains.
//!
//! A descriptor travels in every capability-addressed frame and a P4 table matches on it, so
//! names become fixed-width numbers: FNV-1a (32-bit) over a one-byte namespace tag and the
//! name. FNV-1a is not collision-resistant against a chosen name; that is acceptable because
//! a collision can only merge two names *inside one routing domain*, whose names one tenant
//! chooses, and the table compiler refuses a domain in which two advertised names collide
//! ([`crate::Error::IdCollision`]). Zero is reserved for "any"/"unset", so a hash of zero is
//! mapped to one.

/// Namespace tags hashed in front of the name, so `code-generation` the capability and
/// `code-generation` the claim get different ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IdKind {
    /// A capability (`code-generation`).
    Capability = b'c',
    /// A model family (`llm`).
    Family = b'f',
    /// An attested claim (`benchmark:humaneval`, `proven:safety-eval`).
    Claim = b'k',
    /// A routing domain (`<namespace>/<name>`).
    Domain = b'd',
    /// A tenant (its name or slug): the NexLink header's tenant field.
    Tenant = b't',
}

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// The 32-bit id of `name` in namespace `kind`; never zero.
pub const fn name_id(kind: IdKind, name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut h = FNV_OFFSET;
    h ^= kind as u8 as u32;
    h = h.wrapping_mul(FNV_PRIME);
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u32;
        h = h.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    if h == 0 { 1 } else { h }
}

/// Id of a capability name.
pub const fn capability_id(name: &str) -> u32 {
    name_id(IdKind::Capability, name)
}

/// Id of a model family name.
pub const fn family_id(name: &str) -> u32 {
    name_id(IdKind::Family, name)
}

/// Id of a claim (`capability:x`, `benchmark:x`, `safety:x`, `provenance:x`, `issuer:CN`,
/// `proven:x`).
pub const fn claim_id(claim: &str) -> u32 {
    name_id(IdKind::Claim, claim)
}

/// Id of a routing domain, from its namespace and name (what the SAD's domain field carries).
pub fn domain_id(namespace: &str, name: &str) -> u32 {
    name_id(IdKind::Domain, &format!("{namespace}/{name}"))
}

/// Id of a tenant (the NexLink header's tenant field and the P4 `tenant` table's key), from the
/// tenant name a RoutingDomain's `spec.tenant` and a MIC's model URI carry.
pub const fn tenant_id(tenant: &str) -> u32 {
    name_id(IdKind::Tenant, tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_separate_namespaces() {
        assert_ne!(capability_id("x"), claim_id("x"));
        assert_ne!(capability_id("x"), family_id("x"));
    }

    #[test]
    fn known_vector_is_stable() {
        // The ids are part of the wire format: a change here breaks every encoded descriptor.
        assert_eq!(capability_id("code-generation"), 0x075c_23f8);
        assert_eq!(family_id("llm"), 0xd3ce_f4fc);
    }

    #[test]
    fn never_zero() {
        for i in 0..10_000u32 {
            assert_ne!(capability_id(&i.to_string()), 0);
        }
    }
}
