//! Tensor transfer. The sender describes the tensor with a NexLink header (dtype, shape,
//! payload length; [`nexus_firmware::header`] owns that format) followed by the shard size;
//! then each shard travels on its own bulk stream, so a lost packet delays one shard only
//! and shards proceed in parallel under one congestion controller. The receiver allocates
//! the whole buffer once from the header (after checking it against its limit) and reads
//! every shard straight into its slice of that buffer: no per-shard buffers, no copy.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use nexus_firmware::header::{HEADER_LEN, Header, HeaderView};
use quinn::RecvStream;
use tokio::sync::mpsc;

use crate::ApiError;

/// Control message length: header + `u32` shard size.
pub const CONTROL_LEN: usize = HEADER_LEN + 4;
/// Smallest shard accepted (bounds the number of streams a tensor may use).
pub const MIN_SHARD: u32 = 64 * 1024;
/// Most shards in one tensor.
pub const MAX_SHARDS: u64 = 4096;

/// A validated transfer plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The header.
    pub header: Header,
    /// Payload bytes.
    pub len: u64,
    /// Shard size.
    pub shard: u32,
    /// Number of shards.
    pub shards: u32,
}

/// Encodes the control message.
pub fn encode_control(header: &Header, shard: u32) -> Result<Vec<u8>, ApiError> {
    let mut out = vec![0u8; CONTROL_LEN];
    header.encode_into(&mut out).map_err(ApiError::Header)?;
    out[HEADER_LEN..].copy_from_slice(&shard.to_le_bytes());
    Ok(out)
}

/// Decodes and checks a control message against the receiver's limit: the header must
/// parse (magic, checksum, dtype/shape consistent with the length), the tensor must fit
/// `max_tensor`, the shard size must be at least [`MIN_SHARD`] (or the whole tensor) and
/// the shard count at most [`MAX_SHARDS`].
pub fn decode_control(msg: &[u8], max_tensor: u64) -> Result<Plan, ApiError> {
    if msg.len() != CONTROL_LEN {
        return Err(ApiError::BadMessage(format!(
            "tensor control message of {} bytes, {CONTROL_LEN} expected",
            msg.len()
        )));
    }
    let header = HeaderView::parse(msg)
        .map_err(ApiError::Header)?
        .to_header();
    let len = u64::from(header.payload_len);
    if len > max_tensor {
        return Err(ApiError::TooLarge(format!(
            "tensor of {len} bytes, limit {max_tensor}"
        )));
    }
    let shard = u32::from_le_bytes([msg[64], msg[65], msg[66], msg[67]]);
    if shard == 0 || (shard < MIN_SHARD && u64::from(shard) < len) {
        return Err(ApiError::BadMessage(format!(
            "shard size {shard} too small"
        )));
    }
    let shards = if len == 0 {
        0
    } else {
        len.div_ceil(u64::from(shard))
    };
    if shards > MAX_SHARDS {
        return Err(ApiError::TooLarge(format!("{shards} shards")));
    }
    Ok(Plan {
        header,
        len,
        shard,
        // ≤ MAX_SHARDS, checked above.
        shards: shards as u32,
    })
}

/// Reads every shard of `plan` from `streams` (shard index, stream positioned after its
/// preamble) into one buffer allocated here. Shards may arrive in any order; a duplicate
/// or out-of-range index, a short or long shard is an error.
pub async fn assemble(
    plan: Plan,
    streams: &mut mpsc::Receiver<(u32, RecvStream)>,
) -> Result<Bytes, ApiError> {
    let len = usize::try_from(plan.len).map_err(|_| ApiError::TooLarge("tensor".into()))?;
    let mut buf = vec![0u8; len];
    {
        let mut slots: Vec<Option<&mut [u8]>> =
            buf.chunks_mut(plan.shard as usize).map(Some).collect();
        let mut remaining = slots.len();
        let mut reads = FuturesUnordered::new();
        while remaining > 0 {
            tokio::select! {
                next = streams.recv() => {
                    let Some((index, mut recv)) = next else {
                        return Err(ApiError::Ended);
                    };
                    let Some(slot) = slots.get_mut(index as usize).and_then(Option::take) else {
                        let _ = recv.stop(nexus_stream::codes::BAD_FRAME);
                        return Err(ApiError::BadMessage(format!("shard {index} unexpected")));
                    };
                    reads.push(async move {
                        recv.read_exact(slot)
                            .await
                            .map_err(|e| ApiError::BadMessage(format!("shard {index}: {e}")))?;
                        match recv.read(&mut [0u8; 1]).await {
                            Ok(None) => Ok(()),
                            _ => Err(ApiError::BadMessage(format!("shard {index} too long"))),
                        }
                    });
                }
                Some(done) = reads.next(), if !reads.is_empty() => {
                    done?;
                    remaining -= 1;
                }
            }
        }
    }
    Ok(buf.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nexus_firmware::header::{DType, DeliveryMode, Flags};

    fn header(len: u32) -> Header {
        Header {
            mode: DeliveryMode::ReliableUnordered,
            flags: Flags(0),
            dtype: DType::U8,
            rank: 1,
            stream_id: 1,
            tenant_id: 0,
            sequence: 0,
            shape: [len, 0, 0, 0],
            payload_len: len,
            trace_id: 0,
        }
    }

    #[test]
    fn control_round_trips_and_limits_apply() {
        let c = encode_control(&header(1 << 20), 256 * 1024).unwrap();
        let p = decode_control(&c, 1 << 21).unwrap();
        assert_eq!((p.len, p.shards), (1 << 20, 4));
        assert!(matches!(
            decode_control(&c, 1 << 19),
            Err(ApiError::TooLarge(_))
        ));
        let tiny = encode_control(&header(1 << 20), 16).unwrap();
        assert!(matches!(
            decode_control(&tiny, 1 << 21),
            Err(ApiError::BadMessage(_))
        ));
        let mut bad = c.clone();
        bad[10] ^= 1;
        assert!(matches!(
            decode_control(&bad, 1 << 21),
            Err(ApiError::Header(_))
        ));
        assert!(decode_control(&c[..60], 1 << 21).is_err());
    }
}
