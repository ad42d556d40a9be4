//! HTTP/1.1 on the WebSocket port: message heads (shared with the upgrade handshake), bodies
//! and responses. The request routing lives in [`crate::engine`].

pub mod body;
pub mod head;
pub mod response;
pub mod routes;

pub use head::{HeadBuffer, HeadLimits, Headers, RequestHead, ResponseHead};
pub use routes::StaticRoute;
