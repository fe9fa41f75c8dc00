//! The table compiler: a node's admitted endpoints, per routing domain, into NexRoute table
//! entries, with a content-hash version. Pure.
//!
//! # What it writes
//!
//! For the routing domains a node carries (each with its tenant's NexLink tenant id, its SAD
//! domain id and its admitted advertisements):
//!
//! | table / profile        | one entry per                           | key → action                                          |
//! |------------------------|-----------------------------------------|-------------------------------------------------------|
//! | `tenant`               | tenant                                  | tenant id (wire bytes) → `set_tenant(tenant_index)`   |
//! | `domain`               | domain (+ `(tenant, 0)` for its default) | (tenant_index, domain id) → `set_domain(domain_index)` |
//! | `capability_class`     | (domain, advertised capability)         | (domain_index, capability id) → `set_route(route_id)` |
//! | `next_hop_selector` members | (domain, endpoint)                 | member `domain_index << 16 \| n` → `set_next_hop(ip, port, 0)` |
//! | `next_hop_selector` groups  | route                              | group `route_id`, members weighted by `weight`        |
//! | `next_hop`             | route                                   | route_id → group route_id                             |
//!
//! Indices are allocated deterministically — tenants by ascending tenant id from 0, domains by
//! (tenant id, name) from 1, routes `domain_index << 16 | class ordinal` with classes by
//! ascending capability id, endpoints by name — so the same input always compiles to the same
//! entries and the same version. The version is the SHA-256 of the entities' protobuf encodings
//! in write order (hex, 64 characters: `RoutingDomain.status.routingTableVersion`); each table
//! entry carries it in its `metadata` cookie, so a node can report what it runs.
//!
//! Endpoints with weight 0 are left out of groups (drained); an endpoint whose address is not
//! `IPv4:port` cannot be expressed by this program and is skipped with a note; a class with more
//! endpoints than a group holds keeps the heaviest (ties by name), with a note.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use nexus_route::Advertisement;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::p4info::Schema;
use crate::pipeline::Bindings;
use crate::proto::p4::v1 as pb;

/// Most selector group members (the P4Info's `max_group_size`).
pub const MAX_GROUP_SIZE: usize = 128;
/// Most tenants (cells of `tenant_traffic`).
pub const MAX_TENANTS: usize = 1024;

/// One routing domain as the node carries it.
#[derive(Debug, Clone)]
pub struct DomainInput {
    /// `namespace/name`, for ordering and notes.
    pub name: String,
    /// The tenant's NexLink tenant id.
    pub tenant_id: u32,
    /// The domain's SAD domain id (`nexus_route::id::domain_id`).
    pub domain_id: u32,
    /// Whether descriptors with domain 0 from this tenant mean this domain.
    pub default_for_tenant: bool,
    /// Its admitted advertisements.
    pub endpoints: Vec<Advertisement>,
}

/// The compiler's output.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledTables {
    /// Content hash of everything below.
    pub version: String,
    /// Entities in dependency order (members, groups, then table entries): the order to insert.
    pub entities: Vec<pb::Entity>,
    /// Per domain: its index and the hash of its own entries (for its status).
    pub domains: Vec<CompiledDomain>,
    /// Endpoints or classes left out, and why.
    pub notes: Vec<String>,
}

/// One domain's part of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledDomain {
    /// `namespace/name`.
    pub name: String,
    /// Its `domain_index`.
    pub domain_index: u16,
    /// SHA-256 (hex) of its entries.
    pub version: String,
    /// Endpoints in at least one group.
    pub endpoints_programmed: usize,
}

fn exact(field_id: u32, value: Vec<u8>) -> pb::FieldMatch {
    pb::FieldMatch {
        field_id,
        field_match_type: Some(pb::field_match::FieldMatchType::Exact(
            pb::field_match::Exact {
                value: crate::bytes::canonical(&value),
            },
        )),
    }
}

fn action(action_id: u32, params: &[&[u8]]) -> pb::Action {
    pb::Action {
        action_id,
        params: params
            .iter()
            .enumerate()
            .map(|(i, v)| pb::action::Param {
                param_id: i as u32 + 1,
                value: crate::bytes::canonical(v),
            })
            .collect(),
    }
}

