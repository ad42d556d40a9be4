//! A WebSocket echo server: the wsrpc core driven over `std::net`, one thread per connection.
//!
//! `cargo run --release -p wsrpc-examples --example echo -- --port 9001 [--compression]`
//!
//! Limits are raised so the Autobahn|Testsuite 9.x cases (16 MiB messages, 64-byte fragments)
//! pass; everything else uses the defaults. `--compression` accepts permessage-deflate with
//! its defaults (the 12.x and 13.x cases).

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wsrpc_core::ws::{Config, Connection, Event};

fn main() -> std::io::Result<()> {
    env_logger::init();
    let port = wsrpc_examples::arg("--port").unwrap_or_else(|| "9001".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}"))?;
    let mut config = Config::default();
    config.max_message_size = 64 << 20;
    config.max_frame_size = 64 << 20;
    config.max_fragments = 1 << 20;
    if wsrpc_examples::flag("--compression") {
        config.enable_compression();
    }
    let config = Arc::new(config);
    println!("echo server listening on ws://{}", listener.local_addr()?);
    for stream in listener.incoming() {
        let (stream, config) = (stream?, config.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(stream, config) {
                log::debug!("connection ended: {e}");
            }
        });
    }
    Ok(())
}

/// The drive loop: write what is pending, read with the core's next deadline as timeout,
/// feed the bytes and answer the events, fire timers; until the core says it is finished.
fn serve(mut sock: TcpStream, config: Arc<Config>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut conn = Connection::server(config, Instant::now());
    let (mut buf, mut shut) = (vec![0u8; 64 * 1024], false);
    while !conn.is_finished() {
        loop {
            let mut slices = [IoSlice::new(&[]); 16];
            let n = conn.poll_transmit_vectored(&mut slices);
            if n == 0 {
                break;
            }
            let written = sock.write_vectored(&slices[..n])?;
            conn.advance_transmit(written);
        }
        if conn.wants_shutdown_write() && !std::mem::replace(&mut shut, true) {
            sock.shutdown(Shutdown::Write)?; // FIN after our last bytes; read on until EOF
        }
        let wait = conn.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
        sock.set_read_timeout(wait.map(|w| w.max(Duration::from_millis(1))))?;
        let now = Instant::now();
        match sock.read(&mut buf) {
            Ok(0) => conn.handle_eof(now),
            Ok(n) => conn.handle_all_input(now, &buf[..n], |conn, event| {
                if let Event::Message(msg) = event {
                    let _ = conn.send(now, msg);
                }
            }),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => conn.handle_eof(now),
            Err(e) => return Err(e),
        }
        conn.handle_timeout(Instant::now());
        while let Some(event) = conn.poll_event() {
            log::debug!("event: {event:?}");
        }
    }
    Ok(())
}
