//! The command thread: connects (and reconnects with backoff), pipelines the hub's commands,
//! probes the pub/sub path, and says when Redis is up or down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use redis::{Connection, Value};
use wsrpc_core::Xoshiro256;
use wsrpc_core::hub::{BrokerCommand, BrokerEvent};

use crate::scripts::{self, parse_history, parse_published};
use crate::{Backoff, ReaderCtl, ReaderReport, Shared};

/// What a reply in the pipeline answers.
#[derive(Debug)]
enum Awaiting {
    Command(BrokerCommand),
    Probe(u64),
    Wake,
}

/// Epochs are below 2^53 so that JavaScript clients read them exactly.
const EPOCH_MASK: u64 = (1 << 53) - 1;

pub(crate) struct Writer {
    shared: Arc<Shared>,
    wake: Receiver<()>,
    reports: Receiver<ReaderReport>,
    ctl: Sender<ReaderCtl>,
    stop: Receiver<()>,
    random: Xoshiro256,
    publish: redis::Script,
    history: redis::Script,
    generation: u64,
    /// Commands to send again after reloading the scripts (`NOSCRIPT`).
    retry: Vec<BrokerCommand>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        wake: Receiver<()>,
        reports: Receiver<ReaderReport>,
        ctl: Sender<ReaderCtl>,
        stop: Receiver<()>,
        seed: u64,
    ) -> Self {
        Self {
            shared,
            wake,
            reports,
            ctl,
            stop,
            random: Xoshiro256::from_seed(seed),
            publish: redis::Script::new(scripts::PUBLISH),
            history: redis::Script::new(scripts::HISTORY),
            generation: 0,
            retry: Vec::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    pub(crate) fn run(mut self) {
        let o = &self.shared.options;
        let mut backoff = Backoff::new(o.backoff_min, o.backoff_max);
        let mut failures = 0u64;
        while !self.stopping() {
            self.generation += 1;
            match self.connect() {
                Ok(mut conn) => {
                    backoff.reset();
                    failures = 0;
                    log::info!(target: "wsrpc::redis", "connected to Redis at {}", self.shared.options.url);
                    self.shared.link.handle_event(BrokerEvent::Up);
                    let reason = self.serve(&mut conn);
                    self.retry.clear();
                    let _ = self.ctl.send(ReaderCtl::Disconnect);
                    if self.stopping() {
                        // The service marks the broker down itself once the driver stopped.
                        break;
                    }
                    self.shared.link.handle_event(BrokerEvent::Down { reason: reason.clone() });
                    log::warn!(target: "wsrpc::redis", "Redis connection lost: {reason}; reconnecting");
                }
                Err(reason) => {
                    let _ = self.ctl.send(ReaderCtl::Disconnect);
                    failures += 1;
                    // Loud once, then quiet while it stays down.
                    if failures == 1 {
                        log::warn!(target: "wsrpc::redis", "cannot connect to Redis at {}: {reason}", self.shared.options.url);
                    } else {
                        log::debug!(target: "wsrpc::redis", "cannot connect to Redis (attempt {failures}): {reason}");
                    }
                }
            }
            let pause = backoff.pause(self.random.next_u64());
            if let Err(RecvTimeoutError::Disconnected) | Ok(()) = self.stop.recv_timeout(pause) {
                break;
            }
        }
        let _ = self.ctl.send(ReaderCtl::Stop);
    }

    /// Connects the command connection, loads the scripts and has the pub/sub thread
    /// connect; ready when both are.
    fn connect(&mut self) -> Result<Connection, String> {
        let o = &self.shared.options;
        let mut conn = self
            .shared
            .client
            .get_connection_with_timeout(o.connect_timeout)
            .map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(o.command_timeout)).map_err(|e| e.to_string())?;
        conn.set_write_timeout(Some(o.command_timeout)).map_err(|e| e.to_string())?;
        self.load_scripts(&mut conn)?;
        let generation = self.generation;
        self.ctl.send(ReaderCtl::Connect { generation }).map_err(|_| "stopping".to_owned())?;
        let deadline = Instant::now() + o.connect_timeout * 2 + o.command_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(self.reports) -> r => match r {
                    Ok(ReaderReport::Ready { generation: g }) if g == generation => break,
                    Ok(ReaderReport::Failed { generation: g, reason }) if g == generation => {
                        return Err(format!("pub/sub connection: {reason}"));
                    }
                    Ok(_) => {}
                    Err(_) => return Err("the pub/sub thread is gone".into()),
                },
                recv(self.stop) -> _ => return Err("stopping".into()),
                default(left) => return Err("the pub/sub connection timed out".into()),
            }
        }
        Ok(conn)
    }

    fn load_scripts(&self, conn: &mut Connection) -> Result<(), String> {
        for script in [&self.publish, &self.history] {
            let hash: String = script.prepare_invoke().load(conn).map_err(|e| e.to_string())?;
            if hash != script.get_hash() {
                return Err(format!(
                    "Redis gave script hash {hash}, expected {}",
                    script.get_hash()
                ));
            }
        }
        Ok(())
    }

    /// Runs the connection until it fails (or the driver stops); returns why.
    fn serve(&mut self, conn: &mut Connection) -> String {
        let o = self.shared.options.clone();
        let mut commands: Vec<BrokerCommand> = Vec::new();
        let mut awaiting: Vec<Awaiting> = Vec::new();
        let mut packed: Vec<u8> = Vec::new();
        let mut probe_number = self.shared.probe_seen.load(Ordering::Acquire);
        let mut next_probe = Instant::now();
        // The oldest probe not seen back yet, and when it was sent.
        let mut unseen: Option<(u64, Instant)> = None;
        loop {
            if self.stopping() {
                return "the server is stopping".into();
            }
            while let Ok(report) = self.reports.try_recv() {
                if let ReaderReport::Failed { generation, reason } = report
                    && generation == self.generation
                {
                    return format!("pub/sub connection: {reason}");
                }
            }
            let now = Instant::now();
            if let Some((n, sent)) = unseen {
                if self.shared.probe_seen.load(Ordering::Acquire) >= n {
                    unseen = None;
                } else if now.duration_since(sent) > o.probe_timeout {
                    return format!(
                        "the pub/sub connection went silent (probe {n} not back after {:?})",
                        o.probe_timeout
                    );
                }
            }
            commands.clear();
            commands.append(&mut self.retry);
            self.shared.link.drain_commands(&mut commands, o.max_pipeline.max(1));
            let probe_due = now >= next_probe;
            if commands.is_empty() && !probe_due {
                let mut wait = next_probe.saturating_duration_since(now);
                if let Some((_, sent)) = unseen {
                    wait = wait.min((sent + o.probe_timeout).saturating_duration_since(now));
                }
                select! {
                    recv(self.wake) -> _ => {}
                    recv(self.reports) -> r => if let Ok(ReaderReport::Failed { generation, reason }) = r
                        && generation == self.generation
                    {
                        return format!("pub/sub connection: {reason}");
                    },
                    recv(self.stop) -> _ => return "the server is stopping".into(),
                    default(wait.max(Duration::from_millis(1))) => {}
                }
                continue;
            }
            packed.clear();
            awaiting.clear();
            let mut subscribe = Vec::new();
            let mut unsubscribe = Vec::new();
            for command in commands.drain(..) {
                match &command {
                    BrokerCommand::Subscribe { topic, token } => {
                        subscribe.push((topic.clone(), *token));
                    }
                    BrokerCommand::Unsubscribe { topic } => unsubscribe.push(topic.clone()),
                    BrokerCommand::Publish { topic, payload, .. } => {
                        let epoch = self.new_epoch();
                        let names = &self.shared.names;
                        redis::cmd("EVALSHA")
                            .arg(self.publish.get_hash())
                            .arg(2)
                            .arg(names.meta(topic))
                            .arg(names.log(topic))
                            .arg(names.channel(topic))
                            .arg(payload.as_slice())
                            .arg(self.shared.link.history_size())
                            .arg(o.history_ttl.as_secs().max(1))
                            .arg(o.meta_ttl.as_secs().max(1))
                            .arg(epoch)
                            .write_packed_command(&mut packed);
                        awaiting.push(Awaiting::Command(command));
                    }
                    BrokerCommand::History { topic, since, limit, .. } => {
                        let epoch = self.new_epoch();
                        let names = &self.shared.names;
                        let first =
                            since.map_or(String::new(), |s| s.saturating_add(1).to_string());
                        redis::cmd("EVALSHA")
                            .arg(self.history.get_hash())
                            .arg(2)
                            .arg(names.meta(topic))
                            .arg(names.log(topic))
                            .arg(first)
                            .arg(*limit)
                            .arg(o.meta_ttl.as_secs().max(1))
                            .arg(epoch)
                            .write_packed_command(&mut packed);
                        awaiting.push(Awaiting::Command(command));
                    }
                    other => {
                        log::warn!(target: "wsrpc::redis", "unknown broker command {other:?}; skipped");
                    }
                }
            }
            if !unsubscribe.is_empty() {
                let generation = self.generation;
                let _ = self.ctl.send(ReaderCtl::Unsubscribe { generation, topics: unsubscribe });
            }
            let wake_reader = !subscribe.is_empty();
            if wake_reader {
                let generation = self.generation;
                let _ = self.ctl.send(ReaderCtl::Subscribe { generation, topics: subscribe });
            }
            if wake_reader || probe_due {
                // A message on the probe channel also wakes the pub/sub thread from its read,
                // so it subscribes at once.
                let payload = if probe_due {
                    probe_number += 1;
                    probe_number.to_string()
                } else {
                    "wake".into()
                };
                redis::cmd("PUBLISH")
                    .arg(&self.shared.probe_channel)
                    .arg(&payload)
                    .write_packed_command(&mut packed);
                awaiting.push(if probe_due {
                    Awaiting::Probe(probe_number)
                } else {
                    Awaiting::Wake
                });
                if probe_due {
                    next_probe = now + o.probe_interval;
                    unseen.get_or_insert((probe_number, now));
                }
            }
            if packed.is_empty() {
                continue;
            }
            if let Err(e) = conn.send_packed_command(&packed) {
                return format!("sending: {e}");
            }
            let mut reload = false;
            for what in awaiting.drain(..) {
                let reply = match conn.recv_response() {
                    Ok(v) => v,
                    Err(e) => return format!("waiting for a reply: {e}"),
                };
                match what {
                    Awaiting::Command(command) => {
                        if let Value::ServerError(e) = &reply
                            && e.code() == "NOSCRIPT"
                        {
                            reload = true;
                            self.retry.push(command);
                            continue;
                        }
                        self.answer(command, reply);
                    }
                    Awaiting::Probe(n) => match reply {
                        // Nobody got it: the pub/sub connection is not subscribed any more.
                        Value::Int(0) => return format!("probe {n} reached no subscriber"),
                        Value::Int(_) => {}
                        other => return format!("probe {n} answered {other:?}"),
                    },
                    Awaiting::Wake => {}
                }
            }
            if reload {
                log::info!(target: "wsrpc::redis", "Redis lost the scripts (SCRIPT FLUSH?); loading them again");
                if let Err(e) = self.load_scripts(conn) {
                    return format!("loading the scripts: {e}");
                }
            }
        }
    }

    /// Gives the hub the answer to one command.
    fn answer(&self, command: BrokerCommand, reply: Value) {
        let link = &self.shared.link;
        match command {
            BrokerCommand::Publish { id, topic, .. } => match (&reply, parse_published(&reply)) {
                (_, Some((seq, epoch))) => {
                    link.handle_event(BrokerEvent::Published { id, seq, epoch })
                }
                (Value::ServerError(e), _) => {
                    log::warn!(target: "wsrpc::redis", "publish to {topic} refused: {e}");
                    link.handle_event(BrokerEvent::PublishFailed { id, reason: e.to_string() });
                }
                (other, None) => link.handle_event(BrokerEvent::PublishFailed {
                    id,
                    reason: format!("unexpected reply {other:?}"),
                }),
            },
            BrokerCommand::History { id, topic, .. } => {
                let reason = match &reply {
                    Value::ServerError(e) => e.to_string(),
                    other => format!("unexpected reply {other:?}"),
                };
                match parse_history(id, topic.clone(), reply) {
                    Some(event) => link.handle_event(event),
                    None => link.handle_event(BrokerEvent::HistoryFailed { id, topic, reason }),
                }
            }
            _ => {}
        }
    }

    /// A fresh epoch candidate for a script call: used only when the topic has none, and
    /// different each time, so that an epoch never comes back after Redis lost it.
    fn new_epoch(&mut self) -> u64 {
        (self.random.next_u64() & EPOCH_MASK).max(1)
    }
}
