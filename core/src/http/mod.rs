//! HTTP/1.1 on the WebSocket port: message heads shared with the upgrade handshake.

pub mod head;

pub use head::{HeadBuffer, HeadLimits, Headers, RequestHead, ResponseHead};
