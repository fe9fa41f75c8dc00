//! Calls addressed by capability to a node: its NexRoute tables (programmed over real
//! P4Runtime gRPC, as the node agent does) pick the endpoint; the node serves the call itself
//! or relays it over real UDP to the node picked, with cancellation crossing the relay, and
//! the call billed once — by the relay, to the caller.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use nexus_api::{ApiError, Client, InferRequest, Meta};
use nexus_dataplane::start;
use nexus_stream::testing::TestPki;
use support::{DOMAIN, advert, node, program, program_domains, sample, tenant_packets};

fn request(max_tokens: u32) -> InferRequest {
    InferRequest {
        model: String::new(),
        prompt: "write a function that adds two numbers".into(),
        max_tokens,
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_by_capability_are_served_or_relayed_by_the_tables_and_billed_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fabric_mic, caller_mic) = (dir.path().join("fabric"), dir.path().join("caller"));
    // Both nodes hold the fabric's MIC (as a Fabric's dataplane Secret gives every node).
    pki.issue("nexus://acme/coder@1.0.0")
        .unwrap()
        .write_dir(&fabric_mic)
        .unwrap();
    pki.issue("nexus://acme/caller@1.0.0")
        .unwrap()
        .write_dir(&caller_mic)
        .unwrap();
    let a = start(&node(&fabric_mic, &["--demo-token-ms=20"]))
        .await
        .unwrap();
    let b = start(&node(&fabric_mic, &["--demo-token-ms=20"]))
        .await
        .unwrap();
    let tables = vec![
        advert("on-b", b.udp, "code-generation"),
        advert("on-a", a.udp, "summarization"),
    ];
    program(&a, tables.clone()).await;
    program(&b, tables).await;

    // code-generation: A's tables pick B, so A relays; the answer is B's.
    let coder = Client::connect_dir_in(&caller_mic, a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("code-generation");
    let direct = Client::connect_dir(&caller_mic, b.udp).await.unwrap();
    let relayed = coder.infer(&request(8)).await.unwrap();
    assert_eq!(relayed.text, direct.infer(&request(8)).await.unwrap().text);
    let infer_calls = |http, result: &'static str| async move {
        sample(
            http,
            "nexapi_calls_total",
            &["op=\"infer\"", &format!("result=\"{result}\"")],
        )
        .await
    };
    assert_eq!(infer_calls(a.http, "relayed").await, 1.0);
    assert_eq!(infer_calls(a.http, "ok").await, 0.0, "A did not serve it");
    assert_eq!(infer_calls(b.http, "ok").await, 2.0, "B served both");

    // summarization: A's tables pick A itself, so A serves it.
    let summarizer = Client::connect_dir_in(&caller_mic, a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("summarization");
    summarizer.infer(&request(4)).await.unwrap();
    assert_eq!(infer_calls(a.http, "ok").await, 1.0);
    assert_eq!(infer_calls(a.http, "relayed").await, 1.0);

    // A relayed token stream: tokens arrive as B makes them; cancelling at the caller
    // stops B's generation (the relay drops its upstream stream).
    let mut tokens = coder.stream_tokens(&request(10_000)).await.unwrap();
    for _ in 0..3 {
        tokens.next().await.unwrap().unwrap();
    }
    assert_eq!(
        sample(b.http, "nexapi_active_generations", &[]).await,
        1.0,
        "B is generating"
    );
    tokens.cancel();
    eventually(
        "B's generation is freed after the caller cancelled",
        async || sample(b.http, "nexapi_active_generations", &[]).await == 0.0,
    )
    .await;

    // No route, and tensors (not relayed): refused with a reason, the session unharmed.
    let nowhere = Client::connect_dir_in(&caller_mic, a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("translation");
    let e = nowhere.infer(&request(1)).await.unwrap_err();
    assert!(matches!(e, ApiError::Refused(_)), "{e}");
    // Ten refused 20 MiB tensors: their first 8 MiB each (the stream window) exceed the
    // connection's 64 MiB receive window, so shards left unread would stall the session; A
    // stops them instead.
    let big = vec![7u8; 20 << 20];
    let header = nexus_api::Header::opaque(1, 0, big.len() as u32);
    for _ in 0..10 {
        let e = tokio::time::timeout(Duration::from_secs(30), coder.send_tensor(&header, &big))
            .await
            .expect("a refused tensor does not stall the session")
            .unwrap_err();
        assert!(matches!(e, ApiError::Refused(_)), "{e}");
    }
    tokio::time::timeout(Duration::from_secs(30), coder.infer(&request(2)))
        .await
        .expect("the session still carries calls after refused tensors")
        .unwrap();

    // Billing: the relay bills the caller under its domain; B leaves the relayed leg (its
    // peer presents the fabric's own identity) unbilled and counts it apart.
    drop((coder, summarizer, nowhere, direct));
    let billed = |http| async move {
        sample(
            http,
            "nexus_dataplane_traffic_bytes_total",
            &["tenant=\"acme\"", "domain=\"default/demo\""],
        )
        .await
    };
    assert!(billed(a.http).await > 0.0, "A bills the caller");
    assert_eq!(billed(b.http).await, 0.0, "B bills no relayed byte");
    assert!(sample(b.http, "nexus_dataplane_relayed_bytes_total", &[]).await > 0.0);

    // A caller that merely claims to be a relay is billed like any other.
    let acme_on_b = |http| async move {
        sample(
            http,
            "nexus_dataplane_traffic_bytes_total",
            &["tenant=\"acme\""],
        )
        .await
    };
    let before = acme_on_b(b.http).await;
    let stranger = Client::connect_dir(&caller_mic, b.udp).await.unwrap();
    let mut s = stranger
        .session()
        .open_ordered(Meta::op("infer").with("relay", "1").encode(), true)
        .await
        .unwrap();
    s.send_msg(&serde_json::to_vec(&request(2)).unwrap())
        .await
        .unwrap();
    s.send.finish().unwrap();
    s.recv_msg().await.unwrap().unwrap();
    drop(s);
    drop(stranger);
    eventually("B bills the stranger's claimed relay", async || {
        acme_on_b(b.http).await > before
    })
    .await;

    // A new table batch takes effect on the next call (picks are remembered per batch, for
    // 64 flow buckets: 64 calls remember every one of them first). code-generation moves
    // to A, so A now serves it itself.
    let coder = Client::connect_dir_in(&caller_mic, a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("code-generation");
    let relayed = infer_calls(a.http, "relayed").await;
    for _ in 0..64 {
        coder.infer(&request(1)).await.unwrap();
    }
    assert_eq!(infer_calls(a.http, "relayed").await, relayed + 64.0);
    program(&a, vec![advert("on-a", a.udp, "code-generation")]).await;
    let served = infer_calls(a.http, "ok").await;
    let counted = tenant_packets(&a).await;
    for _ in 0..128 {
        coder.infer(&request(1)).await.unwrap();
    }
    assert_eq!(infer_calls(a.http, "ok").await, served + 128.0);
    assert_eq!(infer_calls(a.http, "relayed").await, relayed + 64.0);
    // Every routed call shows in the tenant's pipeline counter, the 64 whose pick was
    // remembered as well as the 64 that ran the probe through the tables.
    assert_eq!(tenant_packets(&a).await, counted + 128);

    a.drain(Duration::from_millis(200)).await;
    b.drain(Duration::from_millis(200)).await;
}

/// Relayed calls of different tenants do not share a connection: one tenant's long streams
/// or large messages cannot use up the stream credit or windows another tenant's relayed
/// calls need. Calls of one tenant reuse its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_is_relayed_over_its_own_session() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fabric_mic = dir.path().join("fabric");
    pki.issue("nexus://acme/coder@1.0.0")
        .unwrap()
        .write_dir(&fabric_mic)
        .unwrap();
    let mut callers = Vec::new();
    for tenant in ["acme", "globex"] {
        let mic = dir.path().join(tenant);
        pki.issue(&format!("nexus://{tenant}/caller@1.0.0"))
            .unwrap()
            .write_dir(&mic)
            .unwrap();
        callers.push(mic);
    }
    let a = start(&node(&fabric_mic, &[])).await.unwrap();
    let b = start(&node(&fabric_mic, &[])).await.unwrap();
    let globex_domain = "default/globex";
    for n in [&a, &b] {
        program_domains(
            n,
            vec![
                (
                    "acme",
                    DOMAIN,
                    vec![advert("on-b", b.udp, "code-generation")],
                ),
                (
                    "globex",
                    globex_domain,
                    vec![advert("on-b", b.udp, "code-generation")],
                ),
            ],
        )
        .await;
    }
    let acme = Client::connect_dir_in(&callers[0], a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("code-generation");
    let globex = Client::connect_dir_in(&callers[1], a.udp, globex_domain)
        .await
        .unwrap()
        .route_by("code-generation");
    let on_b = async || sample(b.http, "nexstream_connections", &[]).await;
    let before = on_b().await;
    acme.infer(&request(1)).await.unwrap();
    assert_eq!(on_b().await, before + 1.0, "A dials B for acme");
    globex.infer(&request(1)).await.unwrap();
    assert_eq!(on_b().await, before + 2.0, "and again for globex");
    acme.infer(&request(1)).await.unwrap();
    globex.infer(&request(1)).await.unwrap();
    assert_eq!(
        on_b().await,
        before + 2.0,
        "each tenant's session is reused"
    );
    let relayed = sample(
        a.http,
        "nexapi_calls_total",
        &["op=\"infer\"", "result=\"relayed\""],
    )
    .await;
    assert_eq!(relayed, 4.0);

    a.drain(Duration::from_millis(200)).await;
    b.drain(Duration::from_millis(200)).await;
}
