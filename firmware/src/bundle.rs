//! Signed NIC firmware bundles.
//!
//! A bundle is what a release pipeline publishes and what a node agent accepts: the vendor's
//! firmware image (payload) plus a manifest saying which devices and agent versions it is for,
//! signed with an Ed25519 release key. The agent refuses anything that does not verify against its
//! trust store *before* touching flash.
//!
//! # Container format, version 1
//!
//! All integers little-endian. The parser is strict: every length is bounded, every byte is
//! accounted for (no trailing data), reserved fields must be zero, and it never panics on untrusted
//! input (fuzzed by `firmware/fuzz`).
//!
//! | offset      | size | field                                                          |
//! |------------:|-----:|----------------------------------------------------------------|
//! | 0           | 8    | magic `b"NXFWBNDL"`                                            |
//! | 8           | 2    | format version, [`FORMAT_VERSION`] (= 1)                        |
//! | 10          | 2    | reserved, 0                                                    |
//! | 12          | 4    | manifest length `M`, 1..=[`MAX_MANIFEST_LEN`]                  |
//! | 16          | 8    | payload length `P`, 0..=[`MAX_PAYLOAD_LEN`]                    |
//! | 24          | M    | manifest: UTF-8 JSON ([`Manifest`], unknown fields rejected)   |
//! | 24+M        | P    | payload: the raw firmware image                                |
//! | 24+M+P      | 2    | signature block length `S`: 0 (unsigned) or `1 + K + 64`        |
//! | 26+M+P      | 1    | key id length `K`, 1..=[`MAX_KEY_ID_LEN`]                       |
//! | 27+M+P      | K    | key id: `[A-Za-z0-9._-]`, names the release key in the trust store |
//! | 27+M+P+K    | 64   | Ed25519 signature                                              |
//!
//! The signature covers `b"NEXUS-FW-BUNDLE-V1\0" || bytes 0..24 || manifest || SHA-256(payload)`:
//! the fixed header binds the lengths and format version, the manifest is signed byte-for-byte (no
//! JSON canonicalisation needed), and hashing the payload keeps the signed message small. The
//! manifest also states the payload digest and size, which [`verify`] checks.

use std::collections::BTreeMap;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::BundleError;

/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"NXFWBNDL";
/// The container format version written and accepted.
pub const FORMAT_VERSION: u16 = 1;
/// Largest manifest accepted (a manifest is a few hundred bytes; this bounds JSON parsing work).
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024;
/// Largest payload accepted (NIC images are tens of MiB; this bounds memory use).
pub const MAX_PAYLOAD_LEN: u64 = 256 * 1024 * 1024;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 64;
/// Length of the fixed header.
pub const FIXED_HEADER_LEN: usize = 24;
const SIG_LEN: usize = 64;
const DOMAIN: &[u8] = b"NEXUS-FW-BUNDLE-V1\0";

/// Build provenance, informational (shown by `inspect`, not used for decisions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// Source revision of the firmware build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// RFC 3339 build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Who or what built it (CI job, person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
}

/// What the bundle contains and what it may be flashed onto.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Firmware vendor, e.g. `"mellanox"`.
    pub vendor: String,
    /// PCI vendor id the image is for.
    pub pci_vendor_id: u16,
    /// PCI device ids the image is for (at least one).
    pub pci_device_ids: Vec<u16>,
    /// Firmware version.
    pub version: Version,
    /// Agent versions able to flash this image safely (e.g. a new image layout needs a new agent).
    pub agent_version: VersionReq,
    /// Lower-case hex SHA-256 of the payload.
    pub payload_sha256: String,
    /// Payload size in bytes.
    pub payload_size: u64,
    /// Build provenance.
    #[serde(default)]
    pub build: BuildInfo,
}

impl Manifest {
    /// A manifest whose digest and size [`pack`] fills in.
    pub fn new(
        vendor: impl Into<String>,
        pci_vendor_id: u16,
        pci_device_ids: Vec<u16>,
        version: Version,
        agent_version: VersionReq,
    ) -> Self {
        Self {
            vendor: vendor.into(),
            pci_vendor_id,
            pci_device_ids,
            version,
            agent_version,
            payload_sha256: String::new(),
            payload_size: 0,
            build: BuildInfo::default(),
        }
    }

