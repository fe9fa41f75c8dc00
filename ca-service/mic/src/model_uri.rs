//! The model name carried in a MIC's URI SAN.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// `nexus://<tenant>/<model>@<version>`, the identity a MIC certifies.
///
/// The syntax is deliberately narrow so that the URI survives every place it is written to
/// (an IA5String SAN, a Kubernetes label value after escaping, a log line) unchanged:
/// * tenant: a DNS label, `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 bytes (Kubernetes
///   namespaces and tenant ids already follow it);
/// * model: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most 128 bytes;
/// * version: `[A-Za-z0-9][A-Za-z0-9._+-]*`, at most 64 bytes (semver with build metadata).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelUri {
    tenant: String,
    model: String,
    version: String,
}

/// Scheme prefix of every model URI.
pub const SCHEME: &str = "nexus://";

impl ModelUri {
    /// Builds a URI from its parts, checking each.
    pub fn new(tenant: &str, model: &str, version: &str) -> Result<Self, Error> {
        let uri = format!("{SCHEME}{tenant}/{model}@{version}");
        let err = |reason: &str| Error::ModelUri {
            uri: truncate(&uri),
            reason: reason.to_owned(),
        };
        if tenant.is_empty() || tenant.len() > 63 {
            return Err(err("tenant must be 1..=63 bytes"));
        }
        let tenant_ok = tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !tenant.starts_with('-')
            && !tenant.ends_with('-');
        if !tenant_ok {
            return Err(err(
                "tenant must be a DNS label: lowercase letters, digits and inner '-'",
            ));
        }
        check_part(model, 128, b"._-").map_err(|r| err(&format!("model {r}")))?;
        check_part(version, 64, b"._+-").map_err(|r| err(&format!("version {r}")))?;
        Ok(Self {
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            version: version.to_owned(),
        })
    }

    /// The tenant that owns the model.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The model name within the tenant.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn check_part(s: &str, max: usize, extra: &[u8]) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("must be 1..={max} bytes"));
    }
    let mut bytes = s.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || extra.contains(&b)) {
        return Err(format!(
            "must start with a letter or digit and contain only letters, digits and `{}`",
            String::from_utf8_lossy(extra)
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(128);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl FromStr for ModelUri {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let err = |reason: &str| Error::ModelUri {
            uri: truncate(s),
            reason: reason.to_owned(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("must start with nexus://"))?;
        let (tenant, rest) = rest
            .split_once('/')
            .ok_or_else(|| err("expected nexus://<tenant>/<model>@<version>"))?;
        let (model, version) = rest
            .split_once('@')
            .ok_or_else(|| err("expected `@<version>` after the model name"))?;
        ModelUri::new(tenant, model, version)
    }
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}@{}", self.tenant, self.model, self.version)
    }
}

impl serde::Serialize for ModelUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ModelUri {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() -> Result<(), Error> {
        let uri: ModelUri = "nexus://acme/coder-7b@1.2.0+build.5".parse()?;
        assert_eq!(uri.tenant(), "acme");
        assert_eq!(uri.model(), "coder-7b");
        assert_eq!(uri.version(), "1.2.0+build.5");
        assert_eq!(uri.to_string(), "nexus://acme/coder-7b@1.2.0+build.5");
        Ok(())
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "",
            "https://acme/m@1",
            "nexus://acme/m",
            "nexus://Acme/m@1",
            "nexus://-acme/m@1",
            "nexus://acme/m/x@1",
            "nexus://acme/m@1@2",
            "nexus://acme/@1",
            "nexus://acme/m@",
            "nexus://acme/.m@1",
            "nexus://acme/m@1 2",
        ] {
            assert!(
                bad.parse::<ModelUri>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
