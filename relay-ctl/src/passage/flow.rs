//! One flow in the maps: its sockets, its control and counters, and what userspace tracks to
//! know when every redirected byte has been written into the target.

use std::{io, os::fd::BorrowedFd};

use relay_common::passage::{FlowControl, FlowCounts};

use super::{Passage, socket};

/// A source and target socket in the maps. Dropping it takes every entry out again.
pub struct Flow<'a> {
    passage: &'a Passage,
    source: u64,
    target: u64,
    control: FlowControl,
    /// [`socket::written`] of the target when the flow opened.
    base: u64,
    /// Bytes userspace wrote into the target since.
    by_userspace: u64,
}

impl<'a> Flow<'a> {
    pub(super) fn open(
        passage: &'a Passage,
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        budget: u64,
    ) -> io::Result<Flow<'a>> {
        let source = socket::cookie(from)?;
        let target = socket::cookie(to)?;
        let base = socket::written(to)?;
        let control = FlowControl {
            target,
            budget,
            settled: 0,
        };
        let flow = Flow {
            passage,
            source,
            target,
            control,
            base,
            by_userspace: 0,
        };
        // Counters and control before the sockets: the program finds a flow whole or not at
        // all. A failure drops `flow`, which removes whatever went in.
        passage.create_counts(source).map_err(to_io)?;
        passage.set_control(source, control).map_err(to_io)?;
        passage
            .insert_sockets(source, from, target, to)
            .map_err(to_io)?;
        // Segments queued before the source joined (or while it joined) go through the
        // program now rather than wait for the next one.
        socket::kick(from)?;
        Ok(flow)
    }

    /// What the program counted so far.
    pub fn counts(&self) -> io::Result<FlowCounts> {
        self.passage.counts(self.source).map_err(to_io)
    }

    /// Lets the program redirect `budget` bytes in all (counted from the flow's start).
    pub fn set_budget(&mut self, budget: u64) -> io::Result<()> {
        if budget == self.control.budget {
            return Ok(());
        }
        self.control.budget = budget;
        self.passage
            .set_control(self.source, self.control)
            .map_err(to_io)
    }

    /// Userspace is done with `n` more of the bytes the program passed to it; `written` of
    /// them went into the target.
    pub fn settle(&mut self, n: u64, written: u64) -> io::Result<()> {
        self.by_userspace += written;
        self.control.settled += n;
        self.passage
            .set_control(self.source, self.control)
            .map_err(to_io)
    }

    /// Whether every byte redirected so far (and every byte userspace wrote) is in the
    /// target's send queue or acknowledged, rather than queued for the kernel's worker.
    pub fn drained(&self, to: BorrowedFd<'_>) -> io::Result<bool> {
        let redirected = self.counts()?.redirected;
        let written = socket::written(to)?.wrapping_sub(self.base);
        Ok(written >= redirected + self.by_userspace)
    }
}

impl Drop for Flow<'_> {
    fn drop(&mut self) {
        self.passage.remove_sockets(self.source, self.target);
        self.passage.remove_control(self.source);
        self.passage.remove_counts(self.source);
    }
}

/// The system call's own error where there is one (its errno tells why).
fn to_io(e: aya::maps::MapError) -> io::Error {
    match e {
        aya::maps::MapError::SyscallError(e) => e.io_error,
        other => io::Error::other(other),
    }
}
