//! NexStream counters, registered in the process's prometheus-client registry. Hot-path
//! counters are resolved once per label set at construction, so counting a message is one
//! atomic add.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::frame::Mode;

type Labels = Vec<(&'static str, &'static str)>;

/// Per-mode counters of one direction.
#[derive(Debug, Clone, Default)]
struct PerMode {
    messages: [Counter; 4],
    bytes: [Counter; 4],
}

/// All NexStream metrics of one endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    messages: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    sent: PerMode,
    received: PerMode,
    handshakes: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    refused_streams: Family<Labels, Counter>,
    expired: Family<Labels, Counter>,
    connections: Gauge,
}

impl Metrics {
    /// Fresh metrics, not yet registered.
    pub fn new() -> Self {
        let m = Self::default();
        let per = |dir: &'static str| {
            let mut p = PerMode::default();
            for mode in Mode::ALL {
                let l = vec![("mode", mode.label()), ("direction", dir)];
                p.messages[mode as usize] = m.messages.get_or_create(&l).clone();
                p.bytes[mode as usize] = m.bytes.get_or_create(&l).clone();
            }
            p
        };
        let sent = per("sent");
        let received = per("received");
        Self {
            sent,
            received,
            ..m
        }
    }

    /// Registers every metric under `nexstream_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nexstream");
        r.register(
            "messages",
            "Messages sent and received, by delivery mode",
            self.messages.clone(),
        );
        r.register(
            "bytes",
            "Payload bytes sent and received, by delivery mode",
            self.bytes.clone(),
        );
        r.register(
            "handshakes",
            "Completed and failed handshakes, by result",
            self.handshakes.clone(),
        );
        r.register(
            "mic_refusals",
            "Peers refused by MIC verification, by reason",
            self.refusals.clone(),
        );
        r.register(
            "refused_streams",
            "Streams and datagrams refused for bad input or limits, by reason",
            self.refused_streams.clone(),
        );
        r.register(
            "expired",
            "Partially reliable messages dropped at their deadline, by side",
            self.expired.clone(),
        );
        r.register("connections", "Open connections", self.connections.clone());
    }

    pub(crate) fn sent(&self, mode: Mode, bytes: usize) {
        self.sent.messages[mode as usize].inc();
        self.sent.bytes[mode as usize].inc_by(bytes as u64);
    }

    pub(crate) fn received(&self, mode: Mode, bytes: usize) {
        self.received.messages[mode as usize].inc();
        self.received.bytes[mode as usize].inc_by(bytes as u64);
    }

    pub(crate) fn handshake(&self, result: &'static str) {
        self.handshakes
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub(crate) fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub(crate) fn refused_stream(&self, reason: &'static str) {
        self.refused_streams
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub(crate) fn expired(&self, side: &'static str) {
        self.expired.get_or_create(&vec![("side", side)]).inc();
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Messages counted for a mode and direction (`"sent"`/`"received"`): for tests and
    /// status pages.
    pub fn messages(&self, mode: Mode, direction: &str) -> u64 {
        let p = if direction == "sent" {
            &self.sent
        } else {
            &self.received
        };
        p.messages[mode as usize].get()
    }

    /// MIC refusals counted for a reason label.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        self.refusals.get_or_create(&vec![("reason", reason)]).get()
    }

    /// Refused streams counted for a reason label.
    pub fn refused_streams(&self, reason: &'static str) -> u64 {
        self.refused_streams
            .get_or_create(&vec![("reason", reason)])
            .get()
    }

    /// Expired partially reliable messages on a side (`"sender"`/`"receiver"`).
    pub fn expired_count(&self, side: &'static str) -> u64 {
        self.expired.get_or_create(&vec![("side", side)]).get()
    }

    /// Handshakes counted for a result label.
    pub fn handshakes(&self, result: &'static str) -> u64 {
        self.handshakes
            .get_or_create(&vec![("result", result)])
            .get()
    }

    /// Open connections.
    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }
}

/// Which way a byte went, seen from this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Sent = 0,
    Received = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Sent, Direction::Received];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// The traffic of one session, by direction and delivery mode: what a serving node bills the
/// peer's tenant for. Counted beside the endpoint-wide [`Metrics`] at the same points (payload
/// bytes of complete messages; tensor shards are added by the API layer that assembles them).
///
/// [`Tally::take`] hands over what was counted since the previous take and starts again from
/// zero, so a meter that harvests sessions periodically never counts a byte twice, and what a
/// session counted after its last harvest is still there for a final one after it closed.
#[derive(Debug, Default)]
pub struct Tally {
    bytes: [[AtomicU64; 4]; 2],
    messages: [[AtomicU64; 4]; 2],
    account: OnceLock<String>,
}

/// What a [`Tally`] counted between two takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TallyDelta {
    bytes: [[u64; 4]; 2],
    messages: [[u64; 4]; 2],
}

impl TallyDelta {
    pub fn bytes(&self, direction: Direction, mode: Mode) -> u64 {
        self.bytes[direction as usize][mode as usize]
    }

    pub fn messages(&self, direction: Direction, mode: Mode) -> u64 {
        self.messages[direction as usize][mode as usize]
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.bytes.iter().flatten().all(|&b| b == 0)
            && self.messages.iter().flatten().all(|&m| m == 0)
    }
}

impl Tally {
    /// Counts one message of `bytes` payload bytes.
    pub fn record(&self, direction: Direction, mode: Mode, bytes: usize) {
        self.bytes[direction as usize][mode as usize].fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages[direction as usize][mode as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// What was counted since the last take; the tally starts again from zero.
    pub fn take(&self) -> TallyDelta {
        let mut d = TallyDelta::default();
        for dir in 0..2 {
            for mode in 0..4 {
                d.bytes[dir][mode] = self.bytes[dir][mode].swap(0, Ordering::Relaxed);
                d.messages[dir][mode] = self.messages[dir][mode].swap(0, Ordering::Relaxed);
            }
        }
        d
    }

    /// Names what the session's traffic is accounted to beyond the peer's tenant (NexAPI: the
    /// routing domain the caller declares). Set once: the first name wins, so a peer cannot
    /// move traffic already counted to another account; returns whether this call set it.
    pub fn set_account(&self, account: &str) -> bool {
        self.account.set(account.to_owned()).is_ok()
    }

    /// The account, if one was named.
    pub fn account(&self) -> Option<&str> {
        self.account.get().map(String::as_str)
    }
}
