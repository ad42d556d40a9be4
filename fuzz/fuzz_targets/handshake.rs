#![no_main]
use std::sync::LazyLock;
use std::time::Instant;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsrpc_core::fuzz::handshake_heads(data);
    // The same bytes fed to whole connections in both roles, as the opening of the stream.
    let mut script = vec![0u8, 0, data.len().min(255) as u8];
    script.extend_from_slice(&data[..data.len().min(255)]);
    wsrpc_core::fuzz::connection(&script, *ORIGIN);
    script[0] = 1;
    wsrpc_core::fuzz::connection(&script, *ORIGIN);
});
