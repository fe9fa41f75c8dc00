//! End-to-end tests of NexStream over real UDP sockets on loopback, with faults injected by
//! the in-process link emulator. No timing assertions: deadlines are made unmeetable by
//! construction (link delay above the deadline) rather than measured.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexus_stream::linkem::{Impairment, UdpLink};
use nexus_stream::testing::{IssuedIdentity, TestPki};
use nexus_stream::{
    Config, Congestion, Delivery, Endpoint, Expiry, Incoming, Limits, Metrics, Mode, Session,
    StreamError, codes,
};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

struct Pair {
    server: Endpoint,
    client: Endpoint,
    server_sessions: tokio::sync::mpsc::Receiver<Result<Session, String>>,
}

async fn pair_with(
    server_id: &IssuedIdentity,
    client_id: &IssuedIdentity,
    server_cfg: Config,
    client_cfg: Config,
) -> Pair {
    init();
    let server = Endpoint::server(
        any(),
        &server_id.identity().unwrap(),
        &server_cfg,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let client = Endpoint::client(
        any(),
        &client_id.identity().unwrap(),
        &client_cfg,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let s = server.clone();
    tokio::spawn(async move {
        while let Some(a) = s.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx
                    .send(a.establish().await.map_err(|e| e.to_string()))
                    .await;
            });
        }
    });
    Pair {
        server,
        client,
        server_sessions: rx,
    }
}

async fn pair(pki: &TestPki) -> Pair {
    configured_pair(pki, Config::default(), Config::default()).await
}

/// [`pair_with`] for the usual server and client identities.
async fn configured_pair(pki: &TestPki, server_cfg: Config, client_cfg: Config) -> Pair {
    let s = pki.issue("nexus://acme/server@1.0.0").unwrap();
    let c = pki.issue("nexus://acme/client@1.0.0").unwrap();
    pair_with(&s, &c, server_cfg, client_cfg).await
}

/// A client session to `p`'s server and the server's side of it.
async fn connected(p: &mut Pair) -> (Session, Session) {
    let client = p
        .client
        .connect(p.server.local_addr().unwrap())
        .await
        .unwrap();
    let server = p.server_sessions.recv().await.unwrap().unwrap();
    (client, server)
}

/// Echoes every message of `server`'s next ordered stream back on it, then ends the stream;
/// yields the stream's metadata.
fn spawn_echo(server: &Session) -> tokio::task::JoinHandle<bytes::Bytes> {
    let server = server.clone();
    tokio::spawn(async move {
        let mut s = next_ordered(&server).await;
        while let Some(m) = s.recv_msg().await.unwrap() {
            s.send_msg(&m).await.unwrap();
        }
        s.send.finish().unwrap();
        s.preamble.meta
    })
}

async fn next_ordered(s: &Session) -> nexus_stream::OrderedStream {
    match s.accept().await.expect("session open") {
        Incoming::Ordered(o) => o,
        other => panic!("unexpected {other:?}"),
    }
}

