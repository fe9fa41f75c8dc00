//! Where Nexus artifacts come from — firmware bundles now, P4 pipelines next — for both the
//! rollout controller and the node agent, so the two read a source the same way.
//!
//! - [`Source`]: a checked [`ArtifactSource`]: a `file://`, `http://` or `https://` URL, a
//!   ConfigMap key **in the namespace the source names** (the controller's namespace when it names
//!   none), or an OCI reference (refused with a clear error until it is supported).
//! - [`Fetcher`]: reads a source with size limits and checks the bytes against the sha256 the
//!   spec pins, with a typed [`Error`] for each way that fails.
//! - [`Cache`] (pure, time passed in): remembers verified bytes by digest *and* failures, with
//!   exponential back-off, so a broken source is not fetched on every reconcile.

mod cache;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use nexus_crds::common::ArtifactSource;
use sha2::{Digest, Sha256};

pub use cache::{Cache, Lookup};

/// Largest artifact accepted by default (firmware images are tens of MiB).
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Why an artifact could not be had. Messages are written for `kubectl describe`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The source names nothing.
    #[error("the artifact source names no url, configMap or oci reference")]
    NoSource,
    /// More than one source is set (the CRD's CEL rule forbids it; checked again here).
    #[error("the artifact source names more than one of url, configMap and oci")]
    AmbiguousSource,
    /// A URL scheme this fetcher does not read.
    #[error("unsupported url {url:?}: use file://, http:// or https://")]
    UnsupportedUrl {
        /// The URL.
        url: String,
    },
    /// OCI sources are not supported yet.
    #[error("OCI artifact sources ({reference}) are not supported yet; use a url or configMap")]
    OciUnsupported {
        /// The reference.
        reference: String,
    },
    /// A ConfigMap source without a Kubernetes client (local mode).
    #[error("configMap sources need the Kubernetes API (kube mode)")]
    NoKubernetes,
    /// The ConfigMap does not exist.
    #[error("ConfigMap {namespace}/{name} does not exist")]
    ConfigMapMissing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The ConfigMap has no such key.
    #[error("ConfigMap {namespace}/{name} has no key {key:?} (in binaryData or data)")]
    ConfigMapKeyMissing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Key.
        key: String,
    },
    /// The Kubernetes API failed reading the ConfigMap.
    #[error("reading ConfigMap {namespace}/{name}: {message}")]
    Kubernetes {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// What the API said.
        message: String,
    },
    /// An HTTP fetch failed.
    #[error("GET {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong (status or transport error).
        message: String,
    },
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The artifact is larger than allowed.
    #[error("the artifact is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The bytes do not hash to the pinned digest.
    #[error("sha256 mismatch: the artifact hashes to {actual}, the spec pins {expected}")]
    DigestMismatch {
        /// Pinned.
        expected: String,
        /// Computed.
        actual: String,
    },
}

impl Error {
    /// Whether trying again later can help (a missing ConfigMap may be created, a server may come
    /// back; a digest mismatch or an unsupported source will not change by waiting — though the
    /// cache retries those too, slowly, since a source's content can be fixed).
    pub fn transient(&self) -> bool {
        matches!(
            self,
            Self::ConfigMapMissing { .. }
                | Self::ConfigMapKeyMissing { .. }
                | Self::Kubernetes { .. }
                | Self::Http { .. }
                | Self::Io { .. }
        )
    }
}

/// A checked artifact source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A local file (`file://` URL, or a path relative to the fetcher's base directory).
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Http(String),
    /// A key of a ConfigMap.
    ConfigMap {
        /// Namespace (the source's own, else the default the caller gave).
        namespace: String,
        /// Name.
        name: String,
        /// Key in `binaryData` (or `data`).
        key: String,
    },
    /// An OCI artifact reference.
    Oci(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "file://{}", p.display()),
            Self::Http(u) => f.write_str(u),
            Self::ConfigMap {
                namespace,
                name,
                key,
            } => write!(f, "configmap://{namespace}/{name}/{key}"),
            Self::Oci(r) => write!(f, "oci://{r}"),
        }
    }
}

