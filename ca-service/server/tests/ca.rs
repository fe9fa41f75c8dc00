//! End-to-end tests of the CA service against the real PostgreSQL (each test gets a fresh
//! database from `#[sqlx::test]`; `DATABASE_URL` defaults to the local server through this
//! crate's `.env`). Servers listen on 127.0.0.1:0 and are driven with the real tonic client.

use std::process::Command;
use std::sync::Arc;
use std::time::SystemTime;

use nexus_ca::kek::Kek;
use nexus_ca::{Error, RunningServer, Settings, merkle};
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;
use nexus_mic::{
    Attestation, Claim, ClaimValue, CrlSet, Digest32, ModelUri, NoRevocation, RevocationCheck,
    RevocationStatus, Verifier,
};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type AuthFn = fn(Request<()>) -> Result<Request<()>, Status>;
type Client = CertificateAuthorityClient<InterceptedService<Channel, AuthFn>>;

const TOKEN: &str = "test-token-0123456789abcdef";
const KEK_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn kek() -> Arc<Kek> {
    Arc::new(Kek::parse(KEK_HEX).unwrap_or_else(|e| panic!("test KEK: {e}")))
}

fn settings() -> Settings {
    Settings::for_tests(kek(), TOKEN, &["acme", "globex"])
}

async fn start(pool: &PgPool) -> Result<RunningServer, Error> {
    nexus_ca::start(pool.clone(), settings()).await
}

fn add_token(mut req: Request<()>) -> Result<Request<()>, Status> {
    let v = format!("Bearer {TOKEN}")
        .parse()
        .map_err(|_| Status::internal("token header"))?;
    req.metadata_mut().insert("authorization", v);
    Ok(req)
}

async fn client(server: &RunningServer) -> Result<Client, Box<dyn std::error::Error>> {
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))?
        .connect()
        .await?;
    Ok(
        CertificateAuthorityClient::with_interceptor(channel, add_token as AuthFn)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

fn csr(tenant: &str, model: &str, version: &str) -> Result<Vec<u8>, nexus_mic::Error> {
    Ok(nexus_mic::generate_model_key(&ModelUri::new(tenant, model, version)?)?.csr_der)
}

fn issue_req(id: &str, csr_der: Vec<u8>) -> Result<pb::IssueRequest, nexus_mic::Error> {
    Ok(pb::IssueRequest {
        tenant: "acme".into(),
        request_id: id.into(),
        csr_der,
        model: "coder".into(),
        version: "1.0".into(),
        attestation_der: Attestation::example().to_der()?,
        validity_seconds: 0,
    })
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Counts {
    certificates: i64,
    revocations: i64,
    audit: i64,
    idempotency: i64,
}

async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let q = |t: &'static str| async move {
        let sql = match t {
            "certificates" => "SELECT count(*) FROM certificates",
            "revocations" => "SELECT count(*) FROM revocations",
            "audit_log" => "SELECT count(*) FROM audit_log",
            _ => "SELECT count(*) FROM idempotency",
        };
        sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
    };
    Ok(Counts {
        certificates: q("certificates").await?,
        revocations: q("revocations").await?,
        audit: q("audit_log").await?,
        idempotency: q("idempotency").await?,
    })
}

