//! Whole messages and the connection's events.

use std::sync::Arc;

use super::close::CloseCode;
use super::error::Error;
use super::frame::{FrameHeader, MAX_HEADER_LEN, OpCode};
use crate::http::head::RequestHead;

/// The type of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// UTF-8 text (validated as it arrived).
    Text,
    /// Arbitrary bytes.
    Binary,
}

impl MessageKind {
    /// The opcode of the message's first frame.
    pub fn opcode(self) -> OpCode {
        match self {
            Self::Text => OpCode::Text,
            Self::Binary => OpCode::Binary,
        }
    }
}

/// A complete data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Text or binary.
    pub kind: MessageKind,
    /// The payload; for text it is valid UTF-8.
    pub data: Vec<u8>,
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self { kind: MessageKind::Text, data: text.into().into_bytes() }
    }

    /// A binary message.
    pub fn binary(data: impl Into<Vec<u8>>) -> Self {
        Self { kind: MessageKind::Binary, data: data.into() }
    }

    /// The text of a text message (`None` for binary).
    pub fn as_text(&self) -> Option<&str> {
        match self.kind {
            // Received text was validated incrementally; this second check is SIMD-fast and
            // keeps the crate free of `unsafe`.
            MessageKind::Text => simdutf8::basic::from_utf8(&self.data).ok(),
            MessageKind::Binary => None,
        }
    }
}

/// A server frame encoded once and shared by every connection it is sent to (a broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFrame {
    bytes: Arc<[u8]>,
    header_len: u8,
}

impl SharedFrame {
    /// Encodes `payload` as one unmasked, final frame of `kind`.
    pub fn new(kind: MessageKind, payload: &[u8]) -> Self {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode: kind.opcode(),
            mask: None,
            payload_len: payload.len() as u64,
        };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        let mut bytes = Vec::with_capacity(hlen + payload.len());
        bytes.extend_from_slice(&hbuf[..hlen]);
        bytes.extend_from_slice(payload);
        Self { bytes: bytes.into(), header_len: hlen as u8 }
    }

    /// The whole frame as it goes on the wire.
    pub fn wire_bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The frame's payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[usize::from(self.header_len)..]
    }

    /// The message type (from the encoded opcode).
    pub fn kind(&self) -> MessageKind {
        if self.bytes[0] & 0x0F == OpCode::Binary.bits() {
            MessageKind::Binary
        } else {
            MessageKind::Text
        }
    }
}

/// Who started the end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// This endpoint: [`close`](super::Connection::close), a protocol violation by the peer
    /// that we answered, or a timer.
    Local,
    /// The peer: its close frame or its end of the transport.
    Remote,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The close code that ended it: the peer's when it closed first (1005 when its frame had
    /// none), ours otherwise, 1006 when no close frame was exchanged.
    pub code: CloseCode,
    /// The reason that came with `code`.
    pub reason: String,
    /// Who started the end.
    pub initiator: Initiator,
    /// Both close frames were exchanged.
    pub clean: bool,
    /// What went wrong, when something did.
    pub error: Option<Error>,
}

/// The handshake finished.
#[derive(Clone, Debug)]
pub struct Connected {
    /// The negotiated subprotocol.
    pub protocol: Option<String>,
    /// Server role: the client's request, for its path, origin and credentials.
    pub request: Option<Box<RequestHead>>,
}

/// Something the application must know, from [`Connection::poll_event`](super::Connection::poll_event).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// The opening handshake succeeded.
    Connected(Connected),
    /// A complete data message arrived.
    Message(Message),
    /// The connection ended; emitted exactly once.
    Closed(Closed),
}
