//! Field rules of the API, each stated twice in one place: as the pattern the OpenAPI document
//! publishes and as the check the server runs. A property test (`tests` below) holds the two
//! equal, so a request that matches the document is never refused for its shape.
//!
//! Patterns use only what ECMA-262 and Rust's `regex` read the same way: literal classes,
//! `\xHH` and `\uHHHH` escapes, counted repetition and `^…$` anchors (no `\s`, `\d`, `\w`,
//! whose meanings differ between the two). Lengths count Unicode code points, as JSON Schema's
//! `maxLength` does.

use crate::error::{Error, Result};

/// Control characters (Unicode general category Cc): `char::is_control`.
fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1F}' | '\u{7F}'..='\u{9F}')
}

/// White space as ECMA-262's `\s` and Rust's `char::is_whitespace` together understand it.
fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{FEFF}'
}

/// A human-facing name: 1–100 characters, no control characters, not only white space.
pub const NAME_PATTERN: &str = "^[^\\x00-\\x1F\\x7F-\\x9F]*[^\\x00-\\x20\\x7F-\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF][^\\x00-\\x1F\\x7F-\\x9F]*$";
pub const NAME_MAX: usize = 100;

pub fn name(field: &str, s: &str) -> Result<()> {
    let n = s.chars().count();
    if n == 0
        || n > NAME_MAX
        || s.chars().any(is_control)
        || s.chars().all(|c| is_space(c) || is_control(c))
    {
        return Err(Error::invalid(format!(
            "{field} must be 1–{NAME_MAX} characters, not only spaces, without control characters"
        )));
    }
    Ok(())
}

/// Free text (descriptions, messages, reasons): no control characters except tab and newline.
pub const TEXT_PATTERN: &str = "^[^\\x00-\\x08\\x0B-\\x1F\\x7F-\\x9F]*$";

pub fn text(field: &str, s: &str, max: usize) -> Result<()> {
    let bad = |c: char| is_control(c) && c != '\t' && c != '\n';
    if s.chars().count() > max || s.chars().any(bad) {
        return Err(Error::invalid(format!(
            "{field} must be at most {max} characters without control characters other than tab and newline"
        )));
    }
    Ok(())
}

/// An email address: `local@domain.tld`, no white space, controls or second `@`, ≤ 254 characters.
pub const EMAIL_PATTERN: &str = "^[^@\\x00-\\x20\\x7F-\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF]+@[^@\\x00-\\x20\\x7F-\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF]+\\.[^@\\x00-\\x20\\x7F-\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000\\uFEFF]+$";
pub const EMAIL_MAX: usize = 254;

pub fn email(s: &str) -> Result<()> {
    let ok_char = |c: char| c != '@' && c != ' ' && !is_control(c) && !is_space(c);
    let ok = s.chars().count() <= EMAIL_MAX
        && s.split_once('@').is_some_and(|(local, domain)| {
            let dot_inside = domain
                .char_indices()
                .any(|(i, c)| c == '.' && i > 0 && i + 1 < domain.len());
            !local.is_empty()
                && local.chars().all(ok_char)
                && domain.chars().all(ok_char)
                && dot_inside
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("{s:?} is not an email address")))
    }
}

/// A tenant slug: a DNS label (it names the tenant in model URIs and to the CA).
pub const SLUG_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

pub fn slug(s: &str) -> Result<()> {
    let inner = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let ok = (1..=63).contains(&s.len())
        && s.bytes().all(inner)
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "slug {s:?} must be a DNS label: 1–63 lowercase letters, digits and inner '-'"
        )))
    }
}

fn ascii_word(s: &str, max: usize, extra: &[u8]) -> bool {
    let mut b = s.bytes();
    (1..=max).contains(&s.len())
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// A model identity's name: the `<model>` of `nexus://<tenant>/<model>@<version>`.
pub const MODEL_NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$";

pub fn model_name(s: &str) -> Result<()> {
    if ascii_word(s, 100, b"._-") {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "name {s:?} must be 1–100 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )))
    }
}

/// A model version: the `<version>` of a model URI.
pub const VERSION_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$";

pub fn version(s: &str) -> Result<()> {
    if ascii_word(s, 64, b"._+-") {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "version {s:?} must be 1–64 of A-Z a-z 0-9 . _ + - starting with a letter or digit"
        )))
    }
}

