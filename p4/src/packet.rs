//! Building overlay packets (Ethernet / IPv4 / UDP / NexLink header / [descriptor] / payload),
//! for the dataplane's send path, tests and benches.

use std::net::SocketAddrV4;

use nexus_firmware::Header;

use crate::pipeline::{NEXLINK_PORT, NEXROUTE_PORT};

/// Builds one overlay frame. With a descriptor (encoded SAD bytes) the frame goes to UDP port
/// 7401 to be routed by capability; without, to `dst`'s port (7400 for host-addressed NexLink).
/// The NexLink header must describe `payload` (its `payload_len`).
pub fn build(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    header: &Header,
    descriptor: Option<&[u8]>,
    payload: &[u8],
) -> Result<Vec<u8>, nexus_firmware::FrameError> {
    let sad = descriptor.unwrap_or(&[]);
    let udp_len = 8 + nexus_firmware::HEADER_LEN + sad.len() + payload.len();
    let ip_len = 20 + udp_len;
    let mut p = Vec::with_capacity(14 + ip_len);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // dst MAC (locally administered)
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // src MAC
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let mut sum: u32 = ip
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(&ip);
    let dport = if descriptor.is_some() {
        NEXROUTE_PORT
    } else {
        dst.port()
    };
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    let mut h = [0u8; nexus_firmware::HEADER_LEN];
    header.encode(&mut h)?;
    p.extend_from_slice(&h);
    p.extend_from_slice(sad);
    p.extend_from_slice(payload);
    Ok(p)
}

/// Whether an IPv4 header's checksum verifies.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let Some(ip) = frame.get(14..34) else {
        return false;
    };
    let mut sum: u32 = ip
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// The default port of host-addressed NexLink traffic.
pub const DEFAULT_PORT: u16 = NEXLINK_PORT;

/// A routed lookup's result, to be remembered by a caller that does not run the same probe
/// through the same tables again: the tables are a pure function of the frame, so the next
/// hop holds until the next table batch, and [`Pick::replay`] counts what the run counted
/// (the tenant's `tenant_traffic` cell), so remembered picks stay visible in the counters a
/// P4Runtime controller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The endpoint the tables picked.
    pub hop: SocketAddrV4,
    tenant_index: usize,
    frame_len: usize,
}

impl Pick {
    /// Counts this lookup again in `loaded`'s counters, as running its frame would.
    pub fn replay(&self, loaded: &crate::Loaded) {
        loaded
            .snapshot
            .count_tenant(&loaded.counters, self.tenant_index, self.frame_len);
    }
}

/// Where the pipeline sends a capability-addressed call: builds the frame a sender would emit
/// for `tenant_id`, capability `class_id` in `domain_id` (0: the tenant's default domain) and
/// flow `stream` (the selector hashes it), runs it through `loaded` and returns the next hop it
/// was rewritten to — the endpoint the tables pick — with what [`Pick::replay`] needs. Any
/// other verdict is returned as is.
pub fn pick(
    loaded: &crate::Loaded,
    tenant_id: u32,
    class_id: u32,
    domain_id: u32,
    stream: u32,
) -> Result<Pick, crate::Verdict> {
    let mut d = nexus_route::Descriptor::for_class(class_id);
    d.domain = domain_id;
    let sad = d
        .to_bytes()
        .map_err(|_| crate::Verdict::Dropped(crate::DropReason::Malformed))?;
    let payload = b"probe";
    let mut h = Header::opaque(stream, 0, payload.len() as u32);
    h.tenant_id = tenant_id;
    let mut frame = build(
        SocketAddrV4::new([127, 0, 0, 1].into(), 40000),
        SocketAddrV4::new([127, 0, 0, 1].into(), NEXROUTE_PORT),
        &h,
        Some(&sad),
        payload,
    )
    .map_err(|_| crate::Verdict::Dropped(crate::DropReason::Malformed))?;
    let frame_len = frame.len();
    match loaded.process(&mut frame) {
        crate::Verdict::Routed { .. } => {
            let (Some(ip), Some(port)) = (frame.get(30..34), frame.get(36..38)) else {
                return Err(crate::Verdict::Passed);
            };
            let tenant_index = loaded
                .snapshot
                .tenant_index(tenant_id)
                .ok_or(crate::Verdict::Passed)?;
            Ok(Pick {
                hop: SocketAddrV4::new(
                    [ip[0], ip[1], ip[2], ip[3]].into(),
                    u16::from_be_bytes([port[0], port[1]]),
                ),
                tenant_index,
                frame_len,
            })
        }
        other => Err(other),
    }
}
