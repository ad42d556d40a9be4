//! permessage-deflate (RFC 7692): negotiation for both roles, and the compression contexts of
//! one connection, with inflation bounded while it runs.
//!
//! Contexts are plain memory (`flate2` on its pure-Rust `zlib-rs` backend). A zlib-rs deflate
//! context costs about 256 KiB whatever the window (its hash table has a fixed 64 Ki entries
//! and `flate2` fixes the memory level at 8) and an inflate context about 45 KiB (it always
//! allocates a 32 KiB window). So a connection owns a context only while a direction uses
//! context takeover; otherwise it borrows one from a small pool shared by the connections of
//! its [`Config`](super::Config) for the length of one message, and an idle connection holds
//! none.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::Role;
use super::budget::{AssemblyBudget, Reservation};
use super::error::{ExtensionResponseError, ProtocolError};
use super::extension::{self, ExtensionItem};
use super::utf8::Utf8Validator;

/// The extension token.
pub const EXTENSION: &str = "permessage-deflate";

/// The bytes a sender removes from the end of each compressed message and a receiver appends
/// back (RFC 7692 §7.2.1, §7.2.2): the end of an empty stored block from a sync flush.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Idle contexts a pool keeps of each kind; more are freed when given back.
const POOL_IDLE: usize = 8;

/// Smallest window zlib can produce for raw deflate (it turns 8 into 9).
const MIN_WINDOW: u8 = 9;
const MAX_WINDOW: u8 = 15;

/// Output grows by at least this much per step while inflating.
const MIN_STEP: usize = 4096;

/// permessage-deflate settings, for a server's answer and a client's offer.
///
/// The defaults: no context takeover in either direction (so a notification is compressed
/// once for every subscriber and idle connections hold no context), a 12-bit window for what
/// this endpoint compresses and asks the peer to use, compression level 1 and messages below
/// 128 bytes sent as they are. [`Config::enable_compression`](super::Config::enable_compression)
/// turns it on with these.
///
/// The field names follow RFC 7692 §7.1: `server_*` is the server-to-client direction,
/// `client_*` the client-to-server one, whichever role this endpoint has.
#[derive(Clone)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// The server compresses each message on its own [true]. A server includes it in every
    /// answer (a client may ask for it anyway); a client asks for it in its offer.
    pub server_no_context_takeover: bool,
    /// The client compresses each message on its own [true]. A server includes it in every
    /// answer; a client announces it in its offer.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window, as a power of two, of the server's compressor \[12\]. A server
    /// compresses with at most this; a client asks for it when below 15. Values are clamped to
    /// 9..=15.
    pub server_max_window_bits: u8,
    /// Largest window of the client's compressor \[12\]. A server asks a client that offers
    /// `client_max_window_bits` for at most this; a client offers it and uses at most this.
    /// Values are clamped to 9..=15.
    pub client_max_window_bits: u8,
    /// zlib compression level, 1 (fastest) to 9 (smallest) \[1\]; 0 stores.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed [128 bytes].
    pub min_size: usize,
    shared: Arc<Shared>,
    counters: Arc<CompressionCounters>,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 12,
            client_max_window_bits: 12,
            level: 1,
            min_size: 128,
            shared: Arc::default(),
            counters: Arc::default(),
        }
    }
}

impl DeflateConfig {
    /// The defaults (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters of what this configuration's connections compressed and inflated.
    pub fn counters(&self) -> &Arc<CompressionCounters> {
        &self.counters
    }

    /// Counts into `counters` (a server's metrics registry shares its own this way).
    pub fn set_counters(&mut self, counters: Arc<CompressionCounters>) {
        self.counters = counters;
    }

    fn level(&self) -> u32 {
        self.level.min(9)
    }

    /// The client's offer, for `Sec-WebSocket-Extensions`.
    pub fn offer(&self) -> String {
        let mut out = String::from(EXTENSION);
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        let server = clamp_window(self.server_max_window_bits);
        if server < MAX_WINDOW {
            out.push_str(&format!("; server_max_window_bits={server}"));
        }
        // Offered with a value: we will not use more, and the server may ask for less.
        let client = clamp_window(self.client_max_window_bits);
        if client < MAX_WINDOW {
            out.push_str(&format!("; client_max_window_bits={client}"));
        } else {
            out.push_str("; client_max_window_bits");
        }
        out
    }
}

