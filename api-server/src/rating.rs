//! The rating engine: usage quantities and a price plan in, invoice lines out. No I/O, no floats.
//!
//! Money is in integer micro-units of the plan's currency (1 USD = 1,000,000 micros). A meter is
//! priced per *billing unit* (a GB is 10^9 `traffic_bytes`; a cluster-month is 730 `cluster_hours`)
//! with graduated tiers: each tier's price applies to the part of the quantity inside the tier.
//! A line's amount is rounded down to a whole micro; the total is the sum of the lines, exactly.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::metering::Meter;

/// One graduated tier: applies from the previous tier's `up_to` to this one (in billing units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Inclusive upper bound in billing units; `null` for the last, unbounded tier.
    #[serde(default, deserialize_with = "crate::num::opt_u64")]
    pub up_to: Option<u64>,
    /// Price of one billing unit in micro-units of the currency.
    #[serde(deserialize_with = "crate::num::u64")]
    pub unit_price_micros: u64,
}

/// How one meter is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeterPrice {
    pub meter: Meter,
    /// Name of the billing unit, e.g. "GB".
    pub unit: String,
    /// Metered quantity per billing unit (e.g. 1000000000 bytes per GB).
    #[serde(deserialize_with = "crate::num::u64")]
    pub unit_size: u64,
    pub tiers: Vec<Tier>,
}

/// A price plan: one price per meter. Meters without a price are free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub meters: Vec<MeterPrice>,
}

/// Why a plan is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("meter {0} is priced twice")]
    DuplicateMeter(Meter),
    #[error("meter {0}: unit_size must be positive")]
    ZeroUnitSize(Meter),
    #[error("meter {0}: needs at least one tier")]
    NoTiers(Meter),
    #[error("meter {0}: tier bounds must be strictly increasing and positive")]
    TierOrder(Meter),
    #[error("meter {0}: only the last tier may be unbounded, and it must be")]
    Unbounded(Meter),
    #[error("meter {0}: price or bound too large")]
    TooLarge(Meter),
}

/// Largest unit price accepted (10^12 micros = 1,000,000 currency units per billing unit).
const MAX_UNIT_PRICE: u64 = 1_000_000_000_000;

