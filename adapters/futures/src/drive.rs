//! The one drive loop: a [`wsrpc_core::engine::Endpoint`] (server or client connection) over
//! a `futures-io` stream, on any [`Runtime`]. It only moves bytes, runs handler work, opens
//! transports when asked and arms one timer; every decision is the endpoint's.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};
use wsrpc_core::Now;
use wsrpc_core::engine::{Attempt, ConnEvent, Endpoint, Input, Output, Target};
use wsrpc_core::rpc::client::ConnectError;

use crate::completions::Completions;
use crate::{BoxFuture, Runtime};

/// Rounds of input and output per poll before yielding, so one busy connection cannot starve
/// the others on the same executor thread.
const ROUNDS_PER_POLL: usize = 16;
/// Slices gathered per vectored write.
const MAX_SLICES: usize = 64;

/// Opens a transport to a target (TCP, then TLS for `wss://`).
pub type Connector<S> =
    Arc<dyn Fn(&Target) -> BoxFuture<Result<S, ConnectError>> + Send + Sync + 'static>;

/// What reaches a connection from outside its transport: the server's shutdown and forced
/// close, the client's commands. Implemented once per role.
pub(crate) trait Outside<E>: Send + Unpin {
    /// Feeds what arrived; `Err(())` to stop serving at once (a forced close).
    fn feed(&mut self, cx: &mut Context<'_>, conn: &mut E, now: Now) -> Result<bool, ()>;

    /// A lifecycle event from the connection.
    fn event(&mut self, event: ConnEvent) {
        log::trace!(target: "wsrpc::rpc", "{event:?}");
    }

    /// The connection finished.
    fn finished(&mut self) {}
}

/// Drives one endpoint until it is finished.
pub(crate) struct Driver<R: Runtime, E, S, O> {
    rt: R,
    conn: E,
    outside: O,
    stream: Option<S>,
    connector: Option<Connector<S>>,
    connecting: Option<(Attempt, BoxFuture<Result<S, ConnectError>>)>,
    completions: Arc<Completions>,
    /// Input the connection could not take yet (back-pressure); usually empty.
    leftover: Vec<u8>,
    timer: Option<(Instant, BoxFuture<()>)>,
    deadline: Option<Instant>,
    eof: bool,
    /// A half-close was asked for and has not completed yet.
    closing_write: bool,
    write_closed: bool,
}

impl<R, E, S, O> Driver<R, E, S, O>
where
    R: Runtime,
    E: Endpoint + Unpin + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    O: Outside<E>,
{
    /// A driver for a connection on an accepted `stream`, or (with a connector) one that
    /// opens its own transports.
    pub(crate) fn new(
        rt: R,
        conn: E,
        outside: O,
        stream: Option<S>,
        connector: Option<Connector<S>>,
    ) -> Self {
        Self {
            rt,
            conn,
            outside,
            stream,
            connector,
            connecting: None,
            completions: Arc::new(Completions::default()),
            leftover: Vec::new(),
            timer: None,
            deadline: None,
            eof: false,
            closing_write: false,
            write_closed: false,
        }
    }

    /// One round: inputs, then outputs; `None` once finished, else whether anything moved.
    fn round(&mut self, cx: &mut Context<'_>) -> Option<bool> {
        let now = self.rt.now();
        let mut progress = match self.outside.feed(cx, &mut self.conn, now) {
            Ok(p) => p,
            Err(()) => return None,
        };
        for (call, result) in self.completions.take() {
            self.conn.handle(now, Input::Completed(call, result));
            progress = true;
        }
        progress |= self.poll_connect(cx, now);
        progress |= self.read(cx, now);
        if self.deadline.is_some_and(|d| d <= now.mono) {
            self.deadline = None;
            self.conn.handle(now, Input::Timeout);
            progress = true;
        }
        let outputs = self.outputs(cx, now)?;
        Some(progress | outputs | self.arm_timer(cx))
    }

    fn poll_connect(&mut self, cx: &mut Context<'_>, now: Now) -> bool {
        let Some((attempt, fut)) = self.connecting.as_mut() else { return false };
        let Poll::Ready(result) = fut.as_mut().poll(cx) else { return false };
        let attempt = *attempt;
        self.connecting = None;
        match result {
            Ok(stream) => {
                self.stream = Some(stream);
                self.conn.handle(now, Input::Connected(attempt));
            }
            Err(e) => {
                self.conn.handle(now, Input::ConnectFailed(attempt, e));
            }
        }
        true
    }

    fn read(&mut self, cx: &mut Context<'_>, now: Now) -> bool {
        if !self.conn.wants_read() {
            return false;
        }
        if self.conn.feed_kept(now, &mut self.leftover) {
            return true;
        }
        let Self { stream, conn, leftover, eof, .. } = self;
        let Some(stream) = stream.as_mut().filter(|_| !*eof) else { return false };
        let read = crate::with_read_buffer(|buf| match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) => Some(Err(false)),
            Poll::Ready(Err(e)) => {
                log::trace!(target: "wsrpc::ws", "read failed: {e}");
                Some(Err(true))
            }
            Poll::Ready(Ok(n)) => {
                conn.feed(now, &buf[..n], leftover);
                Some(Ok(()))
            }
            Poll::Pending => None,
        });
        match read {
            None => false,
            Some(Ok(())) => true,
            Some(Err(broken)) => {
                self.eof = true;
                self.conn.handle(now, if broken { Input::Broken } else { Input::Eof });
                true
            }
        }
    }

    /// Drains the connection's output; `None` once it is finished.
    fn outputs(&mut self, cx: &mut Context<'_>, now: Now) -> Option<bool> {
        let mut progress = false;
        let mut wrote = false;
        loop {
            match self.conn.poll_output(now) {
                Output::Event(e) => self.outside.event(e),
                Output::Spawn(call, work) => self.completions.spawn(&self.rt, call, work),
                Output::Connect(req) => {
                    self.stream = None;
                    self.eof = false;
                    self.leftover.clear();
                    match &self.connector {
                        Some(connect) => {
                            self.connecting = Some((req.attempt, connect(req.target)));
                        }
                        None => {
                            let why = ConnectError::Unsupported("no connector".into());
                            let attempt = req.attempt;
                            self.conn.handle(now, Input::ConnectFailed(attempt, why));
                        }
                    }
                }
                Output::Transmit(mut tx) => {
                    let Some(stream) = self.stream.as_mut().filter(|_| !self.write_closed) else {
                        continue;
                    };
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let n = tx.slices(&mut slices);
                    match Pin::new(stream).poll_write_vectored(cx, &slices[..n]) {
                        Poll::Ready(Ok(written)) if written > 0 => {
                            tx.advance(written);
                            wrote = true;
                        }
                        Poll::Ready(result) => {
                            if let Err(e) = result {
                                log::trace!(target: "wsrpc::ws", "write failed: {e}");
                            }
                            self.eof = true;
                            self.conn.handle(now, Input::Broken);
                        }
                        // Dropped without advancing: the stream wakes this task once it is
                        // writable, and the next drain offers the bytes again. Not progress,
                        // or a task whose peer reads nothing would spin.
                        Poll::Pending => continue,
                    }
                }
                Output::ShutdownWrite => self.closing_write = true,
                Output::CloseTransport => {
                    self.stream = None;
                    self.connecting = None;
                    self.eof = false;
                    self.closing_write = false;
                    self.write_closed = false;
                    self.leftover.clear();
                }
                Output::Finished => {
                    // A half-close asked for in this round: best effort, so TLS peers get
                    // close_notify; the stream is dropped either way.
                    if let Some(stream) = self.stream.as_mut().filter(|_| self.closing_write) {
                        let _ = Pin::new(stream).poll_close(cx);
                    }
                    return None;
                }
                Output::Wait(deadline) => {
                    self.deadline = deadline;
                    break;
                }
                other => log::warn!(target: "wsrpc::rpc", "unexpected output {other:?}"),
            }
            progress = true;
        }
        if let Some(stream) = self.stream.as_mut() {
            if wrote {
                // Streams that buffer (TLS) send what they hold.
                let _ = Pin::new(&mut *stream).poll_flush(cx);
            }
            if self.closing_write {
                if let Poll::Ready(r) = Pin::new(stream).poll_close(cx) {
                    if let Err(e) = r {
                        log::trace!(target: "wsrpc::ws", "half-close failed: {e}");
                    }
                    self.closing_write = false;
                    self.write_closed = true;
                    progress = true;
                }
            }
        }
        Some(progress)
    }

    /// Arms the timer for the connection's deadline; true when it fired.
    ///
    /// A deadline that moves later keeps the armed timer: it fires early, the connection finds
    /// nothing due, and the next round arms a timer for the real deadline. The ping deadline
    /// moves with every message, and each new async-io timer wakes the reactor (an eventfd
    /// write and read, and a re-arm), so a timer is replaced only when the deadline comes
    /// sooner: a connection that lives a few seconds sets one timer, and a busy one re-arms
    /// about once per ping interval.
    fn arm_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            self.timer = None;
            return false;
        };
        if self.timer.as_ref().is_none_or(|(at, _)| *at > deadline) {
            self.timer = Some((deadline, self.rt.timer(deadline)));
        }
        let (_, timer) = self.timer.as_mut().expect("just set");
        if timer.as_mut().poll(cx).is_ready() {
            // A finished future is never polled again; the next round arms anew if needed.
            self.timer = None;
            return true;
        }
        false
    }
}

