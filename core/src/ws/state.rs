//! The connection's states and every transition between them, in one place.

use super::Role;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// The opening handshake is in progress.
    Handshake,
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's; its messages are still delivered.
    CloseSent,
    /// We failed the connection (protocol error) and sent a close frame; input is discarded
    /// until the peer's close frame or the close timeout.
    Failing,
    /// Client only: both close frames were exchanged; waiting for the server to end the TCP
    /// connection (RFC 6455 §7.1.1) or the close timeout.
    AwaitingEof,
    /// Done. The transport closes once the remaining bytes are written.
    Closed,
}

/// What happened to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    HandshakeDone,
    HandshakeFailed,
    /// The application asked to close.
    LocalClose,
    /// A valid close frame arrived.
    RemoteClose,
    /// The peer broke the protocol.
    ProtocolError,
    /// EOF, a timeout or a second violation while failing: stop now.
    Abort,
}

impl State {
    /// The state after `input`; inputs that mean nothing in a state leave it unchanged.
    pub(crate) fn next(self, input: Input, role: Role) -> Self {
        use Input::*;
        use State::*;
        let after_close_exchange = match role {
            Role::Server => Closed,
            Role::Client => AwaitingEof,
        };
        match (self, input) {
            (Handshake, HandshakeDone) => Open,
            (Handshake, HandshakeFailed | LocalClose | ProtocolError) => Closed,
            (Open, LocalClose) => CloseSent,
            (Open | CloseSent | Failing, RemoteClose) => after_close_exchange,
            (Open | CloseSent, ProtocolError) => Failing,
            (Failing, ProtocolError) => Closed,
            (_, Abort) => Closed,
            (state, _) => state,
        }
    }

    /// Frames are decoded (to find the peer's close frame at least).
    pub(crate) fn reads_frames(self) -> bool {
        matches!(self, Self::Open | Self::CloseSent | Self::Failing)
    }

    /// Received messages reach the application.
    pub(crate) fn delivers_messages(self) -> bool {
        matches!(self, Self::Open | Self::CloseSent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_handshake_paths() {
        use Input::*;
        use State::*;
        assert_eq!(Open.next(LocalClose, Role::Server).next(RemoteClose, Role::Server), Closed);
        assert_eq!(Open.next(RemoteClose, Role::Client), AwaitingEof);
        assert_eq!(AwaitingEof.next(Abort, Role::Client), Closed);
        assert_eq!(Open.next(ProtocolError, Role::Server), Failing);
        // Once failing, a close frame ends it; a second violation aborts; nothing reopens it.
        assert_eq!(Failing.next(RemoteClose, Role::Server), Closed);
        assert_eq!(Failing.next(ProtocolError, Role::Server), Closed);
        for input in [HandshakeDone, LocalClose, RemoteClose, ProtocolError] {
            assert_eq!(Closed.next(input, Role::Server), Closed);
        }
    }
}
