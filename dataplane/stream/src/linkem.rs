//! A user-space link emulator for UDP (the kernel here has no netem): a proxy on a real UDP
//! socket that forwards datagrams between clients and one upstream with seeded, reproducible
//! loss, duplication, reordering and one-way delay. Tests inject faults with it; the bench
//! applies the same link to every UDP contender.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

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
    delay_line: tokio::task::JoinHandle<()>,
}

impl Drop for UdpLink {
    fn drop(&mut self) {
        self.task.abort();
        self.delay_line.abort();
    }
}

struct Shared {
    rng: Mutex<StdRng>,
    imp: Impairment,
    stats: Arc<LinkStats>,
    large_dropped: AtomicU64,
    delayed: mpsc::UnboundedSender<(Instant, Delayed)>,
}

/// A datagram waiting out its delay.
struct Delayed {
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
    copies: usize,
}

/// Sends each delayed datagram when it is due.
async fn delay_line(mut rx: mpsc::UnboundedReceiver<(Instant, Delayed)>) {
    let mut queue = DelayQueue::new();
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some((due, d)) => queue.push(due, d),
                None => return,
            },
            () = queue.due() => {
                while let Some(d) = queue.pop_due() {
                    for _ in 0..d.copies {
                        let _ = d.sock.send_to(&d.data, d.to).await;
                    }
                }
            }
        }
    }
}

/// Items waiting out their delays, released earliest first (ties in arrival order) at the
/// resolution of the kernel's timers ([`PreciseTimer`]): the delay line of both emulators,
/// this module's (one per link) and the bench's on a TUN device.
pub struct DelayQueue<T> {
    queue: BinaryHeap<Reverse<Entry<T>>>,
    /// Numbers the items in arrival order.
    next_seq: u64,
    timer: PreciseTimer,
}

struct Entry<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl<T> DelayQueue<T> {
    /// An empty queue (its timer's thread starts now and ends with it).
    pub fn new() -> Self {
        Self {
            queue: BinaryHeap::new(),
            next_seq: 0,
            timer: PreciseTimer::new(),
        }
    }

    /// Queues `item` until `due`.
    pub fn push(&mut self, due: Instant, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse(Entry { due, seq, item }));
    }

    /// Returns when the earliest item is due; never while the queue is empty. Dropping it
    /// (as `select!` does when something else is ready) leaves the queue as it was.
    pub async fn due(&self) {
        match self.queue.peek().map(|Reverse(e)| e.due) {
            Some(due) => self.timer.sleep_until(due).await,
            None => std::future::pending().await,
        }
    }

    /// The earliest item, if it is due.
    pub fn pop_due(&mut self) -> Option<T> {
        let now = Instant::now();
        if self.queue.peek().is_some_and(|Reverse(e)| e.due <= now) {
            self.queue.pop().map(|Reverse(e)| e.item)
        } else {
            None
        }
    }
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for DelayQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayQueue")
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl UdpLink {
    /// Starts a proxy on 127.0.0.1 (random port) forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr, imp: Impairment, seed: u64) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let stats = Arc::new(LinkStats::default());
        let (delayed, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            imp,
            stats: Arc::clone(&stats),
            large_dropped: AtomicU64::new(0),
            delayed,
        });
        let task = tokio::spawn(run(front, upstream, shared));
        let delay_line = tokio::spawn(delay_line(rx));
        Ok(Self {
            addr,
            stats,
            task,
            delay_line,
        })
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
    // The upstream → client directions: aborted with this task (a JoinSet aborts its tasks
    // when dropped), so a dropped link leaves nothing running.
    let mut directions = tokio::task::JoinSet::new();
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
                directions.spawn(async move {
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
        let _ = shared.delayed.send((
            Instant::now() + delay,
            Delayed {
                sock: Arc::clone(sock),
                to,
                data: data.to_vec(),
                copies,
            },
        ));
    }
}

