//! The issuance log's read side: signed tree heads, inclusion and consistency proofs.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Ca, ConsistencyProof, InclusionProof, Sth, check_tenant_name, sth_signed_data};
use crate::merkle::Hash;
use crate::{Error, policy};

impl Ca {
    fn sign_sth(&self, tree_size: u64, root: Hash) -> Result<Sth, Error> {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let signature = self
            .keys
            .log
            .sign(&sth_signed_data(timestamp_ms, tree_size, &root))?;
        Ok(Sth {
            tree_size,
            timestamp_ms,
            root_hash: root,
            signature,
            log_public_key_der: self.keys.log.spki_der().to_vec(),
        })
    }

    /// The signed tree head of the current log (cached until the log grows), after catching
    /// up with entries other replicas committed.
    pub async fn signed_tree_head(&self) -> Result<Sth, Error> {
        self.sync_log().await?;
        {
            let log = self.log.read().await;
            if let Some(sth) = &log.sth
                && sth.tree_size == log.tree.size()
            {
                return Ok(sth.clone());
            }
        }
        let mut log = self.log.write().await;
        let size = log.tree.size();
        if let Some(sth) = &log.sth
            && sth.tree_size == size
        {
            return Ok(sth.clone());
        }
        let sth = self.sign_sth(size, log.tree.root())?;
        log.sth = Some(sth.clone());
        Ok(sth)
    }

    /// An audit path from a MIC of the tenant to the current tree head.
    pub async fn inclusion_proof(
        &self,
        tenant: &str,
        serial: &str,
    ) -> Result<InclusionProof, Error> {
        check_tenant_name(tenant)?;
        let serial = policy::parse_serial(serial)?;
        let index: i64 = sqlx::query_scalar(
            "SELECT log_index FROM certificates WHERE serial = $1 AND tenant = $2",
        )
        .bind(&serial)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(serial.clone()))?;
        let index = index as u64;
        // (signed_tree_head syncs the tree, which then holds the committed entry `index`.)
        let sth = self.signed_tree_head().await?;
        let log = self.log.read().await;
        let (path, leaf) = match (
            log.tree.inclusion_proof(index, sth.tree_size),
            log.tree.leaf(index),
        ) {
            (Some(p), Some(l)) => (p, l),
            // Committed but not yet appended in memory: a moment's race with the writer.
            _ => return Err(Error::Unavailable),
        };
        Ok(InclusionProof {
            serial,
            leaf_index: index,
            leaf_hash: leaf,
            audit_path: path,
            sth,
        })
    }

    /// `PROOF(first, D[second])` (RFC 6962 §2.1.2) with the current tree head; `second == 0`
    /// means the current size. Sizes beyond the current tree are invalid arguments.
    pub async fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<ConsistencyProof, Error> {
        let sth = self.signed_tree_head().await?;
        let second = if second == 0 { sth.tree_size } else { second };
        if first > second || second > sth.tree_size {
            return Err(Error::InvalidArgument {
                field: "first",
                reason: format!(
                    "need first ≤ second ≤ the tree size {} (got {first}, {second})",
                    sth.tree_size
                ),
            });
        }
        let log = self.log.read().await;
        let proof = log
            .tree
            .consistency_proof(first, second)
            .ok_or(Error::Unavailable)?;
        Ok(ConsistencyProof {
            first,
            second,
            proof,
            sth,
        })
    }
}
