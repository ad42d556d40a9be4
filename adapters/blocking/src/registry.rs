//! The live connections of a server, so a shutdown can reach every connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::connection::Conn;

/// Live connections and the shutdown flags their threads watch.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Conn>>>,
    /// `slots.len()`, readable without the lock.
    live: AtomicUsize,
    /// Signalled when the last connection leaves.
    idle: Condvar,
    shutting_down: AtomicBool,
    force: AtomicBool,
}

impl Registry {
    fn slots(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A key for the next connection.
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection; its thread calls [`leave`](Self::leave) when it ends.
    pub(crate) fn enter(&self, id: u64, conn: Arc<Conn>) {
        let mut slots = self.slots();
        slots.insert(id, conn);
        self.live.store(slots.len(), Ordering::Relaxed);
    }

    pub(crate) fn leave(&self, id: u64) {
        let mut slots = self.slots();
        slots.remove(&id);
        self.live.store(slots.len(), Ordering::Relaxed);
        if slots.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Connections being served.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn is_forced(&self) -> bool {
        self.force.load(Ordering::Acquire)
    }

    /// Asks every connection to begin a graceful shutdown, through the notifier (a connection
    /// also checks the flag in each round, so one accepted meanwhile is not missed).
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for conn in self.slots().values() {
            conn.notify();
        }
    }

    /// Cuts every connection still open: the sockets are shut down, which wakes a thread
    /// waiting in `poll`, and parked threads are unparked.
    pub(crate) fn force_close(&self) {
        self.force.store(true, Ordering::Release);
        for conn in self.slots().values() {
            conn.cut();
        }
    }

    /// Waits until no connection is left or `deadline` passes; true when none is left.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> bool {
        let mut slots = self.slots();
        while !slots.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            slots =
                self.idle.wait_timeout(slots, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}
