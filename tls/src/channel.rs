//! Client channels to Nexus gRPC services (the CA): one way to dial them for every caller.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::{Error, GrpcConnector, ReloadingCertificate, client_config, read_certs};

/// How often a client certificate's files are checked for a rotation.
pub const CLIENT_CERT_RELOAD: Duration = Duration::from_secs(30);

/// A client's TLS towards one service, from files (a mounted Secret: `ca.crt`, `tls.crt`,
/// `tls.key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// PEM roots the server's certificate must chain to (the Nexus CA's root).
    pub ca: PathBuf,
    /// PEM client certificate chain, leaf first; with `key`, presented to the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
}

fn config_error(reason: String) -> Error {
    Error::Verifier(reason)
}

/// A lazily connected tonic channel to `url` (connects on first use, reconnects after
/// failures, so a caller starts while the service is still coming up).
///
/// `https://host:port` speaks TLS 1.2/1.3 through rustls (ring): the server is verified against
/// `tls.ca` as `tls.server_name` (default `host`), and the client certificate, when given, is
/// presented — re-read when its files change ([`CLIENT_CERT_RELOAD`]), so a rotated
/// certificate is used without a restart. `http://` is plaintext, for development, and takes
/// no `tls`. The returned watcher task, if any, lives as long as the runtime.
pub fn grpc_channel(
    url: &str,
    tls: Option<&ClientTlsFiles>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Channel, Error> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| config_error(format!("endpoint `{url}`: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| config_error(format!("endpoint `{url}` names no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    match (uri.scheme_str(), tls) {
        (Some("http"), None) => Ok(Endpoint::from_shared(url.to_owned())
            .map_err(|e| config_error(format!("endpoint `{url}`: {e}")))?
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .connect_lazy()),
        (Some("http"), Some(_)) => Err(config_error(format!(
            "endpoint `{url}` is plaintext but TLS files were given: use https://"
        ))),
        (Some("https"), None) => Err(config_error(format!(
            "endpoint `{url}` needs the CA certificate to verify the server (TLS files)"
        ))),
        (Some("https"), Some(files)) => {
            let roots = read_certs(&files.ca)?;
            let identity = match (&files.cert, &files.key) {
                (Some(cert), Some(key)) => {
                    let id = ReloadingCertificate::from_files(cert, key)?;
                    if tokio::runtime::Handle::try_current().is_ok() {
                        id.spawn_watch(CLIENT_CERT_RELOAD);
                    }
                    Some(id)
                }
                (None, None) => None,
                _ => {
                    return Err(config_error(
                        "a client certificate needs both its certificate and its key".into(),
                    ));
                }
            };
            let config = client_config(&roots, identity, &[b"h2"])?;
            let name = files.server_name.clone().unwrap_or_else(|| host.clone());
            let connector = GrpcConnector::new(config, &name)?;
            let port = uri.port_u16().unwrap_or(443);
            // The connector does TLS; tonic sees a plain http:// URI.
            let plain = if host.contains(':') {
                format!("http://[{host}]:{port}")
            } else {
                format!("http://{host}:{port}")
            };
            Ok(Endpoint::from_shared(plain)
                .map_err(|e| config_error(format!("endpoint `{url}`: {e}")))?
                .connect_timeout(connect_timeout)
                .timeout(timeout)
                .connect_with_connector_lazy(connector))
        }
        _ => Err(config_error(format!(
            "endpoint `{url}`: the scheme must be http:// or https://"
        ))),
    }
}

/// [`grpc_channel`] from optional file paths as services take them on their command line:
/// all absent is `None`; a certificate without a key (or the reverse) is an error.
pub fn client_files(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> Result<Option<ClientTlsFiles>, Error> {
    match ca {
        None if cert.is_none() && key.is_none() => Ok(None),
        None => Err(config_error(
            "a client certificate needs the CA certificate too".into(),
        )),
        Some(ca) => Ok(Some(ClientTlsFiles {
            ca,
            cert,
            key,
            server_name,
        })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test]
    async fn plaintext_and_tls_must_match_the_scheme() {
        assert!(grpc_channel("http://127.0.0.1:1", None, secs(1), secs(1)).is_ok());
        let files = ClientTlsFiles {
            ca: "/nonexistent/ca.crt".into(),
            ..Default::default()
        };
        let e = grpc_channel("https://ca:9443", None, secs(1), secs(1)).unwrap_err();
        assert!(e.to_string().contains("CA certificate"), "{e}");
        let e = grpc_channel("http://ca:9443", Some(&files), secs(1), secs(1)).unwrap_err();
        assert!(e.to_string().contains("plaintext"), "{e}");
        let e = grpc_channel("https://ca:9443", Some(&files), secs(1), secs(1)).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.crt"), "{e}");
        assert!(grpc_channel("ftp://ca", None, secs(1), secs(1)).is_err());
        assert!(grpc_channel("not a url", None, secs(1), secs(1)).is_err());
    }

    #[test]
    fn files_come_whole() {
        assert_eq!(client_files(None, None, None, None).unwrap(), None);
        assert!(client_files(None, Some("c".into()), None, None).is_err());
        assert!(
            client_files(Some("ca".into()), None, None, None)
                .unwrap()
                .is_some()
        );
    }
}