/// Every mode through a link that drops, duplicates and reorders: the reliable modes deliver
/// everything (ordered in order), best-effort delivers at most what was sent, and the
/// connection survives.
#[tokio::test]
async fn all_modes_survive_loss_duplication_and_reordering() {
    let pki = TestPki::new().unwrap();
    let mut p = pair(&pki).await;
    let link = UdpLink::start(
        p.server.local_addr().unwrap(),
        Impairment {
            loss: 0.05,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_delay: Duration::from_millis(3),
            ..Impairment::default()
        },
        7,
    )
    .await
    .unwrap();
    let client = p.client.connect(link.addr()).await.unwrap();
    let server = p.server_sessions.recv().await.unwrap().unwrap();
    assert_eq!(
        client.peer().await.unwrap().model.to_string(),
        "nexus://acme/server@1.0.0"
    );
    assert_eq!(
        server.peer().await.unwrap().model.to_string(),
        "nexus://acme/client@1.0.0"
    );

    // Reliable-ordered: 200 messages of 1..3 KiB, echoed back in order.
    let mut o = client.open_ordered(&b"echo"[..], false).await.unwrap();
    let echo = spawn_echo(&server);
    for i in 0..200u32 {
        let msg = vec![(i % 251) as u8; 1024 + (i as usize % 3) * 1024];
        o.send_msg(&msg).await.unwrap();
    }
    o.send.finish().unwrap();
    for i in 0..200u32 {
        let m = o.recv_msg().await.unwrap().unwrap();
        assert_eq!(m.len(), 1024 + (i as usize % 3) * 1024);
        assert!(
            m.iter().all(|b| *b == (i % 251) as u8),
            "message {i} out of order"
        );
    }
    assert!(o.recv_msg().await.unwrap().is_none());
    assert_eq!(&echo.await.unwrap()[..], b"echo");

    // Reliable-unordered and partially reliable (generous deadline): all delivered.
    for i in 0..50u32 {
        client
            .send_unordered(format!("u{i}"), &vec![1u8; 4000])
            .await
            .unwrap();
    }
    let mut partial = Vec::new();
    for i in 0..20u32 {
        let c = client.clone();
        partial.push(tokio::spawn(async move {
            c.send_partial(
                format!("p{i}"),
                &[2u8; 3000],
                Expiry::Within(Duration::from_secs(20)),
            )
            .await
            .unwrap()
        }));
    }
    // Best-effort datagrams.
    let mut sent_datagrams = 0;
    for i in 0..100u16 {
        if client.send_datagram(i, b"telemetry").is_ok() {
            sent_datagrams += 1;
        }
    }
    let mut unordered = std::collections::HashSet::new();
    let mut partials = std::collections::HashSet::new();
    let mut datagrams = 0;
    while unordered.len() < 50 || partials.len() < 20 {
        match server.accept().await.unwrap() {
            Incoming::Message(m) => {
                let key = String::from_utf8(m.meta.to_vec()).unwrap();
                match m.mode {
                    Mode::ReliableUnordered => {
                        assert_eq!(m.payload.len(), 4000);
                        unordered.insert(key);
                    }
                    Mode::PartiallyReliable => {
                        assert_eq!(m.payload.len(), 3000);
                        partials.insert(key);
                    }
                    other => panic!("mode {other:?}"),
                }
            }
            Incoming::Datagram { payload, .. } => {
                assert_eq!(&payload[..], b"telemetry");
                datagrams += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for t in partial {
        assert_eq!(t.await.unwrap(), Delivery::Delivered);
    }
    assert!(datagrams <= sent_datagrams);
    assert!(
        link.stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(
        link.stats()
            .duplicated
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert!(
        link.stats()
            .reordered
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    assert_eq!(
        p.server
            .metrics()
            .messages(Mode::ReliableUnordered, "received"),
        50
    );
}

/// A partially reliable message whose deadline cannot be met (one-way delay above it) is
/// reset and counted on the sender; the connection and other streams are unaffected.
#[tokio::test]
async fn partial_reliability_expires_without_hurting_the_connection() {
    let pki = TestPki::new().unwrap();
    let mut p = pair(&pki).await;
    let link = UdpLink::start(
        p.server.local_addr().unwrap(),
        Impairment {
            delay: Duration::from_millis(60),
            ..Impairment::default()
        },
        1,
    )
    .await
    .unwrap();
    let client = p.client.connect(link.addr()).await.unwrap();
    let server = p.server_sessions.recv().await.unwrap().unwrap();
    // An acknowledgement needs at least 120 ms (two delayed crossings); the deadline is 5 ms.
    let d = client
        .send_partial(
            &b"late"[..],
            &[0u8; 1000],
            Expiry::Within(Duration::from_millis(5)),
        )
        .await
        .unwrap();
    assert_eq!(d, Delivery::Expired);
    assert_eq!(p.client.metrics().expired_count("sender"), 1);
    // The same connection still carries reliable traffic.
    client
        .send_unordered(&b"after"[..], b"still here")
        .await
        .unwrap();
    loop {
        match server.accept().await.unwrap() {
            Incoming::Message(m) if &m.meta[..] == b"after" => {
                assert_eq!(&m.payload[..], b"still here");
                break;
            }
            // The expired message may or may not have been completed before the reset.
            Incoming::Message(m) => assert_eq!(&m.meta[..], b"late"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn refusal(p: &mut Pair, to: SocketAddr) -> String {
    match p.client.connect(to).await {
        Err(e) => e.refusal_label().unwrap_or_else(|| format!("other: {e}")),
        Ok(s) => {
            let e = nexus_stream::StreamError::Connection(s.closed().await);
            e.refusal_label().unwrap_or_else(|| format!("other: {e}"))
        }
    }
}

/// Each refusal reason reaches the refused peer in the QUIC close and is counted by the
/// refusing side.
#[tokio::test]
async fn mic_refusals_carry_their_reason() {
    let mut pki = TestPki::new().unwrap();
    let server_id = pki.issue("nexus://acme/server@1.0.0").unwrap();
    let strict = Config {
        requirement: "tenant=acme,capability=code-generation".parse().unwrap(),
        ..Config::default()
    };
    let cases: Vec<(&str, IssuedIdentity)> = vec![
        (
            "expired",
            pki.issue_expired("nexus://acme/old@1.0.0").unwrap(),
        ),
        (
            "wrong_tenant",
            pki.issue("nexus://evil/client@1.0.0").unwrap(),
        ),
        ("not_a_mic", pki.issue_plain("plain.example").unwrap()),
    ];
    for (want, client_id) in cases {
        let mut p = pair_with(&server_id, &client_id, strict.clone(), Config::default()).await;
        let addr = p.server.local_addr().unwrap();
        assert_eq!(refusal(&mut p, addr).await, want);
        assert!(p.server_sessions.recv().await.unwrap().is_err());
        assert_eq!(p.server.metrics().refusals(want), 1, "{want}");
    }

    // Missing capability: the requirement asks for one the attestation lacks.
    let client_id = pki.issue("nexus://acme/client@1.0.0").unwrap();
    let vision = Config {
        requirement: "capability=vision".parse().unwrap(),
        ..Config::default()
    };
    let mut p = pair_with(&server_id, &client_id, vision, Config::default()).await;
    let addr = p.server.local_addr().unwrap();
    assert_eq!(refusal(&mut p, addr).await, "missing_capability");

    // Revoked, through a CRL signed by the intermediate and loaded from a file.
    let revoked = pki.issue("nexus://acme/leaked@1.0.0").unwrap();
    pki.revoke(&revoked);
    let dir = tempfile::tempdir().unwrap();
    let crl = dir.path().join("crl.der");
    std::fs::write(&crl, pki.crl_der().unwrap()).unwrap();
    let mut p = pair_with(&server_id, &revoked, Config::default(), Config::default()).await;
    assert_eq!(p.server.trust().load_crl_file(&crl).unwrap(), 1);
    let addr = p.server.local_addr().unwrap();
    assert_eq!(refusal(&mut p, addr).await, "revoked");
    assert_eq!(p.server.metrics().refusals("revoked"), 1);

    // The other direction: a client refuses a server whose MIC expired.
    let old_server = pki.issue_expired("nexus://acme/server@0.9.0").unwrap();
    let mut p = pair_with(
        &old_server,
        &client_id,
        Config::default(),
        Config::default(),
    )
    .await;
    let addr = p.server.local_addr().unwrap();
    assert_eq!(refusal(&mut p, addr).await, "expired");
    assert_eq!(p.client.metrics().refusals("expired"), 1);
}

/// A repeat connection resumes and sends an idempotent request in 0-RTT; the server serves it
/// from 0-RTT data; non-idempotent streams wait for the handshake.
#[tokio::test]
async fn resumption_sends_idempotent_requests_in_0rtt() {
    let pki = TestPki::new().unwrap();
    let cfg = Config {
        zero_rtt: true,
        ..Config::default()
    };
    let mut p = configured_pair(&pki, cfg.clone(), cfg).await;
    let addr = p.server.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let mut zero_rtt = Vec::new();
        let mut keep = Vec::new();
        while let Some(session) = p.server_sessions.recv().await {
            let session = session.unwrap();
            keep.push(session.clone());
            let mut o = next_ordered(&session).await;
            zero_rtt.push((o.zero_rtt, o.preamble.idempotent()));
            let m = o
                .recv_msg()
                .await
                .unwrap_or_else(|e| panic!("session {}: {e}", zero_rtt.len()))
                .unwrap();
            o.send_msg(&m).await.unwrap();
            o.send.finish().unwrap();
            if zero_rtt.len() == 3 {
                break;
            }
        }
        (zero_rtt, keep)
    });
    async fn call(s: &Session, idempotent: bool) {
        let mut o = s.open_ordered(&b"q"[..], idempotent).await.unwrap();
        o.send_msg(b"ping").await.unwrap();
        let r = o.recv_msg().await;
        let r = r.unwrap_or_else(|e| {
            panic!(
                "call idempotent={idempotent} verified={}: {e}",
                s.is_verified()
            )
        });
        assert_eq!(&r.unwrap()[..], b"ping");
    }
    // First connection: full handshake; the round trip makes sure the ticket arrived.
    let first = p.client.connect(addr).await.unwrap();
    call(&first, true).await;
    first.close(codes::OK, "");
    drop(first);
    let early = p.client.connect_early(addr).await.unwrap();
    call(&early, true).await;
    assert!(early.peer().await.is_ok());
    let early2 = p.client.connect_early(addr).await.unwrap();
    call(&early2, false).await;
    let (seen, _keep) = server_task.await.unwrap();
    assert_eq!(seen[0], (false, true), "first connection is 1-RTT");
    assert_eq!(
        seen[1],
        (true, true),
        "resumed idempotent request rode 0-RTT"
    );
    assert_eq!(seen[2], (false, false), "non-idempotent request waited");
}

/// Replay defence on the server: a non-idempotent stream sent in 0-RTT (by a client that
/// skips its own rule) is refused with `REFUSED_0RTT` and counted; the connection survives.
#[tokio::test]
async fn server_refuses_non_idempotent_0rtt_streams() {
    let pki = TestPki::new().unwrap();
    let cfg = Config {
        zero_rtt: true,
        ..Config::default()
    };
    let mut p = configured_pair(&pki, cfg.clone(), cfg).await;
    let addr = p.server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(Ok(session)) = p.server_sessions.recv().await {
            tokio::spawn(async move {
                while let Some(Incoming::Ordered(mut o)) = session.accept().await {
                    if let Ok(Some(m)) = o.recv_msg().await {
                        let _ = o.send_msg(&m).await;
                        let _ = o.send.finish();
                    }
                }
            });
        }
    });
    let first = p.client.connect(addr).await.unwrap();
    let mut o = first.open_ordered(&b"q"[..], true).await.unwrap();
    o.send_msg(b"ping").await.unwrap();
    assert_eq!(&o.recv_msg().await.unwrap().unwrap()[..], b"ping");
    first.close(codes::OK, "");

    let raw = p
        .client
        .connect_0rtt_ungated(addr)
        .unwrap()
        .expect("a ticket allows 0-RTT");
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let mut pre = bytes::BytesMut::new();
    nexus_stream::Preamble::new(Mode::ReliableOrdered, &b"q"[..])
        .encode(&mut pre, 64)
        .unwrap();
    send.write_all(&pre).await.unwrap();
    let r = recv.read(&mut [0u8; 8]).await;
    assert!(
        matches!(r, Err(quinn::ReadError::Reset(c)) if c == codes::REFUSED_0RTT),
        "{r:?}"
    );
    assert_eq!(p.server.metrics().refused_streams("non_idempotent_0rtt"), 1);
    assert!(raw.close_reason().is_none());
}

/// Bad input on streams: each refused with a reason, counted, and the connection and the
/// process stay healthy.
#[tokio::test]
async fn bad_streams_are_refused_and_the_connection_survives() {
    let pki = TestPki::new().unwrap();
    let server_cfg = Config {
        limits: Limits {
            max_uni_streams: 4,
            max_message: 64 * 1024,
            max_meta: 256,
            preamble_timeout: Duration::from_millis(200),
            stream_window: 64 * 1024,
            ..Limits::default()
        },
        ..Config::default()
    };
    let mut p = configured_pair(&pki, server_cfg, Config::default()).await;
    let (client, server) = connected(&mut p).await;
    let conn = client.connection().clone();
    let m = Arc::clone(p.server.metrics());

    async fn raw_uni(conn: &quinn::Connection, bytes: &[u8]) -> Option<u64> {
        let mut u = conn.open_uni().await.unwrap();
        let _ = u.write_all(bytes).await;
        u.stopped().await.ok().flatten().map(|c| c.into_inner())
    }
    // Unknown mode, wrong version, best-effort on a stream, oversized metadata, oversized message.
    assert_eq!(
        raw_uni(&conn, &[1, 9, 0, 0, 0, 0, 0, 0, 0, 0]).await,
        Some(codes::UNKNOWN_MODE.into_inner())
    );
    assert_eq!(
        raw_uni(&conn, &[7, 1, 0, 0, 0, 0, 0, 0, 0, 0]).await,
        Some(codes::BAD_FRAME.into_inner())
    );
    assert_eq!(
        raw_uni(&conn, &[1, 2, 0, 0, 0, 0, 0, 0, 0, 0]).await,
        Some(codes::UNKNOWN_MODE.into_inner())
    );
    assert_eq!(
        raw_uni(&conn, &[1, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).await,
        Some(codes::TOO_LARGE.into_inner())
    );
    assert_eq!(
        raw_uni(
            &conn,
            &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]
        )
        .await,
        Some(codes::TOO_LARGE.into_inner())
    );
    assert_eq!(m.refused_streams("unknown_mode"), 1);
    assert_eq!(m.refused_streams("version"), 1);
    assert_eq!(m.refused_streams("mode_not_on_stream"), 1);
    assert_eq!(m.refused_streams("metadata_too_large"), 1);
    assert_eq!(m.refused_streams("message_too_large"), 1);

    // Unbounded stream opening: a peer holds at most `max_uni_streams` streams open here;
    // streams that never finish their preamble are stopped after the preamble timeout, and
    // the next open stays blocked by QUIC's stream limit until the peer resets them.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut u = conn.open_uni().await.unwrap();
        u.write_all(&[1]).await.unwrap();
        stalled.push(u);
    }
    assert!(
        futures::FutureExt::now_or_never(conn.open_uni()).is_none(),
        "the stream limit holds the fifth stream"
    );
    while m.refused_streams("preamble_timeout") < 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Dropping them resets them (the answer to STOP_SENDING), which returns the credit.
    drop(stalled);

    // Stalled reader: the server application never reads an ordered stream; the sender is
    // held by flow control at the stream window and a partially reliable send expires,
    // while other streams keep working.
    let mut o = client
        .open_ordered(&b"never-read"[..], false)
        .await
        .unwrap();
    let _unread = next_ordered(&server).await;
    let writer = tokio::spawn(async move {
        let big = vec![0u8; 60 * 1024];
        for _ in 0..10 {
            if o.send_msg(&big).await.is_err() {
                break;
            }
        }
        o
    });
    client.send_unordered(&b"ok"[..], b"alive").await.unwrap();
    loop {
        if let Incoming::Message(msg) = server.accept().await.unwrap() {
            assert_eq!(&msg.payload[..], b"alive");
            break;
        }
    }
    assert!(
        !writer.is_finished(),
        "flow control holds the writer of an unread stream"
    );
    writer.abort();
    assert!(client.connection().close_reason().is_none());
    assert!(server.connection().close_reason().is_none());
}

/// Bidirectional streams: a bad preamble is refused with its reason, a preamble that never
/// completes is stopped after the timeout (in a task of its own, so it holds up nothing), and a
/// good request opened behind both is served.
#[tokio::test]
async fn bad_bidirectional_streams_are_refused_and_others_served() {
    let pki = TestPki::new().unwrap();
    let server_cfg = Config {
        limits: Limits {
            preamble_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        ..Config::default()
    };
    let mut p = configured_pair(&pki, server_cfg, Config::default()).await;
    let (client, server) = connected(&mut p).await;
    let m = Arc::clone(p.server.metrics());
    let (served_tx, mut served) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            if let Incoming::Ordered(mut o) = incoming {
                let msg = o.recv.recv_msg().await.unwrap().unwrap();
                o.send.send_last(&msg).await.unwrap();
                let _ = served_tx.send(o.preamble.meta.clone()).await;
            }
        }
    });
    let conn = client.connection().clone();

    // Reliable-unordered is a unidirectional mode: refused on a bidirectional stream.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let stopped = send.stopped().await.unwrap().map(|c| c.into_inner());
    assert_eq!(stopped, Some(codes::UNKNOWN_MODE.into_inner()));
    assert!(matches!(
        recv.read_to_end(1024).await,
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c))) if c == codes::UNKNOWN_MODE
    ));
    assert_eq!(m.refused_streams("mode_on_wrong_stream"), 1);

    // Half a preamble, then nothing: stopped after the timeout.
    let (mut stalled, _stalled_recv) = conn.open_bi().await.unwrap();
    stalled.write_all(&[1]).await.unwrap();
    let mut good = client.open_ordered(&b"good"[..], false).await.unwrap();
    good.send_msg(b"hello").await.unwrap();
    assert_eq!(
        stalled.stopped().await.unwrap().map(|c| c.into_inner()),
        Some(codes::STALLED.into_inner())
    );
    assert_eq!(m.refused_streams("preamble_timeout"), 1);
    assert_eq!(&served.recv().await.unwrap()[..], b"good");
    assert_eq!(&good.recv.recv_msg().await.unwrap().unwrap()[..], b"hello");
    assert!(client.connection().close_reason().is_none());
}

