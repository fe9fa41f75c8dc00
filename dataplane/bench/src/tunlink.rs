//! A packet-level link emulator on a TUN device, so that emulated loss and delay reach every
//! contender the same way: as lost and late IP packets, which the kernel's TCP (gRPC, HTTPS)
//! recovers from with its own retransmission and congestion control just as quinn does for
//! UDP. The kernel here has no netem, and a user-space TCP proxy can only model TCP's loss
//! response (the fallback, `contenders::tcp_delay_proxy`).
//!
//! How packets loop back: the device holds the host address `198.18.0.1/24` (RFC 2544's
//! benchmarking range). Path `i` has two aliases in that subnet, a *server* address
//! `198.18.0.(2 + 2i)` and a *client* address `198.18.0.(3 + 2i)`, which no interface owns, so
//! the kernel routes packets for them into the device. A client on this host sends to
//! `server:port`; the emulator reads the packet, rewrites it to come from `client` and go to
//! the host address, and writes it back after the path's delay unless the path loses it. The
//! server (bound to the unspecified address) sees a peer at `client` and answers there; that
//! packet too enters the device, is rewritten to come from `server`, and reaches the client.
//! Both directions cross the path once, so a round trip costs twice the one-way delay.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The host address the device holds; servers reached over a path must listen on it (or on
/// the unspecified address).
pub const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// At most this many paths: aliases run from .2 to .255.
const MAX_PATHS: usize = 126;
/// Ethernet's MTU: TCP's segments and quinn's datagrams are sized as on a real network.
const MTU: u16 = 1500;

/// What one path does to every packet, in each direction.
#[derive(Debug, Clone, Copy)]
pub struct Path {
    /// Probability a packet is dropped.
    pub loss: f64,
    /// Delay added to every packet.
    pub one_way: Duration,
}

/// Packet counters of one path, both directions together.
#[derive(Debug, Default)]
pub struct PathStats {
    /// Packets that entered the path.
    pub seen: AtomicU64,
    /// Packets the path dropped.
    pub dropped: AtomicU64,
}

/// A running emulator: the device and the task that moves its packets. Dropping it stops the
/// task and closes the device, which the kernel then removes.
#[derive(Debug)]
pub struct TunLinks {
    name: String,
    stats: Vec<Arc<PathStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunLinks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TunLinks {
    /// Creates the device and starts emulating `paths` (on the current runtime). Fails where
    /// TUN devices cannot be made (no `/dev/net/tun`, no CAP_NET_ADMIN).
    pub fn start(paths: &[Path], seed: u64) -> std::io::Result<Self> {
        if paths.is_empty() || paths.len() > MAX_PATHS {
            return Err(std::io::Error::other(format!(
                "between 1 and {MAX_PATHS} paths, not {}",
                paths.len()
            )));
        }
        let name = format!("nxbench{}", std::process::id() % 100_000);
        let dev = tun_rs::DeviceBuilder::new()
            .name(&name)
            .ipv4(HOST, 24, None)
            .mtu(MTU)
            .build_async()?;
        let stats: Vec<_> = paths.iter().map(|_| Arc::default()).collect();
        let task = tokio::spawn(run(
            dev,
            paths.to_vec(),
            stats.clone(),
            StdRng::seed_from_u64(seed),
        ));
        Ok(Self { name, stats, task })
    }

    /// Where a client sends to reach, over path `path`, a server listening on `port`.
    pub fn front(path: usize, port: u16) -> SocketAddr {
        SocketAddr::from((alias(path, Direction::ToServer), port))
    }

    /// The device's name (for the report).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Packets the device dropped because its queue was full (the emulator fell behind), from
    /// the kernel's interface counters.
    pub fn device_drops(&self) -> Option<u64> {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/tx_dropped",
            self.name
        ))
        .ok()?
        .trim()
        .parse()
        .ok()
    }

    /// Counters of path `path`.
    pub fn stats(&self, path: usize) -> Option<&PathStats> {
        self.stats.get(path).map(|s| &**s)
    }
}

/// Which way a packet crosses its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Addressed to the path's server alias: from a client, for a server.
    ToServer,
    /// Addressed to the path's client alias: a server's answer.
    ToClient,
}

fn alias(path: usize, d: Direction) -> Ipv4Addr {
    let base = 2 + 2 * path as u8;
    let last = match d {
        Direction::ToServer => base,
        Direction::ToClient => base + 1,
    };
    Ipv4Addr::new(198, 18, 0, last)
}

/// Rewrites a packet read from the device so that writing it back delivers it across the
/// path: the sender becomes the path's other alias, the receiver the host, and the IPv4 and
/// TCP/UDP checksums are recomputed. Returns the path and direction, or `None` for a packet
/// that is not the emulator's (another protocol, not on a path, malformed), which is dropped.
fn translate(pkt: &mut [u8], paths: usize) -> Option<(usize, Direction)> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || total > pkt.len() {
        return None;
    }
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    let [a, b, c, last] = dst.octets();
    if [a, b, c] != [198, 18, 0] || last < 2 {
        return None;
    }
    let path = usize::from(last - 2) / 2;
    if path >= paths {
        return None;
    }
    let dir = if (last - 2) % 2 == 0 {
        Direction::ToServer
    } else {
        Direction::ToClient
    };
    let from = match dir {
        Direction::ToServer => alias(path, Direction::ToClient),
        Direction::ToClient => alias(path, Direction::ToServer),
    };
    pkt[12..16].copy_from_slice(&from.octets());
    pkt[16..20].copy_from_slice(&HOST.octets());
    pkt[10..12].fill(0);
    let sum = checksum(0, &pkt[..ihl]);
    pkt[10..12].copy_from_slice(&sum.to_be_bytes());
    let proto = pkt[9];
    let fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0;
    let offset = match proto {
        6 => 16,
        17 => 6,
        _ => return Some((path, dir)),
    };
    if fragment {
        // Only whole datagrams are recomputed; neither TCP nor quinn fragments (DF is set).
        return None;
    }
    let l4 = &mut pkt[ihl..total];
    if l4.len() < offset + 2 {
        return None;
    }
    if proto == 17 && l4[6..8] == [0, 0] {
        // UDP without a checksum stays without one.
        return Some((path, dir));
    }
    l4[offset..offset + 2].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&from.octets());
    pseudo[4..8].copy_from_slice(&HOST.octets());
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
    let mut sum = checksum(checksum_partial(0, &pseudo), l4);
    if proto == 17 && sum == 0 {
        sum = 0xffff;
    }
    l4[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
    Some((path, dir))
}