/// Compares the settings; the pool and counters are state, not configuration.
impl PartialEq for DeflateConfig {
    fn eq(&self, other: &Self) -> bool {
        self.server_no_context_takeover == other.server_no_context_takeover
            && self.client_no_context_takeover == other.client_no_context_takeover
            && self.server_max_window_bits == other.server_max_window_bits
            && self.client_max_window_bits == other.client_max_window_bits
            && self.level == other.level
            && self.min_size == other.min_size
    }
}

impl Eq for DeflateConfig {}

impl fmt::Debug for DeflateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeflateConfig")
            .field("server_no_context_takeover", &self.server_no_context_takeover)
            .field("client_no_context_takeover", &self.client_no_context_takeover)
            .field("server_max_window_bits", &self.server_max_window_bits)
            .field("client_max_window_bits", &self.client_max_window_bits)
            .field("level", &self.level)
            .field("min_size", &self.min_size)
            .finish_non_exhaustive()
    }
}

fn clamp_window(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW, MAX_WINDOW)
}

/// Totals of what was compressed and inflated, from [`CompressionCounters::totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompressionTotals {
    /// Times the compressor ran (a notification shared by many subscribers counts once).
    pub compressions: u64,
    /// Messages sent compressed (a shared notification counts once per delivery).
    pub messages_sent: u64,
    /// Payload bytes of those messages before compression.
    pub sent_uncompressed_bytes: u64,
    /// Payload bytes of those messages as sent.
    pub sent_compressed_bytes: u64,
    /// Compressed messages received.
    pub messages_received: u64,
    /// Payload bytes of those messages as received.
    pub received_compressed_bytes: u64,
    /// Bytes they inflated to.
    pub received_inflated_bytes: u64,
}

/// Lock-free counters of permessage-deflate traffic, shared by the connections of a
/// configuration (and with a server's metrics).
#[derive(Debug, Default)]
pub struct CompressionCounters {
    compressions: AtomicU64,
    messages_sent: AtomicU64,
    sent_uncompressed: AtomicU64,
    sent_compressed: AtomicU64,
    messages_received: AtomicU64,
    received_compressed: AtomicU64,
    received_inflated: AtomicU64,
}

impl CompressionCounters {
    /// A snapshot of every counter.
    pub fn totals(&self) -> CompressionTotals {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CompressionTotals {
            compressions: r(&self.compressions),
            messages_sent: r(&self.messages_sent),
            sent_uncompressed_bytes: r(&self.sent_uncompressed),
            sent_compressed_bytes: r(&self.sent_compressed),
            messages_received: r(&self.messages_received),
            received_compressed_bytes: r(&self.received_compressed),
            received_inflated_bytes: r(&self.received_inflated),
        }
    }

    pub(crate) fn sent(&self, before: usize, after: usize) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        self.sent_uncompressed.fetch_add(before as u64, Ordering::Relaxed);
        self.sent_compressed.fetch_add(after as u64, Ordering::Relaxed);
    }

    fn received(&self, compressed: u64, inflated: u64) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
        self.received_compressed.fetch_add(compressed, Ordering::Relaxed);
        self.received_inflated.fetch_add(inflated, Ordering::Relaxed);
    }
}

/// Idle contexts shared by the connections of one configuration.
// Boxed in the pool too: a context moves between the pool and a connection's box as is.
#[allow(clippy::vec_box)]
#[derive(Default)]
struct Shared {
    deflaters: Mutex<Vec<(u8, u32, Box<Compress>)>>,
    inflaters: Mutex<Vec<Box<Decompress>>>,
}

impl Shared {
    fn take_deflater(&self, window: u8, level: u32) -> Box<Compress> {
        let mut idle = self.deflaters.lock().unwrap_or_else(PoisonError::into_inner);
        match idle.iter().position(|(w, l, _)| *w == window && *l == level) {
            Some(i) => idle.swap_remove(i).2,
            None => {
                drop(idle);
                Box::new(Compress::new_with_window_bits(Compression::new(level), false, window))
            }
        }
    }

    /// Takes back a context after use; it is reset first (zlib clears its 128 KiB hash).
    fn give_deflater(&self, window: u8, level: u32, mut ctx: Box<Compress>) {
        ctx.reset();
        let mut idle = self.deflaters.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_IDLE {
            idle.push((window, level, ctx));
        }
    }

    fn take_inflater(&self) -> Box<Decompress> {
        let ctx = self.inflaters.lock().unwrap_or_else(PoisonError::into_inner).pop();
        // Always a 15-bit window: it inflates any smaller one, zlib-rs allocates 32 KiB
        // anyway, and only at 15 bits is its reset free of a reallocation.
        ctx.unwrap_or_else(|| Box::new(Decompress::new_with_window_bits(false, MAX_WINDOW)))
    }

