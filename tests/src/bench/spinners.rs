//! Idle spinners: one busy thread per CPU at `SCHED_IDLE` while latency is measured.
//!
//! In a virtual machine a halted vCPU takes tens of microseconds to wake (an exit to the
//! hypervisor and back), so a sequential request/response between mostly idle processes
//! measures idle wake-ups as much as the network path, and the path with more busy processes
//! (through the relay) came out faster than the direct one. `SCHED_IDLE` threads run only when
//! nothing else wants the CPU and give way at once to any task that wakes, so they keep the
//! CPUs out of the halt state without taking time from the processes measured.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use nix::{
    libc,
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};

/// The spinning threads; dropping this stops them.
pub struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Spinners {
    /// One spinner pinned to each CPU this process may use.
    pub fn start() -> Spinners {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut set = CpuSet::new();
                    if set.set(cpu).is_err() || sched_setaffinity(Pid::from_raw(0), &set).is_err() {
                        return;
                    }
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: plain system call on this thread with a valid parameter block.
                    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                        // At normal priority it would compete with what is measured.
                        return;
                    }
                    // No PAUSE instruction (`spin_loop`): under a hypervisor a PAUSE loop reads as
                    // a vCPU spinning on a lock and gets it descheduled, the opposite of the aim.
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