/// A capability, modality or claim name, as in a MIC attestation (`nexus-mic`'s `Name`).
pub const CAPABILITY_PATTERN: &str = "^[A-Za-z0-9._:/+-]{1,64}$";

pub fn capability(field: &str, s: &str) -> Result<()> {
    if nexus_mic::attestation::is_valid_name(s) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field}: {s:?} must be 1–64 of A-Z a-z 0-9 . _ : / + -"
        )))
    }
}

/// A model artefact digest, `<algorithm>:<hex>`.
pub const DIGEST_PATTERN: &str = "^[a-z0-9]{1,16}:[0-9a-fA-F]{16,128}$";

pub fn digest(s: &str) -> Result<()> {
    let ok = s.split_once(':').is_some_and(|(alg, hex)| {
        (1..=16).contains(&alg.len())
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && (16..=128).contains(&hex.len())
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "model_digest must look like \"sha256:<16–128 hex digits>\"",
        ))
    }
}

/// An exact non-negative decimal: up to 12 integer and 12 fractional digits.
pub const DECIMAL_PATTERN: &str = "^[0-9]{1,12}(\\.[0-9]{1,12})?$";

pub fn decimal(field: &str, s: &str) -> Result<()> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let ok = (1..=12).contains(&int.len())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 12
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(s.contains('.') && frac.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} {s:?} is not a decimal like \"0.0025\" (≤12 digits each side)"
        )))
    }
}

/// A billing month.
pub const PERIOD_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])$";

/// An idempotency key of the CA (request ids): 1–128 of `[A-Za-z0-9._:-]`.
pub const REQUEST_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

pub fn request_id(s: &str) -> Result<()> {
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "request_id: 1–128 characters of [A-Za-z0-9._:-]",
        ))
    }
}

/// Canonical standard base64 (padding required, unused bits zero), as the `base64` crate's
/// `STANDARD` engine decodes.
pub const BASE64_PATTERN: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";

/// Decodes standard base64 of at most `max_chars` characters.
pub fn base64(field: &str, s: &str, max_chars: usize) -> Result<Vec<u8>> {
    use base64::Engine as _;
    if s.is_empty() || s.len() > max_chars {
        return Err(Error::invalid(format!(
            "{field} must be 1–{max_chars} characters of base64"
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::invalid(format!("{field} is not canonical standard base64")))
}

/// A certificate serial as the CA writes it: lowercase hex.
pub const SERIAL_PATTERN: &str = "^[0-9a-f]{1,40}$";

pub fn serial(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A Fabric name (a Kubernetes object name: RFC 1123 subdomain).
pub const FABRIC_PATTERN: &str = "^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$";

pub fn fabric(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=253).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// 32 bytes as hex (SHA-256 digests, commitments).
pub const HEX32_PATTERN: &str = "^[0-9a-fA-F]{64}$";

/// 1–512 bytes as hex (an endorsement's signature).
pub const SIGNATURE_PATTERN: &str = "^([0-9a-fA-F]{2}){1,512}$";

/// Short free text in an attestation: 1–64 characters (≤ 256 bytes), no control characters.
pub const SHORT_TEXT_PATTERN: &str = "^[^\\x00-\\x1F\\x7F-\\x9F]{1,64}$";

pub fn short_text(field: &str, s: &str) -> Result<()> {
    let n = s.chars().count();
    if n == 0 || n > 64 || s.chars().any(is_control) {
        return Err(Error::invalid(format!(
            "{field} must be 1–64 characters without control characters"
        )));
    }
    Ok(())
}

/// A score with at most 6 fractional digits (`nexus-mic`'s fixed point), within ±10^12.
pub const SCORE_PATTERN: &str = "^-?[0-9]{1,12}(\\.[0-9]{1,6})?$";

pub fn score(s: &str) -> Result<()> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = (1..=12).contains(&int.len())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 6
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(body.contains('.') && frac.is_empty());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "score {s:?} must be a decimal with ≤ 12 integer and ≤ 6 fractional digits"
        )))
    }
}

/// Largest magnitude of a number in a model identity's claims.
pub const CLAIM_NUMBER_MAX: f64 = 1e15;

