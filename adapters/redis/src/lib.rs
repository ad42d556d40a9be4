//! Several wsrpc servers share topics through Redis (7.0 or later).
//!
//! One builder call, [`RedisExt::redis`], gives a server's hub a broker: a message published
//! on any instance reaches the subscribers of every instance, numbered by Redis so that all
//! agree on `seq` and `epoch`, and a client that reconnects to another instance resumes with
//! `since` from the topic's history in Redis. It works on every adapter (`wsrpc-smol`,
//! `wsrpc-async-std`, `wsrpc-blocking`); here two smol instances and a client of one of them
//! (this needs a Redis listening on 127.0.0.1:6379, so it is compiled but not run by the
//! tests; `tests/tests/cluster.rs` runs the same with a real `redis-server`):
//!
//! ```no_run
//! use std::time::Duration;
//! use wsrpc_redis::RedisExt;
//! use wsrpc_smol::{ClientOptions, Server, SubscriptionEvent, connect};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol::block_on(async {
//!         let redis = "redis://127.0.0.1:6379";
//!         let a = Server::builder().bind("127.0.0.1:0".parse()?).redis(redis).start()?;
//!         let b = Server::builder().bind("127.0.0.1:0".parse()?).redis(redis).start()?;
//!
//!         // A client of instance B hears what is published on instance A.
//!         let client = connect(&format!("ws://{}", b.local_addr()), ClientOptions::default()).await?;
//!         let mut prices = client.subscribe("prices").await?;
//!         let at = a.publish("prices", &42)?.wait()?; // the number Redis gave it
//!         match prices.next().await {
//!             Some(SubscriptionEvent::Notification { seq, value }) => {
//!                 assert_eq!((seq, value.get()), (at.seq, "42"));
//!             }
//!             other => panic!("expected the price, got {other:?}"),
//!         }
//!
//!         client.close().await;
//!         a.shutdown(Duration::from_secs(5)).await;
//!         b.shutdown(Duration::from_secs(5)).await;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! [`RedisExt::redis_with`] takes [`RedisOptions`] (key prefix, TTLs, timeouts, probe,
//! backoff); `ServiceConfig::hub.bridge.topics` chooses which topics are shared (all by
//! default), the others stay local exactly as without Redis.
//!
//! # What is kept in Redis
//!
//! For topic `T` under the prefix `wsrpc` ([`RedisOptions::prefix`]):
//!
//! - `wsrpc:{T}:meta`, a hash: `epoch` and `seq`, the topic's last sequence number;
//! - `wsrpc:{T}:log`, a stream of the last messages (entry id `seq-0`, field `d` the JSON
//!   payload), as long as the hub's replay size (256 by default), expiring
//!   [`history_ttl`](RedisOptions::history_ttl) after the last publish;
//! - `wsrpc:{T}`, the pub/sub channel, carrying `seq:epoch|payload`.
//!
//! The hash tag `{T}` keeps a topic's keys in one Redis Cluster slot. One Lua script per
//! publish makes the epoch when the meta is missing (Redis lost the topic: a new epoch tells
//! subscribers, instead of numbers that start over unnoticed), increments `seq`, appends to
//! the stream with id `seq`, refreshes the TTLs and publishes `seq:epoch|payload`; another
//! reads the epoch, the top and the entries after a `since`.
//!
//! # How it runs
//!
//! The `redis` crate's synchronous client in two threads, talking to the core over
//! crossbeam-channel, so it works the same under smol, async-std and the blocking adapter and
//! pulls in no async runtime (the crate's async client needs tokio's `sync` at least):
//!
//! - the command thread drains the hub's commands and pipelines them on one connection
//!   (`EVALSHA` of the publish and history scripts), reconnects with backoff, and probes the
//!   pub/sub path by publishing to the instance's own probe channel every
//!   [`probe_interval`](RedisOptions::probe_interval);
//! - the pub/sub thread owns the `SUBSCRIBE` connection, reads channel messages into the
//!   hub, and reports its own probes back. A probe not seen within
//!   [`probe_timeout`](RedisOptions::probe_timeout) means the pub/sub connection went silent
//!   (publishes answered OK while nobody received them): both connections are dropped and
//!   made again, and every topic is read from where it stalled.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod reader;
mod scripts;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use redis::IntoConnectionInfo;
use wsrpc_core::hub::{BrokerDriver, BrokerLink, BrokerRunning};
use wsrpc_core::service::ServerBuilder;

