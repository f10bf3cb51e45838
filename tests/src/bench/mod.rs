//! `cargo xtask bench`: relay's performance harness.
//!
//! The orchestrator ([`scenarios`], binary `relay-bench`) creates two network namespaces
//! joined by a veth pair ([`net`]), starts the fast fake DC (`relay-fakedc`) and relay-ctl with
//! generated configurations in the server namespace, drives load from the client namespace
//! (`relay-loadgen`, `relay-flood`), reads CPU time and memory from `/proc` ([`procfs`]) at
//! the generator's `begin`/`end` lines, and prints a markdown report plus a JSON file
//! ([`report`]). Nothing is asserted about timing: targets are reported as pass or fail, and
//! the run fails only when the harness itself cannot run a scenario. [`xdp`] measures the XDP
//! program alone, in the kernel, with `BPF_PROG_TEST_RUN`.

pub mod args;
pub mod crypto;
pub mod epoll;
pub mod net;
pub mod peers;
pub mod procfs;
pub mod report;
pub mod scenarios;
pub mod spawn;
pub mod spinners;
pub mod xdp;
