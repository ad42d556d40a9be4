#![no_main]
use std::sync::LazyLock;
use std::time::Instant;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = wsrpc_core::fuzz::inflate(data, *ORIGIN);
});
