//! End-to-end tests of the MIC library: issue a hierarchy, issue MICs, verify or reject them.

use std::process::Command;
use std::time::{Duration, SystemTime};

use nexus_mic::{
    ATTESTATION_OID, Attestation, CertificateAuthority, ClaimValue, CrlSet, Csr, Error,
    KeyAlgorithm, Mic, MicRequest, ModelUri, NoRevocation, Rejection, Requirement, RevocationCheck,
    RevocationReason, RevocationStatus, RevokedEntry, Verifier, generate_model_key,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair, SanType,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A root, an intermediate, and one MIC for `nexus://acme/coder@1.0.0`.
struct Pki {
    now: SystemTime,
    root: CertificateAuthority,
    inter: CertificateAuthority,
    model: ModelUri,
    leaf: Vec<u8>,
    leaf_serial: Vec<u8>,
}

impl Pki {
    fn new() -> Result<Self, Error> {
        Self::with(Attestation::example())
    }

    fn with(attestation: Attestation) -> Result<Self, Error> {
        let now = SystemTime::now();
        let root = CertificateAuthority::new_root("Nexus Root CA", now - HOUR, 3650 * DAY)?;
        let inter = root.new_intermediate("Nexus Intermediate CA", now - HOUR, 365 * DAY)?;
        let model: ModelUri = "nexus://acme/coder@1.0.0".parse()?;
        let key = generate_model_key(&model)?;
        let csr = Csr::from_pem(&key.csr_pem)?;
        let issued = inter.issue_mic(&MicRequest {
            csr: &csr,
            model: &model,
            attestation: &attestation,
            not_before: now - Duration::from_secs(60),
            validity: nexus_mic::DEFAULT_MIC_VALIDITY,
        })?;
        Ok(Self {
            now,
            root,
            inter,
            model,
            leaf: issued.der,
            leaf_serial: issued.serial,
        })
    }

    fn verifier(&self) -> Result<Verifier, Error> {
        Verifier::new(&[self.root.cert_der()])
    }

    fn chain(&self) -> Vec<Vec<u8>> {
        vec![self.leaf.clone(), self.inter.cert_der().to_vec()]
    }

    fn verify(&self, chain: &[Vec<u8>], req: &str) -> Result<nexus_mic::VerifiedMic, Rejection> {
        let verifier = self
            .verifier()
            .map_err(|e| Rejection::NotAMic(e.to_string()))?;
        let req: Requirement = req
            .parse()
            .map_err(|e: Error| Rejection::NotAMic(e.to_string()))?;
        verifier.verify(chain, self.now, &NoRevocation, &req)
    }

    /// An rcgen issuer for the intermediate, to forge certificates our API would not make.
    fn rcgen_issuer(&self) -> Result<Issuer<'static, KeyPair>, Box<dyn std::error::Error>> {
        let key = KeyPair::from_pem(&self.inter.key_pem())?;
        Ok(Issuer::from_ca_cert_pem(&self.inter.cert_pem(), key)?)
    }

    /// A certificate signed by the intermediate with arbitrary parameters.
    fn forge(
        &self,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let issuer = self.rcgen_issuer()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "forged");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        params.use_authority_key_identifier_extension = true;
        params.is_ca = IsCa::ExplicitNoCa;
        edit(&mut params);
        let key = KeyPair::generate()?;
        Ok(params.signed_by(&key, &issuer)?.der().to_vec())
    }
}

fn expect_rejection(result: Result<nexus_mic::VerifiedMic, Rejection>) -> Rejection {
    match result {
        Ok(v) => panic!("expected a rejection, got {v:?}"),
        Err(r) => r,
    }
}

