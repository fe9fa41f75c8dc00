//! Shared by the integration tests: a real P4Runtime server on a loopback port, and a demo
//! routing domain.
#![allow(dead_code)]

use std::net::SocketAddrV4;
use std::sync::Arc;

use nexus_firmware::Header;
use nexus_p4::Target;
use nexus_p4::compile::DomainInput;
use nexus_p4::server::P4RuntimeService;
use nexus_route::Advertisement;

/// Serves `target` on 127.0.0.1:<free port>; returns the endpoint URL.
pub async fn serve(target: Arc<Target>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(P4RuntimeService::server(target))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

pub const TENANT: u32 = 7;

pub fn endpoint(name: &str, address: &str, caps: &[&str], weight: u32) -> Advertisement {
    let ep: nexus_crds::routing::EndpointAdvertisement =
        serde_json::from_value(serde_json::json!({
            "name": name, "address": address,
            "capability": {"capabilities": caps, "modelFamily": "llm", "contextWindow": 131072,
                           "modalities": ["text"], "latencySlaMs": 150},
            "modelIdentityRef": {"name": name}, "weight": weight
        }))
        .expect("valid endpoint json");
    Advertisement::from_crd(&ep).expect("valid advertisement")
}

pub fn demo_domain(endpoints: Vec<Advertisement>) -> DomainInput {
    DomainInput {
        name: "acme/code-assistants".into(),
        tenant_id: TENANT,
        domain_id: nexus_route::id::domain_id("acme", "code-assistants"),
        default_for_tenant: true,
        endpoints,
    }
}

pub fn demo_endpoints() -> Vec<Advertisement> {
    vec![
        endpoint(
            "coder-a",
            "10.20.0.17:7400",
            &["code-generation", "chat"],
            70,
        ),
        endpoint("coder-b", "10.20.0.18:7400", &["code-generation"], 30),
        endpoint("chat-c", "10.20.0.19:7400", &["chat"], 100),
        endpoint("drained", "10.20.0.20:7400", &["code-generation"], 0),
        endpoint("v6-only", "[fd00::1]:7400", &["code-generation"], 50),
    ]
}

pub fn header(tenant: u32, stream: u32, payload: &[u8]) -> Header {
    let mut h = Header::opaque(stream, 0, payload.len() as u32);
    h.tenant_id = tenant;
    h
}

pub fn sad(class: &str, domain: u32) -> Vec<u8> {
    let mut d = nexus_route::Descriptor::for_class(nexus_route::id::capability_id(class));
    d.domain = domain;
    d.to_bytes().expect("valid descriptor")
}

pub fn routed_packet(tenant: u32, stream: u32, class: &str, domain: u32) -> Vec<u8> {
    let payload = b"hello, model";
    nexus_p4::packet::build(
        "10.0.0.1:40000".parse::<SocketAddrV4>().expect("addr"),
        "10.255.255.1:7401".parse::<SocketAddrV4>().expect("addr"),
        &header(tenant, stream, payload),
        Some(&sad(class, domain)),
        payload,
    )
    .expect("valid packet")
}

pub fn direct_packet(tenant: u32) -> Vec<u8> {
    let payload = b"direct";
    nexus_p4::packet::build(
        "10.0.0.1:40000".parse::<SocketAddrV4>().expect("addr"),
        "10.20.0.17:7400".parse::<SocketAddrV4>().expect("addr"),
        &header(tenant, 1, payload),
        None,
        payload,
    )
    .expect("valid packet")
}

pub fn dst_of(frame: &[u8]) -> SocketAddrV4 {
    let ip = [frame[30], frame[31], frame[32], frame[33]];
    let port = u16::from_be_bytes([frame[36], frame[37]]);
    SocketAddrV4::new(ip.into(), port)
}