/// A timer at the kernel's high-resolution clock, for emulated delays (this module's and the
/// bench's packet-level emulator). tokio's timer wheel has 1 ms resolution and rounds up,
/// which made each crossing of a "10 ms" path take 10 to 11 ms, and a "1 ms" one 1 to 2. This
/// one is a thread waiting on a condition variable with a timeout (a futex, on the kernel's
/// hrtimers), which wakes within the kernel's timer slack, about 50 µs, and then wakes the
/// emulator's task.
struct PreciseTimer {
    shared: Arc<TimerShared>,
}

#[derive(Default)]
struct TimerShared {
    /// The instant to fire at, if armed; `closed` ends the thread.
    state: std::sync::Mutex<TimerState>,
    changed: std::sync::Condvar,
    fired: tokio::sync::Notify,
}

#[derive(Default)]
struct TimerState {
    due: Option<std::time::Instant>,
    closed: bool,
}

impl PreciseTimer {
    /// Starts the timer's thread (it ends when the timer is dropped).
    fn new() -> Self {
        let shared = Arc::new(TimerShared::default());
        let timer = Arc::clone(&shared);
        std::thread::spawn(move || {
            let Ok(mut state) = timer.state.lock() else {
                return;
            };
            while !state.closed {
                state = match state.due {
                    None => match timer.changed.wait(state) {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    Some(due) => {
                        let now = std::time::Instant::now();
                        if due <= now {
                            state.due = None;
                            timer.fired.notify_one();
                            continue;
                        }
                        match timer.changed.wait_timeout(state, due - now) {
                            Ok((s, _)) => s,
                            Err(_) => return,
                        }
                    }
                };
            }
        });
        Self { shared }
    }

    /// Returns at `due` or just after, never before. Arming replaces the previous deadline;
    /// a wake-up meant for an earlier, dropped sleep is absorbed by the loop.
    async fn sleep_until(&self, due: Instant) {
        let due = due.into_std();
        while std::time::Instant::now() < due {
            let fired = self.shared.fired.notified();
            if let Ok(mut state) = self.shared.state.lock() {
                state.due = Some(due);
            }
            self.shared.changed.notify_one();
            fired.await;
        }
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closed = true;
        }
        self.shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_delay_queue_releases_in_due_order_ties_in_arrival_order_none_early() {
        let mut q = DelayQueue::new();
        assert!(q.pop_due().is_none());
        let t = Instant::now();
        q.push(t + Duration::from_millis(6), "late");
        q.push(t + Duration::from_millis(2), "first");
        q.push(t + Duration::from_millis(4), "tie a");
        q.push(t + Duration::from_millis(4), "tie b");
        let mut out = Vec::new();
        while out.len() < 4 {
            q.due().await;
            while let Some(item) = q.pop_due() {
                out.push((item, Instant::now()));
            }
        }
        let order: Vec<_> = out.iter().map(|(item, _)| *item).collect();
        assert_eq!(order, ["first", "tie a", "tie b", "late"]);
        for (item, at) in out {
            let due = match item {
                "first" => 2,
                "late" => 6,
                _ => 4,
            };
            assert!(at >= t + Duration::from_millis(due), "{item} left early");
        }
    }

    #[tokio::test]
    async fn the_precise_timer_never_returns_early_even_after_a_dropped_sleep() {
        let timer = PreciseTimer::new();
        for i in 0..10u64 {
            // A sleep armed, then dropped (as `select!` drops the emulator's when a packet
            // arrives), fires with nobody waiting: its wake-up is left behind.
            let short = Instant::now() + Duration::from_millis(1);
            tokio::select! {
                biased;
                () = timer.sleep_until(short) => panic!("an armed sleep returned at once"),
                () = std::future::ready(()) => {}
            }
            std::thread::sleep(Duration::from_millis(3));
            let due = Instant::now() + Duration::from_millis(2 + i);
            timer.sleep_until(due).await;
            assert!(
                Instant::now() >= due,
                "sleep {i} returned before its deadline"
            );
        }
    }
}
