//! Crash-safe file replacement.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::AgentError;

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the new
/// content, never a mix: write a sibling temp file, fsync it, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    write_atomic_as(path, bytes, false)
}

/// [`write_atomic`]; a `private` file (a key) is created 0600 from the start, so no reader
/// ever sees it with wider permissions.
pub fn write_atomic_as(path: &Path, bytes: &[u8], private: bool) -> Result<(), AgentError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    if private {
        // A leftover temp file keeps its permissions through `truncate`: start afresh.
        let _ = fs::remove_file(&tmp);
    }
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = opts.open(&tmp).map_err(AgentError::io("create", &tmp))?;
        f.write_all(bytes).map_err(AgentError::io("write", &tmp))?;
        f.sync_all().map_err(AgentError::io("fsync", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(AgentError::io("rename", path))?;
    // Persist the rename itself; not all filesystems allow opening a directory, so best effort.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `value` as pretty JSON with [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| AgentError::Json {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// Reads JSON from `path`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, AgentError> {
    let bytes = fs::read(path).map_err(AgentError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|source| AgentError::Json {
        path: path.to_owned(),
        source,
    })
}
