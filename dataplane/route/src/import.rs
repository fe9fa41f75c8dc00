//! Endpoint advertisements from the formats agents already publish.
//!
//! # A2A Agent Card (`/.well-known/agent-card.json`)
//!
//! | Agent Card                                   | RoutingDomain endpoint                          |
//! |----------------------------------------------|-------------------------------------------------|
//! | `name`                                       | `name` (lower-cased, non-`[a-z0-9-]` runs → `-`) |
//! | `url` (and each `additionalInterfaces[].url`) | `address` `host:port` (port from the scheme when absent); one endpoint per distinct address |
//! | `skills[].id`, `skills[].tags[]`             | `capability.capabilities` (normalised like names, deduplicated, at most 32) |
//! | `capabilities.streaming: true`               | adds capability `streaming`                      |
//! | `defaultInputModes`, `defaultOutputModes`, `skills[].inputModes/outputModes` (MIME types) | `capability.modalities`: `text/*`, `application/json` → text; `image/*` → image; `audio/*` → audio; `video/*` → video; `application/octet-stream`, `application/x-tensor*` → tensor |
//! | —                                            | `capability.modelFamily: agent`                  |
//! | —                                            | `modelIdentityRef.name` = the agent's normalised name (shared by its endpoints): a ModelIdentity of that name must exist for admission |
//!
//! # MCP `server.json` (the MCP registry's format)
//!
//! | server.json                                   | RoutingDomain endpoint                          |
//! |-----------------------------------------------|-------------------------------------------------|
//! | `name` (`com.example/weather`)                | `name` from the part after `/` (normalised)      |
//! | `remotes[]` of type `streamable-http` or `sse` | one endpoint per remote: `address` from its `url` |
//! | `packages[]` (stdio only)                      | no endpoint: a stdio server has no network address (reported as an error when nothing else is left) |
//! | —                                             | capabilities `tool-use` and `mcp-server`, plus any listed under `_meta["io.modelcontextprotocol.registry/publisher-provided"]["dev.nexus/capabilities"]` |
//! | —                                             | `modelFamily: mcp-server`, modalities `[text]`   |
//!
//! Neither format states context windows, latency or prices: those stay unset (an endpoint
//! without a latency SLA never matches a descriptor with a latency bound). Nothing imported is
//! trusted: admission still requires each endpoint's MIC to attest what it advertises.

use std::collections::BTreeSet;

use nexus_crds::common::LocalObjectReference;
use nexus_crds::routing::{CapabilityDescriptor, EndpointAdvertisement, Modality};
use serde::Deserialize;

use crate::Error;

/// Largest import document accepted.
pub const MAX_IMPORT_LEN: usize = 1 << 20;

/// Which format a document is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A2A Agent Card.
    A2aAgentCard,
    /// MCP registry `server.json`.
    McpServerJson,
}

/// Guesses the format: MCP documents carry a `$schema` under `modelcontextprotocol.io` or a
/// `remotes`/`packages` list; Agent Cards carry `skills` or `url`.
pub fn detect(value: &serde_json::Value) -> Option<Format> {
    let obj = value.as_object()?;
    let schema = obj.get("$schema").and_then(|s| s.as_str()).unwrap_or("");
    if schema.contains("modelcontextprotocol")
        || obj.contains_key("remotes")
        || obj.contains_key("packages")
    {
        Some(Format::McpServerJson)
    } else if obj.contains_key("skills") || obj.contains_key("url") {
        Some(Format::A2aAgentCard)
    } else {
        None
    }
}