/// A model identity's claims: a flat map (see [`claims_schema`]).
pub fn claims(map: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use serde_json::Value;
    if map.len() > 64 {
        return Err(Error::invalid("claims: at most 64 entries"));
    }
    for (k, v) in map {
        short_text("claims (name)", k)?;
        match v {
            Value::String(s) => text(&format!("claims.{k}"), s, 1000)?,
            Value::Number(n) => {
                // PostgreSQL writes a jsonb number back in full digits; beyond ±10^15 it can come
                // back as a number serde cannot read, so claims stay within it.
                if n.as_f64().is_none_or(|f| f.abs() > CLAIM_NUMBER_MAX) {
                    return Err(Error::invalid(format!(
                        "claims.{k}: numbers must be within ±1e15"
                    )));
                }
            }
            Value::Bool(_) | Value::Null => {}
            Value::Array(_) | Value::Object(_) => {
                return Err(Error::invalid(format!(
                    "claims.{k}: a claim is a string, number, boolean or null"
                )));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ the published schemas

use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

fn string(pattern: &str, min: usize, max: usize, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
        .description(Some(description))
}

pub fn name_schema() -> Object {
    string(
        NAME_PATTERN,
        1,
        NAME_MAX,
        "1–100 characters, not only spaces, no control characters.",
    )
    .examples(["Production"])
    .build()
}

pub fn description_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(TEXT_PATTERN))
        .max_length(Some(1000))
        .description(Some(
            "At most 1000 characters; no control characters but tab and newline.",
        ))
        .build()
}

pub fn reason_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(TEXT_PATTERN))
        .max_length(Some(1000))
        .description(Some(
            "At most 1000 characters; no control characters but tab and newline.",
        ))
        .build()
}

pub fn email_schema() -> Object {
    string(
        EMAIL_PATTERN,
        3,
        EMAIL_MAX,
        "An email address, at most 254 characters.",
    )
    .examples(["ada@example.com"])
    .build()
}

pub fn slug_schema() -> Object {
    string(
        SLUG_PATTERN,
        1,
        63,
        "A DNS label: lowercase letters, digits and inner '-'.",
    )
    .examples(["acme"])
    .build()
}

pub fn model_name_schema() -> Object {
    string(
        MODEL_NAME_PATTERN,
        1,
        100,
        "The `<model>` of `nexus://<tenant>/<model>@<version>`.",
    )
    .examples(["coder-70b"])
    .build()
}

pub fn version_schema() -> Object {
    string(
        VERSION_PATTERN,
        1,
        64,
        "The `<version>` of `nexus://<tenant>/<model>@<version>`.",
    )
    .examples(["1.4.0"])
    .build()
}

pub fn capability_schema() -> Object {
    string(
        CAPABILITY_PATTERN,
        1,
        64,
        "A capability name as in MIC attestations.",
    )
    .examples(["code-generation"])
    .build()
}

pub fn claims_schema() -> Object {
    use utoipa::openapi::schema::{AdditionalProperties, OneOfBuilder};
    let value = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TEXT_PATTERN))
                .max_length(Some(1000)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(-CLAIM_NUMBER_MAX))
                .maximum(Some(CLAIM_NUMBER_MAX)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(ObjectBuilder::new().schema_type(Type::Null));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(SHORT_TEXT_PATTERN))
                .min_length(Some(1))
                .max_length(Some(64)),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            utoipa::openapi::schema::Schema::OneOf(value.build()).into(),
        )))
        .max_properties(Some(64))
        .description(Some(
            "At most 64 claims: names of 1–64 characters, values a string (≤ 1000 characters), number (within ±1e15), boolean or null.",
        ))
        .examples([serde_json::json!({"humaneval": 0.91, "license": "apache-2.0"})])
        .build()
}

pub fn hex32_schema() -> Object {
    string(HEX32_PATTERN, 64, 64, "32 bytes as 64 hex digits.")
        .examples(["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"])
        .build()
}

pub fn hex32_list_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(hex32_schema())
        .max_items(Some(64))
        .build()
}

pub fn signature_schema() -> Object {
    string(SIGNATURE_PATTERN, 2, 1024, "1–512 bytes as hex.").build()
}

pub fn short_text_schema() -> Object {
    string(
        SHORT_TEXT_PATTERN,
        1,
        64,
        "1–64 characters, no control characters.",
    )
    .examples(["Acme AI Labs"])
    .build()
}

