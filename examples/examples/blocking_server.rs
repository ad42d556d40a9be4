//! The demo service on plain threads, no async runtime.
//! `cargo run -p wsrpc-examples --example blocking_server -- --port 8766`

use std::net::SocketAddr;
use std::time::Duration;

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = SocketAddr::from(([127, 0, 0, 1], wsrpc_examples::port_arg()));
    let server = wsrpc_blocking::Server::builder()
        .router(wsrpc_examples::demo_router())
        .bind(addr)
        .start()?;
    println!("listening on {}", server.local_addr());
    let publisher = server.publisher();
    wsrpc_examples::spawn_ticker(
        move |n| drop(publisher.publish("ticks", &n)),
        Duration::from_secs(1),
    );
    loop {
        std::thread::park();
    }
}