#[test]
fn issued_mic_verifies_and_reads_back() -> TestResult {
    let pki = Pki::new()?;
    let req = "capability=code-generation,context>=128000,issuer=Nexus Intermediate CA,benchmark=humaneval,safety=toxicity,modality=text,tenant=acme";
    let verified = pki.verify(&pki.chain(), req)?;
    assert_eq!(verified.model, pki.model);
    assert_eq!(verified.attestation, Attestation::example());
    assert_eq!(verified.issuer, "Nexus Intermediate CA");
    assert_eq!(verified.anchor, "Nexus Root CA");
    assert_eq!(verified.serial, hex::encode(&pki.leaf_serial));

    let mic = Mic::from_der(&pki.leaf)?;
    assert_eq!(mic.model, pki.model);
    assert_eq!(mic.attestation, Attestation::example());
    assert_eq!(mic.key_algorithm, Some(KeyAlgorithm::EcdsaP256));
    assert!(mic.not_after - mic.not_before <= 24 * 3600 + 60);
    let text = mic.to_string();
    for needle in [
        "nexus://acme/coder@1.0.0",
        "humaneval",
        "committed",
        "Acme AI Labs",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let json = serde_json::to_string(&mic)?;
    assert!(
        json.contains("\"model\":\"nexus://acme/coder@1.0.0\""),
        "{json}"
    );
    assert_eq!(
        Mic::from_pem(&nexus_mic::der_to_pem("CERTIFICATE", &pki.leaf))?,
        mic
    );

    // `NEXUS_MIC_FUZZ_SEEDS=$PWD/fuzz/seeds cargo test -p nexus-mic --test mic` refreshes the
    // fuzzers' seed inputs from real encodings.
    if let Some(dir) = std::env::var_os("NEXUS_MIC_FUZZ_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(dir.join("attestation_der"))?;
        std::fs::create_dir_all(dir.join("mic_der"))?;
        std::fs::write(
            dir.join("attestation_der/example.der"),
            Attestation::example().to_der()?,
        )?;
        std::fs::write(dir.join("mic_der/leaf.der"), &pki.leaf)?;
    }
    Ok(())
}

#[test]
fn leaf_is_shaped_as_documented() -> TestResult {
    use x509_parser::prelude::*;
    let pki = Pki::new()?;
    let (_, cert) = X509Certificate::from_der(&pki.leaf)?;
    assert_eq!(cert.version(), X509Version::V3);
    let serial = cert.raw_serial();
    assert!(serial.len() >= 8 && serial.len() <= 16 && serial[0] & 0x80 == 0);
    let ku = cert.key_usage()?.ok_or("no keyUsage")?;
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = cert.extended_key_usage()?.ok_or("no EKU")?;
    assert!(eku.value.client_auth && eku.value.server_auth);
    assert!(!cert.is_ca());
    let has = |oid: &[u8]| cert.extensions().iter().any(|e| e.oid.as_bytes() == oid);
    assert!(has(&[0x55, 0x1D, 0x0E]), "SKI");
    assert!(has(&[0x55, 0x1D, 0x23]), "AKI");
    let att = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == nexus_mic::ATTESTATION_OID_STR)
        .ok_or("no attestation extension")?;
    assert!(!att.critical);
    assert_eq!(ATTESTATION_OID.len(), 9);
    Ok(())
}

#[test]
fn openssl_accepts_the_chain_and_the_crl() -> TestResult {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED: openssl not on PATH");
        return Ok(());
    }
    let pki = Pki::new()?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root.pem");
    let inter = dir.path().join("inter.pem");
    let leaf = dir.path().join("leaf.pem");
    let crl = dir.path().join("crl.pem");
    std::fs::write(&root, pki.root.cert_pem())?;
    std::fs::write(&inter, pki.inter.cert_pem())?;
    std::fs::write(&leaf, nexus_mic::der_to_pem("CERTIFICATE", &pki.leaf))?;

    let verify = |extra: &[&str]| -> Result<std::process::Output, std::io::Error> {
        let mut cmd = Command::new("openssl");
        cmd.arg("verify").args(extra).arg("-CAfile").arg(&root);
        cmd.arg("-untrusted").arg(&inter).arg(&leaf).output()
    };
    let out = verify(&["-x509_strict", "-purpose", "sslclient"])?;
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = verify(&["-x509_strict", "-purpose", "sslserver"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Revoke the leaf: openssl must now refuse it, citing revocation.
    let crl_der = pki.inter.sign_crl(
        &[RevokedEntry {
            serial: pki.leaf_serial.clone(),
            revoked_at: pki.now,
            reason: RevocationReason::KeyCompromise,
        }],
        pki.now - Duration::from_secs(60),
        pki.now + HOUR,
        1,
    )?;
    std::fs::write(&crl, nexus_mic::der_to_pem("X509 CRL", &crl_der))?;
    let crl_arg = crl.to_string_lossy().into_owned();
    let out = verify(&["-crl_check", "-CRLfile", &crl_arg])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && text.contains("revoked"), "{text}");
    Ok(())
}

