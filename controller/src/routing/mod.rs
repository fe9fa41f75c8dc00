//! The RoutingDomain controller: admits each domain's endpoints on the evidence of their MICs
//! and proofs (`nexus_route::admission`), compiles every domain naming a Fabric into that
//! Fabric's NexRoute tables (`nexus_p4::compile`), pushes the tables to the Fabric's node
//! agents, which program them into their dataplanes over P4Runtime, and reports per domain what
//! was admitted, rejected and programmed.
//!
//! - [`core`]: the decisions, pure.
//! - [`local`]: local mode (`nexctl up`, bare metal): domains from manifests, MICs from
//!   Secret-layout directories, CRL and Groth16 verifying key from the CA's REST API, tables
//!   pushed over the fleet protocol.

pub mod core;
pub mod local;
