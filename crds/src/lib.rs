//! The Nexus Kubernetes API, group `nexus.dev`, version `v1alpha1`: the product's public contract.
//!
//! | kind | scope | written by |
//! |---|---|---|
//! | [`Fabric`] | cluster | platform team (spec), controller (status) |
//! | [`NexusNode`] | cluster | controller (spec), node agent (status) |
//! | [`RoutingDomain`] | namespace | tenant (spec), controller (status) |
//! | [`ModelIdentity`] | namespace | tenant (spec), controller (status) |
//!
//! Invariant: this crate knows nothing of controllers, agents or clients; it only describes
//! resources, generates their CustomResourceDefinitions ([`crd`]) and, behind the `validate`
//! feature, checks manifests offline the way an API server would ([`validate`]).

pub mod common;
pub mod crd;
pub mod fabric;
pub mod identity;
pub mod node;
pub mod routing;
#[cfg(feature = "validate")]
pub mod validate;

pub use fabric::{Fabric, FabricSpec, FabricStatus};
pub use identity::{ModelIdentity, ModelIdentitySpec, ModelIdentityStatus};
pub use node::{NexusNode, NexusNodeSpec, NexusNodeStatus};
pub use routing::{RoutingDomain, RoutingDomainSpec, RoutingDomainStatus};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A duration field does not parse as a Go-style duration.
    #[error("invalid duration {0:?}: expected a Go-style duration such as 90s, 10m or 1h30m")]
    InvalidDuration(String),
    /// An int-or-string budget is neither a positive integer nor a percentage from 1% to 100%.
    #[error("invalid budget {0:?}: expected an integer >= 1 or a percentage from 1% to 100%")]
    InvalidBudget(String),
    /// A generated CRD could not be serialised.
    #[error("cannot serialise CRD {name}: {message}")]
    Serialize {
        /// CRD name.
        name: String,
        /// What went wrong.
        message: String,
    },
}
