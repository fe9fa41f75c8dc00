//! NexStream counters, registered in the process's prometheus-client registry. Hot-path
//! counters are resolved once per label set at construction, so counting a message is one
//! atomic add.

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
