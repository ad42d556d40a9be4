//! Bytes waiting to be written: small frames coalesce into one buffer, large payloads and
//! shared broadcast frames are queued without copying.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

/// Coalescing stops at this size so a burst of small frames becomes one write, not one huge
/// reallocation.
const COALESCE_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Owned(v) => v,
            Self::Shared(a) => a,
        }
    }
}

/// A FIFO of outgoing bytes. Holds no allocation once drained.
#[derive(Debug, Default)]
pub(crate) struct TransmitQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Bytes pending in all chunks.
    len: usize,
    /// The back chunk is a coalescing buffer that small frames may be appended to.
    tail_open: bool,
}

impl TransmitQueue {
    /// Appends bytes produced by `f` to the coalescing tail buffer.
    pub(crate) fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let reuse = self.tail_open
            && matches!(self.chunks.back(), Some(Chunk::Owned(v)) if v.len() < COALESCE_LIMIT);
        if !reuse {
            self.chunks.push_back(Chunk::Owned(Vec::new()));
            self.tail_open = true;
        }
        let Some(Chunk::Owned(buf)) = self.chunks.back_mut() else {
            unreachable!("the tail was just ensured to be an owned buffer")
        };
        let before = buf.len();
        f(buf);
        let added = buf.len() - before;
        self.len += added;
    }

    /// Queues an owned buffer as its own chunk (no copy).
    pub(crate) fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Owned(bytes));
        self.tail_open = false;
    }

    /// Queues a shared buffer (a broadcast frame encoded once).
    pub(crate) fn push_shared(&mut self, bytes: Arc<[u8]>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Shared(bytes));
        self.tail_open = false;
    }

    /// The next contiguous bytes to write.
    pub(crate) fn front(&self) -> Option<&[u8]> {
        self.chunks.front().map(|c| &c.bytes()[self.offset..])
    }

    /// Fills `dst` with the pending chunks, in order; returns how many were filled.
    pub(crate) fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            if n == dst.len() {
                break;
            }
            let bytes = if i == 0 { &chunk.bytes()[self.offset..] } else { chunk.bytes() };
            dst[n] = IoSlice::new(bytes);
            n += 1;
        }
        n
    }

    /// Marks `n` bytes as written.
    ///
    /// # Panics
    /// If `n` is more than is pending: that is a bug in the caller's drive loop.
    pub(crate) fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advanced {n} bytes but only {} are pending", self.len);
        self.len -= n;
        while n > 0 {
            let front_len = self.chunks.front().map_or(0, |c| c.bytes().len()) - self.offset;
            if n < front_len {
                self.offset += n;
                return;
            }
            n -= front_len;
            self.chunks.pop_front();
            self.offset = 0;
        }
        if self.chunks.is_empty() {
            self.clear();
        }
    }

    /// Drops everything pending and releases the memory.
    pub(crate) fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.offset = 0;
        self.len = 0;
        self.tail_open = false;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_small_frames_and_keeps_big_ones_separate() {
        let mut q = TransmitQueue::default();
        q.push_with(|b| b.extend_from_slice(b"ab"));
        q.push_with(|b| b.extend_from_slice(b"cd"));
        q.push_owned(vec![b'e'; 10]);
        q.push_shared(Arc::from(&b"fg"[..]));
        q.push_with(|b| b.extend_from_slice(b"h"));
        assert_eq!(q.len(), 17);
        let mut io = [IoSlice::new(&[]); 8];
        let n = q.slices(&mut io);
        let joined: Vec<u8> = io[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(n, 4);
        assert_eq!(joined, b"abcdeeeeeeeeeefgh");
        q.advance(3);
        assert_eq!(q.front(), Some(&b"d"[..]));
        q.advance(13);
        assert_eq!(q.front(), Some(&b"h"[..]));
        q.advance(1);
        assert!(q.is_empty());
        assert_eq!(q.front(), None);
    }
}
