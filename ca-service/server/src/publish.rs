//! On a cluster, the CA hands its callers their client certificates itself: it keeps one
//! `kubernetes.io/tls` Secret per caller (`tls.crt` leaf + intermediate, `tls.key`, `ca.crt`
//! the root) and a ConfigMap with its root for anyone who must trust it (Prometheus). Callers
//! mount the Secret as a directory; kubelet refreshes the files after a re-issue and the
//! callers re-read them (`nexus_tls::CLIENT_CERT_RELOAD`), so rotation needs no restart and no
//! operator — the bootstrap cert-manager would otherwise do.
//!
//! Each round reads every Secret, decides with [`decide`] (pure) whether it must be issued
//! again — missing, incomplete, unreadable, another role, another root, past two thirds of
//! its life, or revoked — and writes only those, by server-side apply. Replicas take turns
//! through a PostgreSQL advisory lock, so one re-issue happens per Secret, not one per replica.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Error;
use crate::ca::{Ca, ServiceCertParams, unix_now};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "nexus-ca";

/// Advisory-lock key of a publishing round ("NXCAPUB1").
pub const PUBLISH_LOCK: i64 = 0x4E58_4341_5055_4231;

/// `NAMESPACE/SECRET=ROLE`: a caller's client-certificate Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertTarget {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret (also the certificate's CN).
    pub secret: String,
    /// The role the certificate carries.
    pub role: String,
}

/// `NAMESPACE/CONFIGMAP`: where the root is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootTarget {
    /// Namespace of the ConfigMap.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

fn object_ref(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected NAMESPACE/NAME"))?;
    if !crate::policy::is_dns_label(ns) || !crate::policy::is_dns_label(name) {
        return Err(format!("`{s}`: namespace and name must be DNS labels"));
    }
    Ok((ns.to_owned(), name.to_owned()))
}

impl FromStr for ClientCertTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (obj, role) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: expected NAMESPACE/SECRET=ROLE"))?;
        let (namespace, secret) = object_ref(obj)?;
        if !crate::policy::is_dns_label(role) {
            return Err(format!("`{s}`: the role must be a DNS label"));
        }
        Ok(Self {
            namespace,
            secret,
            role: role.to_owned(),
        })
    }
}

impl FromStr for RootTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (namespace, name) = object_ref(s)?;
        Ok(Self { namespace, name })
    }
}

/// What to publish, and how often to look.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// The callers' Secrets.
    pub client_certs: Vec<ClientCertTarget>,
    /// The root's ConfigMap.
    pub root: Option<RootTarget>,
    /// Lifetime of a published certificate (re-issued after two thirds).
    pub validity: Duration,
    /// Time between rounds.
    pub interval: Duration,
}

/// What a round does with one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It holds a good certificate with this serial (still to be checked for revocation).
    Keep {
        /// Serial of the certificate in `tls.crt`.
        serial: String,
    },
    /// Issue a new certificate, for this reason.
    Issue(&'static str),
}

/// Decides from the Secret's data as found (`None`: no Secret) whether its certificate may
/// stay: same root, the wanted role, readable, and less than two thirds of its life gone.
pub fn decide(
    data: Option<&BTreeMap<String, ByteString>>,
    role: &str,
    root_pem: &str,
    now: i64,
) -> Decision {
    let Some(data) = data else {
        return Decision::Issue("missing");
    };
    let (Some(crt), Some(_key), Some(ca)) =
        (data.get("tls.crt"), data.get("tls.key"), data.get("ca.crt"))
    else {
        return Decision::Issue("incomplete");
    };
    if ca.0 != root_pem.as_bytes() {
        return Decision::Issue("another root");
    }
    let Some(leaf) = first_pem_cert(&crt.0) else {
        return Decision::Issue("unreadable certificate");
    };
    let Ok((_, cert)) = X509Certificate::from_der(&leaf) else {
        return Decision::Issue("unreadable certificate");
    };
    let Some(peer) = nexus_tls::PeerIdentity::from_der(&leaf) else {
        return Decision::Issue("unreadable certificate");
    };
    if peer.role() != Some(role) {
        return Decision::Issue("another role");
    }
    let (nb, na) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    if nexus_tls::renewal_due(nb, na, now) {
        return Decision::Issue("past two thirds of its life");
    }
    Decision::Keep {
        serial: peer.serial,
    }
}

