//! NexRoute on P4: the program, its P4Info, the software pipeline that runs it, the table
//! compiler that fills it, and the standard P4Runtime v1 service that programs it.
//!
//! - `nexroute.p4` / `nexroute.p4info.txtpb` (next to this crate): the P4_16 program (v1model)
//!   and its P4Info in protobuf text format ([`p4info::NEXROUTE_P4`],
//!   [`p4info::NEXROUTE_P4INFO_TEXT`]).
//! - [`proto`]: `p4.v1` and `p4.config.v1`, written from the P4Runtime specification with its
//!   package names and field numbers, so real P4Runtime controllers interoperate.
//! - [`p4info`]: reads P4Info (text format too) into a checked [`Schema`].
//! - [`store`]: the software tables, validated against the schema with the specification's
//!   error codes.
//! - [`pipeline`]: the program run in software over those tables ([`Snapshot::process`]).
//! - [`compile`]: admitted endpoints of a node's routing domains → table entries + version.
//! - [`server`]: the `p4.v1.P4Runtime` gRPC service over a [`Target`].
//! - [`client`]: a controller session and idempotent, atomic programming of compiled tables.
//!
//! # Serving and programming a node
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nexus_p4::{Target, server::P4RuntimeService, client::Controller};
//! let target = Target::new(1);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9559").await?;
//! let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
//! tokio::spawn(tonic::transport::Server::builder()
//!     .add_service(P4RuntimeService::server(target.clone()))
//!     .serve_with_incoming(incoming));
//! // The node agent (or any P4Runtime controller):
//! let mut c = Controller::connect("http://127.0.0.1:9559".into(), 1, 1).await?;
//! c.set_pipeline(nexus_p4::p4info::nexroute_p4info()?, 1).await?;
//! let schema = nexus_p4::Schema::new(nexus_p4::p4info::nexroute_p4info()?)?;
//! let compiled = nexus_p4::compile::compile(&schema, &[/* DomainInput per domain */])?;
//! c.apply(&compiled).await?;
//! // The dataplane, per batch of packets:
//! if let Some(p) = target.loaded() { let mut pkt = vec![0u8; 64]; let _ = p.process(&mut pkt); }
//! # Ok(()) }
//! ```

pub mod bytes;
pub mod client;
pub mod compile;
mod error;
pub mod p4info;
pub mod packet;
pub mod pipeline;
pub mod proto;
pub mod server;
pub mod store;

pub use error::{Code, Error, P4Error};
pub use p4info::Schema;
pub use pipeline::{DropReason, Snapshot, Verdict};
pub use server::{Loaded, Target};
