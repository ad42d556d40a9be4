//! Errors of the WebSocket layer. Each one says who broke the protocol and what goes on the wire.

use std::fmt;

use super::close::CloseCode;

/// The peer broke RFC 6455 (or a configured limit) after the handshake.
///
/// The connection answers with the close code from [`close_code`](Self::close_code) and then
/// ignores everything else the peer sends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV bits set without a negotiated extension.
    ReservedBits(u8),
    /// RSV1 (compressed) on a control frame (RFC 7692 §6.1).
    CompressedControl,
    /// RSV1 (compressed) on a continuation frame (RFC 7692 §6.1: only the first frame).
    CompressedContinuation,
    /// A compressed message that is not a valid deflate stream.
    InvalidCompressedData,
    /// Opcode 3–7 or 0xB–0xF.
    ReservedOpcode(u8),
    /// A close, ping or pong frame without FIN.
    FragmentedControl,
    /// A control frame payload over 125 bytes.
    ControlTooLong,
    /// A 16- or 64-bit length where a shorter encoding fits.
    NonMinimalLength,
    /// A 64-bit length with its most significant bit set.
    LengthHighBit,
    /// A client frame without a mask (the server role requires one).
    UnmaskedFrame,
    /// A server frame with a mask (the client role forbids one).
    MaskedFrame,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    ExpectedContinuation,
    /// Invalid UTF-8 in a text message; detected at the first bad byte.
    InvalidUtf8,
    /// A frame longer than the configured limit.
    FrameTooLarge {
        /// Announced payload length.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// A message whose fragments add up to more than the configured limit.
    MessageTooLarge {
        /// Length the message would reach.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// A message split into more fragments than the configured limit.
    TooManyFragments {
        /// Configured maximum.
        max: usize,
    },
    /// A close frame with a one-byte payload.
    CloseTooShort,
    /// A close frame with a code that may not appear on the wire.
    InvalidCloseCode(u16),
    /// A close frame whose reason is not UTF-8.
    InvalidCloseReason,
    /// A message type the application does not accept (binary for a JSON-RPC session).
    UnsupportedData,
    /// The bytes of unfinished messages across connections reached the shared
    /// [`AssemblyBudget`](super::AssemblyBudget); close 1013 (try again later).
    BudgetExhausted,
}

impl ProtocolError {
    /// The close code this error is answered with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8 | Self::InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManyFragments { .. } => CloseCode::MESSAGE_TOO_BIG,
            Self::UnsupportedData => CloseCode::UNSUPPORTED_DATA,
            Self::BudgetExhausted => CloseCode::TRY_AGAIN_LATER,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits(bits) => {
                write!(f, "reserved bits {bits:#05b} set without an extension")
            }
            Self::CompressedControl => f.write_str("compressed (RSV1) control frame"),
            Self::CompressedContinuation => {
                f.write_str("RSV1 on a continuation frame (only a message's first frame has it)")
            }
            Self::InvalidCompressedData => {
                f.write_str("invalid deflate data in a compressed message")
            }
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::FragmentedControl => f.write_str("fragmented control frame"),
            Self::ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            Self::NonMinimalLength => f.write_str("payload length not minimally encoded"),
            Self::LengthHighBit => f.write_str("64-bit payload length with the high bit set"),
            Self::UnmaskedFrame => f.write_str("unmasked frame from a client"),
            Self::MaskedFrame => f.write_str("masked frame from a server"),
            Self::UnexpectedContinuation => {
                f.write_str("continuation frame without a message in progress")
            }
            Self::ExpectedContinuation => {
                f.write_str("new message before the fragmented one finished")
            }
            Self::InvalidUtf8 => f.write_str("invalid UTF-8 in a text message"),
            Self::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes over the limit of {max}")
            }
            Self::MessageTooLarge { len, max } => {
                write!(f, "message of {len} bytes over the limit of {max}")
            }
            Self::TooManyFragments { max } => write!(f, "message in more than {max} fragments"),
            Self::CloseTooShort => f.write_str("close frame with a one-byte payload"),
            Self::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            Self::InvalidCloseReason => f.write_str("close reason is not UTF-8"),
            Self::UnsupportedData => f.write_str("message type not accepted"),
            Self::BudgetExhausted => {
                f.write_str("server memory for unfinished messages exhausted, try again later")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Why an opening handshake failed.
///
/// On the server side [`status`](Self::status) is the HTTP status that was answered; on the
/// client side the error describes what was wrong with the server's response.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head is not valid HTTP/1.1.
    Malformed(String),
    /// The head is larger than the configured limit or has too many header lines.
    HeadersTooLarge,
    /// The request line alone (in practice its target) outgrows the head limit (414).
    RequestLineTooLong,
    /// The request method is not GET.
    MethodNotAllowed,
    /// HTTP/1.0 or another version below 1.1.
    UnsupportedHttpVersion,
    /// A header the upgrade needs is missing or wrong; names the header.
    BadHeader(&'static str),
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// The request is plain HTTP, not an upgrade.
    NotAnUpgrade,
    /// The server answered with a status other than 101.
    Rejected {
        /// The status the server sent.
        status: u16,
    },
    /// The server's `Sec-WebSocket-Accept` does not match the key we sent.
    BadAccept,
    /// The server selected a subprotocol we did not offer.
    UnexpectedProtocol(String),
    /// The server enabled an extension we did not offer.
    UnexpectedExtension,
    /// The server's permessage-deflate answer does not fit our offer (RFC 7692 §7).
    BadExtensionResponse(ExtensionResponseError),
    /// The handshake did not finish before the handshake timeout.
    Timeout,
    /// The transport closed before the handshake finished.
    Eof,
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadersTooLarge => 431,
            Self::RequestLineTooLong => 414,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedHttpVersion => 505,
            Self::UnsupportedVersion | Self::NotAnUpgrade => 426,
            Self::Timeout => 408,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed HTTP head: {why}"),
            Self::HeadersTooLarge => f.write_str("request header fields too large"),
            Self::RequestLineTooLong => f.write_str("request target too long"),
            Self::MethodNotAllowed => f.write_str("a WebSocket upgrade must use GET"),
            Self::UnsupportedHttpVersion => f.write_str("a WebSocket upgrade needs HTTP/1.1"),
            Self::BadHeader(name) => write!(f, "missing or invalid {name} header"),
            Self::UnsupportedVersion => {
                f.write_str("unsupported Sec-WebSocket-Version (13 expected)")
            }
            Self::NotAnUpgrade => f.write_str("this endpoint only accepts WebSocket upgrades"),
            Self::Rejected { status } => write!(f, "server answered {status} instead of 101"),
            Self::BadAccept => f.write_str("Sec-WebSocket-Accept does not match the key"),
            Self::UnexpectedProtocol(p) => {
                write!(f, "server selected subprotocol {p:?} that was not offered")
            }
            Self::UnexpectedExtension => {
                f.write_str("server enabled an extension that was not offered")
            }
            Self::BadExtensionResponse(e) => {
                write!(f, "server's Sec-WebSocket-Extensions answer refused: {e}")
            }
            Self::Timeout => f.write_str("handshake timed out"),
            Self::Eof => f.write_str("connection closed during the handshake"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What is wrong with a server's `Sec-WebSocket-Extensions` answer (the client fails the
/// handshake on any of these, RFC 7692 §7).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtensionResponseError {
    /// The header is not a valid extension list.
    Syntax(super::extension::ExtensionSyntaxError),
    /// An extension that was not offered (named).
    NotOffered(String),
    /// permessage-deflate answered more than once.
    Repeated,
    /// A parameter RFC 7692 does not define for an answer (named).
    UnknownParameter(String),
    /// A parameter given twice.
    RepeatedParameter(&'static str),
    /// A parameter with a missing, extra or out-of-range value.
    InvalidValue(&'static str),
    /// A window larger than the one offered.
    WindowAboveOffer(&'static str),
    /// A parameter the offer asked for and the answer must confirm.
    Missing(&'static str),
}

impl fmt::Display for ExtensionResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "{e}"),
            Self::NotOffered(name) => write!(f, "extension {name:?} was not offered"),
            Self::Repeated => f.write_str("permessage-deflate answered more than once"),
            Self::UnknownParameter(p) => write!(f, "unknown permessage-deflate parameter {p:?}"),
            Self::RepeatedParameter(p) => write!(f, "parameter {p} given twice"),
            Self::InvalidValue(p) => write!(f, "invalid value for {p}"),
            Self::WindowAboveOffer(p) => write!(f, "{p} above the offered value"),
            Self::Missing(p) => write!(f, "offered {p} not confirmed"),
        }
    }
}

impl std::error::Error for ExtensionResponseError {}

/// Why a connection ended other than by a clean close handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The opening handshake failed.
    Handshake(HandshakeError),
    /// The peer broke the protocol; we sent the matching close code.
    Protocol(ProtocolError),
    /// No pong arrived within the pong timeout after a ping.
    PongTimeout,
    /// The peer did not answer our close frame within the close timeout.
    CloseTimeout,
    /// The transport ended without a close handshake (close code 1006).
    Eof,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handshake(e) => write!(f, "handshake failed: {e}"),
            Self::Protocol(e) => write!(f, "peer protocol violation: {e}"),
            Self::PongTimeout => f.write_str("no pong within the pong timeout"),
            Self::CloseTimeout => f.write_str("peer did not finish the close handshake in time"),
            Self::Eof => f.write_str("transport closed without a close frame"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Handshake(e) => Some(e),
            Self::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// A local call that cannot be carried out in the connection's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake has not finished yet.
    NotOpen,
    /// A close frame was sent or received; no more messages may be sent.
    Closing,
    /// A control payload (ping, pong, close reason) over 125 bytes.
    ControlTooLong,
    /// A close code that may not be sent (1005, 1006, 1015 or out of range).
    InvalidCloseCode,
    /// Pre-encoded server frames cannot be sent by a client, which must mask.
    WrongRole,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotOpen => "the WebSocket handshake has not finished",
            Self::Closing => "the connection is closing",
            Self::ControlTooLong => "control frame payload over 125 bytes",
            Self::InvalidCloseCode => "close code may not be sent",
            Self::WrongRole => "pre-encoded frames are for the server role only",
        })
    }
}

impl std::error::Error for SendError {}