impl<R, E, S, O> Future for Driver<R, E, S, O>
where
    R: Runtime,
    E: Endpoint + Unpin + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    O: Outside<E>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Wake-ups from other threads: finished handlers, publishes.
        this.completions.waker.register(cx.waker());
        this.conn.set_waker(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            match this.round(cx) {
                None => {
                    this.outside.finished();
                    return Poll::Ready(());
                }
                Some(false) => return Poll::Pending,
                Some(true) => {}
            }
        }
        // Still busy: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use wsrpc_core::engine::ServerConnection;
    use wsrpc_core::rpc::Router;
    use wsrpc_core::service::{Service, ServiceConfig};

    use super::*;

    /// A runtime that runs nothing: the test polls the driver by hand.
    #[derive(Clone)]
    struct Idle;

    impl Runtime for Idle {
        fn spawn(&self, _: BoxFuture<()>) {}
        fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send + 'static>) {}
        fn timer(&self, _: Instant) -> BoxFuture<()> {
            Box::pin(std::future::pending())
        }
    }

    struct NoOutside;

    impl Outside<ServerConnection> for NoOutside {
        fn feed(
            &mut self,
            _: &mut Context<'_>,
            _: &mut ServerConnection,
            _: Now,
        ) -> Result<bool, ()> {
            Ok(false)
        }
    }

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_transport_that_takes_nothing_parks_the_task_instead_of_spinning() {
        let service = Service::new(ServiceConfig::default(), Router::new(), crate::system_now());
        let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let stream = Peer { stuck: true, ..Peer::default() };
        stream.input.lock().unwrap().push_back(request);
        let writes = stream.writes.clone();
        let conn = ServerConnection::new(service, crate::system_now());
        let mut driver = Driver::new(Idle, conn, NoOutside, Some(stream), None);
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        // The response could not be written: the task waits for the stream to wake it.
        assert!(
            writes.load(Ordering::Relaxed) <= 2,
            "{} writes tried",
            writes.load(Ordering::Relaxed)
        );
        assert_eq!(woken.0.load(Ordering::Relaxed), 0, "the task did not wake itself");
        // Woken (the stream is writable, say), it offers the bytes again, once.
        let before = writes.load(Ordering::Relaxed);
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        assert_eq!(writes.load(Ordering::Relaxed), before + 1);
        assert_eq!(woken.0.load(Ordering::Relaxed), 0);
    }

    /// A clock the test moves, and timers that fire on it.
    #[derive(Clone)]
    struct Virtual {
        clock: Arc<std::sync::Mutex<Now>>,
        timers: Arc<std::sync::Mutex<Vec<Instant>>>,
    }

    struct VirtualTimer {
        at: Instant,
        clock: Arc<std::sync::Mutex<Now>>,
    }

    impl Future for VirtualTimer {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if self.clock.lock().unwrap().mono >= self.at { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    impl Runtime for Virtual {
        fn spawn(&self, _: BoxFuture<()>) {}
        fn spawn_blocking(&self, _: Box<dyn FnOnce() + Send + 'static>) {}
        fn timer(&self, at: Instant) -> BoxFuture<()> {
            self.timers.lock().unwrap().push(at);
            Box::pin(VirtualTimer { at, clock: self.clock.clone() })
        }
        fn now(&self) -> Now {
            *self.clock.lock().unwrap()
        }
    }

    /// A peer whose input the test queues; it takes every byte written, or none when
    /// `stuck` (its receive window is full), counting the writes tried.
    #[derive(Clone, Default)]
    struct Peer {
        input: Arc<std::sync::Mutex<std::collections::VecDeque<Vec<u8>>>>,
        output: Arc<std::sync::Mutex<Vec<u8>>>,
        stuck: bool,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Peer {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match self.input.lock().unwrap().pop_front() {
                Some(data) => {
                    buf[..data.len()].copy_from_slice(&data);
                    Poll::Ready(Ok(data.len()))
                }
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Peer {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            if self.stuck {
                return Poll::Pending;
            }
            self.output.lock().unwrap().extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A masked (all-zero key) text frame, as a client sends it.
    fn client_text(text: &str) -> Vec<u8> {
        let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    #[test]
    fn a_deadline_that_moves_later_keeps_its_timer_and_is_still_met() {
        let start = crate::system_now();
        let rt = Virtual { clock: Arc::new(std::sync::Mutex::new(start)), timers: Arc::default() };
        let advance = |d: Duration| {
            let mut now = rt.clock.lock().unwrap();
            *now = Now::new(now.mono + d, wsrpc_core::UnixTime(now.wall.0 + d));
        };
        let pipe = Peer::default();
        let service = Service::new(ServiceConfig::default(), Router::new(), start);
        let ping = service.config().ws.ping_interval.expect("a ping interval by default");
        let handshake =
            service.config().ws.handshake_timeout.expect("a handshake timeout by default");
        let conn = ServerConnection::new(service, start);
        let mut driver = Driver::new(rt.clone(), conn, NoOutside, Some(pipe.clone()), None);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut poll = |input: Option<Vec<u8>>| {
            pipe.input.lock().unwrap().extend(input);
            assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
            std::mem::take(&mut *pipe.output.lock().unwrap())
        };
        // Half a request: the handshake deadline is armed.
        assert_eq!(poll(Some(b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec())), b"");
        assert_eq!(*rt.timers.lock().unwrap(), [start.mono + handshake]);
        // The rest: upgraded, the deadline moves out to the ping, and the timer stays.
        let rest = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(poll(Some(rest.as_bytes().to_vec())).starts_with(b"HTTP/1.1 101"));
        let out = poll(Some(client_text(r#"{"jsonrpc":"2.0","method":"none","id":1}"#)));
        assert_eq!(out.first(), Some(&0x81), "a call is answered");
        assert_eq!(rt.timers.lock().unwrap().len(), 1, "timers: {:?}", rt.timers);
        // It fires early: nothing is sent, and one timer is armed for the real deadline,
        // which is then met.
        advance(handshake);
        assert_eq!(poll(None), b"", "nothing due yet");
        assert_eq!(*rt.timers.lock().unwrap(), [start.mono + handshake, start.mono + ping]);
        advance(ping - handshake);
        assert_eq!(poll(None).first(), Some(&0x89), "the ping, on time");
    }
}
