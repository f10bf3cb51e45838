//! The XDP program and the userspace gate must reach the same verdict on the same traffic:
//! both run `relay_common::decide`, over their own lists, bans and buckets. This test sets up
//! generated source states (allowlisted, blocked, drop- or front-banned, lapsed bans) through
//! the same `Change`s applied to both enforcers, then runs both over the same generated TCP
//! segments (the kernel with `BPF_PROG_TEST_RUN`) and requires identical verdicts. The rate
//! state of each source is whatever the earlier segments of the run left in its buckets, so
//! bursts run out and state budgets are spent on both sides alike.
//!
//! Everything is drawn from a fixed seed, so a failure reproduces. Limiter rates are 0 (no
//! refill): the two sides read the clock at slightly different moments, and without refill
//! that cannot change a verdict.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use aya::{
    Ebpf,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use nix::{
    sched::{CpuSet, sched_getcpu, sched_setaffinity},
    time::{ClockId, clock_gettime},
    unistd::Pid,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use relay_common::{BanAction, BanEntry, BanReason, Verdict, XdpConfig, maps as names};
use relay_ctl::{
    admission::{Change, Enforce as _, Enforcers, Gate, PrefixList},
    config::Cidr,
    xdp::{Logger, XdpMaps},
};
use relay_tests::{packet::Frame, privilege::privileged};

/// The seed every scenario is drawn from.
const SEED: u64 = 0x05ee_da21;
/// Scenarios, each with a freshly loaded program (fresh maps) and a fresh gate.
const SCENARIOS: usize = 8;
/// Segments per scenario.
const SEGMENTS: usize = 60;
/// The listen port.
const PORT: u16 = 443;

/// CLOCK_MONOTONIC now, in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    u64::try_from(ts.tv_sec()).expect("seconds") * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).expect("nanoseconds")
}

/// Pins this thread to the CPU it runs on, so every test run sees one per-CPU state budget,
/// as the gate has one.
fn pin_to_current_cpu() {
    let cpu = sched_getcpu().expect("sched_getcpu");
    let mut set = CpuSet::new();
    set.set(cpu).expect("CPU in set");
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// The sources of a scenario: IPv4 addresses in two /26s, and IPv6 addresses of which some
/// share a /64 (one ban and one bucket per /64).
fn sources() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = [1, 2, 3, 4, 65, 66, 67]
        .into_iter()
        .map(|d| IpAddr::V4(Ipv4Addr::new(198, 51, 100, d)))
        .collect();
    for (net, host) in [(1, 1), (1, 2), (2, 1), (3, 1), (3, 9)] {
        out.push(IpAddr::V6(Ipv6Addr::new(
            0x2001, 0xdb8, 0, net, 0, 0, 0, host,
        )));
    }
    out
}

/// A prefix covering `source`: the address itself, or its IPv4 /26 or IPv6 /64.
fn prefix_of(rng: &mut StdRng, source: IpAddr) -> Cidr {
    let len = match (source, rng.random_bool(0.5)) {
        (IpAddr::V4(_), true) => 32,
        (IpAddr::V4(_), false) => 26,
        (IpAddr::V6(_), true) => 128,
        (IpAddr::V6(_), false) => 64,
    };
    format!("{source}/{len}").parse().expect("a prefix")
}

/// Limits with no refill: the limiter on or off, small bursts, and a state budget that is
/// either plentiful or a few buckets.
fn config(rng: &mut StdRng) -> XdpConfig {
    XdpConfig {
        syn_rate_per_sec: 0,
        syn_burst: rng.random_range(1..=4),
        new_state_per_cpu_per_sec: if rng.random_bool(0.3) {
            rng.random_range(1..=4)
        } else {
            1_000_000
        },
        flags: if rng.random_bool(0.8) {
            XdpConfig::FLAG_SYN_LIMIT
        } else {
            0
        },
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: rng.random_range(1..=3),
    }
}

