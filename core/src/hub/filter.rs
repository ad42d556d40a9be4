//! Per-subscription filters: a predicate over each published message that decides, per
//! subscriber, whether the notification (encoded once for all) goes to it.

use std::cell::OnceCell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde_json::Value;

/// A published message as a [`Filter`] sees it: the JSON text, and its parsed value, made
/// on first use and shared by every filter that looks at the same publish.
pub struct Payload<'a> {
    json: &'a [u8],
    value: OnceCell<Value>,
}

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Payload").field(&String::from_utf8_lossy(self.json)).finish()
    }
}

impl<'a> Payload<'a> {
    /// The message `json` (JSON text, as published).
    pub fn new(json: &'a [u8]) -> Self {
        Self { json, value: OnceCell::new() }
    }

    /// The JSON text exactly as published.
    pub fn json(&self) -> &'a [u8] {
        self.json
    }

    /// The parsed value. Parsed once per publish, for all the filters that ask; every
    /// publish is checked to be JSON, so `Null` only stands for a published `null`.
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| serde_json::from_slice(self.json).unwrap_or(Value::Null))
    }
}

/// Decides whether a published message goes to one subscription. Closures
/// `Fn(&Payload) -> bool` are filters.
///
/// A filter runs on the publisher's thread, under the topic's lock, once per subscription
/// per publish: keep it quick, and never publish or subscribe from inside it. A filter that
/// panics counts as not matching.
pub trait Filter: Send + Sync {
    /// Whether `payload` goes to the subscription.
    fn matches(&self, payload: &Payload<'_>) -> bool;
}

impl<F> Filter for F
where
    F: Fn(&Payload<'_>) -> bool + Send + Sync,
{
    fn matches(&self, payload: &Payload<'_>) -> bool {
        self(payload)
    }
}

/// A [`Filter`] attached to a subscription; cheap to clone.
#[derive(Clone)]
pub struct SubscriptionFilter(Arc<dyn Filter>);

impl fmt::Debug for SubscriptionFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionFilter")
    }
}

impl SubscriptionFilter {
    /// Wraps `filter`.
    pub fn new(filter: impl Filter + 'static) -> Self {
        Self(Arc::new(filter))
    }

    /// Runs the filter; a panic counts as not matching (it would otherwise unwind into
    /// whoever published).
    pub(crate) fn matches(&self, payload: &Payload<'_>) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.matches(payload))).unwrap_or_else(|panic| {
            let why = crate::rpc::hooks::panic_message(&*panic);
            log::error!(target: "wsrpc::hub", "a subscription filter panicked: {why}");
            false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_parsed_once_for_all_filters() {
        let p = Payload::new(br#"{"n": 5}"#);
        let big = SubscriptionFilter::new(|p: &Payload<'_>| p.value()["n"].as_u64() > Some(3));
        let small = SubscriptionFilter::new(|p: &Payload<'_>| p.value()["n"].as_u64() < Some(3));
        assert!(big.matches(&p));
        assert!(!small.matches(&p));
        let first: *const Value = p.value();
        assert!(std::ptr::eq(first, p.value()), "one parse per payload");
    }

    #[test]
    fn a_panicking_filter_does_not_match() {
        let f = SubscriptionFilter::new(|_: &Payload<'_>| -> bool { panic!("bad filter") });
        assert!(!f.matches(&Payload::new(b"1")));
    }
}
