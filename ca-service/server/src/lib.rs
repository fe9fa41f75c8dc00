//! NexTrust CA service: issues Model Identity Certificates (MICs) from CSRs, revokes them,
//! publishes a CRL and keeps an append-only, Merkle-hashed issuance log (RFC 6962 style), and
//! checks zero-knowledge claim proofs against the commitments MICs carry.
//!
//! * [`policy`], [`auth`] and [`merkle`] are pure cores (no I/O, no clock) with most of the
//!   tests.
//! * [`ca::Ca`] is the transport-independent service: PostgreSQL state, the log writer, the
//!   CRL and tree-head signing, service (TLS) certificates.
//! * [`grpc`] (tonic, `nexus.ca.v1` from `nexus-ca-api`) and [`http`] (axum REST, metrics,
//!   health) are thin edges over it; [`server`] wires them up, in plaintext or over TLS
//!   ([`tls`]: the CA's own server certificate), with graceful shutdown.
//!
//! # Trust and storage
//! * Keys live in PostgreSQL, private keys sealed with AES-256-GCM under a key-encryption key
//!   given by file or environment ([`kek`]); the KEK is never stored or logged.
//! * Callers are Nexus services (controller, cloud API) with a client certificate of this CA
//!   naming their role (over TLS), or a static bearer token (plaintext development mode, or
//!   the opt-in fallback over TLS). The `tenant` in each request scopes data (another tenant's
//!   serial is NOT_FOUND); it does not authenticate end users — the cloud API does that first.
//! * Any number of replicas may share the database: each log batch takes an advisory lock, so
//!   one writer at a time assigns log positions ([`ca::LOG_WRITER_LOCK`]).
//! * The CA runs the Groth16 setup for claim proofs on first start and keeps the keys. Whoever
//!   controls that setup could forge claim proofs; verifiers trusting this CA for MICs already
//!   trust it for the claims inside them, so the CA adds no new trust by holding the keys. A
//!   deployment where that is not acceptable replaces the keys with an MPC ceremony's.

pub mod auth;
pub mod ca;
mod error;
pub mod grpc;
pub mod http;
pub mod kek;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod publish;
pub mod server;
pub mod tls;
pub mod usage;

/// The issuance log's Merkle tree (owned by `nexus-ca-api`, so callers verify with it).
pub use nexus_ca_api::merkle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::Error;
pub use server::{RunningServer, start, start_tls};

/// Everything the server needs besides its database pool.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address (port 0 picks one).
    pub grpc_listen: SocketAddr,
    /// REST/metrics listen address.
    pub http_listen: SocketAddr,
    /// Key-encryption key.
    pub kek: Arc<kek::Kek>,
    /// Bearer token callers present.
    pub auth_token: String,
    /// Tenants to create if missing.
    pub tenants: Vec<String>,
    /// Lifetime bounds.
    pub limits: policy::Limits,
    /// `nextUpdate - thisUpdate` of CRLs.
    pub crl_validity: Duration,
    /// How often the CRL is re-signed without revocations.
    pub crl_refresh: Duration,
    /// Lifetime of node certificates (joins and renewals); nodes renew after two thirds.
    pub node_cert_validity: Duration,
}

impl Settings {
    /// Defaults for tests: loopback, ephemeral ports.
    pub fn for_tests(kek: Arc<kek::Kek>, auth_token: &str, tenants: &[&str]) -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kek,
            auth_token: auth_token.to_owned(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            limits: policy::Limits::default(),
            crl_validity: Duration::from_secs(3600),
            crl_refresh: Duration::from_secs(900),
            node_cert_validity: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Parses `90s`, `15m`, `24h`, `30d` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected e.g. 24h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Command line and environment of the `nexus-ca` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "nexus-ca", version, about = "NexTrust CA service")]
