//! The resolver: which admitted endpoints should take a call addressed by descriptor.
//!
//! Pure and I/O-free: [`Resolver::resolve`] is a function of the domain's advertisements (fixed
//! when the resolver is built, i.e. per routing-table version), the live load the dataplanes
//! report ([`LoadTable`], updated concurrently through atomics), the descriptor and a random
//! number the caller supplies. Nothing reads a clock.
//!
//! # Index
//!
//! Advertisements are indexed by capability: posting lists per (capability id, model family) and
//! per capability id for every family, each holding a compact 40-byte copy of each advertiser's
//! matchable attributes (latency, cost, capacity, modalities, trust, the load-independent part of
//! its effective weight, its score for the domain's most common proof claim, and 64 tag bits for
//! its capabilities, claims and proofs). A list is in a fixed pseudo-random order, then sorted by
//! context window, largest first, with the end of each window's run beside it, so a minimum context
//! is a prefix found without searching the list. A query walks the shortest such prefix among the
//! capabilities it requires. Prefixes up to [`ResolverConfig::scan_limit`] are scanned whole, so
//! the pick is exact; longer ones are scanned from a random offset until `scan_limit` candidates
//! have been examined *and* at least `fan_out` feasible endpoints were found, which bounds the work
//! for the common case while still finding a rare match (worst case: the whole prefix).
//!
//! Tag bits: when the domain has at most 64 distinct keys (capabilities, claims, and claims
//! proven by a proof, counted apart), each gets a bit of its own and a required capability or
//! claim is decided by the bits alone; otherwise the 48 most common keys get their own bits and
//! the rest share 16 bits as a Bloom filter. Whatever the bits and the carried proof score
//! cannot decide (a key in the Bloom bits, the minimum score of another proof) is checked
//! against a compact copy of the endpoint's sorted lists, one contiguous read, with the same
//! semantics as [`Advertisement::satisfies`].
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

/// One endpoint's load; 16-byte aligned so a read touches one cache line.
#[derive(Debug, Default)]
#[repr(align(16))]
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

/// Compact, matchable attributes of one advertiser inside a posting list (40 bytes). Family and
/// context window are implied by the list and its prefix; capabilities, claims and proofs by
/// `tags`, exactly for the keys [`Tags`] gave a bit of their own.
#[derive(Debug, Clone, Copy)]
struct Cand {
    idx: u32,
    /// Its score for the domain's most common proof claim ([`Tags::proof`]), 0 without one.
    proof_score: u32,
    /// SLA latency, ms; `ANY` when not stated (never within a bound).
    lat: u32,
    /// Price, micro-USD/1k; `ANY` when not stated or above `u32` (never within a bound).
    cost: u32,
    /// In-flight calls at which it is saturated.
    capacity: u32,
    /// Offset of its capability, claim and proof lists in [`Resolver::lists`].
    lists: u32,
    /// The part of the effective weight that does not depend on load, `weight × (1 +
    /// w_trust·trust/3) / (1 + w_cost·cost/cost_ref)`; 0 exactly when the weight is 0.
    base: f32,
    modalities: u8,
    trust: u8,
    tags: u64,
}

impl Cand {
    fn new(idx: EndpointIdx, a: &Advertisement, capacity: u32, cfg: &ResolverConfig) -> Cand {
        let cost = a.cost_micros.map_or(cfg.cost_ref_micros, |c| c as f32);
        let base = if a.weight == 0 {
            0.0
        } else {
            (a.weight as f32 * (1.0 + cfg.w_trust * a.trust as u8 as f32 / 3.0)
                / (1.0 + cfg.w_cost * cost / cfg.cost_ref_micros))
                .max(f32::MIN_POSITIVE)
        };
        Cand {
            idx,
            proof_score: 0,
            lat: a.latency_sla_ms.unwrap_or(ANY),
            cost: a
                .cost_micros
                .map_or(ANY, |c| u32::try_from(c).unwrap_or(ANY)),
            capacity,
            lists: 0,
            base,
            modalities: a.modalities.0,
            trust: a.trust as u8,
            tags: 0,
        }
    }
}

/// One posting list and what a query needs to use it without touching anything else.
#[derive(Debug, Default)]
struct Posting {
    /// The tag bit of the list's capability and whether it is exact.
    tag: (u64, bool),
    /// The distinct context windows, largest first, each with the end of its run in `cands`
    /// (a few entries: the prefix for a minimum context without a search through `cands`).
    runs: Vec<(u32, u32)>,
    /// In a fixed pseudo-random order within each context window, largest window first.
    cands: Vec<Cand>,
}

