//! `nexctl zk ...`: clap arguments and `run` functions (feature `cli`).
//!
//! Embed with `#[command(subcommand)] zk: nexus_zk::cli::ZkCommand` and call
//! [`run`]`(&cmd, &mut std::io::stdout())`; every subcommand writes its result to `out`
//! and returns `Err` (never panics) on failure, so the caller picks the exit code.
//!
//! Scores and thresholds are decimals with up to four places (`0.95`), stored as
//! fixed-point `× 10^4` (see [`crate::parse_score`]).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::{
    Blinding, ClaimProof, Commitment, Opening, ZkError, format_score, load_claim_proof,
    load_opening, load_proving_key, load_verifying_key, os_rng, parse_score, random_blinding,
    setup, write_claim_proof, write_keys, write_opening,
};

/// Zero-knowledge score-threshold claims (Groth16/BN254, Poseidon commitments).
#[derive(Debug, Clone, Subcommand)]
pub enum ZkCommand {
    /// Generate the proving and verifying keys (single-party trusted setup: whoever runs
    /// it can forge proofs, so the CA runs it and publishes the verifying key).
    Setup(SetupArgs),
    /// Commit to a score: prints the commitment to bind into the certificate and the
    /// secret opening (score, blinding) the model owner keeps.
    Commit(CommitArgs),
    /// Prove that a committed score is at least a threshold.
    Prove(ProveArgs),
    /// Verify a claim proof against the certificate's commitment.
    Verify(VerifyArgs),
}

/// `zk setup`.
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    /// Directory for `zk-proving.key` and `zk-verifying.key` (created if missing).
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
}

