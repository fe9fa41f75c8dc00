//! Per-tenant traffic metering: the bytes and messages this node carries, by the peer's
//! tenant, the routing domain the caller declared, the delivery mode and the direction,
//! exported on `/metrics` and billed through the cloud API's usage endpoint.
//!
//! Where the numbers come from: every NexStream session keeps a [`Tally`] of its payload
//! bytes by direction and mode (counted where the endpoint-wide `nexstream_bytes` are). The
//! NexAPI server shows each established session to [`UsageMeter::track`], which waits for the
//! peer's verified MIC (its tenant is what gets billed) and keeps the tally until the
//! connection closes. [`UsageMeter::flush`] harvests every tally ([`Tally::take`] hands over
//! what was counted since the previous harvest, so nothing is counted twice) into Prometheus
//! counters and into one `traffic_bytes` event per (tenant, domain, mode), appended to the
//! durable spool of `nexus-usage-client`, whose reporter sends it with the usage token.
//!
//! What is billed: traffic of sessions this node *serves* (the callee side), both directions,
//! so a call between two Nexus nodes is billed once, by the node that answered it. Each
//! event's idempotency key names the node and the harvest interval
//! (`dp:<node>:<interval start ms>:<domain>:<mode>`), and interval starts strictly increase,
//! so a batch re-sent after a lost acknowledgement or a restart is billed once.
//!
//! Relayed calls: a node that relays a capability-addressed call ([`crate::routing`]) serves
//! the caller's session, so it bills the caller — the one tenant it verified. The relay's
//! leg to the endpoint carries `relay=1`; the endpoint leaves such a session unbilled only
//! when its peer presents this node's own model identity (a fellow node of the fabric, holding
//! the fabric's MIC key), so a relayed call is billed once and a stranger cannot dodge its
//! bill by claiming to be a relay. Relayed legs are counted apart
//! (`nexus_dataplane_relayed_bytes_total`).
//!
//! What can be lost: what was counted after the last harvest when the process is killed
//! (SIGKILL, OOM) — at most one `--usage-interval`. A graceful stop (SIGTERM) harvests after
//! draining, and what is spooled survives any crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use nexus_stream::{Direction, Mode, Session, Tally};
use nexus_usage_client::{Spool, UsageEvent};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Distinct domains counted per tenant; further ones are counted as [`OTHER_DOMAIN`]. The
/// domain comes from the caller, so without a bound one tenant could grow the node's metric
/// series and its own invoice's dimensions without limit.
pub const MAX_DOMAINS_PER_TENANT: usize = 64;
/// Domain label of traffic whose caller named no (valid) routing domain: direct calls.
pub const NO_DOMAIN: &str = "-";
/// Domain label beyond [`MAX_DOMAINS_PER_TENANT`].
pub const OTHER_DOMAIN: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    tenant: String,
    domain: String,
    mode: &'static str,
    direction: &'static str,
}

/// One served session being metered.
#[derive(Debug)]
struct Tracked {
    tenant: String,
    /// The peer presents this node's own model identity (relayed legs of such peers are
    /// billed by the relay).
    fellow: bool,
    tally: Arc<Tally>,
    closed: Arc<AtomicBool>,
}

/// The node's traffic meter. Cheap to share (`Arc`); `flush` does blocking file I/O when a
/// spool is configured.
#[derive(Debug)]
pub struct UsageMeter {
    node: String,
    spool: Option<Arc<Spool>>,
    tracked: Mutex<Vec<Tracked>>,
    /// Start of the interval the next harvest closes; strictly increasing.
    interval_start: Mutex<DateTime<Utc>>,
    /// Events harvested but not yet spooled (a failed append), tried again first.
    unspooled: Mutex<Vec<UsageEvent>>,
    domains: Mutex<HashMap<String, HashSet<String>>>,
    bytes: Family<TrafficLabels, Counter>,
    messages: Family<TrafficLabels, Counter>,
    spooled: Counter,
    spool_failures: Counter,
    /// This node's model identity (MIC model URI), once known.
    own_model: std::sync::OnceLock<String>,
    relayed_bytes: Counter,
}

