//! Pooled buffers for the relay loop.
//!
//! A relayed connection needs a read buffer only while bytes are in flight: between a read
//! that returned data and the end of the write that forwards it. The pump takes a buffer from
//! a per-thread pool for each read attempt and hands it back when the read would block, so an
//! idle connection holds no buffer at all (most connections of a proxy are idle: a Telegram
//! client keeps several open and uses one) and a busy one does not allocate per read.
//!
//! Two sizes: a direction starts with a [`RELAY_BUF`] buffer and moves to a [`BULK_BUF`] one
//! while its reads keep filling the buffer (a download or upload in progress), and back when a
//! read comes back short. Per byte moved, a bulk transfer then costs an eighth of the read and
//! write system calls and of the TCP receive-window updates each read triggers; chatty
//! connections never touch the big buffers. At most [`BULK_MAX`] bulk buffers are on loan in
//! the process; past that a direction stays with the small size.
//!
//! The pools are thread-local (no lock, no contention between tokio workers); a buffer taken
//! on one worker and released on another simply changes pools. Each pool keeps at most
//! [`POOL_MAX`] buffers of each kind, so the memory kept for reuse is bounded per thread, not
//! per connection.

use std::{
    cell::RefCell,
    ops::{Deref, DerefMut},
    sync::atomic::{AtomicUsize, Ordering},
    thread::LocalKey,
};

/// Size of a relay read buffer for a direction that is not (or not yet) moving bulk data.
/// Fake-TLS output is re-framed into 16 KiB records anyway, so it need not match the record
/// size; 32 KiB costs fewer reads than 16 KiB when a connection turns out to move data.
pub const RELAY_BUF: usize = 32 * 1024;

/// Size of a read buffer for a direction whose reads fill [`RELAY_BUF`]: larger reads cut the
/// system calls per byte, and the CPU cost per GB of bulk transfer falls up to this size (the
/// operator guide's performance notes have the figures).
pub const BULK_BUF: usize = 256 * 1024;

/// Bulk buffers on loan at once in the whole process (256 MiB).
pub const BULK_MAX: usize = 1024;

/// Buffers of each kind a thread keeps for reuse.
pub const POOL_MAX: usize = 32;

/// Bulk buffers a thread keeps for reuse.
pub const BULK_POOL_MAX: usize = 8;

/// Bulk buffers on loan now (process-wide).
static BULK_ON_LOAN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static READ_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static BULK_POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
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
    /// [`BULK_BUF`] initialized bytes, read into.
    Bulk,
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
        PooledBuf::initialized(&READ_POOL, RELAY_BUF, Kind::Read)
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

    /// A read buffer of [`BULK_BUF`] initialized bytes, or of [`RELAY_BUF`] when
    /// [`BULK_MAX`] bulk buffers are already on loan.
    pub fn bulk() -> PooledBuf {
        if !take_slot(&BULK_ON_LOAN, BULK_MAX) {
            return PooledBuf::read();
        }
        PooledBuf::initialized(&BULK_POOL, BULK_BUF, Kind::Bulk)
    }

    /// A buffer of `len` initialized bytes from `pool`, or a new one.
    fn initialized(
        pool: &'static LocalKey<RefCell<Vec<Vec<u8>>>>,
        len: usize,
        kind: Kind,
    ) -> PooledBuf {
        let buf = pool
            .with(|p| p.borrow_mut().pop())
            // Zeroed once at allocation; later users overwrite what they read.
            .unwrap_or_else(|| vec![0; len]);
        lent(1);
        PooledBuf { buf, kind }
    }

    /// Whether this is a bulk buffer.
    pub fn is_bulk(&self) -> bool {
        self.kind == Kind::Bulk
    }

    /// The vector itself (for a scratch buffer that is appended to).
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

/// Counts one more loan in `on_loan` unless `max` are out already.
fn take_slot(on_loan: &AtomicUsize, max: usize) -> bool {
    on_loan
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
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
        if self.kind == Kind::Bulk {
            BULK_ON_LOAN.fetch_sub(1, Ordering::Relaxed);
        }
        let (pool, max) = match self.kind {
            // A read buffer must keep its full initialized length to be reused as one.
            Kind::Read if buf.len() == RELAY_BUF => (&READ_POOL, POOL_MAX),
            Kind::Bulk if buf.len() == BULK_BUF => (&BULK_POOL, BULK_POOL_MAX),
            Kind::Read | Kind::Bulk => return,
            // Keep scratch capacity bounded: a huge one-off output is not worth keeping.
            // Fake-TLS output of a bulk read is the read plus record headers.
            Kind::Scratch if buf.capacity() <= 2 * BULK_BUF => (&SCRATCH_POOL, POOL_MAX),
            Kind::Scratch => return,
        };
        // `try_with`: during thread teardown the pool may already be gone; then just free.
        let _ = pool.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && p.len() < max
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

/// Bulk buffers currently pooled on this thread.
#[cfg(test)]
pub(crate) fn bulk_pooled() -> usize {
    BULK_POOL.with(|p| p.borrow().len())
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
    fn bulk_buffers_are_pooled_and_bounded() {
        let a = PooledBuf::bulk();
        assert!(a.is_bulk());
        assert_eq!(a.len(), BULK_BUF);
        let ptr = a.as_ptr();
        drop(a);
        let b = PooledBuf::bulk();
        assert_eq!(
            b.as_ptr(),
            ptr,
            "the pooled bulk buffer is handed out again"
        );
        drop(b);
        let many: Vec<PooledBuf> = (0..BULK_POOL_MAX + 4).map(|_| PooledBuf::bulk()).collect();
        assert!(many.iter().all(PooledBuf::is_bulk));
        drop(many);
        assert_eq!(bulk_pooled(), BULK_POOL_MAX);
    }

    #[test]
    fn loans_stop_at_the_cap() {
        let on_loan = AtomicUsize::new(0);
        assert!((0..3).all(|_| take_slot(&on_loan, 3)));
        assert!(!take_slot(&on_loan, 3));
        assert_eq!(on_loan.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn oversized_scratch_is_freed() {
        let (_, before) = pooled();
        let mut s = PooledBuf::scratch();
        s.vec_mut().reserve(4 * BULK_BUF);
        drop(s);
        assert!(pooled().1 <= before.max(1));
    }
}