pub struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// gRPC listen address.
    #[arg(long, env = "NEXUS_CA_GRPC_LISTEN", default_value = "127.0.0.1:9443")]
    pub grpc_listen: SocketAddr,
    /// REST, /metrics and health listen address.
    #[arg(long, env = "NEXUS_CA_HTTP_LISTEN", default_value = "127.0.0.1:9080")]
    pub http_listen: SocketAddr,
    /// File holding the 32-byte key-encryption key (hex, base64 or raw). Alternative: the
    /// NEXUS_CA_KEK environment variable (hex or base64).
    #[arg(long)]
    pub kek_file: Option<PathBuf>,
    /// Key-encryption key, hex or base64 (prefer --kek-file).
    #[arg(
        long = "kek",
        env = "NEXUS_CA_KEK",
        hide_env_values = true,
        hide = true
    )]
    pub kek: Option<String>,
    /// File holding the bearer token callers must present. Alternative: NEXUS_CA_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Bearer token (prefer --token-file).
    #[arg(
        long = "token",
        env = "NEXUS_CA_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub token: Option<String>,
    /// Tenant to create if missing (repeatable).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
    /// MIC lifetime when a request asks for none.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub default_validity: Duration,
    /// Longest MIC lifetime granted.
    #[arg(long, default_value = "2160h", value_parser = parse_duration)]
    pub max_validity: Duration,
    /// CRL lifetime (nextUpdate - thisUpdate).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub crl_validity: Duration,
    /// Re-sign the CRL this often even without revocations.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub crl_refresh: Duration,
    /// Lifetime of node certificates (joins and renewals); node agents renew after two thirds.
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    pub node_cert_validity: Duration,
    /// Database connections.
    #[arg(long, default_value_t = 16)]
    pub db_max_connections: u32,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Serve gRPC and REST over TLS with a server certificate this CA issues itself, written
    /// to this directory (`tls.crt`, `tls.key`, and `ca.crt`: the root callers trust).
    /// Without it the CA serves plaintext (development only).
    #[arg(long, env = "NEXUS_CA_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// DNS name or IP address of the server certificate (repeatable).
    #[arg(long = "tls-server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
    pub tls_server_names: Vec<String>,
    /// Server certificate lifetime (re-issued after two thirds of it).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub tls_server_validity: Duration,
    /// Role a client certificate may carry to call the CA (repeatable).
    #[arg(long = "tls-client-role", default_values_t = ["controller".to_owned(), "cloud-api".to_owned()])]
    pub tls_client_roles: Vec<String>,
    /// Over TLS, also accept the bearer token (the documented fallback for callers without
    /// a client certificate).
    #[arg(long)]
    pub tls_allow_token: bool,
    /// Report each issued MIC as usage `mics_issued` to this cloud API (base URL), with
    /// `--usage-token` (or, the fallback, `--usage-keys-dir`).
    #[arg(long, env = "NEXUS_CA_USAGE_URL")]
    pub usage_url: Option<String>,
    /// The cloud API's usage token: one batch reports every tenant's MICs.
    #[arg(
        long,
        env = "NEXUS_CA_USAGE_TOKEN",
        hide_env_values = true,
        conflicts_with = "usage_keys_dir"
    )]
    pub usage_token: Option<String>,
    /// Directory of per-tenant cloud API keys for usage reports (a file per tenant name): the
    /// fallback without a usage token.
    #[arg(long, env = "NEXUS_CA_USAGE_KEYS_DIR")]
    pub usage_keys_dir: Option<PathBuf>,
    /// On a cluster: keep a `kubernetes.io/tls` Secret with a client certificate of ROLE for a
    /// caller, `NAMESPACE/SECRET=ROLE` (repeatable); re-issued before it expires or when
    /// revoked. Needs the in-cluster service account (get, create, patch on that Secret).
    #[arg(long = "publish-client-cert", value_parser = clap::value_parser!(publish::ClientCertTarget))]
    pub publish_client_certs: Vec<publish::ClientCertTarget>,
    /// On a cluster: keep the root certificate in a ConfigMap (`NAMESPACE/NAME`, key `ca.crt`).
    #[arg(long = "publish-root")]
    pub publish_root: Option<publish::RootTarget>,
    /// Lifetime of published client certificates (re-issued after two thirds).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub published_cert_validity: Duration,
    /// How often the published Secrets are checked.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub publish_interval: Duration,
    /// Administrative commands (run against the database, then exit).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `nexus-ca <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Issues a client certificate with a role for a caller of the CA (the controller, the
    /// cloud API) and writes `<name>.crt`, `<name>.key` and `ca.crt` to `--out`.
    ClientCert {
        /// Role (URI SAN `spiffe://nexus/role/<role>`).
        #[arg(long)]
        role: String,
        /// Subject CN and file name stem.
        #[arg(long)]
        name: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime.
        #[arg(long, default_value = "720h", value_parser = parse_duration)]
        validity: Duration,
    },
    /// Issues a TLS server certificate for a Nexus service the CA does not run itself (the
    /// rollout controller's fleet endpoint) and writes `<name>.crt`, `<name>.key` and
    /// `ca.crt` to `--out`.
    ServerCert {
        /// Subject CN and file name stem.
        #[arg(long)]
        name: String,
        /// DNS name of the server (repeatable).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// IP address of the server (repeatable).
        #[arg(long = "ip")]
        ip_addresses: Vec<std::net::IpAddr>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Lifetime.
        #[arg(long, default_value = "720h", value_parser = parse_duration)]
        validity: Duration,
    },
    /// Creates a one-time join token with which a node agent obtains its first node
    /// certificate (`nexus-agent --join-token`); prints the token.
    JoinToken {
        /// Only this node may join with it (recommended).
        #[arg(long)]
        node: Option<String>,
        /// How long the token is valid (at most 7 days).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// A note for the audit log (who asked, which machine).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revokes a service (client or server) certificate by serial.
    RevokeCert {
        /// Serial, hex.
        #[arg(long)]
        serial: String,
    },
}