    fn validate(&self) -> Result<(), BundleError> {
        let bad = |m: &str| Err(BundleError::InvalidManifest(m.to_owned()));
        if self.vendor.is_empty() || self.vendor.len() > 64 {
            return bad("vendor must be 1..=64 bytes");
        }
        if self.pci_device_ids.is_empty() || self.pci_device_ids.len() > 64 {
            return bad("pci_device_ids must list 1..=64 ids");
        }
        if self.payload_sha256.len() != 64
            || !self
                .payload_sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return bad("payload_sha256 must be 64 lower-case hex digits");
        }
        if self.payload_size > MAX_PAYLOAD_LEN {
            return bad("payload_size exceeds the maximum");
        }
        Ok(())
    }
}

/// An Ed25519 signature and the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Name of the signing key in the trust store.
    pub key_id: String,
    /// Raw Ed25519 signature.
    pub bytes: [u8; SIG_LEN],
}

/// A parsed (not yet trusted) bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    manifest: Manifest,
    /// The manifest exactly as signed.
    manifest_bytes: Vec<u8>,
    payload: Vec<u8>,
    signature: Option<Signature>,
}

impl Bundle {
    /// The manifest (unverified until [`verify`] succeeds).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The firmware image.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// The signature, if signed.
    pub fn signature(&self) -> Option<&Signature> {
        self.signature.as_ref()
    }

    fn fixed_header(&self) -> [u8; FIXED_HEADER_LEN] {
        let mut h = [0u8; FIXED_HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Manifest length was bounded by MAX_MANIFEST_LEN (< u32::MAX) when the bundle was built.
        h[12..16].copy_from_slice(&(self.manifest_bytes.len() as u32).to_le_bytes());
        h[16..24].copy_from_slice(&(self.payload.len() as u64).to_le_bytes());
        h
    }

    /// The exact bytes the signature covers.
    fn signed_message(&self) -> Vec<u8> {
        let mut m =
            Vec::with_capacity(DOMAIN.len() + FIXED_HEADER_LEN + self.manifest_bytes.len() + 32);
        m.extend_from_slice(DOMAIN);
        m.extend_from_slice(&self.fixed_header());
        m.extend_from_slice(&self.manifest_bytes);
        m.extend_from_slice(&Sha256::digest(&self.payload));
        m
    }

    /// Serialises the bundle in the container format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            FIXED_HEADER_LEN
                + self.manifest_bytes.len()
                + self.payload.len()
                + 2
                + 1
                + 64
                + SIG_LEN,
        );
        out.extend_from_slice(&self.fixed_header());
        out.extend_from_slice(&self.manifest_bytes);
        out.extend_from_slice(&self.payload);
        match &self.signature {
            None => out.extend_from_slice(&0u16.to_le_bytes()),
            Some(sig) => {
                // Key ids are validated to be ≤ MAX_KEY_ID_LEN when the signature is created or parsed.
                let block = (1 + sig.key_id.len() + SIG_LEN) as u16;
                out.extend_from_slice(&block.to_le_bytes());
                out.push(sig.key_id.len() as u8);
                out.extend_from_slice(sig.key_id.as_bytes());
                out.extend_from_slice(&sig.bytes);
            }
        }
        out
    }
}

/// A bundle whose signature verified against the trust store and whose payload matches its
/// manifest. Only [`verify`] creates one, so holding it is proof of those checks.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    bundle: Bundle,
    key_id: String,
    payload_sha256: [u8; 32],
}

