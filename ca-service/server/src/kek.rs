//! The key-encryption key (KEK) and AES-256-GCM sealing of private keys at rest.
//!
//! Sealed format: `0x01 || nonce (12 bytes, random) || ciphertext || tag (16 bytes)`, with the
//! key's name (`"nexus-ca/intermediate"`, …) as associated data so that a sealed blob cannot be
//! swapped for another key's. The KEK itself never leaves this type: no `Debug` that prints it,
//! no accessor.

use std::fmt;
use std::path::Path;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

const VERSION: u8 = 1;

/// A 256-bit key-encryption key.
pub struct Kek {
    key: LessSafeKey,
    /// First 8 hex digits of SHA-256(KEK): identifies which KEK is configured, safe to log.
    id: String,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// From exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != 32 {
            return Err(Error::Kek(format!(
                "the KEK must be 32 bytes (64 hex digits or 44 base64 characters), got {}",
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::Kek("AES-256-GCM rejected the key".into()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        Ok(Self {
            key: LessSafeKey::new(key),
            id: hex::encode(&digest.as_ref()[..4]),
        })
    }

    /// From text: 64 hex digits or base64 (standard or URL-safe) of 32 bytes; surrounding
    /// whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let t = text.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let bytes = hex::decode(t).map_err(|_| Error::Kek("invalid hex".into()))?;
            return Self::from_bytes(&bytes);
        }
        let b64 = base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .map_err(|_| {
                Error::Kek("the KEK is neither 64 hex digits nor base64 of 32 bytes".into())
            })?;
        Self::from_bytes(&b64)
    }

    /// Reads a KEK file: text as in [`Kek::parse`], or exactly 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Kek(format!("cannot read KEK file {}: {e}", path.display())))?;
        if bytes.len() == 32 && std::str::from_utf8(&bytes).is_err() {
            return Self::from_bytes(&bytes);
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::Kek(format!("KEK file {} is not text", path.display())))?;
        Self::parse(text)
    }

    /// A fresh random KEK (tests and first-time setup tooling).
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Kek("system random generator failed".into()))?;
        Self::from_bytes(&bytes)
    }

    /// Short identifier of the KEK (not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`, bound to `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::Kek("system random generator failed".into()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::Kek("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts a blob made by [`Kek::seal`] with the same `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let wrong = || {
            Error::Kek(format!(
                "the configured KEK (id {}) does not decrypt the stored key `{name}`: wrong KEK, or the data was altered",
                self.id
            ))
        };
        let (&version, rest) = sealed.split_first().ok_or_else(wrong)?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 {
            return Err(wrong());
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() -> Result<(), Error> {
        let kek = Kek::parse(&"11".repeat(32))?;
        let sealed = kek.seal("a", b"secret")?;
        assert_eq!(kek.open("a", &sealed)?, b"secret");
        assert!(kek.open("b", &sealed).is_err(), "bound to its name");
        let other = Kek::parse(&"22".repeat(32))?;
        assert!(other.open("a", &sealed).is_err());
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(kek.open("a", &tampered).is_err());
        Ok(())
    }

    #[test]
    fn parses_hex_and_base64_and_hides_key() -> Result<(), Error> {
        let hex_kek = Kek::parse(&"ab".repeat(32))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xabu8; 32]);
        let b64_kek = Kek::parse(&format!(" {b64}\n"))?;
        assert_eq!(hex_kek.id(), b64_kek.id());
        assert!(Kek::parse("abcd").is_err());
        let dbg = format!("{hex_kek:?}");
        assert!(!dbg.contains("abab"), "{dbg}");
        Ok(())
    }
}
