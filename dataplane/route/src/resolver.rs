//! The resolver: which admitted endpoints should take a call addressed by descriptor.
//!
//! Pure and I/O-free: [`Resolver::resolve`] is a function of the domain's advertisements (fixed
//! when the resolver is built, i.e. per routing-table version), the live load the dataplanes
//! report ([`LoadTable`], updated concurrently through atomics), the descriptor and a random
//! number the caller supplies. Nothing reads a clock.
//!
//! # Index
//!
//! Advertisements are indexed by capability: one posting list per capability id holding a
//! compact copy of each advertiser's matchable attributes (family, context, latency, cost,
//! modalities, trust, weight and a 64-bit Bloom filter of its other capabilities, claims and
//! proofs), stored contiguously and in a fixed pseudo-random order. A query walks the shortest
//! posting list among the capabilities it requires. Lists up to [`ResolverConfig::scan_limit`]
//! are scanned whole, so the pick is exact; longer lists are scanned from a random offset until
//! `scan_limit` candidates have been examined *and* at least `fan_out` feasible endpoints were
//! found, which bounds the work for the common case while still finding a rare match (worst
//! case: the whole list).
//!
//! # Scoring and load feedback
//!
//! An endpoint is *saturated* when its reported in-flight calls reach its capacity or its queue
//! depth reaches [`ResolverConfig::max_queue_depth`]; a saturated endpoint gets no new calls
//! until a report says otherwise. Among feasible, unsaturated endpoints with a weight above 0,
//! the effective weight is
//!
//! ```text
//! weight × (1 + w_trust·trust/3)
//!   / ((1 + w_latency·latency/latency_ref) · (1 + w_load·(in_flight+queue)/capacity) · (1 + w_cost·cost/cost_ref))
//! ```
//!
//! where latency is the observed EWMA when dataplanes reported one, else the SLA, else
//! `latency_ref`; cost is the price, else `cost_ref`. [`Strategy::Weighted`] samples `fan_out`
//! distinct endpoints with probability proportional to it; [`Strategy::LeastLatency`] and
//! [`Strategy::LeastCost`] take the best `fan_out` by load-adjusted latency or by price.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::advert::Advertisement;
use crate::sad::{ANY, SadView};

/// Index of an endpoint in the resolver (its position in the advertisement list).
pub type EndpointIdx = u32;

/// How picks are made among feasible endpoints (the RoutingDomain's `loadBalancing.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Random, proportional to the effective weight.
    #[default]
    Weighted,
    /// Lowest load-adjusted latency first.
    LeastLatency,
    /// Lowest price first (ties by effective weight).
    LeastCost,
}

#[cfg(feature = "control-plane")]
impl From<nexus_crds::routing::LoadBalancingStrategy> for Strategy {
    fn from(s: nexus_crds::routing::LoadBalancingStrategy) -> Self {
        use nexus_crds::routing::LoadBalancingStrategy as S;
        match s {
            S::Weighted => Strategy::Weighted,
            S::LeastLatency => Strategy::LeastLatency,
            S::LeastCost => Strategy::LeastCost,
        }
    }
}

/// Tunables of the resolver. The defaults suit the demo and the benches.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverConfig {
    /// Pick strategy.
    pub strategy: Strategy,
    /// Weight of latency in the score (0 ignores it).
    pub w_latency: f32,
    /// Weight of load.
    pub w_load: f32,
    /// Weight of price.
    pub w_cost: f32,
    /// Weight of trust level.
    pub w_trust: f32,
    /// Latency that counts as "one unit", ms.
    pub latency_ref_ms: f32,
    /// Price that counts as "one unit", micro-USD per 1k tokens.
    pub cost_ref_micros: f32,
    /// In-flight calls an endpoint takes when its advertisement does not say.
    pub default_capacity: u32,
    /// Queue depth at which an endpoint counts as saturated.
    pub max_queue_depth: u32,
    /// Candidates examined before a long posting list is cut short (see the module docs).
    pub scan_limit: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            strategy: Strategy::Weighted,
            w_latency: 1.0,
            w_load: 2.0,
            w_cost: 0.5,
            w_trust: 0.5,
            latency_ref_ms: 200.0,
            cost_ref_micros: 2_000.0,
            default_capacity: 64,
            max_queue_depth: 128,
            scan_limit: 128,
        }
    }
}

