//! The Fabric rollout controller. [`plan`] is the pure planner and [`view`] the conversions
//! around it; [`fleet`] is the controller's picture of the fleet and the reconcile step;
//! [`server`] the fleet gRPC endpoint (`nexus.fleet.v1`); [`bundle`] fetches and verifies
//! bundles; [`local`] runs it all without Kubernetes. For the kube mode: [`apply`] (actions →
//! server-side applies, cordon, drain), [`drain`] (Eviction API, PDB-aware), [`lease`] (leader
//! election); [`reconcile`] the leader-elected Fabric reconciler that drives them.

pub mod apply;
pub mod bundle;
pub mod drain;
pub mod fleet;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod server;
pub mod view;
