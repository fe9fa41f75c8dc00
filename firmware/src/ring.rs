//! A single-producer / single-consumer ring of DMA-style buffer descriptors.
//!
//! The ring is what a NIC queue looks like to the host: the producer (driver TX path, or the NIC's
//! RX completion path) posts `{addr, len, flags}` descriptors, the consumer retires them in order.
//!
//! Design choices, and why:
//! - **No `unsafe`, no allocation.** Each slot is two `AtomicU64`s written with `Relaxed` stores
//!   and published by a `Release` store of the tail index; on x86-64 and AArch64 relaxed atomic
//!   loads/stores of aligned words are plain moves, so this costs nothing over `UnsafeCell` and
//!   needs no proof obligations. Storage is a const-generic array, so the ring can live in a
//!   `static` or on the stack of a `no_std` datapath.
//! - **SPSC enforced by types.** [`Ring::split`] takes `&mut self` and hands out exactly one
//!   [`Producer`] and one [`Consumer`]; neither is `Clone`. Each is `Send`, so the two ends can run
//!   on two threads (e.g. `std::thread::scope`).
//! - **Cached indices and batching.** Each end keeps a private copy of the other end's index and
//!   only re-reads the shared one when the cached value says the ring looks full/empty, so the
//!   shared cache lines bounce at most once per batch rather than once per descriptor.
//! - Indices are free-running `usize` counters (wrapping), slot = index & (N − 1); `N` must be a
//!   power of two (checked at compile time).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A buffer descriptor as posted to a NIC queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Descriptor {
    /// Bus/physical (or IOVA) address of the buffer.
    pub addr: u64,
    /// Buffer length in bytes.
    pub len: u32,
    /// Driver-defined flags (end-of-packet, checksum offload, ...).
    pub flags: u16,
}

impl Descriptor {
    #[inline(always)]
    fn pack_meta(self) -> u64 {
        u64::from(self.len) | (u64::from(self.flags) << 32)
    }
    #[inline(always)]
    fn unpack(addr: u64, meta: u64) -> Self {
        Self {
            addr,
            len: meta as u32,
            flags: (meta >> 32) as u16,
        }
    }
}

#[derive(Debug)]
struct Slot {
    addr: AtomicU64,
    meta: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Self {
            addr: AtomicU64::new(0),
            meta: AtomicU64::new(0),
        }
    }
}

/// Keeps the producer's and the consumer's index on separate cache lines so the two cores do not
/// invalidate each other's line on every update (false sharing).
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

/// Fixed-capacity SPSC descriptor ring with `N` slots (`N` a power of two, ≥ 2).
#[derive(Debug)]
pub struct Ring<const N: usize> {
    /// Next index the consumer will read; written only by the consumer.
    head: Padded<AtomicUsize>,
    /// Next index the producer will write; written only by the producer.
    tail: Padded<AtomicUsize>,
    slots: [Slot; N],
}

impl<const N: usize> Default for Ring<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Ring<N> {
    const MASK: usize = {
        assert!(
            N.is_power_of_two() && N >= 2,
            "ring capacity must be a power of two ≥ 2"
        );
        N - 1
    };

    /// An empty ring; `const` so it can initialise a `static`.
    pub const fn new() -> Self {
        let _ = Self::MASK;
        Self {
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            slots: [const { Slot::new() }; N],
        }
    }

    /// Number of slots.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Descriptors currently queued (a snapshot; exact when neither end is running).
    pub fn len(&self) -> usize {
        self.tail
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(self.head.0.load(Ordering::Acquire))
    }

    /// Whether no descriptor is queued (snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits the ring into its two ends. The `&mut` borrow guarantees there is only ever one of
    /// each while they live.
    pub fn split(&mut self) -> (Producer<'_, N>, Consumer<'_, N>) {
        let head = self.head.0.load(Ordering::Acquire);
        let tail = self.tail.0.load(Ordering::Acquire);
        let ring: &Self = self;
        (
            Producer {
                ring,
                tail,
                cached_head: head,
            },
            Consumer {
                ring,
                head,
                cached_tail: tail,
            },
        )
    }
}

/// The writing end of a [`Ring`].
#[derive(Debug)]
pub struct Producer<'a, const N: usize> {
    ring: &'a Ring<N>,
    /// Our own tail (we are its only writer, so no need to load it).
    tail: usize,
    /// Last head we observed; the real head can only be further ahead.
    cached_head: usize,
}

