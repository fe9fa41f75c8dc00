//! NexAPI end to end over NexStream on loopback UDP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nexus_api::demo::{DemoModel, complete};
use nexus_api::server::{ApiMetrics, TokenSink};
use nexus_api::{ApiError, Binding, Capabilities, Client, InferRequest, Model, fnv64, serve};
use nexus_firmware::header::{DType, DeliveryMode, Flags, Header};
use nexus_stream::linkem::{Impairment, UdpLink};
use nexus_stream::testing::TestPki;
use nexus_stream::{Config, Endpoint, Limits, Metrics};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start<M: Model>(model: M) -> (Endpoint, Endpoint, Arc<ApiMetrics>, SocketAddr) {
    start_with(model, Config::default()).await
}

async fn start_with<M: Model>(
    model: M,
    server_config: Config,
) -> (Endpoint, Endpoint, Arc<ApiMetrics>, SocketAddr) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let s = pki
        .issue("nexus://acme/demo@1.0.0")
        .unwrap()
        .identity()
        .unwrap();
    let c = pki
        .issue("nexus://acme/agent@1.0.0")
        .unwrap()
        .identity()
        .unwrap();
    let server = Endpoint::server(any(), &s, &server_config, Arc::new(Metrics::new())).unwrap();
    let client = Endpoint::client(any(), &c, &Config::default(), Arc::new(Metrics::new())).unwrap();
    let metrics = Arc::new(ApiMetrics::default());
    let addr = server.local_addr().unwrap();
    tokio::spawn(serve(server.clone(), Arc::new(model), Arc::clone(&metrics)));
    (server, client, metrics, addr)
}

/// A server configuration with these limits.
fn limited(limits: Limits) -> Config {
    Config {
        limits,
        ..Config::default()
    }
}

/// Waits until `done` holds, failing with `what` after 20 s: a bound on a hang, not a timing
/// assertion (each condition comes within milliseconds when the code works).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Streams `max_tokens` tokens for `prompt` and returns their text, in order.
async fn streamed(client: &Client, prompt: &str, max_tokens: u32) -> String {
    let mut t = client
        .stream_tokens(&InferRequest {
            model: String::new(),
            prompt: prompt.into(),
            max_tokens,
        })
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(tok) = t.next().await {
        text.push_str(&tok.unwrap());
    }
    text
}

#[tokio::test]
async fn unary_inference_capabilities_and_jsonrpc() {
    let (_s, client_ep, metrics, addr) = start(DemoModel::default()).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    assert_eq!(client.peer_capabilities().models, vec!["demo".to_string()]);
    assert!(client.negotiated().ops.contains(&"tensor".to_string()));
    // The server says how much one stream may carry in flight (tensor shards are sized by it).
    assert_eq!(
        client.peer_capabilities().stream_window,
        u64::from(Limits::default().stream_window)
    );

    let req = InferRequest {
        model: String::new(),
        prompt: "write a haiku".into(),
        max_tokens: 12,
    };
    let r = client.infer(&req).await.unwrap();
    assert_eq!(r.text, complete("write a haiku", 12));
    assert_eq!(r.tokens, 12);
    assert_eq!(metrics.calls("infer", "ok"), 1);

    // MCP, unchanged JSON-RPC on a reliable-ordered stream.
    let reply = client
        .jsonrpc(
            Binding::Mcp,
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"complete","arguments":{"prompt":"hi"}}}"#,
        )
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["content"][0]["text"], complete("hi", 8));
    // A notification gets no reply.
    assert!(
        client
            .jsonrpc(
                Binding::Mcp,
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
            )
            .await
            .unwrap()
            .is_none()
    );
    // A2A.
    let reply = client
        .jsonrpc(
            Binding::A2a,
            br#"{"jsonrpc":"2.0","id":"a","method":"message/send","params":{"message":{"role":"user","messageId":"m1","parts":[{"kind":"text","text":"plan"}]}}}"#,
        )
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["result"]["parts"][0]["text"], complete("plan", 8));
}

