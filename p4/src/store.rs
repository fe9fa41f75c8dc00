//! The software tables: match-action entries, action-profile members and selector groups, kept
//! exactly as P4Runtime writes them and validated against the loaded [`Schema`].
//!
//! A [`Store`] is an immutable snapshot as far as the pipeline is concerned: writes are applied
//! to a copy (tables and profiles are `Arc`-shared and copied on first write), and the copy is
//! published in one step. That makes every batch atomic for the dataplane — stronger than
//! CONTINUE_ON_ERROR and ROLLBACK_ON_ERROR require, and exactly what DATAPLANE_ATOMIC does.
//!
//! Exact keys are stored as the concatenation of each field's value padded to its byte width,
//! in P4Info field order, so the pipeline looks entries up with bytes it takes straight from
//! the packet.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::FixedState;

use crate::bytes::{canonical, to_padded};
use crate::error::{Code, P4Error};
use crate::p4info::{MatchKind, Schema, TableInfo};
use crate::proto::p4::v1 as pb;

type Map<K, V> = HashMap<K, V, FixedState>;

fn map<K, V>() -> Map<K, V> {
    HashMap::with_hasher(FixedState::default())
}

/// An action with its parameter values (padded to their widths, in P4Info order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActionCall {
    /// Action id.
    pub action_id: u32,
    /// Parameter values.
    pub params: Vec<Vec<u8>>,
}

/// What a table entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryAction {
    /// An action of a direct table.
    Direct(ActionCall),
    /// A member of the table's action profile.
    Member(u32),
    /// A group of the table's action selector.
    Group(u32),
}

/// One match field's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldValue {
    /// Exact value.
    Exact(Vec<u8>),
    /// Prefix.
    Lpm {
        /// Value (bits beyond the prefix are zero).
        value: Vec<u8>,
        /// Prefix length in bits.
        prefix_len: u32,
    },
    /// Value under mask.
    Ternary {
        /// Value (zero outside the mask).
        value: Vec<u8>,
        /// Mask.
        mask: Vec<u8>,
    },
    /// Inclusive range.
    Range {
        /// Low end.
        low: Vec<u8>,
        /// High end.
        high: Vec<u8>,
    },
    /// Optional, present.
    Optional(Vec<u8>),
    /// Omitted (wildcard) ternary, range, LPM or optional field.
    Wildcard,
}

/// A table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Field values in P4Info order.
    pub matches: Vec<FieldValue>,
    /// Priority (0 for tables without ternary, range or optional fields).
    pub priority: i32,
    /// What it does.
    pub action: EntryAction,
    /// Controller cookie (opaque bytes).
    pub metadata: Vec<u8>,
    /// Deprecated 64-bit controller cookie.
    pub controller_metadata: u64,
}

/// The entries and default action of one table.
#[derive(Debug, Clone, Default)]
pub struct TableState {
    /// Entries by key.
    pub entries: HashMap<Vec<u8>, Entry, FixedState>,
    /// Default action written by a controller (`None`: the program's).
    pub default_action: Option<ActionCall>,
}

/// A selector group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// (member id, weight), in the order written.
    pub members: Vec<(u32, u32)>,
    /// Declared maximum size (0: the profile's).
    pub max_size: u32,
    /// Running sum of weights, for weighted selection.
    pub cumulative: Vec<u32>,
}

/// Members and groups of one action profile.
#[derive(Debug, Clone, Default)]
pub struct ProfileState {
    /// Members by id.
    pub members: HashMap<u32, ActionCall, FixedState>,
    /// Groups by id.
    pub groups: HashMap<u32, Group, FixedState>,
    member_refs: HashMap<u32, u32, FixedState>,
    group_refs: HashMap<u32, u32, FixedState>,
}

/// A counter cell write, applied when the batch is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSet {
    /// Counter id.
    pub counter_id: u32,
    /// Cell, or every cell.
    pub index: Option<usize>,
    /// New byte count.
    pub bytes: u64,
    /// New packet count.
    pub packets: u64,
}

/// All software tables of the loaded pipeline.
#[derive(Debug, Clone, Default)]
pub struct Store {
    tables: Map<u32, Arc<TableState>>,
    profiles: Map<u32, Arc<ProfileState>>,
    /// Counter writes of the batch being applied.
    pub counter_sets: Vec<CounterSet>,
}

fn err(code: Code, m: impl Into<String>) -> P4Error {
    P4Error::new(code, m)
}

impl Store {
    /// Empty tables for a schema.
    pub fn new(schema: &Schema) -> Store {
        let mut s = Store {
            tables: map(),
            profiles: map(),
            counter_sets: Vec::new(),
        };
        for t in schema.tables() {
            s.tables.insert(t.id, Arc::new(TableState::default()));
        }
        for p in schema.profiles() {
            s.profiles.insert(p.id, Arc::new(ProfileState::default()));
        }
        s
    }

