//! Programs the NexRoute tables the controller pushes into the node's dataplane through its
//! P4Runtime service — the same calls a controller makes to a hardware switch: become primary
//! for the device (arbitration by election id), load the NexRoute pipeline when the device has
//! none, then write only the difference to the pushed entities as one DATAPLANE_ATOMIC batch.
//! A refused batch leaves the device's previous tables in place; the reason goes back to the
//! controller in the agent's status.

use std::time::Duration;

use async_trait::async_trait;
use nexus_fleet_agent::RoutingTarget;
use nexus_fleet_api::v1::RoutingTables;
use nexus_p4::client::Controller;
use nexus_p4::compile::CompiledTables;
use nexus_p4::p4info::nexroute_p4info;
use nexus_p4::proto::p4::v1 as p4;
use prost::Message;

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
}

impl P4RuntimeTables {
    /// A target at `endpoint` for device `device_id` (election id 1).
    pub fn new(endpoint: impl Into<String>, device_id: u64) -> Self {
        Self {
            endpoint: endpoint.into(),
            device_id,
            election_id: 1,
        }
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
        // Another controller may hold the device for a moment (a reader with a higher
        // election id, a controller failing over): wait for it a little before refusing.
        let mut attempts = 0;
        let mut c = loop {
            let c = tokio::time::timeout(
                Duration::from_secs(10),
                Controller::connect(self.endpoint.clone(), self.device_id, self.election_id),
            )
            .await
            .map_err(|_| format!("P4Runtime at {} did not answer", self.endpoint))?
            .map_err(|e| format!("P4Runtime at {}: {e}", self.endpoint))?;
            if c.is_primary() {
                break c;
            }
            attempts += 1;
            if attempts >= PRIMARY_ATTEMPTS {
                return Err(format!(
                    "another controller is primary for device {} (election id {} lost)",
                    self.device_id, self.election_id
                ));
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
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
        let n = self.program_once(tables).await?;
        tracing::info!(version = %tables.version, updates = n, "routing tables written over P4Runtime");
        Ok(())
    }

    /// The device still runs the NexRoute pipeline this agent loaded (its cookie). A
    /// restarted dataplane has no pipeline, hence no tables.
    async fn still_programmed(&self) -> Option<bool> {
        let mut c = tokio::time::timeout(
            Duration::from_secs(5),
            Controller::connect(self.endpoint.clone(), self.device_id, self.election_id),
        )
        .await
        .ok()?
        .ok()?;
        let cookie = c.pipeline_cookie().await.ok()?;
        Some(cookie == Some(PIPELINE_COOKIE))
    }
}
