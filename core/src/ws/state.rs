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
    /// The close is decided (both close frames exchanged, or we failed the connection or
    /// rejected the handshake): the last bytes are written and the server half-closes. After
    /// a clean close handshake the server is then done; otherwise input is discarded until
    /// the peer's end of file or the close timeout (a lingering close, so unread input does
    /// not turn our last bytes into a reset).
    Draining,
    /// Done: close the transport.
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
    /// End of file, or a timer gave up: stop now.
    Abort,
}

impl State {
    /// The state after `input`; inputs that mean nothing in a state leave it unchanged.
    pub(crate) fn next(self, input: Input, role: Role) -> Self {
        use Input::*;
        use State::*;
        match (self, input) {
            (Handshake, HandshakeDone) => Open,
            // A server lingers to deliver its error response; a client has nothing to say.
            (Handshake, HandshakeFailed) if role == Role::Server => Draining,
            (Handshake, HandshakeFailed | LocalClose | ProtocolError) => Closed,
            (Open, LocalClose) => CloseSent,
            (Open | CloseSent, RemoteClose | ProtocolError) => Draining,
            (_, Abort) => Closed,
            (state, _) => state,
        }
    }

    /// Frames are decoded.
    pub(crate) fn reads_frames(self) -> bool {
        matches!(self, Self::Open | Self::CloseSent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_paths() {
        use Input::*;
        use State::*;
        for role in [Role::Server, Role::Client] {
            assert_eq!(Open.next(LocalClose, role).next(RemoteClose, role), Draining);
            assert_eq!(Open.next(RemoteClose, role), Draining);
            assert_eq!(Open.next(ProtocolError, role), Draining);
            assert_eq!(Draining.next(Abort, role), Closed);
            // Once draining or closed, nothing reopens it or restarts the close.
            for input in [HandshakeDone, LocalClose, RemoteClose, ProtocolError] {
                assert_eq!(Draining.next(input, role), Draining);
                assert_eq!(Closed.next(input, role), Closed);
            }
        }
        assert_eq!(Handshake.next(HandshakeFailed, Role::Server), Draining);
        assert_eq!(Handshake.next(HandshakeFailed, Role::Client), Closed);
    }
}
