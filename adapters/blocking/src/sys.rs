//! `poll(2)`, the one system call the server needs that the standard library does not offer:
//! a connection thread waits on its socket's readiness *and* a deadline in one call, and the
//! notifier waits on the sockets of slow consumers. This is the crate's only `unsafe` code.
//!
//! Why it is worth it (`unsafe` only for a measured need). The server used to give
//! each connection a reader thread (blocking `read`, chunks over a channel) and a driver
//! thread: every request crossed two threads, and two threads per connection exhausted
//! `vm.max_map_count` near 8,180 connections. With `poll` the one connection thread reads,
//! answers and writes itself. `wsrpc-bench --quick` on 2 vCPUs, server pinned to one, both
//! designs run back to back on a quiet machine, jsonrpsee from the same run; calls/s, server
//! CPU µs per call, p99 µs, slowest ÷ fastest connection:
//!
//! | case | two threads (before) | one thread + `poll` (after) | jsonrpsee 0.26 |
//! |---|---|---|---|
//! | calls 16 × 1 | 78,115; 12.8; 296; 0.94 | 149,189; 6.64; 276; 0.97 | 174,724; 5.67; 144; 1.00 |
//! | calls 256 × 1 | 55,929; 17.9; 5,181; 0.99 | 81,417; 12.2; 4,047; 0.99 | 143,276; 6.98; 1,988; 1.00 |
//! | calls 1024 × 1 | 31,556; 31.7; 33,968; 0.94 | 52,514; 19.0; 23,605; 0.98 | 109,082; 9.17; 10,287; 0.99 |
//! | calls 1024 × 32 | 617,274; 1.62; 56,669; 0.24 | 763,485; 1.30; 45,557; 0.96 | 190,148; 5.20; 180,379; 0.83 |
//! | fan-out, 10,000 subscribers | fails (thread limit) | 1.05 M deliveries/s; 0.94 µs | 309 k/s; 3.23 µs |
//! | idle, RSS per connection | 32.4 KiB (at 4,000; aborts near 8,180) | 16.2 KiB (10,000) | 20.2 KiB |
//!
//! What remains at depth 1 is the kernel's cost of waking a thread and switching to it, once
//! per call (an event loop pays none), and it grows with the number of threads.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

pub(crate) use libc::{POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT};

/// One descriptor to wait on, laid out as the kernel's `struct pollfd`.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct PollFd(libc::pollfd);

impl PollFd {
    pub(crate) fn new(fd: RawFd, events: i16) -> Self {
        Self(libc::pollfd { fd, events, revents: 0 })
    }

    /// What the last [`poll`] reported for it.
    pub(crate) fn revents(&self) -> i16 {
        self.0.revents
    }
}

impl std::fmt::Debug for PollFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollFd")
            .field("fd", &self.0.fd)
            .field("events", &self.0.events)
            .field("revents", &self.0.revents)
            .finish()
    }
}

/// Waits until one of `fds` is ready or `deadline` passes (`None`: no deadline); returns how
/// many are ready, 0 on timeout or when a signal interrupted the wait.
pub(crate) fn poll(fds: &mut [PollFd], deadline: Option<Instant>) -> io::Result<usize> {
    let timeout = timeout_ms(deadline);
    let len = libc::nfds_t::try_from(fds.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `PollFd` is `repr(transparent)` over `libc::pollfd`, so the pointer and length
    // describe `fds.len()` initialized `pollfd` structs, borrowed mutably for the duration of
    // the call; poll(2) only writes their `revents` fields and keeps no pointer after it
    // returns. An fd that is not open is reported as POLLNVAL, not undefined behaviour.
    let n = unsafe { libc::poll(fds.as_mut_ptr().cast::<libc::pollfd>(), len, timeout) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
    }
    Ok(n as usize)
}

/// Milliseconds until `deadline`, rounded up so that a wait never ends just before it (and
/// the caller spins); -1 without a deadline.
fn timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    let Some(deadline) = deadline else { return -1 };
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;

    #[test]
    fn poll_reports_readiness_and_times_out() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut fds = [PollFd::new(b.as_raw_fd(), POLLIN)];
        let start = Instant::now();
        assert_eq!(poll(&mut fds, Some(start + Duration::from_millis(20))).unwrap(), 0);
        assert!(start.elapsed() >= Duration::from_millis(20));
        a.write_all(b"x").unwrap();
        assert_eq!(poll(&mut fds, None).unwrap(), 1);
        assert_ne!(fds[0].revents() & POLLIN, 0);
        let mut out = [PollFd::new(a.as_raw_fd(), POLLOUT)];
        assert_eq!(poll(&mut out, Some(Instant::now())).unwrap(), 1);
    }

    #[test]
    fn timeouts_round_up() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Instant::now())), 0);
        let t = timeout_ms(Some(Instant::now() + Duration::from_micros(1500)));
        assert!(t == 2 || t == 1, "{t}");
        assert_eq!(timeout_ms(Some(Instant::now() + Duration::from_secs(1 << 40))), i32::MAX);
    }
}
