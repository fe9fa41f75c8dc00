//! Throughput of the NexLink header parser (against a plain 64-byte copy as the floor) and of the
//! SPSC descriptor ring between two threads.
//!
//! Run: `cargo bench -p nexus-firmware`. Criterion prints elements/s; the header figure to compare
//! is `header/parse` vs `header/copy64` (same batch, same memory traffic).
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nexus_firmware::header::{
    DType, DeliveryMode, Flags, HEADER_LEN, Header, HeaderView, checksum,
};
use nexus_firmware::ring::{Descriptor, Ring};

const BATCH: usize = 1024;

/// Spin briefly, then yield: on a 2-core machine shared with other work, pure spinning can leave
/// the other end descheduled for a whole time slice.
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        *spins = 0;
        std::thread::yield_now();
    }
}

fn headers() -> Vec<u8> {
    let mut buf = vec![0u8; BATCH * HEADER_LEN];
    for (i, chunk) in buf.chunks_exact_mut(HEADER_LEN).enumerate() {
        let h = Header {
            mode: DeliveryMode::ReliableUnordered,
            flags: Flags::ACK_REQUESTED,
            dtype: DType::F16,
            rank: 2,
            stream_id: i as u32,
            tenant_id: 3,
            sequence: i as u64,
            shape: [16, 64, 0, 0],
            payload_len: 16 * 64 * 2,
            trace_id: i as u128 * 0x9E37_79B9,
        };
        h.encode_into(chunk)
            .expect("benchmark header is valid by construction");
    }
    buf
}

fn header(c: &mut Criterion) {
    let buf = headers();
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for chunk in black_box(&buf).chunks_exact(HEADER_LEN) {
                match HeaderView::parse(chunk) {
                    Ok(v) => acc = acc.wrapping_add(v.sequence() ^ u64::from(v.payload_len())),
                    Err(_) => acc = acc.wrapping_add(1),
                }
            }
            acc
        })
    });
    g.bench_function("checksum_only", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for chunk in black_box(&buf).chunks_exact(HEADER_LEN) {
                let h: &[u8; HEADER_LEN] = chunk.try_into().expect("chunks_exact yields 64 bytes");
                acc ^= checksum(h);
            }
            acc
        })
    });
    let mut dst = vec![[0u8; HEADER_LEN]; BATCH];
    g.bench_function("copy64", |b| {
        b.iter(|| {
            for (d, s) in dst.iter_mut().zip(black_box(&buf).chunks_exact(HEADER_LEN)) {
                d.copy_from_slice(s);
            }
            black_box(&mut dst);
        })
    });
    g.finish();
}

fn ring(c: &mut Criterion) {
    const PER_ITER: u64 = 1 << 20;
    const CHUNK: usize = 32;
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(PER_ITER));
    g.sample_size(20);
    g.bench_function("spsc_two_threads_batch32", |b| {
        b.iter(|| {
            let mut ring: Box<Ring<1024>> = Box::default();
            let (mut p, mut cns) = ring.split();
            std::thread::scope(|s| {
                s.spawn(move || {
                    let batch: [Descriptor; CHUNK] = core::array::from_fn(|i| Descriptor {
                        addr: i as u64 * 4096,
                        len: 4096,
                        flags: 1,
                    });
                    let mut sent = 0u64;
                    let mut spins = 0;
                    while sent < PER_ITER {
                        let want = ((PER_ITER - sent) as usize).min(CHUNK);
                        let n = p.push_slice(&batch[..want]);
                        if n == 0 {
                            backoff(&mut spins);
                        }
                        sent += n as u64;
                    }
                });
                let mut got = 0u64;
                let mut spins = 0;
                let mut out = [Descriptor::default(); CHUNK];
                let mut sum = 0u64;
                while got < PER_ITER {
                    let n = cns.pop_into(&mut out);
                    if n == 0 {
                        backoff(&mut spins);
                    }
                    for d in &out[..n] {
                        sum = sum.wrapping_add(d.addr);
                    }
                    got += n as u64;
                }
                black_box(sum);
            });
        })
    });
    g.bench_function("spsc_two_threads_single", |b| {
        b.iter(|| {
            let mut ring: Box<Ring<1024>> = Box::default();
            let (mut p, mut cns) = ring.split();
            std::thread::scope(|s| {
                s.spawn(move || {
                    let mut sent = 0u64;
                    let mut spins = 0;
                    while sent < PER_ITER {
                        let d = Descriptor {
                            addr: sent,
                            len: 64,
                            flags: 0,
                        };
                        if p.push(d).is_ok() {
                            sent += 1;
                        } else {
                            backoff(&mut spins);
                        }
                    }
                });
                let mut got = 0u64;
                let mut spins = 0;
                let mut sum = 0u64;
                while got < PER_ITER {
                    match cns.pop() {
                        Some(d) => {
                            sum = sum.wrapping_add(d.addr);
                            got += 1;
                        }
                        None => backoff(&mut spins),
                    }
                }
                black_box(sum);
            });
        })
    });
    g.finish();
}

criterion_group!(benches, header, ring);
criterion_main!(benches);
