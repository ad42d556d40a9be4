//! Typed descriptors of an API, shared by its server and its clients without a macro: a
//! [`Method`] carries its name, parameter type and result type; a [`Notification`] its name
//! and parameter type; a [`Topic`] its name and item type. The server registers handlers
//! against them and clients call through them, so a mismatch is a compile error.
//!
//! ```
//! use wsrpc_core::rpc::{Method, Router, Topic};
//!
//! // In a crate both sides depend on:
//! pub const ADD: Method<(i64, i64), i64> = Method::new("add").params(&["a", "b"]);
//! pub const TICKS: Topic<u64> = Topic::new("ticks");
//!
//! // The server:
//! let mut router = Router::new();
//! router.register(ADD, |(a, b), _ctx| Ok(a + b)).topic(TICKS);
//! // `client.request(ADD, (2, 3))` then gives an `i64`; `client.subscribe(TICKS)` yields
//! // `TopicEvent<u64>`s; `server.publish(TICKS, &7)` type-checks the value.
//! ```
//!
//! Params go on the wire as serde writes `P`: a tuple as a JSON array (positional params), a
//! struct as an object (named params; the server also accepts them positionally, in field
//! order), `()` as no params at all.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::client::{ClientError, SubscriptionEvent, decode};

/// What a descriptor says about itself for `rpc.discover`, beyond its name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Doc {
    pub(crate) params: Option<&'static [&'static str]>,
    pub(crate) result: Option<&'static str>,
    pub(crate) summary: Option<&'static str>,
    pub(crate) description: Option<&'static str>,
    pub(crate) errors: &'static [(i64, &'static str)],
    pub(crate) deprecated: bool,
    #[cfg(feature = "schemars")]
    pub(crate) schemas: Option<super::openrpc::SchemaFns>,
}

impl Doc {
    pub(crate) const EMPTY: Self = Self {
        params: None,
        result: None,
        summary: None,
        description: None,
        errors: &[],
        deprecated: false,
        #[cfg(feature = "schemars")]
        schemas: None,
    };
}

/// A method of an API: its name, the type of its params `P` and of its result `R`.
///
/// Define it once where server and clients both see it; register it with
/// [`Router::register`](super::Router::register) (or `register_async`, `register_blocking`)
/// and call it with a client's `request(METHOD, params)`.
///
/// ```
/// use wsrpc_core::rpc::Method;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Transfer { to: String, amount: u64 }
///
/// const ADD: Method<(i64, i64), i64> = Method::new("add").params(&["a", "b"]);
/// const TRANSFER: Method<Transfer, String> = Method::new("transfer")
///     .summary("Moves funds; answers the receipt id")
///     .errors(&[(-32010, "Insufficient funds")]);
/// assert_eq!(ADD.name(), "add");
/// ```
pub struct Method<P, R> {
    name: &'static str,
    pub(crate) doc: Doc,
    types: PhantomData<fn(P) -> R>,
}

impl<P, R> Method<P, R> {
    /// A method called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self { name, doc: Doc::EMPTY, types: PhantomData }
    }

    /// The names of the positional params, for `rpc.discover` (default: `p0`, `p1`, … for a
    /// tuple, the field names for a struct).
    pub const fn params(mut self, names: &'static [&'static str]) -> Self {
        self.doc.params = Some(names);
        self
    }

    /// The name of the result, for `rpc.discover` (default: `result`).
    pub const fn result(mut self, name: &'static str) -> Self {
        self.doc.result = Some(name);
        self
    }

    /// A short summary, for `rpc.discover`.
    pub const fn summary(mut self, text: &'static str) -> Self {
        self.doc.summary = Some(text);
        self
    }

    /// A longer description (Markdown), for `rpc.discover`.
    pub const fn description(mut self, text: &'static str) -> Self {
        self.doc.description = Some(text);
        self
    }

    /// The application's own errors the method may answer with (code, message), listed by
    /// `rpc.discover` next to the ones every method may answer with.
    pub const fn errors(mut self, errors: &'static [(i64, &'static str)]) -> Self {
        self.doc.errors = errors;
        self
    }

    /// Marks the method deprecated in `rpc.discover`.
    pub const fn deprecated(mut self) -> Self {
        self.doc.deprecated = true;
        self
    }

    /// The method's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(feature = "schemars")]
impl<P: schemars::JsonSchema, R: schemars::JsonSchema> Method<P, R> {
    /// Describes params and result with their JSON Schemas (from `schemars`) in
    /// `rpc.discover`, instead of `{}`. Feature `schemars`.
    pub const fn with_schemas(mut self) -> Self {
        self.doc.schemas = Some(super::openrpc::SchemaFns::of::<P, R>());
        self
    }
}

impl<P, R> Clone for Method<P, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P, R> Copy for Method<P, R> {}

