//! The P4 source, the committed P4Info and the software pipeline agree.
//!
//! p4c is not packaged for Debian, so instead of compiling the program and diffing the P4Info,
//! this test reads `nexroute.p4` itself — header types, metadata, actions, tables, counters and
//! the action selector of the ingress control — and checks every table, match field (name,
//! width, kind), action, parameter, counter and the selector against the P4Info, and the P4Info
//! against what the software pipeline binds to (`pipeline::EXPECTED`).

use std::collections::{BTreeMap, BTreeSet};

use nexus_p4::Schema;
use nexus_p4::p4info::{MatchKind, NEXROUTE_P4, nexroute_p4info, prefix};
use nexus_p4::pipeline::{Bindings, EXPECTED};

const CONTROL: &str = "NexRouteIngress";

fn strip_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.split_once('\n').map_or("", |(_, t)| t);
            out.push('\n');
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, t)| t);
            out.push(' ');
        } else {
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn tokens(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in src.chars() {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `bit<N> name;` sequences inside a `{ ... }` block starting at `i` (pointing at `{`).
fn fields(t: &[String], mut i: usize) -> (BTreeMap<String, u32>, usize) {
    let mut out = BTreeMap::new();
    assert_eq!(t[i], "{");
    i += 1;
    while t[i] != "}" {
        if t[i] == "bit" && t[i + 1] == "<" {
            let w: u32 = t[i + 2].parse().expect("width");
            out.insert(t[i + 4].clone(), w);
            i += 6;
        } else {
            // `ethernet_t ethernet;` in a struct of headers.
            out.insert(t[i + 1].clone(), 0);
            i += 3;
        }
    }
    (out, i + 1)
}

fn block_end(t: &[String], open: usize) -> usize {
    let mut depth = 0;
    for (j, tok) in t.iter().enumerate().skip(open) {
        match tok.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces");
}

#[derive(Debug, Default)]
struct Program {
    header_types: BTreeMap<String, BTreeMap<String, u32>>,
    instances: BTreeMap<String, String>,
    metadata: BTreeMap<String, u32>,
    actions: BTreeMap<String, Vec<(String, u32)>>,
    tables: BTreeMap<String, Table>,
    counters: BTreeMap<String, (usize, String)>,
    selector: Option<(String, usize, usize)>,
}

#[derive(Debug, Default)]
struct Table {
    keys: Vec<(String, String)>,
    actions: Vec<String>,
    size: usize,
    implementation: Option<String>,
}

fn parse(src: &str) -> Program {
    let t = tokens(&strip_comments(src));
    let mut p = Program::default();
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "header" => {
                let (f, next) = fields(&t, i + 2);
                p.header_types.insert(t[i + 1].clone(), f);
                i = next;
            }
            "struct" if t[i + 1] == "headers_t" => {
                let close = block_end(&t, i + 2);
                let mut j = i + 3;
                while j < close {
                    p.instances.insert(t[j + 1].clone(), t[j].clone());
                    j += 3;
                }
                i = close + 1;
            }
            "struct" if t[i + 1] == "metadata_t" => {
                let (f, next) = fields(&t, i + 2);
                p.metadata = f;
                i = next;
            }
            "control" if t[i + 1] == CONTROL => {
                let open = (i..).find(|&j| t[j] == "{").expect("control body");
                let close = block_end(&t, open);
                parse_control(&t[open + 1..close], &mut p);
                i = close + 1;
            }
            _ => i += 1,
        }
    }
    p
}

fn parse_control(t: &[String], p: &mut Program) {
    let mut i = 0;
    let mut max_group_size = None;
    while i < t.len() {
        match t[i].as_str() {
            "@" if t[i + 1] == "max_group_size" => {
                max_group_size = Some(t[i + 3].parse::<usize>().expect("size"));
                i += 5;
            }
            "counter" => {
                // counter(SIZE, CounterType.KIND) NAME;
                let size = t[i + 2].parse().expect("counter size");
                p.counters
                    .insert(t[i + 6].clone(), (size, t[i + 4].clone()));
                i += 7;
            }
            "action_selector" => {
                // action_selector(HashAlgorithm.x, SIZE, BITS) NAME;
                let size = t[i + 4].parse().expect("selector size");
                p.selector = Some((
                    t[i + 8].clone(),
                    size,
                    max_group_size.expect("@max_group_size"),
                ));
                i += 9;
            }
            "action" => {
                let name = t[i + 1].clone();
                let mut params = Vec::new();
                let mut j = i + 3;
                while t[j] != ")" {
                    if t[j] == "bit" {
                        params.push((t[j + 4].clone(), t[j + 2].parse().expect("width")));
                        j += 5;
                    } else {
                        j += 1;
                    }
                }
                p.actions.insert(name, params);
                let open = (j..).find(|&k| t[k] == "{").expect("action body");
                i = block_end(t, open) + 1;
            }
            "table" => {
                let name = t[i + 1].clone();
                let close = block_end(t, i + 2);
                let mut table = Table::default();
                let mut j = i + 3;
                while j < close {
                    match t[j].as_str() {
                        "key" => {
                            let kclose = block_end(t, j + 2);
                            let mut k = j + 3;
                            while k < kclose {
                                table.keys.push((t[k].clone(), t[k + 2].clone()));
                                k += 4;
                            }
                            j = kclose + 1;
                        }
                        "actions" => {
                            let aclose = block_end(t, j + 2);
                            table.actions = t[j + 3..aclose]
                                .iter()
                                .filter(|x| *x != ";")
                                .cloned()
                                .collect();
                            j = aclose + 1;
                        }
                        "size" => {
                            table.size = t[j + 2].parse().expect("size");
                            j += 3;
                        }
                        "implementation" => {
                            table.implementation = Some(t[j + 2].clone());
                            j += 3;
                        }
                        _ => j += 1,
                    }
                }
                p.tables.insert(name, table);
                i = close + 1;
            }
            _ => i += 1,
        }
    }
}

fn width(p: &Program, expr: &str) -> u32 {
    let parts: Vec<&str> = expr.split('.').collect();
    match parts.as_slice() {
        ["hdr", inst, field] => {
            let ty = &p.instances[*inst];
            p.header_types[ty][*field]
        }
        ["meta", field] => p.metadata[*field],
        _ => panic!("unexpected key expression {expr}"),
    }
}

fn kind(k: &str) -> Option<MatchKind> {
    match k {
        "exact" => Some(MatchKind::Exact),
        "lpm" => Some(MatchKind::Lpm),
        "ternary" => Some(MatchKind::Ternary),
        "range" => Some(MatchKind::Range),
        "optional" => Some(MatchKind::Optional),
        "selector" => None,
        other => panic!("unknown match kind {other}"),
    }
}

#[test]
fn the_p4_source_the_p4info_and_the_software_tables_agree() {
    let prog = parse(NEXROUTE_P4);
    let schema =
        Schema::new(nexroute_p4info().expect("committed P4Info parses")).expect("consistent");
    let q = |n: &str| format!("{CONTROL}.{n}");

    // NexLink header as P4 sees it is exactly the 64 bytes firmware/src/header.rs defines, and
    // the SAD header the 36-byte fixed part of dataplane/route/src/sad.rs.
    let bits = |h: &str| prog.header_types[h].values().sum::<u32>();
    assert_eq!(bits("nexlink_t"), 8 * nexus_firmware::HEADER_LEN as u32);
    assert_eq!(bits("sad_t"), 8 * nexus_route::sad::FIXED_LEN as u32);

    // Tables: same set, same keys (selector keys are not P4Info match fields), actions, size.
    let p4info_tables: BTreeSet<String> = schema.tables().map(|t| t.name.clone()).collect();
    let src_tables: BTreeSet<String> = prog.tables.keys().map(|n| q(n)).collect();
    assert_eq!(p4info_tables, src_tables);
    for (name, t) in &prog.tables {
        let info = schema
            .table(schema.id(&q(name)).expect("table id"))
            .expect("table");
        assert_eq!(info.alias, *name);
        assert_eq!((info.id >> 24) as u8, prefix::TABLE);
        let src_fields: Vec<(String, u32, MatchKind)> = t
            .keys
            .iter()
            .filter_map(|(e, k)| kind(k).map(|k| (e.clone(), width(&prog, e), k)))
            .collect();
        let info_fields: Vec<(String, u32, MatchKind)> = info
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.bitwidth, f.kind))
            .collect();
        assert_eq!(src_fields, info_fields, "table {name}");
        let src_actions: BTreeSet<String> = t.actions.iter().map(|a| q(a)).collect();
        let info_actions: BTreeSet<String> = info
            .actions
            .iter()
            .map(|a| schema.action(*a).expect("action").name.clone())
            .collect();
        assert_eq!(src_actions, info_actions, "table {name}");
        assert_eq!(info.size, t.size, "table {name}");
        assert_eq!(
            info.implementation
                .map(|p| schema.profile(p).expect("profile").name.clone()),
            t.implementation.as_ref().map(|i| q(i))
        );
    }

    // Actions and parameters.
    assert_eq!(schema.actions().count(), prog.actions.len());
    for (name, params) in &prog.actions {
        let info = schema
            .action(schema.id(&q(name)).expect("action id"))
            .expect("action");
        assert_eq!((info.id >> 24) as u8, prefix::ACTION);
        let got: Vec<(String, u32)> = info
            .params
            .iter()
            .map(|p| (p.name.clone(), p.bitwidth))
            .collect();
        assert_eq!(&got, params, "action {name}");
        assert_eq!(
            info.params.iter().map(|p| p.id).collect::<Vec<_>>(),
            (1..=params.len() as u32).collect::<Vec<_>>()
        );
    }

    // Counters and the selector.
    for (name, (size, ty)) in &prog.counters {
        let c = schema
            .counter(schema.id(&q(name)).expect("counter id"))
            .expect("counter");
        assert_eq!(c.size, *size);
        assert_eq!(
            (c.bytes, c.packets),
            match ty.as_str() {
                "CounterType.packets_and_bytes" => (true, true),
                "CounterType.packets" => (false, true),
                "CounterType.bytes" => (true, false),
                other => panic!("{other}"),
            }
        );
    }
    assert_eq!(schema.counters().count(), prog.counters.len());
    let (sel, size, max_group) = prog.selector.clone().expect("an action selector");
    let p = schema
        .profile(schema.id(&q(&sel)).expect("selector id"))
        .expect("profile");
    assert!(p.with_selector);
    assert_eq!((p.size, p.max_group_size), (size, max_group));
    assert_eq!(max_group, nexus_p4::compile::MAX_GROUP_SIZE);

    // The software pipeline binds to exactly this P4Info, and EXPECTED lists the same program.
    Bindings::new(&schema).expect("the pipeline runs the committed P4Info");
    assert_eq!(EXPECTED.tables.len(), prog.tables.len());
    for t in EXPECTED.tables {
        let src = &prog.tables[t.name.trim_start_matches("NexRouteIngress.")];
        let fields: Vec<(String, u32, MatchKind)> = src
            .keys
            .iter()
            .filter_map(|(e, k)| kind(k).map(|k| (e.clone(), width(&prog, e), k)))
            .collect();
        let expected: Vec<(String, u32, MatchKind)> = t
            .fields
            .iter()
            .map(|(n, w, k)| ((*n).to_owned(), *w, *k))
            .collect();
        assert_eq!(fields, expected, "{}", t.name);
        assert_eq!(t.selector, src.implementation.is_some());
    }
    assert_eq!(EXPECTED.actions.len(), prog.actions.len());
    for a in EXPECTED.actions {
        let src = &prog.actions[a.name.trim_start_matches("NexRouteIngress.")];
        let expected: Vec<(String, u32)> = a
            .params
            .iter()
            .map(|(n, w)| ((*n).to_owned(), *w))
            .collect();
        assert_eq!(src, &expected, "{}", a.name);
    }
}

#[test]
fn a_p4info_the_pipeline_cannot_run_is_refused() {
    let mut p4info = nexroute_p4info().expect("parses");
    // Narrow a match field: the pipeline builds 32-bit tenant keys.
    p4info.tables[0].match_fields[0].bitwidth = 24;
    let schema = Schema::new(p4info).expect("still self-consistent");
    let e = Bindings::new(&schema).expect_err("incompatible");
    assert!(e.to_string().contains("match fields"), "{e}");

    let mut p4info = nexroute_p4info().expect("parses");
    p4info
        .actions
        .retain(|a| a.preamble.as_ref().is_some_and(|p| p.alias != "set_route"));
    assert!(
        Schema::new(p4info).is_err(),
        "a table referring to a missing action is refused"
    );

    assert!(nexus_p4::p4info::parse_text("tables { nonsense: 1 }").is_err());
}
