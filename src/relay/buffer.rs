//! Relay buffers, lent to a socket only while it has data.
//!
//! An idle WebSocket holds no buffer: the relay waits for readability first and takes a
//! buffer only to read. Buffers are recycled through a small per-thread free list, so the
//! busy path does no allocation and no locking (tokio's worker threads each keep their
//! own list; a buffer freed on another thread simply joins that thread's list).

use std::cell::RefCell;

/// Free buffers kept per thread; beyond this they go back to the allocator, so a burst
/// does not pin memory forever.
const KEEP_PER_THREAD: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Takes a buffer of exactly `size` bytes (contents unspecified).
pub(crate) fn take(size: usize) -> Box<[u8]> {
    let reused = FREE.with(|f| {
        let mut f = f.borrow_mut();
        match f.last() {
            Some(b) if b.len() == size => f.pop(),
            _ => None,
        }
    });
    reused.unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
}

/// Returns a buffer for reuse.
pub(crate) fn give(buf: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP_PER_THREAD {
            f.push(buf);
        }
    });
}