    /// A table's state.
    #[inline]
    pub fn table(&self, id: u32) -> Option<&TableState> {
        self.tables.get(&id).map(|t| &**t)
    }

    /// A profile's state.
    #[inline]
    pub fn profile(&self, id: u32) -> Option<&ProfileState> {
        self.profiles.get(&id).map(|p| &**p)
    }

    /// Number of table entries over all tables.
    pub fn entry_count(&self) -> usize {
        self.tables.values().map(|t| t.entries.len()).sum()
    }

    /// Applies one update, or changes nothing and says why (the specification's codes).
    pub fn apply(&mut self, schema: &Schema, u: &pb::Update) -> Result<(), P4Error> {
        use pb::update::Type;
        let ty = Type::try_from(u.r#type).unwrap_or(Type::Unspecified);
        if ty == Type::Unspecified {
            return Err(err(Code::InvalidArgument, "update type UNSPECIFIED"));
        }
        let entity = u
            .entity
            .as_ref()
            .and_then(|e| e.entity.as_ref())
            .ok_or_else(|| {
                err(
                    Code::Unimplemented,
                    "entity missing or of a type this target does not implement",
                )
            })?;
        use pb::entity::Entity as E;
        match entity {
            E::TableEntry(te) => self.apply_table_entry(schema, ty, te),
            E::ActionProfileMember(m) => self.apply_member(schema, ty, m),
            E::ActionProfileGroup(g) => self.apply_group(schema, ty, g),
            E::CounterEntry(c) => self.apply_counter(schema, ty, c),
            E::DirectCounterEntry(_) => {
                Err(err(Code::NotFound, "this pipeline has no direct counters"))
            }
        }
    }

    fn apply_table_entry(
        &mut self,
        schema: &Schema,
        ty: pb::update::Type,
        te: &pb::TableEntry,
    ) -> Result<(), P4Error> {
        use pb::update::Type;
        let table = schema.table(te.table_id).ok_or_else(|| {
            err(
                Code::NotFound,
                format!("unknown table id {:#010x}", te.table_id),
            )
        })?;
        if te.is_default_action {
            return self.apply_default_action(schema, ty, table, te);
        }
        if table.is_const {
            return Err(err(
                Code::PermissionDenied,
                format!("table `{}` is const", table.name),
            ));
        }
        if te.idle_timeout_ns != 0 {
            return Err(err(
                Code::InvalidArgument,
                format!("table `{}` does not support idle timeout", table.name),
            ));
        }
        if te.counter_data.is_some() {
            return Err(err(
                Code::InvalidArgument,
                format!("table `{}` has no direct counter", table.name),
            ));
        }
        let (key, matches) = parse_match(table, te)?;
        let state = self
            .tables
            .get_mut(&table.id)
            .ok_or_else(|| err(Code::Internal, "table state missing"))?;
        match ty {
            Type::Insert | Type::Modify => {
                let action = parse_table_action(schema, table, te.action.as_ref())?;
                let exists = state.entries.contains_key(&key);
                if ty == Type::Insert && exists {
                    return Err(err(
                        Code::AlreadyExists,
                        format!("`{}`: entry exists", table.alias_or_name()),
                    ));
                }
                if ty == Type::Modify && !exists {
                    return Err(err(
                        Code::NotFound,
                        format!("`{}`: no such entry", table.alias_or_name()),
                    ));
                }
                if ty == Type::Insert && state.entries.len() >= table.size.max(1) {
                    return Err(err(
                        Code::ResourceExhausted,
                        format!(
                            "`{}` is full ({} entries)",
                            table.alias_or_name(),
                            table.size
                        ),
                    ));
                }
                // Indirect references must exist before the entry points at them.
                if let Some(p) = table.implementation {
                    let prof = self
                        .profiles
                        .get(&p)
                        .ok_or_else(|| err(Code::Internal, "profile state missing"))?;
                    match action {
                        EntryAction::Member(m) if !prof.members.contains_key(&m) => {
                            return Err(err(Code::NotFound, format!("member {m} does not exist")));
                        }
                        EntryAction::Group(g) if !prof.groups.contains_key(&g) => {
                            return Err(err(Code::NotFound, format!("group {g} does not exist")));
                        }
                        _ => {}
                    }
                }
                #[allow(deprecated)]
                let entry = Entry {
                    matches,
                    priority: te.priority,
                    action,
                    metadata: te.metadata.clone(),
                    controller_metadata: te.controller_metadata,
                };
                let state = Arc::make_mut(
                    self.tables
                        .get_mut(&table.id)
                        .ok_or_else(|| err(Code::Internal, "table state missing"))?,
                );
                let old = state.entries.insert(key, entry.clone());
                if let Some(p) = table.implementation {
                    let prof = Arc::make_mut(
                        self.profiles
                            .get_mut(&p)
                            .ok_or_else(|| err(Code::Internal, "profile state missing"))?,
                    );
                    if let Some(old) = old {
                        prof.unref(&old.action);
                    }
                    prof.add_ref(&entry.action);
                }
                Ok(())
            }
            Type::Delete => {
                if !state.entries.contains_key(&key) {
                    return Err(err(
                        Code::NotFound,
                        format!("`{}`: no such entry", table.alias_or_name()),
                    ));
                }
                let state = Arc::make_mut(
                    self.tables
                        .get_mut(&table.id)
                        .ok_or_else(|| err(Code::Internal, "table state missing"))?,
                );
                let old = state.entries.remove(&key);
                if let (Some(p), Some(old)) = (table.implementation, old) {
                    let prof = Arc::make_mut(
                        self.profiles
                            .get_mut(&p)
                            .ok_or_else(|| err(Code::Internal, "profile state missing"))?,
                    );
                    prof.unref(&old.action);
                }
                Ok(())
            }
            Type::Unspecified => Err(err(Code::InvalidArgument, "update type UNSPECIFIED")),
        }
    }

    fn apply_default_action(
        &mut self,
        schema: &Schema,
        ty: pb::update::Type,
        table: &TableInfo,
        te: &pb::TableEntry,
    ) -> Result<(), P4Error> {
        if ty != pb::update::Type::Modify {
            return Err(err(
                Code::InvalidArgument,
                "the default action can only be MODIFY'd",
            ));
        }
        if !te.r#match.is_empty() || te.priority != 0 {
            return Err(err(
                Code::InvalidArgument,
                "a default-action entry has no match and no priority",
            ));
        }
        if table.const_default_action.is_some() {
            return Err(err(
                Code::PermissionDenied,
                format!("`{}` has a const default action", table.name),
            ));
        }
        let call = match te.action.as_ref().and_then(|a| a.r#type.as_ref()) {
            Some(pb::table_action::Type::Action(a)) => parse_action(schema, a)?,
            Some(_) => {
                return Err(err(
                    Code::InvalidArgument,
                    "a default action must be a direct action",
                ));
            }
            None => return Err(err(Code::InvalidArgument, "default action missing")),
        };
        if !table.default_actions.contains(&call.action_id) {
            return Err(err(
                Code::InvalidArgument,
                format!(
                    "action {:#010x} cannot be `{}`'s default",
                    call.action_id, table.name
                ),
            ));
        }
        let state = Arc::make_mut(
            self.tables
                .get_mut(&table.id)
                .ok_or_else(|| err(Code::Internal, "table state missing"))?,
        );
        state.default_action = Some(call);
        Ok(())
    }

