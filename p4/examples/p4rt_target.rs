//! A standalone software NexRoute target serving `p4.v1.P4Runtime`, for trying it with any
//! P4Runtime controller (p4runtime-shell, the `p4runtime` Python package, ...):
//!
//! ```sh
//! cargo run -p nexus-p4 --example p4rt_target -- 127.0.0.1:9559 1
//! ```
//!
//! Arguments: listen address (default `127.0.0.1:9559`; port 0 picks one) and device id
//! (default 1). Prints `listening on ADDR` once it accepts connections.

use std::net::SocketAddr;

use nexus_p4::Target;
use nexus_p4::server::P4RuntimeService;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:9559").parse()?;
    let device_id: u64 = args.next().as_deref().unwrap_or("1").parse()?;
    let target = Target::new(device_id);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(P4RuntimeService::server(target))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