/// Limits under which one stalled stream could hold every other stream of its session are
/// refused when the endpoint is built, with the reason.
#[tokio::test]
async fn limits_that_let_one_stream_hold_the_others_are_refused() {
    init();
    let pki = TestPki::new().unwrap();
    let id = pki
        .issue("nexus://acme/server@1.0.0")
        .unwrap()
        .identity()
        .unwrap();
    let with = |connection_window: u32, max_bidi_streams: u32| Config {
        limits: Limits {
            stream_window: 8 << 20,
            connection_window,
            max_bidi_streams,
            ..Limits::default()
        },
        ..Config::default()
    };
    for (config, expected) in [
        (with(8 << 20, 256), "connection window"),
        (with(4 << 20, 256), "connection window"),
        (with(64 << 20, 0), "bidirectional"),
    ] {
        for server in [true, false] {
            let built = if server {
                Endpoint::server(any(), &id, &config, Arc::new(Metrics::new()))
            } else {
                Endpoint::client(any(), &id, &config, Arc::new(Metrics::new()))
            };
            match built {
                Err(StreamError::Limits(why)) => assert!(why.contains(expected), "{why}"),
                other => panic!("accepted {:?}: {other:?}", config.limits),
            }
        }
    }
    assert!(Endpoint::server(any(), &id, &with(16 << 20, 1), Arc::new(Metrics::new())).is_ok());
}