/// Normalises a free-form name into a DNS label (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`, ≤ 63).
pub fn normalize_name(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut dash = false;
    for ch in s.chars().flat_map(char::to_lowercase) {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            out.push(ch);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    let mut out: String = out.trim_end_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

/// `host:port` from a URL (`https://h/x` → `h:443`, `http://h:8080` → `h:8080`).
pub fn address_from_url(url: &str) -> Result<String, Error> {
    let bad = |m: &str| Error::Import(format!("url `{url}`: {m}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" | "grpcs" => 443,
        "http" | "ws" | "grpc" => 80,
        _ => return Err(bad("scheme must be http(s), ws(s) or grpc(s)")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None if tail.is_empty() => default_port,
            None => return Err(bad("junk after IPv6 address")),
        };
        (format!("[{h}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority.to_owned(), default_port),
        }
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':');
    if host.is_empty() || !host.chars().all(ok) || host.len() > 255 {
        return Err(bad("host has characters an overlay address cannot carry"));
    }
    Ok(format!("{host}:{port}"))
}

fn modality_of_mime(mime: &str) -> Option<Modality> {
    let m = mime.trim().to_ascii_lowercase();
    let (top, sub) = m.split_once('/').unwrap_or((m.as_str(), ""));
    match top {
        "text" => Some(Modality::Text),
        "image" => Some(Modality::Image),
        "audio" => Some(Modality::Audio),
        "video" => Some(Modality::Video),
        "application" if sub == "json" || sub.ends_with("+json") => Some(Modality::Text),
        "application" if sub == "octet-stream" || sub.starts_with("x-tensor") => {
            Some(Modality::Tensor)
        }
        _ => None,
    }
}

fn sorted_modalities(set: &BTreeSet<u8>) -> Vec<Modality> {
    let all = [
        Modality::Text,
        Modality::Image,
        Modality::Audio,
        Modality::Video,
        Modality::Tensor,
    ];
    set.iter()
        .filter_map(|&i| all.get(i as usize).copied())
        .collect()
}

fn modality_index(m: Modality) -> u8 {
    match m {
        Modality::Text => 0,
        Modality::Image => 1,
        Modality::Audio => 2,
        Modality::Video => 3,
        Modality::Tensor => 4,
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentCard {
    name: String,
    url: Option<String>,
    #[serde(default)]
    additional_interfaces: Vec<AgentInterface>,
    #[serde(default)]
    capabilities: AgentCapabilities,
    #[serde(default)]
    default_input_modes: Vec<String>,
    #[serde(default)]
    default_output_modes: Vec<String>,
    #[serde(default)]
    skills: Vec<AgentSkill>,
}

#[derive(Debug, Deserialize)]
struct AgentInterface {
    url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentCapabilities {
    #[serde(default)]
    streaming: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentSkill {
    id: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    input_modes: Vec<String>,
    #[serde(default)]
    output_modes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct McpServer {
    name: String,
    #[serde(default)]
    remotes: Vec<McpRemote>,
    #[serde(default)]
    packages: Vec<serde_json::Value>,
    #[serde(default, rename = "_meta")]
    meta: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct McpRemote {
    #[serde(rename = "type")]
    kind: String,
    url: String,
}

const MAX_CAPABILITIES: usize = 32;

fn endpoint(
    name: &str,
    identity: &str,
    address: String,
    capabilities: Vec<String>,
    family: &str,
    modalities: Vec<Modality>,
) -> EndpointAdvertisement {
    EndpointAdvertisement {
        name: name.to_owned(),
        address,
        capability: CapabilityDescriptor {
            capabilities,
            model_family: family.to_owned(),
            context_window: None,
            modalities,
            latency_sla_ms: None,
            cost_per_1k_tokens: None,
        },
        model_identity_ref: LocalObjectReference {
            name: identity.to_owned(),
        },
        weight: 100,
    }
}

/// Names for `n` endpoints from one document: `base`, then `base-2`, `base-3`, …
fn endpoint_names(base: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                base.to_owned()
            } else {
                let suffix = format!("-{}", i + 1);
                let keep = 63 - suffix.len();
                format!(
                    "{}{suffix}",
                    &base[..base.len().min(keep)].trim_end_matches('-')
                )
            }
        })
        .collect()
}

/// Imports an A2A Agent Card.
pub fn from_agent_card(json: &str) -> Result<Vec<EndpointAdvertisement>, Error> {
    check_len(json)?;
    let card: AgentCard = serde_json::from_str(json)?;
    let base = normalize_name(&card.name).ok_or_else(|| {
        Error::Import(format!(
            "agent name `{}` has no usable characters",
            card.name
        ))
    })?;
    let mut caps: Vec<String> = Vec::new();
    let push = |c: Option<String>, caps: &mut Vec<String>| {
        if let Some(c) = c
            && !caps.contains(&c)
            && caps.len() < MAX_CAPABILITIES
        {
            caps.push(c);
        }
    };
    let mut modes: BTreeSet<u8> = BTreeSet::new();
    for m in card
        .default_input_modes
        .iter()
        .chain(&card.default_output_modes)
    {
        if let Some(x) = modality_of_mime(m) {
            modes.insert(modality_index(x));
        }
    }
    for s in &card.skills {
        push(normalize_name(&s.id), &mut caps);
        for t in &s.tags {
            push(normalize_name(t), &mut caps);
        }
        for m in s.input_modes.iter().chain(&s.output_modes) {
            if let Some(x) = modality_of_mime(m) {
                modes.insert(modality_index(x));
            }
        }
    }
    if card.capabilities.streaming == Some(true) {
        push(Some("streaming".into()), &mut caps);
    }
    if caps.is_empty() {
        return Err(Error::Import(
            "the Agent Card lists no skills: nothing to route by".into(),
        ));
    }
    let mut addresses: Vec<String> = Vec::new();
    for url in card
        .url
        .iter()
        .chain(card.additional_interfaces.iter().map(|i| &i.url))
    {
        let a = address_from_url(url)?;
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    if addresses.is_empty() {
        return Err(Error::Import("the Agent Card has no url".into()));
    }
    let modalities = sorted_modalities(&modes);
    Ok(endpoint_names(&base, addresses.len())
        .into_iter()
        .zip(addresses)
        .map(|(name, addr)| {
            endpoint(
                &name,
                &base,
                addr,
                caps.clone(),
                "agent",
                modalities.clone(),
            )
        })
        .collect())
}

/// Imports an MCP registry `server.json`.
pub fn from_mcp_server_json(json: &str) -> Result<Vec<EndpointAdvertisement>, Error> {
    check_len(json)?;
    let server: McpServer = serde_json::from_str(json)?;
    let short = server.name.rsplit('/').next().unwrap_or(&server.name);
    let base = normalize_name(short).ok_or_else(|| {
        Error::Import(format!(
            "server name `{}` has no usable characters",
            server.name
        ))
    })?;
    let mut caps = vec!["tool-use".to_owned(), "mcp-server".to_owned()];
    if let Some(extra) = server
        .meta
        .as_ref()
        .and_then(|m| m.get("io.modelcontextprotocol.registry/publisher-provided"))
        .and_then(|p| p.get("dev.nexus/capabilities"))
        .and_then(|c| c.as_array())
    {
        for c in extra
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(normalize_name)
        {
            if !caps.contains(&c) && caps.len() < MAX_CAPABILITIES {
                caps.push(c);
            }
        }
    }
    let mut addresses: Vec<String> = Vec::new();
    for r in &server.remotes {
        if r.kind != "streamable-http" && r.kind != "sse" {
            return Err(Error::Import(format!(
                "remote type `{}` is neither streamable-http nor sse",
                r.kind
            )));
        }
        let a = address_from_url(&r.url)?;
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    if addresses.is_empty() {
        return Err(Error::Import(if server.packages.is_empty() {
            "server.json has no remotes".into()
        } else {
            "server.json lists only packages (stdio): a local server has no network address to route to; publish a remote".into()
        }));
    }
    Ok(endpoint_names(&base, addresses.len())
        .into_iter()
        .zip(addresses)
        .map(|(name, addr)| {
            endpoint(
                &name,
                &base,
                addr,
                caps.clone(),
                "mcp-server",
                vec![Modality::Text],
            )
        })
        .collect())
}

/// Imports either format, detected from the content.
pub fn import(json: &str) -> Result<(Format, Vec<EndpointAdvertisement>), Error> {
    check_len(json)?;
    let value: serde_json::Value = serde_json::from_str(json)?;
    match detect(&value) {
        Some(Format::A2aAgentCard) => Ok((Format::A2aAgentCard, from_agent_card(json)?)),
        Some(Format::McpServerJson) => Ok((Format::McpServerJson, from_mcp_server_json(json)?)),
        None => Err(Error::Import(
            "neither an A2A Agent Card (skills, url) nor an MCP server.json ($schema, remotes)"
                .into(),
        )),
    }
}

fn check_len(json: &str) -> Result<(), Error> {
    if json.len() > MAX_IMPORT_LEN {
        return Err(Error::Import(format!(
            "document of {} bytes exceeds the {MAX_IMPORT_LEN}-byte limit",
            json.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = r#"{
      "protocolVersion": "0.3.0",
      "name": "Acme Code Reviewer",
      "description": "Reviews pull requests",
      "url": "https://reviewer.acme.example/a2a/v1",
      "preferredTransport": "JSONRPC",
      "additionalInterfaces": [
        {"url": "https://reviewer.acme.example/a2a/v1", "transport": "JSONRPC"},
        {"url": "grpc://reviewer.acme.example:50051", "transport": "GRPC"}
      ],
      "version": "1.2.0",
      "capabilities": {"streaming": true, "pushNotifications": false},
      "defaultInputModes": ["text/plain", "application/json"],
      "defaultOutputModes": ["text/markdown"],
      "skills": [
        {"id": "code_review", "name": "Code review", "description": "Finds bugs",
         "tags": ["Code Generation", "python", "rust"], "inputModes": ["image/png"]}
      ]
    }"#;

    #[test]
    fn agent_card_maps_to_endpoints() {
        let eps = from_agent_card(CARD).expect("imports");
        assert_eq!(eps.len(), 2, "one endpoint per distinct address");
        assert_eq!(eps[0].name, "acme-code-reviewer");
        assert_eq!(eps[0].address, "reviewer.acme.example:443");
        assert_eq!(eps[1].name, "acme-code-reviewer-2");
        assert_eq!(eps[1].address, "reviewer.acme.example:50051");
        assert_eq!(
            eps[0].capability.capabilities,
            [
                "code-review",
                "code-generation",
                "python",
                "rust",
                "streaming"
            ]
        );
        assert_eq!(
            eps[0].capability.modalities,
            [Modality::Text, Modality::Image]
        );
        assert_eq!(eps[0].capability.model_family, "agent");
        assert_eq!(eps[0].model_identity_ref.name, "acme-code-reviewer");
        assert_eq!(
            eps[1].model_identity_ref.name, "acme-code-reviewer",
            "one identity per agent"
        );
        // Every imported endpoint converts into the resolver's type.
        for e in &eps {
            crate::Advertisement::from_crd(e).expect("valid advertisement");
        }
    }

    const SERVER: &str = r#"{
      "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
      "name": "com.example/acme-analytics",
      "title": "ACME Analytics",
      "description": "Real-time business intelligence",
      "version": "2.0.0",
      "remotes": [
        {"type": "streamable-http", "url": "https://analytics.example.com/mcp"},
        {"type": "sse", "url": "http://analytics.example.com:8080/sse"}
      ],
      "_meta": {"io.modelcontextprotocol.registry/publisher-provided":
                {"dev.nexus/capabilities": ["analytics", "SQL"]}}
    }"#;

    #[test]
    fn mcp_server_json_maps_to_endpoints() {
        let (fmt, eps) = import(SERVER).expect("imports");
        assert_eq!(fmt, Format::McpServerJson);
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].name, "acme-analytics");
        assert_eq!(eps[0].address, "analytics.example.com:443");
        assert_eq!(eps[1].address, "analytics.example.com:8080");
        assert_eq!(
            eps[0].capability.capabilities,
            ["tool-use", "mcp-server", "analytics", "sql"]
        );
    }

    #[test]
    fn stdio_only_servers_and_junk_are_refused() {
        let stdio = r#"{"name": "io.github.x/weather", "version": "1.0.0",
            "packages": [{"registryType": "npm", "identifier": "w", "version": "1.0.0",
                          "transport": {"type": "stdio"}}]}"#;
        let e = import(stdio).expect_err("no address");
        assert!(e.to_string().contains("stdio"), "{e}");
        assert!(import("[]").is_err());
        assert!(import("{}").is_err());
        assert!(import("not json").is_err());
        let bad_url = r#"{"name": "x", "url": "ftp://x", "skills": [{"id": "a"}]}"#;
        assert!(import(bad_url).is_err());
        let no_skills = r#"{"name": "x", "url": "https://x"}"#;
        assert!(import(no_skills).is_err());
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            address_from_url("http://[::1]:9000/x").expect("ok"),
            "[::1]:9000"
        );
        assert_eq!(
            address_from_url("https://u:p@h.example/").expect("ok"),
            "h.example:443"
        );
        assert!(address_from_url("https://h:99999").is_err());
        assert!(address_from_url("https://").is_err());
        assert_eq!(
            normalize_name("  Hello, World!! ").as_deref(),
            Some("hello-world")
        );
        assert_eq!(normalize_name("!!!"), None);
        assert_eq!(normalize_name(&"a".repeat(100)).map(|s| s.len()), Some(63));
    }
}
