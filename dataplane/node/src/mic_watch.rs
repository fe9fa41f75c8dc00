//! Follows the MIC directory (a mounted `kubernetes.io/tls` Secret the ModelIdentity
//! controller renews): when `tls.crt` or `tls.key` change, the new MIC is loaded and every
//! endpoint of the process presents it from the next handshake on — no restart, no dropped
//! session. A half-written rotation (a new certificate with the old key) fails to load and is
//! retried on the next tick; the current MIC stays in use meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_stream::{Endpoint, Identity};

/// The two files' bytes: what a reload compares (modification times may not change across a
/// Secret's symlink swap).
type Contents = (Option<Vec<u8>>, Option<Vec<u8>>);

fn contents(dir: &Path) -> Contents {
    (
        std::fs::read(dir.join("tls.crt")).ok(),
        std::fs::read(dir.join("tls.key")).ok(),
    )
}

/// Checks `dir` every `every` and reloads `endpoints` when the MIC changed.
pub fn spawn(
    dir: PathBuf,
    every: Duration,
    endpoints: Vec<Endpoint>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut loaded = contents(&dir);
        loop {
            tokio::time::sleep(every).await;
            let now = contents(&dir);
            if now == loaded {
                continue;
            }
            let reloaded = Identity::from_dir(&dir)
                .map_err(|e| e.to_string())
                .and_then(|id| {
                    endpoints
                        .iter()
                        .try_for_each(|e| e.reload_identity(&id))
                        .map_err(|e| e.to_string())
                });
            match reloaded {
                Ok(()) => {
                    loaded = now;
                    tracing::info!(dir = %dir.display(), "MIC reloaded: new handshakes present the renewed certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, dir = %dir.display(), "the MIC changed but does not load; keeping the current one");
                }
            }
        }
    })
}
