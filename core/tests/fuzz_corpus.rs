//! Replays every file of the fuzz corpora (seeds and any regression inputs) through the same
//! entry points the cargo-fuzz targets use, so findings stay fixed under `cargo test`.
#![allow(clippy::disallowed_methods)] // reads corpus files and takes one real Instant as origin

use std::path::PathBuf;
use std::time::Instant;

use wsrpc_core::Xoshiro256;
use wsrpc_core::ws::{ClientRequest, Config, Connection};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            files.push((path, data));
        }
    }
    files
}

#[test]
fn frame_decoder_corpus() {
    let files = corpus("frame_decoder");
    assert!(files.len() >= 5, "seed corpus present");
    for (_, data) in files {
        wsrpc_core::fuzz::frame_decoder(&data);
    }
}

#[test]
fn handshake_corpus() {
    let files = corpus("handshake");
    assert!(files.len() >= 5);
    for (_, data) in files {
        wsrpc_core::fuzz::handshake_heads(&data);
    }
}

#[test]
fn connection_corpus() {
    let origin = Instant::now();
    let files = corpus("connection");
    assert!(files.len() >= 5);
    for (_, data) in files {
        wsrpc_core::fuzz::connection(&data, origin);
    }
}

#[test]
fn client_seed_matches_the_entropy_the_fuzz_entry_uses() {
    // The seed generator re-implements Xoshiro256 to compute the accept value; check it agrees,
    // so the client seeds reach the open state instead of failing at the handshake.
    let (_, response) =
        corpus("handshake").into_iter().find(|(p, _)| p.ends_with("response")).unwrap();
    let now = Instant::now();
    let request = ClientRequest::new("localhost", "/").protocol("chat");
    let mut client =
        Connection::client(Config::default(), &request, Box::new(Xoshiro256::from_seed(7)), now);
    client.handle_input(now, &response);
    assert!(client.is_open(), "{:?}", client.error());
}

#[test]
fn jsonrpc_corpus() {
    let origin = Instant::now();
    let files = corpus("jsonrpc");
    assert!(files.len() >= 5);
    for (_, data) in files {
        wsrpc_core::fuzz::jsonrpc(&data, origin);
    }
}

#[test]
fn http_corpus() {
    let files = corpus("http");
    assert!(files.len() >= 3);
    for (_, data) in files {
        wsrpc_core::fuzz::http(&data);
    }
}

#[test]
fn engine_corpus() {
    let origin = Instant::now();
    let files = corpus("engine");
    assert!(files.len() >= 5);
    for (_, data) in files {
        wsrpc_core::fuzz::engine(&data, origin);
    }
}

#[test]
fn inflate_corpus() {
    let origin = Instant::now();
    let files = corpus("inflate");
    assert!(files.len() >= 5, "seed corpus present");
    for (path, data) in files {
        let (delivered, failed) = wsrpc_core::fuzz::inflate(&data, origin);
        let name = path.file_name().unwrap().to_str().unwrap();
        // The seeds reach both ends of the decoder: delivery and each refusal.
        let want = match name {
            "json_text" | "final_block" => Some((1, false)),
            "two_messages" | "takeover" | "empty" => Some((2, false)),
            "bomb" | "just_over" | "bad_utf8" | "corrupt" => Some((0, true)),
            _ => None,
        };
        if let Some(want) = want {
            assert_eq!((delivered, failed), want, "{name}");
        }
    }
}
