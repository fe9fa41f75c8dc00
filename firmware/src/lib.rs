//! NexLink wire primitives and signed NIC firmware bundles.
//!
//! - [`header`]: the 64-byte NexLink AI metadata header — zero-copy parser and encoder (`no_std`,
//!   no allocation), because it runs per frame on the datapath.
//! - [`ring`]: a lock-free single-producer/single-consumer descriptor ring with const-generic
//!   storage (`no_std`, no allocation, no `unsafe`).
//! - [`bundle`] (feature `std`, on by default): the signed firmware bundle container, its trust
//!   store and compatibility checks, used by `nexctl firmware` and the node agent.
//!
//! The crate has two error types on purpose: [`FrameError`] is `Copy` and allocation-free for the
//! `no_std` datapath, [`BundleError`] carries context (key names, JSON errors) for control-plane use.
#![cfg_attr(not(feature = "std"), no_std)]

mod error;
pub mod header;
pub mod ring;

#[cfg(feature = "std")]
pub mod bundle;

#[cfg(feature = "std")]
pub use error::BundleError;
pub use error::FrameError;
pub use header::{DType, DeliveryMode, Flags, Frame, HEADER_LEN, Header, HeaderView};
pub use ring::{Consumer, Descriptor, Producer, Ring};
