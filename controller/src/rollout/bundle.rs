//! Fetching and verifying a fabric's firmware bundle, once, before any node flashes it.

use std::path::Path;
use std::sync::Arc;

use nexus_crds::fabric::{BundleState, BundleStatus};
use sha2::{Digest, Sha256};

/// Largest bundle accepted (firmware images are tens of MiB).
pub const MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;

/// The outcome of a fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Verified or Failed, with the computed digest and the reason.
    pub status: BundleStatus,
    /// The bytes, when verified.
    pub bytes: Option<Arc<Vec<u8>>>,
}

impl Fetched {
    fn failed(message: String, sha256: Option<String>) -> Self {
        Self {
            status: BundleStatus {
                state: BundleState::Failed,
                sha256,
                message: Some(message),
            },
            bytes: None,
        }
    }
}

/// Reads `url` (`file://`, `http://`, `https://`, or a plain path — relative paths are taken
/// relative to `base`) and checks it against `expected` sha256.
pub async fn fetch(url: &str, expected: &str, base: Option<&Path>) -> Fetched {
    let bytes = match read(url, base).await {
        Ok(b) => b,
        Err(e) => return Fetched::failed(format!("fetching {url}: {e}"), None),
    };
    verify(bytes, expected)
}

/// Checks bytes against the expected digest.
pub fn verify(bytes: Vec<u8>, expected: &str) -> Fetched {
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != expected {
        return Fetched::failed(
            format!(
                "sha256 mismatch: the bundle hashes to {digest}, the Fabric expects {expected}"
            ),
            Some(digest),
        );
    }
    Fetched {
        status: BundleStatus {
            state: BundleState::Verified,
            sha256: Some(digest),
            message: None,
        },
        bytes: Some(Arc::new(bytes)),
    }
}

async fn read(url: &str, base: Option<&Path>) -> Result<Vec<u8>, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?;
        if resp.content_length().is_some_and(|l| l > MAX_BUNDLE_BYTES) {
            return Err("bundle too large".into());
        }
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if body.len() as u64 > MAX_BUNDLE_BYTES {
            return Err("bundle too large".into());
        }
        return Ok(body.to_vec());
    }
    if url.is_empty() {
        return Err(
            "the Fabric names no bundle URL (configMap and oci sources need the kube mode)".into(),
        );
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    let mut path = std::path::PathBuf::from(path);
    if path.is_relative()
        && let Some(b) = base
    {
        path = b.join(path);
    }
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_BUNDLE_BYTES {
        return Err("bundle too large".into());
    }
    tokio::fs::read(&path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_digest_of_a_file() {
        let dir = std::env::temp_dir().join(format!("nexus-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("b.bin"), b"bundle").expect("write");
        let good = hex::encode(Sha256::digest(b"bundle"));
        let f = fetch("b.bin", &good, Some(&dir)).await;
        assert_eq!(f.status.state, BundleState::Verified);
        let f = fetch(
            &format!("file://{}/b.bin", dir.display()),
            &"0".repeat(64),
            None,
        )
        .await;
        assert_eq!(f.status.state, BundleState::Failed);
        assert!(
            f.status
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("mismatch")
        );
        assert!(f.bytes.is_none());
        let f = fetch("missing.bin", &good, Some(&dir)).await;
        assert_eq!(f.status.state, BundleState::Failed);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