fn openssl_verify(root: &[u8], inter: &[u8], leaf: &[u8]) -> TestResult {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED openssl check: openssl not on PATH");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let paths = [("root.pem", root), ("inter.pem", inter), ("leaf.pem", leaf)]
        .map(|(name, der)| (dir.path().join(name), der));
    for (p, der) in &paths {
        std::fs::write(p, nexus_mic::der_to_pem("CERTIFICATE", der))?;
    }
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(&paths[0].0)
        .arg("-untrusted")
        .arg(&paths[1].0)
        .arg(&paths[2].0)
        .output()?;
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Minimal HTTP/1.1 client: (status, content-type, body).
async fn http(
    server: &RunningServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String, Vec<u8>), Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(server.http_addr).await?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok((status, content_type, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol])?.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 4 + size..];
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn issue_over_grpc_verifies_and_is_idempotent(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let req = issue_req("req-1", csr("acme", "coder", "1.0")?)?;
    let cert = c.issue(req.clone()).await?.into_inner();
    assert_eq!(cert.model_uri, "nexus://acme/coder@1.0");
    assert!(cert.serial.len() >= 16, "≥ 64 random bits: {}", cert.serial);
    assert_eq!(cert.log_index, 0);
    assert_eq!(cert.not_after - cert.not_before, 24 * 3600);
    assert_eq!(
        cert.fingerprint_sha256,
        nexus_mic::fingerprint_sha256(&cert.leaf_der)
    );

    // nexus-mic's verifier accepts the chain.
    let verifier = Verifier::new(&[&cert.root_der])?;
    let verified = verifier.verify(
        &[&cert.leaf_der, &cert.chain_der],
        SystemTime::now(),
        &NoRevocation,
        &"".parse()?,
    )?;
    assert_eq!(verified.model.to_string(), cert.model_uri);
    assert_eq!(verified.attestation, Attestation::example());
    openssl_verify(&cert.root_der, &cert.chain_der, &cert.leaf_der)?;

    // Same id, same content: the same certificate, nothing new written.
    let before = counts(&pool).await?;
    let again = c.issue(req.clone()).await?.into_inner();
    assert_eq!(again, cert);
    assert_eq!(counts(&pool).await?, before);

    // Same id, different content: ALREADY_EXISTS, nothing written.
    let mut other = req.clone();
    other.csr_der = csr("acme", "coder", "1.0")?;
    let err = c.issue(other).await.err().ok_or("expected an error")?;
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(counts(&pool).await?, before);

    // Concurrent duplicates of a fresh id yield one certificate.
    let req2 = issue_req("req-2", csr("acme", "coder", "1.0")?)?;
    let (mut c1, mut c2) = (c.clone(), c.clone());
    let (a, b) = tokio::join!(c1.issue(req2.clone()), c2.issue(req2));
    assert_eq!(a?.into_inner(), b?.into_inner());
    assert_eq!(counts(&pool).await?.certificates, before.certificates + 1);

    // Without the token: UNAUTHENTICATED.
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))?
        .connect()
        .await?;
    let err = CertificateAuthorityClient::new(channel)
        .issue(issue_req("req-3", csr("acme", "coder", "1.0")?)?)
        .await
        .err()
        .ok_or("expected an error")?;
    assert_eq!(err.code(), Code::Unauthenticated);
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn renew_issues_a_new_serial_for_the_same_model(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let first = c
        .issue(issue_req("i-1", csr("acme", "coder", "1.0")?)?)
        .await?
        .into_inner();
    let renewed = c
        .renew(pb::RenewRequest {
            tenant: "acme".into(),
            request_id: "r-1".into(),
            serial: first.serial.clone(),
            csr_der: csr("acme", "coder", "1.0")?,
            attestation_der: Vec::new(),
            validity_seconds: 3600,
        })
        .await?
        .into_inner();
    assert_ne!(renewed.serial, first.serial);
    assert_eq!(renewed.renewed_from, first.serial);
    assert_eq!(renewed.model_uri, first.model_uri);
    assert_eq!(renewed.not_after - renewed.not_before, 3600);
    assert_eq!(renewed.log_index, 1);
    let verifier = Verifier::new(&[&renewed.root_der])?;
    let v = verifier.verify(
        &[&renewed.leaf_der, &renewed.chain_der],
        SystemTime::now(),
        &NoRevocation,
        &"".parse()?,
    )?;
    assert_eq!(v.attestation, Attestation::example());

    // Another tenant cannot renew it.
    let before = counts(&pool).await?;
    let err = c
        .renew(pb::RenewRequest {
            tenant: "globex".into(),
            request_id: "r-2".into(),
            serial: first.serial.clone(),
            csr_der: csr("acme", "coder", "1.0")?,
            attestation_der: Vec::new(),
            validity_seconds: 0,
        })
        .await
        .err()
        .ok_or("expected an error")?;
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(counts(&pool).await?, before);
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn revoke_shows_in_status_and_crl(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let cert = c
        .issue(issue_req("i-1", csr("acme", "coder", "1.0")?)?)
        .await?
        .into_inner();
    let status = c
        .status(pb::StatusRequest {
            tenant: "acme".into(),
            serial: cert.serial.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status.status(), pb::CertStatus::Good);

    // Another tenant's revoke: NOT_FOUND, nothing written.
    let before = counts(&pool).await?;
    let err = c
        .revoke(pb::RevokeRequest {
            tenant: "globex".into(),
            request_id: "x-1".into(),
            serial: cert.serial.clone(),
            reason: pb::RevocationReason::KeyCompromise as i32,
        })
        .await
        .err()
        .ok_or("expected an error")?;
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(counts(&pool).await?, before);

    let revoke = pb::RevokeRequest {
        tenant: "acme".into(),
        request_id: "v-1".into(),
        serial: cert.serial.clone(),
        reason: pb::RevocationReason::KeyCompromise as i32,
    };
    let r = c.revoke(revoke.clone()).await?.into_inner();
    assert!(!r.already_revoked);
    assert_eq!(r.reason(), pb::RevocationReason::KeyCompromise);
    let after = counts(&pool).await?;
    assert_eq!(after.revocations, 1);
    assert_eq!(after.audit, before.audit + 1);
    // Replay: same answer, nothing written.
    assert_eq!(c.revoke(revoke.clone()).await?.into_inner(), r);
    assert_eq!(counts(&pool).await?, after);
    // A second revocation under a new id reports the first.
    let again = c
        .revoke(pb::RevokeRequest {
            request_id: "v-2".into(),
            reason: pb::RevocationReason::Superseded as i32,
            ..revoke.clone()
        })
        .await?
        .into_inner();
    assert!(again.already_revoked);
    assert_eq!(again.reason(), pb::RevocationReason::KeyCompromise);
    assert_eq!(counts(&pool).await?, after);

    let status = c
        .status(pb::StatusRequest {
            tenant: "acme".into(),
            serial: cert.serial.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(status.status(), pb::CertStatus::Revoked);
    assert_eq!(status.reason(), pb::RevocationReason::KeyCompromise);
    let unknown = c
        .status(pb::StatusRequest {
            tenant: "globex".into(),
            serial: cert.serial.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(unknown.status(), pb::CertStatus::Unknown);

    // The CRL verifies under the intermediate and lists the serial.
    let crl = c.get_crl(pb::GetCrlRequest::default()).await?.into_inner();
    assert_eq!(crl.crl_number, r.crl_number);
    let mut set = CrlSet::new();
    assert_eq!(set.add_crl(&crl.crl_der, &cert.chain_der)?, 1);
    let leaf = nexus_mic::Mic::from_der(&cert.leaf_der)?;
    assert_eq!(leaf.serial.replace(':', "").to_lowercase(), cert.serial);
    {
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&cert.leaf_der)?;
        assert_eq!(
            set.status(parsed.issuer().as_raw(), parsed.raw_serial()),
            RevocationStatus::Revoked(nexus_mic::RevocationReason::KeyCompromise)
        );
        let (_, crl_parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.crl_der)?;
        let serials: Vec<String> = crl_parsed
            .iter_revoked_certificates()
            .map(|e| {
                hex::encode(e.raw_serial())
                    .trim_start_matches("00")
                    .to_owned()
            })
            .collect();
        assert!(serials.contains(&cert.serial), "{serials:?}");
    }
    // The verifier refuses it with the CRL.
    let verifier = Verifier::new(&[&cert.root_der])?;
    assert!(
        verifier
            .verify(
                &[&cert.leaf_der, &cert.chain_der],
                SystemTime::now(),
                &set,
                &"".parse()?,
            )
            .is_err()
    );

    // REST: the CRL is public, DER, application/pkix-crl.
    let (code, ctype, body) = http(&server, "GET", "/v1/crl", None, None).await?;
    assert_eq!(code, 200);
    assert_eq!(ctype, "application/pkix-crl");
    assert_eq!(CrlSet::new().add_crl(&body, &cert.chain_der)?, 1);
    // Renewing a revoked MIC is refused.
    let err = c
        .renew(pb::RenewRequest {
            tenant: "acme".into(),
            request_id: "r-1".into(),
            serial: cert.serial.clone(),
            csr_der: csr("acme", "coder", "1.0")?,
            attestation_der: Vec::new(),
            validity_seconds: 0,
        })
        .await
        .err()
        .ok_or("expected an error")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn consistency_proofs_link_successive_tree_heads(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let mut heads = vec![
        c.get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
            .await?
            .into_inner(),
    ];
    for round in 0..4 {
        for i in 0..(round * 2 + 1) {
            c.issue(issue_req(
                &format!("c-{round}-{i}"),
                csr("acme", "coder", "1.0")?,
            )?)
            .await?;
        }
        heads.push(
            c.get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
                .await?
                .into_inner(),
        );
    }
    let sizes: Vec<u64> = heads.iter().map(|h| h.tree_size).collect();
    assert_eq!(sizes, [0, 1, 4, 9, 16]);
    for (i, old) in heads.iter().enumerate() {
        for new in &heads[i..] {
            let p = c
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    first: old.tree_size,
                    second: new.tree_size,
                })
                .await?
                .into_inner();
            let proof: Vec<merkle::Hash> = p
                .proof
                .iter()
                .map(|h| h.as_slice().try_into())
                .collect::<Result<_, _>>()?;
            let old_root: merkle::Hash = old.root_hash.as_slice().try_into()?;
            let new_root: merkle::Hash = new.root_hash.as_slice().try_into()?;
            assert!(
                merkle::verify_consistency(
                    old.tree_size,
                    new.tree_size,
                    &old_root,
                    &new_root,
                    &proof
                ),
                "{} -> {}",
                old.tree_size,
                new.tree_size
            );
            if old.tree_size > 0 && old.tree_size < new.tree_size {
                let mut forged = old_root;
                forged[0] ^= 0x80;
                assert!(!merkle::verify_consistency(
                    old.tree_size,
                    new.tree_size,
                    &forged,
                    &new_root,
                    &proof
                ));
            }
        }
    }
    // second = 0 is the current head; a size beyond it is refused.
    let p = c
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first: 3,
            second: 0,
        })
        .await?
        .into_inner();
    assert_eq!((p.first, p.second), (3, 16));
    assert_eq!(p.sth.map(|s| s.tree_size), Some(16));
    let err = c
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first: 3,
            second: 17,
        })
        .await
        .err()
        .ok_or("expected an error")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    // REST, public like the tree head.
    let (code, _, body) = http(
        &server,
        "GET",
        "/v1/log/consistency?first=4&second=9",
        None,
        None,
    )
    .await?;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(v["second"], 9);
    assert!(v["consistency"].as_array().is_some_and(|a| !a.is_empty()));
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn inclusion_proofs_verify_against_the_signed_tree_head(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let mut certs = Vec::new();
    for i in 0..7 {
        let cert = c
            .issue(issue_req(&format!("i-{i}"), csr("acme", "coder", "1.0")?)?)
            .await?
            .into_inner();
        certs.push(cert);
    }
    let sth = c
        .get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
        .await?
        .into_inner();
    assert_eq!(sth.tree_size, 7);
    // The signature is ECDSA P-256 over the RFC 6962 TreeHeadSignature.
    let point = &sth.log_public_key_der[sth.log_public_key_der.len() - 65..];
    let root: merkle::Hash = sth.root_hash.as_slice().try_into()?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(
            &nexus_ca::ca::sth_signed_data(sth.timestamp_ms, sth.tree_size, &root),
            &sth.signature,
        )
        .map_err(|_| "STH signature does not verify")?;
    let leaves: Vec<merkle::Hash> = certs
        .iter()
        .map(|c| merkle::leaf_hash(&c.leaf_der))
        .collect();
    assert_eq!(merkle::naive::root(&leaves), root);

    for cert in &certs {
        let p = c
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                tenant: "acme".into(),
                serial: cert.serial.clone(),
            })
            .await?
            .into_inner();
        let path: Vec<merkle::Hash> = p
            .audit_path
            .iter()
            .map(|h| h.as_slice().try_into())
            .collect::<Result<_, _>>()?;
        let sth = p.sth.ok_or("proof without STH")?;
        let root: merkle::Hash = sth.root_hash.as_slice().try_into()?;
        assert_eq!(p.leaf_hash, merkle::leaf_hash(&cert.leaf_der));
        assert!(merkle::verify_inclusion(
            &merkle::leaf_hash(&cert.leaf_der),
            p.leaf_index,
            sth.tree_size,
            &path,
            &root
        ));
    }
    // Other tenants get NOT_FOUND.
    let err = c
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            tenant: "globex".into(),
            serial: certs[0].serial.clone(),
        })
        .await
        .err()
        .ok_or("expected an error")?;
    assert_eq!(err.code(), Code::NotFound);

    // REST: STH public, proof with token.
    let (code, _, body) = http(&server, "GET", "/v1/log/sth", None, None).await?;
    assert_eq!(code, 200);
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(json["tree_size"], 7);
    let path = format!("/v1/log/proof/{}?tenant=acme", certs[3].serial);
    let (code, _, body) = http(&server, "GET", &path, Some(TOKEN), None).await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(json["leaf_index"], 3);
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn bad_input_is_refused_and_writes_nothing(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let good = c
        .issue(issue_req("good", csr("acme", "coder", "1.0")?)?)
        .await?
        .into_inner();
    let before = counts(&pool).await?;
    let base = issue_req("bad", csr("acme", "coder", "1.0")?)?;
    let mut tampered = base.csr_der.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x40;

    let cases: Vec<(&str, pb::IssueRequest, Code, &str)> = vec![
        (
            "malformed CSR",
            pb::IssueRequest {
                csr_der: b"not a csr".to_vec(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_csr",
        ),
        (
            "CSR with a bad signature",
            pb::IssueRequest {
                csr_der: tampered,
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_csr",
        ),
        (
            "CSR for another model",
            pb::IssueRequest {
                csr_der: csr("acme", "other", "1.0")?,
                ..base.clone()
            },
            Code::InvalidArgument,
            "csr_mismatch",
        ),
        (
            "unknown tenant",
            pb::IssueRequest {
                tenant: "nobody".into(),
                csr_der: csr("nobody", "coder", "1.0")?,
                ..base.clone()
            },
            Code::NotFound,
            "unknown_tenant",
        ),
        (
            "oversized attestation",
            pb::IssueRequest {
                attestation_der: vec![0x30; 17 * 1024],
                ..base.clone()
            },
            Code::InvalidArgument,
            "attestation_too_large",
        ),
        (
            "invalid attestation",
            pb::IssueRequest {
                attestation_der: vec![0x30, 0x03, 0x02, 0x01, 0x09],
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_attestation",
        ),
        (
            "validity above the maximum",
            pb::IssueRequest {
                validity_seconds: 2160 * 3600 + 1,
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_validity",
        ),
        (
            "malformed model URI",
            pb::IssueRequest {
                version: "1 0".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_model_uri",
        ),
        (
            "request id reused with another body",
            pb::IssueRequest {
                request_id: "good".into(),
                ..base.clone()
            },
            Code::AlreadyExists,
            "request_id_reused",
        ),
        (
            "empty request id",
            pb::IssueRequest {
                request_id: String::new(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
    ];
    for (what, req, code, label) in cases {
        let err = c.issue(req).await.err().ok_or(what)?;
        assert_eq!(err.code(), code, "{what}: {err:?}");
        let got = err
            .metadata()
            .get("x-nexus-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(got, label, "{what}");
        assert_eq!(counts(&pool).await?, before, "{what} wrote something");
    }

    // Unknown serials.
    let err = c
        .revoke(pb::RevokeRequest {
            tenant: "acme".into(),
            request_id: "v-1".into(),
            serial: "0badc0ffee".into(),
            reason: 1,
        })
        .await
        .err()
        .ok_or("revoke unknown")?;
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .renew(pb::RenewRequest {
            tenant: "acme".into(),
            request_id: "r-1".into(),
            serial: "0badc0ffee".into(),
            csr_der: csr("acme", "coder", "1.0")?,
            attestation_der: Vec::new(),
            validity_seconds: 0,
        })
        .await
        .err()
        .ok_or("renew unknown")?;
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .revoke(pb::RevokeRequest {
            tenant: "acme".into(),
            request_id: "v-2".into(),
            serial: good.serial.clone(),
            reason: 8,
        })
        .await
        .err()
        .ok_or("removeFromCRL")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    // Request id of an issuance reused for a revocation.
    let err = c
        .revoke(pb::RevokeRequest {
            tenant: "acme".into(),
            request_id: "good".into(),
            serial: good.serial.clone(),
            reason: 1,
        })
        .await
        .err()
        .ok_or("id reuse")?;
    assert_eq!(err.code(), Code::AlreadyExists);
    // Inactive tenant.
    sqlx::query("UPDATE tenants SET active = false WHERE name = 'acme'")
        .execute(&pool)
        .await?;
    let err = c
        .issue(issue_req("inactive", csr("acme", "coder", "1.0")?)?)
        .await
        .err()
        .ok_or("inactive tenant")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(counts(&pool).await?, before);

    // REST errors are JSON with stable codes.
    let (code, _, body) = http(
        &server,
        "POST",
        "/v1/certificates",
        None,
        Some(&serde_json::json!({})),
    )
    .await?;
    assert_eq!(code, 401);
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(json["error"]["code"], "unauthenticated");
    let (code, _, body) = http(
        &server,
        "POST",
        "/v1/certificates",
        Some(TOKEN),
        Some(&serde_json::json!({"tenant": "acme"})),
    )
    .await?;
    assert_eq!(code, 400);
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(json["error"]["code"], "invalid_argument");
    assert_eq!(counts(&pool).await?, before);

    // The failures counter saw them.
    let (code, _, body) = http(&server, "GET", "/metrics", None, None).await?;
    assert_eq!(code, 200);
    let text = String::from_utf8(body)?;
    assert!(text.contains("nexus_ca_failures_total"), "{text}");
    assert!(text.contains("reason=\"csr_mismatch\""), "{text}");
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn rest_issue_status_and_probes(pool: PgPool) -> TestResult {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let server = start(&pool).await?;
    let body = serde_json::json!({
        "tenant": "acme",
        "request_id": "rest-1",
        "csr_der": b64.encode(csr("acme", "coder", "1.0")?),
        "model": "coder",
        "version": "1.0",
        "attestation_der": b64.encode(Attestation::example().to_der()?),
    });
    let (code, _, resp) = http(
        &server,
        "POST",
        "/v1/certificates",
        Some(TOKEN),
        Some(&body),
    )
    .await?;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&resp));
    let cert: serde_json::Value = serde_json::from_slice(&resp)?;
    let serial = cert["serial"].as_str().ok_or("serial")?.to_owned();
    // Replaying over REST answers the same.
    let (code, _, resp2) = http(
        &server,
        "POST",
        "/v1/certificates",
        Some(TOKEN),
        Some(&body),
    )
    .await?;
    assert_eq!(code, 201);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&resp2)?, cert);

    let path = format!("/v1/certificates/{serial}/status?tenant=acme");
    let (code, _, resp) = http(&server, "GET", &path, Some(TOKEN), None).await?;
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_slice(&resp)?;
    assert_eq!(st["status"], "good");
    let path = format!("/v1/certificates/{serial}/revoke");
    let revoke =
        serde_json::json!({"tenant": "acme", "request_id": "rv-1", "reason": "superseded"});
    let (code, _, resp) = http(&server, "POST", &path, Some(TOKEN), Some(&revoke)).await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    let path = format!("/v1/certificates/{serial}/status?tenant=acme");
    let (_, _, resp) = http(&server, "GET", &path, Some(TOKEN), None).await?;
    let st: serde_json::Value = serde_json::from_slice(&resp)?;
    assert_eq!(st["status"], "revoked");
    assert_eq!(st["reason"], "superseded");

    assert_eq!(http(&server, "GET", "/healthz", None, None).await?.0, 200);
    assert_eq!(http(&server, "GET", "/readyz", None, None).await?.0, 200);
    let (_, _, m) = http(&server, "GET", "/metrics", None, None).await?;
    let m = String::from_utf8(m)?;
    assert!(m.contains("nexus_ca_issued_total 1"), "{m}");
    assert!(m.contains("nexus_ca_revoked_total 1"), "{m}");
    assert!(m.contains("nexus_ca_issue_duration_seconds_count 1"), "{m}");
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn audit_log_is_append_only(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    c.issue(issue_req("i-1", csr("acme", "coder", "1.0")?)?)
        .await?;
    let before = counts(&pool).await?;
    assert!(
        before.audit >= 2,
        "ca_init, tenant seeds and the issue are audited"
    );
    for sql in [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.err().ok_or(sql)?;
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(counts(&pool).await?, before);
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn keys_reload_across_restart_and_wrong_kek_fails(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let first = c
        .issue(issue_req("i-1", csr("acme", "coder", "1.0")?)?)
        .await?
        .into_inner();
    let vk = server.ca().zk_verifying_key().fingerprint();
    server.shutdown().await?;

    // Restart: same root, same intermediate, same ZK key, the log goes on.
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let second = c
        .issue(issue_req("i-2", csr("acme", "coder", "1.0")?)?)
        .await?
        .into_inner();
    assert_eq!(second.root_der, first.root_der);
    assert_eq!(second.chain_der, first.chain_der);
    assert_eq!(second.log_index, 1);
    assert_eq!(server.ca().zk_verifying_key().fingerprint(), vk);
    let sth = c
        .get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
        .await?
        .into_inner();
    assert_eq!(sth.tree_size, 2);
    server.shutdown().await?;

    // A different KEK cannot open the stored keys: start fails, saying so.
    let mut s = settings();
    s.kek = Arc::new(Kek::parse(&"22".repeat(32))?);
    let err = nexus_ca::start(pool.clone(), s)
        .await
        .err()
        .ok_or("start with a wrong KEK succeeded")?;
    assert!(matches!(err, Error::Kek(_)), "{err:?}");
    assert!(err.to_string().contains("KEK"), "{err}");
    // The stored keys are sealed: no PEM private key in the table.
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed_key FROM ca_keys")
        .fetch_all(&pool)
        .await?;
    assert_eq!(sealed.len(), 3);
    for s in sealed {
        assert!(!String::from_utf8_lossy(&s).contains("PRIVATE KEY"));
    }
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn claim_proofs_are_checked_against_the_certificate(pool: PgPool) -> TestResult {
    let server = start(&pool).await?;
    let mut c = client(&server).await?;
    let vk = c
        .get_zk_verifying_key(pb::GetZkVerifyingKeyRequest {
            tenant: "acme".into(),
            include_proving_key: true,
        })
        .await?
        .into_inner();
    assert_eq!(vk.fingerprint, server.ca().zk_verifying_key().fingerprint());
    let pk = nexus_zk::ProvingKey::from_bytes(&vk.proving_key)?;

    // A MIC whose attestation commits to an accuracy of 0.9731.
    let score = 9731;
    let blinding = nexus_zk::random_blinding()?;
    let commitment = nexus_zk::commit(score, &blinding);
    let mut att = Attestation::example();
    att.benchmarks.push(Claim {
        name: "accuracy".into(),
        value: ClaimValue::Commitment(Digest32(commitment.to_bytes())),
        threshold: None,
    });
    let mut req = issue_req("zk-1", csr("acme", "coder", "1.0")?)?;
    req.attestation_der = att.to_der()?;
    let cert = c.issue(req).await?.into_inner();

    let proof = nexus_zk::ClaimProof::create(&pk, "accuracy", score, &blinding, 9000)?;
    let verify = |min: u64, claim: &str, json: String| pb::VerifyClaimProofRequest {
        tenant: "acme".into(),
        serial: cert.serial.clone(),
        claim: claim.into(),
        min_threshold: min,
        claim_proof_json: json,
    };
    let ok = c
        .verify_claim_proof(verify(9000, "accuracy", proof.to_json()))
        .await?
        .into_inner();
    assert!(ok.valid, "{}", ok.reason);
    assert_eq!(ok.proven_threshold, 9000);
    assert_eq!(ok.commitment_hex, commitment.to_hex());
    // Requiring more than proven: not valid.
    let high = c
        .verify_claim_proof(verify(9500, "accuracy", proof.to_json()))
        .await?
        .into_inner();
    assert!(!high.valid);
    // A proof about another commitment (the example's humaneval claim): not valid.
    let other = c
        .verify_claim_proof(verify(9000, "humaneval", proof.to_json()))
        .await?
        .into_inner();
    assert!(!other.valid);
    // A plain claim cannot be proven; garbage JSON is INVALID_ARGUMENT.
    let err = c
        .verify_claim_proof(verify(0, "mmlu", proof.to_json()))
        .await
        .err()
        .ok_or("plain claim")?;
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .verify_claim_proof(verify(0, "accuracy", "{".into()))
        .await
        .err()
        .ok_or("bad json")?;
    assert_eq!(err.code(), Code::InvalidArgument);

    // REST.
    let body = serde_json::json!({
        "tenant": "acme", "serial": cert.serial, "claim": "accuracy", "min_threshold": 9000,
        "claim_proof": serde_json::from_str::<serde_json::Value>(&proof.to_json())?,
    });
    let (code, _, resp) = http(&server, "POST", "/v1/zk/verify", Some(TOKEN), Some(&body)).await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    let v: serde_json::Value = serde_json::from_slice(&resp)?;
    assert_eq!(v["valid"], true);
    server.shutdown().await?;
    Ok(())
}

#[sqlx::test(migrations = "./migrations")]
async fn replicas_in_one_process_share_the_log_and_the_crl(pool: PgPool) -> TestResult {
    // Two CA cores on one database (each with its own writer), interleaved.
    let a = start(&pool).await?;
    let b = start(&pool).await?;
    let (mut ca, mut cb) = (client(&a).await?, client(&b).await?);
    let mut certs = Vec::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        certs.push(
            c.issue(issue_req(
                &format!("rep-{i}"),
                csr("acme", "coder", "1.0")?,
            )?)
            .await?
            .into_inner(),
        );
    }
    let indices: Vec<u64> = certs.iter().map(|c| c.log_index).collect();
    assert_eq!(indices, [0, 1, 2, 3, 4, 5]);
    let (ha, hb) = (
        ca.get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
            .await?
            .into_inner(),
        cb.get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
            .await?
            .into_inner(),
    );
    assert_eq!((ha.tree_size, &ha.root_hash), (6, &hb.root_hash));
    // Each learned the other's three entries from the database.
    for s in [&a, &b] {
        let m = s.ca().metrics().encode();
        assert!(
            m.lines()
                .any(|l| l == "nexus_ca_log_synced_entries_total 3"),
            "{m}"
        );
    }
    // An inclusion proof from B for a MIC A issued.
    let p = cb
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            tenant: "acme".into(),
            serial: certs[0].serial.clone(),
        })
        .await?
        .into_inner();
    let path: Vec<merkle::Hash> = p
        .audit_path
        .iter()
        .map(|h| h.as_slice().try_into())
        .collect::<Result<_, _>>()?;
    assert!(merkle::verify_inclusion(
        &merkle::leaf_hash(&certs[0].leaf_der),
        0,
        6,
        &path,
        &hb.root_hash.as_slice().try_into()?
    ));
    // A revocation on A is on B's CRL at once.
    ca.revoke(pb::RevokeRequest {
        tenant: "acme".into(),
        request_id: "rep-revoke".into(),
        serial: certs[1].serial.clone(),
        reason: pb::RevocationReason::KeyCompromise as i32,
    })
    .await?;
    let crl = cb.get_crl(pb::GetCrlRequest::default()).await?.into_inner();
    let mut set = CrlSet::new();
    set.add_crl(&crl.crl_der, &certs[1].chain_der)?;
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&certs[1].leaf_der)?;
    assert_eq!(
        set.status(parsed.issuer().as_raw(), parsed.raw_serial()),
        RevocationStatus::Revoked(nexus_mic::RevocationReason::KeyCompromise)
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
