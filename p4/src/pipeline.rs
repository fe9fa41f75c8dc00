//! The software pipeline: `nexroute.p4` run over the [`Store`]'s tables, one packet at a time,
//! in memory.
//!
//! The pipeline binds to the loaded P4Info by name ([`Bindings`]); a P4Info that lacks a table,
//! action, field or parameter the program needs, or gives one another width or match kind, is
//! refused when it is loaded, so the tables a controller writes are always the tables the
//! pipeline runs. [`EXPECTED`] is that contract; `tests/program.rs` checks it against the P4
//! source and the committed P4Info.
//!
//! Two deliberate differences from a hardware target: the NexLink header and the descriptor are
//! validated in full by their owners' decoders (`nexus_firmware::HeaderView`, checksum
//! included, and `nexus_route::SadView`), where the P4 parser checks magic and version only; and
//! the selector hashes the same fields with a different function than the switch's crc16, which
//! changes which member a flow lands on, never the weights.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nexus_firmware::HeaderView;
use nexus_route::SadView;

use crate::Error;
use crate::bytes::be_u64;
use crate::p4info::{MatchKind, Schema};
use crate::store::{ActionCall, EntryAction, Store};

/// UDP port of host-addressed NexLink frames.
pub const NEXLINK_PORT: u16 = 7400;
/// UDP port of capability-addressed frames (NexLink header, then a descriptor).
pub const NEXROUTE_PORT: u16 = 7401;

/// A table the pipeline applies: name, match fields (name, width, kind) and actions.
#[derive(Debug)]
pub struct ExpectedTable {
    /// Fully qualified name.
    pub name: &'static str,
    /// Match fields in order (selector fields are not match fields in P4Info).
    pub fields: &'static [(&'static str, u32, MatchKind)],
    /// Actions allowed in entries.
    pub actions: &'static [&'static str],
    /// Whether the table is implemented by the action selector.
    pub selector: bool,
}

/// An action the pipeline executes, with its parameters' names and widths.
#[derive(Debug)]
pub struct ExpectedAction {
    /// Fully qualified name.
    pub name: &'static str,
    /// Parameters in order.
    pub params: &'static [(&'static str, u32)],
}

/// What the software pipeline implements: the contract with the P4 program and its P4Info.
#[derive(Debug)]
pub struct Expected {
    /// Tables.
    pub tables: &'static [ExpectedTable],
    /// Actions.
    pub actions: &'static [ExpectedAction],
    /// The action selector.
    pub selector: &'static str,
    /// Indexed counters: name, cells, counts bytes, counts packets.
    pub counters: &'static [(&'static str, usize, bool, bool)],
}

/// The NexRoute program as the software pipeline runs it.
pub const EXPECTED: Expected = Expected {
    tables: &[
        ExpectedTable {
            name: "NexRouteIngress.tenant",
            fields: &[("hdr.nexlink.tenant_id", 32, MatchKind::Exact)],
            actions: &[
                "NexRouteIngress.set_tenant",
                "NexRouteIngress.unknown_tenant",
            ],
            selector: false,
        },
        ExpectedTable {
            name: "NexRouteIngress.domain",
            fields: &[
                ("meta.tenant_index", 16, MatchKind::Exact),
                ("hdr.sad.domain_id", 32, MatchKind::Exact),
            ],
            actions: &["NexRouteIngress.set_domain", "NexRouteIngress.no_route"],
            selector: false,
        },
        ExpectedTable {
            name: "NexRouteIngress.capability_class",
            fields: &[
                ("meta.domain_index", 16, MatchKind::Exact),
                ("hdr.sad.class_id", 32, MatchKind::Exact),
            ],
            actions: &["NexRouteIngress.set_route", "NexRouteIngress.no_route"],
            selector: false,
        },
        ExpectedTable {
            name: "NexRouteIngress.next_hop",
            fields: &[("meta.route_id", 32, MatchKind::Exact)],
            actions: &["NexRouteIngress.set_next_hop", "NexRouteIngress.no_route"],
            selector: true,
        },
    ],
    actions: &[
        ExpectedAction {
            name: "NexRouteIngress.set_tenant",
            params: &[("tenant_index", 16)],
        },
        ExpectedAction {
            name: "NexRouteIngress.unknown_tenant",
            params: &[],
        },
        ExpectedAction {
            name: "NexRouteIngress.set_domain",
            params: &[("domain_index", 16)],
        },
        ExpectedAction {
            name: "NexRouteIngress.no_route",
            params: &[],
        },
        ExpectedAction {
            name: "NexRouteIngress.set_route",
            params: &[("route_id", 32)],
        },
        ExpectedAction {
            name: "NexRouteIngress.set_next_hop",
            params: &[("dst_addr", 32), ("dst_port", 16), ("port", 9)],
        },
    ],
    selector: "NexRouteIngress.next_hop_selector",
    counters: &[
        ("NexRouteIngress.tenant_traffic", 1024, true, true),
        ("NexRouteIngress.drops", 4, false, true),
    ],
};

