//! qlog traces of sessions, on demand ([`crate::Endpoint::set_qlog_dir`], or the `QLOGDIR`
//! environment variable other QUIC stacks read too): one JSON-SEQ file (`.sqlog`, RFC 7464
//! records) per connection, in the qlog main schema's shape, so qvis and other qlog tools open
//! it.
//!
//! What is traced is what quinn exposes without its own `qlog` feature (which would turn on
//! `serde_json/preserve_order` for the whole workspace): connection-level events —
//! `connectivity:connection_started`, `recovery:metrics_updated` (RTT, congestion window, sent
//! and lost packets, sampled every [`SAMPLE_EVERY`] while they change), `nexus:mic_verified`
//! (the peer's model and certificate serial) and `connectivity:connection_closed` with its
//! reason. Packet-level events
//! (every frame sent or received) are not available this way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use nexus_mic::VerifiedMic;
use serde_json::{Value, json};
use tokio::sync::watch;

/// What the session's peer watch holds: unset until verified, then the MIC or the failure.
pub(crate) type PeerWatch = watch::Receiver<Option<Result<Arc<VerifiedMic>, String>>>;

/// Interval between samples of the recovery metrics.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Which end of the connection a trace is written by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The directory `QLOGDIR` names, if any.
pub(crate) fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os("QLOGDIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// One record: RS, the JSON text, LF (RFC 7464).
fn record(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    out.write_all(&[0x1e])?;
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")
}

/// Traces connection `conn` (whose verified peer `peer` announces) into a new file in `dir`
/// until it closes. Holds only the quinn handle, never the session: dropping the session
/// still closes the connection. Failures to write are logged and end the trace; they never
/// affect the session.
pub(crate) fn spawn(conn: quinn::Connection, peer: PeerWatch, dir: &Path, side: Side) {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let path = dir.join(format!(
        "nexus-{started}-{}-{}.sqlog",
        side.label(),
        conn.stable_id()
    ));
    tokio::spawn(async move {
        if let Err(e) = trace(&conn, peer, &path, side, started).await {
            tracing::warn!(path = %path.display(), error = %e, "qlog trace ended");
        }
    });
}

async fn trace(
    conn: &quinn::Connection,
    peer: PeerWatch,
    path: &Path,
    side: Side,
    started: u128,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let t0 = Instant::now();
    let time = |t0: Instant| t0.elapsed().as_secs_f64() * 1000.0;
    record(
        &mut out,
        &json!({
            "qlog_version": "0.4",
            "qlog_format": "JSON-SEQ",
            "title": "NexStream session",
            "trace": {
                "vantage_point": {"type": side.label(), "name": "nexus"},
                "common_fields": {
                    "protocol_type": ["QUIC"],
                    "time_format": "relative",
                    "reference_time": started as f64,
                    "group_id": conn.stable_id().to_string(),
                },
            },
        }),
    )?;
    record(
        &mut out,
        &json!({
            "time": time(t0),
            "name": "connectivity:connection_started",
            "data": {
                "dst_ip": conn.remote_address().ip().to_string(),
                "dst_port": conn.remote_address().port(),
                "protocol": "QUIC",
                "alpn": "nexus/1",
            },
        }),
    )?;
    out.flush()?;
    let mut verified = false;
    let mut last: Option<Value> = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let closed = conn.closed();
    tokio::pin!(closed);
    let reason = loop {
        tokio::select! {
            reason = &mut closed => break reason.to_string(),
            _ = tick.tick() => {}
        }
        let verified_peer = if verified {
            None
        } else {
            peer.borrow().clone()
        };
        if let Some(result) = verified_peer {
            verified = true;
            if let Ok(peer) = result {
                record(
                    &mut out,
                    &json!({
                        "time": time(t0),
                        "name": "nexus:mic_verified",
                        "data": {"model": peer.model.to_string(), "serial": peer.serial},
                    }),
                )?;
            }
        }
        let s = conn.stats();
        let metrics = json!({
            "smoothed_rtt": s.path.rtt.as_secs_f64() * 1000.0,
            "congestion_window": s.path.cwnd,
            "packets_sent": s.path.sent_packets,
            "packets_lost": s.path.lost_packets,
            "bytes_lost": s.path.lost_bytes,
            "congestion_events": s.path.congestion_events,
            "mtu": s.path.current_mtu,
        });
        if last.as_ref() != Some(&metrics) {
            record(
                &mut out,
                &json!({"time": time(t0), "name": "recovery:metrics_updated", "data": metrics}),
            )?;
            out.flush()?;
            last = Some(metrics);
        }
    };
    record(
        &mut out,
        &json!({
            "time": time(t0),
            "name": "connectivity:connection_closed",
            "data": {"reason": reason},
        }),
    )?;
    out.flush()
}
