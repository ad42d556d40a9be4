//! `wsrpc-bench`: wsrpc next to jsonrpsee, tokio-tungstenite and fastwebsockets, measured in
//! the same run on the same machine (issue 5).
//!
//! ```text
//! cargo run --release -p wsrpc-bench -- <echo|calls|fanout|idle|churn|cluster|echo-deflate|fanout-deflate|idle-deflate|tls-echo|tls-calls|tls-churn|tls-idle|tls|all> [--servers a,b,c] [--quick] [--rounds N] [--json FILE]
//! ```
//!
//! Each server runs in its own process (`wsrpc-bench serve KIND`, pinned to CPU 0), the load
//! client in another (`wsrpc-bench client SPEC`, pinned to CPU 1, one thread); a fresh server
//! per run; servers alternate A B A B … for several rounds and the table shows medians.
//! Server CPU per operation comes from `/proc/PID/stat` over the measured window.
//!
//! `cluster` runs two `wsrpc-cluster` instances sharing topics through a private
//! `redis-server` (all three pinned to CPU 0), the load client splitting its connections
//! between them, next to one `wsrpc-smol` instance without Redis under the same load; then it
//! kills an instance under its clients and measures how long they take to resume on the
//! other.

mod churn;
mod client;
mod cluster;
mod report;
mod runner;
mod servers;
mod sys;
mod wire;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: wsrpc-bench <echo|calls|fanout|idle|churn|cluster|echo-deflate|fanout-deflate|idle-deflate|tls-echo|tls-calls|tls-churn|tls-idle|tls|all> [--servers a,b,c] [--quick] [--rounds N] [--json FILE]\n\
         servers: {}",
        servers::ALL.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // Hidden: the server process.
        Some("serve") => {
            sys::die_with_parent();
            sys::raise_nofile();
            if let Err(e) = sys::pin_to_cpu(0) {
                eprintln!("serve: cannot pin to CPU 0: {e}");
            }
            let Some(kind) = args.get(1) else { return usage() };
            let value = |name: &str| {
                args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
            };
            let number = |name: &str| value(name).and_then(|v| v.parse::<u64>().ok());
            let publishing = match (number("--rate"), number("--topics")) {
                (Some(rate), Some(topics)) => servers::Publishing::Paced { rate, topics },
                _ if args.iter().any(|a| a == "--fanout") => servers::Publishing::Window,
                _ => servers::Publishing::None,
            };
            let payload = number("--payload").unwrap_or(0) as usize;
            let tls = args.iter().any(|a| a == "--tls");
            match servers::serve(kind, publishing, payload, tls, value("--redis").as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("serve {kind}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // Hidden: the load client process.
        Some("client") => {
            sys::die_with_parent();
            if let Err(e) = sys::pin_to_cpu(1) {
                eprintln!("client: cannot pin to CPU 1: {e}");
            }
            let Some(spec) = args.get(1).and_then(|s| serde_json::from_str(s).ok()) else {
                return usage();
            };
            match client::run(&spec) {
                Ok(report) => {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("client: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(
            scenario @ ("echo" | "calls" | "fanout" | "idle" | "churn" | "cluster" | "echo-deflate"
            | "fanout-deflate" | "idle-deflate" | "tls-echo" | "tls-calls"
            | "tls-churn" | "tls-idle" | "tls" | "all"),
        ) => {
            let mut options = runner::Options::new(args.iter().any(|a| a == "--quick"));
            let mut it = args.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--servers" => {
                        let Some(list) = it.next() else { return usage() };
                        let names: Vec<String> = list.split(',').map(str::to_owned).collect();
                        if let Some(bad) =
                            names.iter().find(|n| !servers::ALL.contains(&n.as_str()))
                        {
                            eprintln!("unknown server {bad}");
                            return usage();
                        }
                        options.servers = Some(names);
                    }
                    "--rounds" => {
                        let Some(n) = it.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0)
                        else {
                            return usage();
                        };
                        options.rounds = n;
                        options.rounds_given = true;
                    }
                    "--json" => {
                        let Some(file) = it.next() else { return usage() };
                        options.json = Some(file.into());
                    }
                    "--quick" => {}
                    s if s == scenario => {}
                    other => {
                        eprintln!("unknown argument {other}");
                        return usage();
                    }
                }
            }
            let scenarios: Vec<&'static str> = [
                "echo",
                "calls",
                "fanout",
                "idle",
                "churn",
                "cluster",
                "echo-deflate",
                "fanout-deflate",
                "idle-deflate",
                "tls-echo",
                "tls-calls",
                "tls-churn",
                "tls-idle",
            ]
            .into_iter()
            .filter(|s| {
                scenario == "all" || *s == scenario || (scenario == "tls" && s.starts_with("tls-"))
            })
            .collect();
            match runner::run(&scenarios, &options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wsrpc-bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