    fn give_inflater(&self, mut ctx: Box<Decompress>) {
        ctx.reset(false);
        let mut idle = self.inflaters.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < POOL_IDLE {
            idle.push(ctx);
        }
    }
}

/// What the two ends agreed, as each side will behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The server compresses each message on its own.
    pub server_no_context_takeover: bool,
    /// The client compresses each message on its own.
    pub client_no_context_takeover: bool,
    /// The server's window (15 when not limited).
    pub server_max_window_bits: u8,
    /// The client's window (15 when not limited). Below 9 this endpoint, as a client, sends
    /// every message uncompressed, since zlib cannot make an 8-bit raw deflate stream.
    pub client_max_window_bits: u8,
}

impl Negotiated {
    /// The header value a server answers with.
    pub fn response(&self, window_offered: bool, client_window_offered: bool) -> String {
        let mut out = String::from(EXTENSION);
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if window_offered || self.server_max_window_bits < MAX_WINDOW {
            out.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        if client_window_offered && self.client_max_window_bits < MAX_WINDOW {
            out.push_str(&format!("; client_max_window_bits={}", self.client_max_window_bits));
        }
        out
    }
}

/// The parameters of one permessage-deflate offer or answer, each at most once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (only valid in an offer).
    client_max_window_bits: Option<Option<u8>>,
}

/// Why a parameter list is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ParamError {
    Unknown(String),
    Repeated(&'static str),
    BadValue(&'static str),
}

impl From<ParamError> for ExtensionResponseError {
    fn from(e: ParamError) -> Self {
        match e {
            ParamError::Unknown(p) => Self::UnknownParameter(p),
            ParamError::Repeated(p) => Self::RepeatedParameter(p),
            ParamError::BadValue(p) => Self::InvalidValue(p),
        }
    }
}

/// RFC 7692 §7.1.2: `1*DIGIT`, no leading zero, 8 to 15.
fn window_value(value: &str) -> Option<u8> {
    if value.len() > 2 || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u8>().ok().filter(|v| (8..=15).contains(v))
}

fn parse_params(item: &ExtensionItem, in_offer: bool) -> Result<Params, ParamError> {
    let mut p = Params::default();
    let mut seen = [false; 4];
    for (name, value) in &item.params {
        let (index, key) = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => (0, "server_no_context_takeover"),
            "client_no_context_takeover" => (1, "client_no_context_takeover"),
            "server_max_window_bits" => (2, "server_max_window_bits"),
            "client_max_window_bits" => (3, "client_max_window_bits"),
            _ => return Err(ParamError::Unknown(name.clone())),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(ParamError::Repeated(key));
        }
        match (index, value) {
            (0, None) => p.server_no_context_takeover = true,
            (1, None) => p.client_no_context_takeover = true,
            (2, Some(v)) => {
                p.server_max_window_bits = Some(window_value(v).ok_or(ParamError::BadValue(key))?)
            }
            (3, Some(v)) => {
                p.client_max_window_bits =
                    Some(Some(window_value(v).ok_or(ParamError::BadValue(key))?))
            }
            // An offer may leave client_max_window_bits without a value; an answer may not.
            (3, None) if in_offer => p.client_max_window_bits = Some(None),
            _ => return Err(ParamError::BadValue(key)),
        }
    }
    Ok(p)
}

/// A server's acceptance of one offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// What was agreed.
    pub params: Negotiated,
    /// The `Sec-WebSocket-Extensions` value to answer with.
    pub header: String,
}

/// Server side: picks the first `permessage-deflate` offer among the client's
/// `Sec-WebSocket-Extensions` lines that `config` can honour, or `None` to answer without the
/// extension (compression off, no offer, a malformed header, or only offers that cannot be
/// honoured, such as an 8-bit server window). Never fails the handshake.
pub fn accept<'a>(
    config: Option<&DeflateConfig>,
    offers: impl IntoIterator<Item = &'a [u8]>,
) -> Option<Accepted> {
    let config = config?;
    let items = match extension::parse_all(offers) {
        Ok(items) => items,
        Err(e) => {
            log::debug!(target: "wsrpc::ws", "extension offers ignored: {e}");
            return None;
        }
    };
    for item in items.iter().filter(|i| i.is(EXTENSION)) {
        let offer = match parse_params(item, true) {
            Ok(p) => p,
            Err(e) => {
                log::debug!(target: "wsrpc::ws", "permessage-deflate offer declined: {e:?}");
                continue;
            }
        };
        let ours = clamp_window(config.server_max_window_bits);
        let server_window = match offer.server_max_window_bits {
            Some(v) if v < MIN_WINDOW => {
                log::debug!(target: "wsrpc::ws", "permessage-deflate offer declined: server window of {v} bits");
                continue;
            }
            Some(v) => v.min(ours),
            None => ours,
        };
        let client_window = match offer.client_max_window_bits {
            None => MAX_WINDOW,
            Some(None) => clamp_window(config.client_max_window_bits),
            Some(Some(v)) => v.min(clamp_window(config.client_max_window_bits)),
        };
        let params = Negotiated {
            server_no_context_takeover: offer.server_no_context_takeover
                || config.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover
                || config.client_no_context_takeover,
            server_max_window_bits: server_window,
            client_max_window_bits: client_window,
        };
        let header = params.response(
            offer.server_max_window_bits.is_some(),
            offer.client_max_window_bits.is_some(),
        );
        return Some(Accepted { params, header });
    }
    None
}

