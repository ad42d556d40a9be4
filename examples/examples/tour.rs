//! A tour of wsrpc in one process: a server on a free port, then a client that makes calls,
//! a batch and a notification, subscribes and receives published events, trips a rate limit,
//! is refused for a foreign origin, and prints the server's metrics.
//!
//! `cargo run --release -p wsrpc-examples --example tour` (exits 0 when every step worked;
//! `RUST_LOG=wsrpc=debug` shows what the engine does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use wsrpc_smol::limit::{LimitConfig, MethodClass, MethodClasses, Rate};
use wsrpc_smol::{ClientError, ClientOptions, Router, Server, SubscriptionEvent};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let ok = smol::block_on(tour());
    println!("\n{}", if ok { "tour: every step worked" } else { "tour: some steps FAILED" });
    std::process::exit(if ok { 0 } else { 1 });
}

fn step(name: &str, result: Result<String, String>) -> bool {
    match result {
        Ok(detail) => {
            println!("  ok   {name:<34} {detail}");
            true
        }
        Err(e) => {
            println!("  FAIL {name:<34} {e}");
            false
        }
    }
}

async fn tour() -> bool {
    // The application state, given once: every handler reaches it as `ctx.state()`.
    let mut router = Router::with_state(AtomicU64::new(0));
    router
        .method("add", |(a, b): (i64, i64), _| Ok(a + b))
        .method("greet", |(name,): (String,), ctx| {
            Ok(format!("hello {name}, you are connection {}", ctx.connection))
        })
        .method("log_event", |(_kind,): (String,), ctx| {
            ctx.state().fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .method("events_logged", |(): (), ctx| Ok(ctx.state().load(Ordering::SeqCst)))
        .method("sign", |(msg,): (String,), _| Ok(format!("signed({msg})")))
        .async_method("slow_square", |(x,): (i64,), _| async move {
            async_io::Timer::after(Duration::from_millis(50)).await;
            Ok(x * x)
        });
    // "sign" is sensitive: one per second, ten per minute, a hundred per hour.
    let mut limits = LimitConfig::default();
    limits.classes =
        MethodClasses::default().with_method("sign", MethodClass::Sensitive).with_tiers(
            MethodClass::Sensitive,
            &[Rate::per_second(1), Rate::per_minute(10), Rate::per_hour(100)],
        );
    let server = match Server::builder()
        .router(router)
        .limits(limits)
        .bind("127.0.0.1:0".parse().unwrap())
        .start()
    {
        Ok(s) => s,
        Err(e) => {
            println!("cannot start the server: {e}");
            return false;
        }
    };
    let url = format!("ws://{}", server.local_addr());
    println!(
        "wsrpc tour — server listening on {url} (HTTP on the same port: {}/health)\n",
        url.replace("ws://", "http://")
    );
    let client = match wsrpc_smol::connect(&url, ClientOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            println!("cannot connect: {e}");
            return false;
        }
    };
    let mut all = true;

    all &= step(
        "call add(2, 3)",
        client
            .call::<i64>("add", (2, 3))
            .await
            .map(|v| format!("= {v}"))
            .map_err(|e| e.to_string()),
    );
    all &= step(
        "call greet(\"tour\")",
        client
            .call::<String>("greet", ("tour",))
            .await
            .map(|v| format!("= {v:?}"))
            .map_err(|e| e.to_string()),
    );
    all &= step(
        "async call slow_square(12)",
        client
            .call::<i64>("slow_square", (12,))
            .await
            .map(|v| format!("= {v}"))
            .map_err(|e| e.to_string()),
    );
    let batch = client
        .batch(vec![
            ("add", json!([1, 1])),
            ("slow_square", json!([3])),
            ("no_such_method", json!([])),
        ])
        .await;
    all &= step(
        "batch of three",
        batch.map_err(|e| e.to_string()).and_then(|results| {
            let shown: Vec<String> = results
                .iter()
                .map(|r| match r {
                    Ok(v) => v.get().to_owned(),
                    Err(ClientError::Rpc(e)) => format!("error {}", e.code),
                    Err(e) => e.to_string(),
                })
                .collect();
            if shown == ["2", "9", "error -32601"] {
                Ok(format!("= [{}]", shown.join(", ")))
            } else {
                Err(format!("{shown:?}"))
            }
        }),
    );
    let _ = client.notify("log_event", ("login",));
    let logged = client.call::<u64>("events_logged", ()).await;
    all &= step(
        "notification log_event",
        match logged {
            Ok(1) => Ok("the server ran it (no response expected)".into()),
            other => Err(format!("{other:?}")),
        },
    );

    let sub = client.subscribe("ticker:btc").await;
    all &= step(
        "subscribe + 3 publishes",
        match sub {
            Err(e) => Err(e.to_string()),
            Ok(mut sub) => {
                for price in [64_000, 64_120, 63_990] {
                    let _ = server.publish("ticker:btc", &json!({ "price": price }));
                }
                let mut got = Vec::new();
                for _ in 0..3 {
                    match sub.next().await {
                        Some(SubscriptionEvent::Notification { seq, value }) => {
                            got.push(format!("#{seq} {}", value.get()))
                        }
                        other => got.push(format!("{other:?}")),
                    }
                }
                if got.len() == 3 && got[0].starts_with("#1 ") && got[2].starts_with("#3 ") {
                    Ok(got.join(", "))
                } else {
                    Err(got.join(", "))
                }
            }
        },
    );

    let first = client.call::<String>("sign", ("a",)).await;
    let second = client.call::<String>("sign", ("b",)).await;
    all &= step(
        "rate limit (sign: 1/s)",
        match (first, second) {
            (Ok(_), Err(ClientError::Rpc(e))) if e.code == -32005 => Ok(format!(
                "second call refused: -32005 {}",
                e.data.map_or(String::new(), |d| d.get().to_owned())
            )),
            other => Err(format!("{other:?}")),
        },
    );

    let evil = wsrpc_smol::connect(
        &url,
        ClientOptions::default().header("Origin", "https://evil.example"),
    )
    .await;
    all &= step(
        "foreign origin refused",
        match evil {
            Err(e @ ClientError::Rejected { status: 403 }) => Ok(e.to_string()),
            other => Err(format!("{other:?}")),
        },
    );

    let metrics = server.metrics();
    let snapshot: Value = serde_json::to_value(&metrics).unwrap_or_default();
    all &= step(
        "metrics snapshot",
        Ok(format!(
            "{} calls to add, {} rate limited, {} connections total, p50 of slow_square {} µs",
            metrics.methods.get("add").map_or(0, |m| m.count),
            metrics.rate_limited,
            metrics.connections.total,
            metrics.methods.get("slow_square").map_or(0, |m| m.p50_us),
        )),
    );
    println!(
        "\nmetrics (also at GET /metrics and rpc.metrics):\n{}",
        serde_json::to_string_pretty(&snapshot).unwrap_or_default()
    );

    client.close().await;
    server.shutdown(Duration::from_secs(2)).await;
    all
}
