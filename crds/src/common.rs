//! Types shared by several kinds: artifact sources, durations, int-or-string budgets and the schema
//! helpers that make them structural the way the Kubernetes API server expects.

use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// API group of every Nexus kind.
pub const GROUP: &str = "nexus.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Regular expression for a Go-style duration (`90s`, `1h30m`), the format Kubernetes itself uses in
/// `metav1.Duration` and the one CEL's `duration()` parses.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";
/// A lowercase hex sha256 digest.
pub const SHA256_PATTERN: &str = r"^[a-f0-9]{64}$";
/// A `sha256:`-prefixed digest, as in OCI and model registries.
pub const PREFIXED_SHA256_PATTERN: &str = r"^sha256:[a-f0-9]{64}$";

/// Where an artifact (a firmware bundle, a P4 pipeline) is fetched from. Exactly one source is set;
/// the CRD enforces this with a CEL rule so a half-specified source never reaches a controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.url) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.oci) ? 1 : 0) == 1",
    "message": "exactly one of url, configMap or oci must be set"
}]))]
pub struct ArtifactSource {
    /// An `https://` (or, for local clusters, `http://` or `file://`) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^(https?|file)://.+"))]
    pub url: Option<String>,
    /// A key of a ConfigMap in the controller's namespace (binaryData for firmware).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKeyRef>,
    /// An OCI artifact reference, `registry/repository:tag` or `registry/repository@sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(
            pattern = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?/[a-z0-9._/-]+([:@][A-Za-z0-9._:-]+)?$"
        )
    )]
    pub oci: Option<String>,
}

/// A reference to one key of a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the ConfigMap; defaults to the controller's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a named object in the same namespace (or cluster-scoped).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the referent.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Schema of an int-or-string field, written out the way Kubernetes' own types (and controller-gen)
/// write it: `x-kubernetes-int-or-string` with the `anyOf` a structural schema permits. Offline
/// validators that ignore the `x-kubernetes-*` keywords still see the `anyOf`.
pub fn int_or_string_schema(
    percent_pattern: &'static str,
) -> impl Fn(&mut SchemaGenerator) -> Schema {
    move |_| {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": percent_pattern,
        })
    }
}

/// `maxUnavailable`-style budget: a positive integer or a percentage `1%`–`100%`.
pub fn budget_schema(g: &mut SchemaGenerator) -> Schema {
    let mut s = int_or_string_schema(r"^([1-9][0-9]?|100)%$")(g);
    s.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "type(self) == string || self >= 1",
            "message": "must be at least 1 (or a percentage from 1% to 100%)"
        }]),
    );
    s
}

/// Resolves an int-or-string budget against a population, rounding percentages up as the
/// Deployment controller does for `maxUnavailable` — but never below one, so a rollout can always
/// make progress.
pub fn resolve_budget(budget: &IntOrString, population: u32) -> Result<u32, crate::Error> {
    let n = match budget {
        IntOrString::Int(i) => {
            u32::try_from(*i).map_err(|_| crate::Error::InvalidBudget(i.to_string()))?
        }
        IntOrString::String(s) => {
            let pct: u64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| crate::Error::InvalidBudget(s.clone()))?;
            u32::try_from((u64::from(population) * pct).div_ceil(100)).unwrap_or(u32::MAX)
        }
    };
    Ok(n.max(1))
}

/// Parses a Go-style duration such as `1h30m` or `90s` (the format of every duration field here).
pub fn parse_duration(s: &str) -> Result<Duration, crate::Error> {
    let bad = || crate::Error::InvalidDuration(s.to_owned());
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// `chrono` → the API's `Time`, keeping milliseconds (agents report flash times in milliseconds;
/// the wire format itself has whole seconds).
pub fn time_from_chrono(t: chrono::DateTime<chrono::Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_millisecond(t.timestamp_millis()).unwrap_or_default())
}

/// The API's `Time` → `chrono`, keeping sub-second precision.
pub fn time_to_chrono(t: &Time) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let nanos = u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0);
    chrono::Utc
        .timestamp_opt(t.0.as_second(), nanos)
        .single()
        .unwrap_or_default()
}

/// Sets one condition of a `conditions` list, keeping `lastTransitionTime` when its status did
/// not change — the rule every writer of `metav1.Condition` follows.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = time_from_chrono(now);
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: time_from_chrono(now),
        }),
    }
}

