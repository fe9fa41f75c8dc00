//! NexAPI: the AI primitives of Nexus on top of NexStream.
//!
//! | operation            | NexStream mapping                                                        |
//! |----------------------|--------------------------------------------------------------------------|
//! | `hello` (capabilities) | one reliable-ordered stream, one JSON [`Capabilities`] each way        |
//! | `infer` (unary)      | one reliable-ordered stream: request message, response message, FIN      |
//! | `tokens`             | one reliable-ordered stream: request, then one message per token as soon as it exists; cancellation = `STOP_SENDING` (client) or `RESET_STREAM` (server) |
//! | `tensor`             | a control stream carrying the 64-byte NexLink header ([`nexus_firmware::header`]) and shard size, plus one bulk stream per shard read straight into its place in one preallocated buffer |
//! | `jsonrpc` (MCP, A2A) | one reliable-ordered stream per exchange; the JSON-RPC message travels unchanged, `method` and the tool/skill `name` are lifted into the stream metadata ([`meta`]) |
//!
//! The client SDK is [`Client`]: `Client::connect`, [`Client::infer`],
//! [`Client::stream_tokens`], [`Client::send_tensor`], [`Client::jsonrpc`]. Servers implement
//! [`Model`] and run [`serve`]; [`demo::DemoModel`] is a deterministic toy generator.

pub mod client;
pub mod demo;
pub mod meta;
pub mod server;
pub mod tensor;

use serde::{Deserialize, Serialize};

pub use client::{Client, TokenStream};
pub use meta::Meta;
/// The NexLink header that describes a tensor (dtype, shape), as [`Client::send_tensor`] takes it.
pub use nexus_firmware::header::Header;
pub use server::{Hop, Model, Route, Router, TokenSink, serve, serve_routed, serve_session};

/// Version of the NexAPI operations.
pub const API_VERSION: u32 = 1;

/// Errors of NexAPI calls.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The transport failed.
    #[error(transparent)]
    Stream(#[from] nexus_stream::StreamError),
    /// A body is not the JSON expected.
    #[error("bad message: {0}")]
    BadMessage(String),
    /// Metadata does not parse.
    #[error(transparent)]
    Meta(#[from] meta::MetaError),
    /// The NexLink header is invalid.
    #[error("tensor header: {0}")]
    Header(nexus_firmware::FrameError),
    /// Over a limit (tensor size, shard count).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The operation is unknown to the peer or refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer cancelled the stream (code from [`nexus_stream::codes`]).
    #[error("cancelled by peer (code {0})")]
    Cancelled(u64),
    /// The peer ended the stream early.
    #[error("stream ended before the answer")]
    Ended,
    /// The model failed.
    #[error("model: {0}")]
    Model(String),
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::BadMessage(e.to_string())
    }
}

/// What an agent or model offers; exchanged by `hello` right after connecting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capabilities {
    /// Agent or model name (informative; identity is the MIC).
    pub agent: String,
    /// NexAPI version.
    pub api_version: u32,
    /// Operations served: `infer`, `tokens`, `tensor`, `jsonrpc`.
    pub ops: Vec<String>,
    /// Models served.
    pub models: Vec<String>,
    /// JSON-RPC bindings served: `mcp`, `a2a`.
    pub jsonrpc: Vec<String>,
    /// Largest tensor accepted, bytes.
    pub max_tensor: u64,
    /// Bytes a sender may have in flight on one stream to this endpoint (its QUIC stream
    /// receive window); senders size tensor shards by it. Filled in by the server from its
    /// transport limits; 0 when not said (older peers).
    #[serde(default)]
    pub stream_window: u64,
}

impl Capabilities {
    /// What both sides can use: operations and bindings in common, the smaller tensor limit.
    pub fn negotiate(&self, other: &Capabilities) -> Capabilities {
        let common = |a: &[String], b: &[String]| {
            a.iter()
                .filter(|x| b.contains(x))
                .cloned()
                .collect::<Vec<_>>()
        };
        Capabilities {
            agent: other.agent.clone(),
            api_version: self.api_version.min(other.api_version),
            ops: common(&self.ops, &other.ops),
            models: other.models.clone(),
            jsonrpc: common(&self.jsonrpc, &other.jsonrpc),
            max_tensor: self.max_tensor.min(other.max_tensor),
            // What matters for sending to the other side is its window.
            stream_window: other.stream_window,
        }
    }
}

