//! Property tests of the resolver against the reference semantics
//! (`Advertisement::satisfies` and a linear scan).

use std::collections::HashMap;

use nexus_route::id::{capability_id, claim_id, family_id};
use nexus_route::{
    Advertisement, Descriptor, LoadReport, LoadTable, Modalities, NoRoute, ProofBound, Resolver,
    ResolverConfig, SadView, Scratch, Strategy as Pick, TrustLevel,
};
use proptest::prelude::*;

const CAPS: [&str; 6] = [
    "code-generation",
    "chat",
    "tool-use",
    "embedding",
    "vision",
    "asr",
];
const FAMILIES: [&str; 3] = ["llm", "diffusion", "asr"];

fn advert(
    i: usize,
    caps: &[usize],
    fam: usize,
    ctx: u32,
    lat: u32,
    cost: u64,
    w: u32,
) -> Advertisement {
    let mut ids: Vec<u32> = caps.iter().map(|&c| capability_id(CAPS[c])).collect();
    ids.sort_unstable();
    ids.dedup();
    Advertisement {
        name: format!("ep-{i}"),
        address: format!("10.0.{}.{}:7400", i / 250, i % 250),
        capability_names: caps.iter().map(|&c| CAPS[c].to_owned()).collect(),
        capabilities: ids,
        model_family_name: FAMILIES[fam].into(),
        model_family: family_id(FAMILIES[fam]),
        context_window: ctx,
        modalities: Modalities::TEXT,
        latency_sla_ms: Some(lat),
        cost_micros: Some(cost),
        weight: w,
        max_in_flight: None,
        trust: TrustLevel::from_u8((i % 4) as u8).unwrap_or_default(),
        claims: if i.is_multiple_of(2) {
            vec![claim_id("benchmark:humaneval")]
        } else {
            vec![]
        },
        proofs: if i.is_multiple_of(3) {
            vec![ProofBound {
                claim: claim_id("safety-eval"),
                min_score: 9_000 + (i as u32 % 5) * 100,
            }]
        } else {
            vec![]
        },
    }
}

prop_compose! {
    fn arb_advert(i: usize)(
        caps in proptest::collection::vec(0..CAPS.len(), 1..4),
        fam in 0..FAMILIES.len(),
        ctx in prop::sample::select(vec![0u32, 8_192, 32_768, 131_072, 1_000_000]),
        lat in 20u32..500,
        cost in 100u64..10_000,
        w in prop::sample::select(vec![0u32, 1, 10, 100, 1000]),
    ) -> Advertisement {
        advert(i, &caps, fam, ctx, lat, cost, w)
    }
}

fn arb_adverts() -> impl Strategy<Value = Vec<Advertisement>> {
    (1usize..60).prop_flat_map(|n| (0..n).map(arb_advert).collect::<Vec<_>>())
}

prop_compose! {
    fn arb_descriptor()(
        class in 0..CAPS.len(),
        extra in proptest::option::of(0..CAPS.len()),
        fam in proptest::option::of(0..FAMILIES.len()),
        ctx in prop::sample::select(vec![0u32, 32_000, 128_000]),
        lat in proptest::option::of(50u32..400),
        cost in proptest::option::of(500u32..8_000),
        trust in 0u8..4,
        fan_out in 1u8..5,
        claim in any::<bool>(),
        proof in proptest::option::of(prop::sample::select(vec![8_000u32, 9_000, 9_300])),
    ) -> Descriptor {
        let class_id = capability_id(CAPS[class]);
        let mut d = Descriptor::for_class(class_id);
        d.extra_capabilities = extra.map(|e| capability_id(CAPS[e])).filter(|&e| e != class_id).into_iter().collect();
        d.model_family = fam.map_or(0, |f| family_id(FAMILIES[f]));
        d.min_context = ctx;
        d.max_latency_ms = lat.unwrap_or(u32::MAX);
        d.max_cost = cost.unwrap_or(u32::MAX);
        d.min_trust = TrustLevel::from_u8(trust).unwrap_or_default();
        d.fan_out = fan_out;
        if claim { d.required_claims = vec![claim_id("benchmark:humaneval")]; }
        d.required_proofs = proof.map(|p| ProofBound { claim: claim_id("safety-eval"), min_score: p }).into_iter().collect();
        d
    }
}

