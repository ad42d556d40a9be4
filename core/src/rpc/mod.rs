//! JSON-RPC 2.0: messages, errors, the router and the per-connection session.
//!
//! The RPC layer takes whole text messages, not frames, so it runs over any message
//! transport: the WebSocket connection of this crate, an async-tungstenite stream, stdin
//! lines or an IPC pipe.

pub mod client;
pub mod dispatch;
pub mod error;
pub mod extensions;
pub mod hooks;
pub mod message;
pub mod openrpc;
pub mod router;
pub mod session;
pub mod subscription;
pub mod typed;

pub use error::RpcError;
pub use extensions::Extensions;
pub use message::{Incoming, Invalid, Request};
pub use router::{
    BlockingCall, CallContext, ConnectionId, HandlerContext, HandlerFuture, Params, RequestId,
    Router, RouterError, Transport, Work,
};
pub use session::{CallId, RpcSession, SessionOutput};
pub use subscription::{SubscribeCall, SubscriptionTarget};
pub use typed::{
    Method, Notification, NotifyTo, PublishTo, SubscribeTo, SubscriptionItem, Topic, TopicEvent,
};
