//! The fleet push protocol, package `nexus.fleet.v1`: one bidirectional gRPC stream per node agent,
//! in the style of Envoy's ADS.
//!
//! The agent opens the `Connect` stream (`FleetClient::new(channel).connect(..)`; the generated
//! client has no `connect(endpoint)` constructor, which would clash with the RPC) and sends
//! [`v1::Register`] first; the controller ([`v1::fleet_server::Fleet`]) pushes versioned
//! [`v1::DesiredState`]s; the agent answers each with [`v1::Ack`] or [`v1::Nack`] and streams
//! [`v1::Progress`] and [`v1::Status`] (which doubles as the heartbeat). See
//! `proto/nexus/fleet/v1/fleet.proto` for the contract.
//!
//! Invariant: this crate holds only the wire contract, its conversions to and from the API types
//! (`nexus-crds`), and tiny helpers; no policy. It is the one place wire NICs and flash results
//! become `NicStatus` and `FlashResult`.

mod convert;

pub use convert::{flash_result, nic_status, routing_status};

/// `nexus.fleet.v1`: messages, the client and the server trait.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("nexus.fleet.v1");
}

/// Fully qualified gRPC service name.
pub const SERVICE_NAME: &str = "nexus.fleet.v1.Fleet";

impl v1::AgentMessage {
    /// Wraps a message body.
    pub fn of(msg: v1::agent_message::Msg) -> Self {
        Self { msg: Some(msg) }
    }
}

impl v1::ControllerMessage {
    /// Wraps a desired state.
    pub fn desired(d: v1::DesiredState) -> Self {
        Self {
            msg: Some(v1::controller_message::Msg::Desired(d)),
        }
    }

    /// Wraps routing tables.
    pub fn routing(t: v1::RoutingTables) -> Self {
        Self {
            msg: Some(v1::controller_message::Msg::Routing(t)),
        }
    }
}

impl v1::Nic {
    /// The bank that is not active, if the active one is known.
    pub fn inactive_bank(&self) -> Option<&v1::BankInfo> {
        let active = self.active_bank;
        if active == v1::Bank::Unspecified as i32 {
            return None;
        }
        self.banks.iter().find(|b| b.bank != active)
    }
}
