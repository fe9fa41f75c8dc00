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

/// Sends a tensor of `len` bytes in `shard`-byte shards to a `code-generation` endpoint
/// through the node `session` is connected to, writing the shards `shards` names
/// (`(index, bytes)`) whether or not they fit the plan: its acknowledgement or refusal.
async fn raw_tensor(
    session: &nexus_stream::Session,
    len: u32,
    shard: u32,
    shards: &[(u32, usize)],
) -> Result<nexus_api::TensorAck, ApiError> {
    let mut s = open_raw_tensor(session, len, shard, shards).await?;
    let reset = |e| match e {
        nexus_stream::StreamError::Read(quinn::ReadError::Reset(c))
            if c == nexus_stream::codes::BAD_FRAME =>
        {
            ApiError::BadMessage("refused as malformed".into())
        }
        e => ApiError::Stream(e),
    };
    let ack = s.recv_msg().await.map_err(reset)?.ok_or(ApiError::Ended)?;
    Ok(serde_json::from_slice(&ack)?)
}

/// [`raw_tensor`] up to the acknowledgement: the control stream, its shards written.
async fn open_raw_tensor(
    session: &nexus_stream::Session,
    len: u32,
    shard: u32,
    shards: &[(u32, usize)],
) -> Result<nexus_stream::OrderedStream, ApiError> {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);
    let id = IDS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string();
    let header = nexus_api::Header::opaque(1, 0, len);
    let control = nexus_api::tensor::encode_control(&header, shard)?;
    let meta = Meta::op("tensor")
        .with("id", &id)
        .with("domain", DOMAIN)
        .with("capability", "code-generation");
    let s = session
        .open_ordered_with(meta.encode(), false, Some(&control))
        .await?;
    for &(index, bytes) in shards {
        let meta = Meta::op("shard")
            .with("tensor", &id)
            .with("index", &index.to_string());
        let mut bulk = session.open_bulk(meta.encode()).await?;
        // The receiver may stop a shard it refuses while it is written.
        let _ = bulk.write_all(&vec![1u8; bytes]).await;
        let _ = bulk.finish();
    }
    Ok(s)
}

/// `nexapi_calls_total` of operation `op` with `result` on the node serving HTTP at `http`.
async fn calls(http: std::net::SocketAddr, op: &str, result: &str) -> f64 {
    let (op, result) = (format!("op=\"{op}\""), format!("result=\"{result}\""));
    sample(http, "nexapi_calls_total", &[&op, &result]).await
}

