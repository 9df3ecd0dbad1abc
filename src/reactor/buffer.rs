//! Byte buffers for partial input and pending output, and the pool they return to.
//!
//! An idle connection holds no buffer at all: it borrows one from the pool when a partial
//! frame or unwritten output has to outlive a turn, and gives it back as soon as it is empty.
//! The pool keeps freed buffers for reuse so that a push to thousands of connections does not
//! cost thousands of `malloc`/`free` pairs per turn; it is bounded in total bytes.

/// Capacity of a freshly allocated buffer: a few typical frames.
const INITIAL_CAPACITY: usize = 512;
/// Buffers that grew past this are freed rather than pooled.
const MAX_POOLED_CAPACITY: usize = 16 * 1024;

pub struct BufferPool {
    free: Vec<Vec<u8>>,
    pooled_bytes: usize,
    max_pooled_bytes: usize,
}

impl BufferPool {
    pub fn new(max_pooled_bytes: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            pooled_bytes: 0,
            max_pooled_bytes,
        }
    }

    /// An empty buffer with some capacity.
    pub fn take(&mut self) -> Vec<u8> {
        match self.free.pop() {
            Some(buf) => {
                self.pooled_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(INITIAL_CAPACITY),
        }
    }

    /// Returns a buffer; its contents are discarded.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity == 0
            || capacity > MAX_POOLED_CAPACITY
            || self.pooled_bytes + capacity > self.max_pooled_bytes
        {
            return;
        }
        buf.clear();
        self.pooled_bytes += capacity;
        self.free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_returned_buffers_up_to_the_byte_bound() {
        let mut pool = BufferPool::new(2 * INITIAL_CAPACITY);
        let bufs: Vec<_> = (0..3).map(|_| pool.take()).collect();
        let ptrs: Vec<_> = bufs.iter().map(|b| b.as_ptr()).collect();
        for mut b in bufs {
            b.extend_from_slice(b"data");
            pool.give(b);
        }
        // Only two fit under the bound; they come back empty.
        let a = pool.take();
        let b = pool.take();
        assert!(a.is_empty() && b.is_empty());
        assert!(ptrs.contains(&a.as_ptr()) && ptrs.contains(&b.as_ptr()));
        assert_eq!(pool.pooled_bytes, 0);
    }

    #[test]
    fn oversized_and_unallocated_buffers_are_not_kept() {
        let mut pool = BufferPool::new(usize::MAX);
        pool.give(Vec::new());
        pool.give(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert!(pool.free.is_empty());
    }
}
