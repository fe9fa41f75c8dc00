//! Capability routing on the node: the NexRoute tables the node agent programmed into this
//! node's P4Runtime target decide where a capability-addressed call goes, both for
//! `POST /v1/resolve` (the endpoint-picker answer) and for calls sent to this node with
//! `capability=…` metadata, which it serves itself or relays ([`TableRouter`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use nexus_api::{ApiError, Meta, Route, Router};
use nexus_stream::{Endpoint, Session};

/// Why a capability found no endpoint.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No pipeline loaded (the node agent has not programmed this node yet).
    #[error("no routing tables: no pipeline loaded on this node's P4Runtime target")]
    NoTables,
    /// The domain is not `namespace/name`.
    #[error("domain must be namespace/name")]
    BadDomain,
    /// The tables have no route (or dropped the probe).
    #[error("no route for {capability} in tenant {tenant}: {verdict}")]
    NoRoute {
        /// Asked for.
        capability: String,
        /// The caller's tenant.
        tenant: String,
        /// What the pipeline did with the probe frame.
        verdict: String,
    },
}

/// The endpoint the tables of `target` pick for `capability` in `tenant`'s `domain`
/// (`namespace/name`; `None`: the tenant's default domain) for flow `flow`.
pub fn lookup(
    target: &nexus_p4::Target,
    tenant: &str,
    capability: &str,
    domain: Option<&str>,
    flow: u32,
) -> Result<SocketAddrV4, LookupError> {
    target
        .with_loaded(|loaded| {
            let probe = Probe::new(tenant, capability, domain)?;
            flow_hop(loaded, &probe, flow, tenant, capability)
        })
        .unwrap_or(Err(LookupError::NoTables))
}

/// The hop the tables pick for `probe` on flow `flow`, errors naming the tenant and
/// capability.
fn flow_hop(
    loaded: &nexus_p4::Loaded,
    probe: &Probe,
    flow: u32,
    tenant: &str,
    capability: &str,
) -> Result<SocketAddrV4, LookupError> {
    pick(loaded, probe, flow)
        .map(|p| p.hop)
        .map_err(|e| named(e, tenant, capability))
}

/// `e` with the tenant and capability by name rather than by id.
fn named(e: LookupError, tenant: &str, capability: &str) -> LookupError {
    match e {
        LookupError::NoRoute { verdict, .. } => LookupError::NoRoute {
            capability: capability.to_owned(),
            tenant: tenant.to_owned(),
            verdict,
        },
        e => e,
    }
}

/// What a lookup asks, as the tables' ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Probe {
    tenant: u32,
    capability: u32,
    domain: u32,
}

impl Probe {
    fn new(tenant: &str, capability: &str, domain: Option<&str>) -> Result<Self, LookupError> {
        let domain = match domain.map(|d| d.split_once('/')) {
            None => 0,
            Some(Some((ns, name))) => nexus_route::id::domain_id(ns, name),
            Some(None) => return Err(LookupError::BadDomain),
        };
        Ok(Self {
            tenant: nexus_route::id::tenant_id(tenant),
            capability: nexus_route::id::capability_id(capability),
            domain,
        })
    }
}

/// Runs a probe frame for `probe` and `flow` through the pipeline.
fn pick(
    loaded: &nexus_p4::Loaded,
    probe: &Probe,
    flow: u32,
) -> Result<nexus_p4::packet::Pick, LookupError> {
    nexus_p4::packet::pick(loaded, probe.tenant, probe.capability, probe.domain, flow).map_err(
        |v| LookupError::NoRoute {
            capability: format!("capability id {:#x}", probe.capability),
            tenant: format!("tenant id {:#x}", probe.tenant),
            verdict: format!("{v:?}"),
        },
    )
}

/// Flows that calls without a `flow` of their own are spread over: the selector's weighted
/// choice among next hops is sampled this finely.
const FLOW_BUCKETS: u32 = 64;
/// How long a relay waits for the picked endpoint's handshake.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most remembered picks (the capability comes from callers, so the memo is bounded).
const MEMO_CAP: usize = 4096;

/// Picks remembered for one published table batch: the pipeline is a pure function of the
/// tables and the probe frame, so a pick holds until the next batch. A remembered pick is
/// replayed into the pipeline's counters, so the per-tenant counters a controller reads count
/// every routed call, remembered or not.
#[derive(Debug, Default)]
struct Memo {
    /// The batch the picks were made in (held, so its address cannot be reused by a newer
    /// batch while it is compared against).
    tables: Option<Arc<nexus_p4::Snapshot>>,
    picks: HashMap<(Probe, u32), nexus_p4::packet::Pick>,
}

