//! The RoutingDomain controller: admits each domain's endpoints on the evidence of their MICs
//! and proofs (`nexus_route::admission`), compiles every domain naming a Fabric into that
//! Fabric's NexRoute tables (`nexus_p4::compile`), pushes the tables to the Fabric's node
//! agents, which program them into their dataplanes over P4Runtime, and reports per domain what
//! was admitted, rejected and programmed.
//!
//! - [`core`]: the decisions, pure.
//! - [`evidence`]: what both drivers admit with — trust anchors, the CA's CRL and Groth16
//!   verifying key, each endpoint's MIC chain and proofs in the Secret layout.
//! - [`local`]: local mode (`nexctl up`, bare metal): domains from manifests, MICs from
//!   Secret-layout directories, tables pushed over the fleet protocol.
//! - [`kube`]: kube mode (`nexus-controller rollout`): domains, NexusNodes, ModelIdentities and
//!   their Secrets from watches (reflector stores; a pass on a change and on a timer), each node
//!   told its table version in `NexusNode.spec.routing`, tables served at
//!   `/v1/routing/{version}`, status through the status subresource.

pub mod core;
pub mod evidence;
pub mod kube;
pub mod local;