impl Args {
    /// The TLS options, if `--tls-dir` is given.
    pub fn tls_options(&self) -> Option<tls::TlsOptions> {
        self.tls_dir.as_ref().map(|dir| tls::TlsOptions {
            dir: dir.clone(),
            server_names: self.tls_server_names.clone(),
            server_validity: self.tls_server_validity,
            client_roles: self.tls_client_roles.clone(),
            allow_token: self.tls_allow_token,
        })
    }

    /// What to publish on the cluster, if anything.
    pub fn publish_config(&self) -> Option<publish::PublishConfig> {
        (!self.publish_client_certs.is_empty() || self.publish_root.is_some()).then(|| {
            publish::PublishConfig {
                client_certs: self.publish_client_certs.clone(),
                root: self.publish_root.clone(),
                validity: self.published_cert_validity,
                interval: self.publish_interval.max(Duration::from_secs(1)),
            }
        })
    }

    /// Resolves the KEK and token sources into [`Settings`].
    pub fn settings(&self) -> Result<Settings, Error> {
        let kek = match (&self.kek_file, &self.kek) {
            (Some(path), _) => kek::Kek::from_file(path)?,
            (None, Some(text)) => kek::Kek::parse(text)?,
            (None, None) => {
                return Err(Error::Kek(
                    "no key-encryption key: pass --kek-file or set NEXUS_CA_KEK".into(),
                ));
            }
        };
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| Error::State(format!("token file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            (None, Some(t)) => t.trim().to_owned(),
            (None, None) => String::new(),
        };
        // Administrative commands serve nobody: no token to check.
        let token_needed =
            self.command.is_none() && (self.tls_dir.is_none() || self.tls_allow_token);
        if token_needed && token.len() < 16 {
            return Err(Error::State(
                "a bearer token of at least 16 characters is required in plaintext mode or with --tls-allow-token (--token-file or NEXUS_CA_TOKEN)"
                    .into(),
            ));
        }
        if self.default_validity.is_zero() || self.default_validity > self.max_validity {
            return Err(Error::State(
                "--default-validity must be positive and at most --max-validity".into(),
            ));
        }
        Ok(Settings {
            grpc_listen: self.grpc_listen,
            http_listen: self.http_listen,
            kek: Arc::new(kek),
            auth_token: token,
            tenants: self.tenants.clone(),
            limits: policy::Limits {
                default_validity: self.default_validity,
                max_validity: self.max_validity,
            },
            crl_validity: self.crl_validity,
            crl_refresh: self.crl_refresh,
            node_cert_validity: self.node_cert_validity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