    fn apply_member(
        &mut self,
        schema: &Schema,
        ty: pb::update::Type,
        m: &pb::ActionProfileMember,
    ) -> Result<(), P4Error> {
        use pb::update::Type;
        let prof = schema.profile(m.action_profile_id).ok_or_else(|| {
            err(
                Code::NotFound,
                format!("unknown action profile {:#010x}", m.action_profile_id),
            )
        })?;
        let state = self
            .profiles
            .get(&prof.id)
            .ok_or_else(|| err(Code::Internal, "profile state missing"))?;
        let exists = state.members.contains_key(&m.member_id);
        match ty {
            Type::Insert | Type::Modify => {
                if ty == Type::Insert && exists {
                    return Err(err(
                        Code::AlreadyExists,
                        format!("member {} exists", m.member_id),
                    ));
                }
                if ty == Type::Modify && !exists {
                    return Err(err(
                        Code::NotFound,
                        format!("member {} does not exist", m.member_id),
                    ));
                }
                if ty == Type::Insert && state.members.len() >= prof.size.max(1) {
                    return Err(err(
                        Code::ResourceExhausted,
                        format!("`{}` is full", prof.name),
                    ));
                }
                let a = m
                    .action
                    .as_ref()
                    .ok_or_else(|| err(Code::InvalidArgument, "member without an action"))?;
                let call = parse_action(schema, a)?;
                let allowed = prof.tables.iter().any(|t| {
                    schema
                        .table(*t)
                        .is_some_and(|t| t.actions.contains(&call.action_id))
                });
                if !allowed {
                    return Err(err(
                        Code::InvalidArgument,
                        format!(
                            "action {:#010x} is not an action of `{}`'s tables",
                            call.action_id, prof.name
                        ),
                    ));
                }
                let state = Arc::make_mut(
                    self.profiles
                        .get_mut(&prof.id)
                        .ok_or_else(|| err(Code::Internal, "profile state missing"))?,
                );
                state.members.insert(m.member_id, call);
                Ok(())
            }
            Type::Delete => {
                if !exists {
                    return Err(err(
                        Code::NotFound,
                        format!("member {} does not exist", m.member_id),
                    ));
                }
                if state.member_refs.get(&m.member_id).copied().unwrap_or(0) > 0 {
                    return Err(err(
                        Code::FailedPrecondition,
                        format!(
                            "member {} is still used by a group or an entry",
                            m.member_id
                        ),
                    ));
                }
                let state = Arc::make_mut(
                    self.profiles
                        .get_mut(&prof.id)
                        .ok_or_else(|| err(Code::Internal, "profile state missing"))?,
                );
                state.members.remove(&m.member_id);
                Ok(())
            }
            Type::Unspecified => Err(err(Code::InvalidArgument, "update type UNSPECIFIED")),
        }
    }