/// Client side: checks the server's `Sec-WebSocket-Extensions` lines against the offer made
/// from `config` (`None`: nothing was offered). `Ok(None)`: the server declined.
pub fn validate_response<'a>(
    config: Option<&DeflateConfig>,
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Negotiated>, ExtensionResponseError> {
    let items = extension::parse_all(lines).map_err(ExtensionResponseError::Syntax)?;
    let Some(first) = items.first() else { return Ok(None) };
    let Some(config) = config.filter(|_| first.is(EXTENSION)) else {
        return Err(ExtensionResponseError::NotOffered(first.name.clone()));
    };
    if items.len() > 1 {
        return Err(ExtensionResponseError::Repeated);
    }
    let answer = parse_params(first, false)?;
    let offered_server = clamp_window(config.server_max_window_bits);
    let server_window = match answer.server_max_window_bits {
        Some(v) if offered_server < MAX_WINDOW && v > offered_server => {
            return Err(ExtensionResponseError::WindowAboveOffer("server_max_window_bits"));
        }
        Some(v) => v,
        None if offered_server < MAX_WINDOW => {
            // The server accepted an offer with server_max_window_bits: it must confirm it.
            return Err(ExtensionResponseError::Missing("server_max_window_bits"));
        }
        None => MAX_WINDOW,
    };
    // Our offer carried a value, which binds us whatever the answer (RFC 7692 §7.1.2.2: the
    // server may ignore it and answer a larger one).
    let offered_client = clamp_window(config.client_max_window_bits);
    let client_window = match answer.client_max_window_bits {
        Some(Some(v)) => v.min(offered_client),
        _ => offered_client,
    };
    if config.server_no_context_takeover && !answer.server_no_context_takeover {
        return Err(ExtensionResponseError::Missing("server_no_context_takeover"));
    }
    Ok(Some(Negotiated {
        server_no_context_takeover: answer.server_no_context_takeover,
        // Offered as a hint, it binds us whether or not the server repeats it.
        client_no_context_takeover: answer.client_no_context_takeover
            || config.client_no_context_takeover,
        server_max_window_bits: server_window,
        client_max_window_bits: client_window,
    }))
}

/// Where a compressed message inflates to: its buffer, bounded by the message limit and the
/// shared budget, with text checked as UTF-8 as it is produced.
pub(crate) struct Sink<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) max: u64,
    pub(crate) budget: Option<&'a AssemblyBudget>,
    pub(crate) reservation: &'a mut Reservation,
    /// Set for text messages.
    pub(crate) utf8: Option<&'a mut Utf8Validator>,
}

impl Sink<'_> {
    /// Makes room for more output: doubles the buffer (at least 4 KiB more), never beyond
    /// one byte over the limit, so an oversized message is seen before more is allocated.
    fn grow(&mut self) -> Result<(), ProtocolError> {
        let len = self.out.len();
        let ceiling = usize::try_from(self.max.saturating_add(1)).unwrap_or(usize::MAX);
        if len >= ceiling {
            return Err(ProtocolError::MessageTooLarge { len: len as u64, max: self.max });
        }
        let target = len.saturating_add(len.max(MIN_STEP)).min(ceiling);
        if !self.reservation.cover(self.budget, target as u64) {
            return Err(ProtocolError::BudgetExhausted);
        }
        self.out.reserve_exact(target - len);
        Ok(())
    }

    fn check(&mut self, from: usize) -> Result<(), ProtocolError> {
        if self.out.len() as u64 > self.max {
            return Err(ProtocolError::MessageTooLarge {
                len: self.out.len() as u64,
                max: self.max,
            });
        }
        if let Some(v) = self.utf8.as_mut() {
            v.feed(&self.out[from..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }
}

/// The permessage-deflate state of one connection.
pub(crate) struct PerMessageDeflate {
    config: DeflateConfig,
    params: Negotiated,
    /// This endpoint's compressor when it uses context takeover (made on first use). Boxed,
    /// like `rx`: a connection without contexts stays small.
    tx: Option<Box<Compress>>,
    /// The peer's messages' inflater: for the message in progress, or kept between messages
    /// under context takeover.
    rx: Option<Box<Decompress>>,
    tx_window: Option<u8>,
    tx_takeover: bool,
    rx_takeover: bool,
    /// The message in progress reached a final deflate block.
    rx_ended: bool,
    rx_wire: u64,
}

impl fmt::Debug for PerMessageDeflate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerMessageDeflate")
            .field("params", &self.params)
            .field("tx_context", &self.tx.is_some())
            .field("rx_context", &self.rx.is_some())
            .finish_non_exhaustive()
    }
}