/// A unary call is one message each way, each followed by the sender's FIN in the same
/// packet: both sides take the FIN, so no stream is stopped or reset on the way. Before, both
/// dropped their receive half unread and quinn sent STOP_SENDING (answered with
/// RESET_STREAM) for every call.
#[tokio::test]
async fn completed_calls_end_their_streams_without_stop_sending_or_resets() {
    let (_s, client_ep, metrics, addr) = start(DemoModel::default()).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let req = InferRequest {
        model: String::new(),
        prompt: "hi".into(),
        max_tokens: 4,
    };
    for _ in 0..20 {
        client.infer(&req).await.unwrap();
    }
    assert_eq!(metrics.calls("infer", "ok"), 20);
    for _ in 0..5 {
        let mut t = client.stream_tokens(&req).await.unwrap();
        let mut n = 0;
        while let Some(tok) = t.next().await {
            tok.unwrap();
            n += 1;
        }
        assert_eq!(n, 4);
    }
    assert_eq!(metrics.calls("tokens", "ok"), 5);
    let stats = client.session().connection().stats();
    assert_eq!(
        stats.frame_tx.stop_sending, 0,
        "client stopped streams: {stats:?}"
    );
    assert_eq!(
        stats.frame_rx.stop_sending, 0,
        "server stopped streams: {stats:?}"
    );
    assert_eq!(
        stats.frame_rx.reset_stream, 0,
        "server reset streams: {stats:?}"
    );
    assert_eq!(
        stats.frame_tx.reset_stream, 0,
        "client reset streams: {stats:?}"
    );
}

#[tokio::test]
async fn token_streams_arrive_in_order_and_client_cancellation_frees_the_server() {
    let model = DemoModel {
        token_interval: Duration::from_millis(1),
        ..DemoModel::default()
    };
    let (_s, client_ep, metrics, addr) = start(model).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();

    assert_eq!(
        streamed(&client, "stream", 20).await,
        complete("stream", 20)
    );

    // A generation that would run for a million tokens, cancelled after three.
    let mut t = client
        .stream_tokens(&InferRequest {
            model: String::new(),
            prompt: "forever".into(),
            max_tokens: 1_000_000,
        })
        .await
        .unwrap();
    for _ in 0..3 {
        t.next().await.unwrap().unwrap();
    }
    assert_eq!(metrics.active_generations(), 1);
    t.cancel();
    while metrics.active_generations() != 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(metrics.tokens() < 1_000_000);
    assert_eq!(metrics.calls("tokens", "cancelled"), 1);
}

/// No head-of-line blocking between streams: while one bulk stream of a session is stuck (its
/// receiver reads none of it, so its window is full and the sender blocked), token streams
/// and calls on the same session go on.
#[tokio::test]
async fn calls_and_token_streams_pass_a_stuck_bulk_stream() {
    let model = DemoModel {
        token_interval: Duration::from_millis(1),
        ..DemoModel::default()
    };
    // The stuck stream must stay stuck for the whole test: a shard whose tensor never
    // announces itself is held unread until the preamble timeout.
    let config = limited(Limits {
        preamble_timeout: Duration::from_secs(3600),
        ..Limits::default()
    });
    let (_s, client_ep, _metrics, addr) = start_with(model, config).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let meta = nexus_api::tensor::shard_meta(99, 0).encode();
    let mut bulk = client.session().open_bulk(meta).await.unwrap();
    let stuck = tokio::spawn(async move { bulk.write_all(&vec![5u8; 12 << 20]).await });
    // Blocked by the receiver's windows: the sender says so (STREAM_DATA_BLOCKED, or
    // DATA_BLOCKED if it ran out of connection credit instead, which would hold every stream).
    let conn = client.session().connection().clone();
    eventually("the bulk stream fills its window", || {
        assert!(!stuck.is_finished(), "the bulk stream was not held");
        let sent = conn.stats().frame_tx;
        sent.stream_data_blocked + sent.data_blocked > 0
    })
    .await;
    let beside = async {
        assert_eq!(
            streamed(&client, "beside", 50).await,
            complete("beside", 50)
        );
        for i in 0..20 {
            let reply = client
                .infer(&InferRequest {
                    model: String::new(),
                    prompt: format!("call {i}"),
                    max_tokens: 4,
                })
                .await
                .unwrap();
            assert!(!reply.text.is_empty());
        }
    };
    tokio::time::timeout(Duration::from_secs(30), beside)
        .await
        .expect("calls and token streams were held behind the stuck stream");
    assert!(!stuck.is_finished(), "the bulk stream is still held");
    stuck.abort();
}

/// A model whose replies are larger than a stream window.
#[derive(Debug)]
struct Verbose;

impl Model for Verbose {
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn infer(&self, _: Bytes) -> Result<Bytes, ApiError> {
        Ok(Bytes::from(vec![b'v'; 12 << 20]))
    }
    async fn generate(&self, _: Bytes, _: &mut TokenSink<'_>) -> Result<(), ApiError> {
        Ok(())
    }
}