fn direct(table_id: u32, r#match: Vec<pb::FieldMatch>, a: pb::Action) -> pb::TableEntry {
    pb::TableEntry {
        table_id,
        r#match,
        action: Some(pb::TableAction {
            r#type: Some(pb::table_action::Type::Action(a)),
        }),
        ..Default::default()
    }
}

fn wrap(e: pb::entity::Entity) -> pb::Entity {
    pb::Entity { entity: Some(e) }
}

fn hash(entities: &[pb::Entity]) -> String {
    let mut h = Sha256::new();
    for e in entities {
        let bytes = e.encode_to_vec();
        h.update((bytes.len() as u32).to_be_bytes());
        h.update(&bytes);
    }
    hex::encode(h.finalize())
}

/// Compiles the domains a node carries into NexRoute entities for `schema` (the loaded P4Info,
/// normally the committed one).
pub fn compile(schema: &Schema, domains: &[DomainInput]) -> Result<CompiledTables, Error> {
    let b = Bindings::new(schema)?;
    let mut notes = Vec::new();

    let mut tenants: Vec<u32> = domains.iter().map(|d| d.tenant_id).collect();
    tenants.sort_unstable();
    tenants.dedup();
    if tenants.len() > MAX_TENANTS {
        return Err(Error::Compile(format!(
            "{} tenants, at most {MAX_TENANTS} per node",
            tenants.len()
        )));
    }
    let tenant_index = |t: u32| tenants.binary_search(&t).unwrap_or(0) as u16;

    let mut order: Vec<&DomainInput> = domains.iter().collect();
    order.sort_by(|a, b| (a.tenant_id, &a.name).cmp(&(b.tenant_id, &b.name)));
    if order.len() >= u16::MAX as usize {
        return Err(Error::Compile("too many domains for one node".into()));
    }
    let mut seen_ids: BTreeMap<(u32, u32), &str> = BTreeMap::new();
    let mut defaults: BTreeMap<u32, &str> = BTreeMap::new();
    for d in &order {
        if let Some(other) = seen_ids.insert((d.tenant_id, d.domain_id), &d.name) {
            return Err(Error::Compile(format!(
                "domains `{other}` and `{}` have the same domain id",
                d.name
            )));
        }
        if d.domain_id == 0 {
            return Err(Error::Compile(format!(
                "domain `{}` has domain id 0, which means \"default\"",
                d.name
            )));
        }
        if d.default_for_tenant
            && let Some(other) = defaults.insert(d.tenant_id, &d.name)
        {
            return Err(Error::Compile(format!(
                "tenant {} has two default domains, `{other}` and `{}`",
                d.tenant_id, d.name
            )));
        }
    }

    let mut members: Vec<pb::Entity> = Vec::new();
    let mut groups: Vec<pb::Entity> = Vec::new();
    let mut tables: Vec<pb::Entity> = Vec::new();
    let mut per_domain: Vec<(usize, usize, usize)> = Vec::new(); // ranges into `tables`, members

    for &t in &tenants {
        tables.push(wrap(pb::entity::Entity::TableEntry(direct(
            b.tenant,
            vec![exact(1, t.to_le_bytes().to_vec())],
            action(b.set_tenant, &[&tenant_index(t).to_be_bytes()]),
        ))));
    }

    let mut compiled_domains = Vec::new();
    for (n, d) in order.iter().enumerate() {
        let domain_index = (n + 1) as u16;
        let ti = tenant_index(d.tenant_id);
        let start_tables = tables.len();
        let start_members = members.len();
        let start_groups = groups.len();
        for key in std::iter::once(d.domain_id).chain(d.default_for_tenant.then_some(0)) {
            tables.push(wrap(pb::entity::Entity::TableEntry(pb::TableEntry {
                r#match: vec![
                    exact(1, ti.to_be_bytes().to_vec()),
                    exact(2, key.to_le_bytes().to_vec()),
                ],
                ..direct(
                    b.domain,
                    vec![],
                    action(b.set_domain, &[&domain_index.to_be_bytes()]),
                )
            })));
        }

        // Endpoints by name; ids must be consistent across the domain.
        let mut eps: Vec<&Advertisement> = d.endpoints.iter().collect();
        eps.sort_by(|a, b| a.name.cmp(&b.name));
        let mut names: BTreeMap<u32, &str> = BTreeMap::new();
        for e in &eps {
            for name in &e.capability_names {
                let id = nexus_route::id::capability_id(name);
                if let Some(other) = names.insert(id, name)
                    && other != name
                {
                    return Err(Error::Route(nexus_route::Error::IdCollision {
                        a: other.into(),
                        b: name.clone(),
                        id,
                    }));
                }
            }
        }
        let mut member_of: BTreeMap<&str, u32> = BTreeMap::new();
        for (i, e) in eps.iter().enumerate() {
            if e.weight == 0 {
                continue;
            }
            let addr: SocketAddrV4 = match e.address.parse() {
                Ok(a) => a,
                Err(_) => {
                    notes.push(format!(
                        "{}: endpoint `{}` skipped: address `{}` is not IPv4:port",
                        d.name, e.name, e.address
                    ));
                    continue;
                }
            };
            if i >= u16::MAX as usize {
                notes.push(format!("{}: endpoints beyond 65535 skipped", d.name));
                break;
            }
            let member_id = u32::from(domain_index) << 16 | i as u32;
            member_of.insert(&e.name, member_id);
            members.push(wrap(pb::entity::Entity::ActionProfileMember(
                pb::ActionProfileMember {
                    action_profile_id: b.selector,
                    member_id,
                    action: Some(action(
                        b.set_next_hop,
                        &[&addr.ip().octets(), &addr.port().to_be_bytes(), &[0]],
                    )),
                },
            )));
        }

        let mut classes: BTreeMap<u32, Vec<&Advertisement>> = BTreeMap::new();
        for e in &eps {
            if member_of.contains_key(e.name.as_str()) {
                for c in &e.capabilities {
                    classes.entry(*c).or_default().push(e);
                }
            }
        }
        let mut programmed = std::collections::BTreeSet::new();
        for (ordinal, (class, mut advertisers)) in classes.into_iter().enumerate() {
            if ordinal > u16::MAX as usize {
                notes.push(format!("{}: classes beyond 65536 skipped", d.name));
                break;
            }
            let route_id = u32::from(domain_index) << 16 | ordinal as u32;
            if advertisers.len() > MAX_GROUP_SIZE {
                advertisers.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.name.cmp(&b.name)));
                notes.push(format!(
                    "{}: class {}: {} endpoints, the {MAX_GROUP_SIZE} heaviest kept",
                    d.name,
                    names.get(&class).copied().unwrap_or("?"),
                    advertisers.len()
                ));
                advertisers.truncate(MAX_GROUP_SIZE);
                advertisers.sort_by(|a, b| a.name.cmp(&b.name));
            }
            let group_members = advertisers
                .iter()
                .filter_map(|e| {
                    member_of
                        .get(e.name.as_str())
                        .map(|&m| pb::action_profile_group::Member {
                            member_id: m,
                            weight: e.weight.min(i32::MAX as u32) as i32,
                            watch_kind: None,
                        })
                })
                .collect::<Vec<_>>();
            for e in &advertisers {
                programmed.insert(e.name.as_str());
            }
            groups.push(wrap(pb::entity::Entity::ActionProfileGroup(
                pb::ActionProfileGroup {
                    action_profile_id: b.selector,
                    group_id: route_id,
                    members: group_members,
                    max_size: 0,
                },
            )));
            tables.push(wrap(pb::entity::Entity::TableEntry(direct(
                b.capability_class,
                vec![
                    exact(1, domain_index.to_be_bytes().to_vec()),
                    exact(2, class.to_le_bytes().to_vec()),
                ],
                action(b.set_route, &[&route_id.to_be_bytes()]),
            ))));
            tables.push(wrap(pb::entity::Entity::TableEntry(pb::TableEntry {
                table_id: b.next_hop,
                r#match: vec![exact(1, route_id.to_be_bytes().to_vec())],
                action: Some(pb::TableAction {
                    r#type: Some(pb::table_action::Type::ActionProfileGroupId(route_id)),
                }),
                ..Default::default()
            })));
        }
        per_domain.push((start_tables, start_members, start_groups));
        let mut own: Vec<pb::Entity> = members[start_members..].to_vec();
        own.extend_from_slice(&groups[start_groups..]);
        own.extend_from_slice(&tables[start_tables..]);
        compiled_domains.push(CompiledDomain {
            name: d.name.clone(),
            domain_index,
            version: hash(&own),
            endpoints_programmed: programmed.len(),
        });
    }

    let mut entities = members;
    entities.extend(groups);
    entities.extend(tables);
    let version = hash(&entities);
    for e in &mut entities {
        if let Some(pb::entity::Entity::TableEntry(te)) = &mut e.entity {
            te.metadata = version_cookie(&version);
        }
    }
    Ok(CompiledTables {
        version,
        entities,
        domains: compiled_domains,
        notes,
    })
}

