//! Pooled buffers for the relay loop.
//!
//! A relayed connection needs a read buffer only while bytes are in flight: between a read
//! that returned data and the end of the write that forwards it. The pump takes a buffer from
//! a per-thread pool for each read attempt and hands it back when the read would block, so an
//! idle connection holds no buffer at all (most connections of a proxy are idle: a Telegram
//! client keeps several open and uses one) and a busy one does not allocate per read.
//!
//! The pools are thread-local (no lock, no contention between tokio workers); a buffer taken
//! on one worker and released on another simply changes pools. Each pool keeps at most
//! [`POOL_MAX`] buffers of each kind, so the memory kept for reuse is bounded per thread, not
//! per connection.

use std::{
    cell::RefCell,
    ops::{Deref, DerefMut},
};

/// Size of a relay read buffer. 32 KiB measured better than 16 KiB on the bulk path (fewer
/// reads and writes per byte, see the commit that set it); fake-TLS output is re-framed into
/// 16 KiB records anyway, so it does not need to match the record size.
pub const RELAY_BUF: usize = 32 * 1024;

/// Buffers of each kind a thread keeps for reuse.
pub const POOL_MAX: usize = 32;

thread_local! {
    static READ_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Buffers taken and not yet dropped on this thread (tests only: whether an idle pair
    /// really gave its buffers back).
    static ON_LOAN: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// Counts a loan (tests only).
fn lent(delta: isize) {
    #[cfg(test)]
    let _ = ON_LOAN.try_with(|c| c.set(c.get() + delta));
    #[cfg(not(test))]
    let _ = delta;
}

/// Which pool a buffer returns to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// [`RELAY_BUF`] initialized bytes, read into.
    Read,
    /// Empty with capacity kept: output a transform builds (fake-TLS records).
    Scratch,
}

/// A buffer on loan from this thread's pool; dropping it gives it back (or frees it when the
/// pool is full).
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    kind: Kind,
}

impl PooledBuf {
    /// A read buffer of [`RELAY_BUF`] initialized bytes (contents unspecified).
    pub fn read() -> PooledBuf {
        let buf = READ_POOL
            .with(|p| p.borrow_mut().pop())
            // Zeroed once at allocation; later users overwrite what they read.
            .unwrap_or_else(|| vec![0; RELAY_BUF]);
        lent(1);
        PooledBuf {
            buf,
            kind: Kind::Read,
        }
    }

    /// An empty scratch vector, possibly with capacity left from an earlier use.
    pub fn scratch() -> PooledBuf {
        let mut buf = SCRATCH_POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_default();
        buf.clear();
        lent(1);
        PooledBuf {
            buf,
            kind: Kind::Scratch,
        }
    }

    /// The vector itself (for a scratch buffer that is appended to).
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        lent(-1);
        let buf = std::mem::take(&mut self.buf);
        let pool = match self.kind {
            // A read buffer must keep its full initialized length to be reused as one.
            Kind::Read if buf.len() == RELAY_BUF => &READ_POOL,
            Kind::Read => return,
            // Keep scratch capacity bounded: a huge one-off output is not worth keeping.
            Kind::Scratch if buf.capacity() <= 2 * RELAY_BUF => &SCRATCH_POOL,
            Kind::Scratch => return,
        };
        // `try_with`: during thread teardown the pool may already be gone; then just free.
        let _ = pool.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && p.len() < POOL_MAX
            {
                p.push(buf);
            }
        });
    }
}

/// Buffers currently pooled on this thread (read, scratch).
#[cfg(test)]
pub(crate) fn pooled() -> (usize, usize) {
    (
        READ_POOL.with(|p| p.borrow().len()),
        SCRATCH_POOL.with(|p| p.borrow().len()),
    )
}

/// Buffers taken on this thread and not given back yet.
#[cfg(test)]
pub(crate) fn on_loan() -> isize {
    ON_LOAN.with(std::cell::Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let (read0, scratch0) = pooled();
        let a = PooledBuf::read();
        assert_eq!(a.len(), RELAY_BUF);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pooled().0, read0 + 1);
        let b = PooledBuf::read();
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer is handed out again");
        drop(b);

        let mut s = PooledBuf::scratch();
        s.vec_mut().extend_from_slice(b"abc");
        drop(s);
        let s = PooledBuf::scratch();
        assert!(s.is_empty(), "scratch comes back cleared");
        drop(s);
        assert_eq!(pooled().1, scratch0.max(1));

        let many: Vec<PooledBuf> = (0..POOL_MAX + 8).map(|_| PooledBuf::read()).collect();
        drop(many);
        assert_eq!(pooled().0, POOL_MAX);
    }

    #[test]
    fn oversized_scratch_is_freed() {
        let (_, before) = pooled();
        let mut s = PooledBuf::scratch();
        s.vec_mut().reserve(4 * RELAY_BUF);
        drop(s);
        assert!(pooled().1 <= before.max(1));
    }
}
