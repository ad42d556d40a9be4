//! Results of async handlers, reported back to the connection that spawned them.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use wsrpc_core::engine::HandlerResult as CallResult;
use wsrpc_core::rpc::{CallId, HandlerFuture, RpcError, Work};

use crate::Runtime;

/// A queue of finished calls plus the waker of the connection's task.
#[derive(Default)]
pub(crate) struct Completions {
    done: Mutex<Vec<(CallId, CallResult)>>,
    pub(crate) waker: AtomicWaker,
}

impl Completions {
    /// Runs `work` on `rt` (a future on the runtime, a blocking call on its blocking pool);
    /// its result lands here and wakes the connection. A handler that panics is answered with
    /// -32603 instead of leaving its caller waiting.
    pub(crate) fn spawn(self: &Arc<Self>, rt: &impl Runtime, id: CallId, work: Work) {
        let me = self.clone();
        match work {
            Work::Future(fut) => rt.spawn(Box::pin(async move {
                let result = CatchPanic(fut).await;
                me.finish(id, result);
            })),
            Work::Blocking(call) => rt.spawn_blocking(Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|_| {
                    log::error!(target: "wsrpc::rpc", "blocking handler panicked; answering -32603");
                    Err(RpcError::internal("handler panicked"))
                });
                me.finish(id, result);
            })),
        }
    }

    fn finish(&self, id: CallId, result: CallResult) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push((id, result));
        self.waker.wake();
    }

    /// Takes every finished call.
    pub(crate) fn take(&self) -> Vec<(CallId, CallResult)> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Turns a panic inside a handler future into an internal error.
struct CatchPanic(HandlerFuture);

impl Future for CatchPanic {
    type Output = CallResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        // The future is dropped right after a panic, so no broken state is observed again.
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                log::error!(target: "wsrpc::rpc", "async handler panicked; answering -32603");
                Poll::Ready(Err(RpcError::internal("handler panicked")))
            }
        }
    }
}
