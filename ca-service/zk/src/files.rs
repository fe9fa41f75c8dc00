//! File helpers for `nexctl zk ...`: keys as raw compressed bytes, proofs and openings as
//! JSON. Reads are bounded (a file is never read past its size limit); writes go to a
//! temporary file in the same directory and are renamed into place.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::claim::CLAIM_PROOF_JSON_MAX_LEN;
use crate::{
    ClaimProof, Opening, PROVING_KEY_MAX_LEN, ProvingKey, VERIFYING_KEY_MAX_LEN, VerifyingKey,
    ZkError,
};

/// File name of the proving key written by [`write_keys`].
pub const PROVING_KEY_FILE: &str = "zk-proving.key";
/// File name of the verifying key written by [`write_keys`].
pub const VERIFYING_KEY_FILE: &str = "zk-verifying.key";

/// Where [`write_keys`] put the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPaths {
    /// `<dir>/zk-proving.key`.
    pub proving_key: PathBuf,
    /// `<dir>/zk-verifying.key`.
    pub verifying_key: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ZkError + '_ {
    move |source| ZkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read at most `max` bytes from `path`; a longer file is an error.
fn read_bounded(what: &'static str, path: &Path, max: usize) -> Result<Vec<u8>, ZkError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() > max {
        return Err(ZkError::TooLarge {
            what,
            len: buf.len(),
            max,
        });
    }
    Ok(buf)
}

fn read_text(what: &'static str, path: &Path, max: usize) -> Result<String, ZkError> {
    String::from_utf8(read_bounded(what, path, max)?)
        .map_err(|_| ZkError::malformed(what, "file is not UTF-8"))
}

/// Write `bytes` to `path` atomically (temporary file + rename). `private` files are
/// created with mode 0600 on Unix.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), ZkError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Write both keys into `dir` (created if missing) as [`PROVING_KEY_FILE`] and
/// [`VERIFYING_KEY_FILE`].
pub fn write_keys(dir: &Path, pk: &ProvingKey, vk: &VerifyingKey) -> Result<KeyPaths, ZkError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let paths = KeyPaths {
        proving_key: dir.join(PROVING_KEY_FILE),
        verifying_key: dir.join(VERIFYING_KEY_FILE),
    };
    write_atomic(&paths.proving_key, &pk.to_bytes(), false)?;
    write_atomic(&paths.verifying_key, &vk.to_bytes(), false)?;
    Ok(paths)
}

/// Load a proving key written by [`write_keys`].
pub fn load_proving_key(path: &Path) -> Result<ProvingKey, ZkError> {
    ProvingKey::from_bytes(&read_bounded("proving key", path, PROVING_KEY_MAX_LEN)?)
}

/// Load a verifying key written by [`write_keys`] (raw bytes), or its base64 text form.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, ZkError> {
    let bytes = read_bounded("verifying key", path, VERIFYING_KEY_MAX_LEN * 2)?;
    match VerifyingKey::from_bytes(&bytes) {
        Ok(vk) => Ok(vk),
        Err(raw_err) => match std::str::from_utf8(&bytes) {
            Ok(text) => VerifyingKey::from_base64(text).map_err(|_| raw_err),
            Err(_) => Err(raw_err),
        },
    }
}

/// Write a [`ClaimProof`] as JSON.
pub fn write_claim_proof(path: &Path, claim: &ClaimProof) -> Result<(), ZkError> {
    write_atomic(path, format!("{}\n", claim.to_json()).as_bytes(), false)
}

/// Load a [`ClaimProof`] from JSON (not verified).
pub fn load_claim_proof(path: &Path) -> Result<ClaimProof, ZkError> {
    ClaimProof::from_json(&read_text("claim proof", path, CLAIM_PROOF_JSON_MAX_LEN)?)
}

/// Write an [`Opening`] as JSON. It contains the secret blinding: on Unix the file is
/// created readable by its owner only (mode 0600).
pub fn write_opening(path: &Path, opening: &Opening) -> Result<(), ZkError> {
    write_atomic(path, format!("{}\n", opening.to_json()).as_bytes(), true)
}

/// Load and check an [`Opening`].
pub fn load_opening(path: &Path) -> Result<Opening, ZkError> {
    Opening::from_json(&read_text("opening", path, CLAIM_PROOF_JSON_MAX_LEN)?)
}
