//! CA key material: created on first start, loaded afterwards, private keys sealed with the KEK.
//!
//! Everything lives in PostgreSQL (`ca_keys`, `zk_keys`), so a CA replica needs only the
//! database URL and the KEK. Creation runs under a transaction-scoped advisory lock, so two
//! replicas starting together on an empty database create one set of keys.
//!
//! * `root`: self-signed, 20 years. Its key is stored sealed too, so the service can re-sign an
//!   intermediate; a deployment that keeps its root offline deletes that row after first start
//!   (the service needs only the intermediate at run time).
//! * `intermediate`: signed by the root, `pathLen 0`, 5 years; signs MICs and CRLs.
//! * `log`: a dedicated ECDSA P-256 key for signed tree heads (no certificate; the public key is
//!   published with every tree head).
//! * ZK: Groth16 keys from `nexus_zk::setup`, not secret (see the crate docs).

use std::fmt;
use std::time::{Duration, SystemTime};

use nexus_mic::{CertificateAuthority, der_to_pem};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use sqlx::{PgPool, Row};

use crate::Error;
use crate::kek::Kek;

const ROOT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Arbitrary constant for `pg_advisory_xact_lock` (ASCII "nexusca").
const INIT_LOCK: i64 = 0x006e_6578_7573_6361;

/// DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The signing key of the issuance log.
pub struct LogKey {
    key: EcdsaKeyPair,
    spki_der: Vec<u8>,
    rng: SystemRandom,
}

impl fmt::Debug for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogKey")
            .field("spki", &hex::encode(&self.spki_der))
            .finish_non_exhaustive()
    }
}

impl LogKey {
    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
            .map_err(|e| Error::State(format!("log key: {e}")))?;
        let mut spki_der = P256_SPKI_PREFIX.to_vec();
        spki_der.extend_from_slice(key.public_key().as_ref());
        Ok(Self { key, spki_der, rng })
    }

    /// ECDSA P-256 / SHA-256 signature (ASN.1 DER) over `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        self.key
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::State("log key signing failed".into()))
    }

    /// SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The raw uncompressed public point (for `ring::signature::UnparsedPublicKey`).
    pub fn public_point(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }
}

/// All CA key material in memory.
#[derive(Debug)]
pub struct CaKeys {
    /// Root CA certificate, DER.
    pub root_der: Vec<u8>,
    /// The online issuing CA.
    pub intermediate: CertificateAuthority,
    /// Signs tree heads.
    pub log: LogKey,
    /// Groth16 verifying key.
    pub zk_vk: nexus_zk::VerifyingKey,
    /// Groth16 proving key, serialised (served to provers, not used by the CA).
    pub zk_pk_bytes: Vec<u8>,
}

struct Stored {
    cert_der: Option<Vec<u8>>,
    sealed: Vec<u8>,
}

async fn read_key(pool: &PgPool, name: &str) -> Result<Option<Stored>, Error> {
    let row = sqlx::query("SELECT cert_der, sealed_key FROM ca_keys WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(Stored {
            cert_der: r.try_get("cert_der")?,
            sealed: r.try_get("sealed_key")?,
        })
    })
    .transpose()
}

fn ca_from_stored(kek: &Kek, name: &str, stored: &Stored) -> Result<CertificateAuthority, Error> {
    let der = stored
        .cert_der
        .as_deref()
        .ok_or_else(|| Error::State(format!("{name} has no certificate")))?;
    let key_pem = kek.open(&format!("nexus-ca/{name}"), &stored.sealed)?;
    let key_pem =
        String::from_utf8(key_pem).map_err(|_| Error::State(format!("{name} key is not PEM")))?;
    Ok(CertificateAuthority::from_pem(
        &der_to_pem("CERTIFICATE", der),
        &key_pem,
    )?)
}