/// `zk commit`.
#[derive(Debug, Clone, Args)]
pub struct CommitArgs {
    /// The score, a decimal with at most four places (e.g. 0.9731).
    #[arg(long, value_parser = parse_score)]
    pub score: u64,
    /// Blinding as 64 hex digits; random when omitted (the usual case).
    #[arg(long)]
    pub blinding: Option<String>,
    /// Write the secret opening (JSON, mode 0600) here and print only the commitment;
    /// without it the opening JSON is printed.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `zk prove`.
#[derive(Debug, Clone, Args)]
pub struct ProveArgs {
    /// Proving key file from `zk setup`.
    #[arg(long)]
    pub proving_key: PathBuf,
    /// Opening JSON from `zk commit`.
    #[arg(long)]
    pub opening: PathBuf,
    /// Claim (metric) name, e.g. `accuracy`.
    #[arg(long)]
    pub claim: String,
    /// Threshold to prove, a decimal with at most four places (e.g. 0.95).
    #[arg(long, value_parser = parse_score)]
    pub threshold: u64,
    /// Write the claim proof JSON here instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `zk verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Verifying key file from `zk setup` (raw or base64).
    #[arg(long)]
    pub verifying_key: PathBuf,
    /// Claim proof JSON from `zk prove`.
    #[arg(long)]
    pub proof: PathBuf,
    /// The commitment bound in the (authenticated) certificate, 64 hex digits.
    #[arg(long)]
    pub commitment: String,
    /// Require the proven threshold to be at least this (decimal); default 0.
    #[arg(long, value_parser = parse_score, default_value = "0")]
    pub min_threshold: u64,
    /// Require this claim name.
    #[arg(long)]
    pub claim: Option<String>,
}

fn emit(out: &mut dyn Write, text: &str) -> Result<(), ZkError> {
    writeln!(out, "{text}").map_err(|source| ZkError::Io {
        path: PathBuf::from("<output>"),
        source,
    })
}

/// Run any `zk` subcommand.
pub fn run(cmd: &ZkCommand, out: &mut dyn Write) -> Result<(), ZkError> {
    match cmd {
        ZkCommand::Setup(args) => run_setup(args, out),
        ZkCommand::Commit(args) => run_commit(args, out),
        ZkCommand::Prove(args) => run_prove(args, out),
        ZkCommand::Verify(args) => run_verify(args, out),
    }
}

/// `zk setup`: writes the keys, prints their paths and the verifying key (base64 and
/// SHA-256 fingerprint).
pub fn run_setup(args: &SetupArgs, out: &mut dyn Write) -> Result<(), ZkError> {
    let (pk, vk) = setup(&mut os_rng()?)?;
    let paths = write_keys(&args.out_dir, &pk, &vk)?;
    emit(
        out,
        &format!("proving key:   {}", paths.proving_key.display()),
    )?;
    emit(
        out,
        &format!("verifying key: {}", paths.verifying_key.display()),
    )?;
    emit(out, &format!("verifying key sha256: {}", vk.fingerprint()))?;
    emit(out, &format!("verifying key base64: {}", vk.to_base64()))
}

/// `zk commit`: prints the commitment (hex) and, without `--out`, the opening JSON.
pub fn run_commit(args: &CommitArgs, out: &mut dyn Write) -> Result<(), ZkError> {
    let blinding = match &args.blinding {
        Some(hex) => Blinding::from_hex(hex)?,
        None => random_blinding()?,
    };
    let opening = Opening::new(args.score, blinding);
    match &args.out {
        Some(path) => {
            write_opening(path, &opening)?;
            emit(out, &opening.commitment.to_hex())
        }
        None => emit(out, &opening.to_json()),
    }
}

/// `zk prove`: prints (or writes) the claim proof JSON.
pub fn run_prove(args: &ProveArgs, out: &mut dyn Write) -> Result<(), ZkError> {
    let pk = load_proving_key(&args.proving_key)?;
    let opening = load_opening(&args.opening)?;
    let claim = ClaimProof::create(
        &pk,
        &args.claim,
        opening.score,
        &opening.blinding,
        args.threshold,
    )?;
    match &args.out {
        Some(path) => write_claim_proof(path, &claim),
        None => emit(out, &claim.to_json()),
    }
}

/// `zk verify`: `Ok` and a one-line confirmation only if the proof verifies for the given
/// commitment, threshold floor and claim name.
pub fn run_verify(args: &VerifyArgs, out: &mut dyn Write) -> Result<(), ZkError> {
    let vk = load_verifying_key(&args.verifying_key)?;
    let claim = load_claim_proof(&args.proof)?;
    let commitment = Commitment::from_hex(&args.commitment)?;
    if let Some(name) = &args.claim
        && name != &claim.claim
    {
        return Err(ZkError::InvalidClaim(format!(
            "proof is for claim {:?}, expected {name:?}",
            claim.claim
        )));
    }
    claim.verify_against(&vk, &commitment, args.min_threshold)?;
    emit(
        out,
        &format!(
            "verified: {} >= {} for commitment {}",
            claim.claim,
            format_score(claim.threshold),
            claim.commitment
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        zk: ZkCommand,
    }

    fn run_args(args: &[&str]) -> Result<String, ZkError> {
        let cli = TestCli::try_parse_from(std::iter::once("nexctl-zk").chain(args.iter().copied()))
            .map_err(|e| ZkError::InvalidClaim(e.to_string()))?;
        let mut out = Vec::new();
        run(&cli.zk, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn setup_commit_prove_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = |name: &str| dir.path().join(name).display().to_string();
        let keys = d("keys");
        run_args(&["setup", "--out-dir", &keys]).expect("setup");
        let pk = format!("{keys}/{}", crate::PROVING_KEY_FILE);
        let vk = format!("{keys}/{}", crate::VERIFYING_KEY_FILE);

        let commitment = run_args(&["commit", "--score", "0.9731", "--out", &d("opening.json")])
            .expect("commit");
        let commitment = commitment.trim();
        assert_eq!(commitment.len(), 64);

        run_args(&[
            "prove",
            "--proving-key",
            &pk,
            "--opening",
            &d("opening.json"),
            "--claim",
            "accuracy",
            "--threshold",
            "0.95",
            "--out",
            &d("claim.json"),
        ])
        .expect("prove");
        let ok = run_args(&[
            "verify",
            "--verifying-key",
            &vk,
            "--proof",
            &d("claim.json"),
            "--commitment",
            commitment,
            "--min-threshold",
            "0.9",
            "--claim",
            "accuracy",
        ])
        .expect("verify");
        assert!(ok.contains("verified: accuracy >= 0.9500"), "{ok}");

        // Refusals.
        assert!(matches!(
            run_args(&[
                "prove",
                "--proving-key",
                &pk,
                "--opening",
                &d("opening.json"),
                "--claim",
                "accuracy",
                "--threshold",
                "0.98",
            ]),
            Err(ZkError::ScoreBelowThreshold)
        ));
        assert!(
            run_args(&[
                "verify",
                "--verifying-key",
                &vk,
                "--proof",
                &d("claim.json"),
                "--commitment",
                commitment,
                "--min-threshold",
                "0.96",
            ])
            .is_err()
        );
        assert!(
            run_args(&[
                "verify",
                "--verifying-key",
                &vk,
                "--proof",
                &d("claim.json"),
                "--commitment",
                commitment,
                "--claim",
                "latency",
            ])
            .is_err()
        );
        let other = "00".repeat(32);
        assert!(
            run_args(&[
                "verify",
                "--verifying-key",
                &vk,
                "--proof",
                &d("claim.json"),
                "--commitment",
                &other,
            ])
            .is_err()
        );
        assert!(run_args(&["commit", "--score", "0.12345"]).is_err());
    }
}
