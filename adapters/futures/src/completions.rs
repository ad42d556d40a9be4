//! Results of async handlers, reported back to the connection that spawned them.

use std::sync::{Arc, Mutex};

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
    /// Spawns `fut` on `rt`; its result lands here and wakes the connection.
    pub(crate) fn spawn(self: &Arc<Self>, rt: &impl Runtime, id: CallId, fut: HandlerFuture) {
        let me = self.clone();
        rt.spawn(Box::pin(async move {
            let result = fut.await;
            me.done.lock().unwrap_or_else(|p| p.into_inner()).push((id, result));
            me.waker.wake();
        }));
    }

    /// Takes every finished call.
    pub(crate) fn take(&self) -> Vec<(CallId, CallResult)> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
