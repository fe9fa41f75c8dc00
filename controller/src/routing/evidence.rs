//! What admission needs, gathered the same way by both drivers: the trust anchors
//! (`--trust-anchors`), the CA's CRL and Groth16 verifying key (`--ca-url`, refreshed every 5 s),
//! and each endpoint's MIC chain and proofs as the ModelIdentity controller lays them out in its
//! Secret (`tls.crt`, chain leaf first; optional `proofs.json`). Local mode reads that layout
//! from directories, kube mode from the Secrets themselves; both then call [`Admitter::admit`].
//!
//! With a CA configured and no CRL signed by a CA certificate the controller knows, every
//! endpoint is refused `RevocationUnknown` (fail closed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nexus_crds::routing::RoutingDomainSpec;
use nexus_fleet_api::v1 as pb;
use nexus_mic::{CrlSet, RevocationCheck, RevocationStatus, Verifier};
use nexus_route::admission::{Context, DomainAdmission, Evidence, admit_domain, parse_proofs_json};
use prost::Message;
use tracing::warn;

use super::core::AdmissionFailure;

/// Where the controller finds the trust anchors and the CA's revocation feed (both modes).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustArgs {
    /// PEM file of the CA certificates MICs must chain to (the Nexus CA's root).
    #[arg(long = "trust-anchors")]
    pub trust_anchors: Option<PathBuf>,
    /// The CA's REST base URL (e.g. `http://127.0.0.1:7443`): its CRL at `/v1/crl` and its
    /// Groth16 verifying key at `/v1/zk/verifying-key`. Without it revocation is not checked.
    #[arg(long = "ca-url")]
    pub ca_url: Option<String>,
    /// PEM roots an `https://` --ca-url must chain to (the Nexus CA's `ca.crt`); only these
    /// are trusted for it.
    #[arg(long = "ca-tls-ca", requires = "ca_url")]
    pub ca_tls_ca: Option<PathBuf>,
}

/// Fails every revocation check closed: a CA is configured but its CRL could not be fetched.
struct Unknown;

impl RevocationCheck for Unknown {
    fn status(&self, _: &[u8], _: &[u8]) -> RevocationStatus {
        RevocationStatus::Unknown
    }
}

/// How often the CRL and verifying key are fetched again.
const CA_REFRESH: Duration = Duration::from_secs(5);

/// What the CA publishes, refreshed now and then.
pub struct CaFeed {
    http: Option<reqwest::Client>,
    base: Option<String>,
    crl: Option<Vec<u8>>,
    zk_key: Option<nexus_zk::VerifyingKey>,
    fetched: Option<Instant>,
}

impl std::fmt::Debug for CaFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFeed")
            .field("base", &self.base)
            .field("crl", &self.crl.as_ref().map(Vec::len))
            .field("zk_key", &self.zk_key.is_some())
            .finish_non_exhaustive()
    }
}

impl CaFeed {
    /// A feed from the CA `args` name (none: revocation is not checked).
    pub fn new(args: &TrustArgs) -> Self {
        let http = args.ca_url.as_ref().map(|_| Self::client(args));
        Self {
            http,
            base: args.ca_url.clone(),
            crl: None,
            zk_key: None,
            fetched: None,
        }
    }

    /// The HTTP client for the CA (built only when one is configured).
    fn client(args: &TrustArgs) -> reqwest::Client {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(root) = &args.ca_tls_ca {
            match std::fs::read(root)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())
                }) {
                Ok(roots) => http = http.tls_certs_only(roots),
                Err(e) => {
                    warn!(error = %e, root = %root.display(), "the CA's root does not load: revocation checks fail closed");
                }
            }
        }
        http.build().unwrap_or_default()
    }

    /// Fetches the CRL (and the verifying key, once) when the last fetch is older than 5 s.
    pub async fn refresh(&mut self) {
        let (Some(base), Some(http)) = (self.base.clone(), self.http.clone()) else {
            return;
        };
        if self.fetched.is_some_and(|t| t.elapsed() < CA_REFRESH) {
            return;
        }
        self.fetched = Some(Instant::now());
        let base = base.trim_end_matches('/');
        match http.get(format!("{base}/v1/crl")).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) => self.crl = Some(b.to_vec()),
                Err(e) => warn!(error = %e, "reading the CA's CRL"),
            },
            Ok(r) => warn!(status = %r.status(), "the CA refused its CRL"),
            Err(e) => warn!(error = %e, "fetching the CA's CRL"),
        }
        if self.zk_key.is_none() {
            let key = async {
                let v: serde_json::Value = http
                    .get(format!("{base}/v1/zk/verifying-key"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                nexus_zk::VerifyingKey::from_base64(v.get("verifying_key")?.as_str()?).ok()
            };
            self.zk_key = key.await;
        }
    }
}

/// One endpoint's evidence: its MIC chain (leaf first) and claim proofs.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// DER chain, leaf first; `None` when there is no readable certificate.
    pub chain: Option<Vec<Vec<u8>>>,
    /// Groth16 claim proofs.
    pub proofs: Vec<nexus_zk::ClaimProof>,
}