/// A caller that stops reading a reply (larger than its window, so the server's write blocks)
/// does not hold the server's task for the session's life: after the write-stall timeout the
/// server resets the stream with `STALLED`, counts it, and goes on serving the session.
#[tokio::test]
async fn a_reply_nobody_reads_is_given_up_after_the_stall_timeout() {
    let config = limited(Limits {
        write_stall_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let (server, client_ep, _metrics, addr) = start_with(Verbose, config).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let mut unread = client
        .session()
        .open_ordered_with(nexus_api::Meta::op("infer").encode(), true, Some(b"{}"))
        .await
        .unwrap();
    unread.send.finish().unwrap();
    eventually("the server gives the unread reply up", || {
        server.metrics().refused_streams("write_stalled") > 0
    })
    .await;
    // What was buffered is readable, then the reset.
    let read = unread.recv_msg().await;
    assert!(
        matches!(
            read,
            Err(nexus_stream::StreamError::Read(quinn::ReadError::Reset(code)))
                if code == nexus_stream::codes::STALLED
        ),
        "{read:?}"
    );
    // A reader that reads gets the whole reply on the same session.
    let reply = client.infer_raw(b"{}", true).await.unwrap();
    assert_eq!(reply.len(), 12 << 20);
}

/// A tensor sent to a peer that accepts its streams but reads none of them fails with
/// `WriteStalled` after the sender's stall timeout, its streams reset, instead of waiting for
/// the connection's life.
#[tokio::test]
async fn a_tensor_nobody_reads_fails_after_the_stall_timeout() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let id = |uri: &str| pki.issue(uri).unwrap().identity().unwrap();
    let server = Endpoint::server(
        any(),
        &id("nexus://acme/sink@1.0.0"),
        &Config::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    // A peer that takes every stream and reads none.
    tokio::spawn(async move {
        while let Some(a) = server.accept().await {
            tokio::spawn(async move {
                let Ok(session) = a.establish().await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(incoming) = session.accept().await {
                    held.push(incoming);
                }
            });
        }
    });
    let client_metrics = Arc::new(Metrics::new());
    let client_ep = Endpoint::client(
        any(),
        &id("nexus://acme/agent@1.0.0"),
        &limited(Limits {
            write_stall_timeout: Duration::from_millis(300),
            ..Limits::default()
        }),
        Arc::clone(&client_metrics),
    )
    .unwrap();
    let client = Client::without_hello(client_ep.connect(addr).await.unwrap());
    // Larger than the peer's stream window, so the shard's writer blocks.
    let len = 12 << 20;
    let sent = tokio::time::timeout(
        Duration::from_secs(20),
        client.send_tensor_sharded(&header(len), &vec![1u8; len as usize], len),
    )
    .await
    .expect("the send never gave up");
    assert!(
        matches!(
            sent,
            Err(ApiError::Stream(nexus_stream::StreamError::WriteStalled(_)))
        ),
        "{sent:?}"
    );
    // Counted where every stalled write is.
    assert!(client_metrics.refused_streams("write_stalled") >= 1);
}

/// A model that gives up after two tokens: server-side cancellation reaches the client.
#[derive(Debug)]
struct Quitter;

impl Model for Quitter {
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn infer(&self, _: Bytes) -> Result<Bytes, ApiError> {
        Err(ApiError::Model("no".into()))
    }
    async fn generate(&self, _: Bytes, sink: &mut TokenSink<'_>) -> Result<(), ApiError> {
        sink.send("a").await?;
        sink.send("b").await?;
        Err(ApiError::Model("out of memory".into()))
    }
}

#[tokio::test]
async fn server_cancellation_and_model_errors_reach_the_client() {
    let (_s, client_ep, _m, addr) = start(Quitter).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let mut t = client
        .stream_tokens(&InferRequest {
            model: String::new(),
            prompt: String::new(),
            max_tokens: 10,
        })
        .await
        .unwrap();
    // The reset may overtake tokens still in flight: what arrives is a prefix, then the error.
    let mut got = Vec::new();
    let end = loop {
        match t.next().await {
            Some(Ok(tok)) => got.push(tok),
            other => break other,
        }
    };
    assert!(["a", "b"].starts_with(&got.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(matches!(end, Some(Err(ApiError::Refused(_)))), "{end:?}");
    assert!(matches!(
        client.infer_raw(b"{}", true).await,
        Err(ApiError::Refused(_))
    ));
    // The connection is fine afterwards.
    assert!(client.session().connection().close_reason().is_none());
}

fn header(len: u32) -> Header {
    Header {
        mode: DeliveryMode::ReliableUnordered,
        flags: Flags(0),
        dtype: DType::F32,
        rank: 2,
        stream_id: 1,
        tenant_id: 42,
        sequence: 0,
        shape: [len / 4 / 256, 256, 0, 0],
        payload_len: len,
        trace_id: 9,
    }
}

/// On a path where one stream's window per round trip is slow (here 1 MiB per 20 ms, 52
/// MB/s), `send_tensor` cuts the tensor into one window per shard, so the shards travel in
/// parallel; the same tensor to the same server without the delay goes in one shard.
#[tokio::test]
async fn tensors_to_a_far_peer_travel_in_one_window_per_shard() {
    let server_config = limited(Limits {
        stream_window: 1 << 20,
        ..Limits::default()
    });
    let (_s, client_ep, _metrics, addr) = start_with(DemoModel::default(), server_config).await;
    let far = UdpLink::start(
        addr,
        Impairment {
            delay: Duration::from_millis(10),
            ..Impairment::default()
        },
        3,
    )
    .await
    .unwrap();
    let client = Client::connect(&client_ep, far.addr()).await.unwrap();
    assert_eq!(client.peer_capabilities().stream_window, 1 << 20);
    let len = 4u32 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let ack = client.send_tensor(&header(len), &data).await.unwrap();
    assert_eq!((ack.bytes, ack.shards), (u64::from(len), 4));

    // Loopback: 1 MiB per round trip of well under a millisecond is over 1.25 GB/s.
    let near = Client::connect(&client_ep, addr).await.unwrap();
    if near.session().rtt() < Duration::from_micros(800) {
        let ack = near.send_tensor(&header(len), &data).await.unwrap();
        assert_eq!((ack.bytes, ack.shards), (u64::from(len), 1));
    }
}

/// Refused tensors leave no lasting trace on a session: more of them than
/// `MAX_PENDING_TENSORS` (a relay's upstream session carries every refusal of its tenant's
/// callers) and the session still takes tensors.
#[tokio::test]
async fn a_session_takes_tensors_after_any_number_of_refused_ones() {
    let model = DemoModel {
        max_tensor: 1 << 20,
        ..DemoModel::default()
    };
    let (_s, client_ep, metrics, addr) = start(model).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let over = 2 << 20;
    let refused = nexus_api::server::MAX_PENDING_TENSORS + 10;
    for _ in 0..refused {
        let r = client
            .send_tensor(&header(over), &vec![0u8; over as usize])
            .await;
        assert!(matches!(r, Err(ApiError::TooLarge(_))), "{r:?}");
    }
    assert_eq!(metrics.calls("tensor", "too_large"), refused as u64);
    let data = vec![3u8; 1 << 20];
    let ack = client
        .send_tensor(&header(data.len() as u32), &data)
        .await
        .expect("a tensor after many refused ones");
    assert_eq!(ack.bytes, data.len() as u64);
}

/// Shards whose control stream never comes are stopped after the preamble timeout and
/// free their slot (and the receive window their unread bytes hold): a session stays usable
/// after more such orphans than `MAX_PENDING_TENSORS`.
#[tokio::test]
async fn shards_no_control_stream_claims_are_stopped_and_free_their_slot() {
    let model = DemoModel {
        max_tensor: 16 << 20,
        ..DemoModel::default()
    };
    let config = limited(Limits {
        preamble_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let (_s, client_ep, metrics, addr) = start_with(model, config).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    // Ids far from the client's own.
    let shard_meta = |id: u64| nexus_api::tensor::shard_meta((1u64 << 40) + id, 0).encode();
    // As many orphans as a session may have tensors pending: without a deadline they would
    // hold every slot for the session's life. The first is larger than the stream window,
    // so that its sender blocks until the receiver stops the stream.
    let orphans = nexus_api::server::MAX_PENDING_TENSORS as u64;
    let mut big = client.session().open_bulk(shard_meta(0)).await.unwrap();
    let big = tokio::spawn(async move { big.write_all(&vec![7u8; 9 << 20]).await });
    let mut held = Vec::new();
    for id in 1..orphans {
        let mut send = client.session().open_bulk(shard_meta(id)).await.unwrap();
        send.write_all(&[7u8; 1024]).await.unwrap();
        send.finish().unwrap();
        // Kept open on this side: dropping a stream does not reset it.
        held.push(send);
    }
    let stopped = tokio::time::timeout(Duration::from_secs(20), big)
        .await
        .expect("the orphaned shard was never stopped")
        .unwrap();
    assert!(
        matches!(
            stopped,
            Err(quinn::WriteError::Stopped(code)) if code == nexus_stream::codes::REFUSED
        ),
        "{stopped:?}"
    );
    eventually("every orphaned shard's slot is given up", || {
        metrics.calls("shard", "unclaimed") == orphans
    })
    .await;
    assert_eq!(metrics.calls("shard", "too_many_tensors"), 0);
    let data = vec![3u8; 1 << 20];
    let ack = client
        .send_tensor(&header(data.len() as u32), &data)
        .await
        .expect("a tensor after orphaned shards");
    assert_eq!(ack.bytes, data.len() as u64);
    drop(held);
}

/// A caller that drops `send_tensor` part-way cancels the transfer at the receiver (the
/// client resets the control stream, which the receiver watches while shards move) instead
/// of leaving it waiting, holding a pending-tensor slot, for shards that will never come.
#[tokio::test]
async fn a_dropped_tensor_send_is_given_up_by_the_receiver() {
    let model = DemoModel {
        max_tensor: 256 << 20,
        ..DemoModel::default()
    };
    let (server, client_ep, metrics, addr) = start(model).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let ordered_in = || {
        server
            .metrics()
            .messages(nexus_stream::Mode::ReliableOrdered, "received")
    };
    let before = ordered_in();
    // More than the client's 64 MiB send buffer: when the receiver has read the control
    // message, part of the tensor is not even written yet (a tensor that fits the buffer
    // would be delivered whole after the drop, and the receiver would fail only on its
    // acknowledgement, its work done).
    let len = 160 << 20;
    let data = vec![9u8; len];
    let h = header(len as u32);
    let sending = client.send_tensor_sharded(&h, &data, 10 << 20);
    let control_read = async {
        while ordered_in() == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        r = sending => panic!("the transfer finished before it could be dropped: {r:?}"),
        () = control_read => {}
    }
    eventually("the receiver gives the dropped tensor up", || {
        metrics.calls("tensor", "cancelled") > 0
    })
    .await;
    assert_eq!(metrics.calls("tensor", "ok"), 0);
    // Cancelled, not malformed: the shards were reset, not finished short.
    assert_eq!(metrics.calls("tensor", "bad_message"), 0);
    // And the session goes on.
    let small = vec![1u8; 1 << 20];
    let ack = client.send_tensor(&header(1 << 20), &small).await.unwrap();
    assert_eq!(ack.bytes, 1 << 20);
}

#[tokio::test]
async fn tensors_are_split_across_streams_and_reassembled() {
    let model = DemoModel {
        max_tensor: 16 << 20,
        ..DemoModel::default()
    };
    let (_s, client_ep, metrics, addr) = start(model).await;
    let client = Client::connect(&client_ep, addr).await.unwrap();
    let len = 9 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let ack = client
        .send_tensor_checked(&header(len as u32), &data, 1 << 20)
        .await
        .unwrap();
    assert_eq!(ack.bytes, len as u64);
    assert_eq!(ack.shards, 9);
    assert_eq!(ack.fnv64, fnv64(&data));
    // Unchecked (the default): no checksum pass on either side.
    let ack = client
        .send_tensor_sharded(&header(len as u32), &data, 1 << 20)
        .await
        .unwrap();
    assert_eq!((ack.bytes, ack.fnv64), (len as u64, 0));

    // Oversized: refused from the header alone, before any shard is read.
    let big = 32 << 20;
    let r = client
        .send_tensor_sharded(&header(big), &vec![0u8; big as usize], 8 << 20)
        .await;
    assert!(matches!(r, Err(ApiError::TooLarge(_))), "{r:?}");
    assert_eq!(metrics.calls("tensor", "too_large"), 1);
    // A header that lies about its payload is refused by the sender's own check.
    assert!(client.send_tensor(&header(1024), &[0u8; 10]).await.is_err());
    // The session still works.
    assert!(
        client
            .infer(&InferRequest {
                model: String::new(),
                prompt: "ok".into(),
                max_tokens: 1
            })
            .await
            .is_ok()
    );
}
