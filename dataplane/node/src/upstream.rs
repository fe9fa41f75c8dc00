//! Upstream adapter: serves an existing OpenAI-compatible model server (vLLM, llama.cpp's
//! server, …) over NexAPI, so it joins a fabric unchanged. `infer` becomes a
//! `/v1/chat/completions` call; `tokens` a streamed one whose SSE deltas are forwarded as
//! tokens the moment they arrive. A cancelled token stream drops the HTTP response, which
//! closes the upstream connection and stops its generation.

use std::time::Duration;

use bytes::Bytes;
use nexus_api::server::TokenSink;
use nexus_api::{ApiError, Capabilities, InferRequest, InferResponse, Model};
use serde_json::{Value, json};

/// An OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct OpenAiUpstream {
    http: reqwest::Client,
    url: String,
    model: String,
}

impl OpenAiUpstream {
    /// `base` is the server's base URL (`http://host:port`); `model` the name sent upstream
    /// when a request names none.
    pub fn new(base: &str, model: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            url: format!("{}/v1/chat/completions", base.trim_end_matches('/')),
            model: model.to_owned(),
        })
    }

    fn body(&self, req: &InferRequest, stream: bool) -> Value {
        let model = if req.model.is_empty() {
            &self.model
        } else {
            &req.model
        };
        json!({"model": model, "messages": [{"role": "user", "content": req.prompt}],
               "max_tokens": req.max_tokens, "stream": stream})
    }

    async fn post(&self, body: &Value) -> Result<reqwest::Response, ApiError> {
        self.http
            .post(&self.url)
            .json(body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| ApiError::Model(format!("upstream: {e}")))
    }
}

/// Extracts the `delta.content` of SSE `data:` lines in `buf`, leaving an incomplete line;
/// returns the contents and whether `[DONE]` was seen.
pub fn drain_sse(buf: &mut String) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    while let Some(nl) = buf.find('\n') {
        let line: String = buf.drain(..=nl).collect();
        let line = line.trim();
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data)
            && let Some(c) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            && !c.is_empty()
        {
            out.push(c.to_owned());
        }
    }
    (out, done)
}

impl Model for OpenAiUpstream {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            agent: format!("openai upstream {}", self.url),
            api_version: nexus_api::API_VERSION,
            ops: vec!["infer".into(), "tokens".into()],
            models: vec![self.model.clone()],
            jsonrpc: vec![],
            max_tensor: 0,
            ..Capabilities::default()
        }
    }

    async fn infer(&self, request: Bytes) -> Result<Bytes, ApiError> {
        let req: InferRequest = serde_json::from_slice(&request)?;
        let v: Value = self
            .post(&self.body(&req, false))
            .await?
            .json()
            .await
            .map_err(|e| ApiError::Model(format!("upstream answer: {e}")))?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::Model("upstream answer without content".into()))?;
        let tokens = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| text.split_whitespace().count() as u64);
        let resp = InferResponse {
            model: v
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(&self.model)
                .to_owned(),
            text: text.to_owned(),
            tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        };
        Ok(serde_json::to_vec(&resp)?.into())
    }

    async fn generate(&self, request: Bytes, sink: &mut TokenSink<'_>) -> Result<(), ApiError> {
        let req: InferRequest = serde_json::from_slice(&request)?;
        let mut resp = self.post(&self.body(&req, true)).await?;
        let mut buf = String::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| ApiError::Model(format!("upstream stream: {e}")))?;
            let Some(chunk) = chunk else {
                return Ok(());
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.len() > 1 << 20 {
                return Err(ApiError::Model("upstream SSE line too long".into()));
            }
            let (tokens, done) = drain_sse(&mut buf);
            for t in tokens {
                sink.send(&t).await?;
            }
            if done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_are_parsed_incrementally() {
        let mut buf = String::from(
            "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\ndata: {\"cho",
        );
        let (t, done) = drain_sse(&mut buf);
        assert_eq!(t, vec!["he", "llo"]);
        assert!(!done);
        buf.push_str("ices\":[{\"delta\":{}}]}\ndata: [DONE]\n");
        let (t, done) = drain_sse(&mut buf);
        assert!(t.is_empty());
        assert!(done);
    }
}