impl Posting {
    /// The candidates whose context window is at least `min_ctx`.
    #[inline]
    fn prefix(&self, min_ctx: u32) -> &[Cand] {
        let k = self.runs.partition_point(|r| r.0 >= min_ctx);
        let end = k
            .checked_sub(1)
            .and_then(|k| self.runs.get(k))
            .map_or(0, |r| r.1);
        self.cands.get(..end as usize).unwrap_or(&[])
    }
}

/// A list attribute an endpoint has and a descriptor may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    Capability(u32),
    Claim(u32),
    /// A proof of this claim (of any score).
    Proof(u32),
}

/// The 64 bits of [`Cand::tags`]: the domain's most common keys get a bit each (exact); when the
/// domain has more than 64 keys, the rest share the top [`Tags::BLOOM_BITS`] bits as a Bloom
/// filter, and a descriptor requiring one of them is checked against the lists themselves.
#[derive(Debug)]
struct Tags {
    exact: HashMap<Key, u8, foldhash::fast::FixedState>,
    /// Bits below this are exact; 64 when every key of the domain has its own bit.
    exact_bits: u32,
    /// The most common proof claim with an exact bit, whose score [`Cand`] carries.
    proof: Option<u32>,
}

impl Tags {
    const BLOOM_BITS: u32 = 16;

