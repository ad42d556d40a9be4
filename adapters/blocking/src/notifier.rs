//! The notifier: one thread per server that serves connections on behalf of other threads.
//!
//! A connection thread sleeps in `poll` on its own socket, and nothing but that socket can
//! end the wait (an extra descriptor per connection to wake it is not affordable at 10,000
//! connections). So when a publish queues notifications, an async call finishes on a worker
//! or a shutdown begins, the connection is handed here: the notifier locks its state, runs
//! the core and writes without blocking. What the sleeping thread does not wait for itself
//! the notifier watches: output the socket did not take (it polls those sockets for
//! `POLLOUT`; only slow consumers end up there) and timers earlier than the thread's wake-up
//! (a close handshake it started). Its own wake-ups come through one socket pair.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::connection::{Conn, Watch};
use crate::sys::{self, POLLIN, POLLOUT, PollFd};

/// Stack of the notifier thread: it runs the core (not handlers), like a connection thread.
const NOTIFIER_STACK: usize = 512 * 1024;
/// Pause after a failed `poll` instead of spinning.
const POLL_BACKOFF: Duration = Duration::from_millis(10);

/// The notifier's queue, shared with everything that wakes connections.
#[derive(Debug)]
pub(crate) struct Notifier {
    queue: Mutex<Vec<Arc<Conn>>>,
    /// A wake byte is on its way (wakes coalesce).
    signaled: AtomicBool,
    stop: AtomicBool,
    wake_tx: UnixStream,
}

/// The running notifier thread.
#[derive(Debug)]
pub(crate) struct NotifierThread {
    notifier: Arc<Notifier>,
    thread: JoinHandle<()>,
}

impl Notifier {
    /// Starts the thread.
    pub(crate) fn start() -> io::Result<(Arc<Self>, NotifierThread)> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let notifier = Arc::new(Self {
            queue: Mutex::new(Vec::new()),
            signaled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake_tx,
        });
        let n = notifier.clone();
        let thread = thread::Builder::new()
            .name("wsrpc-notifier".into())
            .stack_size(NOTIFIER_STACK)
            .spawn(move || run(&n, &wake_rx))?;
        Ok((notifier.clone(), NotifierThread { notifier, thread }))
    }

    /// Queues `conn` to be served.
    pub(crate) fn push(&self, conn: Arc<Conn>) {
        {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            // Stopped (a late wake, say a worker finishing after the shutdown): nobody would
            // serve it, and queued it would be kept alive, socket and all.
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            queue.push(conn);
        }
        if !self.signaled.swap(true, Ordering::AcqRel) {
            self.signal();
        }
    }

    fn signal(&self) {
        // A full socket already holds a wake byte.
        let _ = (&self.wake_tx).write(&[1]);
    }
}

impl NotifierThread {
    /// Stops the thread and waits for it (it never blocks on a connection).
    pub(crate) fn stop(self) {
        let queued = {
            let mut queue = self.notifier.queue.lock().unwrap_or_else(|p| p.into_inner());
            self.notifier.stop.store(true, Ordering::Release);
            std::mem::take(&mut *queue)
        };
        drop(queued);
        self.notifier.signal();
        let _ = self.thread.join();
    }
}

fn run(notifier: &Notifier, wake_rx: &UnixStream) {
    let mut watched: HashMap<u64, (Arc<Conn>, Watch)> = HashMap::new();
    let mut fds = Vec::new();
    let mut polled = Vec::new();
    let mut due: Vec<(Arc<Conn>, bool)> = Vec::new();
    loop {
        fds.clear();
        polled.clear();
        fds.push(PollFd::new(wake_rx.as_raw_fd(), POLLIN));
        let mut deadline: Option<Instant> = None;
        for (id, (conn, watch)) in &watched {
            if watch.writable {
                fds.push(PollFd::new(conn.fd(), POLLOUT));
                polled.push(*id);
            }
            if let Some(until) = watch.until {
                deadline = Some(deadline.map_or(until, |d| d.min(until)));
            }
        }
        if let Err(e) = sys::poll(&mut fds, deadline) {
            log::error!(target: "wsrpc::http", "notifier poll failed: {e}");
            thread::sleep(POLL_BACKOFF);
        }
        if notifier.stop.load(Ordering::Acquire) {
            return;
        }
        if fds[0].revents() != 0 {
            drain(wake_rx);
        }
        // Cleared before the queue is taken: a push after this point signals again.
        notifier.signaled.store(false, Ordering::SeqCst);
        let queue = std::mem::take(&mut *notifier.queue.lock().unwrap_or_else(|p| p.into_inner()));
        let now = Instant::now();
        for (i, id) in polled.iter().enumerate() {
            if fds[i + 1].revents() != 0 {
                if let Some((conn, _)) = watched.remove(id) {
                    due.push((conn, true));
                }
            }
        }
        watched.retain(|_, (conn, watch)| {
            let expired = watch.until.is_some_and(|u| u <= now);
            if expired {
                due.push((conn.clone(), false));
            }
            !expired
        });
        for conn in queue {
            conn.dequeued();
            due.push((conn, false));
        }
        for (conn, writable) in due.drain(..) {
            match conn.serve(writable) {
                Some(watch) => {
                    watched.insert(conn.id(), (conn, watch));
                }
                None => {
                    watched.remove(&conn.id());
                }
            }
        }
    }
}

/// Empties the wake socket.
fn drain(wake_rx: &UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        match (&mut &*wake_rx).read(&mut buf) {
            Ok(n) if n == buf.len() => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}
