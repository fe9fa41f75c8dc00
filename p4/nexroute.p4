/*
 * NexRoute: capability routing for NexLink overlay traffic (P4_16, v1model).
 *
 * Overlay encapsulation: Ethernet / IPv4 (no options) / UDP, then
 *   - UDP destination port 7400: a NexLink frame (64-byte header owned by
 *     firmware/src/header.rs, then payload), addressed to a host: counted per tenant, forwarded
 *     by its IP destination;
 *   - UDP destination port 7401: a NexLink frame addressed by capability: the NexLink header,
 *     then a Semantic Address Descriptor (SAD, owned by dataplane/route/src/sad.rs) whose fixed
 *     36-byte part the parser extracts, then the rest of the SAD and the payload. The pipeline
 *     picks a weighted next hop among the endpoints admitted for the descriptor's capability
 *     class and rewrites the IPv4 and UDP destinations.
 *
 * NexLink and SAD integers are little-endian on the wire; P4 extracts bits in network order, so
 * those fields hold byte-reversed values. Match keys on them are the wire bytes in order: the
 * table compiler (p4/src/compile.rs) writes tenant.to_le_bytes(), class.to_le_bytes(), ...
 *
 * The software pipeline (p4/src/pipeline.rs) implements this program; p4/tests/program.rs
 * checks that this source, nexroute.p4info.txtpb and the software tables agree.
 */

#include <core.p4>
#include <v1model.p4>

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<8>  IP_PROTO_UDP   = 17;
const bit<16> NEXLINK_PORT   = 7400;
const bit<16> NEXROUTE_PORT  = 7401;
const bit<16> NEXLINK_MAGIC  = 0x4E4C;  /* "NL" */
const bit<16> SAD_MAGIC      = 0x4E52;  /* "NR" */

/* Drop reasons, the index into the `drops` counter. */
const bit<32> DROP_UNKNOWN_TENANT = 1;
const bit<32> DROP_NO_ROUTE       = 2;
const bit<32> DROP_TTL_EXPIRED    = 3;

header ethernet_t {
    bit<48> dst_addr;
    bit<48> src_addr;
    bit<16> ether_type;
}

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<8>  diffserv;
    bit<16> total_len;
    bit<16> identification;
    bit<3>  flags;
    bit<13> frag_offset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdr_checksum;
    bit<32> src_addr;
    bit<32> dst_addr;
}