impl PlanSpec {
    /// Checks the invariants the rating engine relies on.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut seen = Vec::new();
        for m in &self.meters {
            if seen.contains(&m.meter) {
                return Err(PlanError::DuplicateMeter(m.meter));
            }
            seen.push(m.meter);
            if m.unit_size == 0 {
                return Err(PlanError::ZeroUnitSize(m.meter));
            }
            if m.tiers.is_empty() {
                return Err(PlanError::NoTiers(m.meter));
            }
            let mut prev = 0u64;
            for (i, t) in m.tiers.iter().enumerate() {
                let last = i + 1 == m.tiers.len();
                if t.unit_price_micros > MAX_UNIT_PRICE {
                    return Err(PlanError::TooLarge(m.meter));
                }
                match t.up_to {
                    None if !last => return Err(PlanError::Unbounded(m.meter)),
                    Some(_) if last => return Err(PlanError::Unbounded(m.meter)),
                    Some(b) if b <= prev => return Err(PlanError::TierOrder(m.meter)),
                    Some(b) => {
                        if u128::from(b) * u128::from(m.unit_size) > u128::from(u64::MAX) {
                            return Err(PlanError::TooLarge(m.meter));
                        }
                        prev = b;
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    pub fn price_for(&self, meter: Meter) -> Option<&MeterPrice> {
        self.meters.iter().find(|m| m.meter == meter)
    }
}

/// One rated line: the part of a meter's quantity that fell in one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Line {
    pub meter: Meter,
    pub tier: usize,
    /// Metered quantity (base units, e.g. bytes) inside this tier.
    pub quantity: u64,
    pub unit: String,
    pub unit_size: u64,
    pub unit_price_micros: u64,
    pub amount_micros: u64,
    pub description: String,
}

/// Rates `quantity` (base units) of one meter: one line per tier the quantity reaches.
/// Zero quantity gives no lines. The plan must have passed [`PlanSpec::validate`].
pub fn rate_meter(price: &MeterPrice, quantity: u64) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut lower: u64 = 0; // base units
    for (i, tier) in price.tiers.iter().enumerate() {
        if quantity <= lower {
            break;
        }
        let upper = match tier.up_to {
            Some(b) => b.saturating_mul(price.unit_size),
            None => u64::MAX,
        };
        let in_tier = quantity.min(upper) - lower;
        // in_tier < 2^64, price ≤ 10^12 < 2^40: the product fits in u128; the quotient is at most
        // in_tier * price / unit_size, which fits in u64 for any quantity a bigint column holds
        // and the price cap (saturate rather than wrap if not).
        let amount = u128::from(in_tier) * u128::from(tier.unit_price_micros)
            / u128::from(price.unit_size.max(1));
        let amount = u64::try_from(amount).unwrap_or(u64::MAX);
        let range = match tier.up_to {
            Some(b) => format!("{}–{} {}", lower / price.unit_size.max(1), b, price.unit),
            None => format!("over {} {}", lower / price.unit_size.max(1), price.unit),
        };
        lines.push(Line {
            meter: price.meter,
            tier: i,
            quantity: in_tier,
            unit: price.unit.clone(),
            unit_size: price.unit_size,
            unit_price_micros: tier.unit_price_micros,
            amount_micros: amount,
            description: format!("{} tier {} ({range})", price.meter, i + 1),
        });
        lower = upper;
    }
    lines
}

/// Rates every meter's quantity under `plan`; lines come out in the plan's meter order.
pub fn rate(plan: &PlanSpec, usage: &[(Meter, u64)]) -> Vec<Line> {
    let mut out = Vec::new();
    for price in &plan.meters {
        let q: u64 = usage
            .iter()
            .filter(|(m, _)| *m == price.meter)
            .fold(0u64, |acc, (_, q)| acc.saturating_add(*q));
        out.extend(rate_meter(price, q));
    }
    out
}

/// The invoice total: the sum of its lines, and nothing else.
pub fn total(lines: &[Line]) -> u64 {
    lines
        .iter()
        .fold(0u64, |acc, l| acc.saturating_add(l.amount_micros))
}

/// Formats micros as a decimal string with six places: 1234567 → "1.234567".
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn traffic() -> MeterPrice {
        MeterPrice {
            meter: Meter::TrafficBytes,
            unit: "GB".into(),
            unit_size: 1_000_000_000,
            tiers: vec![
                Tier {
                    up_to: Some(1000),
                    unit_price_micros: 80_000,
                },
                Tier {
                    up_to: Some(10_000),
                    unit_price_micros: 50_000,
                },
                Tier {
                    up_to: None,
                    unit_price_micros: 20_000,
                },
            ],
        }
    }

    fn mics() -> MeterPrice {
        MeterPrice {
            meter: Meter::MicsIssued,
            unit: "MIC".into(),
            unit_size: 1,
            tiers: vec![
                Tier {
                    up_to: Some(100),
                    unit_price_micros: 5_000_000,
                },
                Tier {
                    up_to: Some(1000),
                    unit_price_micros: 3_500_000,
                },
                Tier {
                    up_to: None,
                    unit_price_micros: 2_000_000,
                },
            ],
        }
    }

    #[test]
    fn default_like_plan_validates() {
        let plan = PlanSpec {
            meters: vec![traffic(), mics()],
        };
        assert_eq!(plan.validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_plans() {
        let mut p = traffic();
        p.tiers[1].up_to = Some(1000);
        assert!(matches!(
            PlanSpec { meters: vec![p] }.validate(),
            Err(PlanError::TierOrder(_))
        ));
        let mut p = traffic();
        p.tiers[2].up_to = Some(20_000);
        assert!(matches!(
            PlanSpec { meters: vec![p] }.validate(),
            Err(PlanError::Unbounded(_))
        ));
        let mut p = traffic();
        p.unit_size = 0;
        assert!(matches!(
            PlanSpec { meters: vec![p] }.validate(),
            Err(PlanError::ZeroUnitSize(_))
        ));
        assert!(matches!(
            PlanSpec {
                meters: vec![traffic(), traffic()]
            }
            .validate(),
            Err(PlanError::DuplicateMeter(_))
        ));
    }

    #[test]
    fn tier_boundaries_are_exact() {
        // Exactly 100 MICs: all in tier 1.
        let l = rate_meter(&mics(), 100);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].amount_micros, 500_000_000);
        // 101 MICs: one in tier 2.
        let l = rate_meter(&mics(), 101);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].quantity, 1);
        assert_eq!(total(&l), 500_000_000 + 3_500_000);
        // 1001 MICs: 100×5 + 900×3.5 + 1×2 = 500 + 3150 + 2 USD.
        assert_eq!(total(&rate_meter(&mics(), 1001)), 3_652_000_000);
        // 1000 GB + 1 byte of traffic.
        let l = rate_meter(&traffic(), 1000 * 1_000_000_000 + 1);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].amount_micros, 80_000_000);
        assert_eq!(l[1].amount_micros, 0); // 1 byte at $0.05/GB rounds down to 0 micros
        assert!(rate_meter(&mics(), 0).is_empty());
    }

    #[test]
    fn formats_micros() {
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(5), "0.000005");
        assert_eq!(format_micros(-2_000_000), "-2.000000");
    }

    fn arb_price() -> impl Strategy<Value = MeterPrice> {
        (
            1u64..=1_000_000_000,
            proptest::collection::vec((1u64..=1000, 0u64..=10_000_000), 0..5),
            0u64..=10_000_000,
        )
            .prop_map(|(unit_size, steps, last_price)| {
                let mut bound = 0;
                let mut tiers: Vec<Tier> = steps
                    .into_iter()
                    .map(|(step, price)| {
                        bound += step;
                        Tier {
                            up_to: Some(bound),
                            unit_price_micros: price,
                        }
                    })
                    .collect();
                tiers.push(Tier {
                    up_to: None,
                    unit_price_micros: last_price,
                });
                MeterPrice {
                    meter: Meter::TrafficBytes,
                    unit: "u".into(),
                    unit_size,
                    tiers,
                }
            })
    }

    proptest! {
        #[test]
        fn generated_plans_validate(p in arb_price()) {
            prop_assert_eq!(PlanSpec { meters: vec![p] }.validate(), Ok(()));
        }

        #[test]
        fn lines_cover_quantity_and_total_is_their_sum(p in arb_price(), q in 0u64..=1u64 << 50) {
            let lines = rate_meter(&p, q);
            let covered: u64 = lines.iter().map(|l| l.quantity).sum();
            prop_assert_eq!(covered, q);
            prop_assert_eq!(total(&lines), lines.iter().map(|l| l.amount_micros).sum::<u64>());
            // Each line is within its tier and priced at its tier's price.
            for l in &lines {
                prop_assert_eq!(l.unit_price_micros, p.tiers[l.tier].unit_price_micros);
                prop_assert_eq!(
                    u128::from(l.amount_micros),
                    u128::from(l.quantity) * u128::from(l.unit_price_micros) / u128::from(p.unit_size)
                );
            }
        }

        #[test]
        fn total_is_monotonic(p in arb_price(), a in 0u64..=1u64 << 50, d in 0u64..=1u64 << 40) {
            prop_assert!(total(&rate_meter(&p, a)) <= total(&rate_meter(&p, a + d)));
        }

        #[test]
        fn boundary_splits_exactly(p in arb_price()) {
            // At each bound the quantity fills the tiers up to it and nothing beyond.
            for (i, t) in p.tiers.iter().enumerate() {
                if let Some(b) = t.up_to {
                    let q = b * p.unit_size;
                    let lines = rate_meter(&p, q);
                    prop_assert_eq!(lines.len(), i + 1);
                    let beyond = rate_meter(&p, q + 1);
                    prop_assert_eq!(beyond.len(), i + 2);
                    prop_assert_eq!(beyond[i + 1].quantity, 1);
                }
            }
        }
    }
}