impl PerMessageDeflate {
    pub(crate) fn new(config: DeflateConfig, params: Negotiated, role: Role) -> Self {
        let (tx_window, tx_nct, rx_nct) = match role {
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
                params.client_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
                params.server_no_context_takeover,
            ),
        };
        Self {
            config,
            params,
            tx: None,
            rx: None,
            // A peer that limits us to 8 bits gets every message uncompressed (valid, RFC
            // 7692 §6: compression is chosen per message).
            tx_window: (tx_window >= MIN_WINDOW).then_some(tx_window),
            tx_takeover: !tx_nct,
            rx_takeover: !rx_nct,
            rx_ended: false,
            rx_wire: 0,
        }
    }

    pub(crate) fn params(&self) -> Negotiated {
        self.params
    }

    pub(crate) fn counters(&self) -> &CompressionCounters {
        &self.config.counters
    }

    /// Bytes held in contexts by this connection now (estimates of zlib-rs's allocations).
    pub(crate) fn context_bytes(&self) -> usize {
        let tx = self.tx_window.filter(|_| self.tx.is_some()).map_or(0, deflate_context_bytes);
        tx + if self.rx.is_some() { INFLATE_CONTEXT_BYTES } else { 0 }
    }

    // ---- sending -------------------------------------------------------------------------

    /// Whether a shared, pre-compressed frame may be sent: this endpoint compresses each
    /// message on its own, with a window of at least `window` bits.
    pub(crate) fn shared_window(&self) -> Option<u8> {
        self.tx_window.filter(|_| !self.tx_takeover)
    }

    /// The window a shared frame is compressed with: the configured one.
    pub(crate) fn shared_config(&self) -> &DeflateConfig {
        &self.config
    }

    /// Compresses one whole message; `None` means send it uncompressed (too small, a window
    /// we cannot produce, or it would not shrink).
    pub(crate) fn compress(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let window = self.tx_window?;
        if payload.len() < self.config.min_size {
            return None;
        }
        let level = self.config.level();
        if self.tx_takeover {
            let ctx = self.tx.get_or_insert_with(|| {
                Box::new(Compress::new_with_window_bits(Compression::new(level), false, window))
            });
            // Under context takeover the peer's window holds what we compressed, so the
            // output is sent whatever its size.
            let out = deflate_message(ctx, payload, usize::MAX);
            self.config.counters.compressions.fetch_add(1, Ordering::Relaxed);
            if out.is_none() {
                // Half a message went into the context and none to the peer: start afresh.
                self.tx = None;
            }
            return out;
        }
        compress_pooled(&self.config, window, payload)
    }

    // ---- receiving -----------------------------------------------------------------------

    /// A compressed message starts.
    pub(crate) fn begin_message(&mut self) {
        if self.rx.is_none() {
            self.rx = Some(self.config.shared.take_inflater());
        }
        self.rx_ended = false;
        self.rx_wire = 0;
    }

    /// Inflates the next compressed bytes of the message into `sink`.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<(), ProtocolError> {
        self.rx_wire += input.len() as u64;
        if input.is_empty() {
            return Ok(());
        }
        if self.rx_ended {
            return Err(ProtocolError::InvalidCompressedData);
        }
        self.run(input, FlushDecompress::None, sink)
    }

    /// The message's last frame ended: appends the removed tail, finishes the output and
    /// releases the inflater unless the peer uses context takeover.
    pub(crate) fn end_message(&mut self, sink: &mut Sink<'_>) -> Result<(), ProtocolError> {
        if !self.rx_ended {
            self.run(&TAIL, FlushDecompress::Sync, sink)?;
        }
        self.config.counters.received(self.rx_wire, sink.out.len() as u64);
        if self.rx_takeover {
            if self.rx_ended {
                // A final block ended the peer's stream (RFC 7692 §7.2.3.3): the next message
                // starts a new one over the same window, of which we have this message.
                let ctx = self.rx.as_mut().expect("a message in progress has an inflater");
                ctx.reset(false);
                let keep = sink.out.len().saturating_sub(1 << MAX_WINDOW);
                let _ = ctx.set_dictionary(&sink.out[keep..]);
            }
        } else if let Some(ctx) = self.rx.take() {
            self.config.shared.give_inflater(ctx);
        }
        Ok(())
    }

    /// The message in progress was abandoned (the connection failed or closed).
    pub(crate) fn abandon_message(&mut self) {
        if let Some(ctx) = self.rx.take() {
            self.config.shared.give_inflater(ctx);
        }
    }

    fn run(
        &mut self,
        mut input: &[u8],
        flush: FlushDecompress,
        sink: &mut Sink<'_>,
    ) -> Result<(), ProtocolError> {
        let ctx = self.rx.as_mut().expect("a message in progress has an inflater");
        loop {
            if sink.out.len() == sink.out.capacity() {
                sink.grow()?;
            }
            let (in_before, out_before) = (ctx.total_in(), sink.out.len());
            let status = ctx
                .decompress_vec(input, sink.out, flush)
                .map_err(|_| ProtocolError::InvalidCompressedData)?;
            let consumed = (ctx.total_in() - in_before) as usize;
            input = &input[consumed..];
            sink.check(out_before)?;
            let full = sink.out.len() == sink.out.capacity();
            if status == Status::StreamEnd {
                self.rx_ended = true;
                // Only the tail we appended may follow a final block.
                if !input.is_empty() && input != TAIL.as_slice() {
                    return Err(ProtocolError::InvalidCompressedData);
                }
                return Ok(());
            }
            if full {
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if consumed == 0 && sink.out.len() == out_before {
                // No progress with room to spare: the stream is broken.
                return Err(ProtocolError::InvalidCompressedData);
            }
        }
    }
}

