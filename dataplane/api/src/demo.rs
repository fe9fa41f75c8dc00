//! The demo model: a deterministic toy generator, so a first call works out of the box and
//! tests can check exact outputs. Tokens are words from a fixed vocabulary picked by an LCG
//! seeded with the FNV-1a hash of the prompt.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::server::{Model, TokenSink};
use crate::{API_VERSION, ApiError, Binding, Capabilities, InferRequest, InferResponse, fnv64};

const VOCAB: [&str; 32] = [
    "the", "model", "routes", "tokens", "across", "a", "fabric", "of", "trusted", "agents", "with",
    "low", "latency", "and", "verified", "identity", "every", "stream", "has", "its", "own",
    "delivery", "mode", "so", "no", "message", "waits", "behind", "another", "tensor", "quickly",
    "today",
];

/// A deterministic toy language model.
#[derive(Debug, Clone)]
pub struct DemoModel {
    /// Model name reported in answers.
    pub name: String,
    /// Pause between streamed tokens (zero: as fast as possible).
    pub token_interval: Duration,
    /// Largest tensor accepted.
    pub max_tensor: u64,
}

impl Default for DemoModel {
    fn default() -> Self {
        Self {
            name: "demo".into(),
            token_interval: Duration::ZERO,
            max_tensor: 256 << 20,
        }
    }
}

/// The `i`-th token the demo model produces for `prompt`.
pub fn token(prompt: &str, i: u32) -> &'static str {
    let mut x = fnv64(prompt.as_bytes()) ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    VOCAB[(x % VOCAB.len() as u64) as usize]
}

/// The whole text the demo model produces.
pub fn complete(prompt: &str, max_tokens: u32) -> String {
    (0..max_tokens)
        .map(|i| token(prompt, i))
        .collect::<Vec<_>>()
        .join(" ")
}

impl DemoModel {
    fn answer(&self, req: &InferRequest) -> InferResponse {
        InferResponse {
            model: self.name.clone(),
            text: complete(&req.prompt, req.max_tokens),
            tokens: req.max_tokens,
        }
    }
}

fn rpc_result(id: &Value, result: Value) -> Bytes {
    Bytes::from(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Bytes {
    Bytes::from(
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            .to_string(),
    )
}

impl Model for DemoModel {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            agent: format!("nexus demo model {}", self.name),
            api_version: API_VERSION,
            ops: ["infer", "tokens", "tensor", "jsonrpc"]
                .map(String::from)
                .to_vec(),
            models: vec![self.name.clone()],
            jsonrpc: vec!["mcp".into(), "a2a".into()],
            max_tensor: self.max_tensor,
            ..Capabilities::default()
        }
    }

    async fn infer(&self, request: Bytes) -> Result<Bytes, ApiError> {
        let req: InferRequest = serde_json::from_slice(&request)?;
        Ok(serde_json::to_vec(&self.answer(&req))?.into())
    }

    async fn generate(&self, request: Bytes, sink: &mut TokenSink<'_>) -> Result<(), ApiError> {
        let req: InferRequest = serde_json::from_slice(&request)?;
        for i in 0..req.max_tokens {
            let t = token(&req.prompt, i);
            if i == 0 {
                sink.send(t).await?;
            } else {
                sink.send(&format!(" {t}")).await?;
            }
            if !self.token_interval.is_zero() {
                tokio::time::sleep(self.token_interval).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    async fn jsonrpc(
        &self,
        binding: Binding,
        method: &str,
        message: Bytes,
    ) -> Result<Option<Bytes>, ApiError> {
        let v: Value = serde_json::from_slice(&message)?;
        let Some(id) = v.get("id") else {
            return Ok(None); // notification
        };
        let params = v.get("params").cloned().unwrap_or(Value::Null);
        let reply = match (binding, method) {
            (Binding::Mcp, "initialize") => rpc_result(
                id,
                json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                       "serverInfo": {"name": self.name, "version": "1.0.0"}}),
            ),
            (Binding::Mcp, "tools/list") => rpc_result(
                id,
                json!({"tools": [{"name": "complete", "description": "Complete a prompt",
                       "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}},
                                       "required": ["prompt"]}}]}),
            ),
            (Binding::Mcp, "tools/call") => {
                let prompt = params
                    .pointer("/arguments/prompt")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if params.get("name").and_then(Value::as_str) == Some("complete") {
                    rpc_result(
                        id,
                        json!({"content": [{"type": "text", "text": complete(prompt, 8)}]}),
                    )
                } else {
                    rpc_error(id, -32602, "unknown tool")
                }
            }
            (Binding::A2a, "message/send") => {
                let text = params
                    .pointer("/message/parts/0/text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                rpc_result(
                    id,
                    json!({"kind": "message", "role": "agent", "messageId": format!("demo-{}", fnv64(text.as_bytes())),
                           "parts": [{"kind": "text", "text": complete(text, 8)}]}),
                )
            }
            _ => rpc_error(id, -32601, "method not found"),
        };
        Ok(Some(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(complete("hello", 5), complete("hello", 5));
        assert_ne!(complete("hello", 5), complete("world", 5));
        assert_eq!(complete("x", 3).split(' ').count(), 3);
    }
}
