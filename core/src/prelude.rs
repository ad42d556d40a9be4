//! The names an application needs, for each adapter to re-export at its top level
//! (`use wsrpc_smol::{Server, Router, connect, ClientOptions}`); configuration types stay in
//! their layers (`auth`, `hub`, `limit`, `metrics`, `ws`), which adapters re-export as
//! modules, and so are the server's hooks (`hooks`).

pub use crate::rpc::client::{
    BackoffConfig, ClientConfig, ClientError, ClientOptions, ConnectError, SubscriptionEvent,
    TlsError,
};
pub use crate::rpc::hooks;
pub use crate::rpc::{
    CallContext, ConnectionId, Extensions, HandlerContext, Method, Notification, Params, RequestId,
    Router, RouterError, RpcError, SubscribeCall, SubscriptionTarget, Topic, TopicEvent, Transport,
};
pub use crate::service::{
    Bind, HttpConfig, MonitoringAccess, Publisher, RpcConfig, ServerBuilder, ServiceConfig,
    StartError, Threads,
};
