//! The Ethereum log filter of `eth_subscribe("logs", {address, topics})`, as a subscription
//! [`Filter`].

use serde::de::{Deserialize, Deserializer, Error as _};
use serde_json::Value;

use super::filter::{Filter, Payload};
use crate::auth::credentials::{hex_array, hex_value};

/// Most addresses in one filter (go-ethereum's bound).
const MAX_ADDRESSES: usize = 1000;
/// Most topic positions: a log has at most four topics (LOG0 to LOG4).
const MAX_TOPIC_POSITIONS: usize = 4;
/// Most topics listed over all positions, so a filter stays small in memory.
const MAX_TOPICS: usize = 1000;

/// A log filter with Ethereum's semantics: a log matches when its `address` is one of
/// `address` (any when absent or empty), and for each position `i` of `topics`, `null` or
/// `[]` matches anything and otherwise the log's `topics[i]` must be one of the listed ones
/// (a log with fewer topics than positions does not match, as in go-ethereum).
///
/// It deserializes from the filter object of `eth_subscribe("logs", filter)`:
/// `{"address": A | [A, …], "topics": [T | [T, …] | null, …]}` with 20-byte addresses and
/// 32-byte topics as `0x`-prefixed hex (either case). Errors name the offending field (the
/// caller answers them with -32602): an address or topic of the wrong length or not hex, more
/// than 4 topic positions, more than 1,000 addresses or topics, or a block range
/// (`fromBlock`, `toBlock`, `blockHash`: a subscription delivers new logs only). Other keys
/// are ignored, as go-ethereum does (wsrpc's `since` and `epoch` ride there).
///
/// As a [`Filter`] it reads the published log's `address` and `topics`; a published value
/// that is not such a log matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Empty: any address.
    addresses: Vec<[u8; 20]>,
    /// Per position; `None`: any topic there.
    topics: Vec<Option<Vec<[u8; 32]>>>,
}

impl LogFilter {
    /// A filter from the JSON filter object; the error says which field is wrong and why.
    pub fn from_json(filter: &Value) -> Result<Self, String> {
        let Value::Object(fields) = filter else {
            return Err("expected a filter object {\"address\": …, \"topics\": […]}".into());
        };
        for key in ["fromBlock", "toBlock", "blockHash"] {
            if fields.get(key).is_some_and(|v| !v.is_null()) {
                return Err(format!(
                    "{key}: a logs subscription delivers new logs only, block ranges are not supported"
                ));
            }
        }
        let addresses = match fields.get("address") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(a)) => vec![hex_field(a, "address")?],
            Some(Value::Array(list)) => {
                if list.len() > MAX_ADDRESSES {
                    return Err(format!(
                        "address: at most {MAX_ADDRESSES} addresses, got {}",
                        list.len()
                    ));
                }
                let mut addresses = Vec::with_capacity(list.len());
                for (i, a) in list.iter().enumerate() {
                    let Value::String(a) = a else {
                        return Err(format!("address[{i}]: expected a hex string"));
                    };
                    addresses.push(hex_field(a, &format!("address[{i}]"))?);
                }
                // Sorted once here: a publish looks each log's address up by binary search.
                addresses.sort_unstable();
                addresses.dedup();
                addresses
            }
            Some(_) => return Err("address: expected an address or an array of addresses".into()),
        };
        let topics = match fields.get("topics") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(positions)) => {
                if positions.len() > MAX_TOPIC_POSITIONS {
                    return Err(format!(
                        "topics: at most {MAX_TOPIC_POSITIONS} positions, got {}",
                        positions.len()
                    ));
                }
                let mut listed = 0;
                let mut topics = Vec::with_capacity(positions.len());
                for (i, position) in positions.iter().enumerate() {
                    topics.push(topic_position(position, i, &mut listed)?);
                }
                topics
            }
            Some(_) => return Err("topics: expected an array of topic positions".into()),
        };
        Ok(Self { addresses, topics })
    }

    /// Whether `log` (an object with `address` and `topics`, as a node publishes it)
    /// matches.
    pub fn matches_log(&self, log: &Value) -> bool {
        if !self.addresses.is_empty() {
            let address = log.get("address").and_then(Value::as_str).and_then(decode::<20>);
            if address.is_none_or(|a| self.addresses.binary_search(&a).is_err()) {
                return false;
            }
        }
        if self.topics.is_empty() {
            return true;
        }
        let Some(logged) = log.get("topics").and_then(Value::as_array) else { return false };
        if logged.len() < self.topics.len() {
            return false;
        }
        self.topics.iter().zip(logged).all(|(wanted, logged)| match wanted {
            None => true,
            Some(wanted) => {
                logged.as_str().and_then(decode::<32>).is_some_and(|topic| wanted.contains(&topic))
            }
        })
    }
}

