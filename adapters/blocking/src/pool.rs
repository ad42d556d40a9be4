//! The worker threads that run handler work the I/O threads must not: async handlers (run to
//! completion with `futures_executor::block_on`) and methods registered as blocking. Each
//! result goes back to the connection that handed the work out.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use wsrpc_core::engine::HandlerResult;
use wsrpc_core::rpc::{RpcError, Work};

/// Stack of a worker: handlers are user code, so a full-size stack.
const WORKER_STACK: usize = 2 << 20;

/// One piece of handler work and where its result goes.
pub(crate) struct Job {
    pub(crate) work: Work,
    pub(crate) done: Box<dyn FnOnce(HandlerResult) + Send>,
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
    /// Starts `workers` threads named `name-N`.
    pub(crate) fn start(workers: usize, name: &str) -> std::io::Result<Self> {
        let (jobs, queue) = unbounded::<Job>();
        let (alive_tx, alive) = bounded::<()>(0);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let queue = queue.clone();
            let alive_tx = alive_tx.clone();
            let handle = thread::Builder::new()
                .name(format!("{name}-{i}"))
                .stack_size(WORKER_STACK)
                .spawn(move || {
                    let _alive = alive_tx;
                    for job in queue.iter() {
                        run(job);
                    }
                })?;
            threads.push(handle);
        }
        Ok(Self { jobs, alive, threads })
    }

    /// The queue that connections hand their work to.
    pub(crate) fn jobs(&self) -> Sender<Job> {
        self.jobs.clone()
    }

    /// Stops taking jobs and joins the workers once the queue is drained and every other
    /// sender is gone; workers still busy at `deadline` are left to finish on their own.
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
                log::warn!(target: "wsrpc::rpc", "handlers still running at the shutdown deadline; leaving them");
            }
        }
    }
}

/// Runs one job; a handler that panics is answered with -32603.
fn run(job: Job) {
    let Job { work, done } = job;
    let result = catch_unwind(AssertUnwindSafe(|| match work {
        Work::Future(future) => futures_executor::block_on(future),
        Work::Blocking(call) => call(),
    }))
    .unwrap_or_else(|_| {
        log::error!(target: "wsrpc::rpc", "handler panicked; answering -32603");
        Err(RpcError::internal("handler panicked"))
    });
    done(result);
}
