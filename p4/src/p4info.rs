//! The NexRoute program's P4Info, reading P4Info in protobuf text format, and the checked
//! [`Schema`] every write is validated against.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::Error;
use crate::proto::p4::config::v1 as cfg;

/// The P4_16 source of the NexRoute program.
pub const NEXROUTE_P4: &str = include_str!("../nexroute.p4");
/// Its P4Info in protobuf text format, as committed.
pub const NEXROUTE_P4INFO_TEXT: &str = include_str!("../nexroute.p4info.txtpb");

/// P4Runtime id prefixes (the most significant byte of an id names the object's kind).
pub mod prefix {
    /// Actions.
    pub const ACTION: u8 = 0x01;
    /// Tables.
    pub const TABLE: u8 = 0x02;
    /// Action profiles and selectors.
    pub const ACTION_PROFILE: u8 = 0x11;
    /// Indexed counters.
    pub const COUNTER: u8 = 0x12;
    /// Direct counters.
    pub const DIRECT_COUNTER: u8 = 0x13;
}

/// Parses a P4Info from protobuf text format (what `p4c --p4runtime-files x.txtpb` writes).
pub fn parse_text(text: &str) -> Result<cfg::P4Info, Error> {
    let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| Error::P4Info(format!("descriptor set: {e}")))?;
    let desc = pool
        .get_message_by_name("p4.config.v1.P4Info")
        .ok_or_else(|| Error::P4Info("P4Info missing from the descriptor set".into()))?;
    let msg = DynamicMessage::parse_text_format(desc, text)
        .map_err(|e| Error::P4Info(format!("text format: {e}")))?;
    msg.transcode_to::<cfg::P4Info>()
        .map_err(|e| Error::P4Info(format!("transcode: {e}")))
}

/// The committed NexRoute P4Info.
pub fn nexroute_p4info() -> Result<cfg::P4Info, Error> {
    parse_text(NEXROUTE_P4INFO_TEXT)
}

/// How a match field matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchKind {
    /// Exact.
    Exact,
    /// Longest prefix.
    Lpm,
    /// Value and mask.
    Ternary,
    /// Inclusive range.
    Range,
    /// Exact or wildcard.
    Optional,
}

/// One match field of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldInfo {
    /// Field id (1-based, per table).
    pub id: u32,
    /// Name, e.g. `hdr.nexlink.tenant_id`.
    pub name: String,
    /// Width in bits.
    pub bitwidth: u32,
    /// Match kind.
    pub kind: MatchKind,
}

impl FieldInfo {
    /// Bytes needed for the width.
    pub fn byte_len(&self) -> usize {
        (self.bitwidth as usize).div_ceil(8)
    }
}

/// A table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Id.
    pub id: u32,
    /// Fully qualified name.
    pub name: String,
    /// Short name.
    pub alias: String,
    /// Match fields, in P4Info order.
    pub fields: Vec<FieldInfo>,
    /// Actions allowed in entries (not default-only ones).
    pub actions: Vec<u32>,
    /// Actions allowed as the default action.
    pub default_actions: Vec<u32>,
    /// Action profile implementing the table, if indirect.
    pub implementation: Option<u32>,
    /// Most entries.
    pub size: usize,
    /// The default action cannot be changed.
    pub const_default_action: Option<u32>,
    /// Entries cannot be changed.
    pub is_const: bool,
}

impl TableInfo {
    /// Whether some field needs a priority (ternary, range, optional).
    pub fn needs_priority(&self) -> bool {
        self.fields.iter().any(|f| {
            matches!(
                f.kind,
                MatchKind::Ternary | MatchKind::Range | MatchKind::Optional
            )
        })
    }
}

/// An action parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// Id (1-based, per action).
    pub id: u32,
    /// Name.
    pub name: String,
    /// Width in bits.
    pub bitwidth: u32,
}

/// An action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionInfo {
    /// Id.
    pub id: u32,
    /// Fully qualified name.
    pub name: String,
    /// Parameters, in order.
    pub params: Vec<ParamInfo>,
}

/// An action profile (with or without selector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInfo {
    /// Id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Tables it implements.
    pub tables: Vec<u32>,
    /// Groups allowed.
    pub with_selector: bool,
    /// Most members.
    pub size: usize,
    /// Most members per group.
    pub max_group_size: usize,
}

/// An indexed counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterInfo {
    /// Id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Cells.
    pub size: usize,
    /// Counts bytes.
    pub bytes: bool,
    /// Counts packets.
    pub packets: bool,
}