impl Filter for LogFilter {
    fn matches(&self, payload: &Payload<'_>) -> bool {
        self.matches_log(payload.value())
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_json(&Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

/// One position of `topics`: `null`, `[]` or a list holding `null` match anything.
fn topic_position(
    position: &Value,
    i: usize,
    listed: &mut usize,
) -> Result<Option<Vec<[u8; 32]>>, String> {
    let mut count = |n: usize| {
        *listed += n;
        if *listed > MAX_TOPICS {
            Err(format!("topics: at most {MAX_TOPICS} topics over all positions"))
        } else {
            Ok(())
        }
    };
    match position {
        Value::Null => Ok(None),
        Value::String(t) => {
            count(1)?;
            Ok(Some(vec![hex_field(t, &format!("topics[{i}]"))?]))
        }
        Value::Array(alternatives) => {
            count(alternatives.len())?;
            let mut any = alternatives.is_empty();
            let mut topics = Vec::with_capacity(alternatives.len());
            for (j, t) in alternatives.iter().enumerate() {
                match t {
                    Value::Null => any = true,
                    Value::String(t) => topics.push(hex_field(t, &format!("topics[{i}][{j}]"))?),
                    _ => return Err(format!("topics[{i}][{j}]: expected a topic or null")),
                }
            }
            Ok(if any { None } else { Some(topics) })
        }
        _ => Err(format!("topics[{i}]: expected a topic, an array of topics, or null")),
    }
}

/// `0x`-prefixed hex of exactly `N` bytes, or an error naming `field`.
fn hex_field<const N: usize>(text: &str, field: &str) -> Result<[u8; N], String> {
    let Some(digits) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) else {
        return Err(format!("{field}: expected 0x-prefixed hex"));
    };
    if digits.len() != 2 * N {
        return Err(format!(
            "{field}: expected {N} bytes ({} hex digits), got {} digits",
            2 * N,
            digits.len()
        ));
    }
    if let Some(bad) = digits.bytes().find(|d| hex_value(*d).is_none()) {
        return Err(format!("{field}: not hex ({:?})", char::from(bad)));
    }
    decode(text).ok_or_else(|| format!("{field}: not hex"))
}

/// `0x`-prefixed hex of exactly `N` bytes; checked on the publish path, without allocating.
fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    hex_array(text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"))?.as_bytes())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TOKEN: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
    const OTHER: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";
    const TRANSFER: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
    const APPROVAL: &str = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925";
    const ALICE: &str = "0x0000000000000000000000009f2c4b1e6d0a7c3b5e8f1a2d4c6b8e0f1a3c5d7e";

    fn log(address: &str, topics: &[&str]) -> Value {
        json!({"address": address, "topics": topics, "data": "0x", "blockNumber": "0x1"})
    }

    fn filter(v: Value) -> LogFilter {
        LogFilter::from_json(&v).unwrap()
    }

    #[test]
    fn address_single_or_any_of_a_list_in_either_case() {
        let f = filter(json!({"address": TOKEN.to_uppercase().replacen("0X", "0x", 1)}));
        assert!(f.matches_log(&log(TOKEN, &[TRANSFER])));
        assert!(!f.matches_log(&log(OTHER, &[TRANSFER])));
        let f = filter(json!({"address": [OTHER, TOKEN]}));
        assert!(f.matches_log(&log(TOKEN, &[])));
        assert!(f.matches_log(&log(OTHER, &[])));
        assert!(filter(json!({})).matches_log(&log(OTHER, &[])), "no address: any");
        assert!(filter(json!({"address": []})).matches_log(&log(OTHER, &[])));
    }

    #[test]
    fn topics_by_position_with_wildcards_and_alternatives() {
        // Transfer events to anyone, from Alice.
        let f = filter(json!({"topics": [TRANSFER, ALICE]}));
        assert!(f.matches_log(&log(TOKEN, &[TRANSFER, ALICE, ALICE])));
        assert!(!f.matches_log(&log(TOKEN, &[APPROVAL, ALICE])));
        assert!(!f.matches_log(&log(TOKEN, &[TRANSFER])), "fewer topics than positions");
        // Any first topic, Alice second.
        let f = filter(json!({"topics": [null, ALICE]}));
        assert!(f.matches_log(&log(TOKEN, &[APPROVAL, ALICE])));
        assert!(!f.matches_log(&log(TOKEN, &[APPROVAL, TRANSFER])));
        // Transfer or Approval.
        let f = filter(json!({"topics": [[TRANSFER, APPROVAL]]}));
        assert!(f.matches_log(&log(TOKEN, &[APPROVAL])));
        assert!(!f.matches_log(&log(TOKEN, &[ALICE])));
        // `[]` and a list holding null match anything, but still need the position.
        for any in [json!([]), json!([TRANSFER, null])] {
            let f = filter(json!({"topics": [any, ALICE]}));
            assert!(f.matches_log(&log(TOKEN, &[ALICE, ALICE])));
            assert!(!f.matches_log(&log(TOKEN, &[ALICE])));
        }
        // Address and topics together.
        let f = filter(json!({"address": TOKEN, "topics": [TRANSFER]}));
        assert!(f.matches_log(&log(TOKEN, &[TRANSFER])));
        assert!(!f.matches_log(&log(OTHER, &[TRANSFER])));
    }

    #[test]
    fn what_is_not_a_log_matches_nothing_filtered() {
        let f = filter(json!({"address": TOKEN}));
        assert!(!f.matches_log(&json!({"number": "0x1"})));
        assert!(!f.matches_log(&json!({"address": "0x12"})));
        let f = filter(json!({"topics": [TRANSFER]}));
        assert!(!f.matches_log(&json!({"address": TOKEN, "topics": "nope"})));
        assert!(!f.matches_log(&json!({"address": TOKEN, "topics": [5]})));
    }

    #[test]
    fn bad_filters_are_refused_with_the_field_named() {
        let cases = [
            (json!({"address": "0x1234"}), "address: expected 20 bytes (40 hex digits), got 4"),
            (json!({"address": TOKEN.replace('a', "g")}), "address: not hex ('g')"),
            (json!({"address": TOKEN.trim_start_matches("0x")}), "address: expected 0x"),
            (json!({"address": [TOKEN, 7]}), "address[1]: expected a hex string"),
            (json!({"address": [TOKEN, "0x00"]}), "address[1]: expected 20 bytes"),
            (json!({"address": 7}), "address: expected an address or an array"),
            (
                json!({"topics": [null, null, null, null, null]}),
                "topics: at most 4 positions, got 5",
            ),
            (json!({"topics": ["0x00"]}), "topics[0]: expected 32 bytes (64 hex digits)"),
            (json!({"topics": [null, [TRANSFER, "0xzz"]]}), "topics[1][1]: expected 32 bytes"),
            (json!({"topics": [[TRANSFER, 1]]}), "topics[0][1]: expected a topic or null"),
            (json!({"topics": [true]}), "topics[0]: expected a topic, an array of topics"),
            (json!({"topics": TRANSFER}), "topics: expected an array"),
            (json!({"fromBlock": "0x1"}), "fromBlock: a logs subscription delivers new logs only"),
            (json!({"blockHash": TRANSFER}), "blockHash:"),
            (json!("logs"), "expected a filter object"),
        ];
        for (given, want) in cases {
            let e = LogFilter::from_json(&given).unwrap_err();
            assert!(e.starts_with(want), "{given}: {e}");
        }
        let many: Vec<String> = (0..=MAX_ADDRESSES).map(|_| TOKEN.to_owned()).collect();
        let e = LogFilter::from_json(&json!({ "address": many })).unwrap_err();
        assert_eq!(e, "address: at most 1000 addresses, got 1001");
        let many: Vec<&str> = (0..=MAX_TOPICS / 2).map(|_| TRANSFER).collect();
        let e = LogFilter::from_json(&json!({ "topics": [many, many] })).unwrap_err();
        assert_eq!(e, "topics: at most 1000 topics over all positions");
    }

    #[test]
    fn resume_keys_and_unknown_keys_are_ignored() {
        let f = filter(json!({"address": TOKEN, "since": 4, "epoch": 9, "fromBlock": null}));
        assert_eq!(f, filter(json!({"address": TOKEN})));
    }

    #[test]
    fn deserializes_through_serde() {
        let f: LogFilter = serde_json::from_value(json!({"topics": [TRANSFER]})).unwrap();
        assert!(f.matches_log(&log(OTHER, &[TRANSFER])));
        let e = serde_json::from_value::<LogFilter>(json!({"topics": 1})).unwrap_err();
        assert!(e.to_string().contains("topics: expected an array"), "{e}");
    }
}
