//! OpenAI-compatible HTTP gateway: `POST /v1/chat/completions` (plain JSON or server-sent
//! events with `"stream": true`) translated into NexAPI calls to a Nexus endpoint, so
//! existing OpenAI clients reach any model on the fabric. The gateway authenticates to the
//! fabric with its node's MIC; HTTP clients are expected on a trusted port (it binds the
//! node's HTTP address, loopback by default).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use nexus_api::{Client, InferRequest};
use nexus_stream::{Config, Endpoint, Identity, Metrics};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

/// The subset of the OpenAI chat request the gateway understands.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Model name.
    #[serde(default)]
    pub model: String,
    /// Conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
}

/// The prompt sent to the model: the conversation as `role: content` lines (the last user
/// message alone when there is only one message).
pub fn prompt_of(messages: &[ChatMessage]) -> String {
    if let [only] = messages {
        return only.content.clone();
    }
    messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Gateway state: a lazily (re)connected NexAPI client.
#[derive(Debug)]
pub struct Gateway {
    endpoint: Endpoint,
    target: SocketAddr,
    client: Mutex<Option<Arc<Client>>>,
}

impl Gateway {
    /// A gateway dialing `target` with `identity`.
    pub fn new(identity: &Identity, target: SocketAddr) -> anyhow::Result<Arc<Self>> {
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let endpoint =
            Endpoint::client(bind, identity, &Config::default(), Arc::new(Metrics::new()))?;
        Ok(Arc::new(Self {
            endpoint,
            target,
            client: Mutex::new(None),
        }))
    }

    /// The endpoint it dials with (to reload its MIC).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn client(&self) -> Result<Arc<Client>, nexus_api::ApiError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && c.session().connection().close_reason().is_none()
        {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Client::connect(&self.endpoint, self.target).await?);
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }
}

/// The gateway's routes.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(gw)
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "nexus_error"}})),
    )
        .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn chat(State(gw): State<Arc<Gateway>>, Json(req): Json<ChatRequest>) -> Response {
    let infer = InferRequest {
        model: req.model.clone(),
        prompt: prompt_of(&req.messages),
        max_tokens: req.max_tokens.unwrap_or(64).min(8192),
    };
    let client = match gw.client().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "gateway cannot reach the fabric");
            return error(StatusCode::BAD_GATEWAY, "model endpoint unreachable");
        }
    };
    let id = format!(
        "chatcmpl-{:016x}",
        nexus_api::fnv64(infer.prompt.as_bytes()) ^ now()
    );
    let created = now();
    if !req.stream {
        return match client.infer(&infer).await {
            Ok(r) => Json(json!({
                "id": id, "object": "chat.completion", "created": created, "model": r.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": infer.prompt.split_whitespace().count(),
                          "completion_tokens": r.tokens,
                          "total_tokens": infer.prompt.split_whitespace().count() as u64 + u64::from(r.tokens)}
            }))
            .into_response(),
            Err(e) => {
                tracing::info!(error = %e, "inference failed");
                error(StatusCode::BAD_GATEWAY, "inference failed")
            }
        };
    }
    let tokens = match client.stream_tokens(&infer).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "token stream failed");
            return error(StatusCode::BAD_GATEWAY, "inference failed");
        }
    };
    let model = req.model;
    let chunk = move |delta: serde_json::Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    };
    // Dropping the SSE stream (HTTP client gone) drops the TokenStream, which stops the
    // NexStream stream and so the model's work.
    let events = futures::stream::unfold(
        (Some(tokens), false, chunk),
        |(tokens, done, chunk)| async move {
            if done {
                return None;
            }
            let Some(mut t) = tokens else {
                return Some((
                    Ok::<_, Infallible>(Event::default().data("[DONE]")),
                    (None, true, chunk),
                ));
            };
            match t.next().await {
                Some(Ok(tok)) => {
                    let e = Event::default().data(chunk(json!({"content": tok}), None));
                    Some((Ok(e), (Some(t), false, chunk)))
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "token stream ended with an error");
                    let e = Event::default().data(chunk(json!({}), Some("error")));
                    Some((Ok(e), (None, false, chunk)))
                }
                None => {
                    let e = Event::default().data(chunk(json!({}), Some("stop")));
                    Some((Ok(e), (None, false, chunk)))
                }
            }
        },
    );
    Sse::new(events).into_response()
}