/// Draining refuses new connections and lets existing ones finish.
#[tokio::test]
async fn drain_closes_sessions() {
    let pki = TestPki::new().unwrap();
    let mut p = pair(&pki).await;
    let addr = p.server.local_addr().unwrap();
    let client = p.client.connect(addr).await.unwrap();
    let _server = p.server_sessions.recv().await.unwrap().unwrap();
    p.server.drain(Duration::from_millis(200)).await;
    let e = client.closed().await;
    assert!(
        matches!(
            e,
            quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == codes::SHUTDOWN
        ),
        "{e}"
    );
    assert!(p.client.connect(addr).await.is_err());
}

/// Reads every record of a JSON-SEQ file (RFC 7464: RS, JSON text, LF).
fn sqlog_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .split(|b| *b == 0x1e)
        .filter(|r| !r.is_empty())
        .map(|r| {
            assert_eq!(r.last(), Some(&b'\n'), "a record ends with LF");
            serde_json::from_slice(r).unwrap()
        })
        .collect()
}

/// With a qlog directory, each end writes a trace of the session that qlog tools read: the
/// header, the connection's start, its recovery metrics, the peer's MIC and the close with its
/// reason; without one, nothing is written.
#[tokio::test]
async fn sessions_write_qlog_traces_on_demand() {
    let pki = TestPki::new().unwrap();
    let mut p = pair(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, client_dir) = (dir.path().join("server"), dir.path().join("client"));
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&client_dir).unwrap();
    p.server.set_qlog_dir(Some(server_dir.clone()));
    p.client.set_qlog_dir(Some(client_dir.clone()));

    let c = p
        .client
        .connect(p.server.local_addr().unwrap())
        .await
        .unwrap();
    let s = p.server_sessions.recv().await.unwrap().unwrap();
    let mut o = c.open_ordered(&b"op=echo"[..], false).await.unwrap();
    o.send_msg(b"hello").await.unwrap();
    let mut got = next_ordered(&s).await;
    assert_eq!(&got.recv_msg().await.unwrap().unwrap()[..], b"hello");
    // Long enough for a few samples of the recovery metrics.
    tokio::time::sleep(nexus_stream::qlog::SAMPLE_EVERY * 3).await;
    c.close(codes::OK, "done");
    s.closed().await;
    drop((o, got));

    for (dir, side, peer) in [
        (&server_dir, "server", "nexus://acme/client@1.0.0"),
        (&client_dir, "client", "nexus://acme/server@1.0.0"),
    ] {
        // The trace is complete once its close is written.
        let mut records = Vec::new();
        for _ in 0..100 {
            let files: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            assert_eq!(files.len(), 1, "one trace per session");
            records = sqlog_records(&files[0].path());
            if records
                .last()
                .is_some_and(|r| r["name"] == "connectivity:connection_closed")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let header = &records[0];
        assert_eq!(header["qlog_format"], "JSON-SEQ", "{header}");
        assert_eq!(header["trace"]["vantage_point"]["type"], side);
        let names: Vec<&str> = records[1..]
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names[0], "connectivity:connection_started", "{names:?}");
        assert!(names.contains(&"recovery:metrics_updated"), "{names:?}");
        let mic = records
            .iter()
            .find(|r| r["name"] == "nexus:mic_verified")
            .expect("the peer's MIC is traced");
        assert_eq!(mic["data"]["model"], peer);
        let closed = records.last().unwrap();
        assert_eq!(closed["name"], "connectivity:connection_closed");
        assert!(
            closed["data"]["reason"].as_str().unwrap().contains("done") || side == "client",
            "{closed}"
        );
        let metrics = records
            .iter()
            .find(|r| r["name"] == "recovery:metrics_updated")
            .unwrap();
        assert!(metrics["data"]["smoothed_rtt"].as_f64().unwrap() > 0.0);
        assert!(metrics["data"]["packets_sent"].as_u64().unwrap() > 0);
        let times: Vec<f64> = records[1..]
            .iter()
            .map(|r| r["time"].as_f64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    // Tracing off: a new session writes nothing.
    p.server.set_qlog_dir(None);
    p.client.set_qlog_dir(None);
    let c2 = p
        .client
        .connect(p.server.local_addr().unwrap())
        .await
        .unwrap();
    let _s2 = p.server_sessions.recv().await.unwrap().unwrap();
    c2.close(codes::OK, "done");
    assert_eq!(std::fs::read_dir(&server_dir).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&client_dir).unwrap().count(), 1);
}