/// The first certificate of a PEM text, DER.
fn first_pem_cert(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    nexus_mic::pem_to_der_chain(text).ok()?.into_iter().next()
}

fn secret_object(t: &ClientCertTarget, cert: &crate::ca::ServiceCert) -> Secret {
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        ("nexus.dev/role".to_owned(), t.role.clone()),
    ]);
    let annotations = BTreeMap::from([
        ("nexus.dev/serial".to_owned(), cert.serial.clone()),
        ("nexus.dev/not-after".to_owned(), cert.not_after.to_string()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(t.secret.clone()),
            namespace: Some(t.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_owned(),
                ByteString(cert.chain_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_owned(),
                ByteString(cert.key_pem.clone().into_bytes()),
            ),
            (
                "ca.crt".to_owned(),
                ByteString(cert.root_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    }
}

fn kube_error(what: &str, e: kube::Error) -> Error {
    Error::State(format!("{what}: {e}"))
}

/// Runs one round: every Secret and the root ConfigMap. Returns how many certificates it
/// issued. Skips the round (0) while another replica runs one.
pub async fn round(
    ca: &Arc<Ca>,
    client: &kube::Client,
    cfg: &PublishConfig,
) -> Result<usize, Error> {
    let mut lock = ca.pool().begin().await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PUBLISH_LOCK)
        .fetch_one(&mut *lock)
        .await?;
    if !ours {
        tracing::debug!("another replica is publishing");
        return Ok(0);
    }
    let root_pem = nexus_mic::der_to_pem("CERTIFICATE", ca.root_der());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut issued = 0;
    let mut first_error = None;
    for t in &cfg.client_certs {
        let api: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
        let result: Result<(), Error> = async {
            let found = api
                .get_opt(&t.secret)
                .await
                .map_err(|e| kube_error(&format!("reading Secret {}/{}", t.namespace, t.secret), e))?;
            let mut decision =
                decide(found.as_ref().and_then(|s| s.data.as_ref()), &t.role, &root_pem, unix_now());
            if let Decision::Keep { serial } = &decision
                && ca.service_cert_revoked(serial).await?
            {
                decision = Decision::Issue("revoked");
            }
            let Decision::Issue(why) = decision else {
                return Ok(());
            };
            let cert = ca
                .issue_service_cert(&ServiceCertParams {
                    role: t.role.clone(),
                    name: t.secret.clone(),
                    dns_names: Vec::new(),
                    ip_addresses: Vec::new(),
                    server: false,
                    client: true,
                    not_before: SystemTime::now() - Duration::from_secs(60),
                    validity: cfg.validity,
                })
                .await?;
            api.patch(&t.secret, &params, &Patch::Apply(secret_object(t, &cert)))
                .await
                .map_err(|e| kube_error(&format!("writing Secret {}/{}", t.namespace, t.secret), e))?;
            issued += 1;
            ca.metrics().published.inc();
            tracing::info!(secret = %format!("{}/{}", t.namespace, t.secret), role = %t.role, serial = %cert.serial, why, "client certificate published");
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, secret = %t.secret, "publishing a client certificate failed; retrying next round");
            ca.metrics().publish_errors.inc();
            first_error.get_or_insert(e);
        }
    }
    if let Some(r) = &cfg.root {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &r.namespace);
        let result: Result<(), Error> = async {
            let found = api
                .get_opt(&r.name)
                .await
                .map_err(|e| kube_error(&format!("reading ConfigMap {}/{}", r.namespace, r.name), e))?;
            let current = found
                .as_ref()
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get("ca.crt"));
            if current.map(String::as_str) == Some(root_pem.as_str()) {
                return Ok(());
            }
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(r.name.clone()),
                    namespace: Some(r.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("ca.crt".to_owned(), root_pem.clone())])),
                ..Default::default()
            };
            api.patch(&r.name, &params, &Patch::Apply(cm))
                .await
                .map_err(|e| kube_error(&format!("writing ConfigMap {}/{}", r.namespace, r.name), e))?;
            tracing::info!(configmap = %format!("{}/{}", r.namespace, r.name), "root certificate published");
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, configmap = %r.name, "publishing the root failed; retrying next round");
            ca.metrics().publish_errors.inc();
            first_error.get_or_insert(e);
        }
    }
    lock.commit().await?;
    match first_error {
        Some(e) if issued == 0 => Err(e),
        _ => Ok(issued),
    }
}

