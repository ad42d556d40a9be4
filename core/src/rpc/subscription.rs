//! Subscription handlers: application code that turns the params of a subscribe call into
//! the topic to subscribe to and, when it wants, a filter over what is published there
//! (`router.subscription("logs", |call| …)`).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::RpcError;
use super::router::{CallContext, Params};
use crate::hub::{Filter, SubscriptionFilter};

/// A subscription handler, as [`Router::subscription`](super::Router::subscription) stores it.
pub(crate) type SubscriptionHandler =
    dyn Fn(&SubscribeCall<'_>) -> Result<SubscriptionTarget, RpcError> + Send + Sync;

/// A subscribe call, as its handler sees it: the name the client asked for, the whole
/// params, and the caller.
///
/// The params have two shapes, after the server's subscription methods: Ethereum style
/// (`eth_subscribe`) takes `[name, filter]`, as in `["logs", {"address": …}]`; wsrpc style
/// (`subscribe`) takes `[topic, since, epoch, filter]` or
/// `{"topic": …, "since": …, "epoch": …, "filter": …}`. [`filter`](Self::filter) reads the
/// filter part of either.
pub struct SubscribeCall<'a, S = ()> {
    pub(crate) name: &'a str,
    pub(crate) params: Params<'a>,
    pub(crate) context: &'a CallContext,
    pub(crate) eth_style: bool,
    pub(crate) state: &'a S,
}

impl<S> Clone for SubscribeCall<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for SubscribeCall<'_, S> {}

impl<S> std::fmt::Debug for SubscribeCall<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeCall")
            .field("name", &self.name)
            .field("params", &self.params.raw().map(RawValue::get))
            .finish_non_exhaustive()
    }
}

impl<'a, S> SubscribeCall<'a, S> {
    /// The same call with the router's state.
    pub(crate) fn with_state<'b, T>(&self, state: &'b T) -> SubscribeCall<'b, T>
    where
        'a: 'b,
    {
        let Self { name, params, context, eth_style, .. } = *self;
        SubscribeCall { name, params, context, eth_style, state }
    }

    /// The state given to [`Router::with_state`](super::Router::with_state).
    pub fn state(&self) -> &'a S {
        self.state
    }

    /// The subscription name the client asked for: the first param in Ethereum style
    /// (`"logs"`), the topic otherwise.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The whole params, exactly as sent.
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The caller: connection, origin, principal.
    pub fn context(&self) -> &'a CallContext {
        self.context
    }

    /// The filter param, deserialized; `None` when absent or `null`. Errors are -32602
    /// naming the param (`Invalid params: [1]: address: expected 20 bytes …`).
    ///
    /// In Ethereum style the filter object also carries wsrpc's resume keys (`since`,
    /// `epoch`) when a client resumes: a filter type should ignore keys it does not know.
    pub fn filter<T: Deserialize<'a>>(&self) -> Result<Option<T>, RpcError> {
        let (raw, at) = if self.eth_style || self.params.is_positional() {
            #[derive(Deserialize)]
            struct Positional<'p>(#[serde(borrow)] Vec<Option<&'p RawValue>>);
            let Positional(list) = self.params.parse()?;
            let at = if self.eth_style { 1 } else { 3 };
            (list.get(at).copied().flatten(), format!("[{at}]"))
        } else {
            #[derive(Deserialize)]
            struct Named<'p> {
                #[serde(borrow, default)]
                filter: Option<&'p RawValue>,
            }
            let named: Named<'a> = self.params.parse()?;
            (named.filter, "filter".to_owned())
        };
        match raw {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => Params::new(Some(raw)).parse().map(Some).map_err(|e| {
                match e.message.strip_prefix("Invalid params: ") {
                    Some(detail) => RpcError::invalid_params(format_args!("{at}: {detail}")),
                    None => e,
                }
            }),
        }
    }
}

/// What a subscription handler decided: the topic, and a filter over what is published
/// there.
///
/// ```
/// use wsrpc_core::hub::{LogFilter, Payload};
/// use wsrpc_core::rpc::{Router, RpcError, SubscriptionTarget};
/// let mut router = Router::new();
/// router
///     // eth_subscribe("logs", {address, topics}): one topic, a filter per subscription.
///     .subscription("logs", |call| {
///         let filter: LogFilter = call.filter()?.unwrap_or_default();
///         Ok(SubscriptionTarget::topic("logs").with_filter(filter))
///     })
///     // "trades:<pair>" with an optional minimum size.
///     .subscription("trades", |call| {
///         let min: f64 = call.filter()?.unwrap_or(0.0);
///         Ok(SubscriptionTarget::topic(call.name()).with_filter(move |p: &Payload<'_>| {
///             p.value()["size"].as_f64().is_some_and(|s| s >= min)
///         }))
///     });
/// ```
#[derive(Debug)]
pub struct SubscriptionTarget {
    pub(crate) topic: String,
    pub(crate) filter: Option<SubscriptionFilter>,
}

impl SubscriptionTarget {
    /// A subscription to everything published on `topic`.
    pub fn topic(topic: impl Into<String>) -> Self {
        Self { topic: topic.into(), filter: None }
    }

    /// Only what `filter` matches: the hub runs it at each publish and sends the shared
    /// notification to this subscription only when it matches.
    pub fn with_filter(mut self, filter: impl Filter + 'static) -> Self {
        self.filter = Some(SubscriptionFilter::new(filter));
        self
    }
}