/// Loads the CA keys, creating them on an empty database. A KEK that does not open the stored
/// keys is an error ([`Error::Kek`]); nothing is overwritten.
pub async fn load_or_create(pool: &PgPool, kek: &Kek) -> Result<CaKeys, Error> {
    if read_key(pool, "intermediate").await?.is_none() {
        create(pool, kek).await?;
    }
    let root = read_key(pool, "root")
        .await?
        .and_then(|s| s.cert_der)
        .ok_or_else(|| Error::State("root certificate missing".into()))?;
    let inter = read_key(pool, "intermediate")
        .await?
        .ok_or_else(|| Error::State("intermediate CA missing".into()))?;
    let intermediate = ca_from_stored(kek, "intermediate", &inter)?;
    let log = read_key(pool, "log")
        .await?
        .ok_or_else(|| Error::State("log key missing".into()))?;
    let log = LogKey::from_pkcs8(&kek.open("nexus-ca/log", &log.sealed)?)?;
    let (zk_vk, zk_pk_bytes) = load_or_create_zk(pool).await?;
    tracing::info!(
        kek_id = kek.id(),
        intermediate = ?intermediate,
        root_sha256 = %nexus_mic::fingerprint_sha256(&root),
        zk_vk = %zk_vk.fingerprint(),
        "CA keys loaded"
    );
    Ok(CaKeys {
        root_der: root,
        intermediate,
        log,
        zk_vk,
        zk_pk_bytes,
    })
}

async fn create(pool: &PgPool, kek: &Kek) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INIT_LOCK)
        .execute(&mut *tx)
        .await?;
    let exists: Option<String> =
        sqlx::query_scalar("SELECT name FROM ca_keys WHERE name = 'intermediate'")
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_some() {
        return Ok(());
    }
    // Backdated an hour so that MICs backdated for clock skew stay inside the CA's window.
    let now = SystemTime::now() - Duration::from_secs(3600);
    let root = CertificateAuthority::new_root("Nexus Root CA", now, ROOT_VALIDITY)?;
    let inter = root.new_intermediate("Nexus Issuing CA 1", now, INTERMEDIATE_VALIDITY)?;
    let rng = SystemRandom::new();
    let log_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| Error::State("log key generation failed".into()))?;
    let log = LogKey::from_pkcs8(log_pkcs8.as_ref())?;
    for (name, cert, public, sealed) in [
        (
            "root",
            Some(root.cert_der().to_vec()),
            spki_of(root.cert_der())?,
            kek.seal("nexus-ca/root", root.key_pem().as_bytes())?,
        ),
        (
            "intermediate",
            Some(inter.cert_der().to_vec()),
            spki_of(inter.cert_der())?,
            kek.seal("nexus-ca/intermediate", inter.key_pem().as_bytes())?,
        ),
        (
            "log",
            None,
            log.spki_der().to_vec(),
            kek.seal("nexus-ca/log", log_pkcs8.as_ref())?,
        ),
    ] {
        sqlx::query(
            "INSERT INTO ca_keys (name, cert_der, public_der, sealed_key, kek_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(cert)
        .bind(public)
        .bind(sealed)
        .bind(kek.id())
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO audit_log (action, detail) VALUES ('ca_init', jsonb_build_object('root_sha256', $1::text, 'intermediate_sha256', $2::text, 'kek_id', $3::text))",
    )
    .bind(nexus_mic::fingerprint_sha256(root.cert_der()))
    .bind(nexus_mic::fingerprint_sha256(inter.cert_der()))
    .bind(kek.id())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!("created root CA, intermediate CA and log key");
    Ok(())
}

fn spki_of(cert_der: &[u8]) -> Result<Vec<u8>, Error> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| Error::State(format!("own certificate does not parse: {e}")))?;
    Ok(cert.public_key().raw.to_vec())
}

async fn load_or_create_zk(pool: &PgPool) -> Result<(nexus_zk::VerifyingKey, Vec<u8>), Error> {
    let row = sqlx::query("SELECT verifying_key, proving_key FROM zk_keys WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    let (vk, pk): (Vec<u8>, Vec<u8>) = match row {
        Some(r) => (r.try_get("verifying_key")?, r.try_get("proving_key")?),
        None => {
            let (pk, vk) = tokio::task::spawn_blocking(|| {
                let mut rng = nexus_zk::os_rng()?;
                nexus_zk::setup(&mut rng)
            })
            .await
            .map_err(|e| Error::State(format!("ZK setup task: {e}")))??;
            let (vk, pk) = (vk.to_bytes(), pk.to_bytes());
            sqlx::query(
                "INSERT INTO zk_keys (id, verifying_key, proving_key) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&vk)
            .bind(&pk)
            .execute(pool)
            .await?;
            let r = sqlx::query("SELECT verifying_key, proving_key FROM zk_keys WHERE id = 1")
                .fetch_one(pool)
                .await?;
            tracing::info!("ran the Groth16 setup for claim proofs");
            (r.try_get("verifying_key")?, r.try_get("proving_key")?)
        }
    };
    Ok((nexus_zk::VerifyingKey::from_bytes(&vk)?, pk))
}