#[test]
fn verifier_rejects_each_failure_with_its_reason() -> TestResult {
    let pki = Pki::new()?;
    let chain = pki.chain();

    assert_eq!(expect_rejection(pki.verify(&[], "")), Rejection::EmptyChain);
    assert!(matches!(
        expect_rejection(pki.verify(&[vec![0x30, 0x03, 1, 2, 3]], "")),
        Rejection::Malformed { index: 0, .. }
    ));

    // Flip a bit in the signature.
    let mut tampered = pki.leaf.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 0x01;
    assert!(matches!(
        expect_rejection(pki.verify(&[tampered, pki.inter.cert_der().to_vec()], "")),
        Rejection::BadChain(_)
    ));

    // Another hierarchy's root.
    let other = CertificateAuthority::new_root("Nexus Root CA", pki.now - HOUR, DAY)?;
    let other_verifier = Verifier::new(&[other.cert_der()])?;
    let r = other_verifier.verify(&chain, pki.now, &NoRevocation, &Requirement::default());
    // Same name, different key: the AKI rules it out, so there is no path.
    assert!(matches!(
        expect_rejection(r),
        Rejection::UntrustedIssuer { .. }
    ));
    let stranger = CertificateAuthority::new_root("Stranger Root", pki.now - HOUR, DAY)?;
    let r = Verifier::new(&[stranger.cert_der()])?.verify(
        &chain,
        pki.now,
        &NoRevocation,
        &Requirement::default(),
    );
    assert!(matches!(
        expect_rejection(r),
        Rejection::UntrustedIssuer { .. }
    ));

    let verifier = pki.verifier()?;
    let none = Requirement::default();
    let r = verifier.verify(&chain, pki.now + 2 * DAY, &NoRevocation, &none);
    assert!(matches!(expect_rejection(r), Rejection::Expired { .. }));
    let r = verifier.verify(&chain, pki.now - 2 * HOUR, &NoRevocation, &none);
    assert!(matches!(expect_rejection(r), Rejection::NotYetValid { .. }));

    // Revoked through a signed CRL.
    let crl = pki.inter.sign_crl(
        &[RevokedEntry {
            serial: pki.leaf_serial.clone(),
            revoked_at: pki.now,
            reason: RevocationReason::CessationOfOperation,
        }],
        pki.now,
        pki.now + HOUR,
        7,
    )?;
    let mut crls = CrlSet::new();
    assert_eq!(crls.add_crl(&crl, pki.inter.cert_der())?, 1);
    assert!(matches!(
        crls.add_crl(&crl, pki.root.cert_der()),
        Err(Error::Crl(_))
    ));
    let r = verifier.verify(&chain, pki.now, &crls, &none);
    match expect_rejection(r) {
        Rejection::Revoked { reason, .. } => {
            assert_eq!(reason, RevocationReason::CessationOfOperation)
        }
        other => panic!("{other:?}"),
    }
    // Revoked intermediate.
    let mut crls = CrlSet::new();
    crls.revoke_certificate(pki.inter.cert_der(), RevocationReason::CaCompromise)?;
    let r = verifier.verify(&chain, pki.now, &crls, &none);
    assert!(matches!(
        expect_rejection(r),
        Rejection::Revoked {
            reason: RevocationReason::CaCompromise,
            ..
        }
    ));

    struct Unknown;
    impl RevocationCheck for Unknown {
        fn status(&self, _: &[u8], _: &[u8]) -> RevocationStatus {
            RevocationStatus::Unknown
        }
    }
    let r = verifier.verify(&chain, pki.now, &Unknown, &none);
    assert!(matches!(
        expect_rejection(r),
        Rejection::RevocationUnknown { .. }
    ));

    type Check = fn(&Rejection) -> bool;
    let cases: &[(&str, Check)] = &[
        ("issuer=Some Other CA", |r| {
            matches!(r, Rejection::IssuerNotAccepted { .. })
        }),
        ("tenant=globex", |r| {
            matches!(r, Rejection::WrongTenant { .. })
        }),
        ("capability=translation", |r| {
            r == &Rejection::MissingCapability("translation".into())
        }),
        ("modality=audio", |r| {
            r == &Rejection::MissingModality("audio".into())
        }),
        ("context>=200000", |r| {
            r == &Rejection::ContextTooSmall {
                have: 128_000,
                need: 200_000,
            }
        }),
        ("benchmark=swe-bench", |r| {
            r == &Rejection::MissingBenchmark("swe-bench".into())
        }),
        ("safety=jailbreak", |r| {
            r == &Rejection::MissingSafetyEvaluation("jailbreak".into())
        }),
        ("benchmark=mmlu", |r| {
            r == &Rejection::MissingProof("mmlu".into())
        }),
    ];
    for (req, check) in cases {
        let r = expect_rejection(pki.verify(&chain, req));
        assert!(check(&r), "{req}: got {r:?}");
        assert!(!r.metric_label().is_empty());
    }
    // The issuer can also be named by SPKI fingerprint, of any CA on the path.
    let root_spki = {
        use x509_parser::prelude::*;
        let (_, root) = X509Certificate::from_der(pki.root.cert_der())?;
        nexus_mic::fingerprint_sha256(root.public_key().raw)
    };
    pki.verify(&chain, &format!("issuer=sha256:{root_spki}"))?;
    Ok(())
}

