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

/// Default shard size: 64 MiB, so most tensors travel on one stream. Where one stream can
/// carry the link's rate this is the fastest choice: parallel shards add no bandwidth under
/// one congestion controller and cost about 15% of throughput on loopback (`dataplane-bench`:
/// 16 × 4 MiB or 4 × 16 MiB shards against one 64 MiB shard). [`shard_size`] splits tensors
/// where one stream cannot.
pub const DEFAULT_SHARD: u32 = 64 << 20;

/// The rate one stream must be able to carry for a tensor to travel in [`DEFAULT_SHARD`]s:
/// 10 Gb/s, in bytes per second.
pub const ONE_STREAM_RATE: f64 = 1.25e9;

/// The shard size for a tensor of `len` bytes sent to a receiver that grants `peer_window`
/// bytes of credit per stream (0: not known) over a path whose round trip is `rtt`.
///
/// A QUIC stream moves at most its receive window per round trip, so one 64 MiB shard to a
/// receiver with the default 8 MiB window crawls at 84 MB/s on a 100 ms path however fast
/// the link is. Where `peer_window / rtt` is below [`ONE_STREAM_RATE`], shards are cut to one
/// window each: every shard then fits in its stream's credit, and the shards in flight
/// together are bounded by the connection's window instead (the receiver reads them in
/// parallel). The result is always one [`decode_control`] accepts: at least [`MIN_SHARD`]
/// and few enough shards for [`MAX_SHARDS`].
pub fn shard_size(len: u64, peer_window: u64, rtt: std::time::Duration) -> u32 {
    let one_stream = peer_window as f64 / rtt.as_secs_f64().max(1e-6);
    let shard = if peer_window == 0 || one_stream >= ONE_STREAM_RATE {
        u64::from(DEFAULT_SHARD)
    } else {
        peer_window.clamp(u64::from(MIN_SHARD), u64::from(DEFAULT_SHARD))
    };
    let fewest = len.div_ceil(MAX_SHARDS);
    u32::try_from(shard.max(fewest)).unwrap_or(u32::MAX)
}

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

impl Plan {
    /// The length of shard `index`: [`Plan::shard`] bytes, the last one the rest; `None`
    /// past the last shard.
    pub fn shard_len(&self, index: u32) -> Option<usize> {
        let start = u64::from(index).checked_mul(u64::from(self.shard))?;
        if index >= self.shards || start >= self.len {
            return None;
        }
        usize::try_from((self.len - start).min(u64::from(self.shard))).ok()
    }
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
                        recv.read_exact(slot).await.map_err(|e| shard_failed(index, e))?;
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

/// A shard that could not be read whole: cancelled when its sender reset it as such (a
/// dropped `send_tensor`), malformed otherwise.
fn shard_failed(index: u32, e: quinn::ReadExactError) -> ApiError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))
            if code == nexus_stream::codes::CANCELLED =>
        {
            ApiError::Cancelled(code.into_inner())
        }
        e => ApiError::BadMessage(format!("shard {index}: {e}")),
    }
}

/// The metadata of shard `index` of tensor `id` (the receiver's session routes the shard
/// stream to its tensor's queue by it).
pub fn shard_meta(id: u64, index: u32) -> crate::Meta {
    crate::Meta::op("shard")
        .with("tensor", &id.to_string())
        .with("index", &index.to_string())
}

/// A shard's stream, reset when dropped unfinished (a cancelled `send_tensor`, a relay whose
/// transfer failed) rather than finished short as quinn would: the receiver frees its credit
/// at once and counts the transfer cancelled, not malformed.
pub(crate) struct ShardSend {
    pub(crate) stream: quinn::SendStream,
    /// Finished: its data may still be in flight, which a reset would discard.
    finished: bool,
}

impl ShardSend {
    pub(crate) fn new(stream: quinn::SendStream) -> Self {
        Self {
            stream,
            finished: false,
        }
    }