    fn apply_group(
        &mut self,
        schema: &Schema,
        ty: pb::update::Type,
        g: &pb::ActionProfileGroup,
    ) -> Result<(), P4Error> {
        use pb::update::Type;
        let prof = schema.profile(g.action_profile_id).ok_or_else(|| {
            err(
                Code::NotFound,
                format!("unknown action profile {:#010x}", g.action_profile_id),
            )
        })?;
        if !prof.with_selector {
            return Err(err(
                Code::InvalidArgument,
                format!("`{}` has no selector: no groups", prof.name),
            ));
        }
        let state = self
            .profiles
            .get(&prof.id)
            .ok_or_else(|| err(Code::Internal, "profile state missing"))?;
        let existing = state.groups.get(&g.group_id);
        match ty {
            Type::Insert | Type::Modify => {
                if ty == Type::Insert && existing.is_some() {
                    return Err(err(
                        Code::AlreadyExists,
                        format!("group {} exists", g.group_id),
                    ));
                }
                if ty == Type::Modify && existing.is_none() {
                    return Err(err(
                        Code::NotFound,
                        format!("group {} does not exist", g.group_id),
                    ));
                }
                if g.max_size < 0 || g.max_size as usize > prof.max_group_size {
                    return Err(err(
                        Code::InvalidArgument,
                        format!(
                            "max_size {} outside 0..={}",
                            g.max_size, prof.max_group_size
                        ),
                    ));
                }
                if let Some(old) = existing
                    && g.max_size != 0
                    && old.max_size != g.max_size as u32
                {
                    return Err(err(
                        Code::InvalidArgument,
                        "a group's max_size cannot change",
                    ));
                }
                let limit = if g.max_size > 0 {
                    g.max_size as usize
                } else {
                    prof.max_group_size
                };
                if g.members.len() > limit {
                    return Err(err(
                        Code::ResourceExhausted,
                        format!("{} members, at most {limit}", g.members.len()),
                    ));
                }
                if ty == Type::Insert && state.groups.len() >= prof.size.max(1) {
                    return Err(err(
                        Code::ResourceExhausted,
                        format!("`{}` has no room for another group", prof.name),
                    ));
                }
                let mut members = Vec::with_capacity(g.members.len());
                for m in &g.members {
                    if m.weight < 1 {
                        return Err(err(
                            Code::InvalidArgument,
                            format!("member {} has weight {}", m.member_id, m.weight),
                        ));
                    }
                    if !state.members.contains_key(&m.member_id) {
                        return Err(err(
                            Code::NotFound,
                            format!("member {} does not exist", m.member_id),
                        ));
                    }
                    if members.iter().any(|(id, _)| *id == m.member_id) {
                        return Err(err(
                            Code::InvalidArgument,
                            format!("member {} listed twice", m.member_id),
                        ));
                    }
                    members.push((m.member_id, m.weight as u32));
                }
                let mut acc = 0u32;
                let cumulative = members
                    .iter()
                    .map(|(_, w)| {
                        acc = acc.saturating_add(*w);
                        acc
                    })
                    .collect();
                let max_size = match existing {
                    Some(old) => old.max_size,
                    None => g.max_size as u32,
                };
                let group = Group {
                    members,
                    max_size,
                    cumulative,
                };
                let state = Arc::make_mut(
                    self.profiles
                        .get_mut(&prof.id)
                        .ok_or_else(|| err(Code::Internal, "profile state missing"))?,
                );
                if let Some(old) = state.groups.insert(g.group_id, group.clone()) {
                    for (m, _) in &old.members {
                        state.unref_member(*m);
                    }
                }
                for (m, _) in &group.members {
                    *state.member_refs.entry(*m).or_insert(0) += 1;
                }
                Ok(())
            }
            Type::Delete => {
                if existing.is_none() {
                    return Err(err(
                        Code::NotFound,
                        format!("group {} does not exist", g.group_id),
                    ));
                }
                if state.group_refs.get(&g.group_id).copied().unwrap_or(0) > 0 {
                    return Err(err(
                        Code::FailedPrecondition,
                        format!("group {} is still used by a table entry", g.group_id),
                    ));
                }
                let state = Arc::make_mut(
                    self.profiles
                        .get_mut(&prof.id)
                        .ok_or_else(|| err(Code::Internal, "profile state missing"))?,
                );
                if let Some(old) = state.groups.remove(&g.group_id) {
                    for (m, _) in &old.members {
                        state.unref_member(*m);
                    }
                }
                Ok(())
            }
            Type::Unspecified => Err(err(Code::InvalidArgument, "update type UNSPECIFIED")),
        }
    }

