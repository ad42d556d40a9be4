//! The I/O thread: one `polling::Poller` (epoll, kqueue or IOCP) waiting on many sockets at
//! once, the one drive loop for server and client connections. It reads, feeds the core's
//! [`Endpoint`], writes what it asks for and arms its deadline; every decision is the
//! endpoint's. Work from other threads (a publish, a finished handler, a command) arrives
//! through a channel and [`Poller::notify`].
//!
//! Sockets are watched level-triggered where the poller supports it (epoll, kqueue, IOCP):
//! registered once, their interest changed only when what the connection wants changes
//! (reading stops under back-pressure, writing waits for a full socket), which is rare, so a
//! request costs no re-arming system call as it does in oneshot mode. Input left on a socket
//! after a read is reported again by the next wait. Where level mode is missing (Solaris
//! event ports) they are watched in oneshot mode, re-armed after each event.

use std::collections::BTreeSet;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use polling::{Event, Events, PollMode, Poller};
use wsrpc_core::Now;
use wsrpc_core::engine::{Attempt, ConnEvent, Endpoint, HandlerResult, Input, Output, Target};
use wsrpc_core::rpc::CallId;
use wsrpc_core::rpc::client::ConnectError;

use crate::pool::Job;
use crate::tls_layer::{Fed, TlsLayer};

/// The listener's key in the poller (connections use their slot index).
const LISTENER: usize = usize::MAX - 1;
/// Bytes read per readable event, into the thread's one buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes written to one connection per turn before the others are served.
const WRITE_TURN: usize = 1 << 20;
/// Slices gathered per vectored write.
const MAX_SLICES: usize = 64;
/// Events taken from the poller per wait.
const EVENTS: usize = 1024;
/// After a failed accept (out of descriptors, say), when to try again.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// What reaches an I/O thread from other threads.
pub(crate) enum Message<C> {
    /// A connection's waker fired (a publish for it).
    Wake { key: usize, generation: u64 },
    /// Handler work handed out by a connection finished.
    Done { key: usize, generation: u64, call: CallId, result: HandlerResult },
    /// A connect attempt of a client connection ended.
    Connected {
        key: usize,
        generation: u64,
        attempt: Attempt,
        result: Result<(TcpStream, Option<Box<TlsLayer>>), ConnectError>,
    },
    /// Something for the role (a client's command, a server's shutdown).
    Role(C),
}

/// Where an I/O thread's messages go, and how to wake it.
pub(crate) struct Mailbox<C> {
    tx: Sender<Message<C>>,
    poller: Arc<Poller>,
}

impl<C> Clone for Mailbox<C> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), poller: self.poller.clone() }
    }
}

impl<C> std::fmt::Debug for Mailbox<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

impl<C> Mailbox<C> {
    /// Sends `message` and wakes the thread; false when the thread is gone.
    pub(crate) fn send(&self, message: Message<C>) -> bool {
        if self.tx.send(message).is_err() {
            return false;
        }
        // Coalesced by the poller: one wake-up however many messages come before it runs.
        let _ = self.poller.notify();
        true
    }
}

/// A connection's waker: queues its key once until the I/O thread has looked at it.
struct ConnWaker<C> {
    key: usize,
    generation: u64,
    queued: AtomicBool,
    mailbox: Mailbox<C>,
}

impl<C: Send + 'static> Wake for ConnWaker<C> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A burst of publishes to this connection costs one message.
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.mailbox.send(Message::Wake { key: self.key, generation: self.generation });
        }
    }
}

/// What a reactor's connections are, and what it does with what only it knows about
/// (accepting, connecting, commands, lifecycle events).
pub(crate) trait Role: Sized + Send + 'static {
    /// The connections it hosts.
    type Conn: Endpoint;
    /// Its own messages.
    type Command: Send + 'static;

    /// A role message arrived.
    fn command(&mut self, core: &mut Core<Self>, command: Self::Command, now: Now);

    /// A lifecycle event of connection `key`.
    fn event(&mut self, key: usize, event: ConnEvent) {
        let _ = key;
        log::trace!(target: "wsrpc::rpc", "{event:?}");
    }

    /// A connection from `peer` was accepted: the endpoint to serve it with and its TLS
    /// layer (for a TLS port), or `None` to drop it.
    fn accept(
        &mut self,
        now: Now,
        peer: std::net::SocketAddr,
    ) -> Option<(Self::Conn, Option<Box<TlsLayer>>)> {
        let _ = (now, peer);
        None
    }

    /// A connection's TLS failed before it was served: plain text on a TLS port, a refused
    /// or stalled handshake.
    fn tls_failed(&mut self) {}

    /// Connection `key` asks for a transport to `target`; the result comes back as
    /// [`Message::Connected`].
    fn connect(&mut self, to: ConnectTo<'_, Self::Command>) {
        let why = ConnectError::Unsupported("this reactor does not connect".into());
        to.fail(why);
    }

    /// Connection `key` finished and was removed.
    fn finished(&mut self, key: usize) {
        let _ = key;
    }

    /// Whether the reactor should end (checked after each turn).
    fn done(&self, core: &Core<Self>) -> bool;
}

