//! nexus-tls end to end on loopback: a server certificate rotated on disk is served to the
//! next connection without a restart; a half-written rotation (new certificate, old key) is
//! refused and the current pair kept; a client's verified identity and role reach the server.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nexus_mic::{CertificateAuthority, ServiceCertRequest};
use nexus_tls::pki_types::ServerName;
use nexus_tls::{ClientVerifier, ReloadingCertificate, ServerTls, TlsListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Pki {
    root: CertificateAuthority,
    issuer: CertificateAuthority,
}

fn pki() -> Result<Pki, nexus_mic::Error> {
    let t0 = SystemTime::now() - Duration::from_secs(3600);
    let root = CertificateAuthority::new_root("Test Root", t0, Duration::from_secs(86_400))?;
    let issuer = root.new_intermediate("Test Issuing", t0, Duration::from_secs(86_400))?;
    Ok(Pki { root, issuer })
}

/// (chain PEM, key PEM, leaf DER).
fn cert(
    pki: &Pki,
    server: bool,
    uris: &[&str],
) -> Result<(String, String, Vec<u8>), nexus_mic::Error> {
    let c = pki.issuer.issue_service_cert(&ServiceCertRequest {
        common_name: if server { "server" } else { "client" },
        dns_names: if server { &["localhost"] } else { &[] },
        ip_addresses: &[],
        uris,
        server_auth: server,
        client_auth: !server,
        not_before: SystemTime::now() - Duration::from_secs(60),
        validity: Duration::from_secs(3600),
    })?;
    let chain = format!(
        "{}{}",
        c.cert.pem,
        nexus_mic::der_to_pem("CERTIFICATE", pki.issuer.cert_der())
    );
    Ok((chain, c.private_key_pem, c.cert.der))
}

/// Connects, reads the server's one-line answer, returns it with the server's leaf.
async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<nexus_tls::rustls::ClientConfig>,
) -> Result<(String, Vec<u8>), Box<dyn std::error::Error>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"hello\n").await?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no server certificate")?;
    Ok((String::from_utf8(buf)?, leaf))
}

#[tokio::test]
async fn rotation_without_restart_and_peer_roles() -> TestResult {
    let pki = pki()?;
    let dir = tempfile::tempdir()?;
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (chain_a, key_a, leaf_a) = cert(&pki, true, &[])?;
    std::fs::write(&crt, &chain_a)?;
    std::fs::write(&key, &key_a)?;
    let certificate = ReloadingCertificate::from_files(&crt, &key)?;
    let verifier = ClientVerifier::new(&[pki.root.cert_der().to_vec().into()], vec![], false)?;
    let config = ServerTls {
        certificate: Arc::clone(&certificate),
        client_verifier: Some(verifier),
    }
    .server_config()?;
    let listener = TlsListener::new(tokio::net::TcpListener::bind("127.0.0.1:0").await?, config)?;
    let addr = listener.local_addr();
    // The server answers each connection with the role it saw.
    tokio::spawn(async move {
        let mut conns = Box::pin(listener.into_stream());
        while let Some(Ok(mut conn)) = conns.next().await {
            let role = conn
                .info()
                .peer
                .as_ref()
                .and_then(|p| p.role().map(str::to_owned))
                .unwrap_or_else(|| "anonymous".into());
            let mut line = [0u8; 6];
            let _ = conn.read_exact(&mut line).await;
            let _ = conn.write_all(role.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    let roots = [pki.root.cert_der().to_vec().into()];
    // A fresh config per connection: a resumed TLS 1.3 session would show the certificate of
    // the session it resumes, not the one served now.
    let anonymous = || nexus_tls::client_config(&roots, None, &[]);

    let (answer, served) = connect(addr, anonymous()?).await?;
    assert_eq!(
        (answer.as_str(), served.as_slice()),
        ("anonymous", leaf_a.as_slice())
    );

    // A client certificate with a role: the server sees it.
    let (cc, ck, _) = cert(&pki, false, &[&nexus_tls::role_uri("controller")])?;
    let (cdir_crt, cdir_key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
    std::fs::write(&cdir_crt, cc)?;
    std::fs::write(&cdir_key, ck)?;
    let id = ReloadingCertificate::from_files(&cdir_crt, &cdir_key)?;
    let (answer, _) = connect(addr, nexus_tls::client_config(&roots, Some(id), &[])?).await?;
    assert_eq!(answer, "controller");

    // Nothing changed: no reload.
    assert!(!certificate.reload_if_changed()?);
    // Half a rotation (the new certificate, still the old key): refused, the old pair stays.
    let (chain_b, key_b, leaf_b) = cert(&pki, true, &[])?;
    std::fs::write(&crt, &chain_b)?;
    assert!(certificate.reload_if_changed().is_err());
    let (_, served) = connect(addr, anonymous()?).await?;
    assert_eq!(served, leaf_a);
    // The key lands: the next check loads the pair and the next connection gets it.
    std::fs::write(&key, &key_b)?;
    assert!(certificate.reload_if_changed()?);
    let (_, served) = connect(addr, anonymous()?).await?;
    assert_eq!(served, leaf_b);
    Ok(())
}
