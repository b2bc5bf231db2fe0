//! A write queue of `Bytes` chunks that is itself a [`Buf`], so everything
//! gathered from one drained read goes out in one vectored write.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// Chunks waiting to be written, in order. Reused across writes, so queuing a
/// chunk does not allocate once the queue has grown to its working size.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl OutQueue {
    /// Appends a chunk (empty chunks are dropped).
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// How many chunks are queued.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// True when nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Buf for OutQueue {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map(|c| c.as_ref()).unwrap_or(&[])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    fn advance(&mut self, cnt: usize) {
        let mut cnt = cnt.min(self.remaining);
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt >= front.len() {
                cnt -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(cnt);
                cnt = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_one_buffer() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.remaining(), 11);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(q.chunks_vectored(&mut slices), 2);
        q.advance(3);
        assert_eq!(q.chunk(), b"lo ");
        q.advance(5);
        assert_eq!(q.chunk(), b"rld");
        let rest = q.copy_to_bytes(3);
        assert_eq!(&rest[..], b"rld");
        assert!(q.is_empty());
    }
}
