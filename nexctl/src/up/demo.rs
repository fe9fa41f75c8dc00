//! The demo tenant's things that go through the public cloud API, exactly as a user's tools
//! would: the demo model's identity and its MIC (issued by the real CA behind the API), and the
//! local cluster's registration so the controller can report rollouts and cluster hours.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The demo model: a code-writing LLM with a 128K context, the example of the README.
pub const DEMO_MODEL: &str = "demo-coder";
/// Its version in the MIC's model URI.
pub const DEMO_MODEL_VERSION: &str = "1.0.0";

/// Calls the cloud API with the demo tenant's key.
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

#[derive(Deserialize)]
struct Page {
    data: Vec<serde_json::Value>,
    next_cursor: Option<String>,
}

impl Api {
    pub fn new(base: String, key: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { http, base, key })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: reading the answer"))
    }

    /// Every item of a paginated list.
    async fn list(&self, path: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}?limit=100&cursor={c}"),
                None => format!("{path}?limit=100"),
            };
            let page: Page =
                serde_json::from_value(self.call(reqwest::Method::GET, &url, None).await?)?;
            out.extend(page.data);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }
}

fn str_field<'a>(v: &'a serde_json::Value, k: &str) -> anyhow::Result<&'a str> {
    v.get(k)
        .and_then(|x| x.as_str())
        .with_context(|| format!("the API's answer has no string `{k}`"))
}

/// The demo model's MIC in the Secret layout the ModelIdentity controller writes (`tls.crt`
/// with the chain, `tls.key`, `ca.crt`), under `<data>/mics/demo-coder`. Reused while it has
/// more than an hour left; otherwise issued through the cloud API (so it shows in the console).
pub async fn demo_identity(data: &Path, api: &Api) -> anyhow::Result<DemoIdentity> {
    let dir = data.join("mics").join(DEMO_MODEL);
    let me = api.call(reqwest::Method::GET, "/v1/me", None).await?;
    let slug = me
        .get("tenant")
        .map(|t| str_field(t, "slug"))
        .transpose()?
        .context("the API's /v1/me has no tenant")?
        .to_owned();
    if let Some(serial) = still_valid(&dir.join("tls.crt")) {
        return Ok(DemoIdentity {
            dir,
            serial,
            tenant: slug,
        });
    }
    let model_id = match api
        .list("/v1/model-identities")
        .await?
        .into_iter()
        .find(|m| m.get("name").and_then(|n| n.as_str()) == Some(DEMO_MODEL))
    {
        Some(m) => str_field(&m, "id")?.to_owned(),
        None => {
            let digest = hex::encode(Sha256::digest(b"nexus demo-coder weights"));
            let m = api
                .call(
                    reqwest::Method::POST,
                    "/v1/model-identities",
                    Some(json!({
                        "name": DEMO_MODEL,
                        "model_digest": format!("sha256:{digest}"),
                        "claims": {"humaneval": 0.82, "note": "the nexctl up demo model"},
                    })),
                )
                .await?;
            str_field(&m, "id")?.to_owned()
        }
    };
    let uri = nexus_mic::ModelUri::new(&slug, DEMO_MODEL, DEMO_MODEL_VERSION)?;
    let key = nexus_mic::generate_model_key(&uri)?;
    let arch = hex::encode(Sha256::digest(b"nexus demo-coder architecture"));
    let issued = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/model-identities/{model_id}/certificates"),
            Some(json!({
                "csr_der_base64": base64::engine::general_purpose::STANDARD.encode(&key.csr_der),
                "version": DEMO_MODEL_VERSION,
                "attestation": {
                    "architecture_hash": arch,
                    "provenance": {"publisher": "Nexus demo", "dataset_digests": []},
                    "capabilities": {
                        "capabilities": ["code-generation", "chat"],
                        "context_window": 131072,
                        "modalities": ["text"],
                    },
                    "benchmarks": [{"name": "humaneval", "value": {"plain": "0.82"}}],
                },
                "validity_seconds": 7 * 24 * 3600,
                "request_id": format!("nexctl-up-{}", nexus_mic::fingerprint_sha256(&key.csr_der)),
            })),
        )
        .await?;
    let b64 = |k: &str| -> anyhow::Result<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(str_field(&issued, k)?)
            .with_context(|| format!("`{k}` is not base64"))
    };
    let (leaf, chain, root) = (
        b64("leaf_der_base64")?,
        b64("chain_der_base64")?,
        b64("root_der_base64")?,
    );
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let crt = format!(
        "{}{}",
        nexus_mic::der_to_pem("CERTIFICATE", &leaf),
        nexus_mic::der_to_pem("CERTIFICATE", &chain)
    );
    std::fs::write(dir.join("tls.crt"), crt)?;
    std::fs::write(
        dir.join("ca.crt"),
        nexus_mic::der_to_pem("CERTIFICATE", &root),
    )?;
    let key_path = dir.join("tls.key");
    std::fs::write(&key_path, &key.private_key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(DemoIdentity {
        dir,
        serial: str_field(&issued, "serial")?.to_owned(),
        tenant: slug,
    })
}

/// The demo model's MIC on disk.
pub struct DemoIdentity {
    /// Secret-layout directory (`tls.crt`, `tls.key`, `ca.crt`).
    pub dir: PathBuf,
    /// Its serial.
    pub serial: String,
    /// The tenant slug it names.
    pub tenant: String,
}

/// The serial of the MIC at `path` when it is readable and valid for more than an hour, in
/// the form the CA answers with (no leading zero bytes; a DER serial whose first byte is 0x80
/// or more carries one).
fn still_valid(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let chain = nexus_mic::pem_to_der_chain(&text).ok()?;
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let left = cert.validity().time_to_expiration()?;
    if left <= time::Duration::hours(1) {
        return None;
    }
    nexus_ca_api::validate::parse_serial(&cert.raw_serial_as_string().replace(':', "")).ok()
}

/// Registers the local cluster (`nexctl-up`) for the demo tenant; returns its id.
pub async fn local_cluster(
    client: &nexus_controller::cloud::CloudClient,
) -> anyhow::Result<String> {
    client
        .ensure_cluster("nexctl-up", "local")
        .await
        .map_err(|e| anyhow::anyhow!("registering the local cluster: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mic_with_serial(dir: &Path, serial: &[u8]) -> std::path::PathBuf {
        let mut params = rcgen::CertificateParams::new(vec!["nexus".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let path = dir.join(format!("{:02x}.crt", serial[1]));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// A reused MIC reports the serial the CA answered with when it was issued: DER keeps a
    /// leading zero byte before a first byte of 0x80 or more, the CA's form does not.
    #[test]
    fn reused_serials_read_as_the_ca_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let high = [
            0x00, 0xaa, 0x87, 0x54, 0x15, 0xe7, 0x4b, 0x7b, 0x2e, 0xc3, 0xe1, 0x0a, 0xa7, 0xeb,
            0x4f, 0xff,
        ];
        assert_eq!(
            still_valid(&mic_with_serial(dir.path(), &high)).as_deref(),
            Some("aa875415e74b7b2ec3e10aa7eb4fff")
        );
        let low = [0x0a, 0x0b, 0x01];
        assert_eq!(
            still_valid(&mic_with_serial(dir.path(), &low)).as_deref(),
            Some("0a0b01")
        );
    }
}
