//! Serves the methods of the JSON-RPC 2.0 specification's examples (`subtract` with
//! positional and named params, `sum`, `update`, `notify_hello`, `get_data`) over WebSocket
//! and HTTP POST on one port, with default limits and policies, so any conformance client can
//! be pointed at it.
//!
//! `cargo run -p wsrpc-examples --example spec_server -- --port 8766 --adapter smol|async-std|blocking`
//! (prints `listening on ADDR` once ready).

use std::net::SocketAddr;

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let addr = SocketAddr::from(([127, 0, 0, 1], wsrpc_examples::port_arg()));
    let router = wsrpc_examples::spec_router();
    let adapter = wsrpc_examples::arg("--adapter").unwrap_or_else(|| "smol".into());
    let bound = |a: SocketAddr| println!("listening on {a}");
    match adapter.as_str() {
        "smol" => {
            let server = wsrpc_smol::Server::builder().router(router).bind(addr).start()?;
            bound(server.local_addr());
            smol::block_on(smol::future::pending::<()>());
        }
        "async-std" => {
            let server = wsrpc_async_std::Server::builder().router(router).bind(addr).start()?;
            bound(server.local_addr());
            async_std::task::block_on(std::future::pending::<()>());
        }
        "blocking" => {
            let server = wsrpc_blocking::Server::builder().router(router).bind(addr).start()?;
            bound(server.local_addr());
            loop {
                std::thread::park();
            }
        }
        other => {
            eprintln!("unknown adapter {other:?}: use smol, async-std or blocking");
            std::process::exit(2);
        }
    }
    Ok(())
}