/// What a dataplane reports about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Calls in flight to it.
    pub in_flight: u32,
    /// Requests queued at it (as it reports them).
    pub queue_depth: u32,
    /// Observed time to first byte, µs (0: no observation).
    pub latency_us: u32,
}

#[derive(Debug, Default)]
struct LoadSlot {
    in_flight: AtomicU32,
    queue_depth: AtomicU32,
    latency_us: AtomicU32,
}

/// Live load per endpoint, shared by the threads that report it and the ones that resolve.
///
/// Lock-free: each field is an atomic, written by `report` and read by `resolve`; a reader may
/// see fields of two consecutive reports mixed, which costs at most one slightly stale pick.
#[derive(Debug)]
pub struct LoadTable {
    slots: Vec<LoadSlot>,
}

impl LoadTable {
    /// A table for `n` endpoints, all idle.
    pub fn new(n: usize) -> LoadTable {
        LoadTable {
            slots: (0..n).map(|_| LoadSlot::default()).collect(),
        }
    }

    /// Records a report; an index out of range is ignored (a report for an endpoint withdrawn
    /// by a newer table version).
    pub fn report(&self, idx: EndpointIdx, r: LoadReport) {
        if let Some(s) = self.slots.get(idx as usize) {
            s.in_flight.store(r.in_flight, Ordering::Relaxed);
            s.queue_depth.store(r.queue_depth, Ordering::Relaxed);
            if r.latency_us != 0 {
                // EWMA with α = 1/4, in integers.
                let old = s.latency_us.load(Ordering::Relaxed);
                let new = if old == 0 {
                    r.latency_us
                } else {
                    ((u64::from(old) * 3 + u64::from(r.latency_us)) / 4) as u32
                };
                s.latency_us.store(new, Ordering::Relaxed);
            }
        }
    }

    /// One more call in flight (the dataplane calls this when it sends).
    pub fn begin_call(&self, idx: EndpointIdx) {
        if let Some(s) = self.slots.get(idx as usize) {
            s.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call finished.
    pub fn end_call(&self, idx: EndpointIdx) {
        if let Some(s) = self.slots.get(idx as usize) {
            let _ = s
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
        }
    }

    /// The latest load of an endpoint (idle if out of range).
    #[inline]
    pub fn get(&self, idx: EndpointIdx) -> LoadReport {
        match self.slots.get(idx as usize) {
            Some(s) => LoadReport {
                in_flight: s.in_flight.load(Ordering::Relaxed),
                queue_depth: s.queue_depth.load(Ordering::Relaxed),
                latency_us: s.latency_us.load(Ordering::Relaxed),
            },
            None => LoadReport::default(),
        }
    }
}

/// Why nothing was picked (for logs and a `no_route{reason}` counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No endpoint advertises the requested capabilities.
    NoCandidate,
    /// Some advertise them, none meets the other constraints (or all have weight 0).
    NoMatch,
    /// Matching endpoints exist but every one is saturated.
    AllSaturated,
}

impl NoRoute {
    /// A fixed label for metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            NoRoute::NoCandidate => "no_candidate",
            NoRoute::NoMatch => "no_match",
            NoRoute::AllSaturated => "all_saturated",
        }
    }
}

/// Compact, matchable attributes of one advertiser inside a posting list.
#[derive(Debug, Clone, Copy)]
struct Cand {
    idx: u32,
    family: u32,
    ctx: u32,
    /// SLA latency, ms; `ANY` when not stated (never within a bound).
    lat: u32,
    /// Price, micro-USD/1k, saturated below `ANY`; `ANY` when not stated.
    cost: u32,
    weight: u32,
    bloom: u64,
    modalities: u8,
    trust: u8,
}

#[inline]
fn bloom_bit(id: u32) -> u64 {
    1u64 << (id.wrapping_mul(0x9E37_79B9) >> 26)
}

/// Reusable buffers for [`Resolver::resolve`], so a hot loop allocates nothing.
#[derive(Debug, Default)]
pub struct Scratch {
    feasible: Vec<(EndpointIdx, f32, u32)>,
}

/// An index over one domain's admitted advertisements.
#[derive(Debug)]
pub struct Resolver {
    adverts: Vec<Advertisement>,
    capacity: Vec<u32>,
    /// Posting lists by (capability id, model family id or 0 for every family), each sorted
    /// by context window, largest first, and shuffled within equal windows.
    postings: HashMap<(u32, u32), Vec<Cand>, foldhash::fast::FixedState>,
    by_name: HashMap<String, EndpointIdx>,
    config: ResolverConfig,
}