/// The lists and bans of a scenario, as the policy would hand them to its enforcers.
fn state(rng: &mut StdRng, sources: &[IpAddr]) -> Vec<Change> {
    let now = monotonic_ns();
    let mut changes = Vec::new();
    for &source in sources {
        if rng.random_bool(0.15) {
            changes.push(Change::InsertPrefix(
                PrefixList::Allow,
                prefix_of(rng, source).0,
            ));
        }
        if rng.random_bool(0.25) {
            changes.push(Change::InsertPrefix(
                PrefixList::Block,
                prefix_of(rng, source).0,
            ));
        }
        if rng.random_bool(0.5) {
            let action = if rng.random_bool(0.5) {
                BanAction::Front
            } else {
                BanAction::Drop
            };
            let expires_ns = match rng.random_range(0..3) {
                0 => 1,
                1 => BanEntry::NEVER,
                _ => now + 3_600_000_000_000,
            };
            changes.push(Change::Ban(
                source,
                BanEntry::new(expires_ns, BanReason::BadSecret, action),
            ));
        }
    }
    changes
}

/// A TCP segment of one of the kinds a client sends; whether it is a bare SYN.
fn segment(rng: &mut StdRng, source: IpAddr) -> (Vec<u8>, bool, &'static str) {
    let frame = Frame::tcp(source, PORT);
    match rng.random_range(0..10) {
        0..=5 => (frame.syn().build(), true, "SYN"),
        6 => (frame.syn().ack().build(), false, "SYN-ACK"),
        7 => (frame.ack().build(), false, "ACK"),
        8 => (frame.ack().psh().build(), false, "PSH-ACK"),
        _ => (frame.rst().build(), false, "RST"),
    }
}

/// One loaded program and its maps.
struct Kernel {
    ebpf: Ebpf,
    /// Must outlive the program: it owns the log ring buffer's fd.
    _logger: Logger,
    maps: XdpMaps,
}

impl Kernel {
    fn load() -> Kernel {
        let (mut ebpf, logger) = relay_tests::kernel::load_xdp();
        let maps = XdpMaps::take(&mut ebpf).expect("the program's maps");
        Kernel {
            ebpf,
            _logger: logger,
            maps,
        }
    }

    /// Runs the program on `frame`; the verdict is the one counter that moved.
    fn verdict(&self, frame: &[u8]) -> Verdict {
        let program: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .expect("program")
            .try_into()
            .expect("XDP");
        let before = self.maps.verdict_counts().expect("verdict counters");
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .expect("test run");
        let after = self.maps.verdict_counts().expect("verdict counters");
        let moved: Vec<Verdict> = Verdict::ALL
            .into_iter()
            .filter(|v| after[*v as usize] != before[*v as usize])
            .collect();
        assert_eq!(moved.len(), 1, "one counter moved: {moved:?}");
        moved[0]
    }
}

#[test]
fn the_kernel_and_the_gate_agree_on_generated_traffic() {
    if !privileged("the_kernel_and_the_gate_agree_on_generated_traffic") {
        return;
    }
    pin_to_current_cpu();
    let mut rng = StdRng::seed_from_u64(SEED);
    let sources = sources();
    let mut reached = std::collections::BTreeSet::new();
    let mut cases = 0;
    for scenario in 0..SCENARIOS {
        let mut kernel = Kernel::load();
        let mut gate = Arc::new(Gate::default());
        let config = config(&mut rng);
        let mut changes = vec![Change::Limits(config), Change::Ports(vec![PORT])];
        changes.extend(state(&mut rng, &sources));
        Enforcers {
            kernel: Some(&mut kernel.maps),
            gate: &mut gate,
        }
        .enforce_or_refuse(&changes)
        .expect("both enforcers take the state");
        for n in 0..SEGMENTS {
            let source = sources[rng.random_range(0..sources.len())];
            let (frame, bare_syn, kind) = segment(&mut rng, source);
            let in_kernel = kernel.verdict(&frame);
            let in_gate = gate.decide(source, monotonic_ns(), bare_syn);
            assert_eq!(
                in_kernel, in_gate,
                "scenario {scenario} segment {n}: {kind} from {source}, under {config:?} and \
                 {changes:#?}"
            );
            reached.insert(in_kernel.name());
            cases += 1;
        }
    }
    assert_eq!(cases, SCENARIOS * SEGMENTS);
    // The generated cases reach every verdict a TCP segment to a listen port can get.
    for verdict in [
        Verdict::Passed,
        Verdict::Allowlisted,
        Verdict::BlockedCidr,
        Verdict::Banned,
        Verdict::SynRateLimited,
        Verdict::StateSuppressed,
        Verdict::BannedFronted,
        Verdict::BannedSynLimited,
    ] {
        assert!(
            reached.contains(verdict.name()),
            "no case reached {}: {reached:?}",
            verdict.name()
        );
    }
}
