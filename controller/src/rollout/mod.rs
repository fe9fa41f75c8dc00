//! The Fabric rollout controller: one sans-IO core and two thin drivers.
//!
//! - [`core`]: the whole rollout as one pure `step` (Fabric, members, bundle, now → node specs,
//!   cordons, evictions, status, Events, requeue), over the planner [`plan`] and the conversions
//!   in [`view`].
//! - Local driver: [`fleet`] (the in-memory fleet fed by agents' gRPC streams), [`server`] (the
//!   `nexus.fleet.v1` endpoint), [`local`] (manifests from a directory, a JSON status API).
//! - Kube driver: [`reconcile`] (informer stores → `step` → writes, under the [`lease`]),
//!   [`apply`] (server-side applies), [`drain`] (pods, Eviction API without retries, cordons).
//!
//! Bundles come through `nexus-artifact` in both drivers.

pub mod apply;
pub mod core;
pub mod drain;
pub mod fleet;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod server;
pub mod view;