header udp_t {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

/* The 64-byte NexLink header (see firmware/src/header.rs for the meaning of each field). */
header nexlink_t {
    bit<16>  magic;
    bit<8>   version;
    bit<8>   mode;
    bit<16>  flags;
    bit<8>   dtype;
    bit<8>   rank;
    bit<32>  stream_id;
    bit<32>  tenant_id;
    bit<64>  sequence;
    bit<128> shape;
    bit<32>  payload_len;
    bit<32>  checksum;
    bit<128> trace_id;
}

/* The fixed 36-byte part of a Semantic Address Descriptor. */
header sad_t {
    bit<16> magic;
    bit<8>  version;
    bit<8>  flags;
    bit<16> length;
    bit<8>  modalities;
    bit<8>  min_trust;
    bit<8>  fan_out;
    bit<8>  n_caps;
    bit<8>  n_claims;
    bit<8>  n_proofs;
    bit<32> domain_id;
    bit<32> class_id;
    bit<32> model_family;
    bit<32> min_context;
    bit<32> max_latency;
    bit<32> max_cost;
}

struct headers_t {
    ethernet_t ethernet;
    ipv4_t     ipv4;
    udp_t      udp;
    nexlink_t  nexlink;
    sad_t      sad;
}

struct metadata_t {
    bit<16> tenant_index;
    bit<16> domain_index;
    bit<32> route_id;
    bit<32> drop_reason;
}

parser NexRouteParser(packet_in packet, out headers_t hdr, inout metadata_t meta,
                      inout standard_metadata_t standard_metadata) {
    state start {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }
    state parse_ipv4 {
        packet.extract(hdr.ipv4);
        transition select(hdr.ipv4.ihl, hdr.ipv4.protocol) {
            (5, IP_PROTO_UDP): parse_udp;
            default: accept;
        }
    }
    state parse_udp {
        packet.extract(hdr.udp);
        transition select(hdr.udp.dst_port) {
            NEXLINK_PORT: parse_nexlink;
            NEXROUTE_PORT: parse_nexlink_routed;
            default: accept;
        }
    }
    state parse_nexlink {
        packet.extract(hdr.nexlink);
        transition select(hdr.nexlink.magic, hdr.nexlink.version) {
            (NEXLINK_MAGIC, 1): accept;
            default: reject;
        }
    }
    state parse_nexlink_routed {
        packet.extract(hdr.nexlink);
        transition select(hdr.nexlink.magic, hdr.nexlink.version) {
            (NEXLINK_MAGIC, 1): parse_sad;
            default: reject;
        }
    }
    state parse_sad {
        packet.extract(hdr.sad);
        transition select(hdr.sad.magic, hdr.sad.version) {
            (SAD_MAGIC, 1): accept;
            default: reject;
        }
    }
}

control NexRouteVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control NexRouteIngress(inout headers_t hdr, inout metadata_t meta,
                        inout standard_metadata_t standard_metadata) {
    /* Bytes and packets per tenant, indexed by the tenant index the control plane assigns. */
    counter(1024, CounterType.packets_and_bytes) tenant_traffic;
    /* Packets dropped, by reason (DROP_*). */
    counter(4, CounterType.packets) drops;
    /* Weighted next hops: one group per route, members weighted by the table compiler. */
    @max_group_size(128)
    action_selector(HashAlgorithm.crc16, 4096, 14) next_hop_selector;

    action set_tenant(bit<16> tenant_index) {
        meta.tenant_index = tenant_index;
    }
    action unknown_tenant() {
        mark_to_drop(standard_metadata);
        meta.drop_reason = DROP_UNKNOWN_TENANT;
    }
    /* Every tenant with traffic on this node; the index selects its tenant_traffic cell. */
    table tenant {
        key = {
            hdr.nexlink.tenant_id: exact;
        }
        actions = { set_tenant; unknown_tenant; }
        default_action = unknown_tenant();
        size = 1024;
    }

    action set_domain(bit<16> domain_index) {
        meta.domain_index = domain_index;
    }
    action no_route() {
        mark_to_drop(standard_metadata);
        meta.drop_reason = DROP_NO_ROUTE;
    }
    /* The tenant's routing domains, by the descriptor's domain id (0: the tenant's default). */
    table domain {
        key = {
            meta.tenant_index: exact;
            hdr.sad.domain_id: exact;
        }
        actions = { set_domain; no_route; }
        default_action = no_route();
        size = 4096;
    }

    action set_route(bit<32> route_id) {
        meta.route_id = route_id;
    }
    /* Capability class (the descriptor's primary capability) within a domain. */
    table capability_class {
        key = {
            meta.domain_index: exact;
            hdr.sad.class_id: exact;
        }
        actions = { set_route; no_route; }
        default_action = no_route();
        size = 16384;
    }

    action set_next_hop(bit<32> dst_addr, bit<16> dst_port, bit<9> port) {
        hdr.ipv4.dst_addr = dst_addr;
        hdr.udp.dst_port = dst_port;
        hdr.udp.checksum = 0;
        hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
        standard_metadata.egress_spec = port;
    }
    /* Weighted next hop: one selector group per route, one member per admitted endpoint. */
    table next_hop {
        key = {
            meta.route_id: exact;
            hdr.nexlink.stream_id: selector;
            hdr.ipv4.src_addr: selector;
            hdr.udp.src_port: selector;
        }
        actions = { set_next_hop; no_route; }
        implementation = next_hop_selector;
        size = 16384;
    }

    apply {
        if (hdr.nexlink.isValid()) {
            if (tenant.apply().hit) {
                tenant_traffic.count((bit<32>) meta.tenant_index);
                if (hdr.sad.isValid()) {
                    if (hdr.ipv4.ttl <= 1) {
                        mark_to_drop(standard_metadata);
                        meta.drop_reason = DROP_TTL_EXPIRED;
                    } else if (domain.apply().hit) {
                        if (capability_class.apply().hit) {
                            next_hop.apply();
                        }
                    }
                }
            }
            if (meta.drop_reason != 0) {
                drops.count(meta.drop_reason);
            }
        }
    }
}

control NexRouteEgress(inout headers_t hdr, inout metadata_t meta,
                       inout standard_metadata_t standard_metadata) {
    apply { }
}

control NexRouteComputeChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply {
        update_checksum(hdr.ipv4.isValid(),
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.diffserv, hdr.ipv4.total_len,
              hdr.ipv4.identification, hdr.ipv4.flags, hdr.ipv4.frag_offset, hdr.ipv4.ttl,
              hdr.ipv4.protocol, hdr.ipv4.src_addr, hdr.ipv4.dst_addr },
            hdr.ipv4.hdr_checksum, HashAlgorithm.csum16);
    }
}

control NexRouteDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.ipv4);
        packet.emit(hdr.udp);
        packet.emit(hdr.nexlink);
        packet.emit(hdr.sad);
    }
}

V1Switch(NexRouteParser(), NexRouteVerifyChecksum(), NexRouteIngress(), NexRouteEgress(),
         NexRouteComputeChecksum(), NexRouteDeparser()) main;