impl VerifiedBundle {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }
    /// The verified payload.
    pub fn payload(&self) -> &[u8] {
        &self.bundle.payload
    }
    /// Trust-store name of the key that signed it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    /// SHA-256 of the payload.
    pub fn payload_sha256(&self) -> [u8; 32] {
        self.payload_sha256
    }
    /// See [`check_compatible`].
    pub fn check_compatible(
        &self,
        pci_vendor_id: u16,
        pci_device_id: u16,
        agent_version: &Version,
    ) -> Result<(), BundleError> {
        check_compatible(
            &self.bundle.manifest,
            pci_vendor_id,
            pci_device_id,
            agent_version,
        )
    }
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builds an unsigned bundle, filling in the manifest's payload digest and size.
pub fn pack(mut manifest: Manifest, payload: Vec<u8>) -> Result<Bundle, BundleError> {
    if payload.len() as u64 > MAX_PAYLOAD_LEN {
        return Err(BundleError::InvalidManifest(format!(
            "payload of {} bytes exceeds the {MAX_PAYLOAD_LEN}-byte maximum",
            payload.len()
        )));
    }
    manifest.payload_sha256 = hex::encode(Sha256::digest(&payload));
    manifest.payload_size = payload.len() as u64;
    manifest.validate()?;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    if manifest_bytes.len() > MAX_MANIFEST_LEN as usize {
        return Err(BundleError::InvalidManifest(
            "manifest exceeds 64 KiB".into(),
        ));
    }
    Ok(Bundle {
        manifest,
        manifest_bytes,
        payload,
        signature: None,
    })
}

/// An Ed25519 release key with its trust-store name.
#[derive(Debug)]
pub struct SigningKey {
    id: String,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Loads a PKCS#8 v2 (as produced by [`generate_pkcs8`]) private key.
    pub fn from_pkcs8(id: impl Into<String>, der: &[u8]) -> Result<Self, BundleError> {
        let id = id.into();
        if !valid_key_id(&id) {
            return Err(BundleError::Key(format!(
                "key id {id:?} must be 1..=64 of [A-Za-z0-9._-]"
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|e| BundleError::Key(e.to_string()))?;
        Ok(Self { id, pair })
    }
    /// The key's name.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The raw 32-byte public key, for the trust store.
    pub fn public_key(&self) -> [u8; 32] {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        pk
    }
}

/// Generates a new Ed25519 private key as PKCS#8 v2 DER (store it with mode 0600).
pub fn generate_pkcs8() -> Result<Vec<u8>, BundleError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| BundleError::Key(e.to_string()))
}

/// Signs (or re-signs) a bundle.
pub fn sign(mut bundle: Bundle, key: &SigningKey) -> Bundle {
    let sig = key.pair.sign(&bundle.signed_message());
    let mut bytes = [0u8; SIG_LEN];
    bytes.copy_from_slice(sig.as_ref());
    bundle.signature = Some(Signature {
        key_id: key.id.clone(),
        bytes,
    });
    bundle
}

/// A cursor over untrusted bytes whose reads fail instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], BundleError> {
        let have = (self.buf.len() - self.pos) as u64;
        if n > have {
            return Err(BundleError::Truncated {
                what,
                need: n,
                have,
            });
        }
        // n ≤ have ≤ usize::MAX, so the cast is lossless.
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const K: usize>(&mut self, what: &'static str) -> Result<[u8; K], BundleError> {
        let mut a = [0u8; K];
        a.copy_from_slice(self.take(K as u64, what)?);
        Ok(a)
    }
}

/// Parses a bundle without trusting it. Checks structure and limits only; call [`verify`] next.
pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    if r.array::<8>("magic")? != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let format = u16::from_le_bytes(r.array("format version")?);
    if format != FORMAT_VERSION {
        return Err(BundleError::UnsupportedFormat(format));
    }
    if r.array::<2>("reserved")? != [0, 0] {
        return Err(BundleError::Malformed("reserved header field is not zero"));
    }
    let manifest_len = u32::from_le_bytes(r.array("manifest length")?);
    if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
        return Err(BundleError::Malformed("manifest length out of range"));
    }
    let payload_len = u64::from_le_bytes(r.array("payload length")?);
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(BundleError::Malformed("payload length exceeds the maximum"));
    }
    let manifest_bytes = r.take(u64::from(manifest_len), "manifest")?;
    let payload = r.take(payload_len, "payload")?;
    let sig_len = u16::from_le_bytes(r.array("signature block length")?);
    let signature = if sig_len == 0 {
        None
    } else {
        let block = r.take(u64::from(sig_len), "signature block")?;
        let (&k, rest) = block
            .split_first()
            .ok_or(BundleError::Malformed("empty signature block"))?;
        let k = usize::from(k);
        if k == 0 || k > MAX_KEY_ID_LEN || rest.len() != k + SIG_LEN {
            return Err(BundleError::Malformed(
                "signature block length inconsistent",
            ));
        }
        let key_id = std::str::from_utf8(&rest[..k])
            .ok()
            .filter(|id| valid_key_id(id))
            .ok_or(BundleError::Malformed("key id is not [A-Za-z0-9._-]"))?;
        let mut sig = [0u8; SIG_LEN];
        sig.copy_from_slice(&rest[k..]);
        Some(Signature {
            key_id: key_id.to_owned(),
            bytes: sig,
        })
    };
    let trailing = bytes.len() - r.pos;
    if trailing != 0 {
        return Err(BundleError::TrailingBytes(trailing as u64));
    }
    let manifest: Manifest = serde_json::from_slice(manifest_bytes)?;
    manifest.validate()?;
    Ok(Bundle {
        manifest,
        manifest_bytes: manifest_bytes.to_vec(),
        payload: payload.to_vec(),
        signature,
    })
}

