//! `nexctl import FILE`: endpoint advertisements from an A2A Agent Card or an MCP
//! `server.json`, printed as a RoutingDomain `endpoints:` list (or as a descriptor to call the
//! agent by capability). The mapping is documented in `nexus_route::import`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use nexus_route::import::{self, Format};

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The `endpoints:` list of a RoutingDomain spec (YAML).
    Endpoints,
    /// A Semantic Address Descriptor asking for the imported agent's first capability: its
    /// JSON form and its wire encoding in hex.
    Descriptor,
}

/// Source format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceFormat {
    /// Detect from the content.
    Auto,
    /// A2A Agent Card (`/.well-known/agent-card.json`).
    A2a,
    /// MCP registry `server.json`.
    Mcp,
}

/// Arguments of `nexctl import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Agent Card or server.json file (`-` for standard input).
    file: PathBuf,
    /// Source format.
    #[arg(long, value_enum, default_value = "auto")]
    format: SourceFormat,
    /// What to print.
    #[arg(long, value_enum, default_value = "endpoints")]
    output: Output,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let result = match args.format {
        SourceFormat::Auto => import::import(&text),
        SourceFormat::A2a => import::from_agent_card(&text).map(|e| (Format::A2aAgentCard, e)),
        SourceFormat::Mcp => {
            import::from_mcp_server_json(&text).map(|e| (Format::McpServerJson, e))
        }
    };
    let (format, endpoints) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", args.file.display());
            return Ok(ExitCode::from(1));
        }
    };
    match args.output {
        Output::Endpoints => {
            let what = match format {
                Format::A2aAgentCard => "A2A Agent Card",
                Format::McpServerJson => "MCP server.json",
            };
            println!("# Imported from {} ({what}).", args.file.display());
            println!(
                "# Admission needs a ModelIdentity per modelIdentityRef whose MIC attests these capabilities."
            );
            let doc = serde_json::json!({ "endpoints": endpoints });
            print!("{}", serde_saphyr::to_string(&doc)?);
        }
        Output::Descriptor => {
            let first = endpoints.first().context("nothing imported")?;
            let spec = nexus_route::DescriptorSpec {
                capabilities: first
                    .capability
                    .capabilities
                    .iter()
                    .take(1)
                    .cloned()
                    .collect(),
                model_family: Some(first.capability.model_family.clone()),
                modalities: first.capability.modalities.clone(),
                fan_out: 1,
                ..Default::default()
            };
            let bytes = spec.to_descriptor()?.to_bytes()?;
            println!("{}", serde_json::to_string_pretty(&spec)?);
            println!("# {} bytes: {}", bytes.len(), hex::encode(&bytes));
        }
    }
    Ok(ExitCode::SUCCESS)
}