pub fn score_schema() -> Object {
    string(
        SCORE_PATTERN,
        1,
        20,
        "A decimal score with at most 6 fractional digits.",
    )
    .examples(["0.9125"])
    .build()
}

pub fn modalities_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(capability_schema())
        .max_items(Some(16))
        .description(Some("At most 16 modality names, e.g. `text`."))
        .build()
}

pub fn capabilities_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(capability_schema())
        .max_items(Some(64))
        .description(Some("At most 64 capability names."))
        .build()
}

pub fn digest_schema() -> Object {
    string(
        DIGEST_PATTERN,
        18,
        145,
        "`<algorithm>:<hex>` digest of the model artefact.",
    )
    .examples(["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"])
    .build()
}

pub fn decimal_schema() -> Object {
    string(
        DECIMAL_PATTERN,
        1,
        25,
        "Exact decimal string (never a float): ≤ 12 digits on each side of the point.",
    )
    .examples(["0.0025"])
    .build()
}

pub fn period_schema() -> Object {
    string(PERIOD_PATTERN, 7, 7, "A billing month, `YYYY-MM` (UTC).")
        .examples(["2026-11"])
        .build()
}

pub fn request_id_schema() -> Object {
    string(
        REQUEST_ID_PATTERN,
        1,
        128,
        "Idempotency key: a retry with the same id returns the first result.",
    )
    .build()
}

pub fn serial_schema() -> Object {
    string(
        SERIAL_PATTERN,
        1,
        40,
        "Certificate serial number, lowercase hex.",
    )
    .build()
}

pub fn fabric_schema() -> Object {
    string(
        FABRIC_PATTERN,
        1,
        253,
        "Fabric name (a Kubernetes object name).",
    )
    .examples(["gpu-east"])
    .build()
}

/// Largest CSR accepted, in base64 characters (decodes to at most 8190 bytes, under the CA's
/// 8 KiB limit).
pub const CSR_MAX_CHARS: usize = 10920;

/// A P-256 PKCS#10 request without SANs (subject `CN=nexus example`; its key was discarded): valid for any model, since the CA
/// takes the identity from the request's model and version, not from the CSR.
pub const EXAMPLE_CSR: &str = "MIHRMHoCAQAwGDEWMBQGA1UEAwwNbmV4dXMgZXhhbXBsZTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABBK9HZG+dhRxrCWRLUwp3TaJag7PDGTYuhvxkphuK81kgVQAZBGdhANNH/bzL8PH1pa00IuttAyIW7vTH9YfgbqgADAKBggqhkjOPQQDAgNHADBEAiAYIlDJJUbZKLn87RuCYvo6JN5zsH9gDsixW+KMzmAxewIgbjTmOH8/qBBHp+BkLeVha8lV3HoqzCQFTtC+QlRilmk=";

