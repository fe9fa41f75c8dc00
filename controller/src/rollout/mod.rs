//! The Fabric rollout controller. [`plan`] is the pure planner; the adapter (cordon, drain,
//! `NexusNode.spec` writes, Fabric status) drives it.

pub mod plan;
pub mod view;
