//! What wsrpc keeps in Redis, and the two Lua scripts that change it.
//!
//! For topic `T` under prefix `P` (default `wsrpc`):
//!
//! - `P:{T}:meta`, a hash: `epoch` (made when missing: the history was lost, so a new epoch
//!   tells subscribers instead of letting old numbers continue) and `seq` (the last number);
//! - `P:{T}:log`, a stream of the last messages: entry id `seq-0`, field `d` the JSON payload,
//!   capped at the hub's replay size;
//! - `P:{T}`, the pub/sub channel, carrying `seq:epoch|payload`.
//!
//! The hash tag `{T}` puts both keys of a topic in one Redis Cluster slot, as a script's keys
//! must be.

use std::sync::Arc;

use redis::Value;
use wsrpc_core::hub::BrokerEvent;

/// Numbers and publishes one message atomically; returns `{seq, epoch}`.
///
/// KEYS: meta, log. ARGV: channel, payload, history size, history TTL (s), meta TTL (s), the
/// epoch to create when the meta is missing.
pub(crate) const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], string.format('%d-0', seq), 'd', ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[1], string.format('%d:', seq) .. epoch .. '|' .. ARGV[2])
return {seq, epoch}
";

/// Reads a topic's position and history; returns `{epoch, top, entries}`, the entries as
/// `XRANGE` gives them. Creates the epoch when the meta is missing, so that every subscriber
/// learns one even before the first publish.
///
/// KEYS: meta, log. ARGV: the first sequence number wanted (empty: no entries), most entries,
/// meta TTL (s), the epoch to create when the meta is missing.
pub(crate) const HISTORY: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local top = redis.call('HGET', KEYS[1], 'seq') or '0'
local entries = {}
if ARGV[1] ~= '' then
  entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {epoch, top, entries}
";

/// Key and channel names under a prefix.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub(crate) fn meta(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:meta", self.prefix)
    }

    pub(crate) fn log(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:log", self.prefix)
    }

    pub(crate) fn channel(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}", self.prefix)
    }

    /// The topic of a channel name, if it is one of ours.
    pub(crate) fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?.strip_suffix('}')
    }

    /// The channel an instance publishes its probes to and listens on.
    pub(crate) fn probe(&self, instance: u64) -> String {
        format!("{}:probe:{instance:016x}", self.prefix)
    }
}

/// Splits a channel message `seq:epoch|payload`.
pub(crate) fn parse_message(bytes: &[u8]) -> Option<(u64, u64, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let bar = colon + 1 + bytes[colon + 1..].iter().position(|&b| b == b'|')?;
    let seq = parse_u64(&bytes[..colon])?;
    let epoch = parse_u64(&bytes[colon + 1..bar])?;
    Some((seq, epoch, &bytes[bar + 1..]))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => parse_u64(b),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `{seq, epoch}` from the publish script.
pub(crate) fn parse_published(v: &Value) -> Option<(u64, u64)> {
    match v {
        Value::Array(items) if items.len() == 2 => Some((as_u64(&items[0])?, as_u64(&items[1])?)),
        _ => None,
    }
}

/// The [`BrokerEvent::History`] of the history script's reply.
pub(crate) fn parse_history(id: u64, topic: Arc<str>, v: Value) -> Option<BrokerEvent> {
    let Value::Array(mut items) = v else { return None };
    if items.len() != 3 {
        return None;
    }
    let Value::Array(raw) = items.pop()? else { return None };
    let top = as_u64(&items[1])?;
    let epoch = as_u64(&items[0])?;
    let mut entries = Vec::with_capacity(raw.len());
    for entry in raw {
        // [id, [field, value, ...]]
        let Value::Array(mut pair) = entry else { return None };
        let Value::Array(fields) = pair.pop()? else { return None };
        let Value::BulkString(id) = pair.pop()? else { return None };
        let seq = parse_u64(id.split(|&b| b == b'-').next()?)?;
        let mut fields = fields.into_iter();
        let mut payload = None;
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            if let (Value::BulkString(k), Value::BulkString(v)) = (k, v)
                && k == b"d"
            {
                payload = Some(v);
            }
        }
        entries.push((seq, payload?));
    }
    Some(BrokerEvent::History { id, topic, epoch, top, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_share_a_hash_tag() {
        let n = Names::new("wsrpc");
        assert_eq!(n.meta("user:0xab"), "wsrpc:{user:0xab}:meta");
        assert_eq!(n.log("user:0xab"), "wsrpc:{user:0xab}:log");
        assert_eq!(n.channel("user:0xab"), "wsrpc:{user:0xab}");
        assert_eq!(n.topic_of("wsrpc:{user:0xab}"), Some("user:0xab"));
        assert_eq!(n.topic_of("other:{x}"), None);
        assert_eq!(n.topic_of("wsrpc:probe:00"), None);
    }

    #[test]
    fn channel_messages_parse_and_garbage_does_not() {
        assert_eq!(parse_message(b"12:99|{\"a\":1}"), Some((12, 99, &b"{\"a\":1}"[..])));
        assert_eq!(parse_message(b"1:2|a|b:c"), Some((1, 2, &b"a|b:c"[..])));
        for bad in [&b""[..], b"12", b"12:", b"12:3", b"x:3|{}", b"1:y|{}", b"-1:2|{}"] {
            assert_eq!(parse_message(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn history_replies_parse() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: &str, d: &str| Value::Array(vec![b(id), Value::Array(vec![b("d"), b(d)])]);
        let reply = Value::Array(vec![
            b("77"),
            b("12"),
            Value::Array(vec![entry("11-0", "1"), entry("12-0", "[2]")]),
        ]);
        match parse_history(5, "t".into(), reply) {
            Some(BrokerEvent::History { id: 5, epoch: 77, top: 12, entries, .. }) => {
                assert_eq!(entries, [(11, b"1".to_vec()), (12, b"[2]".to_vec())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_history(5, "t".into(), Value::Nil).is_none());
        assert_eq!(parse_published(&Value::Array(vec![Value::Int(3), b("9")])), Some((3, 9)));
        assert_eq!(parse_published(&Value::Array(vec![Value::Int(-3), b("9")])), None);
    }
}