/// A small deterministic generator (SplitMix64) seeded per call by the caller's random value.
#[derive(Debug, Clone, Copy)]
struct SplitMix(u64);

impl SplitMix {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    #[inline]
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Resolver {
    /// Builds the index. Advertisements keep their positions as [`EndpointIdx`].
    pub fn new(adverts: Vec<Advertisement>, config: ResolverConfig) -> Resolver {
        let mut postings: HashMap<(u32, u32), Vec<Cand>, foldhash::fast::FixedState> =
            HashMap::with_hasher(foldhash::fast::FixedState::default());
        let mut by_name = HashMap::with_capacity(adverts.len());
        let mut capacity = Vec::with_capacity(adverts.len());
        for (i, a) in adverts.iter().enumerate() {
            let idx = i as EndpointIdx;
            by_name.insert(a.name.clone(), idx);
            capacity.push(a.max_in_flight.unwrap_or(config.default_capacity).max(1));
            let bloom = a
                .capabilities
                .iter()
                .chain(&a.claims)
                .chain(a.proofs.iter().map(|p| &p.claim))
                .fold(0u64, |b, &id| b | bloom_bit(id));
            let cand = Cand {
                idx,
                family: a.model_family,
                ctx: a.context_window,
                lat: a.latency_sla_ms.unwrap_or(ANY),
                cost: a
                    .cost_micros
                    .map_or(ANY, |c| u32::try_from(c).unwrap_or(ANY - 1).min(ANY - 1)),
                weight: a.weight,
                bloom,
                modalities: a.modalities.0,
                trust: a.trust as u8,
            };
            for &c in &a.capabilities {
                postings.entry((c, 0)).or_default().push(cand);
                postings.entry((c, a.model_family)).or_default().push(cand);
            }
        }
        // A fixed pseudo-random order, so that a window of a long list is a fair sample; then
        // by context window, largest first (stable), so a minimum context is a prefix.
        for list in postings.values_mut() {
            let mut rng = SplitMix(0x5EED ^ list.len() as u64);
            for i in (1..list.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                list.swap(i, j);
            }
            list.sort_by_key(|c| std::cmp::Reverse(c.ctx));
        }
        Resolver {
            adverts,
            capacity,
            postings,
            by_name,
            config,
        }
    }

    /// The advertisements, by [`EndpointIdx`].
    pub fn advertisements(&self) -> &[Advertisement] {
        &self.adverts
    }

    /// The index of an endpoint by name.
    pub fn index_of(&self, name: &str) -> Option<EndpointIdx> {
        self.by_name.get(name).copied()
    }

    /// The configuration.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// A load table sized for this resolver.
    pub fn new_load_table(&self) -> LoadTable {
        LoadTable::new(self.adverts.len())
    }

    /// Whether an endpoint is saturated under `load`.
    #[inline]
    pub fn is_saturated(&self, idx: EndpointIdx, load: &LoadReport) -> bool {
        let cap = self.capacity.get(idx as usize).copied().unwrap_or(1);
        load.in_flight >= cap || load.queue_depth >= self.config.max_queue_depth
    }

    #[inline]
    fn score(&self, c: &Cand, load: &LoadReport) -> f32 {
        let cfg = &self.config;
        let cap = self.capacity[c.idx as usize] as f32;
        let latency_ms = if load.latency_us != 0 {
            load.latency_us as f32 / 1000.0
        } else if c.lat != ANY {
            c.lat as f32
        } else {
            cfg.latency_ref_ms
        };
        let cost = if c.cost != ANY {
            c.cost as f32
        } else {
            cfg.cost_ref_micros
        };
        let busy = (load.in_flight + load.queue_depth) as f32 / cap;
        c.weight as f32 * (1.0 + cfg.w_trust * c.trust as f32 / 3.0)
            / ((1.0 + cfg.w_latency * latency_ms / cfg.latency_ref_ms)
                * (1.0 + cfg.w_load * busy)
                * (1.0 + cfg.w_cost * cost / cfg.cost_ref_micros))
    }

    /// Picks up to `fan_out` distinct endpoints for `sad` into `out` (cleared first).
    ///
    /// `random` should be fresh per call (e.g. from a per-thread generator); the same inputs
    /// give the same picks. Returns why nothing was picked when `out` stays empty.
    pub fn resolve(
        &self,
        sad: &SadView<'_>,
        load: &LoadTable,
        random: u64,
        scratch: &mut Scratch,
        out: &mut Vec<EndpointIdx>,
    ) -> Result<(), NoRoute> {
        out.clear();
        // The shortest posting list among the required capabilities.
        let family = sad.model_family();
        let mut list: &[Cand] = match self.postings.get(&(sad.class(), family)) {
            Some(l) => l,
            None if family != 0 && self.postings.contains_key(&(sad.class(), 0)) => {
                return Err(NoRoute::NoMatch);
            }
            None => return Err(NoRoute::NoCandidate),
        };
        let mut need_bloom = 0u64;
        for c in sad.extra_capabilities() {
            need_bloom |= bloom_bit(c);
            match self.postings.get(&(c, family)) {
                Some(l) if l.len() < list.len() => list = l,
                Some(_) => {}
                None if family != 0 && self.postings.contains_key(&(c, 0)) => {
                    return Err(NoRoute::NoMatch);
                }
                None => return Err(NoRoute::NoCandidate),
            }
        }
        let check_lists = sad.extra_capabilities().len() > 0
            || sad.required_claims().len() > 0
            || sad.required_proofs().len() > 0;
        if check_lists {
            need_bloom |= bloom_bit(sad.class());
            for c in sad.required_claims() {
                need_bloom |= bloom_bit(c);
            }
            for p in sad.required_proofs() {
                need_bloom |= bloom_bit(p.claim);
            }
        }
        let min_ctx = sad.min_context();
        // Sorted by context window, largest first: only a prefix can qualify.
        let list = &list[..list.partition_point(|c| c.ctx >= min_ctx)];
        let max_lat = sad.max_latency_ms();
        let max_cost = sad.max_cost();
        let modalities = sad.modalities().0;
        let min_trust = sad.min_trust() as u8;
        let fan_out = usize::from(sad.fan_out());

        let mut rng = SplitMix(random);
        let n = list.len();
        let start = if n > self.config.scan_limit {
            (rng.next() % n as u64) as usize
        } else {
            0
        };
        scratch.feasible.clear();
        let mut matched = 0usize;
        for k in 0..n {
            if k >= self.config.scan_limit && scratch.feasible.len() >= fan_out {
                break;
            }
            let mut i = start + k;
            if i >= n {
                i -= n;
            }
            let c = &list[i];
            let ok = (family == 0 || c.family == family)
                && c.ctx >= min_ctx
                && (max_lat == ANY || c.lat <= max_lat)
                && (max_cost == ANY || c.cost <= max_cost)
                && c.modalities & modalities == modalities
                && c.trust >= min_trust
                && c.weight > 0
                && c.bloom & need_bloom == need_bloom
                && (!check_lists || self.adverts[c.idx as usize].satisfies_lists(sad));
            if !ok {
                continue;
            }
            matched += 1;
            let l = load.get(c.idx);
            if self.is_saturated(c.idx, &l) {
                continue;
            }
            let key = match self.config.strategy {
                Strategy::LeastCost => c.cost,
                _ => 0,
            };
            let s = match self.config.strategy {
                Strategy::LeastLatency => {
                    // Lower is better: load-adjusted latency, stored negated so "higher wins".
                    let lat = if l.latency_us != 0 {
                        l.latency_us as f32 / 1000.0
                    } else if c.lat != ANY {
                        c.lat as f32
                    } else {
                        self.config.latency_ref_ms
                    };
                    let busy =
                        (l.in_flight + l.queue_depth) as f32 / self.capacity[c.idx as usize] as f32;
                    -(lat * (1.0 + self.config.w_load * busy))
                }
                _ => self.score(c, &l),
            };
            scratch.feasible.push((c.idx, s, key));
        }
        if scratch.feasible.is_empty() {
            return Err(if matched == 0 {
                NoRoute::NoMatch
            } else {
                NoRoute::AllSaturated
            });
        }
        let picks = fan_out.min(scratch.feasible.len());
        match self.config.strategy {
            Strategy::Weighted => {
                // Cumulative weights once; draws with replacement, a repeat drawn again
                // (equivalent to drawing without replacement and renormalising). After a few
                // repeats in a row (one endpoint dominating), fall back to exact removal.
                let mut acc = 0f32;
                for f in scratch.feasible.iter_mut() {
                    acc += f.1;
                    f.1 = acc;
                }
                'pick: for _ in 0..picks {
                    for _ in 0..8 {
                        let r = rng.unit() * acc;
                        let j = scratch
                            .feasible
                            .partition_point(|f| f.1 <= r)
                            .min(scratch.feasible.len() - 1);
                        let idx = scratch.feasible[j].0;
                        if !out.contains(&idx) {
                            out.push(idx);
                            continue 'pick;
                        }
                    }
                    // Exact: the remaining endpoints by their own weights.
                    let mut prev = 0f32;
                    let mut rest: f32 = 0.0;
                    for f in &scratch.feasible {
                        if !out.contains(&f.0) {
                            rest += f.1 - prev;
                        }
                        prev = f.1;
                    }
                    let mut r = rng.unit() * rest;
                    let mut prev = 0f32;
                    let mut chosen = None;
                    for f in &scratch.feasible {
                        let w = f.1 - prev;
                        prev = f.1;
                        if out.contains(&f.0) {
                            continue;
                        }
                        chosen = Some(f.0);
                        if r < w {
                            break;
                        }
                        r -= w;
                    }
                    if let Some(c) = chosen {
                        out.push(c);
                    }
                }
            }
            Strategy::LeastLatency | Strategy::LeastCost => {
                // Cheapest key first, then highest score, then index for determinism.
                let cmp = |a: &(EndpointIdx, f32, u32), b: &(EndpointIdx, f32, u32)| {
                    a.2.cmp(&b.2).then(b.1.total_cmp(&a.1)).then(a.0.cmp(&b.0))
                };
                if picks < scratch.feasible.len() {
                    scratch.feasible.select_nth_unstable_by(picks - 1, cmp);
                    scratch.feasible.truncate(picks);
                }
                scratch.feasible.sort_unstable_by(cmp);
                out.extend(scratch.feasible.iter().map(|f| f.0));
            }
        }
        Ok(())
    }

