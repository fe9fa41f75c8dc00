//! Programs the NexRoute tables the controller pushes into the node's dataplane through its
//! P4Runtime service — the same calls a controller makes to a hardware switch: become primary
//! for the device (arbitration by election id), load the NexRoute pipeline when the device has
//! none, then write only the difference to the pushed entities as one DATAPLANE_ATOMIC batch.
//! A refused batch leaves the device's previous tables in place; the reason goes back to the
//! controller in the agent's status.
//!
//! The session (the StreamChannel that holds the agent's arbitration) is opened once and kept,
//! as a switch controller keeps it: closing it after each round would hand the device back
//! between rounds, and every open and close is an arbitration change the device counts and
//! tells its other controllers about. It is opened again only when it ended (the dataplane
//! restarted) or an RPC on it failed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nexus_fleet_agent::RoutingTarget;
use nexus_fleet_api::v1::RoutingTables;
use nexus_p4::client::Controller;
use nexus_p4::compile::CompiledTables;
use nexus_p4::p4info::nexroute_p4info;
use nexus_p4::proto::p4::v1 as p4;
use prost::Message;
use tokio::sync::Mutex;

/// Times the agent tries to become the device's primary controller before it refuses a
/// version (250 ms apart).
const PRIMARY_ATTEMPTS: u32 = 20;

/// Pipeline cookie the agent loads the committed NexRoute P4Info with.
pub const PIPELINE_COOKIE: u64 = 0x4e58_5254; // "NXRT"

/// The node's dataplane, reached over P4Runtime.
#[derive(Debug, Clone)]
pub struct P4RuntimeTables {
    /// e.g. `http://127.0.0.1:9559`.
    pub endpoint: String,
    /// The P4Runtime device id of the dataplane.
    pub device_id: u64,
    /// Election id: the agent is the device's primary controller.
    pub election_id: u128,
    /// The open session, kept between rounds; `None` until the first round and after it ended.
    session: Arc<Mutex<Option<Controller>>>,
}

impl P4RuntimeTables {
    /// A target at `endpoint` for device `device_id` (election id 1).
    pub fn new(endpoint: impl Into<String>, device_id: u64) -> Self {
        Self {
            endpoint: endpoint.into(),
            device_id,
            election_id: 1,
            session: Arc::default(),
        }
    }

    /// The kept session when it is still open (its primary flag brought up to date with the
    /// arbitration messages its stream holds), else a new one (arbitrating with the agent's
    /// election id).
    async fn open<'a>(
        &self,
        slot: &'a mut Option<Controller>,
    ) -> Result<&'a mut Controller, String> {
        if let Some(c) = slot.as_mut()
            && c.still_primary().await.is_err()
        {
            tracing::info!(endpoint = %self.endpoint, "P4Runtime session ended; opening another");
            *slot = None;
        }
        match slot {
            Some(c) => Ok(c),
            None => {
                let c = tokio::time::timeout(
                    Duration::from_secs(10),
                    Controller::connect(self.endpoint.clone(), self.device_id, self.election_id),
                )
                .await
                .map_err(|_| format!("P4Runtime at {} did not answer", self.endpoint))?
                .map_err(|e| format!("P4Runtime at {}: {e}", self.endpoint))?;
                Ok(slot.insert(c))
            }
        }
    }

    /// The kept session once it is primary: another controller may hold the device for a
    /// moment (a reader with a higher election id, a controller failing over), so this waits
    /// for the device to hand it over (arbitration messages on the stream) before refusing.
    async fn primary<'a>(
        &self,
        slot: &'a mut Option<Controller>,
    ) -> Result<&'a mut Controller, String> {
        let mut attempts = 0;
        loop {
            // `open` has just read what arbitration news the stream holds.
            if self.open(slot).await?.is_primary() {
                break;
            }
            attempts += 1;
            if attempts >= PRIMARY_ATTEMPTS {
                return Err(format!(
                    "another controller is primary for device {} (election id {} lost)",
                    self.device_id, self.election_id
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        slot.as_mut()
            .ok_or_else(|| "P4Runtime session closed".to_owned())
    }

    async fn program_once(&self, tables: &RoutingTables) -> Result<usize, String> {
        let entities = tables
            .entities
            .iter()
            .enumerate()
            .map(|(i, b)| {
                p4::Entity::decode(b.as_slice())
                    .map_err(|e| format!("pushed entity {i} does not decode: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut slot = self.session.lock().await;
        let c = self.primary(&mut slot).await?;
        let loaded = c
            .pipeline_cookie()
            .await
            .map_err(|e| format!("reading the pipeline: {e}"))?;
        if loaded != Some(PIPELINE_COOKIE) {
            let p4info = nexroute_p4info().map_err(|e| e.to_string())?;
            c.set_pipeline(p4info, PIPELINE_COOKIE)
                .await
                .map_err(|e| format!("loading the NexRoute pipeline: {e}"))?;
        }
        let compiled = CompiledTables {
            version: tables.version.clone(),
            entities,
            domains: Vec::new(),
            notes: Vec::new(),
        };
        c.apply(&compiled)
            .await
            .map(|r| r.updates)
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl RoutingTarget for P4RuntimeTables {
    async fn program(&self, tables: &RoutingTables) -> Result<(), String> {
        let mut demotions = 0;
        let n = loop {
            let err = match self.program_once(tables).await {
                Ok(n) => break n,
                Err(e) => e,
            };
            // Another controller may have taken the device between the primary check and the
            // write (the device tells the session on its stream, which has that message by
            // the time the refusal arrives): wait for it to hand the device back, as for a
            // device held at the start.
            let mut slot = self.session.lock().await;
            let demoted = match slot.as_mut() {
                Some(c) => matches!(c.still_primary().await, Ok(false)),
                None => false,
            };
            demotions += 1;
            if !demoted || demotions > 3 {
                // Otherwise the session may be what failed (a device that restarted before
                // its stream ended no longer knows it as primary): the next attempt opens
                // another. A refused batch costs one reconnection, which is rare enough.
                *slot = None;
                return Err(err);
            }
        };
        tracing::info!(version = %tables.version, updates = n, "routing tables written over P4Runtime");
        Ok(())
    }

    /// The device still runs the NexRoute pipeline this agent loaded (its cookie). A
    /// restarted dataplane has no pipeline, hence no tables.
    async fn still_programmed(&self) -> Option<bool> {
        let mut slot = self.session.lock().await;
        let c = self.open(&mut slot).await.ok()?;
        match c.pipeline_cookie().await {
            Ok(cookie) => Some(cookie == Some(PIPELINE_COOKIE)),
            Err(_) => {
                *slot = None;
                None
            }
        }
    }
}