/// [`parse_duration`] with the error as text, for clap's `value_parser`.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Looks a condition up by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Schema attributes for a `conditions` list: a map keyed by `type`, as `metav1.Condition` lists are
/// declared in Kubernetes' own APIs, so server-side apply merges entries instead of replacing them.
pub fn conditions_schema(g: &mut SchemaGenerator) -> Schema {
    let mut s = <Vec<Condition>>::json_schema(g);
    s.insert("x-kubernetes-list-type".into(), "map".into());
    s.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    s.insert("maxItems".into(), 16.into());
    s
}

/// Marks a list of objects as a map keyed by `name`: the API server rejects duplicate names and
/// server-side apply merges per entry.
pub fn named_list_schema<T: JsonSchema>(max_items: u64) -> impl Fn(&mut SchemaGenerator) -> Schema {
    move |g| {
        let mut s = <Vec<T>>::json_schema(g);
        s.insert("x-kubernetes-list-type".into(), "map".into());
        s.insert(
            "x-kubernetes-list-map-keys".into(),
            serde_json::json!(["name"]),
        );
        s.insert("maxItems".into(), max_items.into());
        s
    }
}

/// Marks a list of scalars as a set: duplicates are rejected.
pub fn string_set_schema(max_items: u64, max_len: u64) -> impl Fn(&mut SchemaGenerator) -> Schema {
    move |_| {
        json_schema!({
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": max_len},
            "maxItems": max_items,
            "x-kubernetes-list-type": "set",
        })
    }
}

/// An RFC 1123 DNS label as Kubernetes names use it: `[a-z0-9-]`, 1–63 characters, no leading
/// or trailing `-` (namespaces, most object names, each label of a node name). The one copy
/// of the rule: the manifest validator and the CA (roles, published object names, node names)
/// both call it.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 DNS subdomain (node names, most object names): dot-separated
/// [`is_dns_label`]s, at most 253 characters; never empty.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h30m").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("1.5h").ok(), Some(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        for bad in ["", "h", "10", "10x", "-5m", "1h 5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn budgets_round_up_and_never_reach_zero() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve_budget(&pct("10%"), 2000).ok(), Some(200));
        assert_eq!(resolve_budget(&pct("10%"), 15).ok(), Some(2));
        assert_eq!(resolve_budget(&pct("1%"), 3).ok(), Some(1));
        assert_eq!(resolve_budget(&IntOrString::Int(3), 10).ok(), Some(3));
        assert_eq!(resolve_budget(&pct("10%"), 0).ok(), Some(1));
        assert!(resolve_budget(&pct("0%"), 10).is_err());
        assert!(resolve_budget(&pct("101%"), 10).is_err());
        assert!(resolve_budget(&IntOrString::Int(-1), 10).is_err());
    }

    #[test]
    fn conditions_keep_their_transition_time_until_status_changes() {
        use chrono::TimeZone;
        let t = |s| chrono::Utc.timestamp_opt(s, 0).single().expect("valid");
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "Issuing", "wait", Some(1), t(100));
        set_condition(&mut c, "Ready", false, "Issuing", "still", Some(2), t(200));
        assert_eq!(c.len(), 1);
        assert_eq!(time_to_chrono(&c[0].last_transition_time), t(100));
        assert_eq!(
            (c[0].message.as_str(), c[0].observed_generation),
            ("still", Some(2))
        );
        set_condition(&mut c, "Ready", true, "Issued", "ok", Some(2), t(300));
        assert_eq!(time_to_chrono(&c[0].last_transition_time), t(300));
        assert_eq!(c[0].status, "True");
    }

    proptest::proptest! {
        /// A percentage budget is at least one node and never more than the population (or one).
        #[test]
        fn percent_budget_bounds(pct in 1u32..=100, population in 0u32..100_000) {
            let n = resolve_budget(&IntOrString::String(format!("{pct}%")), population)
                .expect("1%..100% is valid");
            proptest::prop_assert!(n >= 1);
            proptest::prop_assert!(n <= population.max(1));
            // Rounds up: the budget covers at least pct% of the nodes.
            proptest::prop_assert!(u64::from(n) * 100 >= u64::from(population) * u64::from(pct));
        }

        /// Whole-second durations written in h/m/s parse to their value.
        #[test]
        fn hms_durations_round_trip(h in 0u64..1000, m in 0u64..60, s in 0u64..60) {
            let text = format!("{h}h{m}m{s}s");
            proptest::prop_assert_eq!(parse_duration(&text).ok(), Some(Duration::from_secs(h * 3600 + m * 60 + s)));
        }
    }
}