impl Drop for PerMessageDeflate {
    fn drop(&mut self) {
        if let Some(ctx) = self.rx.take() {
            self.config.shared.give_inflater(ctx);
        }
        if let (Some(ctx), Some(window)) = (self.tx.take(), self.tx_window) {
            self.config.shared.give_deflater(window, self.config.level(), ctx);
        }
    }
}

/// Approximate size of a zlib-rs deflate context: window and chain (4 bytes per window
/// position), the fixed 128 KiB hash head, and 112 KiB of pending and symbol buffers at
/// memory level 8.
fn deflate_context_bytes(window: u8) -> usize {
    (4 << window) + (128 << 10) + (112 << 10)
}

/// Approximate size of a zlib-rs inflate context: a 32 KiB window and its tables.
const INFLATE_CONTEXT_BYTES: usize = 45 << 10;

/// Compresses `payload` with a context borrowed from `config`'s pool, each message on its own.
pub(crate) fn compress_pooled(
    config: &DeflateConfig,
    window: u8,
    payload: &[u8],
) -> Option<Vec<u8>> {
    if payload.len() < config.min_size {
        return None;
    }
    let level = config.level();
    let mut ctx = config.shared.take_deflater(window, level);
    // Stop as soon as the output is no smaller than the input: it is sent as it is.
    let out = deflate_message(&mut ctx, payload, payload.len());
    config.shared.give_deflater(window, level, ctx);
    config.counters.compressions.fetch_add(1, Ordering::Relaxed);
    out
}