/// Named Ed25519 public keys trusted to sign firmware.
///
/// Stored as JSON `{"keys": {"release-2026": "<64 hex digits>"}}` so it can live in a ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustStore {
    keys: BTreeMap<String, String>,
}

impl TrustStore {
    /// An empty store (trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds or replaces a key.
    pub fn insert(&mut self, id: impl Into<String>, public_key: [u8; 32]) {
        self.keys.insert(id.into(), hex::encode(public_key));
    }
    /// Key names.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
    fn get(&self, id: &str) -> Option<Vec<u8>> {
        self.keys.get(id).and_then(|h| hex::decode(h).ok())
    }
    /// Parses the JSON form, checking every key is 32 bytes of hex.
    pub fn from_json(json: &[u8]) -> Result<Self, BundleError> {
        let store: Self =
            serde_json::from_slice(json).map_err(|e| BundleError::TrustStore(e.to_string()))?;
        for (id, key) in &store.keys {
            let ok = hex::decode(key).is_ok_and(|k| k.len() == 32);
            if !ok || !valid_key_id(id) {
                return Err(BundleError::TrustStore(format!(
                    "key {id:?}: name must be [A-Za-z0-9._-], value 64 hex digits"
                )));
            }
        }
        Ok(store)
    }
    /// The JSON form.
    pub fn to_json(&self) -> String {
        // A map of strings always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Checks the signature against the trust store and the payload against the manifest.
pub fn verify(bundle: &Bundle, trust: &TrustStore) -> Result<VerifiedBundle, BundleError> {
    let sig = bundle.signature.as_ref().ok_or(BundleError::Unsigned)?;
    let pk = trust
        .get(&sig.key_id)
        .ok_or_else(|| BundleError::UnknownKey(sig.key_id.clone()))?;
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(&bundle.signed_message(), &sig.bytes)
        .map_err(|_| BundleError::BadSignature(sig.key_id.clone()))?;
    // Signature is good: the manifest is authentic. Now hold the payload to it.
    let actual = bundle.payload.len() as u64;
    if actual != bundle.manifest.payload_size {
        return Err(BundleError::SizeMismatch {
            expected: bundle.manifest.payload_size,
            actual,
        });
    }
    let digest: [u8; 32] = Sha256::digest(&bundle.payload).into();
    let actual_hex = hex::encode(digest);
    if actual_hex != bundle.manifest.payload_sha256 {
        return Err(BundleError::DigestMismatch {
            expected: bundle.manifest.payload_sha256.clone(),
            actual: actual_hex,
        });
    }
    Ok(VerifiedBundle {
        bundle: bundle.clone(),
        key_id: sig.key_id.clone(),
        payload_sha256: digest,
    })
}

/// Whether a manifest allows flashing onto device `pci_vendor_id:pci_device_id` by an agent of
/// version `agent_version`. Returns the reason when not.
pub fn check_compatible(
    manifest: &Manifest,
    pci_vendor_id: u16,
    pci_device_id: u16,
    agent_version: &Version,
) -> Result<(), BundleError> {
    if manifest.pci_vendor_id != pci_vendor_id || !manifest.pci_device_ids.contains(&pci_device_id)
    {
        let devices = manifest
            .pci_device_ids
            .iter()
            .map(|d| format!("{d:04x}"))
            .collect::<Vec<_>>()
            .join(",");
        return Err(BundleError::IncompatibleDevice {
            vendor: manifest.pci_vendor_id,
            devices: format!("{{{devices}}}"),
            dev_vendor: pci_vendor_id,
            dev_device: pci_device_id,
        });
    }
    if !manifest.agent_version.matches(agent_version) {
        return Err(BundleError::IncompatibleAgent {
            required: manifest.agent_version.to_string(),
            actual: agent_version.to_string(),
        });
    }
    Ok(())
}

/// Test and fuzz helpers: deterministic keys and a ready-made manifest (feature `test-keys`).
#[cfg(any(test, feature = "test-keys"))]
pub mod testing {
    use super::*;

    /// A fixed Ed25519 key (from a seed) so fixtures are reproducible.
    pub fn key(id: &str, seed: u8) -> (SigningKey, TrustStore) {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32])
            .unwrap_or_else(|_| unreachable!("any 32-byte seed is a valid Ed25519 key"));
        let key = SigningKey {
            id: id.to_owned(),
            pair,
        };
        let mut trust = TrustStore::new();
        trust.insert(id, key.public_key());
        (key, trust)
    }

