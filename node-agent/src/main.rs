//! `nexus-agent`: see [`nexus_agent::cli::AgentArgs`].

use clap::Parser;
use nexus_agent::cli::{AgentArgs, init_tracing, run_agent};

fn main() -> anyhow::Result<()> {
    let args = AgentArgs::parse();
    init_tracing(args.log_json);
    run_agent(args)
}