    fn apply_counter(
        &mut self,
        schema: &Schema,
        ty: pb::update::Type,
        c: &pb::CounterEntry,
    ) -> Result<(), P4Error> {
        if ty != pb::update::Type::Modify {
            return Err(err(
                Code::InvalidArgument,
                "counter cells can only be MODIFY'd",
            ));
        }
        let info = schema.counter(c.counter_id).ok_or_else(|| {
            err(
                Code::NotFound,
                format!("unknown counter {:#010x}", c.counter_id),
            )
        })?;
        let index = match &c.index {
            None => None,
            Some(i) if i.index >= 0 && (i.index as usize) < info.size => Some(i.index as usize),
            Some(i) => {
                return Err(err(
                    Code::OutOfRange,
                    format!(
                        "index {} outside `{}`'s {} cells",
                        i.index, info.name, info.size
                    ),
                ));
            }
        };
        let data = c.data.unwrap_or_default();
        if data.byte_count < 0 || data.packet_count < 0 {
            return Err(err(Code::InvalidArgument, "negative counter value"));
        }
        self.counter_sets.push(CounterSet {
            counter_id: info.id,
            index,
            bytes: data.byte_count as u64,
            packets: data.packet_count as u64,
        });
        Ok(())
    }
}

impl ProfileState {
    fn add_ref(&mut self, a: &EntryAction) {
        match a {
            EntryAction::Member(m) => *self.member_refs.entry(*m).or_insert(0) += 1,
            EntryAction::Group(g) => *self.group_refs.entry(*g).or_insert(0) += 1,
            EntryAction::Direct(_) => {}
        }
    }
    fn unref(&mut self, a: &EntryAction) {
        match a {
            EntryAction::Member(m) => self.unref_member(*m),
            EntryAction::Group(g) => {
                if let Some(n) = self.group_refs.get_mut(g) {
                    *n = n.saturating_sub(1);
                }
            }
            EntryAction::Direct(_) => {}
        }
    }
    fn unref_member(&mut self, m: u32) {
        if let Some(n) = self.member_refs.get_mut(&m) {
            *n = n.saturating_sub(1);
        }
    }
}

impl TableInfo {
    fn alias_or_name(&self) -> &str {
        if self.alias.is_empty() {
            &self.name
        } else {
            &self.alias
        }
    }
}