/// Routes capability-addressed streams with this node's tables: a stream whose pick is this
/// node (`here`) is served here; any other is relayed over a session this node keeps open to
/// the picked endpoint for the caller's tenant, dialled from its own endpoint (so it presents
/// the node's MIC, renewed with it). Calls without a `flow` are spread over the pick's weighted next hops by a
/// per-node counter; calls of one flow go to one endpoint.
#[derive(Debug)]
pub struct TableRouter {
    target: Arc<nexus_p4::Target>,
    here: SocketAddr,
    endpoint: Endpoint,
    /// Relay sessions by picked endpoint and caller tenant.
    sessions: tokio::sync::Mutex<HashMap<(SocketAddr, String), Session>>,
    next_flow: AtomicU32,
    memo: std::sync::Mutex<Memo>,
}

impl TableRouter {
    /// A router reading `target`'s tables; `here` is the address the routing domains name
    /// this node by.
    pub fn new(target: Arc<nexus_p4::Target>, here: SocketAddr, endpoint: Endpoint) -> Self {
        Self {
            target,
            here,
            endpoint,
            sessions: tokio::sync::Mutex::default(),
            next_flow: AtomicU32::new(0),
            memo: std::sync::Mutex::default(),
        }
    }

    /// An open session to `hop` for callers of `tenant`, reused while it lives. Each tenant
    /// gets its own relay session to a hop: a session's stream credit and flow-control
    /// windows are shared by everything on it, so one tenant's burst of long token streams
    /// or large messages must not hold up another tenant's relayed calls. Dialled outside the
    /// lock (with a timeout), so an unreachable hop delays only the calls routed to it.
    async fn session_to(&self, hop: SocketAddr, tenant: &str) -> Result<Session, ApiError> {
        let key = (hop, tenant.to_owned());
        {
            let sessions = self.sessions.lock().await;
            if let Some(s) = sessions.get(&key)
                && s.connection().close_reason().is_none()
            {
                return Ok(s.clone());
            }
        }
        let s = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(hop))
            .await
            .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|e| {
                tracing::info!(%hop, error = %e, "relay: cannot reach the picked endpoint");
                ApiError::Refused(format!("the picked endpoint {hop} is unreachable: {e}"))
            })?;
        let mut sessions = self.sessions.lock().await;
        // Sessions whose connection ended are dropped here, so tenants that stopped calling
        // do not accumulate (a relay session closes after the idle timeout).
        sessions.retain(|_, s| s.connection().close_reason().is_none());
        // Another call may have dialled it meanwhile: keep one session per hop and tenant.
        if let Some(other) = sessions.get(&key) {
            return Ok(other.clone());
        }
        sessions.insert(key, s.clone());
        Ok(s)
    }

    /// The pick for a call: remembered per table batch for calls without a flow of their
    /// own (spread over [`FLOW_BUCKETS`]); computed for calls that name a flow.
    fn pick(&self, tenant: &str, meta: &Meta) -> Result<SocketAddrV4, LookupError> {
        // Under the target's read lock rather than on a clone of the pipeline: this runs for
        // every capability-addressed stream.
        self.target
            .with_loaded(|loaded| self.pick_in(loaded, tenant, meta))
            .unwrap_or(Err(LookupError::NoTables))
    }

    fn pick_in(
        &self,
        loaded: &nexus_p4::Loaded,
        tenant: &str,
        meta: &Meta,
    ) -> Result<SocketAddrV4, LookupError> {
        let capability = meta.get("capability").unwrap_or_default();
        let probe = Probe::new(tenant, capability, meta.get("domain"))?;
        let explain = |e| named(e, tenant, capability);
        if let Some(flow) = meta.get("flow").and_then(|f| f.parse().ok()) {
            return flow_hop(loaded, &probe, flow, tenant, capability);
        }
        let bucket = self.next_flow.fetch_add(1, Ordering::Relaxed) % FLOW_BUCKETS;
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        let same_batch = memo
            .tables
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, &loaded.snapshot));
        if !same_batch || memo.picks.len() >= MEMO_CAP {
            memo.tables = Some(Arc::clone(&loaded.snapshot));
            memo.picks.clear();
        }
        if let Some(p) = memo.picks.get(&(probe, bucket)) {
            p.replay(loaded);
            return Ok(p.hop);
        }
        let p = pick(loaded, &probe, bucket).map_err(explain)?;
        memo.picks.insert((probe, bucket), p);
        Ok(p.hop)
    }
}

impl Router for TableRouter {
    fn route(&self, tenant: &str, meta: &Meta) -> Result<Route, ApiError> {
        let hop = self
            .pick(tenant, meta)
            .map_err(|e| ApiError::Refused(e.to_string()))?;
        let hop = SocketAddr::V4(hop);
        Ok(if hop == self.here {
            Route::Here
        } else {
            Route::Relay(hop)
        })
    }

    fn relay_session<'a>(
        &'a self,
        tenant: &'a str,
        to: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Result<Session, ApiError>> + Send + 'a>> {
        Box::pin(self.session_to(to, tenant))
    }
}
