//! NexStream: the Nexus overlay transport. One QUIC v1 connection (quinn, TLS 1.3, ALPN
//! `nexus/1`) multiplexes streams that each have their own delivery mode, under one
//! congestion controller and without head-of-line blocking between streams:
//!
//! | mode                 | QUIC mapping                                                  |
//! |----------------------|---------------------------------------------------------------|
//! | reliable-ordered     | one bidirectional stream; length-prefixed messages in order  |
//! | reliable-unordered   | one unidirectional stream per message                        |
//! | best-effort          | one RFC 9221 DATAGRAM frame per message, never retransmitted |
//! | partially reliable   | one unidirectional stream per message with a deadline; on expiry the sender resets it and the receiver stops it ([`partial`]) |
//!
//! A loss delays only the stream it hits; an expiry or a bad stream resets only that stream
//! ([`codes`]); the connection survives both.
//!
//! **Trust**: both sides present MICs and verify the peer's with `nexus_mic` inside the TLS
//! handshake ([`trust`]); refusals carry their reason in the QUIC close.
//!
//! **Resumption and replay**: rustls keeps session tickets in memory, so a repeat connection
//! resumes (no certificate exchange). With [`Config::zero_rtt`], [`Endpoint::connect_early`]
//! sends streams before the handshake completes; only streams whose preamble is marked
//! idempotent may travel in 0-RTT. A server refuses (stop code [`codes::REFUSED_0RTT`]) any
//! non-idempotent stream that arrived as 0-RTT data, because 0-RTT data can be replayed by an
//! attacker who captured it: idempotent requests (inference on fixed inputs) are harmless to
//! repeat, anything with side effects must wait one round trip. The client API enforces the
//! same rule before sending.

pub mod endpoint;
pub mod frame;
pub mod linkem;
pub mod metrics;
pub mod partial;
pub mod qlog;
pub mod testing;
pub mod trust;

pub use endpoint::{
    Accepting, Config, Congestion, Delivery, Endpoint, Incoming, Limits, MAX_ACK_DELAY, Message,
    OrderedRecv, OrderedSend, OrderedStream, Session, StreamError,
};
pub use frame::{Mode, Preamble};
pub use metrics::{Direction, Metrics, Tally, TallyDelta};
pub use partial::Expiry;
pub use trust::{Identity, MicRefusal, Trust, TrustError};

/// ALPN protocol id of NexStream.
pub const ALPN: &[u8] = b"nexus/1";

/// Application error codes used in stream resets/stops and connection closes.
pub mod codes {
    use quinn::VarInt;

    /// Normal close.
    pub const OK: VarInt = VarInt::from_u32(0);
    /// A partially reliable message passed its deadline.
    pub const EXPIRED: VarInt = VarInt::from_u32(1);
    /// The application cancelled the stream (either side).
    pub const CANCELLED: VarInt = VarInt::from_u32(2);
    /// Bytes that do not decode.
    pub const BAD_FRAME: VarInt = VarInt::from_u32(3);
    /// A message, metadata or tensor over the limit.
    pub const TOO_LARGE: VarInt = VarInt::from_u32(4);
    /// Unknown delivery mode, or a mode on the wrong kind of stream.
    pub const UNKNOWN_MODE: VarInt = VarInt::from_u32(5);
    /// A non-idempotent stream arrived in 0-RTT.
    pub const REFUSED_0RTT: VarInt = VarInt::from_u32(6);
    /// The peer's MIC was refused (connection close).
    pub const MIC_REFUSED: VarInt = VarInt::from_u32(7);
    /// The endpoint is draining (connection close).
    pub const SHUTDOWN: VarInt = VarInt::from_u32(8);
    /// The peer did not send a preamble in time.
    pub const STALLED: VarInt = VarInt::from_u32(9);
    /// The application refused the request (unknown method, wrong kind).
    pub const REFUSED: VarInt = VarInt::from_u32(10);
}
