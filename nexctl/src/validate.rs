//! `nexctl validate`: offline checks of Nexus manifests, with file, document and field path.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use nexus_crds::validate::Validator;

/// Arguments of `nexctl validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or directories (searched recursively for .yaml, .yml and .json).
    #[arg(required = true, value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    /// Print only problems, not the valid documents.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let validator = Validator::new().context("building the validator")?;
    let mut files = Vec::new();
    for p in &args.paths {
        collect(p, &mut files)?;
    }
    if files.is_empty() {
        bail!("no .yaml, .yml or .json files found in the given paths");
    }
    let (mut docs, mut invalid) = (0usize, 0usize);
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("{}: cannot read: {e}", file.display());
                invalid += 1;
                continue;
            }
        };
        let reports = match validator.validate_yaml(&text) {
            Ok(r) => r,
            Err(e) => {
                println!("{}: not valid YAML: {e}", file.display());
                invalid += 1;
                continue;
            }
        };
        for r in reports {
            docs += 1;
            let what = format!(
                "{}[{}] {}/{}",
                file.display(),
                r.index,
                r.kind.as_deref().unwrap_or("?"),
                r.name.as_deref().unwrap_or("?")
            );
            if r.problems.is_empty() {
                if !args.quiet {
                    println!("{what}: valid");
                }
            } else {
                invalid += 1;
                for p in &r.problems {
                    println!("{what}: {p}");
                }
            }
        }
    }
    eprintln!(
        "{} documents in {} files: {} valid, {invalid} invalid",
        docs,
        files.len(),
        docs.saturating_sub(invalid)
    );
    Ok(if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Expands directories into their manifest files, in a stable order.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("{}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            if e.is_dir() {
                collect(&e, out)?;
            } else if is_manifest(&e) {
                out.push(e);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}