    /// A manifest for PCI 15b3:101d (ConnectX-6 Dx) accepting agents `>=0.1, <1`.
    pub fn manifest(version: &str) -> Manifest {
        Manifest::new(
            "mellanox",
            0x15b3,
            vec![0x101d, 0x1021],
            version.parse().unwrap_or_else(|_| Version::new(0, 0, 0)),
            VersionReq::parse(">=0.1, <1").unwrap_or(VersionReq::STAR),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::testing::{key, manifest};
    use super::*;
    use proptest::prelude::*;

    fn signed(payload: &[u8]) -> (Bundle, TrustStore) {
        let (k, trust) = key("release-1", 7);
        (
            sign(pack(manifest("1.2.3"), payload.to_vec()).unwrap(), &k),
            trust,
        )
    }

    #[test]
    fn pack_sign_parse_verify() {
        let (b, trust) = signed(b"firmware image");
        let bytes = b.to_bytes();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed, b);
        let v = verify(&parsed, &trust).unwrap();
        assert_eq!(v.key_id(), "release-1");
        assert_eq!(v.payload(), b"firmware image");
        assert_eq!(v.manifest().payload_size, 14);
        v.check_compatible(0x15b3, 0x101d, &Version::new(0, 3, 0))
            .unwrap();
    }

    #[test]
    fn refusals() {
        let (b, trust) = signed(b"image");
        // Unsigned.
        let unsigned = pack(manifest("1.0.0"), b"x".to_vec()).unwrap();
        assert!(matches!(
            verify(&unsigned, &trust),
            Err(BundleError::Unsigned)
        ));
        // Unknown key.
        let (other, other_trust) = key("other", 9);
        let by_other = sign(b.clone(), &other);
        assert!(matches!(
            verify(&by_other, &trust),
            Err(BundleError::UnknownKey(_))
        ));
        // Same name, different key material.
        let (imposter, _) = key("release-1", 8);
        let forged = sign(b.clone(), &imposter);
        assert!(matches!(
            verify(&forged, &trust),
            Err(BundleError::BadSignature(_))
        ));
        assert!(verify(&by_other, &other_trust).is_ok());
        // Tampered payload: signature covers its digest.
        let mut bytes = b.to_bytes();
        let payload_at = bytes.len() - 2 - 1 - 9 - 64 - 1;
        bytes[payload_at] ^= 1;
        let tampered = parse(&bytes).unwrap();
        assert!(matches!(
            verify(&tampered, &trust),
            Err(BundleError::BadSignature(_))
        ));
        // Signed manifest that lies about the payload.
        let (k, trust) = key("release-1", 7);
        let mut lying = pack(manifest("1.0.0"), b"abc".to_vec()).unwrap();
        lying.payload = b"abcd".to_vec();
        let lying = sign(lying, &k);
        assert!(matches!(
            verify(&lying, &trust),
            Err(BundleError::SizeMismatch { .. })
        ));
        let mut lying = pack(manifest("1.0.0"), b"abc".to_vec()).unwrap();
        lying.payload = b"abd".to_vec();
        let lying = sign(lying, &k);
        assert!(matches!(
            verify(&lying, &trust),
            Err(BundleError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn compatibility() {
        let m = manifest("1.0.0");
        let v = Version::new(0, 5, 0);
        assert!(check_compatible(&m, 0x15b3, 0x1021, &v).is_ok());
        let e = check_compatible(&m, 0x8086, 0x1021, &v).unwrap_err();
        assert!(e.to_string().contains("8086:1021"), "{e}");
        assert!(matches!(
            check_compatible(&m, 0x15b3, 0x1017, &v),
            Err(BundleError::IncompatibleDevice { .. })
        ));
        assert!(matches!(
            check_compatible(&m, 0x15b3, 0x101d, &Version::new(1, 0, 0)),
            Err(BundleError::IncompatibleAgent { .. })
        ));
    }

    #[test]
    fn strict_parser() {
        let (b, _) = signed(b"image");
        let good = b.to_bytes();
        assert!(matches!(parse(b"NXFW"), Err(BundleError::Truncated { .. })));
        let mut x = good.clone();
        x[0] = b'Y';
        assert!(matches!(parse(&x), Err(BundleError::BadMagic)));
        let mut x = good.clone();
        x[8] = 2;
        assert!(matches!(parse(&x), Err(BundleError::UnsupportedFormat(2))));
        let mut x = good.clone();
        x[10] = 1;
        assert!(matches!(parse(&x), Err(BundleError::Malformed(_))));
        let mut x = good.clone();
        x.push(0);
        assert!(matches!(parse(&x), Err(BundleError::TrailingBytes(1))));
        let mut x = good.clone();
        x[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&x), Err(BundleError::Malformed(_))));
        // Truncated anywhere: never a panic, always an error.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n} parsed");
        }
        // Unknown manifest field.
        let (k, _) = key("k", 1);
        let mut b2 = pack(manifest("1.0.0"), vec![]).unwrap();
        b2.manifest_bytes = br#"{"vendor":"x","evil":1}"#.to_vec();
        assert!(matches!(
            parse(&sign(b2, &k).to_bytes()),
            Err(BundleError::ManifestJson(_))
        ));
    }

    #[test]
    fn keys_and_trust_store() {
        let der = generate_pkcs8().unwrap();
        let k = SigningKey::from_pkcs8("ops.2026", &der).unwrap();
        assert!(SigningKey::from_pkcs8("bad id", &der).is_err());
        assert!(SigningKey::from_pkcs8("x", b"junk").is_err());
        let mut t = TrustStore::new();
        t.insert(k.id(), k.public_key());
        let t2 = TrustStore::from_json(t.to_json().as_bytes()).unwrap();
        assert_eq!(t, t2);
        assert!(TrustStore::from_json(br#"{"keys":{"a":"zz"}}"#).is_err());
        let b = sign(pack(manifest("2.0.0"), vec![1, 2, 3]).unwrap(), &k);
        assert!(verify(&parse(&b.to_bytes()).unwrap(), &t2).is_ok());
    }

    proptest! {
        #[test]
        fn round_trip(payload in proptest::collection::vec(any::<u8>(), 0..512), maj in 0u64..100) {
            let (k, trust) = key("p", 3);
            let b = sign(pack(manifest(&format!("{maj}.0.1")), payload.clone()).unwrap(), &k);
            let parsed = parse(&b.to_bytes()).unwrap();
            let v = verify(&parsed, &trust).unwrap();
            prop_assert_eq!(v.payload(), &payload[..]);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_byte_flip_is_caught(idx in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let (b, trust) = signed(b"some firmware payload");
            let mut bytes = b.to_bytes();
            let i = idx.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let ok = parse(&bytes).ok().and_then(|p| verify(&p, &trust).ok());
            prop_assert!(ok.is_none());
        }
    }
}
