//! Sources read for real: files, an HTTP server on loopback, ConfigMaps in the namespace the
//! source names (through the fake API server).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nexus_artifact::{Error, Fetcher, Source};
use nexus_crds::common::{ArtifactSource, ConfigMapKeyRef};
use nexus_kube_fake::FakeApiServer;
use serde_json::json;

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn config_map_in_the_namespace_the_source_names() {
    let fake = FakeApiServer::new();
    fake.apply_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fw", "namespace": "firmware"},
        "binaryData": {"bundle": "aGVsbG8="},
    }));
    let src = ArtifactSource {
        config_map: Some(ConfigMapKeyRef {
            name: "fw".into(),
            namespace: Some("firmware".into()),
            key: "bundle".into(),
        }),
        ..ArtifactSource::default()
    };
    let s = Source::from_crd(&src, "nexus-system").unwrap();
    assert_eq!(
        s,
        Source::ConfigMap {
            namespace: "firmware".into(),
            name: "fw".into(),
            key: "bundle".into()
        }
    );
    let f = Fetcher::new().with_kube(fake.client());
    let v = f.fetch_verified(&s, &sha(b"hello")).await.unwrap();
    assert_eq!(v.bytes.as_slice(), b"hello");
    // Without a namespace: the controller's.
    let mut no_ns = src.clone();
    if let Some(c) = no_ns.config_map.as_mut() {
        c.namespace = None;
    }
    let s = Source::from_crd(&no_ns, "nexus-system").unwrap();
    assert_eq!(
        f.fetch(&s).await.unwrap_err(),
        Error::ConfigMapMissing {
            namespace: "nexus-system".into(),
            name: "fw".into()
        }
    );
    let wrong_key = Source::ConfigMap {
        namespace: "firmware".into(),
        name: "fw".into(),
        key: "nope".into(),
    };
    assert!(matches!(
        f.fetch(&wrong_key).await.unwrap_err(),
        Error::ConfigMapKeyMissing { .. }
    ));
    assert_eq!(
        Fetcher::new().fetch(&wrong_key).await.unwrap_err(),
        Error::NoKubernetes
    );
}

#[tokio::test]
async fn files_http_digests_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.bin"), b"bundle").unwrap();
    let f = Fetcher::new().with_base_dir(dir.path());
    let s = Source::from_url("b.bin").unwrap();
    assert!(f.fetch_verified(&s, &sha(b"bundle")).await.is_ok());
    assert!(matches!(
        f.fetch_verified(&s, &"0".repeat(64)).await.unwrap_err(),
        Error::DigestMismatch { .. }
    ));
    assert!(matches!(
        f.clone().with_max_bytes(3).fetch(&s).await.unwrap_err(),
        Error::TooLarge { limit: 3 }
    ));
    assert!(matches!(
        Source::from_url("ftp://x/y").unwrap_err(),
        Error::UnsupportedUrl { .. }
    ));
    let oci = ArtifactSource {
        oci: Some("r.io/fw:1".into()),
        ..ArtifactSource::default()
    };
    assert!(matches!(
        f.fetch(&Source::from_crd(&oci, "x").unwrap())
            .await
            .unwrap_err(),
        Error::OciUnsupported { .. }
    ));
    assert_eq!(
        Source::from_crd(&ArtifactSource::default(), "x").unwrap_err(),
        Error::NoSource
    );

    // HTTP: a real server on loopback.
    let app = axum::Router::new()
        .route("/b", axum::routing::get(|| async { "bundle" }))
        .route(
            "/gone",
            axum::routing::get(|| async { (axum::http::StatusCode::NOT_FOUND, "no") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ok = Source::from_url(&format!("http://{addr}/b")).unwrap();
    assert_eq!(f.fetch(&ok).await.unwrap(), b"bundle");
    let gone = Source::from_url(&format!("http://{addr}/gone")).unwrap();
    let e = f.fetch(&gone).await.unwrap_err();
    assert!(matches!(e, Error::Http { .. }) && e.transient(), "{e}");
}