/// Ids of everything the pipeline touches, resolved from a P4Info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bindings {
    /// `tenant` table.
    pub tenant: u32,
    /// `domain` table.
    pub domain: u32,
    /// `capability_class` table.
    pub capability_class: u32,
    /// `next_hop` table.
    pub next_hop: u32,
    /// The selector.
    pub selector: u32,
    /// `set_tenant`.
    pub set_tenant: u32,
    /// `set_domain`.
    pub set_domain: u32,
    /// `set_route`.
    pub set_route: u32,
    /// `set_next_hop`.
    pub set_next_hop: u32,
    /// `tenant_traffic` counter.
    pub tenant_traffic: u32,
    /// `drops` counter.
    pub drops: u32,
}

impl Bindings {
    /// Resolves and checks every name of [`EXPECTED`] in `schema`.
    pub fn new(schema: &Schema) -> Result<Bindings, Error> {
        let id = |n: &str| {
            schema
                .id(n)
                .ok_or_else(|| Error::Incompatible(format!("`{n}` is missing")))
        };
        for t in EXPECTED.tables {
            let info = schema
                .table(id(t.name)?)
                .ok_or_else(|| Error::Incompatible(format!("`{}` is not a table", t.name)))?;
            let fields: Vec<(&str, u32, MatchKind)> = info
                .fields
                .iter()
                .map(|f| (f.name.as_str(), f.bitwidth, f.kind))
                .collect();
            if fields != t.fields {
                return Err(Error::Incompatible(format!(
                    "`{}` has match fields {fields:?}, the pipeline needs {:?}",
                    t.name, t.fields
                )));
            }
            for a in t.actions {
                if !info.actions.contains(&id(a)?) {
                    return Err(Error::Incompatible(format!(
                        "`{}` does not allow `{a}`",
                        t.name
                    )));
                }
            }
            if t.selector != info.implementation.is_some() {
                return Err(Error::Incompatible(format!(
                    "`{}`: implementation differs",
                    t.name
                )));
            }
        }
        for a in EXPECTED.actions {
            let info = schema
                .action(id(a.name)?)
                .ok_or_else(|| Error::Incompatible(format!("`{}` is not an action", a.name)))?;
            let params: Vec<(&str, u32)> = info
                .params
                .iter()
                .map(|p| (p.name.as_str(), p.bitwidth))
                .collect();
            if params != a.params {
                return Err(Error::Incompatible(format!(
                    "`{}` has params {params:?}, the pipeline needs {:?}",
                    a.name, a.params
                )));
            }
        }
        let selector = id(EXPECTED.selector)?;
        if !schema.profile(selector).is_some_and(|p| p.with_selector) {
            return Err(Error::Incompatible(format!(
                "`{}` is not an action selector",
                EXPECTED.selector
            )));
        }
        for (name, size, bytes, packets) in EXPECTED.counters {
            let c = schema
                .counter(id(name)?)
                .ok_or_else(|| Error::Incompatible(format!("`{name}` is not a counter")))?;
            if c.size < *size || c.bytes != *bytes || c.packets != *packets {
                return Err(Error::Incompatible(format!("counter `{name}` differs")));
            }
        }
        Ok(Bindings {
            tenant: id("NexRouteIngress.tenant")?,
            domain: id("NexRouteIngress.domain")?,
            capability_class: id("NexRouteIngress.capability_class")?,
            next_hop: id("NexRouteIngress.next_hop")?,
            selector,
            set_tenant: id("NexRouteIngress.set_tenant")?,
            set_domain: id("NexRouteIngress.set_domain")?,
            set_route: id("NexRouteIngress.set_route")?,
            set_next_hop: id("NexRouteIngress.set_next_hop")?,
            tenant_traffic: id("NexRouteIngress.tenant_traffic")?,
            drops: id("NexRouteIngress.drops")?,
        })
    }
}

/// One counter cell.
#[derive(Debug, Default)]
pub struct Cell {
    /// Bytes.
    pub bytes: AtomicU64,
    /// Packets.
    pub packets: AtomicU64,
}

/// The indexed counters of the loaded program; they outlive table writes.
#[derive(Debug, Default)]
pub struct Counters {
    cells: HashMap<u32, Vec<Cell>>,
}