pub fn csr_schema() -> Object {
    string(BASE64_PATTERN, 4, CSR_MAX_CHARS, "PKCS#10 certificate request, DER, standard base64 (`contentMediaType`): the CA checks its signature and key (422 `ca_refused` otherwise). Key: ECDSA P-256/P-384 or Ed25519. A request naming URI SANs must name exactly the model URI; one without SANs is valid for any model.")
        .content_encoding("base64")
        .content_media_type("application/pkcs10")
        .examples([EXAMPLE_CSR])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn re(p: &str) -> regex::Regex {
        regex::Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    /// Characters where the rules have edges: controls, spaces of every kind, '@', '.', ASCII.
    fn edgy() -> impl Strategy<Value = String> {
        let chars = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => proptest::char::range('A', 'Z'),
            1 => proptest::char::range('0', '9'),
            1 => prop::sample::select(vec![
                '\0', '\t', '\n', '\r', ' ', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}', '\u{1680}',
                '\u{2000}', '\u{200a}', '\u{200b}', '\u{2028}', '\u{202f}', '\u{3000}', '\u{feff}',
                '@', '.', '-', '_', ':', '/', '+', 'é', '漢', '😀',
            ]),
        ];
        prop::collection::vec(chars, 0..12).prop_map(|v| v.into_iter().collect())
    }

    fn long(s: String, n: usize) -> String {
        s.repeat(n)
    }

    proptest! {
        #[test]
        fn patterns_and_checks_agree(s in edgy(), rep in 1usize..30) {
            for s in [s.clone(), long(s, rep)] {
                let n = s.chars().count();
                prop_assert_eq!(re(NAME_PATTERN).is_match(&s) && n <= NAME_MAX, name("x", &s).is_ok(), "name {:?}", s);
                prop_assert_eq!(re(TEXT_PATTERN).is_match(&s) && n <= 50, text("x", &s, 50).is_ok(), "text {:?}", s);
                prop_assert_eq!(re(EMAIL_PATTERN).is_match(&s) && n <= EMAIL_MAX, email(&s).is_ok(), "email {:?}", s);
                prop_assert_eq!(re(SLUG_PATTERN).is_match(&s), slug(&s).is_ok(), "slug {:?}", s);
                prop_assert_eq!(re(MODEL_NAME_PATTERN).is_match(&s), model_name(&s).is_ok(), "model {:?}", s);
                prop_assert_eq!(re(VERSION_PATTERN).is_match(&s), version(&s).is_ok(), "version {:?}", s);
                prop_assert_eq!(re(CAPABILITY_PATTERN).is_match(&s), capability("x", &s).is_ok(), "cap {:?}", s);
                prop_assert_eq!(re(REQUEST_ID_PATTERN).is_match(&s), request_id(&s).is_ok(), "rid {:?}", s);
                prop_assert_eq!(re(SERIAL_PATTERN).is_match(&s), serial(&s), "serial {:?}", s);
                prop_assert_eq!(re(FABRIC_PATTERN).is_match(&s), fabric(&s), "fabric {:?}", s);
                prop_assert_eq!(re(SHORT_TEXT_PATTERN).is_match(&s), short_text("x", &s).is_ok(), "short {:?}", s);
            }
        }

        #[test]
        fn digest_and_decimal_patterns_agree(alg in "[a-z0-9A-Z]{0,17}", hex in "[0-9a-fA-Fg]{0,130}", i in "[0-9x]{0,13}", f in proptest::option::of("[0-9]{0,13}")) {
            let d = format!("{alg}:{hex}");
            prop_assert_eq!(re(DIGEST_PATTERN).is_match(&d), digest(&d).is_ok(), "{:?}", d);
            let n = match &f { Some(f) => format!("{i}.{f}"), None => i.clone() };
            prop_assert_eq!(re(DECIMAL_PATTERN).is_match(&n), decimal("x", &n).is_ok(), "{:?}", n);
            for sc in [n.clone(), format!("-{n}")] {
                prop_assert_eq!(re(SCORE_PATTERN).is_match(&sc), score(&sc).is_ok(), "{:?}", sc);
            }
        }

        #[test]
        fn base64_pattern_is_what_the_decoder_accepts(s in "[A-Za-z0-9+/=]{1,12}") {
            prop_assert_eq!(re(BASE64_PATTERN).is_match(&s), base64("x", &s, 100).is_ok(), "{:?}", s);
        }

        #[test]
        fn cursor_pattern_is_what_decode_accepts(a in "[0-9a-f.]{0,20}", b in "[0-9a-fA-F]{30,34}") {
            for s in [format!("{a}.{b}"), a.clone()] {
                prop_assert_eq!(re(crate::pagination::CURSOR_PATTERN).is_match(&s), crate::pagination::decode(&s).is_some(), "{:?}", s);
            }
        }
    }

    #[test]
    fn patterns_compile() {
        for p in [
            NAME_PATTERN,
            TEXT_PATTERN,
            EMAIL_PATTERN,
            SLUG_PATTERN,
            MODEL_NAME_PATTERN,
            VERSION_PATTERN,
            CAPABILITY_PATTERN,
            DIGEST_PATTERN,
            DECIMAL_PATTERN,
            PERIOD_PATTERN,
            REQUEST_ID_PATTERN,
            BASE64_PATTERN,
            SERIAL_PATTERN,
            FABRIC_PATTERN,
            HEX32_PATTERN,
            SIGNATURE_PATTERN,
            SHORT_TEXT_PATTERN,
            SCORE_PATTERN,
        ] {
            re(p);
        }
        assert!(name("x", "  a ").is_ok());
        assert!(name("x", " \u{3000}").is_err());
        assert!(email("a@b.c").is_ok());
        assert!(email("a@b@c.d").is_err());
        assert!(email("a@.b").is_err());
    }
}