/// A connect request of a hosted connection.
pub(crate) struct ConnectTo<'a, C> {
    pub(crate) mailbox: &'a Mailbox<C>,
    pub(crate) key: usize,
    pub(crate) generation: u64,
    pub(crate) attempt: Attempt,
    pub(crate) target: &'a Target,
    pub(crate) deadline: Instant,
}

impl<C> ConnectTo<'_, C> {
    /// Reports a failure without trying.
    pub(crate) fn fail(&self, why: ConnectError) {
        let (key, generation, attempt) = (self.key, self.generation, self.attempt);
        self.mailbox.send(Message::Connected { key, generation, attempt, result: Err(why) });
    }
}

struct Slot<E, C> {
    conn: E,
    generation: u64,
    stream: Option<TcpStream>,
    /// Between the socket and the endpoint, for a TLS transport.
    tls: Option<Box<TlsLayer>>,
    waker: Arc<ConnWaker<C>>,
    /// Input the connection could not take yet (back-pressure).
    leftover: Vec<u8>,
    /// The turn's write budget ran out with output left: serve it again in the next turn.
    yielded: bool,
    eof: bool,
    write_closed: bool,
    /// The last write would have blocked: wait until the socket is writable.
    write_blocked: bool,
    /// Registered with the poller, and for what (readable, writable).
    registered: bool,
    interest: (bool, bool),
    deadline: Option<Instant>,
}

/// Everything of a reactor but its role: the poller, the connections, their timers.
pub(crate) struct Core<R: Role> {
    poller: Arc<Poller>,
    mailbox: Mailbox<R::Command>,
    slots: Vec<Option<Slot<R::Conn, R::Command>>>,
    free: Vec<usize>,
    next_generation: u64,
    timers: BTreeSet<(Instant, usize)>,
    listener: Option<TcpListener>,
    pool: Option<Sender<Job>>,
    /// Connections to serve in this turn: key, readable, writable.
    touched: Vec<(usize, bool, bool)>,
    /// Connections to serve again in the next turn without waiting for an event (input kept
    /// back in `leftover`, output left after the write budget).
    again: Vec<usize>,
    /// Level-triggered (else oneshot) registrations.
    level: bool,
    /// Level mode: the listener is not watched until a failed accept is retried.
    listener_paused: bool,
    read_buf: Vec<u8>,
}

impl<R: Role> Core<R> {
    /// A mailbox of this reactor, for other threads.
    pub(crate) fn mailbox(&self) -> &Mailbox<R::Command> {
        &self.mailbox
    }

    /// Adds a connection (on `stream`, or without one yet for a client); it is served in
    /// this turn.
    pub(crate) fn insert(
        &mut self,
        mut conn: R::Conn,
        stream: Option<TcpStream>,
        tls: Option<Box<TlsLayer>>,
    ) -> usize {
        let key = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.next_generation += 1;
        let generation = self.next_generation;
        let waker = Arc::new(ConnWaker {
            key,
            generation,
            queued: AtomicBool::new(false),
            mailbox: self.mailbox.clone(),
        });
        conn.set_waker(&Waker::from(waker.clone()));
        self.slots[key] = Some(Slot {
            conn,
            generation,
            stream,
            tls,
            waker,
            leftover: Vec::new(),
            yielded: false,
            eof: false,
            write_closed: false,
            write_blocked: false,
            registered: false,
            interest: (false, false),
            deadline: None,
        });
        self.touched.push((key, false, false));
        key
    }

    /// Applies `f` to connection `key` and serves it in this turn.
    pub(crate) fn with(&mut self, key: usize, f: impl FnOnce(&mut R::Conn)) {
        if let Some(slot) = self.slots.get_mut(key).and_then(Option::as_mut) {
            f(&mut slot.conn);
            self.touched.push((key, false, false));
        }
    }