impl Counters {
    /// Zeroed cells for every counter of `schema`.
    pub fn new(schema: &Schema) -> Counters {
        Counters {
            cells: schema
                .counters()
                .map(|c| (c.id, (0..c.size).map(|_| Cell::default()).collect()))
                .collect(),
        }
    }

    /// Cells of a counter.
    pub fn cells(&self, id: u32) -> Option<&[Cell]> {
        self.cells.get(&id).map(Vec::as_slice)
    }

    #[inline]
    fn count(&self, id: u32, index: usize, bytes: usize) {
        if let Some(c) = self.cells.get(&id).and_then(|v| v.get(index)) {
            c.packets.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Sets a cell (or every cell) as a P4Runtime counter write does.
    pub fn set(&self, id: u32, index: Option<usize>, bytes: u64, packets: u64) {
        if let Some(v) = self.cells.get(&id) {
            for (i, c) in v.iter().enumerate() {
                if index.is_none_or(|x| x == i) {
                    c.bytes.store(bytes, Ordering::Relaxed);
                    c.packets.store(packets, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Why a packet was dropped (the index of the `drops` counter for the first three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No `tenant` entry for the frame's tenant.
    UnknownTenant = 1,
    /// No domain, class or next hop for the descriptor.
    NoRoute = 2,
    /// TTL would reach zero.
    TtlExpired = 3,
    /// The NexLink header or the descriptor did not decode.
    Malformed = 0,
}

/// What the pipeline decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten to a next hop (IPv4 and UDP destination, TTL, checksums): send it on.
    Routed {
        /// Egress port from the action (0: the host stack).
        port: u16,
    },
    /// A host-addressed NexLink frame, counted: deliver by its IP destination.
    Delivered,
    /// Not NexLink traffic: untouched.
    Passed,
    /// Dropped.
    Dropped(DropReason),
}

/// The loaded program: schema, ids, tables. Immutable; a write publishes a new one.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The checked P4Info.
    pub schema: Arc<Schema>,
    /// Ids the pipeline uses.
    pub bindings: Bindings,
    /// The tables.
    pub store: Store,
}

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const L4: usize = ETH_LEN + IP_LEN;
const NEXLINK_AT: usize = L4 + UDP_LEN;
const SAD_AT: usize = NEXLINK_AT + nexus_firmware::HEADER_LEN;

fn param<const N: usize>(call: &ActionCall, i: usize) -> u64 {
    call.params.get(i).map_or(0, |p| be_u64(p)) & if N >= 64 { u64::MAX } else { (1u64 << N) - 1 }
}

#[inline]
fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// The RFC 1071 checksum of an IPv4 header (with its checksum field zeroed first).
fn ipv4_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let mut sum: u32 = 0;
    for c in h[..IP_LEN].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let v = !(sum as u16);
    h[10..12].copy_from_slice(&v.to_be_bytes());
}

impl Snapshot {
    /// Counts a packet of `bytes` in cell `tenant_index` of `tenant_traffic`: what
    /// [`Snapshot::process`] counts for every packet of an admitted tenant, and what a caller
    /// that remembers a routed packet's verdict instead of running it again replays
    /// ([`crate::packet::Pick`]).
    pub fn count_tenant(&self, counters: &Counters, tenant_index: usize, bytes: usize) {
        counters.count(self.bindings.tenant_traffic, tenant_index, bytes);
    }

    /// The `tenant` table's verdict for a NexLink tenant id: its `tenant_traffic` cell, or
    /// `None` for a tenant without an entry (its packets are dropped).
    pub fn tenant_index(&self, tenant_id: u32) -> Option<usize> {
        let b = &self.bindings;
        // The key is the field's wire bytes (little-endian on the wire).
        let e = self
            .store
            .table(b.tenant)?
            .entries
            .get(tenant_id.to_le_bytes().as_slice())?;
        match &e.action {
            EntryAction::Direct(c) if c.action_id == b.set_tenant => {
                Some(param::<16>(c, 0) as usize)
            }
            _ => None,
        }
    }

    /// Runs one packet (an Ethernet frame) through the program, rewriting it in place.
    pub fn process(&self, counters: &Counters, pkt: &mut [u8]) -> Verdict {
        let b = &self.bindings;
        // Parser: Ethernet / IPv4 without options / UDP to one of our ports.
        if pkt.len() < NEXLINK_AT || rd16(pkt, 12) != 0x0800 {
            return Verdict::Passed;
        }
        let ip = &pkt[ETH_LEN..L4];
        if ip[0] != 0x45 || ip[9] != 17 {
            return Verdict::Passed;
        }
        let dport = rd16(pkt, L4 + 2);
        let routed = match dport {
            NEXLINK_PORT => false,
            NEXROUTE_PORT => true,
            _ => return Verdict::Passed,
        };
        let (tenant_id, stream_id) = match HeaderView::parse(&pkt[NEXLINK_AT..]) {
            Ok(h) => (h.tenant_id(), h.stream_id()),
            Err(_) => return self.drop(counters, DropReason::Malformed),
        };
        let (domain_id, class_id) = if routed {
            match SadView::parse(&pkt[SAD_AT..]) {
                Ok((s, _)) => (s.domain(), s.class()),
                Err(_) => return self.drop(counters, DropReason::Malformed),
            }
        } else {
            (0, 0)
        };
        let Some(tenant_index) = self.tenant_index(tenant_id) else {
            return self.drop(counters, DropReason::UnknownTenant);
        };
        self.count_tenant(counters, tenant_index, pkt.len());
        if !routed {
            return Verdict::Delivered;
        }
        if pkt[ETH_LEN + 8] <= 1 {
            return self.drop(counters, DropReason::TtlExpired);
        }
        // domain: (tenant_index as bit<16>, domain id wire bytes).
        let mut k6 = [0u8; 6];
        k6[..2].copy_from_slice(&(tenant_index as u16).to_be_bytes());
        k6[2..].copy_from_slice(&domain_id.to_le_bytes());
        let domain_index = match self.lookup(b.domain, &k6, b.set_domain) {
            Some(c) => param::<16>(c, 0) as u16,
            None => return self.drop(counters, DropReason::NoRoute),
        };
        k6[..2].copy_from_slice(&domain_index.to_be_bytes());
        k6[2..].copy_from_slice(&class_id.to_le_bytes());
        let route_id = match self.lookup(b.capability_class, &k6, b.set_route) {
            Some(c) => param::<32>(c, 0) as u32,
            None => return self.drop(counters, DropReason::NoRoute),
        };
        let Some(nh) = self
            .store
            .table(b.next_hop)
            .and_then(|t| t.entries.get(route_id.to_be_bytes().as_slice()))
        else {
            return self.drop(counters, DropReason::NoRoute);
        };
        let Some(profile) = self.store.profile(b.selector) else {
            return self.drop(counters, DropReason::NoRoute);
        };
        let member = match &nh.action {
            EntryAction::Member(m) => *m,
            EntryAction::Group(g) => {
                let Some(group) = profile.groups.get(g) else {
                    return self.drop(counters, DropReason::NoRoute);
                };
                let Some(&total) = group.cumulative.last() else {
                    return self.drop(counters, DropReason::NoRoute);
                };
                // Selector fields: stream id, source address, source port.
                let src = u32::from_be_bytes([
                    pkt[ETH_LEN + 12],
                    pkt[ETH_LEN + 13],
                    pkt[ETH_LEN + 14],
                    pkt[ETH_LEN + 15],
                ]);
                let sport = rd16(pkt, L4);
                let h = (u64::from(stream_id) << 32 | u64::from(src))
                    ^ u64::from(sport).rotate_left(17);
                let h = (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
                let pick = ((u64::from(h) * u64::from(total)) >> 32) as u32;
                let i = group.cumulative.partition_point(|&c| c <= pick);
                match group.members.get(i) {
                    Some((m, _)) => *m,
                    None => return self.drop(counters, DropReason::NoRoute),
                }
            }
            EntryAction::Direct(_) => return self.drop(counters, DropReason::NoRoute),
        };
        let Some(call) = profile.members.get(&member) else {
            return self.drop(counters, DropReason::NoRoute);
        };
        if call.action_id != b.set_next_hop {
            return self.drop(counters, DropReason::NoRoute);
        }
        let dst = param::<32>(call, 0) as u32;
        let port = param::<16>(call, 1) as u16;
        let egress = param::<9>(call, 2) as u16;
        // set_next_hop, then the IPv4 checksum as the deparser's update_checksum does.
        pkt[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&dst.to_be_bytes());
        pkt[L4 + 2..L4 + 4].copy_from_slice(&port.to_be_bytes());
        pkt[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
        pkt[ETH_LEN + 8] -= 1;
        ipv4_checksum(&mut pkt[ETH_LEN..L4]);
        Verdict::Routed { port: egress }
    }

    #[inline]
    fn lookup(&self, table: u32, key: &[u8], want: u32) -> Option<&ActionCall> {
        let t = self.store.table(table)?;
        match t.entries.get(key).map(|e| &e.action) {
            Some(EntryAction::Direct(c)) if c.action_id == want => Some(c),
            _ => None,
        }
    }

    fn drop(&self, counters: &Counters, why: DropReason) -> Verdict {
        counters.count(self.bindings.drops, why as usize, 0);
        Verdict::Dropped(why)
    }
}