/// The one's-complement sum of `data` added to `acc`, not yet folded.
fn checksum_partial(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The Internet checksum (RFC 1071) of `data`, continuing from a partial sum.
fn checksum(acc: u32, data: &[u8]) -> u16 {
    let mut acc = checksum_partial(acc, data);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

async fn run(
    dev: tun_rs::AsyncDevice,
    paths: Vec<Path>,
    stats: Vec<Arc<PathStats>>,
    mut rng: StdRng,
) {
    // Packets waiting out their delay, earliest first (ties in arrival order).
    let mut queue = nexus_stream::linkem::DelayQueue::new();
    let mut buf = vec![0u8; usize::from(MTU) + 64];
    loop {
        tokio::select! {
            read = dev.recv(&mut buf) => {
                let Ok(n) = read else { return };
                let Some((path, _)) = translate(&mut buf[..n], paths.len()) else { continue };
                stats[path].seen.fetch_add(1, Ordering::Relaxed);
                if paths[path].loss > 0.0 && rng.random_bool(paths[path].loss) {
                    stats[path].dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                queue.push(Instant::now() + paths[path].one_way, buf[..n].to_vec());
            }
            () = queue.due() => {
                while let Some(pkt) = queue.pop_due() {
                    // A full device queue drops the packet, as a full link would.
                    let _ = dev.send(&pkt).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 packet from the host to `dst` carrying UDP (17) or TCP (6), checksums valid.
    fn packet(proto: u8, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let l4_header = if proto == 17 { 8 } else { 20 };
        let total = 20 + l4_header + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&HOST.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let sum = checksum(0, &p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p[20..22].copy_from_slice(&4000u16.to_be_bytes());
        p[22..24].copy_from_slice(&7400u16.to_be_bytes());
        let at = if proto == 17 {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            26
        } else {
            p[32] = 5 << 4; // data offset: 5 words
            36
        };
        p[20 + l4_header..].copy_from_slice(payload);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&p[12..20]);
        pseudo[9] = proto;
        pseudo[10..12].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        let sum = checksum(checksum_partial(0, &pseudo), &p[20..]);
        p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// A packet's checksums verify when the sum over them (with the pseudo header) is zero.
    fn verifies(p: &[u8]) -> bool {
        let ip_ok = checksum(0, &p[..20]) == 0;
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&p[12..20]);
        pseudo[9] = p[9];
        pseudo[10..12].copy_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        ip_ok && checksum(checksum_partial(0, &pseudo), &p[20..]) == 0
    }

    #[test]
    fn a_packet_to_a_server_alias_comes_back_from_the_client_alias_with_valid_checksums() {
        for (proto, header) in [(17, 28), (6, 40)] {
            for payload in [&b"odd"[..], b"even", &[0xff; 1400]] {
                let mut p = packet(proto, alias(1, Direction::ToServer), payload);
                assert!(verifies(&p));
                assert_eq!(translate(&mut p, 2), Some((1, Direction::ToServer)));
                assert_eq!(p[12..16], [198, 18, 0, 5]);
                assert_eq!(p[16..20], HOST.octets());
                assert!(verifies(&p), "checksums after rewriting (protocol {proto})");
                assert_eq!(&p[header..], payload, "payload untouched");
            }
        }
    }

    #[test]
    fn an_answer_to_the_client_alias_comes_from_the_server_alias() {
        let mut p = packet(17, Ipv4Addr::new(198, 18, 0, 3), b"answer");
        assert_eq!(translate(&mut p, 1), Some((0, Direction::ToClient)));
        assert_eq!(p[12..16], [198, 18, 0, 2]);
        assert!(verifies(&p));
    }

    #[test]
    fn packets_off_the_paths_or_malformed_are_not_forwarded() {
        // A path that does not exist.
        let mut p = packet(17, Ipv4Addr::new(198, 18, 0, 6), b"x");
        assert_eq!(translate(&mut p, 2), None);
        // Outside the subnet.
        let mut p = packet(17, Ipv4Addr::new(10, 0, 0, 2), b"x");
        assert_eq!(translate(&mut p, 2), None);
        // Truncated: the header claims more than was read.
        let mut p = packet(17, Ipv4Addr::new(198, 18, 0, 2), b"xyz");
        let short = p.len() - 1;
        assert_eq!(translate(&mut p[..short], 2), None);
        // IPv6, and too short for any header.
        assert_eq!(translate(&mut [0x60; 40], 2), None);
        assert_eq!(translate(&mut [0x45; 8], 2), None);
    }
}
