//! Registering a socket with the poller: the one place this crate needs `unsafe`.
//!
//! `polling` 3 makes [`Poller::add`] unsafe because the poller must not outlive the
//! registration of a socket that is closed (I/O safety): a closed descriptor's number can be
//! reused by an unrelated one. The reactor keeps that promise structurally: a socket lives in
//! its connection's slot, and every path that drops it (closing the transport, removing the
//! connection, stopping the listener) deletes it from the poller first.

use std::io;

use polling::{AsSource, Event, PollMode, Poller};

/// Adds `source` to `poller` with `interest` in `mode`.
///
/// The caller deletes it from `poller` before dropping it, which every owner in this crate
/// does (see the module docs).
#[allow(unsafe_code)]
pub(crate) fn add(
    poller: &Poller,
    source: &impl AsSource,
    interest: Event,
    mode: PollMode,
) -> io::Result<()> {
    // SAFETY: `Poller::add` requires the source to be deleted from the poller before it is
    // closed. Every socket registered here is owned by a reactor slot or the reactor's
    // listener, and `Core::remove`, `Io::close_transport`, `Core::close_listener` and
    // `Core`'s `Drop` delete it before dropping it.
    unsafe { poller.add_with_mode(&source.source(), interest, mode) }
}
