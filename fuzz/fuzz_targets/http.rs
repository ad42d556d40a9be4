#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsrpc_core::fuzz::http(data));