/// Validates a table entry's match against the table and computes its storage key.
fn parse_match(
    table: &TableInfo,
    te: &pb::TableEntry,
) -> Result<(Vec<u8>, Vec<FieldValue>), P4Error> {
    use pb::field_match::FieldMatchType as M;
    let mut values: Vec<Option<FieldValue>> = vec![None; table.fields.len()];
    for fm in &te.r#match {
        let pos = table
            .fields
            .iter()
            .position(|f| f.id == fm.field_id)
            .ok_or_else(|| {
                err(
                    Code::InvalidArgument,
                    format!("`{}` has no match field {}", table.name, fm.field_id),
                )
            })?;
        if values[pos].is_some() {
            return Err(err(
                Code::InvalidArgument,
                format!("match field {} given twice", fm.field_id),
            ));
        }
        let f = &table.fields[pos];
        let what = || format!("`{}` field `{}`", table.name, f.name);
        let v = match (&fm.field_match_type, f.kind) {
            (Some(M::Exact(e)), MatchKind::Exact) => {
                FieldValue::Exact(to_padded(&e.value, f.bitwidth, &what)?)
            }
            (Some(M::Optional(o)), MatchKind::Optional) => {
                FieldValue::Optional(to_padded(&o.value, f.bitwidth, &what)?)
            }
            (Some(M::Lpm(l)), MatchKind::Lpm) => {
                if l.prefix_len < 0 || l.prefix_len as u32 > f.bitwidth {
                    return Err(err(
                        Code::InvalidArgument,
                        format!(
                            "{}: prefix length {} outside 0..={}",
                            what(),
                            l.prefix_len,
                            f.bitwidth
                        ),
                    ));
                }
                if l.prefix_len == 0 {
                    return Err(err(
                        Code::InvalidArgument,
                        format!("{}: a /0 prefix must be omitted (wildcard)", what()),
                    ));
                }
                let value = to_padded(&l.value, f.bitwidth, &what)?;
                let mask = prefix_mask(f.bitwidth, l.prefix_len as u32);
                if value.iter().zip(&mask).any(|(v, m)| v & !m != 0) {
                    return Err(err(
                        Code::InvalidArgument,
                        format!("{}: bits set beyond the prefix", what()),
                    ));
                }
                FieldValue::Lpm {
                    value,
                    prefix_len: l.prefix_len as u32,
                }
            }
            (Some(M::Ternary(t)), MatchKind::Ternary) => {
                let value = to_padded(&t.value, f.bitwidth, &what)?;
                let mask = to_padded(&t.mask, f.bitwidth, &what)?;
                if mask.iter().all(|&b| b == 0) {
                    return Err(err(
                        Code::InvalidArgument,
                        format!("{}: an all-zero mask must be omitted (wildcard)", what()),
                    ));
                }
                if value.iter().zip(&mask).any(|(v, m)| v & !m != 0) {
                    return Err(err(
                        Code::InvalidArgument,
                        format!("{}: value has bits outside the mask", what()),
                    ));
                }
                FieldValue::Ternary { value, mask }
            }
            (Some(M::Range(r)), MatchKind::Range) => {
                let low = to_padded(&r.low, f.bitwidth, &what)?;
                let high = to_padded(&r.high, f.bitwidth, &what)?;
                if low > high {
                    return Err(err(
                        Code::InvalidArgument,
                        format!("{}: low above high", what()),
                    ));
                }
                FieldValue::Range { low, high }
            }
            (None, _) => {
                return Err(err(
                    Code::InvalidArgument,
                    format!("{}: no match value", what()),
                ));
            }
            (Some(_), kind) => {
                return Err(err(
                    Code::InvalidArgument,
                    format!("{}: wrong match type, the field is {kind:?}", what()),
                ));
            }
        };
        values[pos] = Some(v);
    }
    let mut out = Vec::with_capacity(values.len());
    for (v, f) in values.into_iter().zip(&table.fields) {
        match v {
            Some(v) => out.push(v),
            None if f.kind == MatchKind::Exact => {
                return Err(err(
                    Code::InvalidArgument,
                    format!("`{}`: exact field `{}` missing", table.name, f.name),
                ));
            }
            None => out.push(FieldValue::Wildcard),
        }
    }
    if table.needs_priority() {
        if te.priority <= 0 {
            return Err(err(
                Code::InvalidArgument,
                format!("`{}` needs a priority above 0", table.name),
            ));
        }
    } else if te.priority != 0 {
        return Err(err(
            Code::InvalidArgument,
            format!("`{}` takes no priority", table.name),
        ));
    }
    Ok((storage_key(&out, te.priority), out))
}

/// The storage key: exact-only tables use the padded values concatenated (what the pipeline
/// builds from packet bytes); other tables a tagged encoding of every field and the priority.
fn storage_key(values: &[FieldValue], priority: i32) -> Vec<u8> {
    if values.iter().all(|v| matches!(v, FieldValue::Exact(_))) {
        let mut k = Vec::new();
        for v in values {
            if let FieldValue::Exact(b) = v {
                k.extend_from_slice(b);
            }
        }
        return k;
    }
    let mut k = priority.to_be_bytes().to_vec();
    for v in values {
        let mut put = |tag: u8, parts: &[&[u8]]| {
            k.push(tag);
            for p in parts {
                k.extend_from_slice(&(p.len() as u32).to_be_bytes());
                k.extend_from_slice(p);
            }
        };
        match v {
            FieldValue::Exact(b) => put(1, &[b]),
            FieldValue::Lpm { value, prefix_len } => put(2, &[value, &prefix_len.to_be_bytes()]),
            FieldValue::Ternary { value, mask } => put(3, &[value, mask]),
            FieldValue::Range { low, high } => put(4, &[low, high]),
            FieldValue::Optional(b) => put(5, &[b]),
            FieldValue::Wildcard => put(0, &[]),
        }
    }
    k
}

fn prefix_mask(bits: u32, prefix: u32) -> Vec<u8> {
    let n = crate::bytes::byte_len(bits);
    let spare = n as u32 * 8 - bits;
    let mut mask = vec![0u8; n];
    for i in 0..prefix {
        let bit = spare + i;
        mask[(bit / 8) as usize] |= 0x80 >> (bit % 8);
    }
    mask
}

