//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`], for `GET /metrics`.

use std::fmt::{self, Write as _};

use super::snapshot::Snapshot;

/// The `Content-Type` of [`Snapshot::to_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Quantiles of `wsrpc_call_duration_seconds`, as label values.
const QUANTILES: [&str; 3] = ["0.5", "0.9", "0.99"];

impl Snapshot {
    /// This snapshot in the Prometheus text format; serve it with [`PROMETHEUS_CONTENT_TYPE`].
    pub fn to_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048 + 512 * self.methods.len());
        self.write_prometheus(&mut out);
        out
    }

    /// Appends this snapshot in the Prometheus text format to `out`.
    ///
    /// Metrics are named `wsrpc_*`; counters end in `_total`; errors are one counter with a
    /// `kind` label; call latencies are the summary `wsrpc_call_duration_seconds{method}`,
    /// whose quantiles cover the rolling window (NaN when it is empty) and whose `_sum` and
    /// `_count` are all-time.
    pub fn write_prometheus(&self, out: &mut String) {
        let mut w = Exposition { out };
        w.family("wsrpc_uptime_seconds", "gauge", "Seconds since the server started.");
        w.sample("wsrpc_uptime_seconds", &[], Value::Float(self.uptime_seconds));
        if let Some(port) = self.port {
            w.family("wsrpc_port", "gauge", "TCP port the server is bound to.");
            w.sample("wsrpc_port", &[], Value::Int(port.into()));
        }
        let counters = [
            ("wsrpc_connections_total", "WebSocket connections opened.", self.connections.total),
            ("wsrpc_http_requests_total", "Plain HTTP requests received.", self.http_requests),
            ("wsrpc_messages_received_total", "Messages received.", self.messages.received),
            ("wsrpc_messages_sent_total", "Messages sent.", self.messages.sent),
            ("wsrpc_received_bytes_total", "Bytes read from the wire.", self.bytes.received),
            ("wsrpc_sent_bytes_total", "Bytes written to the wire.", self.bytes.sent),
            ("wsrpc_rate_limited_total", "Calls rejected by a rate limit.", self.rate_limited),
            ("wsrpc_subscriptions_total", "Subscriptions made.", self.subscriptions.total),
            (
                "wsrpc_lagged_drops_total",
                "Notifications dropped for slow consumers.",
                self.lagged_drops,
            ),
            (
                "wsrpc_compressions_total",
                "permessage-deflate compressor runs (a shared notification counts once).",
                self.compression.compressions,
            ),
            (
                "wsrpc_compressed_messages_sent_total",
                "Messages sent compressed.",
                self.compression.messages_sent,
            ),
            (
                "wsrpc_compression_sent_uncompressed_bytes_total",
                "Payload bytes of messages sent compressed, before compression.",
                self.compression.sent_uncompressed_bytes,
            ),
            (
                "wsrpc_compression_sent_compressed_bytes_total",
                "Payload bytes of messages sent compressed, after compression.",
                self.compression.sent_compressed_bytes,
            ),
            (
                "wsrpc_compressed_messages_received_total",
                "Compressed messages received.",
                self.compression.messages_received,
            ),
            (
                "wsrpc_compression_received_compressed_bytes_total",
                "Payload bytes of compressed messages as received.",
                self.compression.received_compressed_bytes,
            ),
            (
                "wsrpc_compression_received_inflated_bytes_total",
                "Bytes compressed messages inflated to.",
                self.compression.received_inflated_bytes,
            ),
        ];
        for (name, help, value) in counters {
            w.family(name, "counter", help);
            w.sample(name, &[], Value::Int(value));
        }
        let gauges = [
            ("wsrpc_connections_active", "WebSocket connections open.", self.connections.active),
            ("wsrpc_subscriptions_active", "Subscriptions live.", self.subscriptions.active),
        ];
        for (name, help, value) in gauges {
            w.family(name, "gauge", help);
            w.sample(name, &[], Value::Int(value));
        }
        w.family("wsrpc_errors_total", "counter", "Errors, by kind.");
        for (kind, &count) in &self.errors {
            w.sample("wsrpc_errors_total", &[("kind", kind)], Value::Int(count));
        }
        w.family(
            "wsrpc_call_duration_seconds",
            "summary",
            "Time to answer a call, by method; quantiles over the rolling window.",
        );
        for (method, stats) in &self.methods {
            let quantiles_us = [stats.p50_us, stats.p90_us, stats.p99_us];
            for (quantile, us) in QUANTILES.into_iter().zip(quantiles_us) {
                let seconds = if stats.window_count == 0 { f64::NAN } else { seconds(us) };
                let labels = [("method", method.as_str()), ("quantile", quantile)];
                w.sample("wsrpc_call_duration_seconds", &labels, Value::Float(seconds));
            }
            let labels = [("method", method.as_str())];
            let sum = Value::Float(seconds(stats.sum_us));
            w.sample("wsrpc_call_duration_seconds_sum", &labels, sum);
            w.sample("wsrpc_call_duration_seconds_count", &labels, Value::Int(stats.count));
        }
    }
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A sample value: counters stay integers, so they print exactly.
#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) if x.is_nan() => f.write_str("NaN"),
            Self::Float(x) if x.is_infinite() => f.write_str(if x > 0.0 { "+Inf" } else { "-Inf" }),
            // Rust prints the shortest round-tripping decimal, never an exponent.
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Writes lines of the text format into a `String`.
struct Exposition<'a> {
    out: &'a mut String,
}

