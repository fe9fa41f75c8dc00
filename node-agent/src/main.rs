//! `nexus-agent`: see [`nexus_agent::cli::AgentArgs`].

use clap::Parser;
use nexus_agent::cli::{AgentArgs, init_tracing, run_agent};

fn main() -> anyhow::Result<()> {
    // The kube client uses rustls: pick its crypto provider before anything connects. An error
    // only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = AgentArgs::parse();
    init_tracing(args.log_json);
    run_agent(args)
}