/// Validates an action against the schema.
pub(crate) fn parse_action(schema: &Schema, a: &pb::Action) -> Result<ActionCall, P4Error> {
    let info = schema.action(a.action_id).ok_or_else(|| {
        err(
            Code::NotFound,
            format!("unknown action id {:#010x}", a.action_id),
        )
    })?;
    let mut params: Vec<Option<Vec<u8>>> = vec![None; info.params.len()];
    for p in &a.params {
        let pos = info
            .params
            .iter()
            .position(|x| x.id == p.param_id)
            .ok_or_else(|| {
                err(
                    Code::InvalidArgument,
                    format!("`{}` has no param {}", info.name, p.param_id),
                )
            })?;
        if params[pos].is_some() {
            return Err(err(
                Code::InvalidArgument,
                format!("`{}` param {} given twice", info.name, p.param_id),
            ));
        }
        let pi = &info.params[pos];
        let what = || format!("`{}` param `{}`", info.name, pi.name);
        params[pos] = Some(to_padded(&p.value, pi.bitwidth, &what)?);
    }
    let mut out = Vec::with_capacity(params.len());
    for (v, pi) in params.into_iter().zip(&info.params) {
        out.push(v.ok_or_else(|| {
            err(
                Code::InvalidArgument,
                format!("`{}` param `{}` missing", info.name, pi.name),
            )
        })?);
    }
    Ok(ActionCall {
        action_id: info.id,
        params: out,
    })
}

fn parse_table_action(
    schema: &Schema,
    table: &TableInfo,
    ta: Option<&pb::TableAction>,
) -> Result<EntryAction, P4Error> {
    use pb::table_action::Type as T;
    let t = ta.and_then(|a| a.r#type.as_ref()).ok_or_else(|| {
        err(
            Code::InvalidArgument,
            format!("`{}`: entry without an action", table.name),
        )
    })?;
    match (t, table.implementation) {
        (T::Action(a), None) => {
            let call = parse_action(schema, a)?;
            if !table.actions.contains(&call.action_id) {
                return Err(err(
                    Code::InvalidArgument,
                    format!(
                        "action {:#010x} is not an action of `{}`",
                        call.action_id, table.name
                    ),
                ));
            }
            Ok(EntryAction::Direct(call))
        }
        (T::ActionProfileMemberId(m), Some(_)) => Ok(EntryAction::Member(*m)),
        (T::ActionProfileGroupId(g), Some(p)) => {
            if schema.profile(p).is_some_and(|p| p.with_selector) {
                Ok(EntryAction::Group(*g))
            } else {
                Err(err(
                    Code::InvalidArgument,
                    format!("`{}` has no selector: no groups", table.name),
                ))
            }
        }
        (T::ActionProfileActionSet(_), _) => Err(err(
            Code::Unimplemented,
            "one-shot action selector programming",
        )),
        (T::Action(_), Some(_)) => Err(err(
            Code::InvalidArgument,
            format!("`{}` is indirect: use a member or group", table.name),
        )),
        (_, None) => Err(err(
            Code::InvalidArgument,
            format!(
                "`{}` is direct: members and groups do not apply",
                table.name
            ),
        )),
    }
}

/// The proto form of an action call (canonical byte strings).
pub fn action_to_proto(c: &ActionCall) -> pb::Action {
    pb::Action {
        action_id: c.action_id,
        params: c
            .params
            .iter()
            .enumerate()
            .map(|(i, v)| pb::action::Param {
                param_id: i as u32 + 1,
                value: canonical(v),
            })
            .collect(),
    }
}

/// The proto form of a stored entry.
pub fn entry_to_proto(schema: &Schema, table_id: u32, e: &Entry) -> pb::TableEntry {
    use pb::field_match::FieldMatchType as M;
    let fields = schema
        .table(table_id)
        .map(|t| t.fields.clone())
        .unwrap_or_default();
    let r#match = e
        .matches
        .iter()
        .zip(&fields)
        .filter_map(|(v, f)| {
            let m = match v {
                FieldValue::Exact(b) => M::Exact(pb::field_match::Exact {
                    value: canonical(b),
                }),
                FieldValue::Optional(b) => M::Optional(pb::field_match::Optional {
                    value: canonical(b),
                }),
                FieldValue::Lpm { value, prefix_len } => M::Lpm(pb::field_match::Lpm {
                    value: canonical(value),
                    prefix_len: *prefix_len as i32,
                }),
                FieldValue::Ternary { value, mask } => M::Ternary(pb::field_match::Ternary {
                    value: canonical(value),
                    mask: canonical(mask),
                }),
                FieldValue::Range { low, high } => M::Range(pb::field_match::Range {
                    low: canonical(low),
                    high: canonical(high),
                }),
                FieldValue::Wildcard => return None,
            };
            Some(pb::FieldMatch {
                field_id: f.id,
                field_match_type: Some(m),
            })
        })
        .collect();
    let action = match &e.action {
        EntryAction::Direct(c) => pb::table_action::Type::Action(action_to_proto(c)),
        EntryAction::Member(m) => pb::table_action::Type::ActionProfileMemberId(*m),
        EntryAction::Group(g) => pb::table_action::Type::ActionProfileGroupId(*g),
    };
    #[allow(deprecated)]
    pb::TableEntry {
        table_id,
        r#match,
        action: Some(pb::TableAction {
            r#type: Some(action),
        }),
        priority: e.priority,
        controller_metadata: e.controller_metadata,
        metadata: e.metadata.clone(),
        ..Default::default()
    }
}