/// Whether `domain` reads as a RoutingDomain reference, `namespace/name` (DNS-1123 names).
fn valid_domain(domain: &str) -> bool {
    let dns = |s: &str, max: usize| {
        (1..=max).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !s.starts_with(['-', '.'])
            && !s.ends_with(['-', '.'])
    };
    matches!(domain.split_once('/'), Some((ns, name)) if dns(ns, 63) && dns(name, 253))
}

impl UsageMeter {
    /// A meter for node `node`; with a spool, harvested traffic is appended there as
    /// `traffic_bytes` events.
    pub fn new(node: impl Into<String>, spool: Option<Arc<Spool>>) -> Self {
        UsageMeter {
            node: node.into(),
            spool,
            tracked: Mutex::default(),
            interval_start: Mutex::new(Utc::now()),
            unspooled: Mutex::default(),
            domains: Mutex::default(),
            bytes: Family::default(),
            messages: Family::default(),
            spooled: Counter::default(),
            spool_failures: Counter::default(),
            own_model: std::sync::OnceLock::new(),
            relayed_bytes: Counter::default(),
        }
    }

    /// Names this node's model identity (its MIC's model URI): relayed legs from peers
    /// presenting it are billed by the relay, not here (see the module docs).
    pub fn set_own_model(&self, model: &str) {
        let _ = self.own_model.set(model.to_owned());
    }

    /// Payload bytes of relayed legs left unbilled here.
    pub fn relayed_bytes(&self) -> u64 {
        self.relayed_bytes.get()
    }