    /// Applies `f` to every connection and serves them in this turn.
    pub(crate) fn for_each(&mut self, mut f: impl FnMut(&mut R::Conn)) {
        for (key, slot) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = slot {
                f(&mut slot.conn);
                self.touched.push((key, false, false));
            }
        }
    }

    /// Drops every connection at once (a forced close).
    pub(crate) fn drop_all(&mut self, role: &mut R) {
        for key in 0..self.slots.len() {
            self.remove(role, key);
        }
    }

    /// Stops accepting.
    pub(crate) fn close_listener(&mut self) {
        if let Some(l) = self.listener.take() {
            let _ = self.poller.delete(&l);
        }
    }

    fn remove(&mut self, role: &mut R, key: usize) {
        let Some(slot) = self.slots[key].take() else { return };
        if let (Some(stream), true) = (&slot.stream, slot.registered) {
            let _ = self.poller.delete(stream);
        }
        if let Some(d) = slot.deadline {
            self.timers.remove(&(d, key));
        }
        self.free.push(key);
        role.finished(key);
    }
}

impl<R: Role> Drop for Core<R> {
    /// Every registered socket leaves the poller before it is closed (other threads may
    /// still hold the poller through mailboxes).
    fn drop(&mut self) {
        for slot in self.slots.iter().flatten() {
            if let (Some(stream), true) = (&slot.stream, slot.registered) {
                let _ = self.poller.delete(stream);
            }
        }
        self.close_listener();
    }
}

/// A reactor: its role and its core, run by one I/O thread.
pub(crate) struct Reactor<R: Role> {
    role: R,
    core: Core<R>,
    inbox: Receiver<Message<R::Command>>,
}

impl<R: Role> Reactor<R> {
    /// A reactor for `role`, accepting on `listener` (servers), with `pool` for handler
    /// work.
    pub(crate) fn new(
        role: R,
        listener: Option<TcpListener>,
        pool: Option<Sender<Job>>,
    ) -> io::Result<Self> {
        let poller = Arc::new(Poller::new()?);
        let level = poller.supports_level();
        let (tx, inbox) = crossbeam_channel::unbounded();
        if let Some(l) = &listener {
            l.set_nonblocking(true)?;
            crate::registration::add(&poller, l, Event::readable(LISTENER), mode(level))?;
        }
        let mailbox = Mailbox { tx, poller: poller.clone() };
        let core = Core {
            poller,
            mailbox,
            slots: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            timers: BTreeSet::new(),
            listener,
            pool,
            touched: Vec::new(),
            again: Vec::new(),
            level,
            listener_paused: false,
            read_buf: Vec::new(),
        };
        Ok(Self { role, core, inbox })
    }

    /// The core, before the thread starts.
    pub(crate) fn core_mut(&mut self) -> &mut Core<R> {
        &mut self.core
    }