/// A P4Info checked for internal consistency and indexed by id and name.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The P4Info it was built from.
    pub p4info: cfg::P4Info,
    tables: HashMap<u32, TableInfo>,
    actions: HashMap<u32, ActionInfo>,
    profiles: HashMap<u32, ProfileInfo>,
    counters: HashMap<u32, CounterInfo>,
    names: HashMap<String, u32>,
}

fn preamble(p: Option<&cfg::Preamble>, what: &str) -> Result<(u32, String, String), Error> {
    let p = p.ok_or_else(|| Error::P4Info(format!("{what} without a preamble")))?;
    if p.id == 0 {
        return Err(Error::P4Info(format!("{what} `{}` has id 0", p.name)));
    }
    Ok((p.id, p.name.clone(), p.alias.clone()))
}

fn check_prefix(id: u32, want: u8, name: &str) -> Result<(), Error> {
    if (id >> 24) as u8 != want {
        return Err(Error::P4Info(format!(
            "`{name}` has id {id:#010x}, whose prefix is not {want:#04x}"
        )));
    }
    Ok(())
}

impl Schema {
    /// Checks and indexes a P4Info: ids non-zero, unique and of the right prefix; widths
    /// positive; every reference (action refs, implementations, profile tables) resolves.
    pub fn new(p4info: cfg::P4Info) -> Result<Schema, Error> {
        let mut s = Schema {
            p4info: cfg::P4Info::default(),
            tables: HashMap::new(),
            actions: HashMap::new(),
            profiles: HashMap::new(),
            counters: HashMap::new(),
            names: HashMap::new(),
        };
        let mut seen = std::collections::HashSet::new();
        let mut claim = |id: u32, name: &str| -> Result<(), Error> {
            if !seen.insert(id) {
                return Err(Error::P4Info(format!(
                    "id {id:#010x} of `{name}` is not unique"
                )));
            }
            Ok(())
        };
        for a in &p4info.actions {
            let (id, name, alias) = preamble(a.preamble.as_ref(), "action")?;
            check_prefix(id, prefix::ACTION, &name)?;
            claim(id, &name)?;
            let mut params = Vec::new();
            for p in &a.params {
                if p.bitwidth <= 0 {
                    return Err(Error::P4Info(format!("`{name}.{}` has no width", p.name)));
                }
                if params.iter().any(|x: &ParamInfo| x.id == p.id) {
                    return Err(Error::P4Info(format!("`{name}` repeats param id {}", p.id)));
                }
                params.push(ParamInfo {
                    id: p.id,
                    name: p.name.clone(),
                    bitwidth: p.bitwidth as u32,
                });
            }
            s.names.insert(name.clone(), id);
            if !alias.is_empty() {
                s.names.entry(alias).or_insert(id);
            }
            s.actions.insert(id, ActionInfo { id, name, params });
        }
        for ap in &p4info.action_profiles {
            let (id, name, alias) = preamble(ap.preamble.as_ref(), "action profile")?;
            check_prefix(id, prefix::ACTION_PROFILE, &name)?;
            claim(id, &name)?;
            s.names.insert(name.clone(), id);
            if !alias.is_empty() {
                s.names.entry(alias).or_insert(id);
            }
            s.profiles.insert(
                id,
                ProfileInfo {
                    id,
                    name,
                    tables: ap.table_ids.clone(),
                    with_selector: ap.with_selector,
                    size: usize::try_from(ap.size).unwrap_or(0),
                    max_group_size: usize::try_from(ap.max_group_size).unwrap_or(0),
                },
            );
        }
        for t in &p4info.tables {
            let (id, name, alias) = preamble(t.preamble.as_ref(), "table")?;
            check_prefix(id, prefix::TABLE, &name)?;
            claim(id, &name)?;
            let mut fields = Vec::new();
            for f in &t.match_fields {
                use cfg::match_field::{Match, MatchType};
                let kind = match f.r#match {
                    Some(Match::MatchType(m)) => match MatchType::try_from(m) {
                        Ok(MatchType::Exact) => MatchKind::Exact,
                        Ok(MatchType::Lpm) => MatchKind::Lpm,
                        Ok(MatchType::Ternary) => MatchKind::Ternary,
                        Ok(MatchType::Range) => MatchKind::Range,
                        Ok(MatchType::Optional) => MatchKind::Optional,
                        _ => {
                            return Err(Error::P4Info(format!(
                                "`{name}`: field `{}` has an unknown match type",
                                f.name
                            )));
                        }
                    },
                    _ => {
                        return Err(Error::P4Info(format!(
                            "`{name}`: field `{}` has an architecture-specific match type",
                            f.name
                        )));
                    }
                };
                if f.bitwidth <= 0 || f.id == 0 || fields.iter().any(|x: &FieldInfo| x.id == f.id) {
                    return Err(Error::P4Info(format!(
                        "`{name}`: field `{}` has a bad id or width",
                        f.name
                    )));
                }
                fields.push(FieldInfo {
                    id: f.id,
                    name: f.name.clone(),
                    bitwidth: f.bitwidth as u32,
                    kind,
                });
            }
            let mut actions = Vec::new();
            let mut default_actions = Vec::new();
            for r in &t.action_refs {
                if !s.actions.contains_key(&r.id) {
                    return Err(Error::P4Info(format!(
                        "`{name}` refers to unknown action {:#010x}",
                        r.id
                    )));
                }
                use cfg::action_ref::Scope;
                let scope = Scope::try_from(r.scope).unwrap_or(Scope::TableAndDefault);
                if scope != Scope::DefaultOnly {
                    actions.push(r.id);
                }
                if scope != Scope::TableOnly {
                    default_actions.push(r.id);
                }
            }
            let implementation = (t.implementation_id != 0).then_some(t.implementation_id);
            if let Some(p) = implementation {
                match s.profiles.get(&p) {
                    Some(prof) if prof.tables.contains(&id) => {}
                    _ => {
                        return Err(Error::P4Info(format!(
                            "`{name}`: implementation {p:#010x} is not an action profile of this table"
                        )));
                    }
                }
            }
            s.names.insert(name.clone(), id);
            if !alias.is_empty() {
                s.names.entry(alias.clone()).or_insert(id);
            }
            s.tables.insert(
                id,
                TableInfo {
                    id,
                    name,
                    alias,
                    fields,
                    actions,
                    default_actions,
                    implementation,
                    size: usize::try_from(t.size).unwrap_or(0),
                    const_default_action: (t.const_default_action_id != 0)
                        .then_some(t.const_default_action_id),
                    is_const: t.is_const_table,
                },
            );
        }
        for c in &p4info.counters {
            let (id, name, alias) = preamble(c.preamble.as_ref(), "counter")?;
            check_prefix(id, prefix::COUNTER, &name)?;
            claim(id, &name)?;
            use cfg::counter_spec::Unit;
            let unit = c
                .spec
                .as_ref()
                .and_then(|s| Unit::try_from(s.unit).ok())
                .unwrap_or(Unit::Both);
            s.names.insert(name.clone(), id);
            if !alias.is_empty() {
                s.names.entry(alias).or_insert(id);
            }
            s.counters.insert(
                id,
                CounterInfo {
                    id,
                    name,
                    size: usize::try_from(c.size).unwrap_or(0),
                    bytes: matches!(unit, Unit::Bytes | Unit::Both),
                    packets: matches!(unit, Unit::Packets | Unit::Both),
                },
            );
        }
        for d in &p4info.direct_counters {
            let (id, name, _) = preamble(d.preamble.as_ref(), "direct counter")?;
            check_prefix(id, prefix::DIRECT_COUNTER, &name)?;
            claim(id, &name)?;
        }
        for p in s.profiles.values() {
            for t in &p.tables {
                if !s.tables.contains_key(t) {
                    return Err(Error::P4Info(format!(
                        "profile `{}` names unknown table {t:#010x}",
                        p.name
                    )));
                }
            }
        }
        s.p4info = p4info;
        Ok(s)
    }

    /// A table by id.
    pub fn table(&self, id: u32) -> Option<&TableInfo> {
        self.tables.get(&id)
    }
    /// An action by id.
    pub fn action(&self, id: u32) -> Option<&ActionInfo> {
        self.actions.get(&id)
    }
    /// An action profile by id.
    pub fn profile(&self, id: u32) -> Option<&ProfileInfo> {
        self.profiles.get(&id)
    }
    /// A counter by id.
    pub fn counter(&self, id: u32) -> Option<&CounterInfo> {
        self.counters.get(&id)
    }
    /// Any object's id by fully qualified name or alias.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }
    /// Every table.
    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.tables.values()
    }
    /// Every action.
    pub fn actions(&self) -> impl Iterator<Item = &ActionInfo> {
        self.actions.values()
    }
    /// Every action profile.
    pub fn profiles(&self) -> impl Iterator<Item = &ProfileInfo> {
        self.profiles.values()
    }
    /// Every counter.
    pub fn counters(&self) -> impl Iterator<Item = &CounterInfo> {
        self.counters.values()
    }
}
