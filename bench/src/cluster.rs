//! The `cluster` scenario's recovery measurement: the clients of an instance that is killed
//! (SIGKILL) resume on the other one with `since` and `epoch`, as an outside client does; how
//! long from the kill until each receives again, and whether any message was lost (a hole with
//! no notice), announced missing (a `gap` notice: the hole outgrew the history) or repeated.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use wsrpc_examples::cluster::{Event, RawClient};

use crate::report::{NO_PEER, Row};
use crate::runner::{Options, spawn_server, start_redis};

/// Publishes a second during the measurement (the kill test rate).
const RATE: u64 = 1000;
const TOPIC: &str = "t0";

/// What one client saw.
#[derive(Debug, Default)]
struct Outcome {
    recovered_ms: Option<f64>,
    /// Missing with no notice.
    lost: u64,
    /// Missing, announced by a `gap` or `lagged` notice.
    announced: u64,
    repeated: u64,
}

impl Outcome {
    /// Counts notification `seq` after `last`; returns the new last.
    fn receive(&mut self, last: u64, seq: u64) -> u64 {
        if seq <= last {
            self.repeated += 1;
            return last;
        }
        self.lost += seq - last - 1;
        seq
    }

    /// Counts a notice that `from..=to` will not arrive; returns the new last.
    fn announce(&mut self, last: u64, from: u64, to: u64) -> u64 {
        if to < from || to <= last {
            return last;
        }
        // Anything between `last` and `from` that the notice does not cover is a silent hole.
        let from = from.max(last + 1);
        self.lost += from - last - 1;
        self.announced += to - from + 1;
        to
    }
}

/// Runs the measurement `options.rounds` times and gives its rows.
pub(crate) fn recovery(options: &Options) -> io::Result<Vec<Row>> {
    let clients = if options.quick { 100 } else { 200 };
    let mut times = Vec::new();
    let (mut lost, mut announced, mut repeated, mut unrecovered) = (0, 0, 0, 0);
    for round in 1..=options.rounds {
        let outcomes = one_round(clients, options).map_err(io::Error::other)?;
        let mut round_times: Vec<f64> = outcomes.iter().filter_map(|o| o.recovered_ms).collect();
        unrecovered += outcomes.len() - round_times.len();
        lost += outcomes.iter().map(|o| o.lost).sum::<u64>();
        announced += outcomes.iter().map(|o| o.announced).sum::<u64>();
        repeated += outcomes.iter().map(|o| o.repeated).sum::<u64>();
        round_times.sort_by(f64::total_cmp);
        eprintln!(
            "cluster recovery round {round}: {} clients resumed, p50 {:.1} ms, max {:.1} ms",
            round_times.len(),
            quantile(&round_times, 0.5),
            round_times.last().copied().unwrap_or(f64::NAN)
        );
        times.extend(round_times);
    }
    times.sort_by(f64::total_cmp);
    let case = format!("kill an instance under {clients} clients, {RATE} publishes/s");
    let row = |metric: &str, value: f64, unit: &str| Row {
        scenario: "cluster".into(),
        case: case.clone(),
        server: "wsrpc-cluster".into(),
        peer: NO_PEER.into(),
        metric: metric.into(),
        value: value.is_finite().then_some(value),
        peer_value: None,
        unit: unit.into(),
        ratio: None,
        ratio_min: None,
        ratio_median: None,
        ratio_max: None,
    };
    let ms = "ms from the kill to the first message on the other instance (lower is better)";
    Ok(vec![
        row("recovery_p50_ms", quantile(&times, 0.5), ms),
        row("recovery_p99_ms", quantile(&times, 0.99), ms),
        row("recovery_max_ms", times.last().copied().unwrap_or(f64::NAN), ms),
        row("lost", lost as f64, "messages missing with no notice, all rounds (0 expected)"),
        row(
            "gap_announced",
            announced as f64,
            "messages announced missing by a gap notice (beyond the 256 of history), all rounds",
        ),
        row("repeated", repeated as f64, "messages received twice, all rounds (0 expected)"),
        row("unrecovered", unrecovered as f64, "clients that did not resume (0 expected)"),
    ])
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn one_round(clients: usize, options: &Options) -> Result<Vec<Outcome>, String> {
    let redis = start_redis()?;
    let url = redis.url();
    let mut a = spawn_server("wsrpc-cluster", &["--redis".into(), url.clone()])?;
    let b = spawn_server(
        "wsrpc-cluster",
        &["--redis".into(), url, "--rate".into(), RATE.to_string(), "--topics".into(), "1".into()],
    )?;
    let localhost = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let (a_addr, b_addr) = (localhost(a.port), localhost(b.port));
    let killed_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (subscribed_tx, subscribed_rx) = mpsc::channel();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let killed_at = killed_at.clone();
            let subscribed = subscribed_tx.clone();
            std::thread::spawn(move || follow(a_addr, b_addr, &subscribed, &killed_at))
        })
        .collect();
    drop(subscribed_tx);
    for _ in 0..clients {
        subscribed_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the clients did not all subscribe".to_string())?;
    }
    // Start B's publisher (its first datagram), let the stream run, then kill A.
    let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    udp.send_to(&0u64.to_le_bytes(), localhost(b.udp_port)).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs_f64(options.window_s.min(1.0)));
    let _ = killed_at.set(Instant::now());
    a.kill();
    let outcomes = threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
    drop(b);
    drop(redis);
    Ok(outcomes)
}

