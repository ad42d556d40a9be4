//! RFC 6455 WebSocket: handshake, frame codec, masking, UTF-8, message assembly, close and
//! the connection state machine; permessage-deflate (RFC 7692).

pub mod budget;
pub mod close;
pub mod config;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod extension;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub(crate) mod state;
pub(crate) mod transmit;
pub mod utf8;

pub use budget::AssemblyBudget;
pub use close::{CloseCode, CloseFrame};
pub use config::Config;
pub use connection::{Connection, Stats};
pub use deflate::{CompressionCounters, CompressionTotals, DeflateConfig};
pub use error::{Error, ExtensionResponseError, HandshakeError, ProtocolError, SendError};
pub use frame::{FrameDecoder, FrameHeader, OpCode};
pub use handshake::ClientRequest;
pub use message::{Closed, Connected, Event, Initiator, Message, MessageKind, SharedFrame};

/// Which end of the connection this endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts connections; receives masked frames, sends unmasked ones.
    Server,
    /// Opens connections; masks every frame it sends.
    Client,
}
