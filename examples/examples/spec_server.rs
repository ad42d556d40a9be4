//! Serves the methods of the JSON-RPC 2.0 specification's examples (`subtract` with
//! positional and named params, `sum`, `update`, `notify_hello`, `get_data`) over WebSocket
//! and HTTP POST on one port, with default limits and policies (the specification's methods
//! in the read-only rate class), so any conformance client can be pointed at it.
//!
//! `cargo run -p wsrpc-examples --example spec_server -- --port 8766 --adapter smol|async-std|blocking
//! [--ticks-ms MS] [--compression] [--tls-self-signed]` (prints `listening on ADDR` once ready).
//! With `--ticks-ms`, `{"n": N}` is published to the topic `ticks` at that interval, for
//! subscription clients; `--compression` accepts permessage-deflate with its defaults. With
//! `--tls-self-signed` it serves `wss://` and `https://` with a certificate for `localhost` and
//! `127.0.0.1` made at start, whose PEM it writes to a temporary file and names on a line
//! `certificate PATH` before `listening on ADDR`.

use std::net::SocketAddr;

use wsrpc_examples::SpecServer;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let addr = SocketAddr::from(([127, 0, 0, 1], wsrpc_examples::port_arg()));
    let adapter = wsrpc_examples::arg("--adapter").unwrap_or_else(|| "smol".into());
    let mut ws = wsrpc_core::ws::Config::default();
    if wsrpc_examples::flag("--compression") {
        ws.enable_compression();
    }
    let tls = match wsrpc_examples::flag("--tls-self-signed") {
        true => match wsrpc_examples::self_signed_tls() {
            Ok((config, path)) => {
                println!("certificate {}", path.display());
                Some(config)
            }
            Err(e) => {
                eprintln!("spec_server: cannot make a certificate: {e}");
                std::process::exit(2);
            }
        },
        false => None,
    };
    let server = match SpecServer::start_with(&adapter, addr, ws, tls) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("spec_server: {e}");
            std::process::exit(2);
        }
    };
    println!("listening on {}", server.local_addr());
    if let Some(ms) = wsrpc_examples::arg("--ticks-ms").and_then(|v| v.parse::<u64>().ok()) {
        let publisher = server.publisher();
        wsrpc_examples::spawn_ticker(
            move |n| {
                let _ = publisher.publish("ticks", &serde_json::json!({ "n": n }));
            },
            std::time::Duration::from_millis(ms.max(1)),
        );
    }
    // The server runs on its adapter's own threads until the process is stopped.
    loop {
        std::thread::park();
    }
}
