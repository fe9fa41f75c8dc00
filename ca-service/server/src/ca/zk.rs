//! Claim-proof checks against the commitments a MIC carries.

use nexus_mic::{Attestation, ClaimValue, Mic};

use super::{Ca, ZkVerdict, ZkVerifyParams, check_tenant_name};
use crate::{Error, policy};

impl Ca {
    /// Checks a claim proof against the commitment in a MIC's attestation.
    pub async fn verify_claim_proof(&self, p: ZkVerifyParams) -> Result<ZkVerdict, Error> {
        let r = self.verify_claim_inner(p).await;
        if let Err(e) = &r {
            self.metrics.fail("zk_verify", e);
        }
        r
    }

    async fn verify_claim_inner(&self, p: ZkVerifyParams) -> Result<ZkVerdict, Error> {
        check_tenant_name(&p.tenant)?;
        let serial = policy::parse_serial(&p.serial)?;
        let proof = nexus_zk::ClaimProof::from_json(&p.claim_proof_json)
            .map_err(|e| Error::Zk(e.to_string()))?;
        let der: Vec<u8> =
            sqlx::query_scalar("SELECT der FROM certificates WHERE serial = $1 AND tenant = $2")
                .bind(&serial)
                .bind(&p.tenant)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| Error::NotFound(serial.clone()))?;
        let mic = Mic::from_der(&der)?;
        let digest = committed_claim(&mic.attestation, &p.claim)?;
        let commitment = nexus_zk::Commitment::from_bytes(&digest)
            .map_err(|e| Error::Zk(format!("certificate commitment: {e}")))?;
        let commitment_hex = commitment.to_hex();
        if proof.claim != p.claim {
            return Ok(ZkVerdict {
                valid: false,
                reason: format!("proof is labelled `{}`, not `{}`", proof.claim, p.claim),
                commitment_hex,
                proven_threshold: proof.threshold,
            });
        }
        let vk = self.keys.zk_vk.clone();
        let min = p.min_threshold;
        let proven = proof.threshold;
        let result =
            tokio::task::spawn_blocking(move || proof.verify_against(&vk, &commitment, min))
                .await
                .map_err(|e| Error::State(format!("verify task: {e}")))?;
        Ok(ZkVerdict {
            valid: result.is_ok(),
            reason: result.err().map(|e| e.to_string()).unwrap_or_default(),
            commitment_hex,
            proven_threshold: proven,
        })
    }
}

/// The committed value of claim `name` (benchmarks first, then safety evaluations).
fn committed_claim(att: &Attestation, name: &str) -> Result<[u8; 32], Error> {
    let claim = att
        .benchmarks
        .iter()
        .chain(&att.safety_evaluations)
        .find(|c| c.name == name)
        .ok_or_else(|| Error::Zk(format!("the certificate has no claim `{name}`")))?;
    match claim.value {
        ClaimValue::Commitment(d) => Ok(d.0),
        ClaimValue::Plain(_) => Err(Error::Zk(format!(
            "claim `{name}` is in clear, not committed"
        ))),
    }
}