/// Sends the tensor `data` ten times through `client`, expecting each to be refused: the
/// errors. A refusal that leaves shards holding the session's receive window stalls the
/// next send, which fails here.
async fn ten_refused(client: &Client, header: &nexus_api::Header, data: &[u8]) -> Vec<ApiError> {
    let mut errors = Vec::new();
    for _ in 0..10 {
        let sent = tokio::time::timeout(Duration::from_secs(30), client.send_tensor(header, data))
            .await
            .expect("a refused tensor does not stall the session");
        errors.push(sent.expect_err("refused"));
    }
    errors
}

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
    let b = start(&node(
        &fabric_mic,
        &["--demo-token-ms=20", "--max-tensor=33554432"],
    ))
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
    assert_eq!(calls(a.http, "infer", "relayed").await, 1.0);
    assert_eq!(
        calls(a.http, "infer", "ok").await,
        0.0,
        "A did not serve it"
    );
    assert_eq!(calls(b.http, "infer", "ok").await, 2.0, "B served both");

    // summarization: A's tables pick A itself, so A serves it.
    let summarizer = Client::connect_dir_in(&caller_mic, a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("summarization");
    summarizer.infer(&request(4)).await.unwrap();
    assert_eq!(calls(a.http, "infer", "ok").await, 1.0);
    assert_eq!(calls(a.http, "infer", "relayed").await, 1.0);

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

    // A relayed tensor: A passes its shards on to B as they arrive; B's acknowledgement,
    // checksum included, comes back, so the check of the reassembly is end to end.
    let tensor = (0..20u32 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>();
    let header = nexus_api::Header::opaque(1, 0, tensor.len() as u32);
    let ack = coder
        .send_tensor_checked(&header, &tensor, 4 << 20)
        .await
        .unwrap();
    assert_eq!((ack.bytes, ack.shards), (20 << 20, 5));
    assert_eq!(calls(a.http, "tensor", "relayed").await, 1.0);
    assert_eq!(calls(b.http, "tensor", "ok").await, 1.0, "B received it");
    assert_eq!(
        sample(b.http, "nexapi_tensor_bytes_total", &[]).await,
        f64::from(20u32 << 20)
    );
    assert_eq!(sample(a.http, "nexapi_tensor_bytes_total", &[]).await, 0.0);

    // B's limit is the one that applies (A holds no buffer for a relayed tensor): ten
    // tensors over it are refused as too large, and their shards are stopped at both hops —
    // their first 8 MiB each (the stream window) exceed the connection's 64 MiB receive
    // window, so shards left unread would stall the session.
    let big = vec![7u8; 40 << 20];
    let big_header = nexus_api::Header::opaque(1, 0, big.len() as u32);
    for e in ten_refused(&coder, &big_header, &big).await {
        assert!(matches!(e, ApiError::TooLarge(_)), "{e}");
    }
    assert_eq!(calls(b.http, "tensor", "too_large").await, 10.0);

    // (B's counters are settled: each refusal above was counted before it was sent.)
    // A caller that abandons a relayed tensor half-way (resets its control stream): A gives
    // up its upstream transfer, and B, which watches its control stream while shards move,
    // stops assembling and frees the tensor's slot.
    let (a_cancelled, b_cancelled) = (
        calls(a.http, "tensor", "cancelled").await,
        calls(b.http, "tensor", "cancelled").await,
    );
    let ordered_in = |http| async move {
        sample(
            http,
            "nexstream_messages_total",
            &["mode=\"reliable_ordered\"", "direction=\"received\""],
        )
        .await
    };
    let b_messages = ordered_in(b.http).await;
    let mut half = open_raw_tensor(coder.session(), 2 << 20, 1 << 20, &[(0, 1 << 20)])
        .await
        .unwrap();
    eventually("B reads the relayed tensor's control message", async || {
        ordered_in(b.http).await > b_messages
    })
    .await;
    half.send.reset(nexus_stream::codes::CANCELLED);
    eventually(
        "the abandoned tensor is given up at both hops",
        async || {
            calls(a.http, "tensor", "cancelled").await == a_cancelled + 1.0
                && calls(b.http, "tensor", "cancelled").await == b_cancelled + 1.0
        },
    )
    .await;
    // Malformed shards through the relay: one too long, one out of range, one twice. Each
    // fails its tensor with a reason; the session carries on.
    for (what, shards) in [
        ("a shard too long", vec![(0, 1 << 20), (1, (1 << 20) + 1)]),
        ("an index out of range", vec![(0, 1 << 20), (2, 1 << 20)]),
        ("an index twice", vec![(0, 1 << 20), (0, 1 << 20)]),
    ] {
        let e = raw_tensor(coder.session(), 2 << 20, 1 << 20, &shards)
            .await
            .expect_err(what);
        assert!(matches!(e, ApiError::BadMessage(_)), "{what}: {e}");
    }
    coder
        .send_tensor_checked(&header, &tensor, 4 << 20)
        .await
        .expect("the session still relays tensors after malformed ones");

    // No route: refused with a reason, its shards stopped, the session unharmed.
    let nowhere = Client::connect_dir_in(&caller_mic, a.udp, DOMAIN)
        .await
        .unwrap()
        .route_by("translation");
    let e = nowhere.infer(&request(1)).await.unwrap_err();
    assert!(matches!(e, ApiError::Refused(_)), "{e}");
    for e in ten_refused(&nowhere, &big_header, &big).await {
        assert!(matches!(e, ApiError::Refused(_)), "{e}");
    }
    tokio::time::timeout(Duration::from_secs(30), coder.infer(&request(2)))
        .await
        .expect("the session still carries calls after refused tensors")
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        Client::without_hello(nowhere.session().clone()).infer(&request(2)),
    )
    .await
    .expect("the refused tensors' session still carries calls")
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
    // The two relayed 20 MiB tensors among them: billed by A, counted apart by B.
    let two_tensors = f64::from(40u32 << 20);
    eventually("A bills the caller's relayed tensors", async || {
        billed(a.http).await >= two_tensors
    })
    .await;
    eventually("B counts the relayed tensors apart", async || {
        sample(b.http, "nexus_dataplane_relayed_bytes_total", &[]).await >= two_tensors
    })
    .await;
    assert_eq!(billed(b.http).await, 0.0, "B bills no relayed tensor byte");

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
    let relayed = calls(a.http, "infer", "relayed").await;
    for _ in 0..64 {
        coder.infer(&request(1)).await.unwrap();
    }
    assert_eq!(calls(a.http, "infer", "relayed").await, relayed + 64.0);
    program(&a, vec![advert("on-a", a.udp, "code-generation")]).await;
    let served = calls(a.http, "infer", "ok").await;
    let counted = tenant_packets(&a).await;
    for _ in 0..128 {
        coder.infer(&request(1)).await.unwrap();
    }
    assert_eq!(calls(a.http, "infer", "ok").await, served + 128.0);
    assert_eq!(calls(a.http, "infer", "relayed").await, relayed + 64.0);
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
