//! Byte and text codecs shared by every transport type: ark-serialize *compressed* form,
//! always deserialised *checked* (canonical field elements, points on the curve and in the
//! prime-order subgroup), with a size limit applied before any decoding work and trailing
//! bytes rejected.

use ark_serialize::{CanonicalDeserialize, CanonicalSerialize};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::ZkError;

/// Canonical compressed bytes of an arkworks object.
pub(crate) fn to_bytes<T: CanonicalSerialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.compressed_size());
    value
        .serialize_compressed(&mut out)
        .expect("serialising into a Vec<u8> cannot fail");
    out
}

/// Checked, compressed deserialisation of at most `max` bytes, all of which must be used.
pub(crate) fn from_bytes<T: CanonicalDeserialize>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, ZkError> {
    if bytes.len() > max {
        return Err(ZkError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    let mut reader = bytes;
    let value = T::deserialize_compressed(&mut reader).map_err(|e| ZkError::malformed(what, e))?;
    if !reader.is_empty() {
        return Err(ZkError::malformed(
            what,
            format!("{} trailing bytes", reader.len()),
        ));
    }
    Ok(value)
}

/// Decode hex text (surrounding whitespace ignored) of at most `max` bytes.
pub(crate) fn decode_hex(what: &'static str, text: &str, max: usize) -> Result<Vec<u8>, ZkError> {
    let text = text.trim();
    if text.len() > max.saturating_mul(2) {
        return Err(ZkError::TooLarge {
            what,
            len: text.len() / 2,
            max,
        });
    }
    hex::decode(text).map_err(|e| ZkError::Encoding {
        what,
        encoding: "hex",
        reason: e.to_string(),
    })
}

/// Decode standard (padded) base64 text (surrounding whitespace ignored) of at most `max`
/// bytes.
pub(crate) fn decode_base64(
    what: &'static str,
    text: &str,
    max: usize,
) -> Result<Vec<u8>, ZkError> {
    let text = text.trim();
    let max_text = max.div_ceil(3).saturating_mul(4);
    if text.len() > max_text {
        return Err(ZkError::TooLarge {
            what,
            len: text.len() / 4 * 3,
            max,
        });
    }
    BASE64.decode(text).map_err(|e| ZkError::Encoding {
        what,
        encoding: "base64",
        reason: e.to_string(),
    })
}

pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}
