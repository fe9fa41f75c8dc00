//! A P4Runtime controller session, and idempotent programming of compiled tables through it:
//! what the node agent uses to program its dataplane exactly as it would a hardware switch.

use std::collections::BTreeMap;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::Error;
use crate::compile::{CompiledTables, version_of_cookie};
use crate::proto::p4::v1 as pb;
use crate::proto::p4::v1::p4_runtime_client::P4RuntimeClient;

/// A controller's session with one device: the open StreamChannel that holds its arbitration,
/// and a client for the unary RPCs.
#[derive(Debug)]
pub struct Controller {
    client: P4RuntimeClient<Channel>,
    device_id: u64,
    election_id: u128,
    role: String,
    /// Keeps the stream open; dropping it ends the session (and primary status).
    _tx: mpsc::Sender<pb::StreamMessageRequest>,
    rx: Streaming<pb::StreamMessageResponse>,
    primary: bool,
}

/// The result of [`Controller::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The version now programmed.
    pub version: String,
    /// Updates written (0: the device already ran this version).
    pub updates: usize,
}

fn u128_pb(v: u128) -> pb::Uint128 {
    pb::Uint128 {
        high: (v >> 64) as u64,
        low: v as u64,
    }
}

/// A Write that failed: the status and the per-update errors.
#[derive(Debug)]
pub struct WriteFailure {
    /// The RPC status.
    pub status: tonic::Status,
    /// One per update (empty when the request was refused before any update was looked at).
    pub errors: Vec<pb::Error>,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.code(), self.status.message())
    }
}