impl<const N: usize> Producer<'_, N> {
    /// Free slots, refreshing the cached head only if the cached view cannot satisfy `want`.
    #[inline]
    fn free(&mut self, want: usize) -> usize {
        let free = N - self.tail.wrapping_sub(self.cached_head);
        if free >= want {
            return free;
        }
        self.cached_head = self.ring.head.0.load(Ordering::Acquire);
        N - self.tail.wrapping_sub(self.cached_head)
    }

    #[inline(always)]
    fn write_slot(&self, idx: usize, d: Descriptor) {
        let slot = &self.ring.slots[idx & Ring::<N>::MASK];
        slot.addr.store(d.addr, Ordering::Relaxed);
        slot.meta.store(d.pack_meta(), Ordering::Relaxed);
    }

    /// Posts one descriptor, or gives it back if the ring is full.
    #[inline]
    pub fn push(&mut self, d: Descriptor) -> Result<(), Descriptor> {
        if self.free(1) == 0 {
            return Err(d);
        }
        self.write_slot(self.tail, d);
        self.tail = self.tail.wrapping_add(1);
        self.ring.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Posts as many descriptors from `ds` as fit, publishing them with a single index update;
    /// returns how many were posted.
    #[inline]
    pub fn push_slice(&mut self, ds: &[Descriptor]) -> usize {
        let n = self.free(ds.len()).min(ds.len());
        for (i, &d) in ds[..n].iter().enumerate() {
            self.write_slot(self.tail.wrapping_add(i), d);
        }
        if n > 0 {
            self.tail = self.tail.wrapping_add(n);
            self.ring.tail.0.store(self.tail, Ordering::Release);
        }
        n
    }
}

/// The reading end of a [`Ring`].
#[derive(Debug)]
pub struct Consumer<'a, const N: usize> {
    ring: &'a Ring<N>,
    head: usize,
    cached_tail: usize,
}

impl<const N: usize> Consumer<'_, N> {
    #[inline]
    fn available(&mut self, want: usize) -> usize {
        let avail = self.cached_tail.wrapping_sub(self.head);
        if avail >= want {
            return avail;
        }
        self.cached_tail = self.ring.tail.0.load(Ordering::Acquire);
        self.cached_tail.wrapping_sub(self.head)
    }

    #[inline(always)]
    fn read_slot(&self, idx: usize) -> Descriptor {
        let slot = &self.ring.slots[idx & Ring::<N>::MASK];
        Descriptor::unpack(
            slot.addr.load(Ordering::Relaxed),
            slot.meta.load(Ordering::Relaxed),
        )
    }

    /// Takes the oldest descriptor, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<Descriptor> {
        if self.available(1) == 0 {
            return None;
        }
        let d = self.read_slot(self.head);
        self.head = self.head.wrapping_add(1);
        self.ring.head.0.store(self.head, Ordering::Release);
        Some(d)
    }

    /// Fills `out` with as many queued descriptors as available, releasing their slots with a single
    /// index update; returns how many were taken.
    #[inline]
    pub fn pop_into(&mut self, out: &mut [Descriptor]) -> usize {
        let n = self.available(out.len()).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = self.read_slot(self.head.wrapping_add(i));
        }
        if n > 0 {
            self.head = self.head.wrapping_add(n);
            self.ring.head.0.store(self.head, Ordering::Release);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn d(i: u64) -> Descriptor {
        Descriptor {
            addr: i * 4096,
            len: i as u32,
            flags: (i % 7) as u16,
        }
    }

    #[test]
    fn fifo_full_and_empty() {
        let mut ring = Ring::<4>::new();
        let (mut p, mut c) = ring.split();
        assert_eq!(c.pop(), None);
        for i in 0..4 {
            p.push(d(i)).unwrap();
        }
        assert_eq!(p.push(d(9)), Err(d(9)));
        assert_eq!(c.pop(), Some(d(0)));
        p.push(d(4)).unwrap();
        let mut out = [Descriptor::default(); 8];
        assert_eq!(c.pop_into(&mut out), 4);
        assert_eq!(&out[..4], &[d(1), d(2), d(3), d(4)]);
        assert_eq!(c.pop(), None);
        assert!(ring.is_empty());
        // Re-split continues where the previous ends left off.
        let (mut p, mut c) = ring.split();
        assert_eq!(p.push_slice(&[d(5), d(6)]), 2);
        assert_eq!(c.pop(), Some(d(5)));
    }

    #[test]
    fn two_threads_preserve_order() {
        const COUNT: u64 = 200_000;
        let mut ring = Ring::<64>::new();
        let (mut p, mut c) = ring.split();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut i = 0;
                while i < COUNT {
                    if p.push(d(i)).is_ok() {
                        i += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
            let mut next = 0;
            let mut buf = [Descriptor::default(); 16];
            while next < COUNT {
                let n = c.pop_into(&mut buf);
                for got in &buf[..n] {
                    assert_eq!(*got, d(next));
                    next += 1;
                }
                if n == 0 {
                    std::hint::spin_loop();
                }
            }
        });
    }

    proptest! {
        /// Any interleaving of batch pushes and pops behaves like a bounded VecDeque.
        #[test]
        fn matches_model(ops in proptest::collection::vec((any::<bool>(), 0usize..12), 0..200)) {
            let mut ring = Ring::<8>::new();
            let (mut p, mut c) = ring.split();
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u64;
            for (push, n) in ops {
                if push {
                    let batch: Vec<_> = (0..n as u64).map(|i| d(next + i)).collect();
                    let pushed = p.push_slice(&batch);
                    prop_assert_eq!(pushed, n.min(8 - model.len()));
                    model.extend(batch[..pushed].iter().copied());
                    next += pushed as u64;
                } else {
                    let mut out = vec![Descriptor::default(); n];
                    let got = c.pop_into(&mut out);
                    prop_assert_eq!(got, n.min(model.len()));
                    for o in &out[..got] {
                        prop_assert_eq!(Some(*o), model.pop_front());
                    }
                }
            }
        }
    }
}