#[test]
fn non_mic_and_bad_attestation_are_rejected() -> TestResult {
    let pki = Pki::new()?;
    let inter = pki.inter.cert_der().to_vec();

    let no_uri = pki.forge(|p| {
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            ATTESTATION_OID,
            Attestation::example().to_der().unwrap_or_default(),
        )];
    })?;
    assert!(matches!(
        expect_rejection(pki.verify(&[no_uri, inter.clone()], "")),
        Rejection::NotAMic(_)
    ));

    let uri = || -> Result<SanType, rcgen::Error> {
        Ok(SanType::URI("nexus://acme/coder@1.0.0".try_into()?))
    };
    let no_attestation = pki.forge(|p| p.subject_alt_names = uri().into_iter().collect())?;
    assert!(matches!(
        expect_rejection(pki.verify(&[no_attestation, inter.clone()], "")),
        Rejection::NotAMic(_)
    ));

    let garbage = pki.forge(|p| {
        p.subject_alt_names = uri().into_iter().collect();
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            ATTESTATION_OID,
            vec![0x30, 0x03, 0x02, 0x01],
        )];
    })?;
    assert!(matches!(
        expect_rejection(pki.verify(&[garbage.clone(), inter.clone()], "")),
        Rejection::MalformedAttestation(_)
    ));
    assert!(Mic::from_der(&garbage).is_err());

    let leaf_ca = pki.forge(|p| {
        p.subject_alt_names = uri().into_iter().collect();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    })?;
    assert!(matches!(
        expect_rejection(pki.verify(&[leaf_ca, inter.clone()], "")),
        Rejection::BadChain(_)
    ));
    Ok(())
}

