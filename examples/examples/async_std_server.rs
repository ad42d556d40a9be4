//! The demo service on async-std. `cargo run -p wsrpc-examples --example async_std_server -- --port 8766`
//!
//! Try `websocat ws://127.0.0.1:8766` and send
//! `{"jsonrpc":"2.0","method":"subscribe","params":["ticks"],"id":1}`, or
//! `curl -d '{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}' -H 'Content-Type: application/json' http://127.0.0.1:8766/`.

use std::net::SocketAddr;
use std::time::Duration;

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let addr = SocketAddr::from(([127, 0, 0, 1], wsrpc_examples::port_arg()));
    let server = wsrpc_async_std::Server::builder()
        .router(wsrpc_examples::demo_router())
        .bind(addr)
        .start()?;
    println!("listening on {}", server.local_addr());
    let publisher = server.publisher();
    wsrpc_examples::spawn_ticker(
        move |n| drop(publisher.publish("ticks", &n)),
        Duration::from_secs(1),
    );
    async_std::task::block_on(std::future::pending::<()>());
    Ok(())
}