/// Reads entities matching `filter` (the specification's wildcard rules) into `out`.
pub fn read(
    store: &Store,
    schema: &Schema,
    filter: &pb::Entity,
    out: &mut Vec<pb::Entity>,
) -> Result<(), P4Error> {
    use pb::entity::Entity as E;
    let wrap = |e: E| pb::Entity { entity: Some(e) };
    match filter.entity.as_ref() {
        None => Err(err(
            Code::Unimplemented,
            "entity type not implemented by this target",
        )),
        Some(E::TableEntry(te)) => {
            let tables: Vec<&TableInfo> = if te.table_id == 0 {
                let mut t: Vec<&TableInfo> = schema.tables().collect();
                t.sort_by_key(|t| t.id);
                t
            } else {
                vec![schema.table(te.table_id).ok_or_else(|| {
                    err(
                        Code::NotFound,
                        format!("unknown table id {:#010x}", te.table_id),
                    )
                })?]
            };
            for t in tables {
                let Some(state) = store.table(t.id) else {
                    continue;
                };
                if te.is_default_action {
                    if let Some(d) = &state.default_action {
                        out.push(wrap(E::TableEntry(pb::TableEntry {
                            table_id: t.id,
                            action: Some(pb::TableAction {
                                r#type: Some(pb::table_action::Type::Action(action_to_proto(d))),
                            }),
                            is_default_action: true,
                            ..Default::default()
                        })));
                    }
                    continue;
                }
                if te.r#match.is_empty() {
                    for e in state.entries.values() {
                        out.push(wrap(E::TableEntry(entry_to_proto(schema, t.id, e))));
                    }
                } else {
                    let (key, _) = parse_match(t, te)?;
                    if let Some(e) = state.entries.get(&key) {
                        out.push(wrap(E::TableEntry(entry_to_proto(schema, t.id, e))));
                    }
                }
            }
            Ok(())
        }
        Some(E::ActionProfileMember(m)) => {
            for (pid, p) in profiles(store, schema, m.action_profile_id)? {
                for (id, call) in &p.members {
                    if m.member_id == 0 || m.member_id == *id {
                        out.push(wrap(E::ActionProfileMember(pb::ActionProfileMember {
                            action_profile_id: pid,
                            member_id: *id,
                            action: Some(action_to_proto(call)),
                        })));
                    }
                }
            }
            Ok(())
        }
        Some(E::ActionProfileGroup(g)) => {
            for (pid, p) in profiles(store, schema, g.action_profile_id)? {
                for (id, grp) in &p.groups {
                    if g.group_id == 0 || g.group_id == *id {
                        out.push(wrap(E::ActionProfileGroup(pb::ActionProfileGroup {
                            action_profile_id: pid,
                            group_id: *id,
                            members: grp
                                .members
                                .iter()
                                .map(|(m, w)| pb::action_profile_group::Member {
                                    member_id: *m,
                                    weight: *w as i32,
                                    watch_kind: None,
                                })
                                .collect(),
                            max_size: grp.max_size as i32,
                        })));
                    }
                }
            }
            Ok(())
        }
        Some(E::CounterEntry(_)) => Err(err(
            Code::Internal,
            "counters are read through the pipeline",
        )),
        Some(E::DirectCounterEntry(_)) => {
            Err(err(Code::NotFound, "this pipeline has no direct counters"))
        }
    }
}

fn profiles<'a>(
    store: &'a Store,
    schema: &Schema,
    id: u32,
) -> Result<Vec<(u32, &'a ProfileState)>, P4Error> {
    if id == 0 {
        let mut v: Vec<(u32, &ProfileState)> = schema
            .profiles()
            .filter_map(|p| store.profile(p.id).map(|s| (p.id, s)))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        Ok(v)
    } else {
        schema
            .profile(id)
            .ok_or_else(|| err(Code::NotFound, format!("unknown action profile {id:#010x}")))?;
        Ok(store.profile(id).map(|s| vec![(id, s)]).unwrap_or_default())
    }
}