/// Runs `payload` through `ctx` with a sync flush and removes the tail (RFC 7692 §7.2.1).
/// `None` when the output would exceed `limit` bytes.
fn deflate_message(ctx: &mut Compress, payload: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out =
        Vec::with_capacity((payload.len() / 2 + 64).min(limit.saturating_add(TAIL.len())));
    let start = ctx.total_in();
    loop {
        let done = (ctx.total_in() - start) as usize;
        // A failure here is a bug in the backend, not input we can blame: send uncompressed.
        ctx.compress_vec(&payload[done..], &mut out, FlushCompress::Sync).ok()?;
        let done = (ctx.total_in() - start) as usize;
        if done == payload.len() && out.len() < out.capacity() {
            break;
        }
        if out.len() >= limit.saturating_add(TAIL.len()) {
            return None;
        }
        let more = out.capacity().max(256).min(limit.saturating_add(TAIL.len()) - out.len());
        out.reserve_exact(more);
    }
    debug_assert!(out.ends_with(&TAIL), "a sync flush ends with an empty stored block");
    out.truncate(out.len().saturating_sub(TAIL.len()));
    (out.len() < limit || limit == usize::MAX).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DeflateConfig {
        DeflateConfig::default()
    }

    fn make_sink<'a>(
        out: &'a mut Vec<u8>,
        max: u64,
        budget: Option<&'a AssemblyBudget>,
        reservation: &'a mut Reservation,
        utf8: Option<&'a mut Utf8Validator>,
    ) -> Sink<'a> {
        Sink { out, max, budget, reservation, utf8 }
    }

    fn offer(line: &str) -> Option<Accepted> {
        accept(Some(&cfg()), [line.as_bytes()])
    }

    #[test]
    fn server_answers_with_its_defaults() {
        let a = offer("permessage-deflate").unwrap();
        assert_eq!(
            a.header,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
        );
        // Chromium's offer: the client window may be limited.
        let a = offer("permessage-deflate; client_max_window_bits").unwrap();
        assert!(a.header.ends_with("; server_max_window_bits=12; client_max_window_bits=12"));
        assert_eq!(a.params.client_max_window_bits, 12);
        // Off: no answer whatever is offered.
        assert_eq!(accept(None, [&b"permessage-deflate"[..]]), None);
    }

    #[test]
    fn every_parameter_is_honoured() {
        let a = offer("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9")
            .unwrap();
        assert_eq!((a.params.server_max_window_bits, a.params.client_max_window_bits), (10, 9));
        assert!(a.header.contains("server_max_window_bits=10"));
        assert!(a.header.contains("client_max_window_bits=9"));
        // A larger window than ours is answered with ours.
        let a = offer("permessage-deflate; server_max_window_bits=15").unwrap();
        assert_eq!(a.params.server_max_window_bits, 12);
        // Context takeover allowed by configuration, still granted when the client asks.
        let mut c = cfg();
        c.server_no_context_takeover = false;
        c.client_no_context_takeover = false;
        let a = accept(Some(&c), [&b"permessage-deflate"[..]]).unwrap();
        assert!(!a.params.server_no_context_takeover && !a.params.client_no_context_takeover);
        assert_eq!(a.header, "permessage-deflate; server_max_window_bits=12");
        let a = accept(
            Some(&c),
            [&b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"[..]],
        )
        .unwrap();
        assert!(a.params.server_no_context_takeover && a.params.client_no_context_takeover);
        // A quoted value is a value.
        let a = offer("permessage-deflate; server_max_window_bits=\"9\"").unwrap();
        assert_eq!(a.params.server_max_window_bits, 9);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_is_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; x_unknown",
            "permessage-deflate; =",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        let a = offer(
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits=10",
        )
        .unwrap();
        assert_eq!((a.params.server_max_window_bits, a.params.client_max_window_bits), (12, 10));
        // Several header lines are one list.
        let a = accept(
            Some(&cfg()),
            [&b"x-other"[..], b"permessage-deflate; server_max_window_bits=11"],
        )
        .unwrap();
        assert_eq!(a.params.server_max_window_bits, 11);
        // A client window of 8 is fine: we inflate with a larger one.
        let a = offer("permessage-deflate; client_max_window_bits=8").unwrap();
        assert_eq!(a.params.client_max_window_bits, 8);
    }

    #[test]
    fn client_offer_and_answers() {
        let c = cfg();
        assert_eq!(
            c.offer(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=12"
        );
        let ok = |line: &str| validate_response(Some(&c), [line.as_bytes()]);
        let n = ok("permessage-deflate; server_no_context_takeover; server_max_window_bits=10")
            .unwrap()
            .unwrap();
        assert_eq!((n.server_max_window_bits, n.client_max_window_bits), (10, 12));
        assert!(n.client_no_context_takeover, "our hint binds us");
        let n = ok("permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=8")
            .unwrap()
            .unwrap();
        assert_eq!(n.client_max_window_bits, 8);
        // A larger client window than offered: the offer's value still binds the client.
        let n = ok("permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits=15")
            .unwrap()
            .unwrap();
        assert_eq!(n.client_max_window_bits, 12);
        assert_eq!(validate_response(Some(&c), []), Ok(None));
        use ExtensionResponseError as E;
        let cases: &[(&str, E)] = &[
            ("x-foo", E::NotOffered("x-foo".into())),
            ("permessage-deflate, permessage-deflate", E::Repeated),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=13",
                E::WindowAboveOffer("server_max_window_bits"),
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                E::Missing("server_max_window_bits"),
            ),
            (
                "permessage-deflate; server_max_window_bits=12",
                E::Missing("server_no_context_takeover"),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_max_window_bits",
                E::InvalidValue("client_max_window_bits"),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; foo",
                E::UnknownParameter("foo".into()),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                E::RepeatedParameter("server_no_context_takeover"),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(ok(line).unwrap_err(), *want, "{line}");
        }
        assert!(matches!(ok("permessage-deflate;"), Err(E::Syntax(_))));
        assert_eq!(
            validate_response(None, [&b"permessage-deflate"[..]]),
            Err(E::NotOffered("permessage-deflate".into()))
        );
    }

    #[test]
    fn compress_then_inflate_round_trips_for_every_window() {
        let text: Vec<u8> =
            (0..5000u32).flat_map(|i| format!("{{\"n\":{}}}", i % 97).into_bytes()).collect();
        for window in 9..=15u8 {
            let mut c = cfg();
            c.server_max_window_bits = window;
            let params = accept(Some(&c), [&b"permessage-deflate"[..]]).unwrap().params;
            let mut tx = PerMessageDeflate::new(c.clone(), params, Role::Server);
            let mut rx = PerMessageDeflate::new(c.clone(), params, Role::Client);
            for _ in 0..3 {
                let wire = tx.compress(&text).unwrap();
                assert!(wire.len() < text.len() / 2, "window {window}: {}", wire.len());
                let mut out = Vec::new();
                let mut r = Reservation::default();
                let mut utf8 = Utf8Validator::new();
                let mut sink = make_sink(&mut out, 1 << 20, None, &mut r, Some(&mut utf8));
                rx.begin_message();
                for piece in wire.chunks(7) {
                    rx.inflate(piece, &mut sink).unwrap();
                }
                rx.end_message(&mut sink).unwrap();
                assert_eq!(out, text);
            }
            assert!(rx.rx.is_none() && tx.tx.is_none(), "contexts released between messages");
        }
        let totals = cfg().counters().totals();
        assert_eq!(totals, CompressionTotals::default(), "each config counts on its own");
    }

    #[test]
    fn inflating_stops_one_byte_over_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        let c = cfg();
        let params = accept(Some(&c), [&b"permessage-deflate"[..]]).unwrap().params;
        let wire =
            PerMessageDeflate::new(c.clone(), params, Role::Client).compress(&zeros).unwrap();
        // Deflate's best is about 1:1000 (258-byte matches of a few bits each).
        assert!(wire.len() < 16 << 10, "{}", wire.len());
        let mut rx = PerMessageDeflate::new(c, params, Role::Server);
        let mut out = Vec::new();
        let budget = AssemblyBudget::new(1 << 30);
        let mut r = Reservation::default();
        let mut sink = make_sink(&mut out, 200_000, Some(&budget), &mut r, None);
        rx.begin_message();
        let err = rx.inflate(&wire, &mut sink).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooLarge { len: 200_001, max: 200_000 });
        assert!(out.capacity() <= 200_001, "{}", out.capacity());
        // The buffer beyond its first free 64 KiB was charged, in 64 KiB steps.
        assert_eq!(budget.used(), 3 * 65536);
        drop(r);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn corrupt_streams_fail() {
        let c = cfg();
        let params = accept(Some(&c), [&b"permessage-deflate"[..]]).unwrap().params;
        let mut rx = PerMessageDeflate::new(c, params, Role::Server);
        let mut out = Vec::new();
        let mut r = Reservation::default();
        let mut sink = make_sink(&mut out, 1 << 20, None, &mut r, None);
        rx.begin_message();
        // Block type 3 is reserved.
        assert_eq!(rx.inflate(&[0xff, 0xff], &mut sink), Err(ProtocolError::InvalidCompressedData));
        // A final stored block followed by more data.
        rx.abandon_message();
        rx.begin_message();
        let mut out = Vec::new();
        let mut sink2 = make_sink(&mut out, 1 << 20, None, &mut r, None);
        assert_eq!(
            rx.inflate(&[0x01, 0x01, 0x00, 0xfe, 0xff, b'a', 0x00], &mut sink2),
            Err(ProtocolError::InvalidCompressedData)
        );
    }

    #[test]
    fn incompressible_or_small_messages_go_uncompressed() {
        let c = cfg();
        let params = accept(Some(&c), [&b"permessage-deflate"[..]]).unwrap().params;
        let mut tx = PerMessageDeflate::new(c, params, Role::Server);
        assert_eq!(tx.compress(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":true}"), None);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(tx.compress(&noise), None);
    }
}
