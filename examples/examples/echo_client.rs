//! A WebSocket echo client for the Autobahn|Testsuite fuzzingserver.
//!
//! `cargo run --release -p wsrpc-examples --example echo_client -- --url ws://127.0.0.1:9001 --agent wsrpc [--compression]`
//!
//! `--compression` offers permessage-deflate with its defaults.
//!
//! Asks the server for its case count, runs every case as an echo client, then asks it to
//! write the reports.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsrpc_core::ws::{ClientRequest, Config, Connection, Event, Message};

fn main() -> std::io::Result<()> {
    env_logger::init();
    let url = wsrpc_examples::arg("--url").unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = wsrpc_examples::arg("--agent").unwrap_or_else(|| "wsrpc".into());
    let authority =
        url.strip_prefix("ws://").expect("a ws:// URL").trim_end_matches('/').to_owned();
    let mut config = Config::default();
    config.max_message_size = 64 << 20;
    config.max_frame_size = 64 << 20;
    config.max_fragments = 1 << 20;
    if wsrpc_examples::flag("--compression") {
        config.enable_compression();
    }
    let config = Arc::new(config);

    let mut count = None;
    run(&authority, "/getCaseCount", &config, |msg| {
        count = msg.as_text().and_then(|t| t.trim().parse::<u32>().ok())
    })?;
    let count = count.expect("the server sent its case count");
    println!("running {count} cases as agent {agent}");
    for case in 1..=count {
        run(&authority, &format!("/runCase?case={case}&agent={agent}"), &config, |_| {})?;
    }
    run(&authority, &format!("/updateReports?agent={agent}"), &config, |_| {})?;
    println!("done; reports updated");
    Ok(())
}

/// Connects to `target`, echoes every message (after showing it to `seen`) until closed.
fn run(
    authority: &str,
    target: &str,
    config: &Arc<Config>,
    mut seen: impl FnMut(&Message),
) -> std::io::Result<()> {
    let mut sock = TcpStream::connect(authority)?;
    sock.set_nodelay(true)?;
    let request = ClientRequest::new(authority, target);
    let mut conn = Connection::client(
        config.clone(),
        &request,
        wsrpc_examples::os_seeded_entropy(),
        Instant::now(),
    );
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            let n = sock.write(bytes)?;
            conn.advance_transmit(n);
        }
        if conn.is_finished() {
            return Ok(());
        }
        let timeout = conn.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
        sock.set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))?;
        let now = Instant::now();
        match sock.read(&mut buf) {
            Ok(0) => conn.handle_eof(now),
            Ok(n) => conn.handle_all_input(now, &buf[..n], |conn, event| {
                if let Event::Message(msg) = event {
                    seen(&msg);
                    let _ = conn.send(now, msg);
                }
            }),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => conn.handle_eof(now),
            Err(e) => return Err(e),
        }
        conn.handle_timeout(Instant::now());
        while conn.poll_event().is_some() {}
    }
}
