//! `nexctl crds`: the CustomResourceDefinitions generated from the Rust types.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `nexctl crds`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write one YAML file per kind into this directory instead of printing them.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let crds = nexus_crds::crd::all();
    match args.out {
        None => {
            for (i, (_, crd)) in crds.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", nexus_crds::crd::to_yaml(crd)?);
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (file, crd) in &crds {
                let path = dir.join(file);
                std::fs::write(&path, nexus_crds::crd::to_yaml(crd)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