impl<P, R> fmt::Debug for Method<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Method").field(&self.name).finish()
    }
}

/// A notification of an API (a call that gets no answer): its name and the type of its
/// params. Register it with
/// [`Router::register_notification`](super::Router::register_notification); clients send it
/// with `notify(NOTIFICATION, params)`.
///
/// ```
/// use wsrpc_core::rpc::Notification;
///
/// const LOG: Notification<(String,)> = Notification::new("log").params(&["line"]);
/// assert_eq!(LOG.name(), "log");
/// ```
pub struct Notification<P> {
    name: &'static str,
    pub(crate) doc: Doc,
    types: PhantomData<fn(P)>,
}

impl<P> Notification<P> {
    /// A notification called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self { name, doc: Doc::EMPTY, types: PhantomData }
    }

    /// The names of the positional params, for `rpc.discover`.
    pub const fn params(mut self, names: &'static [&'static str]) -> Self {
        self.doc.params = Some(names);
        self
    }

    /// A short summary, for `rpc.discover`.
    pub const fn summary(mut self, text: &'static str) -> Self {
        self.doc.summary = Some(text);
        self
    }

    /// The notification's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(feature = "schemars")]
impl<P: schemars::JsonSchema> Notification<P> {
    /// Describes the params with their JSON Schemas (from `schemars`) in `rpc.discover`.
    /// Feature `schemars`.
    pub const fn with_schemas(mut self) -> Self {
        self.doc.schemas = Some(super::openrpc::SchemaFns::of::<P, ()>());
        self
    }
}

impl<P> Clone for Notification<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Notification<P> {}

impl<P> fmt::Debug for Notification<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Notification").field(&self.name).finish()
    }
}

/// A topic of an API: its name and the type of the values published to it. A server
/// publishes with `publish(TOPIC, &value)` (the value must be a `T`); a client's
/// `subscribe(TOPIC)` yields [`TopicEvent<T>`]. [`Router::topic`](super::Router::topic) lists
/// it in `rpc.discover`.
///
/// ```
/// use wsrpc_core::rpc::Topic;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Tick { price: f64 }
///
/// const TICKS: Topic<Tick> = Topic::new("ticks").summary("One price per second");
/// assert_eq!(TICKS.name(), "ticks");
/// ```
pub struct Topic<T: ?Sized> {
    name: &'static str,
    pub(crate) summary: Option<&'static str>,
    #[cfg(feature = "schemars")]
    pub(crate) schema: Option<fn(&mut schemars::SchemaGenerator) -> schemars::Schema>,
    types: PhantomData<fn(&T)>,
}

impl<T: ?Sized> Topic<T> {
    /// A topic called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            summary: None,
            #[cfg(feature = "schemars")]
            schema: None,
            types: PhantomData,
        }
    }

    /// A short summary, for `rpc.discover`.
    pub const fn summary(mut self, text: &'static str) -> Self {
        self.summary = Some(text);
        self
    }

    /// The topic's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

#[cfg(feature = "schemars")]
impl<T: schemars::JsonSchema> Topic<T> {
    /// Describes the values with their JSON Schema (from `schemars`) in `rpc.discover`.
    /// Feature `schemars`.
    pub const fn with_schema(mut self) -> Self {
        self.schema = Some(super::openrpc::schema_of::<T>);
        self
    }
}

impl<T: ?Sized> Clone for Topic<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Topic<T> {}

impl<T: ?Sized> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Topic").field(&self.name).finish()
    }
}

/// What names a topic to publish values of type `V` to: a [`Topic<V>`] (only `V` values
/// pass), or any topic name (`&str`, `&String`: any serializable value).
pub trait PublishTo<V: ?Sized> {
    /// The topic's name.
    fn topic_name(&self) -> &str;
}

impl<V: ?Sized, N: AsRef<str> + ?Sized> PublishTo<V> for &N {
    fn topic_name(&self) -> &str {
        (**self).as_ref()
    }
}

impl<T: ?Sized> PublishTo<T> for Topic<T> {
    fn topic_name(&self) -> &str {
        self.name
    }
}

/// What names a topic to subscribe to, and what its subscription yields: a [`Topic<T>`]
/// yields [`TopicEvent<T>`]; a topic name (`&str`, `&String`) yields raw
/// [`SubscriptionEvent`]s.
pub trait SubscribeTo {
    /// The items of the subscription.
    type Item: SubscriptionItem;
    /// The topic's name.
    fn topic_name(&self) -> &str;
}

impl<N: AsRef<str> + ?Sized> SubscribeTo for &N {
    type Item = SubscriptionEvent;

    fn topic_name(&self) -> &str {
        (**self).as_ref()
    }
}

impl<T: DeserializeOwned + Send + 'static> SubscribeTo for Topic<T> {
    type Item = TopicEvent<T>;

    fn topic_name(&self) -> &str {
        self.name
    }
}

