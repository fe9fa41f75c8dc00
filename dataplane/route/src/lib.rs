//! NexRoute: routing by capability instead of by host name.
//!
//! - [`sad`]: Semantic Address Descriptors — the compact, versioned binary encoding a
//!   capability-addressed frame carries after its NexLink header, with a zero-copy decoder
//!   ([`SadView`]). This crate **owns** that wire format.
//! - [`advert`]: endpoint advertisements as the resolver sees them, and descriptors written with
//!   names ([`DescriptorSpec`]).
//! - [`resolver`]: matches a descriptor against a domain's admitted advertisements and picks by
//!   weighted score with multipath fan-out and live load feedback ([`Resolver`], [`LoadTable`]).
//! - [`admission`]: decides which endpoints of a RoutingDomain enter the routing table, from
//!   their MIC chains (verified with `nexus-mic`) and zero-knowledge proofs (verified with
//!   `nexus-zk` against the commitment in the MIC).
//! - [`import`]: endpoint advertisements from the formats agents already publish — A2A Agent
//!   Cards and MCP `server.json`.
//!
//! Feature `control-plane` (default) adds what needs the CRD, MIC and zero-knowledge crates:
//! [`DescriptorSpec`], `Advertisement::from_crd`, [`admission`] and [`import`]. Without it the
//! crate is the descriptor codec and the resolver alone (what the fuzz target builds).
//!
//! Everything here is pure: no I/O, no clock (time is passed in), so the dataplane, the
//! RoutingDomain controller and `nexctl` share one implementation. The P4 table compiler lives
//! in `nexus-p4`, next to the program whose tables it fills.
//!
//! ```
//! use nexus_route::{DescriptorSpec, SadView};
//!
//! # fn main() -> Result<(), nexus_route::Error> {
//! let spec: DescriptorSpec = serde_json::from_str(
//!     r#"{"capabilities": ["code-generation"], "minContextWindow": 128000, "maxLatencyMs": 200}"#,
//! )?;
//! let bytes = spec.to_descriptor()?.to_bytes()?;
//! let view = SadView::parse_exact(&bytes)?; // zero-copy, every field checked
//! assert_eq!(view.min_context(), 128_000);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "control-plane")]
pub mod admission;
pub mod advert;
pub mod cputime;
mod error;
pub mod id;
#[cfg(feature = "control-plane")]
pub mod import;
pub mod resolver;
pub mod sad;
#[cfg(feature = "control-plane")]
pub mod spec;

pub use advert::Advertisement;
pub use error::{Error, SadError};
pub use resolver::{
    EndpointIdx, LoadReport, LoadTable, NoRoute, Resolver, ResolverConfig, Scratch, Strategy,
};
pub use sad::{Descriptor, Modalities, ProofBound, SadView, TrustLevel};
#[cfg(feature = "control-plane")]
pub use spec::{DescriptorSpec, ProofSpec};
