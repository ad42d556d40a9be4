//! The pub/sub thread: owns the `SUBSCRIBE` connection, hands channel messages to the hub,
//! and notes the probes it sees.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::{Msg, PubSub};
use wsrpc_core::hub::BrokerEvent;

use crate::scripts::parse_message;
use crate::{ReaderCtl, ReaderReport, Shared};

/// How long a read waits before looking at the control channel again (subscribe requests
/// also wake it at once, by a message on the probe channel).
const TICK: Duration = Duration::from_millis(100);

/// Why listening ended.
enum Ended {
    Stop,
    Disconnect,
    Reconnect(u64),
    Failed(String),
}

pub(crate) struct Reader {
    shared: Arc<Shared>,
    ctl: Receiver<ReaderCtl>,
    reports: Sender<ReaderReport>,
}

impl Reader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        ctl: Receiver<ReaderCtl>,
        reports: Sender<ReaderReport>,
    ) -> Self {
        Self { shared, ctl, reports }
    }

    pub(crate) fn run(self) {
        let mut connect = None;
        loop {
            let generation = match connect.take() {
                Some(g) => g,
                None => match self.ctl.recv_timeout(TICK) {
                    Ok(ReaderCtl::Connect { generation }) => generation,
                    Ok(ReaderCtl::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    // Requests for a connection that is gone: the hub asks again when up.
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {
                        if self.shared.stop.load(Ordering::Acquire) {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.listen(generation) {
                Ended::Stop => return,
                Ended::Disconnect => {}
                Ended::Reconnect(g) => connect = Some(g),
                Ended::Failed(reason) => {
                    let _ = self.reports.send(ReaderReport::Failed { generation, reason });
                }
            }
        }
    }

    fn listen(&self, generation: u64) -> Ended {
        let o = &self.shared.options;
        let mut conn = match self.shared.client.get_connection_with_timeout(o.connect_timeout) {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        if let Err(e) = conn.set_write_timeout(Some(o.command_timeout)) {
            return Ended::Failed(e.to_string());
        }
        let mut pubsub = conn.as_pubsub();
        if let Err(e) = self.subscribe(&mut pubsub, vec![self.shared.probe_channel.clone()]) {
            return Ended::Failed(format!("subscribing to the probe channel: {e}"));
        }
        if self.reports.send(ReaderReport::Ready { generation }).is_err() {
            return Ended::Stop;
        }
        loop {
            while let Ok(ctl) = self.ctl.try_recv() {
                match ctl {
                    ReaderCtl::Subscribe { generation: g, topics } if g == generation => {
                        let names = &self.shared.names;
                        let channels = topics.iter().map(|(t, _)| names.channel(t)).collect();
                        if let Err(e) = self.subscribe(&mut pubsub, channels) {
                            return Ended::Failed(format!("subscribing: {e}"));
                        }
                        // In effect now: Redis ran the whole SUBSCRIBE before answering.
                        for (topic, token) in topics {
                            self.shared.link.handle_event(BrokerEvent::Subscribed { topic, token });
                        }
                    }
                    ReaderCtl::Unsubscribe { generation: g, topics } if g == generation => {
                        let names = &self.shared.names;
                        let channels: Vec<String> =
                            topics.iter().map(|t| names.channel(t)).collect();
                        if let Err(e) = self.timed(&mut pubsub, |p| p.unsubscribe(channels)) {
                            return Ended::Failed(format!("unsubscribing: {e}"));
                        }
                    }
                    ReaderCtl::Subscribe { .. } | ReaderCtl::Unsubscribe { .. } => {}
                    ReaderCtl::Connect { generation: g } => return Ended::Reconnect(g),
                    ReaderCtl::Disconnect => return Ended::Disconnect,
                    ReaderCtl::Stop => return Ended::Stop,
                }
            }
            match pubsub.get_message() {
                Ok(msg) => self.deliver(&msg),
                Err(e) if e.is_timeout() => {
                    if self.shared.stop.load(Ordering::Acquire) {
                        return Ended::Stop;
                    }
                }
                Err(e) => return Ended::Failed(e.to_string()),
            }
        }
    }

    /// Subscribes to `channels`, waiting at most the command timeout for the answer.
    fn subscribe(&self, pubsub: &mut PubSub<'_>, channels: Vec<String>) -> redis::RedisResult<()> {
        self.timed(pubsub, |p| p.subscribe(channels))
    }

    /// Runs `f` with the command timeout as the read timeout, then the tick again.
    fn timed(
        &self,
        pubsub: &mut PubSub<'_>,
        f: impl FnOnce(&mut PubSub<'_>) -> redis::RedisResult<()>,
    ) -> redis::RedisResult<()> {
        pubsub.set_read_timeout(Some(self.shared.options.command_timeout))?;
        let r = f(pubsub);
        pubsub.set_read_timeout(Some(TICK))?;
        r
    }

    fn deliver(&self, msg: &Msg) {
        let channel = msg.get_channel_name();
        if channel == self.shared.probe_channel {
            if let Some(n) =
                std::str::from_utf8(msg.get_payload_bytes()).ok().and_then(|s| s.parse().ok())
            {
                self.shared.probe_seen.fetch_max(n, Ordering::AcqRel);
            }
            return;
        }
        let Some(topic) = self.shared.names.topic_of(channel) else { return };
        match parse_message(msg.get_payload_bytes()) {
            Some((seq, epoch, payload)) => {
                self.shared.link.handle_message(topic, seq, epoch, payload);
            }
            None => log::warn!(target: "wsrpc::redis", "malformed message on {channel}; skipped"),
        }
    }
}