impl Controller {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:9559`) and arbitrates for `device_id`
    /// with `election_id` in the default role. Returns once the device answered; check
    /// [`Self::is_primary`].
    pub async fn connect(
        endpoint: String,
        device_id: u64,
        election_id: u128,
    ) -> Result<Controller, Error> {
        let channel = Channel::from_shared(endpoint)
            .map_err(|e| Error::NotPrimary(format!("bad endpoint: {e}")))?
            .connect()
            .await?;
        Self::with_channel(channel, device_id, election_id).await
    }

    /// [`Self::connect`] over an existing channel.
    pub async fn with_channel(
        channel: Channel,
        device_id: u64,
        election_id: u128,
    ) -> Result<Controller, Error> {
        let mut client = P4RuntimeClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(8);
        let arbitration = pb::StreamMessageRequest {
            update: Some(pb::stream_message_request::Update::Arbitration(
                pb::MasterArbitrationUpdate {
                    device_id,
                    role: None,
                    election_id: Some(u128_pb(election_id)),
                    status: None,
                },
            )),
        };
        tx.send(arbitration)
            .await
            .map_err(|_| Error::NotPrimary("stream closed".into()))?;
        let inbound = client
            .stream_channel(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut c = Controller {
            client,
            device_id,
            election_id,
            role: String::new(),
            _tx: tx,
            rx: inbound,
            primary: false,
        };
        c.next_arbitration().await?;
        Ok(c)
    }

    /// Waits for the next arbitration message and updates the primary flag from it.
    pub async fn next_arbitration(&mut self) -> Result<bool, Error> {
        loop {
            let item = self.rx.next().await;
            if let Some(primary) = self.absorb(item)? {
                return Ok(primary);
            }
        }
    }

    /// Takes in one item of the stream: `Some(primary)` for an arbitration message, `None`
    /// for any other message, `Err` when the stream failed or ended.
    fn absorb(
        &mut self,
        item: Option<Result<pb::StreamMessageResponse, tonic::Status>>,
    ) -> Result<Option<bool>, Error> {
        match item {
            Some(Ok(pb::StreamMessageResponse {
                update: Some(pb::stream_message_response::Update::Arbitration(a)),
            })) => {
                self.primary = a.status.is_some_and(|s| s.code == 0);
                Ok(Some(self.primary))
            }
            Some(Ok(_)) => Ok(None),
            Some(Err(s)) => Err(Error::Rpc(s)),
            None => Err(Error::NotPrimary("stream closed by the device".into())),
        }
    }

    /// Reads the arbitration messages the device has sent since the last look, without
    /// waiting, and says whether this session is still primary. A long-lived session needs
    /// this before it writes: the device tells a controller it lost primary status (a higher
    /// election id arrived) only on the stream. `Err`: the stream ended (the device restarted
    /// or went away), so the session is over and must be opened again.
    pub async fn still_primary(&mut self) -> Result<bool, Error> {
        loop {
            // A zero timeout polls the stream once: what has arrived, nothing more.
            match tokio::time::timeout(std::time::Duration::ZERO, self.rx.next()).await {
                Err(_) => return Ok(self.primary),
                Ok(item) => {
                    self.absorb(item)?;
                }
            }
        }
    }

    /// Whether the last arbitration message made this session the primary.
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    /// The session's election id.
    pub fn election_id(&self) -> u128 {
        self.election_id
    }

    /// The unary client, for anything not wrapped here.
    pub fn client(&mut self) -> &mut P4RuntimeClient<Channel> {
        &mut self.client
    }

    /// SetForwardingPipelineConfig(VERIFY_AND_COMMIT) with `p4info`.
    pub async fn set_pipeline(
        &mut self,
        p4info: crate::proto::p4::config::v1::P4Info,
        cookie: u64,
    ) -> Result<(), Error> {
        #[allow(deprecated)]
        let req = pb::SetForwardingPipelineConfigRequest {
            device_id: self.device_id,
            role: self.role.clone(),
            election_id: Some(u128_pb(self.election_id)),
            action: pb::set_forwarding_pipeline_config_request::Action::VerifyAndCommit as i32,
            config: Some(pb::ForwardingPipelineConfig {
                p4info: Some(p4info),
                p4_device_config: Vec::new(),
                cookie: Some(pb::forwarding_pipeline_config::Cookie { cookie }),
            }),
            ..Default::default()
        };
        self.client.set_forwarding_pipeline_config(req).await?;
        Ok(())
    }

    /// The device's pipeline cookie, if a config is loaded.
    pub async fn pipeline_cookie(&mut self) -> Result<Option<u64>, Error> {
        let r = self
            .client
            .get_forwarding_pipeline_config(pb::GetForwardingPipelineConfigRequest {
                device_id: self.device_id,
                response_type: pb::get_forwarding_pipeline_config_request::ResponseType::CookieOnly
                    as i32,
            })
            .await?
            .into_inner();
        Ok(r.config.and_then(|c| c.cookie).map(|c| c.cookie))
    }

    /// One Write with the given atomicity.
    pub async fn write(
        &mut self,
        updates: Vec<pb::Update>,
        atomicity: pb::write_request::Atomicity,
    ) -> Result<(), WriteFailure> {
        #[allow(deprecated)]
        let req = pb::WriteRequest {
            device_id: self.device_id,
            role: self.role.clone(),
            election_id: Some(u128_pb(self.election_id)),
            updates,
            atomicity: atomicity as i32,
            ..Default::default()
        };
        match self.client.write(req).await {
            Ok(_) => Ok(()),
            Err(status) => {
                let errors = crate::server::write_errors(&status);
                Err(WriteFailure { status, errors })
            }
        }
    }

    /// Reads every entity matching `filters`.
    pub async fn read(&mut self, filters: Vec<pb::Entity>) -> Result<Vec<pb::Entity>, Error> {
        let mut stream = self
            .client
            .read(pb::ReadRequest {
                device_id: self.device_id,
                role: String::new(),
                entities: filters,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream.next().await {
            out.extend(r?.entities);
        }
        Ok(out)
    }

    /// Every table entry, member and group on the device.
    pub async fn read_all(&mut self) -> Result<Vec<pb::Entity>, Error> {
        use pb::entity::Entity as E;
        self.read(vec![
            pb::Entity {
                entity: Some(E::TableEntry(pb::TableEntry::default())),
            },
            pb::Entity {
                entity: Some(E::ActionProfileMember(pb::ActionProfileMember::default())),
            },
            pb::Entity {
                entity: Some(E::ActionProfileGroup(pb::ActionProfileGroup::default())),
            },
        ])
        .await
    }

    /// The table version the device runs: the version in every entry's cookie when they all
    /// agree, `None` when it has no entries or they disagree (a partial or foreign programming).
    pub async fn programmed_version(&mut self) -> Result<Option<String>, Error> {
        let all = self
            .read(vec![pb::Entity {
                entity: Some(pb::entity::Entity::TableEntry(pb::TableEntry::default())),
            }])
            .await?;
        Ok(common_version(&all))
    }

    /// Programs `compiled` idempotently: reads what the device holds, writes only the
    /// difference (inserts, modifies, deletes — in dependency order) as one DATAPLANE_ATOMIC
    /// batch, so packets see either the old tables or the new ones. Applying the version the
    /// device already runs writes nothing. A refused batch leaves the old tables in place and
    /// returns the device's per-update reasons.
    pub async fn apply(&mut self, compiled: &CompiledTables) -> Result<ApplyReport, ApplyError> {
        let current = self.read_all().await.map_err(ApplyError::Read)?;
        let updates = diff(&current, &compiled.entities);
        let n = updates.len();
        if n > 0 {
            self.write(updates, pb::write_request::Atomicity::DataplaneAtomic)
                .await
                .map_err(ApplyError::Refused)?;
        }
        Ok(ApplyReport {
            version: compiled.version.clone(),
            updates: n,
        })
    }
}

/// Why [`Controller::apply`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading the device's tables failed.
    #[error("reading the device's tables: {0}")]
    Read(Error),
    /// The device refused the batch; nothing was applied.
    #[error("device refused the table version: {0}")]
    Refused(WriteFailure),
}

impl std::error::Error for WriteFailure {}

/// The version shared by every table entry's cookie.
pub fn common_version(entities: &[pb::Entity]) -> Option<String> {
    let mut version: Option<&str> = None;
    for e in entities {
        if let Some(pb::entity::Entity::TableEntry(te)) = &e.entity {
            let v = version_of_cookie(&te.metadata)?;
            match version {
                None => version = Some(v),
                Some(x) if x == v => {}
                Some(_) => return None,
            }
        }
    }
    version.map(str::to_owned)
}

/// Identity of an entity regardless of its action: what INSERT/MODIFY/DELETE address.
fn key_of(e: &pb::Entity) -> Option<(u8, Vec<u8>)> {
    use pb::entity::Entity as E;
    match e.entity.as_ref()? {
        E::ActionProfileMember(m) => Some((
            0,
            [m.action_profile_id.to_be_bytes(), m.member_id.to_be_bytes()].concat(),
        )),
        E::ActionProfileGroup(g) => Some((
            1,
            [g.action_profile_id.to_be_bytes(), g.group_id.to_be_bytes()].concat(),
        )),
        E::TableEntry(t) => {
            let mut m = t.r#match.clone();
            m.sort_by_key(|f| f.field_id);
            let key = pb::TableEntry {
                table_id: t.table_id,
                r#match: m,
                priority: t.priority,
                is_default_action: t.is_default_action,
                ..Default::default()
            };
            Some((2, key.encode_to_vec()))
        }
        _ => None,
    }
}

/// The updates that turn `current` into `desired`, in dependency order.
pub fn diff(current: &[pb::Entity], desired: &[pb::Entity]) -> Vec<pb::Update> {
    use pb::update::Type;
    let cur: BTreeMap<(u8, Vec<u8>), &pb::Entity> = current
        .iter()
        .filter_map(|e| key_of(e).map(|k| (k, e)))
        .collect();
    let want: BTreeMap<(u8, Vec<u8>), &pb::Entity> = desired
        .iter()
        .filter_map(|e| key_of(e).map(|k| (k, e)))
        .collect();
    let upd = |ty: Type, e: &pb::Entity| pb::Update {
        r#type: ty as i32,
        entity: Some(e.clone()),
    };
    let mut out = Vec::new();
    // Inserts and modifies: members, then groups, then table entries (desired order).
    for kind in 0..3u8 {
        for e in desired {
            let Some(k) = key_of(e) else { continue };
            if k.0 != kind {
                continue;
            }
            match cur.get(&k) {
                None => out.push(upd(Type::Insert, e)),
                Some(c) if normalized(c) != normalized(e) => out.push(upd(Type::Modify, e)),
                Some(_) => {}
            }
        }
    }
    // Deletes: table entries, then groups, then members.
    for kind in (0..3u8).rev() {
        for (k, e) in &cur {
            if k.0 == kind && !want.contains_key(k) {
                out.push(upd(Type::Delete, e));
            }
        }
    }
    out
}

/// An entity with repeated fields in a fixed order, for comparison.
fn normalized(e: &pb::Entity) -> Vec<u8> {
    use pb::entity::Entity as E;
    let mut e = e.clone();
    match e.entity.as_mut() {
        Some(E::TableEntry(t)) => {
            t.r#match.sort_by_key(|f| f.field_id);
            if let Some(pb::TableAction {
                r#type: Some(pb::table_action::Type::Action(a)),
            }) = t.action.as_mut()
            {
                a.params.sort_by_key(|p| p.param_id);
            }
        }
        Some(E::ActionProfileMember(m)) => {
            if let Some(a) = m.action.as_mut() {
                a.params.sort_by_key(|p| p.param_id);
            }
        }
        _ => {}
    }
    e.encode_to_vec()
}