/// What a client's subscription yields, made from each event as it is taken (so decoding
/// runs on the reader's side, never in the connection's loop).
pub trait SubscriptionItem: Sized + Send + 'static {
    /// The item for `event`.
    fn from_event(event: SubscriptionEvent) -> Self;
}

impl SubscriptionItem for SubscriptionEvent {
    fn from_event(event: SubscriptionEvent) -> Self {
        event
    }
}

impl<T: DeserializeOwned + Send + 'static> SubscriptionItem for TopicEvent<T> {
    fn from_event(event: SubscriptionEvent) -> Self {
        match event {
            SubscriptionEvent::Notification { seq, value } => match decode(&value) {
                Ok(value) => Self::Value { seq, value },
                Err(error) => Self::Malformed { seq, error, raw: value },
            },
            SubscriptionEvent::Gap { from, to, lagged } => Self::Gap { from, to, lagged },
            SubscriptionEvent::Reset { epoch } => Self::Reset { epoch },
            SubscriptionEvent::Stalled { from } => Self::Stalled { from },
            SubscriptionEvent::Ended(e) => Self::Ended(e),
        }
    }
}

/// The events of a typed subscription ([`Topic<T>`]), in order: values already decoded, and
/// what happened to the stream (see [`SubscriptionEvent`] for when each comes).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TopicEvent<T> {
    /// A published value with its per-topic sequence number.
    Value {
        /// The sequence number.
        seq: u64,
        /// The value.
        value: T,
    },
    /// A published value that is not a `T` (the server published something else to the
    /// topic); the subscription goes on.
    Malformed {
        /// The sequence number.
        seq: u64,
        /// Why it did not decode ([`ClientError::Decode`]).
        error: ClientError,
        /// The value as it came.
        raw: Box<RawValue>,
    },
    /// Values `from..=to` will not arrive.
    Gap {
        /// First missed sequence number.
        from: u64,
        /// Last missed sequence number.
        to: u64,
        /// Dropped because this client read too slowly (else: replay could not reach back).
        lagged: bool,
    },
    /// Sequence numbers start over in `epoch`; reload what depends on the topic.
    Reset {
        /// The new epoch.
        epoch: u64,
    },
    /// Values from `from` on are held up (the server's broker is down).
    Stalled {
        /// The first value that may be late.
        from: u64,
    },
    /// The server refused the subscription after a reconnect; no more events follow.
    Ended(ClientError),
}

impl<T> TopicEvent<T> {
    /// The value, for [`Value`](Self::Value).
    pub fn value(self) -> Option<T> {
        match self {
            Self::Value { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// What names a notification to send with params `P`: a [`Notification<P>`] (only `P`
/// passes), or any method name (`&str`, `&String`: any serializable params).
pub trait NotifyTo<P> {
    /// The method's name.
    fn method_name(&self) -> &str;
}

impl<P, N: AsRef<str> + ?Sized> NotifyTo<P> for &N {
    fn method_name(&self) -> &str {
        (**self).as_ref()
    }
}

impl<P> NotifyTo<P> for Notification<P> {
    fn method_name(&self) -> &str {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: &str) -> SubscriptionEvent {
        SubscriptionEvent::Notification {
            seq: 4,
            value: RawValue::from_string(value.to_owned()).unwrap(),
        }
    }

    #[test]
    fn typed_events_decode_or_say_why_not() {
        match TopicEvent::<u32>::from_event(event("7")) {
            TopicEvent::Value { seq: 4, value: 7 } => {}
            other => panic!("{other:?}"),
        }
        match TopicEvent::<u32>::from_event(event(r#""seven""#)) {
            TopicEvent::Malformed { seq: 4, error: ClientError::Decode(_), raw } => {
                assert_eq!(raw.get(), r#""seven""#);
            }
            other => panic!("{other:?}"),
        }
        let gap = SubscriptionEvent::Gap { from: 1, to: 3, lagged: true };
        assert!(matches!(
            TopicEvent::<u32>::from_event(gap),
            TopicEvent::Gap { from: 1, to: 3, lagged: true }
        ));
        assert_eq!(TopicEvent::<u32>::from_event(event("9")).value(), Some(9));
    }

    #[test]
    fn names_come_from_descriptors_and_strings() {
        const T: Topic<u8> = Topic::new("t");
        fn publish_name<V: ?Sized>(to: impl PublishTo<V>) -> String {
            to.topic_name().to_owned()
        }
        assert_eq!(publish_name::<u8>(T), "t");
        assert_eq!(publish_name::<str>("free"), "free");
        assert_eq!(publish_name::<u8>(&String::from("owned")), "owned");
        assert_eq!(SubscribeTo::topic_name(&T), "t");
        assert_eq!(SubscribeTo::topic_name(&"x"), "x");
    }
}