impl Exposition<'_> {
    /// The `# HELP` and `# TYPE` lines of a metric family; `help` has no backslash or newline.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.line(format_args!("# HELP {name} {help}"));
        self.line(format_args!("# TYPE {name} {kind}"));
    }

    /// `name{label="value",...} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                push_escaped_label_value(self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.line(format_args!(" {value}"));
    }

    fn line(&mut self, text: fmt::Arguments<'_>) {
        // Writing into a String only fails if a Display impl does, and ours do not.
        let _ = self.out.write_fmt(text);
        self.out.push('\n');
    }
}

/// Escapes what the format requires in a label value: backslash, double quote and newline.
fn push_escaped_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    use super::super::{ErrorKind, Metrics};
    use super::*;

    use crate::test_origin as origin;

    /// One sample line: metric name, labels (unescaped) and value.
    #[derive(Debug, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    fn is_metric_name(s: &str) -> bool {
        let mut bytes = s.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    }

    fn is_label_name(s: &str) -> bool {
        is_metric_name(s) && !s.contains(':')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            // Rust would also take "inf" and "nan", which Prometheus does not.
            _ if s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => {
                s.parse().map_err(|e| format!("value {s:?}: {e}"))
            }
            _ => Err(format!("value {s:?}")),
        }
    }

    /// Parses `{label="value",...}` after a metric name; returns the labels and the rest.
    fn parse_labels(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let Some(inner) = rest.strip_prefix('{') else { return Ok((labels, rest)) };
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !is_label_name(name) {
                return Err(format!("label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling backslash")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("escape \\{c}")),
                    },
                    (_, '\n') => return Err("raw newline in a label value".into()),
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(name.to_owned(), value).is_some() {
                return Err(format!("label {name} twice"));
            }
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    /// Checks the text format line by line and returns its samples: every family has one HELP
    /// and one TYPE before its samples, which are contiguous and unique; summaries may also
    /// have `_sum` and `_count` samples, and their own samples carry a `quantile`.
    fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
        let body = text.strip_suffix('\n').ok_or("no final newline")?;
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = Vec::new();
        let (mut finished, mut current) = (Vec::<String>::new(), None::<String>);
        let mut samples = Vec::<Sample>::new();
        for (n, line) in body.split('\n').enumerate() {
            let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(comment) = line.strip_prefix("# ") {
                let mut words = comment.splitn(3, ' ');
                let (keyword, name) = (words.next(), words.next().unwrap_or(""));
                let rest = words.next().unwrap_or("");
                if !is_metric_name(name) {
                    return Err(err(format!("metric name {name:?}")));
                }
                let seen = finished.iter().chain(&current).any(|f| f == name);
                match keyword {
                    Some("HELP") if !helped.contains(&name) && !rest.is_empty() && !seen => {
                        helped.push(name)
                    }
                    Some("TYPE")
                        if ["counter", "gauge", "summary", "histogram", "untyped"]
                            .contains(&rest)
                            && !seen
                            && types.insert(name.to_owned(), rest.to_owned()).is_none() => {}
                    _ => return Err(err("bad comment".into())),
                }
                continue;
            }
            let end = line.find(['{', ' ']).ok_or_else(|| err("no value".into()))?;
            let name = &line[..end];
            if !is_metric_name(name) {
                return Err(err(format!("metric name {name:?}")));
            }
            let (labels, rest) = parse_labels(&line[end..]).map_err(err)?;
            let value = rest.strip_prefix(' ').ok_or_else(|| err("no space".into()))?;
            let value = parse_value(value).map_err(err)?;
            let family = match types.get(name).map(String::as_str) {
                Some("summary") if !labels.contains_key("quantile") => {
                    return Err(err("summary sample without quantile".into()));
                }
                Some("counter") if !name.ends_with("_total") => {
                    return Err(err("counter not named *_total".into()));
                }
                Some(_) => name,
                None => ["_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|base| types.get(*base).is_some_and(|t| t == "summary"))
                    .ok_or_else(|| err("sample before its TYPE".into()))?,
            };
            if current.as_deref() != Some(family) {
                if finished.iter().any(|f| f == family) {
                    return Err(err("family split in two".into()));
                }
                finished.extend(current.replace(family.to_owned()));
            }
            if samples.iter().any(|s| s.name == name && s.labels == labels) {
                return Err(err("duplicate sample".into()));
            }
            samples.push(Sample { name: name.to_owned(), labels, value });
        }
        if helped.len() != types.len() {
            return Err("a family has HELP without TYPE or TYPE without HELP".into());
        }
        Ok(samples)
    }

    fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<_, _> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let found = samples.iter().find(|s| s.name == name && s.labels == labels);
        found.unwrap_or_else(|| panic!("no sample {name} {labels:?}")).value
    }

    #[test]
    fn the_checker_rejects_broken_expositions() {
        let head = "# HELP x h\n# TYPE x gauge\n";
        let bad = [
            ("x 1\n".to_owned(), "sample before its TYPE"),
            ("# HELP x h\n# TYPE x counter\nx 1\n".to_owned(), "counter not named"),
            (format!("{head}x 1"), "no final newline"),
            (format!("{head}x{{a=\"b}} 1\n"), "unterminated label value"),
            (format!("{head}x{{a=\"\\t\"}} 1\n"), "escape \\t"),
            (format!("{head}x{{a-b=\"\"}} 1\n"), "label name"),
            (format!("{head}x inf\n"), "value \"inf\""),
            (format!("{head}x 1 1700000000\n"), "value \"1 1700000000\""),
            (format!("{head}x 1\nx 2\n"), "duplicate sample"),
            ("# HELP 1x h\n# TYPE 1x gauge\n1x 1\n".to_owned(), "metric name"),
            ("# HELP x h\n# TYPE x summary\nx 1\n".to_owned(), "without quantile"),
            (format!("{head}# TYPE x counter\nx 1\n"), "bad comment"),
            (format!("{head}x 1\n# HELP x again\n"), "bad comment"),
            (format!("{head}# HELP y h\n# TYPE y gauge\nx 1\ny 1\nx{{a=\"\"}} 2\n"), "split"),
            ("# TYPE x gauge\nx 1\n".to_owned(), "HELP without TYPE or TYPE without HELP"),
        ];
        for (text, reason) in bad {
            let error = parse_exposition(&text).expect_err(&text);
            assert!(error.contains(reason), "{text:?} failed for {error:?}, not {reason:?}");
        }
        let good = "# HELP x h\n# TYPE x summary\nx{quantile=\"0.5\"} NaN\nx_sum 1e3\nx_count 2\n";
        assert_eq!(parse_exposition(good).unwrap().len(), 3);
    }

    #[test]
    fn the_exposition_parses_and_carries_every_number() {
        let t0 = origin();
        let mut metrics = Metrics::new(t0);
        let call = metrics.register_method("eth_call");
        let idle = metrics.register_method("eth_chainId");
        metrics.set_port(8766);
        for _ in 0..3 {
            metrics.connection_opened();
        }
        metrics.connection_closed();
        metrics.http_request_received();
        metrics.message_received();
        metrics.message_sent();
        metrics.message_sent();
        metrics.bytes_received(100);
        metrics.bytes_sent(250);
        metrics.record_error(ErrorKind::Parse);
        metrics.record_error(ErrorKind::Auth);
        metrics.record_error(ErrorKind::Auth);
        metrics.call_rate_limited();
        metrics.subscription_opened();
        metrics.notifications_dropped(7);
        for us in 1..=1000 {
            metrics.record_call(call, Duration::from_micros(us), t0 + Duration::from_secs(60));
        }
        metrics.record_call(idle, Duration::from_micros(40), t0);
        let snapshot = metrics.snapshot(t0 + Duration::from_secs(65));
        let text = snapshot.to_prometheus();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let v = |name: &str| value_of(&samples, name, &[]);
        assert_eq!(v("wsrpc_uptime_seconds"), 65.0);
        assert_eq!(v("wsrpc_port"), 8766.0);
        assert_eq!((v("wsrpc_connections_total"), v("wsrpc_connections_active")), (3.0, 2.0));
        assert_eq!(v("wsrpc_http_requests_total"), 1.0);
        assert_eq!(
            (v("wsrpc_messages_received_total"), v("wsrpc_messages_sent_total")),
            (1.0, 2.0)
        );
        assert_eq!((v("wsrpc_received_bytes_total"), v("wsrpc_sent_bytes_total")), (100.0, 250.0));
        assert_eq!((v("wsrpc_rate_limited_total"), v("wsrpc_lagged_drops_total")), (1.0, 7.0));
        assert_eq!((v("wsrpc_subscriptions_total"), v("wsrpc_subscriptions_active")), (1.0, 1.0));
        let errors = samples.iter().filter(|s| s.name == "wsrpc_errors_total").count();
        assert_eq!(errors, ErrorKind::COUNT);
        assert_eq!(value_of(&samples, "wsrpc_errors_total", &[("kind", "auth")]), 2.0);
        assert_eq!(value_of(&samples, "wsrpc_errors_total", &[("kind", "parse")]), 1.0);
        assert_eq!(value_of(&samples, "wsrpc_errors_total", &[("kind", "server")]), 0.0);

        let call = [("method", "eth_call")];
        assert_eq!(value_of(&samples, "wsrpc_call_duration_seconds_count", &call), 1000.0);
        assert_eq!(value_of(&samples, "wsrpc_call_duration_seconds_sum", &call), 0.5005);
        let q = |method, quantile| {
            let labels = [("method", method), ("quantile", quantile)];
            value_of(&samples, "wsrpc_call_duration_seconds", &labels)
        };
        assert_eq!((q("eth_call", "0.5"), q("eth_call", "0.9")), (0.000499, 0.000903));
        assert_eq!(q("eth_call", "0.99"), 0.000983);
        // eth_chainId's only sample is outside the window at 65 s: no quantiles, but a count.
        assert!(q("eth_chainId", "0.5").is_nan() && q("eth_chainId", "0.99").is_nan());
        let idle = [("method", "eth_chainId")];
        assert_eq!(value_of(&samples, "wsrpc_call_duration_seconds_count", &idle), 1.0);
        assert_eq!(value_of(&samples, "wsrpc_call_duration_seconds_sum", &idle), 0.00004);
        assert!(text.contains("# TYPE wsrpc_call_duration_seconds summary\n"));
        assert!(text.contains("# TYPE wsrpc_connections_active gauge\n"));
        assert!(text.contains("wsrpc_errors_total{kind=\"auth\"} 2\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let t0 = origin();
        let mut metrics = Metrics::new(t0);
        let weird = "say \"hi\"\\now\nplease";
        let id = metrics.register_method(weird);
        metrics.record_call(id, Duration::from_millis(3), t0);
        let text = metrics.snapshot(t0).to_prometheus();
        let escaped = r#"wsrpc_call_duration_seconds_count{method="say \"hi\"\\now\nplease"} 1"#;
        assert!(text.contains(escaped), "{text}");
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let labels = [("method", weird), ("quantile", "0.9")];
        assert_eq!(value_of(&samples, "wsrpc_call_duration_seconds", &labels), 0.003);
    }

    #[test]
    fn a_fresh_registry_exposes_no_port_and_appends_to_the_buffer() {
        let metrics = Metrics::new(origin());
        let snapshot = metrics.snapshot(metrics.start());
        let mut out = String::from("# prefix\n");
        snapshot.write_prometheus(&mut out);
        assert_eq!(out.strip_prefix("# prefix\n"), Some(snapshot.to_prometheus().as_str()));
        let samples = parse_exposition(&snapshot.to_prometheus()).unwrap();
        assert!(samples.iter().all(|s| s.name != "wsrpc_port"));
        assert!(samples.iter().all(|s| s.name.starts_with("wsrpc_")));
        assert!(!snapshot.to_prometheus().contains("wsrpc_call_duration_seconds{"));
        assert_eq!(PROMETHEUS_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    }

    #[test]
    fn special_floats_use_prometheus_spelling() {
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Value::Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Value::Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Value::Float(1e-7).to_string(), "0.0000001");
        assert_eq!(Value::Int(u64::MAX).to_string(), "18446744073709551615");
    }
}
