//! The worker threads that run async handlers: each takes a future, runs it to completion with
//! `futures_executor::block_on` and reports the result to the connection that handed it out.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Weak;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use serde_json::value::RawValue;
use wsrpc_core::rpc::{CallId, HandlerFuture, RpcError};

use crate::connection::Conn;

/// An async call's outcome, for `ServerConnection::complete`.
pub(crate) type Completion = (CallId, Result<Box<RawValue>, RpcError>);

/// Stack of a worker: handlers are user code, so a full-size stack.
const WORKER_STACK: usize = 2 << 20;

/// One async call to run.
pub(crate) struct Job {
    pub(crate) call: CallId,
    pub(crate) future: HandlerFuture,
    /// The connection that handed it out (gone: nobody waits for the answer).
    pub(crate) conn: Weak<Conn>,
}

/// A fixed set of worker threads fed by one channel.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    jobs: Sender<Job>,
    /// Disconnects once every worker has exited (each holds a sender).
    alive: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `workers` threads.
    pub(crate) fn start(workers: usize) -> std::io::Result<Self> {
        let (jobs, queue) = unbounded::<Job>();
        let (alive_tx, alive) = bounded::<()>(0);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let queue = queue.clone();
            let alive_tx = alive_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("wsrpc-worker-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    let _alive = alive_tx;
                    work(&queue);
                })?;
            threads.push(handle);
        }
        Ok(Self { jobs, alive, threads })
    }

    /// The queue that connections hand their futures to.
    pub(crate) fn jobs(&self) -> Sender<Job> {
        self.jobs.clone()
    }

    /// Stops taking jobs and joins the workers once the queue is drained and every sender
    /// (one per live connection) is gone; workers still busy at `deadline` are left to finish on
    /// their own.
    pub(crate) fn stop(self, deadline: Instant) {
        let Self { jobs, alive, threads } = self;
        drop(jobs);
        match alive.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) => {
                for t in threads {
                    let _ = t.join();
                }
            }
            _ => {
                log::warn!(target: "wsrpc::rpc", "async handlers still running at the shutdown deadline; leaving them");
            }
        }
    }
}

fn work(queue: &Receiver<Job>) {
    for job in queue.iter() {
        let Job { call, future, conn } = job;
        let result = catch_unwind(AssertUnwindSafe(|| futures_executor::block_on(future)))
            .unwrap_or_else(|_| {
                log::error!(target: "wsrpc::rpc", "async handler panicked call={}", call.0);
                Err(RpcError::internal("handler panicked"))
            });
        if let Some(conn) = conn.upgrade() {
            conn.complete_later((call, result));
        }
    }
}