pub use redis::RedisError;

/// How the bridge uses Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// The first part of every key and channel name \[`wsrpc`\].
    pub prefix: String,
    /// How long a topic's history outlives its last publish [10 min]. The history's length
    /// is the hub's replay size (`HubConfig::replay_capacity`, 256 by default).
    pub history_ttl: Duration,
    /// How long a topic's epoch and sequence number outlive its last publish [24 h]; after
    /// that the topic starts over in a new epoch (subscribers are told `reset`).
    pub meta_ttl: Duration,
    /// Connecting and the connection's setup [1 s].
    pub connect_timeout: Duration,
    /// An unanswered command past this means the connection is gone [1 s].
    pub command_timeout: Duration,
    /// How often the pub/sub path is probed [1 s].
    pub probe_interval: Duration,
    /// A probe not back within this means the pub/sub connection went silent [3 s].
    pub probe_timeout: Duration,
    /// The first pause before reconnecting, doubled each failure [100 ms].
    pub backoff_min: Duration,
    /// The longest pause before reconnecting [2 s].
    pub backoff_max: Duration,
    /// Most commands sent in one pipeline \[512\].
    pub max_pipeline: usize,
}

impl RedisOptions {
    /// Defaults for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "wsrpc".into(),
            history_ttl: Duration::from_secs(600),
            meta_ttl: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_pipeline: 512,
        }
    }
}

/// The broker driver for Redis; give it to `ServerBuilder::broker`, or use [`RedisExt`].
#[derive(Debug)]
pub struct RedisDriver {
    options: RedisOptions,
    client: Result<redis::Client, RedisError>,
}

impl RedisDriver {
    /// A driver for `options`; fails when the URL is not a Redis URL.
    pub fn new(options: RedisOptions) -> Result<Self, RedisError> {
        let client = client(&options.url)?;
        Ok(Self { options, client: Ok(client) })
    }

    /// A driver that keeps a bad URL's error for the log at start (the broker then stays
    /// down: bridged publishes fail, `/health` answers 503).
    fn lenient(options: RedisOptions) -> Self {
        let client = client(&options.url);
        Self { options, client }
    }
}