/// A client of `first` that moves to `then` when `first` is killed; returns what it saw in the
/// first 500 ms after resuming.
fn follow(
    first: SocketAddr,
    then: SocketAddr,
    subscribed: &mpsc::Sender<()>,
    killed_at: &OnceLock<Instant>,
) -> Outcome {
    let mut out = Outcome::default();
    let Ok(mut c) = RawClient::connect(first) else { return out };
    let Ok(Ok(r)) = c.call("subscribe", json!([TOPIC]), Duration::from_secs(10)) else {
        return out;
    };
    let epoch = r["epoch"].as_u64().unwrap_or(0);
    let mut last = r["seq"].as_u64().unwrap_or(0);
    let _ = subscribed.send(());
    let end = Instant::now() + Duration::from_secs(30);
    // Until the kill cuts the connection.
    loop {
        if Instant::now() > end {
            return out;
        }
        match c.next(Duration::from_millis(100)) {
            Ok(Some(Event::Notification { seq, .. })) => last = out.receive(last, seq),
            Ok(Some(Event::Gap { from, to, .. } | Event::Lagged { from, to: Some(to), .. })) => {
                last = out.announce(last, from, to);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let Ok(mut c) = RawClient::connect(then) else { return out };
    let since = json!({"topic": TOPIC, "since": last, "epoch": epoch});
    match c.call("subscribe", since, Duration::from_secs(10)) {
        Ok(Ok(_)) => {}
        _ => return out,
    }
    let mut resumed_until = None;
    loop {
        let now = Instant::now();
        if now > end || resumed_until.is_some_and(|u| now > u) {
            return out;
        }
        match c.next(Duration::from_millis(50)) {
            Ok(Some(Event::Notification { seq, .. })) => {
                if out.recovered_ms.is_none() {
                    let kill = killed_at.get().copied().unwrap_or(now);
                    out.recovered_ms = Some(now.duration_since(kill).as_secs_f64() * 1e3);
                    resumed_until = Some(now + Duration::from_millis(500));
                }
                last = out.receive(last, seq);
            }
            Ok(Some(Event::Gap { from, to, .. } | Event::Lagged { from, to: Some(to), .. })) => {
                last = out.announce(last, from, to);
            }
            Ok(_) => {}
            Err(_) => return out,
        }
    }
}