    fn new<'a>(keys: impl Iterator<Item = &'a [Key]>) -> Tags {
        let mut count: HashMap<Key, u32, foldhash::fast::FixedState> = HashMap::default();
        for ks in keys {
            for &k in ks {
                *count.entry(k).or_default() += 1;
            }
        }
        let mut by_count: Vec<(Key, u32)> = count.into_iter().collect();
        by_count.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let exact_bits = if by_count.len() <= 64 {
            64
        } else {
            64 - Tags::BLOOM_BITS
        };
        let exact = by_count
            .iter()
            .take(exact_bits as usize)
            .enumerate()
            .map(|(b, &(k, _))| (k, b as u8))
            .collect();
        let proof = by_count
            .iter()
            .take(exact_bits as usize)
            .find_map(|&(k, _)| match k {
                Key::Proof(claim) => Some(claim),
                _ => None,
            });
        Tags {
            exact,
            exact_bits,
            proof,
        }
    }

    /// The bit of `key` and whether it is exact; `None` when no endpoint of the domain has it.
    #[inline]
    fn bit(&self, key: Key) -> Option<(u64, bool)> {
        if let Some(&b) = self.exact.get(&key) {
            return Some((1u64 << b, true));
        }
        if self.exact_bits == 64 {
            return None;
        }
        let (kind, id) = match key {
            Key::Capability(id) => (1u32, id),
            Key::Claim(id) => (2, id),
            Key::Proof(id) => (3, id),
        };
        let h = (id ^ kind.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B9) >> 16;
        Some((1u64 << (self.exact_bits + h % Tags::BLOOM_BITS), false))
    }
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
    /// Per endpoint, at [`Cand::lists`]: counts of capabilities, claims and proofs, then the
    /// capabilities, the claims, the proofs' claims and the proofs' scores (one compact read
    /// instead of chasing the advertisement's vectors).
    lists: Vec<u32>,
    tags: Tags,
    /// Posting lists by (capability id, model family id or 0 for every family).
    postings: HashMap<(u32, u32), Posting, foldhash::fast::FixedState>,
    by_name: HashMap<String, EndpointIdx>,
    config: ResolverConfig,
    /// `w_latency / latency_ref_ms`.
    latency_scale: f32,
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
    pub fn new(mut adverts: Vec<Advertisement>, config: ResolverConfig) -> Resolver {
        // The lists as `satisfies` expects them (sorted; capabilities and claims unique), so the
        // index and the reference agree even on a hand-written advertisement.
        for a in &mut adverts {
            a.capabilities.sort_unstable();
            a.capabilities.dedup();
            a.claims.sort_unstable();
            a.claims.dedup();
            a.proofs.sort_by_key(|p| p.claim);
        }
        let keys: Vec<Vec<Key>> = adverts
            .iter()
            .map(|a| {
                let mut k: Vec<Key> = a.capabilities.iter().map(|&c| Key::Capability(c)).collect();
                k.extend(a.claims.iter().map(|&c| Key::Claim(c)));
                k.extend(a.proofs.iter().map(|p| Key::Proof(p.claim)));
                k
            })
            .collect();
        let tags = Tags::new(keys.iter().map(Vec::as_slice));
        let mut postings: HashMap<(u32, u32), Posting, foldhash::fast::FixedState> =
            HashMap::with_hasher(foldhash::fast::FixedState::default());
        let mut by_name = HashMap::with_capacity(adverts.len());
        let mut capacity = Vec::with_capacity(adverts.len());
        let mut lists = Vec::new();
        for ((i, a), keys) in adverts.iter().enumerate().zip(&keys) {
            let idx = i as EndpointIdx;
            by_name.insert(a.name.clone(), idx);
            let cap = a.max_in_flight.unwrap_or(config.default_capacity).max(1);
            capacity.push(cap);
            let offset = u32::try_from(lists.len()).unwrap_or(u32::MAX);
            let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            lists.extend([
                len(a.capabilities.len()),
                len(a.claims.len()),
                len(a.proofs.len()),
            ]);
            lists.extend(&a.capabilities);
            lists.extend(&a.claims);
            lists.extend(a.proofs.iter().map(|p| p.claim));
            lists.extend(a.proofs.iter().map(|p| p.min_score));
            let cand = Cand {
                lists: offset,
                // As `satisfies` finds it.
                proof_score: tags.proof.map_or(0, |claim| {
                    a.proofs
                        .binary_search_by_key(&claim, |p| p.claim)
                        .map_or(0, |i| a.proofs[i].min_score)
                }),
                tags: keys
                    .iter()
                    .filter_map(|&k| tags.bit(k))
                    .fold(0, |t, (b, _)| t | b),
                ..Cand::new(idx, a, cap, &config)
            };
            for &c in &a.capabilities {
                postings.entry((c, 0)).or_default().cands.push(cand);
                postings
                    .entry((c, a.model_family))
                    .or_default()
                    .cands
                    .push(cand);
            }
        }
        // A fixed pseudo-random order, so that a window of a long list is a fair sample; then
        // by context window, largest first (stable), so a minimum context is a prefix.
        for (&(cap, _), p) in postings.iter_mut() {
            let list = &mut p.cands;
            let mut rng = SplitMix(0x5EED ^ list.len() as u64);
            for i in (1..list.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                list.swap(i, j);
            }
            let ctx = |c: &Cand| adverts.get(c.idx as usize).map_or(0, |a| a.context_window);
            list.sort_by_key(|c| std::cmp::Reverse(ctx(c)));
            for (i, c) in list.iter().enumerate() {
                let end = u32::try_from(i + 1).unwrap_or(u32::MAX);
                match p.runs.last_mut() {
                    Some(r) if r.0 == ctx(c) => r.1 = end,
                    _ => p.runs.push((ctx(c), end)),
                }
            }
            p.runs.shrink_to_fit();
            p.tag = tags.bit(Key::Capability(cap)).unwrap_or((0, false));
        }
        Resolver {
            adverts,
            capacity,
            lists,
            tags,
            postings,
            by_name,
            latency_scale: config.w_latency / config.latency_ref_ms,
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

    /// The latency an endpoint is scored by, ms: observed, else its SLA, else the reference.
    #[inline]
    fn latency_ms(&self, c: &Cand, load: &LoadReport) -> f32 {
        if load.latency_us != 0 {
            load.latency_us as f32 * 0.001
        } else if c.lat != ANY {
            c.lat as f32
        } else {
            self.config.latency_ref_ms
        }
    }

    /// The effective weight (module docs), with one division.
    #[inline]
    fn score(&self, c: &Cand, load: &LoadReport) -> f32 {
        let cfg = &self.config;
        let cap = c.capacity as f32;
        let busy = load.in_flight as f32 + load.queue_depth as f32;
        c.base * cap
            / ((1.0 + self.latency_scale * self.latency_ms(c, load)) * (cap + cfg.w_load * busy))
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
        // The shortest posting list (its prefix with a large enough context window) among the
        // required capabilities; sorted by context window, largest first.
        let family = sad.model_family();
        let min_ctx = sad.min_context();
        let mut check_lists = false;
        let mut need_tags = 0u64;
        let mut list: &[Cand] = match self.postings.get(&(sad.class(), family)) {
            Some(p) => {
                need_tags |= p.tag.0;
                check_lists |= !p.tag.1;
                p.prefix(min_ctx)
            }
            None if family != 0 && self.postings.contains_key(&(sad.class(), 0)) => {
                return Err(NoRoute::NoMatch);
            }
            None => return Err(NoRoute::NoCandidate),
        };
        for c in sad.extra_capabilities() {
            match self.postings.get(&(c, family)) {
                Some(p) => {
                    need_tags |= p.tag.0;
                    check_lists |= !p.tag.1;
                    let l = p.prefix(min_ctx);
                    if l.len() < list.len() {
                        list = l;
                    }
                }
                None if family != 0 && self.postings.contains_key(&(c, 0)) => {
                    return Err(NoRoute::NoMatch);
                }
                None => return Err(NoRoute::NoCandidate),
            }
        }
        // Required capabilities (above), claims and proofs as tag bits; a key without an exact
        // bit, or a proof's score, is checked against the endpoint's lists.
        let mut need_score = 0u32;
        for p in sad.required_proofs() {
            if self.tags.proof == Some(p.claim) {
                need_score = need_score.max(p.min_score);
            } else {
                check_lists |= p.min_score > 0;
            }
        }
        let required = sad
            .required_claims()
            .map(Key::Claim)
            .chain(sad.required_proofs().map(|p| Key::Proof(p.claim)));
        for key in required {
            match self.tags.bit(key) {
                Some((bit, exact)) => {
                    need_tags |= bit;
                    check_lists |= !exact;
                }
                // No endpoint of the domain has it.
                None => return Err(NoRoute::NoMatch),
            }
        }
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
        // From `start` to the end, then from the beginning: a window of the fixed random order.
        let (tail, head) = list.split_at(start);
        for (k, c) in head.iter().chain(tail).enumerate() {
            if k >= self.config.scan_limit && scratch.feasible.len() >= fan_out {
                break;
            }
            // The family and the context window hold by construction of `list`; `ANY` bounds
            // admit everything and unstated latencies and prices are `ANY`, so one comparison
            // each decides them as `satisfies` does.
            let ok = c.lat <= max_lat
                && c.cost <= max_cost
                && c.modalities & modalities == modalities
                && c.trust >= min_trust
                && c.base > 0.0
                && c.tags & need_tags == need_tags
                && c.proof_score >= need_score
                && (!check_lists || self.lists_ok(c.lists, sad));
            if !ok {
                continue;
            }
            matched += 1;
            let l = load.get(c.idx);
            if l.in_flight >= c.capacity || l.queue_depth >= self.config.max_queue_depth {
                continue;
            }
            let key = match self.config.strategy {
                Strategy::LeastCost => c.cost,
                _ => 0,
            };
            let s = match self.config.strategy {
                Strategy::LeastLatency => {
                    // Lower is better: load-adjusted latency, stored negated so "higher wins".
                    let busy = (l.in_flight as f32 + l.queue_depth as f32) / c.capacity as f32;
                    -(self.latency_ms(c, &l) * (1.0 + self.config.w_load * busy))
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

    /// Whether the endpoint whose lists start at `offset` in [`Self::lists`] has every
    /// capability, claim and proof `sad` requires (as [`Advertisement::satisfies`] decides).
    fn lists_ok(&self, offset: u32, sad: &SadView<'_>) -> bool {
        let at = offset as usize;
        let Some(&[caps, claims, proofs]) = self.lists.get(at..at + 3) else {
            return false;
        };
        let (caps, claims, proofs) = (caps as usize, claims as usize, proofs as usize);
        let Some(l) = self.lists.get(at + 3..at + 3 + caps + claims + 2 * proofs) else {
            return false;
        };
        let (caps, l) = l.split_at(caps);
        let (claims, l) = l.split_at(claims);
        let (proof_claims, scores) = l.split_at(proofs);
        caps.binary_search(&sad.class()).is_ok()
            && sad
                .extra_capabilities()
                .all(|c| caps.binary_search(&c).is_ok())
            && sad
                .required_claims()
                .all(|c| claims.binary_search(&c).is_ok())
            && sad.required_proofs().all(|need| {
                proof_claims
                    .binary_search(&need.claim)
                    .is_ok_and(|i| scores.get(i).is_some_and(|&s| s >= need.min_score))
            })
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
            let cand = Cand::new(
                idx,
                a,
                self.capacity.get(i).copied().unwrap_or(1),
                &self.config,
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_exact_for_a_small_vocabulary_and_bloom_beyond() {
        let small: Vec<Vec<Key>> = (0..64).map(|i| vec![Key::Capability(i)]).collect();
        let t = Tags::new(small.iter().map(Vec::as_slice));
        let bits: Vec<u64> = (0..64)
            .map(|i| t.bit(Key::Capability(i)).expect("known").0)
            .collect();
        assert!((0..64).all(|i| t.bit(Key::Capability(i)).is_some_and(|b| b.1)));
        assert_eq!(
            bits.iter().fold(0u64, |a, b| a | b),
            u64::MAX,
            "one bit each"
        );
        assert_eq!(t.bit(Key::Claim(0)), None, "nobody has it");

        // 100 keys; the 48 most common get exact bits, the rest a Bloom bit above them.
        let wide: Vec<Vec<Key>> = (0..100u32)
            .map(|i| (0..=i).map(Key::Claim).collect())
            .collect();
        let t = Tags::new(wide.iter().map(Vec::as_slice));
        for k in 0..100 {
            let (bit, exact) = t.bit(Key::Claim(k)).expect("bloom or exact");
            assert_eq!(exact, k < 48, "claim {k}");
            assert_eq!(bit >= 1 << 48, !exact, "claim {k}");
        }
        assert!(t.bit(Key::Proof(1_000)).is_some_and(|b| !b.1));
    }
}
