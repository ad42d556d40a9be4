//! Whole messages and the connection's events.

use std::sync::{Arc, OnceLock};

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
///
/// Cloning shares it. Connections that negotiated permessage-deflate without server context
/// takeover also share one compressed copy, made by the first of them that sends it.
#[derive(Clone)]
pub struct SharedFrame(Arc<SharedInner>);

struct SharedInner {
    bytes: Arc<[u8]>,
    header_len: u8,
    /// The compressed frame and the window it was made with, or `None` when compressing does
    /// not pay (too small, or no smaller); made once.
    deflated: OnceLock<Option<(u8, Arc<[u8]>)>>,
}

impl SharedFrame {
    /// Encodes `payload` as one unmasked, final frame of `kind`.
    pub fn new(kind: MessageKind, payload: &[u8]) -> Self {
        let (bytes, header_len) = server_frame(kind, 0, payload);
        Self(Arc::new(SharedInner { bytes, header_len, deflated: OnceLock::new() }))
    }

    /// The whole frame as it goes on the wire.
    pub fn wire_bytes(&self) -> &Arc<[u8]> {
        &self.0.bytes
    }

    /// The frame's payload.
    pub fn payload(&self) -> &[u8] {
        &self.0.bytes[usize::from(self.0.header_len)..]
    }

    /// The message type (from the encoded opcode).
    pub fn kind(&self) -> MessageKind {
        if self.0.bytes[0] & 0x0F == OpCode::Binary.bits() {
            MessageKind::Binary
        } else {
            MessageKind::Text
        }
    }

    /// Length of the compressed frame on the wire, once one was made and paid off.
    pub fn compressed_len(&self) -> Option<usize> {
        self.0.deflated.get().and_then(|d| d.as_ref()).map(|(_, b)| b.len())
    }

    /// The compressed frame (RSV1 set) for a connection whose peer accepts windows up to
    /// `max_window` bits; `compress` makes its payload the first time (with window `window`).
    /// `None`: send the plain frame, or compress for this connection alone.
    pub(crate) fn deflated(
        &self,
        max_window: u8,
        window: u8,
        compress: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Option<&Arc<[u8]>> {
        let made = self.0.deflated.get_or_init(|| {
            compress(self.payload()).map(|c| (window, server_frame(self.kind(), 4, &c).0))
        });
        made.as_ref().filter(|(w, _)| *w <= max_window).map(|(_, bytes)| bytes)
    }

    /// Whether compressing it was tried and did not pay.
    pub(crate) fn is_incompressible(&self) -> bool {
        matches!(self.0.deflated.get(), Some(None))
    }
}

/// An unmasked final frame with RSV bits `rsv`, and its header length.
fn server_frame(kind: MessageKind, rsv: u8, payload: &[u8]) -> (Arc<[u8]>, u8) {
    let header = FrameHeader {
        fin: true,
        rsv,
        opcode: kind.opcode(),
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let hlen = header.encode(&mut hbuf);
    let mut bytes = Vec::with_capacity(hlen + payload.len());
    bytes.extend_from_slice(&hbuf[..hlen]);
    bytes.extend_from_slice(payload);
    (bytes.into(), hlen as u8)
}

/// Frames compare by their plain bytes.
impl PartialEq for SharedFrame {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes == other.0.bytes
    }
}

impl Eq for SharedFrame {}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrame")
            .field("kind", &self.kind())
            .field("len", &self.payload().len())
            .field("compressed_len", &self.compressed_len())
            .finish()
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
    /// What was agreed for permessage-deflate, when it was.
    pub compression: Option<super::deflate::Negotiated>,
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
