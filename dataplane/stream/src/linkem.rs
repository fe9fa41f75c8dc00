//! A user-space link emulator for UDP (the kernel here has no netem): a proxy on a real UDP
//! socket that forwards datagrams between clients and one upstream with seeded, reproducible
//! loss, duplication, reordering and one-way delay. Tests inject faults with it; the bench
//! applies the same link to every UDP contender.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// Impairments applied to each datagram, in each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by `reorder_delay` (so later ones overtake it).
    pub reorder: f64,
    /// Extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Drop the first N datagrams whose payload is at least `drop_large_min` bytes, then
    /// pass them: a deterministic "lose this particular packet" for tests.
    pub drop_first_large: u32,
    /// Size threshold for `drop_first_large`.
    pub drop_large_min: usize,
}

/// Counters of what the emulator did.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Datagrams received from either side.
    pub seen: AtomicU64,
    /// Dropped.
    pub dropped: AtomicU64,
    /// Duplicated.
    pub duplicated: AtomicU64,
    /// Reordered.
    pub reordered: AtomicU64,
}

/// A running UDP link emulator.
#[derive(Debug)]
pub struct UdpLink {
    addr: SocketAddr,
    stats: Arc<LinkStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UdpLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    rng: Mutex<StdRng>,
    imp: Impairment,
    stats: Arc<LinkStats>,
    large_dropped: AtomicU64,
}

impl UdpLink {
    /// Starts a proxy on 127.0.0.1 (random port) forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr, imp: Impairment, seed: u64) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(LinkStats::default());
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            imp,
            stats: Arc::clone(&stats),
            large_dropped: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(front, upstream, shared));
        Ok(Self { addr, stats, task })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What happened so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }
}

async fn run(front: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Shared>) {
    // One upstream-facing socket per client, so replies find their way back.
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let back = match clients.get(&from) {
            Some(s) => Arc::clone(s),
            None => {
                let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let s = Arc::new(s);
                clients.insert(from, Arc::clone(&s));
                // Upstream → client direction.
                let (s2, front2, shared2) =
                    (Arc::clone(&s), Arc::clone(&front), Arc::clone(&shared));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, _)) = s2.recv_from(&mut buf).await {
                        forward(&shared2, &front2, from, &buf[..n]).await;
                    }
                });
                s
            }
        };
        forward(&shared, &back, upstream, &buf[..n]).await;
    }
}

async fn forward(shared: &Arc<Shared>, sock: &Arc<UdpSocket>, to: SocketAddr, data: &[u8]) {
    let imp = &shared.imp;
    shared.stats.seen.fetch_add(1, Ordering::Relaxed);
    if imp.drop_first_large > 0
        && data.len() >= imp.drop_large_min
        && shared.large_dropped.fetch_add(1, Ordering::Relaxed) < u64::from(imp.drop_first_large)
    {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (drop, dup, reorder) = {
        let mut rng = shared.rng.lock().await;
        (
            rng.random_bool(imp.loss.clamp(0.0, 1.0)),
            rng.random_bool(imp.duplicate.clamp(0.0, 1.0)),
            rng.random_bool(imp.reorder.clamp(0.0, 1.0)),
        )
    };
    if drop {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let copies = if dup {
        shared.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        2
    } else {
        1
    };
    let mut delay = imp.delay;
    if reorder {
        shared.stats.reordered.fetch_add(1, Ordering::Relaxed);
        delay += imp.reorder_delay;
    }
    if delay.is_zero() {
        for _ in 0..copies {
            let _ = sock.send_to(data, to).await;
        }
    } else {
        let data = data.to_vec();
        let sock = Arc::clone(sock);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for _ in 0..copies {
                let _ = sock.send_to(&data, to).await;
            }
        });
    }
}