/// Each end asks the other, with an ACK_FREQUENCY frame, to acknowledge within
/// `MAX_ACK_DELAY` rather than QUIC's default 25 ms, which would otherwise sit in every probe
/// timeout (the tail of a call whose last packet is lost).
#[tokio::test]
async fn sessions_ask_their_peer_for_prompt_acknowledgements() {
    assert!(nexus_stream::MAX_ACK_DELAY < Duration::from_millis(25));
    let pki = TestPki::new().unwrap();
    let mut p = pair(&pki).await;
    let (client, server) = connected(&mut p).await;
    let mut o = client.open_ordered(&b"echo"[..], false).await.unwrap();
    let echo = spawn_echo(&server);
    o.send_msg(b"ping").await.unwrap();
    o.send.finish().unwrap();
    assert_eq!(&o.recv_msg().await.unwrap().unwrap()[..], b"ping");
    echo.await.unwrap();
    // The frame goes in the first 1-RTT packets; poll (the wait bounds a hang, it measures
    // nothing).
    let frames = |s: &Session| {
        let st = s.connection().stats();
        (st.frame_tx.ack_frequency, st.frame_rx.ack_frequency)
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while [&client, &server]
            .iter()
            .any(|s| frames(s).0 == 0 || frames(s).1 == 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "ACK_FREQUENCY frames (sent, received): client {:?}, server {:?}",
            frames(&client),
            frames(&server)
        )
    });
}