fn bytes(d: &Descriptor) -> Vec<u8> {
    d.to_bytes().expect("generated descriptors are valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Never an endpoint that fails the descriptor; never a saturated one; the picks are
    /// distinct, as many as asked or as exist; and "no route" only when the linear scan agrees.
    #[test]
    fn picks_are_feasible_unsaturated_and_complete(
        adverts in arb_adverts(),
        d in arb_descriptor(),
        saturated in proptest::collection::vec(any::<bool>(), 60),
        random in any::<u64>(),
        strategy in prop::sample::select(vec![Pick::Weighted, Pick::LeastLatency, Pick::LeastCost]),
    ) {
        let r = Resolver::new(adverts, ResolverConfig { strategy, ..ResolverConfig::default() });
        let load = r.new_load_table();
        for (i, s) in saturated.iter().enumerate().take(r.advertisements().len()) {
            if *s {
                load.report(i as u32, LoadReport { in_flight: 64, queue_depth: 0, latency_us: 0 });
            }
        }
        let b = bytes(&d);
        let sad = SadView::parse_exact(&b).expect("valid");
        let feasible = r.feasible_linear(&sad, &load);
        let mut out = Vec::new();
        let res = r.resolve(&sad, &load, random, &mut Scratch::default(), &mut out);
        for &p in &out {
            let a = &r.advertisements()[p as usize];
            prop_assert!(a.satisfies(&sad), "picked {} which fails the descriptor", a.name);
            prop_assert!(!r.is_saturated(p, &load.get(p)), "picked saturated {}", a.name);
        }
        let mut uniq = out.clone();
        uniq.sort_unstable();
        uniq.dedup();
        prop_assert_eq!(uniq.len(), out.len(), "duplicate picks");
        prop_assert_eq!(out.len(), usize::from(d.fan_out).min(feasible.len()));
        prop_assert_eq!(res.is_err(), feasible.is_empty());
        if strategy == Pick::LeastCost && !out.is_empty() {
            // The cheapest feasible endpoint is the first pick.
            let cheapest = feasible.iter().map(|&i| r.advertisements()[i as usize].cost_micros).min();
            prop_assert_eq!(Some(r.advertisements()[out[0] as usize].cost_micros), cheapest);
        }
    }
}

fn three(weights: [u32; 3]) -> Resolver {
    let adverts = (0..3)
        .map(|i| advert(i, &[0], 0, 131_072, 100, 2_000, weights[i]))
        .map(|mut a| {
            a.trust = TrustLevel::Attested;
            a
        })
        .collect();
    Resolver::new(adverts, ResolverConfig::default())
}

fn frequencies(r: &Resolver, load: &LoadTable, n: u64) -> [f64; 3] {
    let b = bytes(&Descriptor::for_class(capability_id(CAPS[0])));
    let sad = SadView::parse_exact(&b).expect("valid");
    let mut counts = [0u64; 3];
    let (mut scratch, mut out) = (Scratch::default(), Vec::new());
    for i in 0..n {
        r.resolve(
            &sad,
            load,
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            &mut scratch,
            &mut out,
        )
        .expect("routable");
        counts[out[0] as usize] += 1;
    }
    counts.map(|c| c as f64 / n as f64)
}

#[test]
fn weights_are_respected_in_distribution() {
    let r = three([10, 20, 70]);
    let load = r.new_load_table();
    let f = frequencies(&r, &load, 40_000);
    for (got, want) in f.iter().zip([0.1, 0.2, 0.7]) {
        // 40,000 draws: the standard error of a share ≤ 0.0025; 0.015 is six of them.
        assert!((got - want).abs() < 0.015, "shares {f:?}, want 0.1/0.2/0.7");
    }
}

#[test]
fn load_feedback_shifts_traffic_and_saturation_stops_it() {
    let r = three([1, 1, 1]);
    let load = r.new_load_table();
    let even = frequencies(&r, &load, 30_000);
    for s in even {
        assert!((s - 1.0 / 3.0).abs() < 0.015, "{even:?}");
    }
    // Endpoint 0 half busy: it gets less than its share.
    load.report(
        0,
        LoadReport {
            in_flight: 32,
            queue_depth: 0,
            latency_us: 0,
        },
    );
    let busy = frequencies(&r, &load, 30_000);
    assert!(busy[0] < 0.25, "{busy:?}");
    // Saturated (capacity 64 by default): it gets nothing.
    load.report(
        0,
        LoadReport {
            in_flight: 64,
            queue_depth: 0,
            latency_us: 0,
        },
    );
    assert_eq!(frequencies(&r, &load, 5_000)[0], 0.0);
    // A deep queue saturates too; when it drains, traffic comes back.
    load.report(
        0,
        LoadReport {
            in_flight: 0,
            queue_depth: 128,
            latency_us: 0,
        },
    );
    assert_eq!(frequencies(&r, &load, 5_000)[0], 0.0);
    load.report(0, LoadReport::default());
    assert!(frequencies(&r, &load, 30_000)[0] > 0.3);
}

#[test]
fn all_saturated_and_no_candidate_are_told_apart() {
    let r = three([1, 1, 1]);
    let load = r.new_load_table();
    for i in 0..3 {
        for _ in 0..64 {
            load.begin_call(i);
        }
    }
    let b = bytes(&Descriptor::for_class(capability_id(CAPS[0])));
    let sad = SadView::parse_exact(&b).expect("valid");
    let mut out = Vec::new();
    assert_eq!(
        r.resolve(&sad, &load, 1, &mut Scratch::default(), &mut out),
        Err(NoRoute::AllSaturated)
    );
    load.end_call(2);
    assert_eq!(
        r.resolve(&sad, &load, 1, &mut Scratch::default(), &mut out),
        Ok(())
    );
    assert_eq!(out, [2]);
    let b = bytes(&Descriptor::for_class(capability_id("teleportation")));
    let sad = SadView::parse_exact(&b).expect("valid");
    assert_eq!(
        r.resolve(&sad, &load, 1, &mut Scratch::default(), &mut out),
        Err(NoRoute::NoCandidate)
    );
}

#[test]
fn long_posting_lists_still_find_a_rare_match() {
    // 5,000 endpoints advertise the class; one alone has the context window asked for.
    let mut adverts: Vec<Advertisement> = (0..5_000)
        .map(|i| advert(i, &[0], 0, 8_192, 100, 1_000, 10))
        .collect();
    adverts[4_321].context_window = 1_000_000;
    let r = Resolver::new(adverts, ResolverConfig::default());
    let load = r.new_load_table();
    let mut d = Descriptor::for_class(capability_id(CAPS[0]));
    d.min_context = 500_000;
    let b = bytes(&d);
    let sad = SadView::parse_exact(&b).expect("valid");
    let mut out = Vec::new();
    let mut scratch = Scratch::default();
    let mut seen = HashMap::new();
    for seed in 0..50 {
        r.resolve(&sad, &load, seed, &mut scratch, &mut out)
            .expect("found");
        *seen.entry(out[0]).or_insert(0) += 1;
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [4_321]);
}

/// A domain with more list keys (capabilities, claims, proofs) than the index has exact tag
/// bits: the rare ones share Bloom bits and are checked against the endpoint's lists.
fn wide_advert(i: usize, caps: &[usize], claims: &[usize], fam: usize, w: u32) -> Advertisement {
    let mut ids: Vec<u32> = caps
        .iter()
        .map(|c| capability_id(&format!("cap-{c}")))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut claim_ids: Vec<u32> = claims
        .iter()
        .map(|c| claim_id(&format!("claim-{c}")))
        .collect();
    claim_ids.sort_unstable();
    claim_ids.dedup();
    let mut a = advert(i, &[], fam, 131_072, 100, 1_000, w);
    // A proof of each claim too (besides `advert`'s safety-eval on every third endpoint).
    a.proofs.extend(claim_ids.iter().map(|&claim| ProofBound {
        claim,
        min_score: 8_500 + 100 * (i as u32 % 10),
    }));
    a.proofs.sort_by_key(|p| p.claim);
    a.capabilities = ids;
    a.claims = claim_ids;
    a
}

const WIDE_CAPS: usize = 90;
const WIDE_CLAIMS: usize = 12;

prop_compose! {
    fn arb_wide_advert(i: usize)(
        caps in proptest::collection::vec(
            // Skewed: a few capabilities are common (exact bits), most are rare (Bloom bits).
            prop_oneof![3 => 0..8usize, 1 => 0..WIDE_CAPS],
            1..6,
        ),
        claims in proptest::collection::vec(0..WIDE_CLAIMS, 0..3),
        fam in 0..FAMILIES.len(),
        w in prop::sample::select(vec![0u32, 1, 100]),
    ) -> Advertisement {
        wide_advert(i, &caps, &claims, fam, w)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With more keys than exact tag bits (and posting lists of extra capabilities shorter
    /// than the class's), the index finds a feasible endpoint whenever the linear scan does,
    /// and never picks one that fails the descriptor.
    #[test]
    fn wide_vocabularies_agree_with_the_linear_scan(
        adverts in (20usize..200).prop_flat_map(|n| (0..n).map(arb_wide_advert).collect::<Vec<_>>()),
        class in prop_oneof![0..8usize, 0..WIDE_CAPS],
        extra in proptest::collection::vec(0..WIDE_CAPS, 0..3),
        claims in proptest::collection::vec(0..WIDE_CLAIMS, 0..2),
        fam in proptest::option::of(0..FAMILIES.len()),
        proof in proptest::option::of(prop::sample::select(vec![0u32, 9_000, 9_300])),
        claim_proof in proptest::option::of((0..WIDE_CLAIMS, prop::sample::select(vec![0u32, 8_700, 9_100]))),
        fan_out in 1u8..4,
        random in any::<u64>(),
        scan_limit in prop::sample::select(vec![4usize, 128]),
    ) {
        let r = Resolver::new(adverts, ResolverConfig { scan_limit, ..ResolverConfig::default() });
        let class_id = capability_id(&format!("cap-{class}"));
        let mut d = Descriptor::for_class(class_id);
        let mut extra: Vec<u32> = extra.iter().map(|e| capability_id(&format!("cap-{e}"))).filter(|&e| e != class_id).collect();
        extra.sort_unstable();
        extra.dedup();
        d.extra_capabilities = extra;
        let mut claims: Vec<u32> = claims.iter().map(|c| claim_id(&format!("claim-{c}"))).collect();
        claims.sort_unstable();
        claims.dedup();
        d.required_claims = claims;
        d.model_family = fam.map_or(0, |f| family_id(FAMILIES[f]));
        let mut proofs: Vec<ProofBound> = proof.map(|p| ProofBound { claim: claim_id("safety-eval"), min_score: p }).into_iter().collect();
        proofs.extend(claim_proof.map(|(c, p)| ProofBound { claim: claim_id(&format!("claim-{c}")), min_score: p }));
        proofs.sort_by_key(|p| p.claim);
        proofs.dedup_by_key(|p| p.claim);
        d.required_proofs = proofs;
        d.fan_out = fan_out;
        let b = bytes(&d);
        let sad = SadView::parse_exact(&b).expect("valid");
        let load = r.new_load_table();
        let feasible = r.feasible_linear(&sad, &load);
        let mut out = Vec::new();
        let res = r.resolve(&sad, &load, random, &mut Scratch::default(), &mut out);
        for &p in &out {
            let a = &r.advertisements()[p as usize];
            prop_assert!(a.satisfies(&sad), "picked {} which fails the descriptor", a.name);
        }
        prop_assert_eq!(res.is_err(), feasible.is_empty());
        prop_assert_eq!(out.len(), usize::from(d.fan_out).min(feasible.len()));
    }
}

/// The class must be checked on endpoints found through an extra capability's (shorter)
/// posting list, however densely their tag bits are set.
fn extra_list_checks_the_class(class_endpoints: usize, popular: usize) {
    // `popular` endpoints with capabilities cap-10..cap-69, more common than the class when
    // `popular > class_endpoints` (the class then falls in the Bloom bits); the class cap-0 on
    // `class_endpoints`; cap-1 on 5 endpoints that lack the class but have the 60 others.
    let fillers: Vec<usize> = (10..70).collect();
    let mut adverts: Vec<Advertisement> = (0..popular)
        .map(|i| wide_advert(i, &fillers, &[], 0, 10))
        .collect();
    adverts.extend(
        (popular..popular + class_endpoints).map(|i| wide_advert(i, &[0, 70 + i % 20], &[], 0, 10)),
    );
    let n = adverts.len();
    let with_extra: Vec<usize> = (n..n + 5).collect();
    adverts.extend(with_extra.iter().map(|&i| {
        let mut caps = fillers.clone();
        caps.push(1);
        wide_advert(i, &caps, &[], 0, 10)
    }));
    let r = Resolver::new(adverts, ResolverConfig::default());
    let load = r.new_load_table();
    let mut d = Descriptor::for_class(capability_id("cap-0"));
    d.extra_capabilities = vec![capability_id("cap-1")];
    let b = bytes(&d);
    let sad = SadView::parse_exact(&b).expect("valid");
    let mut out = Vec::new();
    for seed in 0..20 {
        assert_eq!(
            r.resolve(&sad, &load, seed, &mut Scratch::default(), &mut out),
            Err(NoRoute::NoMatch),
            "picked {out:?}"
        );
    }
    // One endpoint with both: always found.
    let mut adverts = r.advertisements().to_vec();
    adverts[with_extra[2]]
        .capabilities
        .push(capability_id("cap-0"));
    adverts[with_extra[2]].capabilities.sort_unstable();
    let r = Resolver::new(adverts, ResolverConfig::default());
    for seed in 0..20 {
        r.resolve(&sad, &load, seed, &mut Scratch::default(), &mut out)
            .expect("routable");
        assert_eq!(out, [with_extra[2] as u32]);
    }
}

#[test]
fn an_extra_capabilitys_list_is_checked_for_the_class() {
    // The class common enough for a tag bit of its own.
    extra_list_checks_the_class(300, 0);
    // The class among the Bloom bits (60 more common capabilities).
    extra_list_checks_the_class(100, 200);
}