    /// Runs until the role is done.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(std::num::NonZeroUsize::new(EVENTS).expect("> 0"));
        loop {
            self.turn(crate::system_now());
            if self.role.done(&self.core) {
                break;
            }
            let timeout = if self.core.again.is_empty() {
                self.core.timers.first().map(|(t, _)| t.saturating_duration_since(Instant::now()))
            } else {
                // Work is left over: only collect what else is ready.
                Some(Duration::ZERO)
            };
            events.clear();
            match self.core.poller.wait(&mut events, timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!(target: "wsrpc::http", "poller failed: {e}; closing this I/O thread's connections");
                    self.core.drop_all(&mut self.role);
                    break;
                }
            }
            let again = self.core.again.drain(..).map(|key| (key, false, false));
            self.core.touched.extend(again);
            for ev in events.iter() {
                if ev.key == LISTENER {
                    self.accept();
                } else {
                    self.core.touched.push((ev.key, ev.readable, ev.writable));
                }
            }
        }
        self.core.close_listener();
    }

    fn accept(&mut self) {
        let now = crate::system_now();
        while let Some(listener) = &self.core.listener {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::debug!(target: "wsrpc::http", "cannot configure an accepted socket: {e}");
                        continue;
                    }
                    if let Some((conn, tls)) = self.role.accept(now, peer) {
                        self.core.insert(conn, Some(stream), tls);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // Out of descriptors and the like: try again shortly (watching it now
                    // would spin on the same error while the backlog is not empty).
                    log::warn!(target: "wsrpc::http", "accept failed: {e}");
                    let core = &mut self.core;
                    if let (Some(l), true) = (&core.listener, core.level) {
                        let _ =
                            core.poller.modify_with_mode(l, Event::none(LISTENER), PollMode::Level);
                        core.listener_paused = true;
                    }
                    core.timers.insert((now.mono + ACCEPT_RETRY, LISTENER));
                    return;
                }
            }
        }
        let core = &mut self.core;
        if let Some(l) = &core.listener {
            if !core.level || std::mem::take(&mut core.listener_paused) {
                let _ =
                    core.poller.modify_with_mode(l, Event::readable(LISTENER), mode(core.level));
            }
        }
    }

    /// One turn at `now`: messages, due timers, then every touched connection.
    fn turn(&mut self, now: Now) {
        while let Ok(message) = self.inbox.try_recv() {
            self.message(message, now);
        }
        while let Some(&(at, key)) = self.core.timers.first() {
            if at > now.mono {
                break;
            }
            self.core.timers.pop_first();
            if key == LISTENER {
                self.accept();
                continue;
            }
            if let Some(slot) = self.core.slots.get_mut(key).and_then(Option::as_mut) {
                slot.deadline = None;
                slot.conn.handle(now, Input::Timeout);
                self.core.touched.push((key, false, false));
            }
        }
        // Serving may touch more connections (a role command, a broken socket).
        let mut i = 0;
        while i < self.core.touched.len() {
            let (key, readable, writable) = self.core.touched[i];
            self.serve(key, readable, writable, now);
            i += 1;
        }
        self.core.touched.clear();
    }

    fn live(&mut self, key: usize, generation: u64) -> Option<&mut Slot<R::Conn, R::Command>> {
        self.core.slots.get_mut(key).and_then(Option::as_mut).filter(|s| s.generation == generation)
    }

    fn message(&mut self, message: Message<R::Command>, now: Now) {
        let key = match message {
            Message::Wake { key, generation } => {
                let Some(slot) = self.live(key, generation) else { return };
                // Before handling, so a publish meanwhile queues a new wake-up.
                slot.waker.queued.store(false, Ordering::Release);
                slot.conn.handle(now, Input::Wakeup);
                key
            }
            Message::Done { key, generation, call, result } => {
                let Some(slot) = self.live(key, generation) else { return };
                slot.conn.handle(now, Input::Completed(call, result));
                key
            }
            Message::Connected { key, generation, attempt, result } => {
                let Some(slot) = self.live(key, generation) else { return };
                match result {
                    Ok((stream, tls)) => {
                        if let Err(e) = stream.set_nonblocking(true) {
                            let e = ConnectError::from_io(&e);
                            slot.conn.handle(now, Input::ConnectFailed(attempt, e));
                        } else {
                            let _ = stream.set_nodelay(true);
                            slot.stream = Some(stream);
                            slot.tls = tls;
                            slot.registered = false;
                            slot.conn.handle(now, Input::Connected(attempt));
                        }
                    }
                    Err(e) => {
                        slot.conn.handle(now, Input::ConnectFailed(attempt, e));
                    }
                }
                key
            }
            Message::Role(command) => return self.role.command(&mut self.core, command, now),
        };
        self.core.touched.push((key, false, false));
    }

    /// Serves connection `key`: reads if the poller said so, drains its output, updates what
    /// its socket is watched for.
    fn serve(&mut self, key: usize, readable: bool, writable: bool, now: Now) {
        let Core { slots, poller, mailbox, pool, read_buf, timers, again, level, .. } =
            &mut self.core;
        let Some(slot) = slots.get_mut(key).and_then(Option::as_mut) else { return };
        if writable {
            slot.write_blocked = false;
        }
        slot.yielded = false;
        if (readable || !slot.leftover.is_empty()) && read(slot, read_buf, now) {
            self.role.tls_failed();
        }
        let mut io = Io { key, poller, mailbox, pool: pool.as_ref(), role: &mut self.role };
        let Some(deadline) = io.drain(slot, now) else {
            if slot.tls.as_ref().is_some_and(|t| t.stalled()) {
                log::debug!(target: "wsrpc::http", "TLS handshake cut off conn={key}");
                self.role.tls_failed();
            }
            return self.core.remove(&mut self.role, key);
        };
        if slot.deadline != deadline {
            if let Some(old) = slot.deadline {
                timers.remove(&(old, key));
            }
            if let Some(new) = deadline {
                timers.insert((new, key));
            }
            slot.deadline = deadline;
        }
        let Some(stream) = &slot.stream else { return };
        let can_read = !slot.eof && slot.conn.wants_read();
        if slot.yielded || (can_read && !slot.leftover.is_empty()) {
            again.push(key);
        }
        let tls_pending = slot.tls.as_ref().is_some_and(|t| t.wants_write());
        let wanted = (
            can_read && slot.leftover.is_empty(),
            slot.write_blocked && (!slot.write_closed || tls_pending),
        );
        let interest = Event::new(key, wanted.0, wanted.1);
        let armed = if !slot.registered {
            crate::registration::add(poller, stream, interest, mode(*level))
        } else if !*level || slot.interest != wanted {
            // Oneshot mode: a delivered event disarmed the socket; arm what is wanted now.
            poller.modify_with_mode(stream, interest, mode(*level))
        } else {
            return;
        };
        match armed {
            Ok(()) => {
                slot.registered = true;
                slot.interest = wanted;
            }
            Err(e) => {
                log::debug!(target: "wsrpc::http", "cannot watch a socket: {e}");
                slot.conn.handle(now, Input::Broken);
                self.core.touched.push((key, false, false));
            }
        }
    }
}

