//! Metrics from client reports, medians over rounds, the ratio rows, the table and `--json`.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::client::Report;
use crate::runner::{Case, Options, Results, cases};

/// One metric of a scenario.
struct Metric {
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    get: fn(&Report) -> f64,
}

fn rate(r: &Report) -> f64 {
    r.ops as f64 / r.window_s
}

fn cpu_us(r: &Report) -> f64 {
    r.server_cpu_s * 1e6 / r.ops as f64
}

/// A metric only the Redis setup has: shown without a peer.
const REDIS_CPU: &str = "redis_cpu_us/publish";

/// The peer column of a row that has none.
pub(crate) const NO_PEER: &str = "—";

/// Redis CPU µs per publish script run (NaN without Redis).
fn redis_us_per_publish(r: &Report) -> f64 {
    if r.publishes == 0 { f64::NAN } else { r.redis_cpu_s * 1e6 / r.publishes as f64 }
}

/// Server RSS growth per connection, KiB.
fn kib_per_conn(r: &Report) -> f64 {
    (r.rss_after_kib as f64 - r.rss_before_kib as f64) / r.conns_ok.max(1) as f64
}

fn metrics(scenario: &str) -> Vec<Metric> {
    let m = |name, unit, higher_is_better, get| Metric { name, unit, higher_is_better, get };
    match scenario.trim_start_matches("tls-") {
        "churn" => vec![
            m(
                "cycles/s",
                if scenario.starts_with("tls-") {
                    "connect + TLS + WebSocket handshakes, one call, close; per second (higher is better)"
                } else {
                    "connect + WebSocket handshake, one call, close; per second (higher is better)"
                },
                true,
                rate,
            ),
            m(
                "cpu_us/cycle",
                "server CPU µs per cycle (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m("p50_us", "µs per cycle (lower is better; ratio = peer/ours)", false, |r| r.p50_us),
            m("p99_us", "µs per cycle (lower is better; ratio = peer/ours)", false, |r| r.p99_us),
        ],
        "echo" => vec![
            m("messages/s", "messages/s (higher is better)", true, rate),
            m(
                "cpu_us/msg",
                "server CPU µs per message (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m("p99_us", "µs round trip (lower is better; ratio = peer/ours)", false, |r| r.p99_us),
        ],
        "calls" => vec![
            m("calls/s", "calls/s (higher is better)", true, rate),
            m(
                "cpu_us/call",
                "server CPU µs per call (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m("p50_us", "µs (lower is better; ratio = peer/ours)", false, |r| r.p50_us),
            m("p99_us", "µs (lower is better; ratio = peer/ours)", false, |r| r.p99_us),
            m("p99.9_us", "µs (lower is better; ratio = peer/ours)", false, |r| r.p999_us),
            m(
                "slowest_conn/s",
                "calls/s of the slowest connection (higher is better)",
                true,
                |r| r.min_conn_rate,
            ),
            m("fastest_conn/s", "calls/s of the fastest connection (information)", true, |r| {
                r.max_conn_rate
            }),
            m("fairness", "slowest/fastest connection rate (higher is better)", true, |r| {
                r.min_conn_rate / r.max_conn_rate
            }),
        ],
        "fanout" => vec![
            m("deliveries/s", "notifications received/s (higher is better)", true, rate),
            m(
                "cpu_us/delivery",
                "server CPU µs per delivery (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m(
                "p99_delay_ms",
                "publish→receipt ms (lower is better; ratio = peer/ours)",
                false,
                |r| r.p99_us / 1000.0,
            ),
        ],
        "echo-deflate" => vec![
            m("messages/s", "messages/s (higher is better)", true, rate),
            m(
                "cpu_us/msg",
                "server CPU µs per echoed message (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m(
                "wire_B/msg",
                "bytes on the wire per message, each way (lower is better; ratio = peer/ours)",
                false,
                |r| (r.wire_in + r.wire_out) as f64 / (2.0 * r.ops as f64),
            ),
            m(
                "KiB/conn",
                "server RSS growth per active connection (lower is better)",
                false,
                kib_per_conn,
            ),
            m("p99_us", "µs round trip (lower is better; ratio = peer/ours)", false, |r| r.p99_us),
        ],
        "fanout-deflate" => vec![
            m("deliveries/s", "notifications received/s (higher is better)", true, rate),
            m(
                "cpu_us/delivery",
                "server CPU µs per delivery (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m(
                "wire_B/delivery",
                "bytes on the wire per notification (lower is better; ratio = peer/ours)",
                false,
                |r| r.wire_in as f64 / r.ops as f64,
            ),
            m(
                "KiB/conn",
                "server RSS growth per subscriber while publishing (lower is better)",
                false,
                kib_per_conn,
            ),
            m(
                "p99_delay_ms",
                "publish→receipt ms (lower is better; ratio = peer/ours)",
                false,
                |r| r.p99_us / 1000.0,
            ),
        ],
        "cluster" => vec![
            m("deliveries/s", "notifications received/s (higher is better)", true, rate),
            m(
                "cpu_us/delivery",
                "server CPU µs per delivery, both instances without Redis (lower is better; ratio = peer/ours)",
                false,
                cpu_us,
            ),
            m(
                "p50_delay_ms",
                "publish→receipt ms (lower is better; ratio = peer/ours)",
                false,
                |r| r.p50_us / 1000.0,
            ),
            m(
                "p99_delay_ms",
                "publish→receipt ms (lower is better; ratio = peer/ours)",
                false,
                |r| r.p99_us / 1000.0,
            ),
            m(
                REDIS_CPU,
                "Redis CPU µs per publish (INFO: used_cpu_user + used_cpu_sys over cmdstat_evalsha calls in the window; Redis's background work included, so a few publishes/s (hot topic) read high; ours only)",
                false,
                redis_us_per_publish,
            ),
        ],
        "idle-deflate" => vec![m(
            "KiB/conn",
            "server RSS KiB per connection (lower is better; ratio = peer/ours)",
            false,
            kib_per_conn,
        )],
        "idle" => vec![m(
            "KiB/conn",
            "server RSS KiB per idle connection (lower is better; ratio = peer/ours)",
            false,
            |r| (r.rss_after_kib as f64 - r.rss_before_kib as f64) / r.conns_ok.max(1) as f64,
        )],
        _ => Vec::new(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let finite = v.iter().copied().filter(|x| x.is_finite());
    (finite.clone().fold(f64::INFINITY, f64::min), finite.fold(f64::NEG_INFINITY, f64::max))
}

fn values(results: &Results, case: &str, server: &str, metric: &Metric) -> Vec<f64> {
    results
        .get(&(case.to_string(), server.to_string()))
        .map(|rs| rs.iter().map(metric.get).collect())
        .unwrap_or_default()
}

/// One comparison: ours next to a peer, medians over the rounds.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) case: String,
    pub(crate) server: String,
    pub(crate) peer: String,
    pub(crate) metric: String,
    pub(crate) value: Option<f64>,
    pub(crate) peer_value: Option<f64>,
    pub(crate) unit: String,
    /// Ours/peer, inverted for lower-is-better metrics so that higher is always better.
    pub(crate) ratio: Option<f64>,
    /// The same ratio per round (ours and the peer of the same round): lowest, median,
    /// highest.
    pub(crate) ratio_min: Option<f64>,
    pub(crate) ratio_median: Option<f64>,
    pub(crate) ratio_max: Option<f64>,
}

/// The ratio of ours to the peer, inverted when lower is better.
fn ratio_of(metric: &Metric, ours: f64, peer: f64) -> f64 {
    if metric.higher_is_better { ours / peer } else { peer / ours }
}

/// The ratio in each round where both ran: (lowest, median, highest).
fn round_ratios(
    results: &Results,
    case: &str,
    ours: &str,
    peer: &str,
    metric: &Metric,
) -> (f64, f64, f64) {
    let get = |s: &str| results.get(&(case.to_string(), s.to_string()));
    let (Some(a), Some(b)) = (get(ours), get(peer)) else {
        return (f64::NAN, f64::NAN, f64::NAN);
    };
    let per_round: Vec<f64> = a
        .iter()
        .filter_map(|x| {
            let y = b.iter().find(|y| y.round == x.round)?;
            Some(ratio_of(metric, (metric.get)(x), (metric.get)(y)))
        })
        .collect();
    let (lo, hi) = spread(&per_round);
    (lo, median(per_round), hi)
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

pub(crate) fn rows(
    scenario: &'static str,
    ours: &[&str],
    peers: &[&str],
    results: &Results,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for case in cases(scenario) {
        for metric in metrics(scenario) {
            for &server in ours {
                let value = median(values(results, &case.name, server, &metric));
                if metric.name == REDIS_CPU {
                    rows.push(Row {
                        scenario: scenario.into(),
                        case: case.name.clone(),
                        server: server.into(),
                        peer: NO_PEER.into(),
                        metric: metric.name.into(),
                        value: finite(value),
                        peer_value: None,
                        unit: metric.unit.into(),
                        ratio: None,
                        ratio_min: None,
                        ratio_median: None,
                        ratio_max: None,
                    });
                    continue;
                }
                for &peer in peers {
                    let peer_value = median(values(results, &case.name, peer, &metric));
                    let ratio = ratio_of(&metric, value, peer_value);
                    let (lo, mid, hi) = round_ratios(results, &case.name, server, peer, &metric);
                    rows.push(Row {
                        scenario: scenario.into(),
                        case: case.name.clone(),
                        server: server.into(),
                        peer: peer.into(),
                        metric: metric.name.into(),
                        value: finite(value),
                        peer_value: finite(peer_value),
                        unit: metric.unit.into(),
                        ratio: finite(ratio),
                        ratio_min: finite(lo),
                        ratio_median: finite(mid),
                        ratio_max: finite(hi),
                    });
                }
            }
        }
    }
    rows
}

/// Per-server medians with their spread and who was busy, for the second table.
pub(crate) struct Raw {
    scenario: &'static str,
    case: String,
    server: String,
    runs: usize,
    cells: Vec<String>,
}

pub(crate) fn raw(scenario: &'static str, servers: &[&str], results: &Results) -> Vec<Raw> {
    let mut out = Vec::new();
    for case in cases(scenario) {
        for &server in servers {
            let runs = results.get(&(case.name.clone(), server.to_string()));
            let n = runs.map_or(0, Vec::len);
            let mut cells = Vec::new();
            for metric in metrics(scenario) {
                let v = values(results, &case.name, server, &metric);
                if metric.name == REDIS_CPU && !v.iter().any(|x| x.is_finite()) {
                    // A server without Redis.
                    continue;
                }
                let (lo, hi) = spread(&v);
                cells.push(format!("{} {} [{}–{}]", metric.name, num(median(v)), num(lo), num(hi)));
            }
            if let Some(rs) = runs.filter(|r| !r.is_empty()) {
                let busy = median(rs.iter().map(|r| 100.0 * r.server_cpu_s / r.window_s).collect());
                let client =
                    median(rs.iter().map(|r| 100.0 * r.client_cpu_s / r.window_s).collect());
                if !scenario.trim_start_matches("tls-").starts_with("idle") {
                    cells.push(format!("server CPU {busy:.0}%, client CPU {client:.0}%"));
                }
                if scenario == "churn" {
                    let per_op = |f: fn(&Report) -> f64| {
                        median(rs.iter().map(|r| f(r) * 1e6 / r.ops as f64).collect())
                    };
                    let user = per_op(|r| r.server_user_s);
                    let kernel = per_op(|r| r.server_cpu_s - r.server_user_s);
                    cells.push(format!(
                        "server CPU per cycle: user {user:.1} µs + kernel {kernel:.1} µs"
                    ));
                }
                if scenario.starts_with("fanout") || scenario == "cluster" {
                    let gaps: u64 = rs.iter().map(|r| r.gaps).sum();
                    let lagged: u64 = rs.iter().map(|r| r.lagged).sum();
                    cells.push(format!("gaps {gaps}, lag notices {lagged} (all rounds)"));
                }
            }
            out.push(Raw {
                scenario,
                case: case.name.clone(),
                server: server.into(),
                runs: n,
                cells,
            });
        }
    }
    out
}

/// A short line for the progress log.
pub(crate) fn brief(case: &Case, r: &Report) -> String {
    match case.scenario.trim_start_matches("tls-") {
        "idle" | "idle-deflate" => format!(
            "{:.1} KiB/conn ({} conns, {} compressed)",
            kib_per_conn(r),
            r.conns_ok,
            r.compressed_conns
        ),
        "echo-deflate" | "fanout-deflate" => format!(
            "{:.0}/s, {:.2} µs CPU/op, {:.0} B wire/op, {:.1} KiB/conn, p99 {:.0} µs, server CPU {:.0}%, client CPU {:.0}%, {} of {} conns compressed",
            rate(r),
            cpu_us(r),
            (r.wire_in + r.wire_out) as f64 / r.ops as f64,
            kib_per_conn(r),
            r.p99_us,
            100.0 * r.server_cpu_s / r.window_s,
            100.0 * r.client_cpu_s / r.window_s,
            r.compressed_conns,
            r.conns_ok
        ),
        _ => format!(
            "{:.0}/s, {:.2} µs CPU/op, p99 {:.0} µs, server CPU {:.0}%, client CPU {:.0}%{}",
            rate(r),
            cpu_us(r),
            r.p99_us,
            100.0 * r.server_cpu_s / r.window_s,
            100.0 * r.client_cpu_s / r.window_s,
            if case.scenario == "fanout" {
                format!(", gaps {} lagged {}", r.gaps, r.lagged)
            } else if case.scenario == "cluster" {
                format!(
                    ", p50 {:.0} µs, gaps {} lagged {}, {} publishes through Redis at {:.1} µs Redis CPU each",
                    r.p50_us,
                    r.gaps,
                    r.lagged,
                    r.publishes,
                    redis_us_per_publish(r)
                )
            } else {
                String::new()
            }
        ),
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "FAILED".into()
    } else if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        // Thousands separators for readability.
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "FAILED".into(), num)
}

/// The Markdown tables: ratio rows, then per-server medians with spread.
pub(crate) fn table(rows: &[Row], raw: &[Raw], options: &Options, elapsed: f64) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n## Ours vs peers (medians of {} rounds{}{}; ratio = ours/peer, inverted for lower-is-better metrics, so > 1 means ours is better; per round = median [lowest–highest] of the ratio of ours and the peer in the same round)\n",
        options.rounds,
        if options.rounds_for("churn") != options.rounds {
            format!(" ({} for churn)", options.rounds_for("churn"))
        } else {
            String::new()
        },
        if options.quick { ", --quick" } else { "" }
    );
    let _ = writeln!(
        t,
        "| scenario | case | metric | server | value | peer | peer value | ratio | per round |"
    );
    let _ = writeln!(t, "|---|---|---|---|---:|---|---:|---:|---:|");
    for r in rows {
        let ratio = r.ratio.map_or_else(|| "—".into(), |x| format!("{x:.2}"));
        let per_round = match (r.ratio_min, r.ratio_median, r.ratio_max) {
            (Some(lo), Some(mid), Some(hi)) => format!("{mid:.2} [{lo:.2}–{hi:.2}]"),
            _ => "—".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.case,
            r.metric,
            r.server,
            opt(r.value),
            r.peer,
            if r.peer == NO_PEER { NO_PEER.into() } else { opt(r.peer_value) },
            ratio,
            per_round
        );
    }
    let _ = writeln!(t, "\n## Per server: median [min–max] over the rounds\n");
    let _ = writeln!(t, "| scenario | case | server | runs | medians |");
    let _ = writeln!(t, "|---|---|---|---:|---|");
    for r in raw {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            r.scenario,
            r.case,
            r.server,
            r.runs,
            r.cells.join("; ")
        );
    }
    let _ = writeln!(
        t,
        "\nwarm-up {} s, window {} s per run; echo keeps {} messages in flight per connection; total {:.0} s",
        options.warmup_s,
        options.window_s,
        crate::runner::ECHO_DEPTH,
        elapsed
    );
    t
}

/// One JSON object per row, one per line.
pub(crate) fn write_json(path: &Path, rows: &[Row]) -> io::Result<()> {
    let mut out = String::new();
    for r in rows {
        out.push_str(&serde_json::to_string(r).map_err(io::Error::other)?);
        out.push('\n');
    }
    std::fs::write(path, out)
}
