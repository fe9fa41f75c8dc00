//! P4Runtime byte strings: big-endian, checked against a bitwidth.
//!
//! The specification's canonical form has no leading zero bytes (and at least one byte); servers
//! must accept it and may accept values padded with zeros to the width's byte length. This
//! target accepts both (and any zero padding), rejects a value with a bit set beyond the width
//! with OUT_OF_RANGE, stores it padded to the width (so exact keys are fixed-width byte strings
//! the pipeline can build straight from packet bytes) and reads back the canonical form.

use crate::error::{Code, P4Error};

/// Bytes for `bits` bits.
pub fn byte_len(bits: u32) -> usize {
    (bits as usize).div_ceil(8)
}

/// Checks `value` against `bits` and returns it left-padded to `byte_len(bits)`.
pub fn to_padded(value: &[u8], bits: u32, what: &dyn Fn() -> String) -> Result<Vec<u8>, P4Error> {
    let n = byte_len(bits);
    if value.is_empty() {
        return Err(P4Error::new(
            Code::InvalidArgument,
            format!("{}: empty byte string", what()),
        ));
    }
    let first = value.iter().position(|&b| b != 0).unwrap_or(value.len());
    let significant = &value[first..];
    if significant.len() > n {
        return Err(P4Error::new(
            Code::OutOfRange,
            format!(
                "{}: {} significant bytes for a {bits}-bit field",
                what(),
                significant.len()
            ),
        ));
    }
    let mut out = vec![0u8; n];
    out[n - significant.len()..].copy_from_slice(significant);
    let spare = (n * 8) as u32 - bits;
    if spare > 0 && out[0] >> (8 - spare) != 0 {
        return Err(P4Error::new(
            Code::OutOfRange,
            format!("{}: value does not fit in {bits} bits", what()),
        ));
    }
    Ok(out)
}

/// The canonical form: no leading zero bytes, at least one byte.
pub fn canonical(padded: &[u8]) -> Vec<u8> {
    let first = padded
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(padded.len().saturating_sub(1));
    padded[first.min(padded.len())..].to_vec()
}

/// A big-endian unsigned integer of at most 8 bytes.
pub fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .take(8)
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> String {
        "f".into()
    }

    #[test]
    fn padding_and_canonical_form() {
        assert_eq!(to_padded(&[1], 16, &w).expect("fits"), [0, 1]);
        assert_eq!(
            to_padded(&[0, 0, 0, 1], 16, &w).expect("zero padding is fine"),
            [0, 1]
        );
        assert_eq!(to_padded(&[1, 0xff], 9, &w).expect("9 bits"), [1, 0xff]);
        assert_eq!(
            to_padded(&[2, 0], 9, &w).map_err(|e| e.code),
            Err(Code::OutOfRange)
        );
        assert_eq!(
            to_padded(&[1, 0, 0], 16, &w).map_err(|e| e.code),
            Err(Code::OutOfRange)
        );
        assert_eq!(
            to_padded(&[], 16, &w).map_err(|e| e.code),
            Err(Code::InvalidArgument)
        );
        assert_eq!(canonical(&[0, 0, 5]), [5]);
        assert_eq!(canonical(&[0, 0]), [0]);
        assert_eq!(be_u64(&[1, 2]), 0x102);
    }
}
