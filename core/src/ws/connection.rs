//! The WebSocket connection state machine.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use super::Role;
use super::budget::Reservation;
use super::close::{CloseCode, CloseFrame};
use super::config::Config;
use super::deflate::{self, Negotiated, PerMessageDeflate, Sink};
use super::error::{Error, HandshakeError, ProtocolError, SendError};
use super::frame::{
    FrameDecoder, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, encode_frame,
    encode_frame_rsv,
};
use super::handshake::{self, ClientRequest};
use super::mask::{apply_mask, extend_unmasked};
use super::message::{Closed, Connected, Event, Initiator, Message, MessageKind, SharedFrame};
use super::state::{Input, State};
use super::transmit::TransmitQueue;
use super::utf8::Utf8Validator;
use crate::entropy::Entropy;
use crate::http::head::{HeadBuffer, RequestHead, ResponseHead};

/// Pongs queued for a peer that does not read before further pings are coalesced.
const MAX_QUEUED_PONGS: usize = 32;

/// Payloads at least this large are queued as their own chunk instead of being copied into
/// the coalescing buffer.
const ZERO_COPY_THRESHOLD: usize = 4096;

/// One WebSocket connection, either role, as a sans-IO state machine.
///
/// Feed it what the transport delivers with [`handle_input`](Self::handle_input) (and
/// [`handle_eof`](Self::handle_eof)), then drain, in any order and until each is empty:
/// [`poll_event`](Self::poll_event) for messages and the end of the connection,
/// [`poll_transmit`](Self::poll_transmit) + [`advance_transmit`](Self::advance_transmit) for
/// bytes to write, and [`poll_timeout`](Self::poll_timeout) for the next deadline, at which
/// the caller calls [`handle_timeout`](Self::handle_timeout). When
/// [`is_finished`](Self::is_finished) the caller closes the transport.
///
/// It never reads a clock: every method that depends on time takes `now`.
pub struct Connection {
    role: Role,
    config: Arc<Config>,
    state: State,
    handshake: Option<Box<Handshake>>,
    decoder: FrameDecoder,
    rx: Receiver,
    tx: TransmitQueue,
    events: VecDeque<Event>,
    entropy: Option<Box<dyn Entropy>>,
    timers: Timers,
    /// Last time anything arrived, for the ping interval.
    last_rx: Instant,
    /// Last time a data message went either way, for the idle timeout.
    last_message: Instant,
    /// Payload of the last ping we sent, to recognise its pong.
    ping_counter: u64,
    /// Pongs queued since the transmit queue was last empty.
    queued_pongs: usize,
    /// A peer that pings faster than it reads gets its newest ping answered once the queue
    /// drains; older ones are superseded (RFC 6455 §5.5.3).
    pending_pong: Option<ControlPayload>,
    /// Close frame we sent first, if any, to report when the peer answers.
    sent_close: Option<CloseFrame>,
    error: Option<Error>,
    stats: Stats,
    /// permessage-deflate, once negotiated.
    deflate: Option<Box<PerMessageDeflate>>,
    /// Once closing: read until end of file before closing the transport. False only for a
    /// server whose close handshake completed with nothing after the peer's close frame.
    linger: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("pending_transmit", &self.tx.len())
            .field("pending_events", &self.events.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Byte and message counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes fed to `handle_input`.
    pub bytes_in: u64,
    /// Bytes reported written through `advance_transmit`.
    pub bytes_out: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Data messages sent.
    pub messages_out: u64,
}

#[derive(Debug)]
enum Handshake {
    Server { head: HeadBuffer },
    Client { head: HeadBuffer, key: String, offered: Vec<String> },
}

#[derive(Clone, Copy, Debug)]
struct ControlPayload {
    buf: [u8; MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl ControlPayload {
    fn new(bytes: &[u8]) -> Self {
        let mut buf = [0; MAX_CONTROL_PAYLOAD];
        buf[..bytes.len()].copy_from_slice(bytes);
        Self { buf, len: bytes.len() as u8 }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Frame decoding state: a partial header, the frame in progress and the message being
/// assembled.
#[derive(Debug)]
struct Receiver {
    header_buf: [u8; MAX_HEADER_LEN],
    header_len: usize,
    frame: Option<FrameInProgress>,
    message: Option<Assembly>,
    control: ControlPayload,
}

#[derive(Debug)]
struct FrameInProgress {
    header: FrameHeader,
    remaining: u64,
    mask_phase: usize,
}

#[derive(Debug)]
struct Assembly {
    kind: MessageKind,
    data: Vec<u8>,
    /// The first frame had RSV1: `data` is inflated from the payloads.
    compressed: bool,
    /// Payload bytes received so far (compressed ones, for a compressed message).
    wire: u64,
    fragments: usize,
    utf8: Utf8Validator,
    /// Its share of the shared budget, given back when the assembly is dropped.
    reservation: Reservation,
}

#[derive(Debug, Default)]
struct Timers {
    handshake: Option<Instant>,
    ping: Option<Instant>,
    pong: Option<Instant>,
    idle: Option<Instant>,
    close: Option<Instant>,
}

fn expired(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

impl Connection {
    /// A server connection that performs the opening handshake itself, accepting any valid
    /// upgrade and choosing the first of `config.subprotocols` the client offers.
    pub fn server(config: impl Into<Arc<Config>>, now: Instant) -> Self {
        let mut conn = Self::new(Role::Server, config.into(), State::Handshake, None, now);
        conn.handshake = Some(Box::new(Handshake::Server { head: HeadBuffer::new() }));
        conn.timers.handshake = conn.config.handshake_timeout.map(|t| crate::later(now, t));
        conn
    }

    /// A server connection whose handshake the caller already answered with
    /// [`handshake::write_accept`]: it starts open.
    pub fn accepted(config: impl Into<Arc<Config>>, now: Instant) -> Self {
        Self::accepted_with(config, now, None)
    }

    /// [`accepted`](Self::accepted) for an answer that accepted permessage-deflate with
    /// `compression` (from [`deflate::accept`]).
    pub fn accepted_with(
        config: impl Into<Arc<Config>>,
        now: Instant,
        compression: Option<Negotiated>,
    ) -> Self {
        let mut conn = Self::new(Role::Server, config.into(), State::Open, None, now);
        conn.start_open_timers(now);
        if let Some(params) = compression {
            conn.enable_deflate(params);
        }
        conn
    }

    /// A client connection: the upgrade request is queued for transmission at once.
    pub fn client(
        config: impl Into<Arc<Config>>,
        request: &ClientRequest,
        mut entropy: Box<dyn Entropy>,
        now: Instant,
    ) -> Self {
        let mut nonce = [0u8; 16];
        entropy.fill(&mut nonce);
        let mut conn = Self::new(Role::Client, config.into(), State::Handshake, Some(entropy), now);
        let mut key = String::new();
        let offer = conn.config.compression.as_ref().map(|c| c.offer());
        let with_offer;
        let request = match offer {
            Some(offer) => {
                with_offer = request.clone().header("Sec-WebSocket-Extensions", offer);
                &with_offer
            }
            None => request,
        };
        conn.tx.push_with(|buf| key = handshake::write_request(buf, request, nonce));
        conn.handshake = Some(Box::new(Handshake::Client {
            head: HeadBuffer::new(),
            key,
            offered: request.protocols.clone(),
        }));
        conn.timers.handshake = conn.config.handshake_timeout.map(|t| crate::later(now, t));
        conn
    }

    fn new(
        role: Role,
        config: Arc<Config>,
        state: State,
        entropy: Option<Box<dyn Entropy>>,
        now: Instant,
    ) -> Self {
        let decoder = FrameDecoder::new(role, config.max_frame_size);
        Self {
            role,
            config,
            state,
            handshake: None,
            decoder,
            rx: Receiver {
                header_buf: [0; MAX_HEADER_LEN],
                header_len: 0,
                frame: None,
                message: None,
                control: ControlPayload::new(&[]),
            },
            tx: TransmitQueue::default(),
            events: VecDeque::new(),
            entropy,
            timers: Timers::default(),
            last_rx: now,
            last_message: now,
            ping_counter: 0,
            queued_pongs: 0,
            pending_pong: None,
            sent_close: None,
            error: None,
            stats: Stats::default(),
            deflate: None,
            linger: true,
        }
    }

    /// Turns permessage-deflate on with what was agreed: RSV1 is accepted on the first frame
    /// of a message, and messages are compressed when it pays.
    fn enable_deflate(&mut self, params: Negotiated) {
        let config = self.config.compression.clone().unwrap_or_default();
        self.deflate = Some(Box::new(PerMessageDeflate::new(config, params, self.role)));
        self.decoder = self.decoder.allowing_rsv(4);
    }

    // ---- getters -------------------------------------------------------------------------

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration in use.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Messages may be sent.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The handshake is still in progress.
    pub fn is_handshaking(&self) -> bool {
        self.state == State::Handshake
    }

    /// The server has written its last bytes: the caller shuts down the write half of the
    /// transport (sending FIN), then closes it once [`is_finished`](Self::is_finished) says
    /// so: at once after a clean close handshake, else after reading to end of file (a
    /// lingering close, so unread input does not turn the last bytes into a reset).
    pub fn wants_shutdown_write(&self) -> bool {
        self.role == Role::Server && self.state == State::Draining && self.tx.is_empty()
    }

    /// The connection is over: close the transport.
    ///
    /// A server whose close handshake completed cleanly (both close frames exchanged, nothing
    /// after the peer's) is finished as soon as its close frame is written: the peer has said
    /// it sends nothing more, so closing at once cannot reset unread input, and the server
    /// closes the TCP connection first, as RFC 6455 §7.1.1 asks. Every other close lingers:
    /// input is read and discarded until end of file or the close timeout.
    pub fn is_finished(&self) -> bool {
        match self.state {
            State::Closed => true,
            State::Draining => !self.linger && self.tx.is_empty(),
            _ => false,
        }
    }

    /// Why the connection failed, once it has; it stays failed.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Byte and message counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What was agreed for permessage-deflate, when it was.
    pub fn compression(&self) -> Option<Negotiated> {
        self.deflate.as_ref().map(|d| d.params())
    }

    /// Bytes held now in this connection's compression contexts (zero between messages
    /// unless a direction uses context takeover).
    pub fn compression_context_len(&self) -> usize {
        self.deflate.as_ref().map_or(0, |d| d.context_bytes())
    }

    /// Bytes held for input in progress: a partial frame header, a control payload and the
    /// message being assembled.
    pub fn receive_buffer_len(&self) -> usize {
        let message = self.rx.message.as_ref().map_or(0, |m| m.data.capacity());
        let head = self.handshake.as_ref().map_or(0, |h| match &**h {
            Handshake::Server { head } | Handshake::Client { head, .. } => head.len(),
        });
        self.rx.header_len + usize::from(self.rx.control.len) + message + head
    }

    /// Bytes queued for transmission; an application can stop producing while this is large.
    pub fn transmit_len(&self) -> usize {
        self.tx.len() + self.pending_pong.map_or(0, |p| 2 + usize::from(p.len))
    }

    // ---- input ---------------------------------------------------------------------------

    /// Feeds bytes read from the transport; returns how many were consumed.
    ///
    /// Processing stops right after an event is produced, so the application can answer a
    /// message before the bytes behind it are looked at (a protocol violation later in the
    /// same read must not overtake the answer). Drain [`poll_event`](Self::poll_event), then
    /// call again with the rest, or use [`handle_all_input`](Self::handle_all_input). Input
    /// that can no longer matter (after the close) is consumed and discarded, so every call
    /// with non-empty `data` consumes at least one byte.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) -> usize {
        self.last_rx = now;
        let events_before = self.events.len();
        let mut used = 0;
        if self.state == State::Handshake {
            used = self.handle_handshake_input(now, data);
        }
        if self.events.len() == events_before && self.state.reads_frames() {
            used += self.read_frames(now, &data[used..], events_before);
        } else if self.events.len() == events_before {
            // Handshake still incomplete (all taken), or nothing left to read frames for.
            used = data.len();
            self.discard_after_close(used);
        }
        self.stats.bytes_in += used as u64;
        used
    }

    /// Feeds all of `data`, handing events to `on_event` between pieces.
    pub fn handle_all_input(
        &mut self,
        now: Instant,
        mut data: &[u8],
        mut on_event: impl FnMut(&mut Self, Event),
    ) {
        loop {
            let used = self.handle_input(now, data);
            data = &data[used..];
            while let Some(event) = self.poll_event() {
                on_event(self, event);
            }
            if data.is_empty() {
                return;
            }
        }
    }

    /// The transport reached end of file (the peer closed or reset it).
    pub fn handle_eof(&mut self, now: Instant) {
        let _ = now;
        match self.state {
            State::Handshake => {
                self.abort(Error::Handshake(HandshakeError::Eof), Initiator::Remote)
            }
            State::Open | State::CloseSent => self.abort(Error::Eof, Initiator::Remote),
            State::Draining => self.finish(),
            State::Closed => {}
        }
    }

    /// Fires every timer that is due at `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if expired(self.timers.handshake, now) {
            self.timers.handshake = None;
            if self.state == State::Handshake {
                self.fail_handshake(now, HandshakeError::Timeout);
            }
        }
        if expired(self.timers.close, now) {
            self.timers.close = None;
            match self.state {
                State::CloseSent => self.abort(Error::CloseTimeout, Initiator::Local),
                State::Draining => self.finish(),
                _ => {}
            }
        }
        if expired(self.timers.pong, now) {
            self.timers.pong = None;
            if self.state == State::Open {
                self.abort(Error::PongTimeout, Initiator::Local);
            }
        }
        if expired(self.timers.ping, now) {
            self.timers.ping = None;
            if let (State::Open, Some(interval)) = (self.state, self.config.ping_interval) {
                let due = crate::later(self.last_rx, interval);
                if self.timers.pong.is_some() {
                    // A ping is unanswered: its pong timer decides, not a new ping.
                    self.timers.ping = Some(crate::later(now, interval));
                } else if due <= now {
                    self.send_heartbeat(now);
                    self.timers.ping = Some(crate::later(now, interval));
                } else {
                    self.timers.ping = Some(due);
                }
            }
        }
        if expired(self.timers.idle, now) {
            self.timers.idle = None;
            if let (State::Open, Some(idle)) = (self.state, self.config.idle_timeout) {
                let due = crate::later(self.last_message, idle);
                if due <= now {
                    self.start_close(now, CloseCode::GOING_AWAY, "idle timeout");
                } else {
                    self.timers.idle = Some(due);
                }
            }
        }
    }

    // ---- output --------------------------------------------------------------------------

    /// The next event, or `None` when there is none.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if self.events.is_empty() && self.events.capacity() > 16 {
            self.events = VecDeque::new();
        }
        event
    }

