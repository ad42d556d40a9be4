//! The live connections of a server, so a shutdown can reach every driver thread.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::Sender;

/// Live connections and the shutdown flags their drivers watch.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
    /// Signalled when the last connection leaves.
    idle: Condvar,
    shutting_down: AtomicBool,
    force: AtomicBool,
}

#[derive(Debug)]
struct Slot {
    /// Shared with the driver and reader, to cut the connection after the deadline.
    stream: Arc<TcpStream>,
    /// The driver's wake channel (bounded to one: wakes coalesce).
    wake: Sender<()>,
}

impl Registry {
    fn slots(&self) -> MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection; its driver calls [`leave`](Self::leave) when it ends.
    pub(crate) fn enter(&self, stream: Arc<TcpStream>, wake: Sender<()>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.slots().insert(id, Slot { stream, wake });
        id
    }

    pub(crate) fn leave(&self, id: u64) {
        let mut slots = self.slots();
        slots.remove(&id);
        if slots.is_empty() {
            self.idle.notify_all();
        }
    }

    /// Connections being served.
    pub(crate) fn live(&self) -> usize {
        self.slots().len()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn is_forced(&self) -> bool {
        self.force.load(Ordering::Acquire)
    }

    /// Asks every driver to begin a graceful shutdown (drivers also check the flag when they
    /// start, so a connection accepted meanwhile is not missed).
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for slot in self.slots().values() {
            let _ = slot.wake.try_send(());
        }
    }

    /// Cuts every connection still open: the sockets are shut down, which also ends a write
    /// or read blocked on them.
    pub(crate) fn force_close(&self) {
        self.force.store(true, Ordering::Release);
        for slot in self.slots().values() {
            let _ = slot.stream.shutdown(Shutdown::Both);
            let _ = slot.wake.try_send(());
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