impl Source {
    /// Checks a CRD source. `default_namespace` is used for ConfigMaps that name none (the
    /// controller's namespace).
    pub fn from_crd(s: &ArtifactSource, default_namespace: &str) -> Result<Self, Error> {
        let set = usize::from(s.url.is_some())
            + usize::from(s.config_map.is_some())
            + usize::from(s.oci.is_some());
        if set == 0 {
            return Err(Error::NoSource);
        }
        if set > 1 {
            return Err(Error::AmbiguousSource);
        }
        if let Some(url) = &s.url {
            return Self::from_url(url);
        }
        if let Some(cm) = &s.config_map {
            return Ok(Self::ConfigMap {
                namespace: cm
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| default_namespace.to_owned()),
                name: cm.name.clone(),
                key: cm.key.clone(),
            });
        }
        Ok(Self::Oci(s.oci.clone().unwrap_or_default()))
    }

    /// Checks a URL (`file://`, `http(s)://`, or a bare path).
    pub fn from_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(Self::Http(url.to_owned()))
        } else if let Some(p) = url.strip_prefix("file://") {
            Ok(Self::File(PathBuf::from(p)))
        } else if url.contains("://") || url.is_empty() {
            Err(Error::UnsupportedUrl {
                url: url.to_owned(),
            })
        } else {
            Ok(Self::File(PathBuf::from(url)))
        }
    }
}

/// Verified bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The artifact.
    pub bytes: Arc<Vec<u8>>,
    /// Its sha256, lowercase hex.
    pub sha256: String,
}

/// Checks bytes against a pinned sha256.
pub fn verify(bytes: Vec<u8>, expected: &str) -> Result<Verified, Error> {
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        return Err(Error::DigestMismatch {
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(Verified {
        bytes: Arc::new(bytes),
        sha256: actual,
    })
}

/// Reads sources.
#[derive(Clone)]
pub struct Fetcher {
    kube: Option<kube::Client>,
    base_dir: Option<PathBuf>,
    max_bytes: u64,
    timeout: Duration,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("kube", &self.kube.is_some())
            .field("base_dir", &self.base_dir)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    /// A fetcher of URLs only (local mode).
    pub fn new() -> Self {
        Self {
            kube: None,
            base_dir: None,
            max_bytes: DEFAULT_MAX_BYTES,
            timeout: Duration::from_secs(300),
        }
    }

    /// Also reads ConfigMaps through this client.
    pub fn with_kube(mut self, client: kube::Client) -> Self {
        self.kube = Some(client);
        self
    }

    /// Relative file paths are taken relative to `dir` (local mode: the manifest directory).
    pub fn with_base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// Refuses artifacts larger than `max` bytes.
    pub fn with_max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// Reads a source.
    pub async fn fetch(&self, source: &Source) -> Result<Vec<u8>, Error> {
        match source {
            Source::File(p) => self.read_file(p).await,
            Source::Http(url) => self.get(url).await,
            Source::ConfigMap {
                namespace,
                name,
                key,
            } => self.config_map(namespace, name, key).await,
            Source::Oci(r) => Err(Error::OciUnsupported {
                reference: r.clone(),
            }),
        }
    }

    /// Reads a source and checks it against the pinned digest.
    pub async fn fetch_verified(&self, source: &Source, sha256: &str) -> Result<Verified, Error> {
        let bytes = self.fetch(source).await?;
        verify(bytes, sha256)
    }

    async fn read_file(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let path = match &self.base_dir {
            Some(b) if path.is_relative() => b.join(path),
            _ => path.to_owned(),
        };
        let io = |e: std::io::Error| Error::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        let len = tokio::fs::metadata(&path).await.map_err(io)?.len();
        if len > self.max_bytes {
            return Err(Error::TooLarge {
                limit: self.max_bytes,
            });
        }
        tokio::fs::read(&path).await.map_err(io)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, Error> {
        // reqwest is built without a crypto provider: make sure rustls has one (an error only
        // means one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = |message: String| Error::Http {
            url: url.to_owned(),
            message,
        };
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| http(e.to_string()))?;
        let mut resp = client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| http(e.to_string()))?;
        if resp.content_length().is_some_and(|l| l > self.max_bytes) {
            return Err(Error::TooLarge {
                limit: self.max_bytes,
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| http(e.to_string()))? {
            if bytes.len() as u64 + chunk.len() as u64 > self.max_bytes {
                return Err(Error::TooLarge {
                    limit: self.max_bytes,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    async fn config_map(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, Error> {
        let client = self.kube.clone().ok_or(Error::NoKubernetes)?;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
        let cm = api
            .get_opt(name)
            .await
            .map_err(|e| Error::Kubernetes {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                message: e.to_string(),
            })?
            .ok_or_else(|| Error::ConfigMapMissing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })?;
        let bytes = cm
            .binary_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.as_bytes().to_vec())
            })
            .ok_or_else(|| Error::ConfigMapKeyMissing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key: key.to_owned(),
            })?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(Error::TooLarge {
                limit: self.max_bytes,
            });
        }
        Ok(bytes)
    }
}
