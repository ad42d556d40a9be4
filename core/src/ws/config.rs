//! Limits and timers of a WebSocket connection.

use std::time::Duration;

use crate::http::head::HeadLimits;

/// Configuration shared by connections (wrap it in an `Arc` to share one copy).
///
/// Defaults: 16 MiB frames and messages, 8 KiB and 64 header lines for the
/// handshake, a 10 s handshake timeout, a ping every 30 s of silence with 30 s to answer, no
/// idle timeout and 5 s for the closing handshake; no compression.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame payload accepted; larger frames are answered with close 1009.
    pub max_frame_size: u64,
    /// Largest message (sum of its fragments); larger messages get close 1009.
    pub max_message_size: u64,
    /// Most frames one message may be split into; more gets close 1009.
    pub max_fragments: usize,
    /// Limits on the handshake's HTTP head; beyond them a server answers 431.
    pub head_limits: HeadLimits,
    /// Time allowed from connection start to a completed handshake.
    pub handshake_timeout: Option<Duration>,
    /// Send a ping after this long without receiving anything.
    pub ping_interval: Option<Duration>,
    /// Time a ping has to be answered before the connection is dropped.
    pub pong_timeout: Duration,
    /// Close with 1001 after this long without a data message in either direction.
    pub idle_timeout: Option<Duration>,
    /// Time the peer has to answer our close frame (and to drain the last bytes).
    pub close_timeout: Duration,
    /// Subprotocols a server accepts, in order of preference.
    pub subprotocols: Vec<String>,
    /// A byte budget shared with other connections for unfinished messages [none here; a
    /// server's `Service` shares one of 256 MiB among its connections, and their HTTP
    /// request bodies, unless one is set].
    pub assembly_budget: Option<super::AssemblyBudget>,
    /// permessage-deflate (RFC 7692) \[off\]: a server accepts offers and a client offers it
    /// when set. Turn it on with [`enable_compression`](Self::enable_compression).
    pub compression: Option<super::DeflateConfig>,
}

impl Config {
    /// Turns permessage-deflate on with its defaults and returns them for changing any
    /// parameter (`config.enable_compression().level = 6`).
    pub fn enable_compression(&mut self) -> &mut super::DeflateConfig {
        self.compression.get_or_insert_with(super::DeflateConfig::default)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_fragments: 1024,
            head_limits: HeadLimits::default(),
            handshake_timeout: Some(Duration::from_secs(10)),
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(30),
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            subprotocols: Vec::new(),
            assembly_budget: None,
            compression: None,
        }
    }
}