/// The mode sockets are registered in.
fn mode(level: bool) -> PollMode {
    if level { PollMode::Level } else { PollMode::Oneshot }
}

/// Reads one chunk (or offers the input kept back) to a connection that wants it; true when
/// its TLS failed before it was served (plain text on a TLS port, a refused handshake). Input
/// left on the socket is reported again by the poller.
fn read<E: Endpoint, C>(slot: &mut Slot<E, C>, buf: &mut Vec<u8>, now: Now) -> bool {
    if !slot.conn.wants_read() || slot.conn.feed_kept(now, &mut slot.leftover) {
        return false;
    }
    let Some(mut stream) = slot.stream.as_ref().filter(|_| !slot.eof) else { return false };
    if buf.is_empty() {
        buf.resize(READ_CHUNK, 0);
    }
    match stream.read(buf) {
        Ok(0) => {
            slot.eof = true;
            slot.conn.handle(now, Input::Eof);
        }
        Ok(n) => match slot.tls.as_mut() {
            None => slot.conn.feed(now, &buf[..n], &mut slot.leftover),
            Some(tls) => {
                let handshaking = tls.is_handshaking();
                let (conn, leftover) = (&mut slot.conn, &mut slot.leftover);
                let fed = tls.input(stream, &buf[..n], |plain| {
                    // Once input waits, the rest of it queues behind, in order.
                    if leftover.is_empty() {
                        conn.feed(now, plain, leftover);
                    } else {
                        leftover.extend_from_slice(plain);
                    }
                });
                match fed {
                    Fed::Ok => {}
                    Fed::Refused => {
                        log::debug!(target: "wsrpc::http", "plain text on the TLS port; answered 400");
                        return true;
                    }
                    Fed::Failed(e) => {
                        log::debug!(target: "wsrpc::http", "TLS failed: {e}");
                        // The alert rustls queued, if the socket takes it.
                        let _ = tls.flush(stream);
                        slot.eof = true;
                        slot.conn.handle(now, Input::Broken);
                        // Failures after the handshake are the connection's end, not a refusal.
                        return handshaking;
                    }
                }
            }
        },
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
        Err(e) => {
            log::trace!(target: "wsrpc::ws", "read failed: {e}");
            slot.eof = true;
            slot.conn.handle(now, Input::Broken);
        }
    }
    false
}

/// What draining a connection's output needs from the reactor.
struct Io<'a, R: Role> {
    key: usize,
    poller: &'a Poller,
    mailbox: &'a Mailbox<R::Command>,
    pool: Option<&'a Sender<Job>>,
    role: &'a mut R,
}