    /// Ends the shard cleanly; from then on a drop leaves it alone.
    pub(crate) fn finish(&mut self) -> Result<(), quinn::ClosedStream> {
        self.stream.finish()?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for ShardSend {
    fn drop(&mut self) {
        if !self.finished {
            // An error means the peer stopped it already.
            let _ = self.stream.reset(nexus_stream::codes::CANCELLED);
        }
    }
}

/// Why [`forward`] failed, and on which leg.
#[derive(Debug)]
pub struct ForwardError {
    /// What went wrong.
    pub error: ApiError,
    /// The endpoint refused a shard (stopped it) or could not be reached: its reason is on
    /// its way on the control stream. Otherwise the caller's shards were at fault.
    pub by_endpoint: bool,
}

impl ForwardError {
    fn caller(error: ApiError) -> Self {
        Self {
            error,
            by_endpoint: false,
        }
    }
    fn endpoint(error: ApiError) -> Self {
        Self {
            error,
            by_endpoint: true,
        }
    }
}

/// Passes every shard of `plan` arriving on `streams` on to `upstream` as shard streams of
/// its tensor `id`, as the bytes arrive (cut-through: a relay holds no more of a tensor than
/// the two legs' flow-control windows, whatever its size). The checks are
/// [`assemble`]'s: each index once and in range, each shard exactly its length. A shard that
/// fails resets its upstream stream, and a shard the endpoint stops is stopped at the
/// caller with the same code, so a refusal travels back. Returns the bytes forwarded.
pub async fn forward(
    plan: Plan,
    streams: &mut mpsc::Receiver<(u32, RecvStream)>,
    upstream: &nexus_stream::Session,
    id: u64,
) -> Result<u64, ForwardError> {
    let mut seen = vec![false; plan.shards as usize];
    let mut remaining = plan.shards;
    let mut copies = FuturesUnordered::new();
    while remaining > 0 {
        tokio::select! {
            next = streams.recv() => {
                let Some((index, mut recv)) = next else {
                    return Err(ForwardError::caller(ApiError::Ended));
                };
                let fresh = seen.get_mut(index as usize).map(|s| !std::mem::replace(s, true));
                let (Some(len), Some(true)) = (plan.shard_len(index), fresh) else {
                    let _ = recv.stop(nexus_stream::codes::BAD_FRAME);
                    return Err(ForwardError::caller(ApiError::BadMessage(format!(
                        "shard {index} unexpected"
                    ))));
                };
                let meta = shard_meta(id, index);
                copies.push(async move {
                    let send = upstream.open_bulk(meta.encode()).await.map_err(|e| {
                        ForwardError::endpoint(crate::client::map_stream_error(e))
                    })?;
                    copy_shard(index, len, recv, send).await
                });
            }
            Some(done) = copies.next(), if !copies.is_empty() => {
                done?;
                remaining -= 1;
            }
        }
    }
    Ok(plan.len)
}

/// Copies one shard of `len` bytes from the caller's `recv` to the endpoint's `send`, chunk
/// by chunk as quinn hands them over (no copy of the bytes themselves).
async fn copy_shard(
    index: u32,
    len: usize,
    mut recv: RecvStream,
    send: quinn::SendStream,
) -> Result<(), ForwardError> {
    use crate::client::map_stream_error;
    use nexus_stream::codes;
    let mut send = ShardSend::new(send);
    let mut left = len;
    loop {
        let chunk = match recv.read_chunk(usize::MAX, true).await {
            Ok(c) => c,
            Err(e) => {
                let _ = send.stream.reset(codes::CANCELLED);
                return Err(ForwardError::caller(map_stream_error(e.into())));
            }
        };
        let Some(chunk) = chunk else { break };
        if chunk.bytes.len() > left {
            let _ = recv.stop(codes::BAD_FRAME);
            let _ = send.stream.reset(codes::BAD_FRAME);
            return Err(ForwardError::caller(ApiError::BadMessage(format!(
                "shard {index} too long"
            ))));
        }
        left -= chunk.bytes.len();
        if let Err(e) = send.stream.write_chunk(chunk.bytes).await {
            // The endpoint stopped the shard (it refused the tensor): the caller hears the
            // same code.
            let code = match &e {
                quinn::WriteError::Stopped(c) => *c,
                _ => codes::CANCELLED,
            };
            let _ = recv.stop(code);
            return Err(ForwardError::endpoint(map_stream_error(e.into())));
        }
    }
    if left > 0 {
        let _ = send.stream.reset(codes::BAD_FRAME);
        return Err(ForwardError::caller(ApiError::BadMessage(format!(
            "shard {index} too short"
        ))));
    }
    send.finish()
        .map_err(|e| ForwardError::endpoint(map_stream_error(e.into())))
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

    #[test]
    fn tensors_are_split_only_where_one_stream_is_too_slow() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let len = 64 << 20;
        // Loopback or a LAN: one 8 MiB window per 50 µs is far above 10 Gb/s.
        assert_eq!(
            shard_size(len, 8 << 20, Duration::from_micros(50)),
            DEFAULT_SHARD
        );
        // Unknown window (a peer that does not say): the default.
        assert_eq!(shard_size(len, 0, ms(100)), DEFAULT_SHARD);
        // 100 ms path, 8 MiB window: 84 MB/s per stream, so one window per shard.
        assert_eq!(shard_size(len, 8 << 20, ms(100)), 8 << 20);
        // A tiny window: never below the smallest shard accepted.
        assert_eq!(shard_size(len, 1024, ms(100)), MIN_SHARD);
    }

    proptest::proptest! {
        /// Whatever the window and round trip, the chosen shard makes a plan the receiver
        /// accepts.
        #[test]
        fn every_chosen_shard_is_accepted(
            len in 1u32..=u32::MAX,
            window in proptest::prelude::any::<u64>(),
            rtt_us in 0u64..10_000_000,
        ) {
            let shard = shard_size(u64::from(len), window, std::time::Duration::from_micros(rtt_us));
            let c = encode_control(&header(len), shard).unwrap();
            let plan = decode_control(&c, u64::MAX).unwrap();
            proptest::prop_assert!(plan.shards >= 1);
        }
    }
}
