//! Crash-safe file replacement.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::AgentError;

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the new
/// content, never a mix: write a sibling temp file, fsync it, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = fs::File::create(&tmp).map_err(AgentError::io("create", &tmp))?;
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