/// The `metadata` cookie of every entry of a compiled table set.
pub fn version_cookie(version: &str) -> Vec<u8> {
    format!("nexroute/v1 {version}").into_bytes()
}

/// The version a cookie names, if it is one of ours.
pub fn version_of_cookie(cookie: &[u8]) -> Option<&str> {
    std::str::from_utf8(cookie)
        .ok()?
        .strip_prefix("nexroute/v1 ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(crate::p4info::nexroute_p4info().expect("parses")).expect("consistent")
    }

    fn ep(name: &str, caps: &[&str], w: u32) -> Advertisement {
        let mut caps_ids: Vec<u32> = caps
            .iter()
            .map(|c| nexus_route::id::capability_id(c))
            .collect();
        caps_ids.sort_unstable();
        Advertisement {
            name: name.into(),
            address: "10.0.0.1:7400".into(),
            capability_names: caps.iter().map(|c| (*c).to_owned()).collect(),
            capabilities: caps_ids,
            model_family_name: "llm".into(),
            model_family: nexus_route::id::family_id("llm"),
            context_window: 0,
            modalities: nexus_route::Modalities::TEXT,
            latency_sla_ms: None,
            cost_micros: None,
            weight: w,
            max_in_flight: None,
            trust: nexus_route::TrustLevel::Attested,
            claims: vec![],
            proofs: vec![],
        }
    }

    fn domain(name: &str, tenant: u32, eps: Vec<Advertisement>, default: bool) -> DomainInput {
        DomainInput {
            name: name.into(),
            tenant_id: tenant,
            domain_id: nexus_route::id::domain_id("ns", name),
            default_for_tenant: default,
            endpoints: eps,
        }
    }

    #[test]
    fn the_same_input_in_any_order_compiles_to_the_same_version() {
        let a = domain(
            "a",
            1,
            vec![ep("x", &["chat"], 1), ep("y", &["chat", "code"], 2)],
            true,
        );
        let b = domain("b", 2, vec![ep("z", &["code"], 3)], false);
        let one = compile(&schema(), &[a.clone(), b.clone()]).expect("compiles");
        let mut a2 = a.clone();
        a2.endpoints.reverse();
        let two = compile(&schema(), &[b, a2]).expect("compiles");
        assert_eq!(one.version, two.version);
        assert_eq!(one.entities, two.entities);
        assert_eq!(one.version.len(), 64);
        // 2 tenants, 3 domain entries (a + its default), classes a:{chat, code} b:{code}
        // → 3 class + 3 next-hop entries, 3 members, 3 groups.
        assert_eq!(one.entities.len(), 2 + 3 + 3 + 3 + 3 + 3);
        let changed = compile(
            &schema(),
            &[a, domain("b", 2, vec![ep("z", &["code"], 4)], false)],
        )
        .expect("compiles");
        assert_ne!(
            one.version, changed.version,
            "a weight change is a new version"
        );
        assert_eq!(
            one.domains[0].version, changed.domains[0].version,
            "domain a is unchanged"
        );
    }

    #[test]
    fn inconsistent_inputs_are_refused() {
        let s = schema();
        let twice = [domain("a", 1, vec![], true), domain("b", 1, vec![], true)];
        assert!(compile(&s, &twice).is_err(), "two default domains");
        let same_id = [domain("a", 1, vec![], false), domain("a", 1, vec![], false)];
        assert!(compile(&s, &same_id).is_err(), "two domains with one id");
        let mut zero = domain("a", 1, vec![], false);
        zero.domain_id = 0;
        assert!(compile(&s, &[zero]).is_err());
    }

    #[test]
    fn cookies_carry_the_version() {
        let c = compile(
            &schema(),
            &[domain("a", 1, vec![ep("x", &["chat"], 1)], false)],
        )
        .expect("compiles");
        for e in &c.entities {
            if let Some(pb::entity::Entity::TableEntry(t)) = &e.entity {
                assert_eq!(version_of_cookie(&t.metadata), Some(c.version.as_str()));
            }
        }
        assert_eq!(
            crate::client::common_version(&c.entities).as_deref(),
            Some(c.version.as_str())
        );
    }
}