#[test]
fn path_length_and_non_ca_issuers_are_enforced() -> TestResult {
    let pki = Pki::new()?;
    // The intermediate has pathLenConstraint 0: a sub-CA under it must not be accepted.
    let sub_key = KeyPair::generate()?;
    let mut sub = CertificateParams::default();
    sub.distinguished_name
        .push(DnType::CommonName, "Rogue Sub CA");
    sub.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    sub.use_authority_key_identifier_extension = true;
    sub.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    sub.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(5);
    let sub_cert = sub.signed_by(&sub_key, &pki.rcgen_issuer()?)?;
    let sub_issuer = Issuer::new(sub, sub_key);

    let model = pki.model.clone();
    let key = generate_model_key(&model)?;
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::URI(model.to_string().as_str().try_into()?)];
    leaf.custom_extensions = vec![CustomExtension::from_oid_content(
        ATTESTATION_OID,
        Attestation::example().to_der()?,
    )];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    leaf.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let leaf_key = KeyPair::from_pem(&key.private_key_pem)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &sub_issuer)?;
    let chain = vec![
        leaf_cert.der().to_vec(),
        sub_cert.der().to_vec(),
        pki.inter.cert_der().to_vec(),
    ];
    match expect_rejection(pki.verify(&chain, "")) {
        Rejection::BadChain(m) => assert!(m.contains("pathLenConstraint"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A stray certificate in the presented chain does not hide the real path.
    let stray = vec![
        pki.leaf.clone(),
        sub_cert.der().to_vec(),
        pki.inter.cert_der().to_vec(),
    ];
    pki.verify(&stray, "")?;

    // A leaf used as an issuer.
    let model_key = KeyPair::from_pem(&key.private_key_pem)?;
    let fake_issuer = Issuer::from_ca_cert_der(&pki.leaf.as_slice().into(), model_key)?;
    let mut child = CertificateParams::default();
    child.subject_alt_names = vec![SanType::URI(model.to_string().as_str().try_into()?)];
    child.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    child.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let child = child.signed_by(&KeyPair::generate()?, &fake_issuer)?;
    let chain = vec![
        child.der().to_vec(),
        pki.leaf.clone(),
        pki.inter.cert_der().to_vec(),
    ];
    assert!(matches!(
        expect_rejection(pki.verify(&chain, "")),
        Rejection::BadChain(_)
    ));
    Ok(())
}

#[test]
fn warm_cache_lets_peers_send_only_the_leaf() -> TestResult {
    let pki = Pki::new()?;
    let verifier = pki.verifier()?;
    let none = Requirement::default();
    assert!(matches!(
        verifier.verify(&[pki.leaf.as_slice()], pki.now, &NoRevocation, &none),
        Err(Rejection::UntrustedIssuer { .. })
    ));
    verifier.add_intermediate(pki.inter.cert_der(), pki.now)?;
    assert_eq!(verifier.cached_intermediates(), 1);
    verifier.verify(&[pki.leaf.as_slice()], pki.now, &NoRevocation, &none)?;
    // The full chain, root included, also verifies and does not grow the cache.
    let full = [
        pki.leaf.as_slice(),
        pki.inter.cert_der(),
        pki.root.cert_der(),
    ];
    verifier.verify(&full, pki.now, &NoRevocation, &none)?;
    assert_eq!(verifier.cached_intermediates(), 1);
    // A chain verified once warms the cache of a fresh verifier too.
    let fresh = pki.verifier()?;
    fresh.verify(&pki.chain(), pki.now, &NoRevocation, &none)?;
    assert_eq!(fresh.cached_intermediates(), 1);

    // A leaf served from the verified-leaf cache still gets time, revocation and requirement
    // checks on every call.
    fresh.verify(&pki.chain(), pki.now, &NoRevocation, &none)?;
    let mut crls = CrlSet::new();
    crls.revoke_certificate(&pki.leaf, RevocationReason::KeyCompromise)?;
    assert!(matches!(
        fresh.verify(&pki.chain(), pki.now, &crls, &none),
        Err(Rejection::Revoked { .. })
    ));
    assert!(matches!(
        fresh.verify(&pki.chain(), pki.now + 2 * DAY, &NoRevocation, &none),
        Err(Rejection::Expired { .. })
    ));
    let strict: Requirement = "capability=translation".parse()?;
    assert!(matches!(
        fresh.verify(&pki.chain(), pki.now, &NoRevocation, &strict),
        Err(Rejection::MissingCapability(_))
    ));
    Ok(())
}

#[test]
fn csr_checks() -> TestResult {
    let pki = Pki::new()?;
    let attestation = Attestation::example();
    let other: ModelUri = "nexus://acme/other@2.0".parse()?;
    let key = generate_model_key(&other)?;
    let csr = Csr::from_pem(&key.csr_pem)?;
    assert_eq!(csr.requested_uris(), ["nexus://acme/other@2.0"]);
    let request = |csr: &Csr| {
        pki.inter.issue_mic(&MicRequest {
            csr,
            model: &pki.model,
            attestation: &attestation,
            not_before: pki.now,
            validity: HOUR,
        })
    };
    assert!(matches!(request(&csr), Err(Error::CsrMismatch { .. })));

    // Tampered: change a byte inside the subject, keep the signature.
    let mut der = key.csr_der.clone();
    let pos = der
        .windows(5)
        .position(|w| w == b"other")
        .ok_or("subject not found")?;
    der[pos] = b'X';
    assert!(matches!(Csr::from_der(&der), Err(Error::Csr(_))));

    let fixture = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    };
    assert!(matches!(
        Csr::from_pem(&fixture("rsa.csr.pem")?),
        Err(Error::UnsupportedKey(_))
    ));
    assert!(matches!(
        Csr::from_pem(&fixture("secp256k1.csr.pem")?),
        Err(Error::UnsupportedKey(_))
    ));
    // CSRs made by OpenSSL (P-256 and Ed25519) are accepted and issued for.
    for (name, alg) in [
        ("p256.csr.pem", KeyAlgorithm::EcdsaP256),
        ("ed25519.csr.pem", KeyAlgorithm::Ed25519),
    ] {
        let csr = Csr::from_pem(&fixture(name)?)?;
        assert_eq!(csr.key_algorithm(), alg);
        let issued = request(&csr)?;
        let mic = Mic::from_der(&issued.der)?;
        assert_eq!(mic.key_algorithm, Some(alg));
        pki.verifier()?.verify(
            &[issued.der.clone(), pki.inter.cert_der().to_vec()],
            pki.now,
            &NoRevocation,
            &Requirement::default(),
        )?;
    }
    // A CSR without a URI SAN takes the model from the request.
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "bare");
    let bare = params.serialize_request(&KeyPair::generate()?)?;
    let csr = Csr::from_der(bare.der())?;
    assert!(csr.requested_uris().is_empty());
    request(&csr)?;

    assert!(matches!(Csr::from_der(b"not a csr"), Err(Error::Csr(_))));
    assert!(matches!(
        Csr::from_pem(&pki.inter.cert_pem()),
        Err(Error::Pem(_))
    ));
    Ok(())
}

