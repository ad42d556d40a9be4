//! Shared bits of the examples: argument parsing and an OS-seeded entropy source.

use wsrpc_core::Xoshiro256;

/// The value after `--name` on the command line, if any.
pub fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
        if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
    }
    None
}

/// A fast generator seeded from the operating system, for client mask keys.
pub fn os_seeded_entropy() -> Box<Xoshiro256> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).expect("the OS entropy source is available");
    Box::new(Xoshiro256::from_seed(u64::from_le_bytes(seed)))
}
