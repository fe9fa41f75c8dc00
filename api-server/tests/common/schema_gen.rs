//! Random instances of JSON Schemas, for driving the API from its OpenAPI document alone.
//!
//! Strings come from their `pattern` (through proptest's regex generator), `format` or `enum`;
//! numbers from their bounds, boundaries included; objects get every required property and
//! some optional ones. Date-times are drawn from the next 30 days (time-relative rules such as
//! "expires in the future" cannot be written in a schema). Values whose meaning the schema says
//! but cannot check — `contentMediaType` (a CSR) — come from the schema's `examples`, as would a
//! person's. Integers are sometimes written as `12.0`, which JSON Schema counts as an integer.
//! Every instance is checked against the schema with `jsonschema` by the caller.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, Utc};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

pub struct Gen<'a> {
    pub doc: &'a Value,
    pub rng: StdRng,
    runner: TestRunner,
}

impl<'a> Gen<'a> {
    pub fn new(doc: &'a Value, seed: u64) -> Gen<'a> {
        Gen {
            doc,
            rng: StdRng::seed_from_u64(seed),
            runner: TestRunner::deterministic(),
        }
    }

    pub fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let ptr = r.trim_start_matches('#');
                self.resolve(
                    self.doc
                        .pointer(ptr)
                        .unwrap_or_else(|| panic!("bad $ref {r}")),
                )
            }
            None => schema,
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    pub fn value(&mut self, schema: &Value, depth: usize) -> Value {
        let schema = self.resolve(schema).clone();
        if schema.get("contentMediaType").is_some() {
            let ex = schema["examples"]
                .as_array()
                .and_then(|e| e.first())
                .unwrap_or_else(|| panic!("{schema} has contentMediaType and no example"));
            return ex.clone();
        }
        if let Some(c) = schema.get("const") {
            return c.clone();
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array) {
            let i = self.rng.random_range(0..e.len());
            return e[i].clone();
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let i = self.rng.random_range(0..options.len());
                return self.value(&options[i], depth + 1);
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            let mut out = Map::new();
            for s in all {
                if let Value::Object(o) = self.value(s, depth + 1) {
                    out.extend(o);
                }
            }
            return Value::Object(out);
        }
        let ty = match &schema["type"] {
            Value::String(t) => t.clone(),
            Value::Array(ts) => {
                let non_null: Vec<&str> = ts
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .collect();
                if non_null.is_empty() || self.chance(0.15) {
                    "null".to_owned()
                } else {
                    non_null[self.rng.random_range(0..non_null.len())].to_owned()
                }
            }
            _ if schema.get("properties").is_some() => "object".to_owned(),
            _ => "string".to_owned(),
        };
        match ty.as_str() {
            "null" => Value::Null,
            "boolean" => Value::Bool(self.chance(0.5)),
            "integer" => self.integer(&schema),
            "number" => json!(self.rng.random_range(-1000.0..1000.0_f64)),
            "string" => Value::String(self.string(&schema)),
            "array" => self.array(&schema, depth),
            "object" => self.object(&schema, depth),
            other => panic!("cannot generate type {other}"),
        }
    }

    fn integer(&mut self, s: &Value) -> Value {
        let min = s["minimum"].as_i64().unwrap_or(-1000);
        let max = s["maximum"]
            .as_i64()
            .or_else(|| s["maximum"].as_u64().map(|_| i64::MAX))
            .unwrap_or(min.saturating_add(100_000));
        let v = match self.rng.random_range(0..10) {
            0 => min,
            1 => max,
            2 => min.saturating_add(1).min(max),
            _ => {
                // Mostly small values above the minimum; sometimes anywhere in the range.
                if self.chance(0.7) {
                    self.rng
                        .random_range(min..=max.min(min.saturating_add(1000)))
                } else {
                    self.rng.random_range(min..=max)
                }
            }
        };
        // JSON Schema counts 12.0 as an integer: sometimes send one that way.
        if v.unsigned_abs() < (1 << 53) && self.chance(0.1) {
            return json!(v as f64);
        }
        json!(v)
    }

    fn string(&mut self, s: &Value) -> String {
        let min = s["minLength"].as_u64().unwrap_or(0) as usize;
        let max = s["maxLength"].as_u64().map(|m| m as usize).unwrap_or(40);
        let fits = |v: &str| (min..=max).contains(&v.chars().count());
        if let Some(examples) = s["examples"].as_array()
            && !examples.is_empty()
            && self.chance(0.2)
        {
            let i = self.rng.random_range(0..examples.len());
            if let Some(e) = examples[i].as_str() {
                return e.to_owned();
            }
        }
        match s["format"].as_str() {
            Some("uuid") => return uuid::Uuid::new_v4().to_string(),
            Some("date-time") => {
                let secs = self.rng.random_range(60..30 * 86400);
                return (Utc::now() + Duration::seconds(secs))
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
            }
            Some("date") => return Utc::now().format("%Y-%m-%d").to_string(),
            _ => {}
        }
        if let Some(p) = s["pattern"].as_str() {
            let bare = p.strip_prefix('^').unwrap_or(p);
            let bare = bare.strip_suffix('$').unwrap_or(bare);
            let strategy =
                proptest::string::string_regex(bare).unwrap_or_else(|e| panic!("pattern {p}: {e}"));
            for _ in 0..200 {
                let v = strategy.new_tree(&mut self.runner).unwrap().current();
                if fits(&v) {
                    return v;
                }
            }
            panic!("no string of {min}..={max} characters from {p}");
        }
        let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyzABC0123456789 -_.éß漢😀"
            .chars()
            .collect();
        let len = self.rng.random_range(min..=max.min(min + 24));
        (0..len)
            .map(|_| alphabet[self.rng.random_range(0..alphabet.len())])
            .collect()
    }

    fn array(&mut self, s: &Value, depth: usize) -> Value {
        let min = s["minItems"].as_u64().unwrap_or(0) as usize;
        let max = s["maxItems"].as_u64().map(|m| m as usize).unwrap_or(4);
        let n = self
            .rng
            .random_range(min..=max.min(min + 3).min(if depth > 3 { min } else { max }));
        let items = s.get("items").cloned().unwrap_or(json!({}));
        Value::Array((0..n).map(|_| self.value(&items, depth + 1)).collect())
    }

    fn object(&mut self, s: &Value, depth: usize) -> Value {
        let mut out = Map::new();
        let required: Vec<String> = s["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(props) = s["properties"].as_object() {
            for (name, p) in props {
                if required.contains(name) || (depth < 4 && self.chance(0.5)) {
                    let v = self.value(p, depth + 1);
                    out.insert(name.clone(), v);
                }
            }
        }
        if let Some(extra) = s.get("additionalProperties").filter(|a| a.is_object()) {
            let max = s["maxProperties"].as_u64().unwrap_or(4) as usize;
            let n = self.rng.random_range(0..=max.min(3));
            let names = s
                .get("propertyNames")
                .cloned()
                .unwrap_or(json!({"type": "string", "minLength": 1, "maxLength": 12}));
            for _ in 0..n {
                let Value::String(k) = self.value(&names, depth + 1) else {
                    continue;
                };
                let v = self.value(extra, depth + 1);
                out.insert(k, v);
            }
        }
        Value::Object(out)
    }
}
