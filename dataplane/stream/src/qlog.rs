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

/// Most bytes one trace file holds. A sample is a few hundred bytes, so a connection whose
/// metrics change at every sample fills this in about nine hours; then the trace ends with a
/// `nexus:trace_truncated` record rather than growing without bound on the node's disk.
pub const MAX_TRACE_BYTES: u64 = 8 << 20;

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

/// A trace file's writer: RFC 7464 records (RS, the JSON text, LF), at most `cap` bytes of
/// them. The writes are small and buffered, so they are made in place rather than handed to
/// a blocking thread.
struct Records<W: Write> {
    out: W,
    written: u64,
    cap: u64,
}

impl<W: Write> Records<W> {
    fn new(out: W, cap: u64) -> Self {
        Self {
            out,
            written: 0,
            cap,
        }
    }

    /// Writes `v`; `false` once the cap is reached: then, instead of `v`, a last
    /// `nexus:trace_truncated` record (at `v`'s time) ends the trace.
    fn record(&mut self, v: &Value) -> std::io::Result<bool> {
        let text = serde_json::to_vec(v)?;
        if self.written + text.len() as u64 + 2 > self.cap {
            let last = json!({
                "time": v.get("time").cloned().unwrap_or(Value::Null),
                "name": "nexus:trace_truncated",
                "data": {"cap_bytes": self.cap},
            });
            self.write(&serde_json::to_vec(&last)?)?;
            self.out.flush()?;
            return Ok(false);
        }
        self.write(&text)?;
        Ok(true)
    }

    fn write(&mut self, text: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&[0x1e])?;
        self.out.write_all(text)?;
        self.out.write_all(b"\n")?;
        self.written += text.len() as u64 + 2;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
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
    let mut out = Records::new(
        std::io::BufWriter::new(std::fs::File::create(path)?),
        MAX_TRACE_BYTES,
    );
    let t0 = Instant::now();
    let time = |t0: Instant| t0.elapsed().as_secs_f64() * 1000.0;
    let header = json!({
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
    });
    let started_event = json!({
        "time": time(t0),
        "name": "connectivity:connection_started",
        "data": {
            "dst_ip": conn.remote_address().ip().to_string(),
            "dst_port": conn.remote_address().port(),
            "protocol": "QUIC",
            "alpn": "nexus/1",
        },
    });
    if !out.record(&header)? || !out.record(&started_event)? {
        return Ok(());
    }
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
                let event = json!({
                    "time": time(t0),
                    "name": "nexus:mic_verified",
                    "data": {"model": peer.model.to_string(), "serial": peer.serial},
                });
                if !out.record(&event)? {
                    return Ok(());
                }
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
            let event =
                json!({"time": time(t0), "name": "recovery:metrics_updated", "data": metrics});
            if !out.record(&event)? {
                return Ok(());
            }
            out.flush()?;
            last = Some(metrics);
        }
    };
    out.record(&json!({
        "time": time(t0),
        "name": "connectivity:connection_closed",
        "data": {"reason": reason},
    }))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Vec<Value> {
        bytes
            .split(|b| *b == 0x1e)
            .filter(|r| !r.is_empty())
            .map(|r| serde_json::from_slice(r).expect("each record is JSON"))
            .collect()
    }

    #[test]
    fn a_trace_at_its_cap_ends_with_a_truncation_record() {
        let mut buf = Vec::new();
        let mut out = Records::new(&mut buf, 200);
        let event = |i: u32| json!({"time": f64::from(i), "name": "recovery:metrics_updated", "data": {"n": i}});
        let mut kept = 0;
        while out.record(&event(kept)).expect("writes") {
            kept += 1;
        }
        assert!(kept > 0);
        let records = parse(&buf);
        assert_eq!(records.len(), kept as usize + 1);
        let last = records.last().expect("a record");
        assert_eq!(last["name"], "nexus:trace_truncated");
        assert_eq!(last["time"], f64::from(kept));
        assert_eq!(last["data"]["cap_bytes"], 200);
        // Everything before the truncation record fits in the cap.
        let before = buf.len() - serde_json::to_vec(last).expect("json").len() - 2;
        assert!(before <= 200, "{before}");
    }

    #[test]
    fn records_are_rfc_7464_sequences() {
        let mut buf = Vec::new();
        let mut out = Records::new(&mut buf, MAX_TRACE_BYTES);
        assert!(out.record(&json!({"a": 1})).expect("writes"));
        assert_eq!(buf, b"\x1e{\"a\":1}\n");
    }
}