    /// The next bytes to write, without consuming them; report what was written with
    /// [`advance_transmit`](Self::advance_transmit).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        self.flush_pong();
        self.tx.front()
    }

    /// Fills `dst` with every pending chunk, for a vectored write; returns how many.
    #[must_use]
    pub fn poll_transmit_vectored<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        self.flush_pong();
        self.tx.slices(dst)
    }

    /// Marks `n` bytes from [`poll_transmit`](Self::poll_transmit) as written.
    ///
    /// # Panics
    /// If `n` is more than is pending.
    pub fn advance_transmit(&mut self, n: usize) {
        self.tx.advance(n);
        self.stats.bytes_out += n as u64;
    }

    /// The next deadline at which [`handle_timeout`](Self::handle_timeout) must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.timers;
        [t.handshake, t.ping, t.pong, t.idle, t.close].into_iter().flatten().min()
    }

    // ---- commands ------------------------------------------------------------------------

    /// Queues a text message.
    pub fn send_text(&mut self, now: Instant, text: &str) -> Result<(), SendError> {
        self.send_data(now, OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, now: Instant, data: &[u8]) -> Result<(), SendError> {
        self.send_data(now, OpCode::Binary, data)
    }

    /// Queues an owned message; a large server payload is sent without copying, a client
    /// payload is masked in place.
    pub fn send(&mut self, now: Instant, message: Message) -> Result<(), SendError> {
        self.check_can_send()?;
        let opcode = message.kind.opcode();
        match self.compress(&message.data) {
            Some(compressed) => self.queue_owned_frame(opcode, 4, compressed),
            None if message.data.len() < ZERO_COPY_THRESHOLD => {
                self.queue_frame(true, opcode, &message.data)
            }
            None => self.queue_owned_frame(opcode, 0, message.data),
        }
        self.note_sent(now);
        Ok(())
    }

    /// Queues a frame encoded once for many connections. A client re-encodes it with its own
    /// mask.
    pub fn send_shared(&mut self, now: Instant, frame: &SharedFrame) -> Result<(), SendError> {
        self.check_can_send()?;
        if self.role == Role::Client {
            return self.send_data(now, frame.kind().opcode(), frame.payload());
        }
        let bytes = match self.deflate.as_deref() {
            None => frame.wire_bytes().clone(),
            Some(d) => match d.shared_window() {
                // Each message compressed on its own: the one compressed copy serves all.
                Some(max_window) => {
                    let cfg = d.shared_config();
                    let window = cfg.server_max_window_bits.clamp(9, 15);
                    let shared = frame.deflated(max_window, window, |payload| {
                        deflate::compress_pooled(cfg, window, payload)
                    });
                    match shared {
                        Some(bytes) => {
                            let len = frame.compressed_len().unwrap_or(bytes.len());
                            d.counters().sent(frame.payload().len(), len);
                            bytes.clone()
                        }
                        None if frame.is_incompressible() => frame.wire_bytes().clone(),
                        // A smaller window than the shared copy's: compressed for this peer.
                        None => return self.send_data(now, frame.kind().opcode(), frame.payload()),
                    }
                }
                // Context takeover: through this connection's own compressor, in order.
                None => return self.send_data(now, frame.kind().opcode(), frame.payload()),
            },
        };
        self.tx.push_shared(bytes);
        self.note_sent(now);
        Ok(())
    }

    /// Queues one frame as given: for sending a message in fragments. The caller follows the
    /// fragmentation rules (a text or binary frame, continuations, the last one with `fin`).
    pub fn send_frame(
        &mut self,
        now: Instant,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<(), SendError> {
        self.check_can_send()?;
        if opcode == OpCode::Close {
            return Err(SendError::InvalidCloseCode);
        }
        if opcode.is_control() && payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLong);
        }
        self.queue_frame(fin, opcode, payload);
        if fin && !opcode.is_control() {
            self.note_sent(now);
        }
        Ok(())
    }

    /// Queues a ping with `payload` (at most 125 bytes).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.check_can_send()?;
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLong);
        }
        self.queue_frame(true, OpCode::Ping, payload);
        Ok(())
    }

    /// Starts the closing handshake with `code` and `reason` (at most 123 bytes). During the
    /// opening handshake it abandons the connection.
    pub fn close(&mut self, now: Instant, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_valid_on_wire() {
            return Err(SendError::InvalidCloseCode);
        }
        if reason.len() > MAX_CONTROL_PAYLOAD - 2 {
            return Err(SendError::ControlTooLong);
        }
        match self.state {
            State::Open => {
                self.start_close(now, code, reason);
                Ok(())
            }
            State::Handshake => {
                self.handshake = None;
                self.transition(Input::LocalClose);
                self.timers = Timers::default();
                self.tx.clear();
                self.emit_closed(CloseCode::ABNORMAL, String::new(), Initiator::Local, false);
                Ok(())
            }
            _ => Err(SendError::Closing),
        }
    }

    // ---- internals -----------------------------------------------------------------------

    fn start_close(&mut self, now: Instant, code: CloseCode, reason: &str) {
        self.queue_close(code, reason);
        self.sent_close = Some(CloseFrame { code: Some(code), reason: reason.to_owned() });
        self.transition(Input::LocalClose);
        self.stop_open_timers();
        self.timers.close = Some(crate::later(now, self.config.close_timeout));
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        match self.state {
            State::Open => Ok(()),
            State::Handshake => Err(SendError::NotOpen),
            _ => Err(SendError::Closing),
        }
    }

    fn send_data(&mut self, now: Instant, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        self.check_can_send()?;
        match self.compress(payload) {
            Some(compressed) => self.queue_owned_frame(opcode, 4, compressed),
            None => self.queue_frame(true, opcode, payload),
        }
        self.note_sent(now);
        Ok(())
    }

    /// The payload of a compressed message (counted), or `None` to send it as it is.
    fn compress(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let d = self.deflate.as_mut()?;
        let compressed = d.compress(payload)?;
        d.counters().sent(payload.len(), compressed.len());
        Some(compressed)
    }

    /// Queues one final frame with an owned payload: masked in place and, when large, queued
    /// without a copy.
    fn queue_owned_frame(&mut self, opcode: OpCode, rsv: u8, mut payload: Vec<u8>) {
        let mask = self.next_mask();
        if payload.len() < ZERO_COPY_THRESHOLD {
            self.tx.push_with(|buf| encode_frame_rsv(buf, true, rsv, opcode, mask, &payload));
            return;
        }
        let header =
            FrameHeader { fin: true, rsv, opcode, mask, payload_len: payload.len() as u64 };
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        if let Some(key) = mask {
            apply_mask(&mut payload, key, 0);
        }
        self.tx.push_with(|buf| buf.extend_from_slice(&hbuf[..hlen]));
        self.tx.push_owned(payload);
    }

    fn note_sent(&mut self, now: Instant) {
        self.stats.messages_out += 1;
        self.last_message = now;
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        self.entropy.as_mut().map(|e| {
            let mut key = [0u8; 4];
            e.fill(&mut key);
            key
        })
    }

    fn queue_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mask = self.next_mask();
        if payload.len() >= ZERO_COPY_THRESHOLD && mask.is_none() {
            // Large unmasked payload: its own chunk, so the coalescing buffer stays small.
            let mut framed = Vec::with_capacity(payload.len() + MAX_HEADER_LEN);
            encode_frame(&mut framed, fin, opcode, None, payload);
            self.tx.push_owned(framed);
        } else {
            self.tx.push_with(|buf| encode_frame(buf, fin, opcode, mask, payload));
        }
    }

    fn queue_close(&mut self, code: CloseCode, reason: &str) {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        payload[..2].copy_from_slice(&code.0.to_be_bytes());
        payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
        self.queue_frame(true, OpCode::Close, &payload[..2 + reason.len()]);
    }

    /// Answers a ping in order with the other output, unless the peer is not reading.
    fn queue_pong(&mut self, payload: ControlPayload) {
        if self.tx.is_empty() {
            self.queued_pongs = 0;
        }
        if self.queued_pongs < MAX_QUEUED_PONGS {
            self.queued_pongs += 1;
            self.queue_frame(true, OpCode::Pong, payload.bytes());
        } else {
            self.pending_pong = Some(payload);
        }
    }

    fn flush_pong(&mut self) {
        if self.tx.is_empty() {
            if let Some(p) = self.pending_pong.take() {
                self.queue_pong(p);
            }
        }
    }

    fn send_heartbeat(&mut self, now: Instant) {
        self.ping_counter += 1;
        let payload = self.ping_counter.to_be_bytes();
        self.queue_frame(true, OpCode::Ping, &payload);
        self.timers.pong = Some(crate::later(now, self.config.pong_timeout));
    }

    fn transition(&mut self, input: Input) {
        let next = self.state.next(input, self.role);
        if next != self.state {
            log::trace!(target: "wsrpc::ws", "state {:?} -> {next:?} on {input:?}", self.state);
        }
        self.state = next;
    }

    fn start_open_timers(&mut self, now: Instant) {
        self.timers.handshake = None;
        self.timers.ping = self.config.ping_interval.map(|i| crate::later(now, i));
        self.timers.idle = self.config.idle_timeout.map(|i| crate::later(now, i));
        self.last_message = now;
    }

    fn stop_open_timers(&mut self) {
        self.timers.ping = None;
        self.timers.pong = None;
        self.timers.idle = None;
        self.timers.handshake = None;
    }

    fn emit_closed(&mut self, code: CloseCode, reason: String, initiator: Initiator, clean: bool) {
        let error = self.error.clone();
        self.events.push_back(Event::Closed(Closed { code, reason, initiator, clean, error }));
    }

    /// Input after the close is dropped unread; `n` bytes of it mean the peer goes on after
    /// its close frame, so the close lingers (read to its end of file): closing at once would
    /// answer the unread rest with a reset. Once finished, the transport is being closed and
    /// finished stays final.
    fn discard_after_close(&mut self, n: usize) {
        if n > 0 && self.state == State::Draining && !self.is_finished() {
            self.linger = true;
        }
    }

    /// Enters the lingering close: last bytes out, input discarded, bounded by the close timer.
    fn start_draining(&mut self, input: Input) {
        self.linger = !(input == Input::RemoteClose && self.role == Role::Server);
        self.transition(input);
        self.stop_open_timers();
        self.pending_pong = None;
        self.drop_message();
        self.rx.frame = None;
        self.timers.close = Some(crate::later(self.last_rx, self.config.close_timeout));
    }

    /// Ends the connection now without a close handshake.
    fn abort(&mut self, error: Error, initiator: Initiator) {
        log::debug!(target: "wsrpc::ws", "connection aborted: {error}");
        self.error = Some(error);
        self.finish();
        self.drop_message();
        self.emit_closed(CloseCode::ABNORMAL, String::new(), initiator, false);
    }

    /// Drops the message being assembled and gives its inflater back.
    fn drop_message(&mut self) {
        self.rx.message = None;
        if let Some(d) = self.deflate.as_mut() {
            d.abandon_message();
        }
    }

    /// Moves to `Closed`, dropping whatever was not written.
    fn finish(&mut self) {
        self.transition(Input::Abort);
        self.timers = Timers::default();
        self.tx.clear();
        self.pending_pong = None;
    }

    /// Fails the connection for a peer's protocol violation (RFC 6455 §7.1.7): a close frame
    /// with the matching code, then the lingering close.
    fn fail(&mut self, error: ProtocolError) {
        let code = error.close_code();
        log::debug!(target: "wsrpc::ws", "peer protocol violation: {error}; closing with {code}");
        if self.state == State::Open {
            self.queue_close(code, "");
        }
        self.error = Some(Error::Protocol(error));
        self.start_draining(Input::ProtocolError);
        self.emit_closed(code, String::new(), Initiator::Local, false);
    }

    fn fail_handshake(&mut self, now: Instant, error: HandshakeError) {
        log::debug!(target: "wsrpc::ws", "handshake failed: {error}");
        self.handshake = None;
        self.tx.clear();
        if self.role == Role::Server {
            self.tx.push_with(|buf| handshake::write_reject(buf, &error));
        }
        self.error = Some(Error::Handshake(error));
        self.last_rx = now;
        self.start_draining(Input::HandshakeFailed);
        if self.state == State::Closed {
            self.timers = Timers::default();
        }
        self.emit_closed(CloseCode::ABNORMAL, String::new(), Initiator::Local, false);
    }

    /// Returns how many bytes of `data` belonged to the head (all of them while incomplete).
    fn handle_handshake_input(&mut self, now: Instant, data: &[u8]) -> usize {
        let limits = self.config.head_limits;
        let hs = self.handshake.as_mut().expect("a handshaking connection has handshake state");
        let (head, server) = match &mut **hs {
            Handshake::Server { head } => (head, true),
            Handshake::Client { head, .. } => (head, false),
        };
        let pushed = head.push(data, limits.max_size).and_then(|done| match done {
            None if server => head.check_request_prefix().map(|()| None),
            other => Ok(other),
        });
        let used = match pushed {
            Ok(Some(used)) => used,
            Ok(None) => return data.len(),
            Err(e) => {
                self.fail_handshake(now, e);
                return data.len();
            }
        };
        let raw = head.take();
        let outcome = match *self.handshake.take().expect("checked above") {
            Handshake::Server { .. } => self.complete_server_handshake(raw),
            Handshake::Client { key, offered, .. } => {
                self.complete_client_handshake(raw, &key, &offered)
            }
        };
        match outcome {
            Ok(connected) => {
                self.transition(Input::HandshakeDone);
                self.start_open_timers(now);
                self.events.push_back(Event::Connected(connected));
                used
            }
            Err(e) => {
                self.fail_handshake(now, e);
                data.len()
            }
        }
    }

    fn complete_server_handshake(&mut self, raw: Vec<u8>) -> Result<Connected, HandshakeError> {
        let request = RequestHead::parse(raw, self.config.head_limits)?;
        let upgrade = handshake::validate_upgrade(request)?;
        let protocol = upgrade.select_protocol(&self.config.subprotocols).map(str::to_owned);
        let accepted =
            deflate::accept(self.config.compression.as_ref(), upgrade.offered_extensions());
        let extension = accepted.as_ref().map(|a| ("Sec-WebSocket-Extensions", a.header.as_str()));
        self.tx.push_with(|buf| {
            handshake::write_accept(buf, upgrade.key(), protocol.as_deref(), extension.as_slice())
        });
        let compression = accepted.map(|a| a.params);
        if let Some(params) = compression {
            self.enable_deflate(params);
        }
        Ok(Connected { protocol, request: Some(Box::new(upgrade.request)), compression })
    }

    fn complete_client_handshake(
        &mut self,
        raw: Vec<u8>,
        key: &str,
        offered: &[String],
    ) -> Result<Connected, HandshakeError> {
        let response = ResponseHead::parse(raw, self.config.head_limits)?;
        let (protocol, compression) = handshake::validate_response_with(
            &response,
            key,
            offered,
            self.config.compression.as_ref(),
        )?;
        if let Some(params) = compression {
            self.enable_deflate(params);
        }
        Ok(Connected { protocol, request: None, compression })
    }

    /// Decodes frames from `data` until an event is produced or `data` is used up; returns
    /// the bytes used (all of them once the connection stops reading frames).
    fn read_frames(&mut self, now: Instant, data: &[u8], events_before: usize) -> usize {
        let mut at = 0;
        while at < data.len() {
            match self.read_frame_step(now, &data[at..]) {
                Ok(Some(used)) => at += used,
                Ok(None) => return data.len(),
                // The first violation ends reading: the rest is discarded unseen.
                Err(e) => {
                    self.fail(e);
                    return data.len();
                }
            }
            if !self.state.reads_frames() {
                self.discard_after_close(data.len() - at);
                return data.len();
            }
            if self.events.len() > events_before {
                return at;
            }
        }
        at
    }

    /// Reads a frame header or payload bytes of the frame in progress from `data`, and ends
    /// the frame when its payload is complete. Returns the bytes used, or `None` when `data`
    /// was all taken into an unfinished header.
    fn read_frame_step(
        &mut self,
        now: Instant,
        data: &[u8],
    ) -> Result<Option<usize>, ProtocolError> {
        let used = if self.rx.frame.is_none() {
            let Some(used) = self.read_header(data)? else { return Ok(None) };
            self.start_frame()?;
            used
        } else {
            self.read_payload(data)?
        };
        if self.rx.frame.as_ref().is_some_and(|f| f.remaining == 0) {
            self.end_frame(now)?;
        }
        Ok(Some(used))
    }

    /// Decodes a header, from `data` directly when it holds one whole, else through the
    /// small header buffer. Returns how many bytes of `data` were used once a header is done.
    fn read_header(&mut self, data: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let rx = &mut self.rx;
        if rx.header_len == 0 {
            if let Some((header, len)) = self.decoder.decode_header(data)? {
                rx.frame =
                    Some(FrameInProgress { header, remaining: header.payload_len, mask_phase: 0 });
                return Ok(Some(len));
            }
        }
        let old = rx.header_len;
        let take = (MAX_HEADER_LEN - old).min(data.len());
        rx.header_buf[old..old + take].copy_from_slice(&data[..take]);
        rx.header_len += take;
        match self.decoder.decode_header(&rx.header_buf[..rx.header_len])? {
            Some((header, len)) => {
                rx.header_len = 0;
                rx.frame =
                    Some(FrameInProgress { header, remaining: header.payload_len, mask_phase: 0 });
                Ok(Some(len - old))
            }
            None => Ok(None),
        }
    }

    /// Applies the checks that depend on the message in progress, and prepares to receive
    /// the payload.
    fn start_frame(&mut self) -> Result<(), ProtocolError> {
        let Some(frame) = self.rx.frame.as_ref() else { return Ok(()) };
        let header = frame.header;
        // The decoder lets RSV1 through only once permessage-deflate is agreed; it marks a
        // compressed message on its first frame and nowhere else (RFC 7692 §6.1).
        let rsv1 = header.rsv & 4 != 0;
        match header.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.rx.message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                self.check_message_size(0, header.payload_len, rsv1)?;
                let kind = if header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                // Reserve what is announced, up to 64 KiB: memory follows the bytes that
                // actually arrive, not what a header claims. Inflated output grows as it
                // is produced.
                let data = if rsv1 {
                    Vec::new()
                } else {
                    Vec::with_capacity(header.payload_len.min(64 * 1024) as usize)
                };
                if rsv1 {
                    let d = self.deflate.as_mut().expect("RSV1 passes only with the extension");
                    d.begin_message();
                }
                self.rx.message = Some(Assembly {
                    kind,
                    data,
                    compressed: rsv1,
                    wire: 0,
                    fragments: 1,
                    utf8: Utf8Validator::new(),
                    reservation: Reservation::default(),
                });
            }
            OpCode::Continuation => {
                if rsv1 {
                    return Err(ProtocolError::CompressedContinuation);
                }
                let max_fragments = self.config.max_fragments;
                let Some(msg) = self.rx.message.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                msg.fragments += 1;
                if msg.fragments > max_fragments {
                    return Err(ProtocolError::TooManyFragments { max: max_fragments });
                }
                let (have, compressed) = (msg.wire, msg.compressed);
                self.check_message_size(have, header.payload_len, compressed)?;
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if rsv1 {
                    return Err(ProtocolError::CompressedControl);
                }
                self.rx.control.len = 0
            }
        }
        Ok(())
    }

    /// Checks the payload bytes of a message against the limit. Compressed payloads get an
    /// eighth more (deflate can grow incompressible data); their inflated size is checked
    /// while inflating.
    fn check_message_size(
        &self,
        have: u64,
        more: u64,
        compressed: bool,
    ) -> Result<(), ProtocolError> {
        let len = have.saturating_add(more);
        let max = self.config.max_message_size;
        let allowed = if compressed { max.saturating_add(max / 8 + 1024) } else { max };
        if len > allowed { Err(ProtocolError::MessageTooLarge { len, max }) } else { Ok(()) }
    }

    /// Takes payload bytes of the current frame from `data`; returns how many.
    fn read_payload(&mut self, data: &[u8]) -> Result<usize, ProtocolError> {
        let rx = &mut self.rx;
        let frame = rx.frame.as_mut().expect("read_payload runs with a frame in progress");
        let n = usize::try_from(frame.remaining).map_or(data.len(), |r| r.min(data.len()));
        let chunk = &data[..n];
        frame.remaining -= n as u64;
        let key = frame.header.mask;
        if frame.header.opcode.is_control() {
            let c = &mut rx.control;
            let start = usize::from(c.len);
            c.buf[start..start + n].copy_from_slice(chunk);
            c.len += n as u8;
            if let Some(key) = key {
                frame.mask_phase = apply_mask(&mut c.buf[start..start + n], key, frame.mask_phase);
            }
            return Ok(n);
        }
        let msg = rx.message.as_mut().expect("a data frame in progress has a message");
        msg.wire += n as u64;
        if msg.compressed {
            let d = self.deflate.as_mut().expect("a compressed message has the extension");
            let mut sink = message_sink(msg, &self.config);
            match key {
                Some(key) => {
                    // Unmasked a piece at a time on the stack: the input is not ours to change.
                    let mut scratch = [0u8; 2048];
                    for piece in chunk.chunks(scratch.len()) {
                        let buf = &mut scratch[..piece.len()];
                        buf.copy_from_slice(piece);
                        frame.mask_phase = apply_mask(buf, key, frame.mask_phase);
                        d.inflate(buf, &mut sink)?;
                    }
                }
                None => d.inflate(chunk, &mut sink)?,
            }
            return Ok(n);
        }
        let start = msg.data.len();
        // Charge the buffer's capacity after this chunk (a `Vec` grows to at least twice its
        // size), not only its length.
        let capacity = msg.data.capacity();
        let after = if start + n > capacity { (start + n).max(2 * capacity) } else { capacity };
        if !msg.reservation.cover(self.config.assembly_budget.as_ref(), after as u64) {
            return Err(ProtocolError::BudgetExhausted);
        }
        match key {
            Some(key) => {
                frame.mask_phase = extend_unmasked(&mut msg.data, chunk, key, frame.mask_phase)
            }
            None => msg.data.extend_from_slice(chunk),
        }
        if msg.kind == MessageKind::Text && msg.utf8.feed(&msg.data[start..]).is_err() {
            return Err(ProtocolError::InvalidUtf8);
        }
        Ok(n)
    }

    fn end_frame(&mut self, now: Instant) -> Result<(), ProtocolError> {
        let frame = self.rx.frame.take().expect("end_frame runs with a frame in progress");
        let header = frame.header;
        match header.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if !header.fin {
                    return Ok(());
                }
                let mut msg = self.rx.message.take().expect("a final data frame has a message");
                if msg.compressed {
                    let d = self.deflate.as_mut().expect("a compressed message has the extension");
                    d.end_message(&mut message_sink(&mut msg, &self.config))?;
                }
                if !msg.utf8.is_complete() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                self.stats.messages_in += 1;
                self.last_message = now;
                self.events.push_back(Event::Message(Message { kind: msg.kind, data: msg.data }));
            }
            OpCode::Ping => {
                if self.state == State::Open {
                    self.queue_pong(self.rx.control);
                }
            }
            OpCode::Pong => {
                if self.rx.control.bytes() == self.ping_counter.to_be_bytes() {
                    self.timers.pong = None;
                }
            }
            OpCode::Close => self.handle_close_frame()?,
        }
        Ok(())
    }

    fn handle_close_frame(&mut self) -> Result<(), ProtocolError> {
        let payload = self.rx.control.bytes();
        let received = match payload.len() {
            0 => CloseFrame { code: None, reason: String::new() },
            1 => return Err(ProtocolError::CloseTooShort),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0));
                }
                let reason = simdutf8::basic::from_utf8(&payload[2..])
                    .map_err(|_| ProtocolError::InvalidCloseReason)?;
                CloseFrame { code: Some(code), reason: reason.to_owned() }
            }
        };
        let initiated_by_us = self.state == State::CloseSent;
        if !initiated_by_us {
            // Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty close.
            match received.code {
                Some(code) => self.queue_close(code, ""),
                None => self.queue_frame(true, OpCode::Close, &[]),
            }
        }
        self.start_draining(Input::RemoteClose);
        if initiated_by_us {
            let ours =
                self.sent_close.take().unwrap_or(CloseFrame { code: None, reason: String::new() });
            let code = ours.code.unwrap_or(CloseCode::NORMAL);
            self.emit_closed(code, ours.reason, Initiator::Local, true);
        } else {
            let code = received.code.unwrap_or(CloseCode::NO_STATUS);
            self.emit_closed(code, received.reason, Initiator::Remote, true);
        }
        Ok(())
    }
}

/// Where a compressed message inflates to: its buffer, bounded by the message limit and the
/// shared budget, with text checked as UTF-8 as it is produced.
fn message_sink<'a>(msg: &'a mut Assembly, config: &'a Config) -> Sink<'a> {
    let text = msg.kind == MessageKind::Text;
    Sink {
        out: &mut msg.data,
        max: config.max_message_size,
        budget: config.assembly_budget.as_ref(),
        reservation: &mut msg.reservation,
        utf8: if text { Some(&mut msg.utf8) } else { None },
    }
}