/// A unary inference request (JSON body of `infer` and `tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Model name; empty for the endpoint's default.
    #[serde(default)]
    pub model: String,
    /// Prompt text.
    pub prompt: String,
    /// Most tokens to generate.
    pub max_tokens: u32,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferResponse {
    /// Model that answered.
    pub model: String,
    /// Generated text.
    pub text: String,
    /// Tokens generated.
    pub tokens: u32,
}

/// Acknowledgement of a tensor transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorAck {
    /// Bytes received.
    pub bytes: u64,
    /// Shards received.
    pub shards: u32,
    /// FNV-1a 64 of the payload when the sender asked for it (metadata `checksum=fnv64`,
    /// [`Client::send_tensor_checked`]), so it can check the reassembly; 0 otherwise. Always
    /// present, so acks stay readable by clients that predate the opt-in.
    pub fnv64: u64,
}

/// JSON-RPC binding carried on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Model Context Protocol.
    Mcp,
    /// Agent2Agent.
    A2a,
}

impl Binding {
    /// Metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Binding::Mcp => "mcp",
            Binding::A2a => "a2a",
        }
    }

    /// Parses a metadata value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mcp" => Some(Binding::Mcp),
            "a2a" => Some(Binding::A2a),
            _ => None,
        }
    }
}

/// FNV-1a 64 (cheap integrity check of reassembled tensors in tests and acks).
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Lifts `method` and a routing `name` out of a JSON-RPC message without changing it: MCP
/// `tools/call` and `prompts/get` carry `params.name`, `resources/read` carries
/// `params.uri`; A2A carries `params.message.metadata.skill` when a client names a skill.
pub fn lift_jsonrpc(msg: &[u8]) -> Result<(String, Option<String>, bool), ApiError> {
    let v: serde_json::Value = serde_json::from_slice(msg)?;
    let method = v
        .get("method")
        .and_then(|m| m.as_str())
        .ok_or_else(|| ApiError::BadMessage("JSON-RPC message without a method".into()))?
        .to_owned();
    let params = v.get("params");
    let name = params
        .and_then(|p| p.get("name").or_else(|| p.get("uri")))
        .or_else(|| params.and_then(|p| p.pointer("/message/metadata/skill")))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let expects_reply = v.get("id").is_some();
    Ok((method, name, expects_reply))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn negotiation_keeps_what_both_support() {
        let a = Capabilities {
            agent: "a".into(),
            api_version: 1,
            ops: vec!["infer".into(), "tensor".into()],
            models: vec![],
            jsonrpc: vec!["mcp".into()],
            max_tensor: 100,
            stream_window: 1 << 20,
        };
        let b = Capabilities {
            agent: "b".into(),
            api_version: 1,
            ops: vec!["infer".into(), "tokens".into()],
            models: vec!["toy".into()],
            jsonrpc: vec!["mcp".into(), "a2a".into()],
            max_tensor: 50,
            stream_window: 8 << 20,
        };
        let n = a.negotiate(&b);
        assert_eq!(n.ops, vec!["infer".to_string()]);
        assert_eq!(n.jsonrpc, vec!["mcp".to_string()]);
        assert_eq!(n.max_tensor, 50);
        assert_eq!(n.models, vec!["toy".to_string()]);
        // Sending to b is bounded by b's window.
        assert_eq!(n.stream_window, 8 << 20);
    }

    #[test]
    fn jsonrpc_lifting() {
        let (m, n, r) = lift_jsonrpc(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{}}}"#,
        )
        .unwrap();
        assert_eq!(
            (m.as_str(), n.as_deref(), r),
            ("tools/call", Some("search"), true)
        );
        let (m, n, r) =
            lift_jsonrpc(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(
            (m.as_str(), n, r),
            ("notifications/initialized", None, false)
        );
        assert!(lift_jsonrpc(b"{}").is_err());
        assert!(lift_jsonrpc(b"not json").is_err());
    }
}
