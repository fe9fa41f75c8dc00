//! `nexctl`: the Nexus command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod call;
mod crds;
mod import;
mod mic;
mod up;
mod validate;

/// Command-line tool of Nexus, the control plane for AI-to-AI networking.
#[derive(Debug, Parser)]
#[command(name = "nexctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole Nexus stack on this machine: PostgreSQL (private cluster unless
    /// DATABASE_URL is set), the CA, the cloud API with a demo tenant. Ctrl-C stops it cleanly.
    Up(up::Args),
    /// Check Nexus manifests offline: schema, defaults, list rules and CEL rules, as the API
    /// server would. Exit code 0 when all are valid, 1 when any is not, 2 on usage errors.
    Validate(validate::Args),
    /// Print the CustomResourceDefinitions, or write one file per kind with --out.
    Crds(crds::Args),
    /// Model Identity Certificates: inspect, verify, issue.
    #[command(subcommand)]
    Mic(mic::MicCommand),
    /// Zero-knowledge claims over committed scores (Groth16, BN254).
    #[command(subcommand)]
    Zk(nexus_zk::cli::ZkCommand),
    /// Signed firmware bundles: keygen, pack, sign, inspect, verify.
    #[command(subcommand)]
    Firmware(nexus_agent::cli::FirmwareCommand),
    /// Show fabrics or nodes of a (local) controller.
    Get(nexus_controller::cli::GetArgs),
    /// Watch and steer firmware rollouts: status (live progress), pause, resume, rollback.
    Rollout(nexus_controller::cli::RolloutArgs),
    /// Node agent operations run by hand.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Endpoint advertisements from an A2A Agent Card or an MCP server.json: prints a
    /// RoutingDomain endpoint list (or a descriptor). Exit 1 if the file cannot be imported.
    Import(import::Args),
    /// Call a dataplane endpoint: unary inference, or --stream for a token stream.
    Call(call::Args),
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Flash one simulated NIC from a signed bundle, with a progress bar.
    Flash(nexus_agent::cli::AgentFlashArgs),
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `nexctl up` runs the whole stack in this process: their warnings and errors go to stderr
    // (more with RUST_LOG, e.g. `RUST_LOG=info`), never mixed into stdout.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors to stderr.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Crds(args) => crds::run(args),
        Command::Import(args) => import::run(args),
        Command::Call(args) => call::run(args),
        Command::Mic(cmd) => mic::run(cmd),
        Command::Get(args) => block_on(nexus_controller::cli::run_get(args)),
        Command::Rollout(args) => block_on(nexus_controller::cli::run_rollout(args)),
        // A refused bundle or a failed flash is a "no" (exit 1), not a usage error.
        Command::Firmware(cmd) => Ok(refusal(nexus_agent::cli::run_firmware(cmd))),
        Command::Agent(AgentCommand::Flash(args)) => {
            Ok(refusal(nexus_agent::cli::run_agent_flash(args)))
        }
        // A proof that does not verify, or a score below the threshold, is a "no" (exit 1),
        // not a usage error.
        Command::Zk(cmd) => match nexus_zk::cli::run(&cmd, &mut std::io::stdout().lock()) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(1))
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Exit 1 with the error printed: for commands whose failure means "refused". Their error
/// types already spell their causes out in `Display`, so only the outer message is printed.
fn refusal(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs an async command on a small runtime of its own.
fn block_on(
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut)
        .map(|()| ExitCode::SUCCESS)
}