#[test]
fn validity_and_ca_loading() -> TestResult {
    let pki = Pki::new()?;
    let key = generate_model_key(&pki.model)?;
    let csr = Csr::from_pem(&key.csr_pem)?;
    let attestation = Attestation::example();
    let mut req = MicRequest {
        csr: &csr,
        model: &pki.model,
        attestation: &attestation,
        not_before: pki.now,
        validity: Duration::ZERO,
    };
    assert!(matches!(pki.inter.issue_mic(&req), Err(Error::Validity(_))));
    req.validity = 400 * DAY;
    assert!(matches!(pki.inter.issue_mic(&req), Err(Error::Validity(_))));

    // A CA round-trips through PEM (as stored in a Secret) and keeps issuing verifiable MICs.
    let loaded = CertificateAuthority::from_pem(&pki.inter.cert_pem(), &pki.inter.key_pem())?;
    assert_eq!(loaded.common_name(), "Nexus Intermediate CA");
    req.validity = HOUR;
    let issued = loaded.issue_mic(&req)?;
    pki.verify(&[issued.der, pki.inter.cert_der().to_vec()], "")?;
    assert!(matches!(
        CertificateAuthority::from_pem(&pki.inter.cert_pem(), &pki.root.key_pem()),
        Err(Error::Key(_))
    ));
    let verifier = Verifier::from_pem(&format!("{}{}", pki.root.cert_pem(), pki.inter.cert_pem()))?;
    assert!(format!("{verifier:?}").contains("anchors: 2"));
    Ok(())
}

#[test]
fn attestation_with_plain_value_round_trips_through_a_certificate() -> TestResult {
    let mut a = Attestation::example();
    a.benchmarks[0].value = ClaimValue::Plain(nexus_mic::Score(912_000));
    a.endorsements.clear();
    a.provenance.parent_model = None;
    let pki = Pki::with(a.clone())?;
    assert_eq!(Mic::from_der(&pki.leaf)?.attestation, a);
    Ok(())
}

#[test]
fn mic_parsing_survives_corruption() -> TestResult {
    let pki = Pki::new()?;
    for cut in (0..pki.leaf.len()).step_by(7) {
        assert!(Mic::from_der(&pki.leaf[..cut]).is_err());
    }
    for i in (0..pki.leaf.len()).step_by(3) {
        let mut bad = pki.leaf.clone();
        bad[i] ^= 0x55;
        let _ = Mic::from_der(&bad);
        let _ = pki.verify(&[bad, pki.inter.cert_der().to_vec()], "");
    }
    Ok(())
}

#[test]
fn hostile_chains_are_bounded() -> TestResult {
    let pki = Pki::new()?;
    // Too many certificates.
    let long = vec![pki.leaf.clone(); nexus_mic::verify::MAX_CHAIN_LEN + 1];
    assert!(matches!(
        expect_rejection(pki.verify(&long, "")),
        Rejection::BadChain(_)
    ));
    // Many CAs with the intermediate's name but other keys, and no AKI/SKI to tell them
    // apart: refused within the signature budget, never accepted.
    let mut chain = vec![pki.leaf.clone()];
    for _ in 0..4 {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "Nexus Intermediate CA");
        p.distinguished_name.push(DnType::OrganizationName, "Nexus");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(Vec::new());
        chain.push(p.signed_by(&key, &pki.rcgen_issuer()?)?.der().to_vec());
    }
    let verifier = Verifier::new(&[pki.root.cert_der()])?;
    let r = verifier.verify(&chain, pki.now, &NoRevocation, &Requirement::default());
    assert!(
        matches!(
            r,
            Err(Rejection::BadChain(_)) | Err(Rejection::UntrustedIssuer { .. })
        ),
        "{r:?}"
    );
    Ok(())
}