    /// Every endpoint that satisfies `sad` and is not saturated, by a plain scan of all
    /// advertisements with [`Advertisement::satisfies`]: the reference the index is tested
    /// against, and the linear-scan peer in the benches.
    pub fn feasible_linear(&self, sad: &SadView<'_>, load: &LoadTable) -> Vec<EndpointIdx> {
        self.adverts
            .iter()
            .enumerate()
            .filter(|(i, a)| {
                let i = *i as EndpointIdx;
                a.weight > 0 && a.satisfies(sad) && !self.is_saturated(i, &load.get(i))
            })
            .map(|(i, _)| i as EndpointIdx)
            .collect()
    }

    /// The linear-scan resolver: scans every advertisement, scores the feasible ones and picks
    /// like [`Self::resolve`] does with [`Strategy::Weighted`]. The bench's peer.
    pub fn resolve_linear(
        &self,
        sad: &SadView<'_>,
        load: &LoadTable,
        random: u64,
        out: &mut Vec<EndpointIdx>,
    ) -> Result<(), NoRoute> {
        out.clear();
        let mut rng = SplitMix(random);
        let mut feasible: Vec<(EndpointIdx, f32)> = Vec::new();
        for (i, a) in self.adverts.iter().enumerate() {
            let idx = i as EndpointIdx;
            if a.weight == 0 || !a.satisfies(sad) {
                continue;
            }
            let l = load.get(idx);
            if self.is_saturated(idx, &l) {
                continue;
            }
            let cand = Cand {
                idx,
                family: a.model_family,
                ctx: a.context_window,
                lat: a.latency_sla_ms.unwrap_or(ANY),
                cost: a
                    .cost_micros
                    .map_or(ANY, |c| c.min(u64::from(ANY - 1)) as u32),
                weight: a.weight,
                bloom: 0,
                modalities: a.modalities.0,
                trust: a.trust as u8,
            };
            feasible.push((idx, self.score(&cand, &l)));
        }
        if feasible.is_empty() {
            return Err(NoRoute::NoMatch);
        }
        for _ in 0..usize::from(sad.fan_out()).min(feasible.len()) {
            let total: f32 = feasible.iter().map(|f| f.1).sum();
            let mut r = rng.unit() * total;
            let mut chosen = feasible.len() - 1;
            for (j, f) in feasible.iter().enumerate() {
                if r < f.1 {
                    chosen = j;
                    break;
                }
                r -= f.1;
            }
            out.push(feasible[chosen].0);
            feasible.swap_remove(chosen);
        }
        Ok(())
    }
}