/// Runs [`round`] now and every `cfg.interval` until the task is aborted.
pub fn spawn(ca: Arc<Ca>, client: kube::Client, cfg: PublishConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = round(&ca, &client, &cfg).await {
                tracing::warn!(error = %e, "publishing round failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        root_pem: String,
        issuing: nexus_mic::CertificateAuthority,
    }

    fn pki() -> Pki {
        let t0 = SystemTime::now() - Duration::from_secs(86_400);
        let root =
            nexus_mic::CertificateAuthority::new_root("R", t0, Duration::from_secs(10 * 86_400))
                .unwrap_or_else(|e| panic!("{e}"));
        let issuing = root
            .new_intermediate("I", t0, Duration::from_secs(10 * 86_400))
            .unwrap_or_else(|e| panic!("{e}"));
        Pki {
            root_pem: root.cert_pem(),
            issuing,
        }
    }

    /// Secret data for a client certificate of `role` valid `nb..nb+life`.
    fn data(p: &Pki, role: &str, nb: i64, life: u64) -> BTreeMap<String, ByteString> {
        let uri = nexus_tls::role_uri(role);
        let c = p
            .issuing
            .issue_service_cert(&nexus_mic::ServiceCertRequest {
                common_name: "caller",
                dns_names: &[],
                ip_addresses: &[],
                uris: &[uri.as_str()],
                server_auth: false,
                client_auth: true,
                not_before: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(nb).unwrap_or(0)),
                validity: Duration::from_secs(life),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(c.cert.pem.into_bytes())),
            (
                "tls.key".to_owned(),
                ByteString(c.private_key_pem.into_bytes()),
            ),
            (
                "ca.crt".to_owned(),
                ByteString(p.root_pem.clone().into_bytes()),
            ),
        ])
    }

    #[test]
    fn a_certificate_stays_until_two_thirds_of_its_life_unless_it_is_the_wrong_one() {
        let p = pki();
        let now = unix_now();
        let fresh = data(&p, "controller", now - 60, 3000);
        assert!(matches!(
            decide(Some(&fresh), "controller", &p.root_pem, now),
            Decision::Keep { .. }
        ));
        // 2000 s of 3000 gone: re-issue; a second earlier: keep.
        assert_eq!(
            decide(Some(&fresh), "controller", &p.root_pem, now - 60 + 2000),
            Decision::Issue("past two thirds of its life")
        );
        assert!(matches!(
            decide(Some(&fresh), "controller", &p.root_pem, now - 60 + 1999),
            Decision::Keep { .. }
        ));
        assert_eq!(
            decide(None, "controller", &p.root_pem, now),
            Decision::Issue("missing")
        );
        assert_eq!(
            decide(Some(&fresh), "cloud-api", &p.root_pem, now),
            Decision::Issue("another role")
        );
        assert_eq!(
            decide(Some(&fresh), "controller", &pki().root_pem, now),
            Decision::Issue("another root")
        );
        let mut partial = fresh.clone();
        partial.remove("tls.key");
        assert_eq!(
            decide(Some(&partial), "controller", &p.root_pem, now),
            Decision::Issue("incomplete")
        );
        let mut garbled = fresh;
        garbled.insert(
            "tls.crt".into(),
            ByteString(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
        );
        assert_eq!(
            decide(Some(&garbled), "controller", &p.root_pem, now),
            Decision::Issue("unreadable certificate")
        );
    }

    #[test]
    fn targets_parse_strictly() {
        assert_eq!(
            "nexus-system/nexus-controller-ca-client=controller".parse::<ClientCertTarget>(),
            Ok(ClientCertTarget {
                namespace: "nexus-system".into(),
                secret: "nexus-controller-ca-client".into(),
                role: "controller".into(),
            })
        );
        for bad in [
            "", "a", "a/b", "a/b=", "/b=r", "a/=r", "A/b=r", "a/b=R", "a/b/c=r",
        ] {
            assert!(bad.parse::<ClientCertTarget>().is_err(), "{bad}");
        }
        assert!("nexus-system/nexus-ca-root".parse::<RootTarget>().is_ok());
        assert!("nexus-ca-root".parse::<RootTarget>().is_err());
    }
}
