//! Two server instances share topics through Redis, and a client moves from one to the other
//! without losing a message.
//!
//! `cargo run -p wsrpc-examples --example cluster` starts a private `redis-server` (install it
//! with `scripts/install-redis.sh`; or give `--redis redis://HOST:PORT`), instances A and B on
//! two ports, a publisher that sends a tick every 20 ms through B's `publish` method, and a
//! client that subscribes on A, follows A going away, and resumes on B with `since` and
//! `epoch`: every tick arrives once, in order.
//!
//! `cargo run -p wsrpc-examples --example cluster -- --redis redis://127.0.0.1:6379 --port 9001`
//! runs one instance only, every topic shared through that Redis, with the `publish(topic,
//! value)` method open to clients; it prints `listening on ADDR` when ready. `--replay N`
//! keeps N messages per topic for resumption (256 by default), here and in Redis.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use wsrpc_examples::cluster::{self, Event, RawClient};
use wsrpc_examples::redis_server::{self, RedisServer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let redis_url = wsrpc_examples::arg("--redis");
    if let Some(port) = wsrpc_examples::arg("--port") {
        let url = redis_url.ok_or("--port runs one instance and needs --redis URL")?;
        let replay = wsrpc_examples::arg("--replay").map(|n| n.parse()).transpose()?;
        cluster::run_instance(&url, port.parse()?, replay)?;
        return Ok(());
    }
    demo(redis_url)
}

fn demo(redis_url: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    let _own_redis;
    let url = match redis_url {
        Some(url) => url,
        None => {
            if !redis_server::available() {
                return Err("redis-server is not installed: run scripts/install-redis.sh, or pass --redis URL".into());
            }
            let redis = RedisServer::start()?;
            println!("started redis-server at {}", redis.url());
            let url = redis.url();
            _own_redis = redis;
            url
        }
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let a = cluster::start_instance(&url, any)?;
    let b = cluster::start_instance(&url, any)?;
    for (name, s) in [("A", &a), ("B", &b)] {
        if !cluster::wait_until_up(s.service(), Duration::from_secs(10)) {
            return Err(format!("instance {name} cannot reach Redis at {url}").into());
        }
        println!("instance {name} listening on {}", s.local_addr());
    }
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());

    // The client: on A first.
    let mut client = RawClient::connect(a_addr)?;
    let first = client.call("subscribe", json!(["ticks"]), Duration::from_secs(5))?;
    let first = first.map_err(|e| format!("subscribe refused: {e}"))?;
    let epoch = first["epoch"].as_u64().ok_or("no epoch")?;
    println!("client subscribed on A: epoch {epoch}, at seq {}", first["seq"]);
    // The publisher: a tick every 20 ms through B's `publish` method.
    let publisher = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut c = RawClient::connect(b_addr)?;
        for n in 1..=150u64 {
            let at = c.call("publish", json!(["ticks", { "n": n }]), Duration::from_secs(5))?;
            if at.is_err() {
                eprintln!("publish {n} failed: {at:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(150)
    });

    let mut seqs = Vec::new();
    let mut moved = false;
    let mut a = Some(a);
    loop {
        match client.next(Duration::from_secs(2)) {
            Ok(Some(Event::Notification { seq, value, .. })) => {
                println!("  seq {seq}: {value} (from {})", if moved { "B" } else { "A" });
                seqs.push(seq);
                if seqs.len() == 25
                    && let Some(a) = a.take()
                {
                    println!("instance A goes away");
                    // On its own thread: this one keeps reading (and answers A's close).
                    std::thread::spawn(move || smol::block_on(a.shutdown(Duration::from_secs(1))));
                }
            }
            Ok(Some(other)) => println!("  {other:?}"),
            Ok(None) => break, // the publisher is done
            Err(_) if !moved => {
                let since = *seqs.last().unwrap_or(&0);
                println!("client lost A after seq {since}; resuming on B with since {since}");
                client = RawClient::connect(b_addr)?;
                let params = json!({ "topic": "ticks", "since": since, "epoch": epoch });
                let r = client.call("subscribe", params, Duration::from_secs(5))?;
                r.map_err(|e| format!("resubscribe refused: {e}"))?;
                moved = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let published = publisher.join().map_err(|_| "the publisher panicked")??;
    let first_seq = seqs.first().copied().unwrap_or(0);
    let in_order = seqs.windows(2).all(|w| w[1] == w[0] + 1);
    println!(
        "received {} of {published} ticks (seq {first_seq}..={}), {}",
        seqs.len(),
        seqs.last().unwrap_or(&0),
        if in_order { "none lost, none twice, in order" } else { "NOT in order" }
    );
    if !in_order || !moved {
        return Err("the client did not get every tick exactly once".into());
    }
    Ok(())
}
