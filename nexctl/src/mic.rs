//! `nexctl mic`: inspect, verify and issue Model Identity Certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, bail};
use nexus_controller::identity::reconcile::{IssueRequest, Issuer};
use nexus_mic::{CrlSet, Mic, Requirement, Verifier};

/// `nexctl mic …`
#[derive(Debug, clap::Subcommand)]
pub enum MicCommand {
    /// Show what a MIC attests, human-readable (or --json).
    Inspect {
        /// PEM (leaf first; `tls.crt` of a MIC Secret) or DER certificate.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify a MIC's chain, revocation and contents against a requirement.
    Verify {
        /// PEM chain: leaf, then intermediates (`tls.crt`).
        file: PathBuf,
        /// Trust anchor(s), PEM (`ca.crt`).
        #[arg(long, value_name = "PEM")]
        ca: PathBuf,
        /// CRL (DER or PEM) issued by the leaf's issuer; repeatable.
        #[arg(long, value_name = "FILE")]
        crl: Vec<PathBuf>,
        /// Requirement, e.g. `capability=code-generation,context>=128000,issuer=Nexus Intermediate CA`.
        #[arg(long, default_value = "")]
        require: String,
    },
    /// Issue a MIC from the CA for a ModelIdentity manifest: makes a key and CSR locally (the key
    /// never leaves this machine) and writes tls.crt, tls.key, ca.crt and attestation.json.
    Issue {
        /// A ModelIdentity manifest (YAML).
        #[arg(long, short = 'f', value_name = "FILE")]
        identity: PathBuf,
        /// Directory for the files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// gRPC endpoint of the CA.
        #[arg(
            long,
            env = "NEXUS_CA_ENDPOINT",
            default_value = "http://127.0.0.1:8443"
        )]
        ca_endpoint: String,
        /// Bearer token for the CA.
        #[arg(long, env = "NEXUS_CA_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Tenant (defaults to spec.tenant, then metadata.namespace).
        #[arg(long)]
        tenant: Option<String>,
    },
}

pub fn run(cmd: MicCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MicCommand::Inspect { file, json } => inspect(&file, json),
        MicCommand::Verify {
            file,
            ca,
            crl,
            require,
        } => verify(&file, &ca, &crl, &require),
        MicCommand::Issue {
            identity,
            out,
            ca_endpoint,
            token,
            tenant,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(issue(&identity, &out, &ca_endpoint, token, tenant))
        }
    }
}

/// Reads certificates from a PEM bundle or a single DER certificate.
fn read_chain(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let text = String::from_utf8(bytes).context("PEM is not UTF-8")?;
        let chain = nexus_mic::pem_to_der_chain(&text)?;
        if chain.is_empty() {
            bail!("{}: no certificates found", path.display());
        }
        Ok(chain)
    } else {
        Ok(vec![bytes])
    }
}

fn inspect(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let chain = read_chain(path)?;
    let mic =
        Mic::from_der(&chain[0]).with_context(|| format!("{} is not a MIC", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&mic)?);
    } else {
        println!("{mic}");
        if chain.len() > 1 {
            println!(
                "chain: {} more certificate(s) after the leaf",
                chain.len() - 1
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path, ca: &Path, crls: &[PathBuf], require: &str) -> anyhow::Result<ExitCode> {
    let chain = read_chain(path)?;
    let anchors = read_chain(ca)?;
    let verifier = Verifier::new(&anchors)?;
    let requirement: Requirement = require.parse().context("--require")?;
    let mut revocation = CrlSet::new();
    for crl in crls {
        let bytes = std::fs::read(crl).with_context(|| format!("reading {}", crl.display()))?;
        let der = if bytes.starts_with(b"-----BEGIN") {
            let text = String::from_utf8(bytes).context("PEM is not UTF-8")?;
            let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: {e}", crl.display()))?;
            pem.contents
        } else {
            bytes
        };
        // The CRL is signed by the leaf's issuer: the first intermediate, or an anchor.
        let added = chain[1..]
            .iter()
            .chain(anchors.iter())
            .find_map(|issuer| revocation.add_crl(&der, issuer).ok());
        if added.is_none() {
            bail!("{}: not a CRL signed by a CA of this chain", crl.display());
        }
    }
    match verifier.verify(&chain, SystemTime::now(), &revocation, &requirement) {
        Ok(v) => {
            println!(
                "accepted: {} (serial {}, issued by {}, anchored at {})",
                v.model, v.serial, v.issuer, v.anchor
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            println!("rejected: {r}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn issue(
    identity: &Path,
    out: &Path,
    endpoint: &str,
    token: Option<String>,
    tenant: Option<String>,
) -> anyhow::Result<ExitCode> {
    use nexus_controller::identity as id;
    let text = std::fs::read_to_string(identity)
        .with_context(|| format!("reading {}", identity.display()))?;
    let validator = nexus_crds::validate::Validator::new()?;
    let report = validator.validate_yaml(&text).map_err(anyhow::Error::msg)?;
    for r in &report {
        for p in &r.problems {
            println!("{}[{}]: {p}", identity.display(), r.index);
        }
    }
    if report.iter().any(|r| !r.problems.is_empty()) {
        return Ok(ExitCode::from(1));
    }
    let mut mi: nexus_crds::ModelIdentity = serde_saphyr::from_str(&text)?;
    if tenant.is_some() {
        mi.spec.tenant = tenant;
    }
    let uri = id::model_uri(&mi)?;
    let attestation = id::attestation(&mi)?;
    let (validity, _) = id::lifetimes(&mi)?;
    let key = nexus_mic::generate_model_key(&uri)?;
    let issuer = nexus_controller::ca_client::GrpcIssuer::new(endpoint, token, None)?;
    let issued = issuer
        .issue(IssueRequest {
            tenant: id::tenant(&mi)?,
            model: uri.clone(),
            csr_der: key.csr_der.clone(),
            attestation_der: attestation.to_der()?,
            validity,
            request_id: format!("nexctl-{}", nexus_mic::fingerprint_sha256(&key.csr_der)),
        })
        .await?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, data) in id::secret_data(&issued, &key.private_key_pem, &attestation)? {
        let path = out.join(&name);
        std::fs::write(&path, &data.0).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        if name == id::TLS_KEY {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    println!(
        "issued {uri}: serial {}, valid until {}; wrote {}/{{tls.crt,tls.key,ca.crt,attestation.json}}",
        issued.serial,
        issued.not_after.to_rfc3339(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