/// `Config::congestion` picks each session's controller, and BBR, which does not back off on
/// loss alone, still delivers every byte through a lossy, reordering link.
#[tokio::test]
async fn sessions_run_the_configured_congestion_controller() {
    let pki = TestPki::new().unwrap();
    let mut default = pair(&pki).await;
    let (client, server) = connected(&mut default).await;
    for s in [&client, &server] {
        let cc = s.connection().congestion_state().into_any();
        assert!(cc.is::<quinn::congestion::Cubic>(), "CUBIC by default");
    }

    let bbr = Config {
        congestion: Congestion::Bbr,
        ..Config::default()
    };
    let mut p = configured_pair(&pki, bbr.clone(), bbr).await;
    let link = UdpLink::start(
        p.server.local_addr().unwrap(),
        Impairment {
            loss: 0.05,
            reorder: 0.05,
            reorder_delay: Duration::from_millis(2),
            ..Impairment::default()
        },
        11,
    )
    .await
    .unwrap();
    let client = p.client.connect(link.addr()).await.unwrap();
    let server = p.server_sessions.recv().await.unwrap().unwrap();
    for s in [&client, &server] {
        let cc = s.connection().congestion_state().into_any();
        assert!(cc.is::<quinn::congestion::Bbr>(), "BBR as configured");
    }
    let mut o = client.open_ordered(&b"bulk"[..], false).await.unwrap();
    let sent: Vec<Vec<u8>> = (0..64u32)
        .map(|i| vec![(i % 251) as u8; 16 << 10])
        .collect();
    for m in &sent {
        o.send_msg(m).await.unwrap();
    }
    o.send.finish().unwrap();
    let mut s = next_ordered(&server).await;
    for m in &sent {
        assert_eq!(&s.recv_msg().await.unwrap().unwrap()[..], &m[..]);
    }
    assert!(s.recv_msg().await.unwrap().is_none());
    assert!(
        link.stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[test]
fn congestion_controllers_are_named_as_the_flag_reads_them() {
    for c in [Congestion::Cubic, Congestion::Bbr] {
        assert_eq!(c.as_str().parse::<Congestion>(), Ok(c));
        assert_eq!(c.to_string(), c.as_str());
    }
    let err = "reno".parse::<Congestion>().unwrap_err();
    assert!(err.contains("cubic or bbr"), "{err}");
}

/// A session outlives its endpoint handle, as quinn's connections do, and its dispatch task
/// then waits quietly for the connection. (When the last `Endpoint` handle dropped, the task's
/// shutdown watch returned at once on every poll and it spun a core: 1 s of CPU per second,
/// measured from `/proc/self/stat`.) With the clock paused, tokio advances time only when
/// every task is idle, so a spinning task keeps the sleep below from ever ending; the
/// watchdog turns that hang into a failure.
#[test]
fn a_session_outlives_its_endpoint_handle_without_spinning() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pki = TestPki::new().unwrap();
            let mut p = pair(&pki).await;
            let (client, server) = connected(&mut p).await;
            drop(p.client);
            tokio::time::pause();
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::time::resume();
            // The session still takes what the peer opens.
            let mut o = server.open_ordered(&b"after"[..], false).await.unwrap();
            o.send_msg(b"still here").await.unwrap();
            let mut s = next_ordered(&client).await;
            assert_eq!(&s.preamble.meta[..], b"after");
            assert_eq!(&s.recv_msg().await.unwrap().unwrap()[..], b"still here");
        });
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the client's runtime never went idle after its endpoint was dropped");
}