impl Loaded {
    /// Parses the Secret layout's `tls.crt` and optional `proofs.json` (`name` is for logs).
    pub fn parse(name: &str, tls_crt: Option<&str>, proofs_json: Option<&str>) -> Self {
        let chain = tls_crt
            .and_then(|pem| nexus_mic::pem_to_der_chain(pem).ok())
            .filter(|c| !c.is_empty());
        let proofs = proofs_json
            .map(|text| {
                parse_proofs_json(text).unwrap_or_else(|e| {
                    warn!(identity = name, error = %e, "ignoring unreadable proofs.json");
                    Vec::new()
                })
            })
            .unwrap_or_default();
        Self { chain, proofs }
    }

    /// Reads `<dir>/<name>/tls.crt` and `<dir>/<name>/proofs.json` (local mode).
    pub fn from_dir(dir: &Path, name: &str) -> Self {
        let d = dir.join(name);
        let crt = std::fs::read_to_string(d.join("tls.crt")).ok();
        let proofs = std::fs::read_to_string(d.join("proofs.json")).ok();
        Self::parse(name, crt.as_deref(), proofs.as_deref())
    }
}

/// Admits endpoints for one pass: the verifier from the trust anchors and the revocation check
/// from the CA's feed.
pub struct Admitter {
    verifier: Result<Verifier, AdmissionFailure>,
    crls: CrlSet,
    /// `None`: no CA configured; `Some(true)`: a verified CRL; `Some(false)`: fail closed.
    crl_ok: Option<bool>,
    zk_key: Option<nexus_zk::VerifyingKey>,
}

impl std::fmt::Debug for Admitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitter")
            .field("anchors", &self.verifier.is_ok())
            .field("crl_ok", &self.crl_ok)
            .finish_non_exhaustive()
    }
}

impl Admitter {
    /// Reads the trust anchors and checks the CRL's signature against every CA certificate
    /// known: the anchors and the intermediates in `evidence`.
    pub fn new<'a>(
        args: &TrustArgs,
        feed: &CaFeed,
        evidence: impl IntoIterator<Item = &'a Loaded>,
    ) -> Self {
        let pem = args
            .trust_anchors
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
            })
            .transpose();
        let verifier = match &pem {
            Ok(Some(pem)) => Verifier::from_pem(pem).map_err(|e| ("NoTrustAnchors", e.to_string())),
            Ok(None) => Err((
                "NoTrustAnchors",
                "the controller has no trust anchors (--trust-anchors): no endpoint can be admitted"
                    .to_owned(),
            )),
            Err(e) => Err(("NoTrustAnchors", e.clone())),
        };
        // The CRL is signed by the CA that issued the MICs: try every CA certificate we hold.
        let mut crls = CrlSet::new();
        let mut crl_ok = false;
        if let (Some(crl), Ok(_)) = (&feed.crl, &verifier) {
            let mut issuers: Vec<Vec<u8>> = pem
                .ok()
                .flatten()
                .and_then(|pem| nexus_mic::pem_to_der_chain(&pem).ok())
                .unwrap_or_default();
            issuers.extend(
                evidence
                    .into_iter()
                    .filter_map(|l| l.chain.as_ref())
                    .flat_map(|c| c.iter().skip(1).cloned()),
            );
            crl_ok = issuers.iter().any(|i| crls.add_crl(crl, i).is_ok());
            if !crl_ok {
                warn!("the CA's CRL is not signed by any CA certificate the controller knows");
            }
        }
        Self {
            verifier,
            crls,
            crl_ok: feed.base.as_ref().map(|_| crl_ok),
            zk_key: feed.zk_key.clone(),
        }
    }

    /// Admits `spec`'s endpoints at `now`; `evidence` finds an endpoint's evidence by its
    /// `modelIdentityRef` name.
    pub fn admit<'e>(
        &self,
        spec: &RoutingDomainSpec,
        now: SystemTime,
        evidence: impl Fn(&str) -> Option<&'e Loaded>,
    ) -> Result<DomainAdmission, AdmissionFailure> {
        let v = match &self.verifier {
            Err((reason, msg)) => return Err((*reason, msg.clone())),
            Ok(v) => v,
        };
        let revocation: &dyn RevocationCheck = match self.crl_ok {
            None => &nexus_mic::NoRevocation,
            Some(true) => &self.crls,
            Some(false) => &Unknown,
        };
        let ctx = Context {
            verifier: v,
            revocation,
            zk_key: self.zk_key.as_ref(),
            now,
        };
        admit_domain(spec, &ctx, |ep| {
            let l = evidence(&ep.model_identity_ref.name);
            Evidence {
                chain: l.and_then(|l| l.chain.as_deref()),
                proofs: l.map(|l| l.proofs.as_slice()).unwrap_or(&[]),
            }
        })
        .map_err(|e| ("InvalidPolicy", format!("the trust policy: {e}")))
    }
}

/// The tables in the fleet protocol's form (pushed on the fleet stream in local mode, served at
/// `/v1/routing/{version}` in kube mode).
pub fn to_pb(fabric: &str, t: &nexus_p4::compile::CompiledTables) -> pb::RoutingTables {
    pb::RoutingTables {
        fabric: fabric.to_owned(),
        version: t.version.clone(),
        entities: t.entities.iter().map(Message::encode_to_vec).collect(),
    }
}