fn client(url: &str) -> Result<redis::Client, RedisError> {
    let info = url.into_connection_info()?;
    // Small commands and messages: Nagle's delay would be most of the latency.
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// `Server::builder().redis(url)`: share topics with other instances through Redis.
pub trait RedisExt: Sized {
    /// Shares every topic (or those of `config.hub.bridge.topics`) through the Redis at
    /// `url`, with [`RedisOptions`] defaults. A URL that does not parse is logged at start and
    /// leaves the broker down; check it first with [`RedisDriver::new`] when it comes from
    /// outside.
    fn redis(self, url: &str) -> Self {
        self.redis_with(RedisOptions::new(url))
    }

    /// [`redis`](Self::redis) with options.
    fn redis_with(self, options: RedisOptions) -> Self;
}

impl<L: wsrpc_core::service::Launch> RedisExt for ServerBuilder<L> {
    fn redis_with(self, options: RedisOptions) -> Self {
        self.broker(RedisDriver::lenient(options))
    }
}

/// What the two threads share.
#[derive(Debug)]
struct Shared {
    link: BrokerLink,
    client: redis::Client,
    options: RedisOptions,
    names: scripts::Names,
    probe_channel: String,
    /// The highest probe number the pub/sub thread has seen.
    probe_seen: AtomicU64,
    stop: AtomicBool,
}

/// From the command thread to the pub/sub thread; `generation` numbers the connections, so
/// that requests meant for an earlier one are dropped.
#[derive(Debug)]
enum ReaderCtl {
    Connect { generation: u64 },
    Subscribe { generation: u64, topics: Vec<(Arc<str>, u64)> },
    Unsubscribe { generation: u64, topics: Vec<Arc<str>> },
    Disconnect,
    Stop,
}

/// From the pub/sub thread to the command thread.
#[derive(Debug)]
enum ReaderReport {
    Ready { generation: u64 },
    Failed { generation: u64, reason: String },
}

/// Wakes the command thread when the hub queues commands.
#[derive(Debug)]
struct WakeWriter(Sender<()>);

impl Wake for WakeWriter {
    fn wake(self: Arc<Self>) {
        let _ = self.0.try_send(());
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.0.try_send(());
    }
}

impl BrokerDriver for RedisDriver {
    fn start(self: Box<Self>, link: BrokerLink) -> Box<dyn BrokerRunning> {
        let client = match self.client {
            Ok(c) => c,
            Err(e) => {
                log::error!(target: "wsrpc::redis", "not connecting to Redis: bad URL {:?}: {e}", self.options.url);
                return Box::new(Running::default());
            }
        };
        let mut seed = [0u8; 8];
        // Without OS entropy the instance id still differs by address and time.
        if getrandom::fill(&mut seed).is_err() {
            seed = (std::ptr::addr_of!(seed) as u64 ^ nanos_now()).to_le_bytes();
        }
        let instance = u64::from_le_bytes(seed);
        let names = scripts::Names::new(&self.options.prefix);
        let shared = Arc::new(Shared {
            probe_channel: names.probe(instance),
            link: link.clone(),
            client,
            options: self.options,
            names,
            probe_seen: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let (report_tx, report_rx) = crossbeam_channel::unbounded();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        link.set_waker(&Waker::from(Arc::new(WakeWriter(wake_tx.clone()))));
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wsrpc-redis-sub".into())
                .spawn(move || reader::Reader::new(shared, ctl_rx, report_tx).run())
        };
        let writer = {
            let shared = shared.clone();
            let ctl_tx = ctl_tx.clone();
            std::thread::Builder::new().name("wsrpc-redis-cmd".into()).spawn(move || {
                writer::Writer::new(shared, wake_rx, report_rx, ctl_tx, stop_rx, seed_of(instance))
                    .run()
            })
        };
        let mut threads = Vec::new();
        for t in [reader, writer] {
            match t {
                Ok(t) => threads.push(t),
                Err(e) => log::error!(target: "wsrpc::redis", "cannot start a Redis thread: {e}"),
            }
        }
        Box::new(Running {
            shared: Some(shared),
            ctl: Some(ctl_tx),
            wake: Some(wake_tx),
            stop: Mutex::new(Some(stop_tx)),
            threads,
        })
    }
}

fn seed_of(instance: u64) -> u64 {
    instance ^ nanos_now().rotate_left(32)
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The started driver: stops its threads.
#[derive(Debug, Default)]
struct Running {
    shared: Option<Arc<Shared>>,
    ctl: Option<Sender<ReaderCtl>>,
    wake: Option<Sender<()>>,
    stop: Mutex<Option<Sender<()>>>,
    threads: Vec<JoinHandle<()>>,
}

impl BrokerRunning for Running {
    fn stop(mut self: Box<Self>) {
        if let Some(shared) = &self.shared {
            shared.stop.store(true, Ordering::Release);
        }
        // Dropping the sender wakes the command thread from its waits and its backoff.
        drop(self.stop.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(ctl) = &self.ctl {
            let _ = ctl.send(ReaderCtl::Stop);
        }
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!(target: "wsrpc::redis", "a Redis thread panicked");
            }
        }
    }
}

/// Exponential backoff with jitter, from the command thread's generator.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next pause: between half and all of the current step, which then doubles.
    fn pause(&mut self, random: u64) -> Duration {
        let step = self.next.min(self.max);
        self.next = (step * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_nanos(random % (half.as_nanos() as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let pauses: Vec<_> = (0..5).map(|i| b.pause(i * 7919)).collect();
        for (p, step) in pauses.iter().zip([100, 200, 400, 700, 700]) {
            let step = Duration::from_millis(step);
            assert!(*p >= step / 2 && *p <= step, "{p:?} for a step of {step:?}");
        }
        b.reset();
        assert!(b.pause(0) <= Duration::from_millis(100));
    }

    #[test]
    fn a_bad_url_is_refused_up_front() {
        assert!(RedisDriver::new(RedisOptions::new("http://nope")).is_err());
        assert!(RedisDriver::new(RedisOptions::new("redis://127.0.0.1:1/0")).is_ok());
    }
}