impl<R: Role> Io<'_, R> {
    /// Carries out the connection's output; its next deadline, or `None` once finished.
    fn drain(&mut self, slot: &mut Slot<R::Conn, R::Command>, now: Now) -> Option<Option<Instant>> {
        let mut written = 0;
        loop {
            match slot.conn.poll_output(now) {
                Output::Event(e) => self.role.event(self.key, e),
                Output::Spawn(call, work) => {
                    let (key, generation, mailbox) =
                        (self.key, slot.generation, self.mailbox.clone());
                    let done = Box::new(move |result| {
                        mailbox.send(Message::Done { key, generation, call, result });
                    });
                    match self.pool {
                        Some(pool) => {
                            let _ = pool.send(Job { work, done });
                        }
                        None => log::error!(target: "wsrpc::rpc", "handler work without a pool"),
                    }
                }
                Output::Connect(req) => {
                    let (attempt, target, deadline) =
                        (req.attempt, req.target.clone(), req.deadline);
                    self.close_transport(slot);
                    self.role.connect(ConnectTo {
                        mailbox: self.mailbox,
                        key: self.key,
                        generation: slot.generation,
                        attempt,
                        target: &target,
                        deadline,
                    });
                }
                Output::Transmit(mut tx) => {
                    let Some(mut stream) = slot.stream.as_ref().filter(|_| !slot.write_closed)
                    else {
                        continue;
                    };
                    if slot.write_blocked {
                        // Taken up again when the socket is writable.
                        continue;
                    }
                    if written >= WRITE_TURN {
                        // Taken up again in the next turn, after the other connections.
                        slot.yielded = true;
                        continue;
                    }
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let n = tx.slices(&mut slices);
                    let result = match slot.tls.as_mut() {
                        None => stream.write_vectored(&slices[..n]),
                        // Plaintext into rustls, then its records to the socket; nothing is
                        // taken while earlier records still wait for the socket.
                        Some(tls) => match tls.flush(stream) {
                            Ok(true) => match tls.write(&slices[..n]) {
                                // rustls's buffer is full (plaintext held during a handshake).
                                Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                                Ok(taken) => tls.flush(stream).map(|_| taken),
                                Err(e) => Err(e),
                            },
                            Ok(false) => Err(io::ErrorKind::WouldBlock.into()),
                            Err(e) => Err(e),
                        },
                    };
                    match result {
                        Ok(0) => {
                            slot.conn.handle(now, Input::Broken);
                        }
                        Ok(w) => {
                            tx.advance(w);
                            written += w;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            slot.write_blocked = true
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::trace!(target: "wsrpc::ws", "write failed: {e}");
                            slot.eof = true;
                            slot.conn.handle(now, Input::Broken);
                        }
                    }
                }
                Output::ShutdownWrite => {
                    if let Some(stream) = &slot.stream {
                        match slot.tls.as_mut() {
                            // close_notify first; the half-close follows once it is out.
                            Some(tls) => {
                                tls.close();
                                if let Ok(false) = tls.flush(stream) {
                                    slot.write_blocked = true;
                                }
                            }
                            None => {
                                let _ = stream.shutdown(Shutdown::Write);
                            }
                        }
                    }
                    slot.write_closed = true;
                }
                Output::CloseTransport => self.close_transport(slot),
                Output::Finished => {
                    // Best effort: the last records (a response, close_notify) if the socket
                    // takes them now.
                    if let (Some(tls), Some(stream)) = (slot.tls.as_mut(), slot.stream.as_ref()) {
                        let _ = tls.flush(stream);
                    }
                    return None;
                }
                Output::Wait(deadline) => {
                    // Records rustls produced on its own (handshake flights, alerts), or
                    // left from a write that blocked.
                    if let (Some(tls), Some(stream)) = (slot.tls.as_mut(), slot.stream.as_ref()) {
                        match tls.flush(stream) {
                            Ok(true) => {}
                            Ok(false) => slot.write_blocked = true,
                            Err(e) => {
                                log::trace!(target: "wsrpc::ws", "write failed: {e}");
                                slot.eof = true;
                                slot.conn.handle(now, Input::Broken);
                                continue;
                            }
                        }
                    }
                    return Some(deadline);
                }
                other => log::warn!(target: "wsrpc::rpc", "unexpected output {other:?}"),
            }
        }
    }

    fn close_transport(&self, slot: &mut Slot<R::Conn, R::Command>) {
        if let Some(stream) = slot.stream.take() {
            if slot.registered {
                let _ = self.poller.delete(&stream);
            }
        }
        slot.tls = None;
        slot.registered = false;
        slot.interest = (false, false);
        slot.yielded = false;
        slot.eof = false;
        slot.write_closed = false;
        slot.write_blocked = false;
        slot.leftover.clear();
    }
}
