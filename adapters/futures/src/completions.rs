//! Results of async handlers, reported back to the connection that spawned them.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use serde_json::value::RawValue;
use wsrpc_core::rpc::{CallId, HandlerFuture, RpcError};

use crate::Runtime;

type CallResult = Result<Box<RawValue>, RpcError>;

/// A queue of finished calls plus the waker of the connection's task.
#[derive(Default)]
pub(crate) struct Completions {
    done: Mutex<Vec<(CallId, CallResult)>>,
    pub(crate) waker: AtomicWaker,
}

impl Completions {
    /// Spawns `fut` on `rt`; its result lands here and wakes the connection. A handler that
    /// panics is answered with -32603 instead of leaving its caller waiting.
    pub(crate) fn spawn(self: &Arc<Self>, rt: &impl Runtime, id: CallId, fut: HandlerFuture) {
        let me = self.clone();
        rt.spawn(Box::pin(async move {
            let result = CatchPanic(fut).await;
            me.done.lock().unwrap_or_else(|p| p.into_inner()).push((id, result));
            me.waker.wake();
        }));
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