    /// Registers under `nexus_dataplane_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nexus_dataplane");
        r.register(
            "traffic_bytes",
            "Payload bytes of served sessions, by the peer's tenant, routing domain, delivery mode and direction",
            self.bytes.clone(),
        );
        r.register(
            "traffic_messages",
            "Messages of served sessions, by the peer's tenant, routing domain, delivery mode and direction",
            self.messages.clone(),
        );
        r.register(
            "usage_spooled_events",
            "traffic_bytes usage events written to the durable spool",
            self.spooled.clone(),
        );
        r.register(
            "usage_spool_failures",
            "Failed spool appends (the events are kept in memory and tried again)",
            self.spool_failures.clone(),
        );
        r.register(
            "relayed_bytes",
            "Payload bytes of calls relayed here by fellow nodes (billed by the relaying node)",
            self.relayed_bytes.clone(),
        );
    }

    /// Meters `session` from now until it closes, billed to its peer's tenant. Returns at
    /// once; sessions whose peer is never verified (a refused 0-RTT attempt) are not billed.
    pub fn track(self: &Arc<Self>, session: &Session) {
        let meter = Arc::clone(self);
        let session = session.clone();
        tokio::spawn(async move {
            let (tenant, fellow) = match session.peer().await {
                Ok(peer) => (
                    peer.model.tenant().to_owned(),
                    meter.own_model.get() == Some(&peer.model.to_string()),
                ),
                Err(_) => return,
            };
            let closed = Arc::new(AtomicBool::new(false));
            meter
                .tracked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Tracked {
                    tenant,
                    fellow,
                    tally: Arc::clone(session.tally()),
                    closed: Arc::clone(&closed),
                });
            session.closed().await;
            closed.store(true, Ordering::Release);
        });
    }

    /// Sessions metered now (closed ones leave at the next harvest).
    pub fn tracked_sessions(&self) -> usize {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn domain_label(&self, tenant: &str, declared: Option<&str>) -> String {
        let Some(d) = declared.filter(|d| valid_domain(d)) else {
            return NO_DOMAIN.to_owned();
        };
        let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        let seen = domains.entry(tenant.to_owned()).or_default();
        if seen.contains(d) || seen.len() < MAX_DOMAINS_PER_TENANT {
            seen.insert(d.to_owned());
            d.to_owned()
        } else {
            OTHER_DOMAIN.to_owned()
        }
    }

    /// Takes what every session counted since the last harvest: bumps the Prometheus
    /// counters and returns one `traffic_bytes` event per (tenant, domain, mode), both
    /// directions summed. Closed sessions are dropped after their final take.
    pub fn harvest(&self) -> Vec<UsageEvent> {
        let start = {
            let mut s = self
                .interval_start
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let start = *s;
            // Strictly increasing, so two harvests in one millisecond never share a key.
            *s = Utc::now().max(start + TimeDelta::milliseconds(1));
            start
        };
        let mut sums: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        tracked.retain(|t| {
            // Read `closed` before taking: bytes counted until the close are in this take.
            let closed = t.closed.load(Ordering::Acquire);
            let delta = t.tally.take();
            if t.fellow && t.tally.account() == Some(nexus_api::server::RELAYED_ACCOUNT) {
                let relayed: u64 = Direction::ALL
                    .iter()
                    .flat_map(|&d| Mode::ALL.iter().map(move |&m| delta.bytes(d, m)))
                    .sum();
                self.relayed_bytes.inc_by(relayed);
            } else if !delta.is_empty() {
                let domain = self.domain_label(&t.tenant, t.tally.account());
                for direction in Direction::ALL {
                    for mode in Mode::ALL {
                        let (b, m) = (
                            delta.bytes(direction, mode),
                            delta.messages(direction, mode),
                        );
                        if b == 0 && m == 0 {
                            continue;
                        }
                        let labels = TrafficLabels {
                            tenant: t.tenant.clone(),
                            domain: domain.clone(),
                            mode: mode.label(),
                            direction: direction.label(),
                        };
                        self.bytes.get_or_create(&labels).inc_by(b);
                        self.messages.get_or_create(&labels).inc_by(m);
                        *sums
                            .entry((t.tenant.clone(), domain.clone(), mode.label()))
                            .or_default() += b;
                    }
                }
            }
            !closed
        });
        sums.into_iter()
            .filter(|(_, bytes)| *bytes > 0)
            .map(|((tenant, domain, mode), bytes)| {
                UsageEvent::traffic(&tenant, &self.node, &domain, mode, start, bytes)
            })
            .collect()
    }

    /// Harvests and appends the events to the spool (blocking: fsync). Without a spool the
    /// harvest only feeds `/metrics`. A failed append keeps the events for the next flush.
    pub fn flush(&self) -> Result<usize, nexus_usage_client::Error> {
        let fresh = self.harvest();
        let Some(spool) = &self.spool else {
            return Ok(0);
        };
        let mut unspooled = self.unspooled.lock().unwrap_or_else(|p| p.into_inner());
        unspooled.extend(fresh);
        if unspooled.is_empty() {
            return Ok(0);
        }
        match spool.append(&unspooled) {
            Ok(()) => {
                let n = unspooled.len();
                self.spooled.inc_by(n as u64);
                unspooled.clear();
                Ok(n)
            }
            Err(e) => {
                self.spool_failures.inc();
                Err(e)
            }
        }
    }

    /// [`UsageMeter::flush`] off the async runtime, logging a failure.
    pub async fn flush_async(self: &Arc<Self>) {
        let meter = Arc::clone(self);
        match tokio::task::spawn_blocking(move || meter.flush()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(events = n, "usage spooled"),
            Ok(Err(e)) => tracing::error!(error = %e, "usage not spooled; kept in memory"),
            Err(e) => tracing::error!(error = %e, "usage flush panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_references_or_nothing() {
        assert!(valid_domain("default/demo"));
        assert!(valid_domain("team-a/coders.v2"));
        for bad in [
            "",
            "demo",
            "/demo",
            "default/",
            "Default/demo",
            "a/b/c",
            "a/-b",
            "a b/c",
            "a/b;c",
        ] {
            assert!(!valid_domain(bad), "{bad}");
        }
    }

    #[test]
    fn a_tenant_cannot_grow_domains_without_bound() {
        let m = UsageMeter::new("n", None);
        for i in 0..MAX_DOMAINS_PER_TENANT {
            assert_eq!(
                m.domain_label("acme", Some(&format!("ns/d{i}"))),
                format!("ns/d{i}")
            );
        }
        assert_eq!(m.domain_label("acme", Some("ns/one-more")), OTHER_DOMAIN);
        assert_eq!(m.domain_label("acme", Some("ns/d3")), "ns/d3");
        assert_eq!(m.domain_label("other", Some("ns/one-more")), "ns/one-more");
        assert_eq!(m.domain_label("acme", Some("not a domain")), NO_DOMAIN);
        assert_eq!(m.domain_label("acme", None), NO_DOMAIN);
    }

    #[test]
    fn harvests_take_each_byte_once_and_drop_closed_sessions() {
        let m = UsageMeter::new("node-1", None);
        let tally = Arc::new(Tally::default());
        let closed = Arc::new(AtomicBool::new(false));
        m.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Tracked {
                tenant: "acme".into(),
                fellow: false,
                tally: Arc::clone(&tally),
                closed: Arc::clone(&closed),
            });
        tally.set_account("default/demo");
        tally.record(Direction::Received, Mode::ReliableOrdered, 100);
        tally.record(Direction::Sent, Mode::ReliableOrdered, 20);
        tally.record(Direction::Received, Mode::BestEffort, 7);
        let first = m.harvest();
        let got: Vec<(String, u64, String)> = first
            .iter()
            .map(|e| {
                (
                    e.dimensions["delivery_mode"].clone(),
                    e.quantity,
                    e.dimensions["domain"].clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("best_effort".into(), 7, "default/demo".into()),
                ("reliable_ordered".into(), 120, "default/demo".into()),
            ]
        );
        assert!(first.iter().all(|e| e.tenant == "acme"));
        // Nothing new: nothing billed.
        assert!(m.harvest().is_empty());
        // Counted before the close is billed by the final harvest, then the session leaves.
        tally.record(Direction::Sent, Mode::ReliableOrdered, 5);
        closed.store(true, Ordering::Release);
        let last = m.harvest();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].quantity, 5);
        assert_ne!(last[0].idempotency_key, first[0].idempotency_key);
        assert_eq!(m.tracked_sessions(), 0);
        // Prometheus keeps both directions apart.
        let sent = TrafficLabels {
            tenant: "acme".into(),
            domain: "default/demo".into(),
            mode: "reliable_ordered",
            direction: "sent",
        };
        assert_eq!(m.bytes.get_or_create(&sent).get(), 25);
        assert_eq!(m.messages.get_or_create(&sent).get(), 2);
    }

    #[test]
    fn a_failed_spool_append_keeps_the_events() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let spool_dir = dir.path().join("spool");
        let spool = Arc::new(Spool::open(&spool_dir)?);
        let m = UsageMeter::new("node-1", Some(Arc::clone(&spool)));
        let tally = Arc::new(Tally::default());
        m.tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Tracked {
                tenant: "acme".into(),
                fellow: false,
                tally: Arc::clone(&tally),
                closed: Arc::default(),
            });
        tally.record(Direction::Received, Mode::ReliableOrdered, 10);
        // The spool directory vanishes (a full or unmounted disk): the append fails.
        std::fs::remove_dir_all(&spool_dir)?;
        assert!(m.flush().is_err());
        std::fs::create_dir_all(&spool_dir)?;
        tally.record(Direction::Received, Mode::ReliableOrdered, 5);
        assert_eq!(m.flush()?, 2);
        assert_eq!(spool.pending_events()?, 2);
        Ok(())
    }
}
