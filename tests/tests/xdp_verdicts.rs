//! The XDP program run on hand-built frames with `BPF_PROG_TEST_RUN`: no interface, no
//! attachment, one fresh program instance (and so fresh maps) per test.
//!
//! Every frame is checked twice over: the XDP action the program returns, and the per-CPU
//! verdict counters, of which exactly the expected one must have moved by exactly one. The
//! program must also hand the frame back unmodified.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use nix::{
    errno::Errno,
    sched::{CpuSet, sched_getcpu, sched_setaffinity},
    time::{ClockId, clock_gettime},
    unistd::Pid,
};
use relay_common::{
    BanAction, BanEntry, BanReason, StateBudget, Verdict, XdpConfig, maps as names,
};
use relay_tests::{
    packet::{
        ETH_HLEN, ETH_P_8021AD, Frame, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
        IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, hex,
    },
    privilege::privileged,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The TC classifier's answers: drop, or "not decided here" (tcx: run the next program).
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;

/// The relay's listen port in every test.
const PORT: u16 = 443;
/// A port the relay does not listen on.
const OTHER_PORT: u16 = 80;

/// The XDP action a verdict must produce. Written out here rather than taken from
/// `Verdict::drops`, so the test does not trust the code under test.
fn action(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::BlockedCidr
        | Verdict::Banned
        | Verdict::SynRateLimited
        | Verdict::BannedSynLimited => XDP_DROP,
        Verdict::BannedFronted
        | Verdict::Passed
        | Verdict::NotOurs
        | Verdict::Allowlisted
        | Verdict::Unparsed
        | Verdict::StateSuppressed
        | Verdict::Fragment => XDP_PASS,
    }
}

fn v4(d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, d)
}

fn v6(prefix: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, prefix, 0, 0, 0, host)
}

/// CLOCK_MONOTONIC now, in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    u64::try_from(ts.tv_sec()).expect("seconds") * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).expect("nanoseconds")
}

/// Pins the calling thread (this test's thread only) to the CPU it runs on and returns that
/// CPU, so every test run sees the same per-CPU state.
fn pin_to_current_cpu() -> usize {
    let cpu = sched_getcpu().expect("sched_getcpu");
    let mut set = CpuSet::new();
    set.set(cpu).expect("CPU in set");
    sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
    assert_eq!(sched_getcpu().expect("sched_getcpu"), cpu, "pinned");
    cpu
}

/// `"a.b.c.d/len"` or `"v6::/len"` as address and prefix length.
fn cidr(text: &str) -> (IpAddr, u32) {
    let (addr, len) = text.split_once('/').expect("CIDR with /");
    (
        addr.parse().expect("CIDR address"),
        len.parse().expect("CIDR length"),
    )
}

/// The limiter on, no refill, a burst of 3, and a state budget that never runs out.
const DEFAULT_CONFIG: XdpConfig = XdpConfig {
    syn_rate_per_sec: 0,
    syn_burst: 3,
    new_state_per_cpu_per_sec: 1_000_000,
    flags: XdpConfig::FLAG_SYN_LIMIT,
    banned_syn_rate_per_sec: 0,
    banned_syn_burst: 2,
};

/// One loaded instance of the XDP program and handles on its maps.
struct Fixture {
    ebpf: Ebpf,
    /// Must outlive the program: it owns the log ring buffer's fd.
    _logger: relay_ctl::xdp::Logger,
    config: Array<MapData, XdpConfig>,
    ports: Array<MapData, [u8; names::LISTEN_PORT_SLOTS]>,
    allow_v4: LpmTrie<MapData, [u8; 4], u8>,
    allow_v6: LpmTrie<MapData, [u8; 16], u8>,
    block_v4: LpmTrie<MapData, [u8; 4], u8>,
    block_v6: LpmTrie<MapData, [u8; 16], u8>,
    bans_v4: HashMap<MapData, [u8; 4], BanEntry>,
    bans_v6: HashMap<MapData, [u8; 8], BanEntry>,
    state_budget: PerCpuArray<MapData, StateBudget>,
    verdicts: PerCpuArray<MapData, u64>,
    unrated_v4: HashMap<MapData, [u8; 4], u64>,
    unrated_v6: HashMap<MapData, [u8; 8], u64>,
    unrated_any: Array<MapData, u64>,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> T
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .unwrap_or_else(|| panic!("map {name} in the object"));
    T::try_from(map).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

impl Fixture {
    /// Loads the program, sets `config`, and makes [`PORT`] a listen port.
    fn new(config: XdpConfig) -> Fixture {
        let (mut ebpf, logger) = relay_tests::kernel::load_xdp();
        let classifier: &mut SchedClassifier = ebpf
            .program_mut(names::PROGRAM_TC)
            .expect("TC program in the object")
            .try_into()
            .expect("a TC classifier");
        classifier.load().expect("verifier accepts the classifier");
        let mut fixture = Fixture {
            config: take(&mut ebpf, names::CONFIG),
            ports: take(&mut ebpf, names::LISTEN_PORTS),
            allow_v4: take(&mut ebpf, names::ALLOW_V4),
            allow_v6: take(&mut ebpf, names::ALLOW_V6),
            block_v4: take(&mut ebpf, names::BLOCK_V4),
            block_v6: take(&mut ebpf, names::BLOCK_V6),
            bans_v4: take(&mut ebpf, names::BANS_V4),
            bans_v6: take(&mut ebpf, names::BANS_V6),
            state_budget: take(&mut ebpf, names::STATE_BUDGET),
            verdicts: take(&mut ebpf, names::VERDICTS),
            unrated_v4: take(&mut ebpf, names::UNRATED_V4),
            unrated_v6: take(&mut ebpf, names::UNRATED_V6),
            unrated_any: take(&mut ebpf, names::UNRATED_ANY),
            _logger: logger,
            ebpf,
        };
        fixture.set_config(config);
        fixture.listen(PORT);
        assert_eq!(fixture.counts(), [0; Verdict::COUNT as usize], "fresh maps");
        fixture
    }

    /// Replaces the program's configuration, as a reload does; the allowlist flags stay as
    /// [`Fixture::allow`] set them.
    fn set_config(&mut self, config: XdpConfig) {
        let allow = self.config.get(&0, 0).map_or(0, |c| c.flags) & XdpConfig::ALLOW_FLAGS;
        let flags = (config.flags & !XdpConfig::ALLOW_FLAGS) | allow;
        self.config
            .set(0, XdpConfig { flags, ..config }, 0)
            .expect("write CONFIG");
    }

    /// Sets or clears an allowlist flag, as relay-ctl does around the allowlist's contents.
    fn allow_flag(&mut self, flag: u32, on: bool) {
        let mut config = self.config.get(&0, 0).expect("read CONFIG");
        if on {
            config.flags |= flag;
        } else {
            config.flags &= !flag;
        }
        self.config.set(0, config, 0).expect("write CONFIG");
    }

    /// Makes `port` a listen port.
    fn listen(&mut self, port: u16) {
        let mut ports = self.ports.get(&0, 0).expect("read listen ports");
        ports[usize::from(port)] = 1;
        self.ports.set(0, ports, 0).expect("add listen port");
    }

    /// Stops acting on `port`.
    fn unlisten(&mut self, port: u16) {
        let mut ports = self.ports.get(&0, 0).expect("read listen ports");
        assert_ne!(ports[usize::from(port)], 0, "port {port} was a listen port");
        ports[usize::from(port)] = 0;
        self.ports.set(0, ports, 0).expect("remove listen port");
    }

    fn insert_prefix(
        trie_v4: &mut LpmTrie<MapData, [u8; 4], u8>,
        trie_v6: &mut LpmTrie<MapData, [u8; 16], u8>,
        text: &str,
    ) {
        match cidr(text) {
            (IpAddr::V4(a), len) => trie_v4.insert(&Key::new(len, a.octets()), 1, 0),
            (IpAddr::V6(a), len) => trie_v6.insert(&Key::new(len, a.octets()), 1, 0),
        }
        .unwrap_or_else(|e| panic!("insert {text}: {e}"));
    }

    /// Adds a CIDR to the allowlist, with its family's flag (the program skips an allowlist
    /// whose flag is clear).
    fn allow(&mut self, text: &str) {
        let flag = match cidr(text).0 {
            IpAddr::V4(_) => XdpConfig::FLAG_ALLOW_V4,
            IpAddr::V6(_) => XdpConfig::FLAG_ALLOW_V6,
        };
        self.allow_flag(flag, true);
        Self::insert_prefix(&mut self.allow_v4, &mut self.allow_v6, text);
    }

    /// Adds a CIDR to the blocklist.
    fn block(&mut self, text: &str) {
        Self::insert_prefix(&mut self.block_v4, &mut self.block_v6, text);
    }

    /// Drop-bans one address until `expires_ns` (CLOCK_MONOTONIC).
    fn ban(&mut self, addr: impl Into<IpAddr>, expires_ns: u64) {
        self.ban_with(addr, expires_ns, BanAction::Drop);
    }

    /// Bans one address (an IPv6 address's /64) until `expires_ns` with `action`.
    fn ban_with(&mut self, addr: impl Into<IpAddr>, expires_ns: u64, action: BanAction) {
        let reason = match action {
            BanAction::Drop => BanReason::ConnRate,
            BanAction::Front => BanReason::BadSecret,
        };
        let entry = BanEntry::new(expires_ns, reason, action);
        match addr.into() {
            IpAddr::V4(a) => self.bans_v4.insert(a.octets(), entry, 0),
            IpAddr::V6(a) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&a.octets()[..8]);
                self.bans_v6.insert(prefix, entry, 0)
            }
        }
        .expect("insert ban");
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN`; on success checks that the
    /// program handed the frame back unchanged and returns its XDP action.
    fn try_run(&self, frame: &[u8]) -> Result<u32, ProgramError> {
        let program: &Xdp = self
            .ebpf
            .program(names::PROGRAM)
            .expect("program")
            .try_into()
            .expect("XDP");
        let mut data_out = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            ..TestRunOptions::default()
        })?;
        let out_len = usize::try_from(result.data_size_out).expect("size");
        assert_eq!(
            out_len,
            frame.len(),
            "the program must not resize the frame"
        );
        assert_eq!(
            &data_out[..out_len],
            frame,
            "the program must not modify the frame"
        );
        Ok(result.return_value)
    }

    /// Runs the TC classifier once on `frame` and returns its TC action.
    fn run_tc(&self, frame: &[u8]) -> i32 {
        let program: &SchedClassifier = self
            .ebpf
            .program(names::PROGRAM_TC)
            .expect("program")
            .try_into()
            .expect("classifier");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("TC test run of [{}]: {e:?}", hex(frame)));
        result.return_value as i32
    }

    /// Like [`Fixture::expect`], through the TC classifier.
    #[track_caller]
    fn expect_tc(&self, what: &str, frame: &[u8], verdict: Verdict) {
        let before = self.counts();
        let got = self.run_tc(frame);
        assert_eq!(
            self.moved_since(before),
            vec![format!("{}:+1", verdict.name())],
            "{what} (TC): counters moved"
        );
        let wanted = if action(verdict) == XDP_DROP {
            TC_ACT_SHOT
        } else {
            TC_ACT_UNSPEC
        };
        assert_eq!(got, wanted, "{what} (TC): action for {}", verdict.name());
    }

    /// [`Fixture::try_run`], panicking if the kernel refuses the run.
    fn run(&self, frame: &[u8]) -> u32 {
        self.try_run(frame)
            .unwrap_or_else(|e| panic!("test run of [{}]: {e:?}", hex(frame)))
    }

    /// The verdict counters, summed over CPUs.
    fn counts(&self) -> [u64; Verdict::COUNT as usize] {
        std::array::from_fn(|i| {
            self.verdicts
                .get(&u32::try_from(i).expect("index"), 0)
                .expect("read VERDICTS")
                .iter()
                .sum()
        })
    }

    /// The time the program last marked `source` (IPv6: its /64) as unrated, if it did.
    fn unrated_mark(&self, source: IpAddr) -> Option<u64> {
        match source {
            IpAddr::V4(a) => self.unrated_v4.get(&a.octets(), 0).ok(),
            IpAddr::V6(a) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&a.octets()[..8]);
                self.unrated_v6.get(&prefix, 0).ok()
            }
        }
    }

    /// The time the program last marked every source as unrated (0: never).
    fn unrated_any(&self) -> u64 {
        self.unrated_any.get(&0, 0).expect("read UNRATED_ANY")
    }

    /// This CPU's new-state budget.
    fn state_budget(&self, cpu: usize) -> StateBudget {
        self.state_budget.get(&0, 0).expect("read STATE_BUDGET")[cpu]
    }

    /// The counters that moved since `before`, as `name:+n`.
    fn moved_since(&self, before: [u64; Verdict::COUNT as usize]) -> Vec<String> {
        let after = self.counts();
        Verdict::ALL
            .iter()
            .filter(|v| after[**v as usize] != before[**v as usize])
            .map(|v| {
                format!(
                    "{}:+{}",
                    v.name(),
                    after[*v as usize].wrapping_sub(before[*v as usize])
                )
            })
            .collect()
    }

    /// Runs `frame` and asserts the action of `verdict` and that exactly `verdict`'s counter
    /// moved, by one.
    #[track_caller]
    fn expect(&self, what: &str, frame: &[u8], verdict: Verdict) {
        let before = self.counts();
        let got = self.run(frame);
        assert_eq!(
            self.moved_since(before),
            vec![format!("{}:+1", verdict.name())],
            "{what}: counters moved (frame of {} bytes: [{}])",
            frame.len(),
            hex(frame)
        );
        assert_eq!(
            got,
            action(verdict),
            "{what}: XDP action for {} (frame [{}])",
            verdict.name(),
            hex(frame)
        );
    }

    /// Runs `frame` and returns the one verdict whose counter moved, checking its action.
    #[track_caller]
    fn verdict_of(&self, frame: &[u8]) -> Verdict {
        let before = self.counts();
        let got = self.run(frame);
        let after = self.counts();
        let moved: Vec<Verdict> = Verdict::ALL
            .into_iter()
            .filter(|v| after[*v as usize] != before[*v as usize])
            .collect();
        assert_eq!(moved.len(), 1, "one counter moved: {moved:?}");
        assert_eq!(got, action(moved[0]), "action for {}", moved[0].name());
        moved[0]
    }

    /// [`Fixture::expect`] `n` times in a row.
    #[track_caller]
    fn expect_n(&self, what: &str, frame: &[u8], verdict: Verdict, n: usize) {
        for i in 0..n {
            self.expect(&format!("{what} (#{})", i + 1), frame, verdict);
        }
    }
}

/// An address family; [`Family::source`] gives distinct limiter keys within it.
#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    /// Source number `n` (distinct /32s for IPv4, distinct /64s for IPv6).
    fn source(self, n: u8) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(v4(n)),
            Family::V6 => IpAddr::V6(v6(u16::from(n), 1)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Plain traffic
// ---------------------------------------------------------------------------------------

#[test]
fn syn_to_listen_port_passes() {
    if !privileged("syn_to_listen_port_passes") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    for family in FAMILIES {
        let src = family.source(1);
        fx.expect(
            &format!("{family:?} SYN"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Passed,
        );
        // A payload after the header changes nothing.
        fx.expect(
            &format!("{family:?} SYN with payload"),
            &Frame::tcp(family.source(2), PORT)
                .syn()
                .payload(100)
                .build(),
            Verdict::Passed,
        );
        // Segments of an established flow.
        for (what, frame) in [
            ("ACK", Frame::tcp(src, PORT).ack()),
            ("PSH+ACK", Frame::tcp(src, PORT).psh().ack().payload(10)),
            ("FIN+ACK", Frame::tcp(src, PORT).fin().ack()),
            ("RST", Frame::tcp(src, PORT).rst()),
            ("no flags", Frame::tcp(src, PORT)),
        ] {
            fx.expect(
                &format!("{family:?} {what}"),
                &frame.build(),
                Verdict::Passed,
            );
        }
    }
    let mut expected = [0; Verdict::COUNT as usize];
    expected[Verdict::Passed as usize] = 14;
    assert_eq!(fx.counts(), expected);
}

#[test]
fn tcp_to_another_port_is_not_ours() {
    if !privileged("tcp_to_another_port_is_not_ours") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/24");
    fx.block("2001:db8::/32");
    fx.ban(v4(1), BanEntry::NEVER);
    fx.ban(v6(1, 1), BanEntry::NEVER);
    for family in FAMILIES {
        // Blocked and banned sources too: the relay only guards its own ports.
        let src = family.source(1);
        for port in [OTHER_PORT, 22, 444, 442, 0, u16::MAX, PORT.swap_bytes()] {
            fx.expect(
                &format!("{family:?} SYN to port {port}"),
                &Frame::tcp(src, port).syn().build(),
                Verdict::NotOurs,
            );
            fx.expect(
                &format!("{family:?} ACK to port {port}"),
                &Frame::tcp(src, port).ack().build(),
                Verdict::NotOurs,
            );
        }
        // The source port is not the destination port.
        fx.expect(
            &format!("{family:?} SYN from port {PORT} to {OTHER_PORT}"),
            &Frame::tcp(src, OTHER_PORT).src_port(PORT).syn().build(),
            Verdict::NotOurs,
        );
    }
}

#[test]
fn udp_and_icmp_are_not_ours() {
    if !privileged("udp_and_icmp_are_not_ours") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/24");
    fx.block("2001:db8::/32");
    for family in FAMILIES {
        let src = family.source(1);
        fx.expect(
            &format!("{family:?} UDP to the listen port"),
            &Frame::udp(src, PORT).payload(30).build(),
            Verdict::NotOurs,
        );
        fx.expect(
            &format!("{family:?} ICMP echo"),
            &Frame::icmp(src).build(),
            Verdict::NotOurs,
        );
        // TCP bytes behind another protocol number are not TCP.
        fx.expect(
            &format!("{family:?} SYN bytes labelled UDP"),
            &Frame::tcp(src, PORT).syn().protocol(IPPROTO_UDP).build(),
            Verdict::NotOurs,
        );
    }
    fx.expect(
        "IPv6 no-next-header",
        &Frame::tcp_v6(v6(1, 1), PORT)
            .syn()
            .protocol(IPPROTO_NONE)
            .build(),
        Verdict::NotOurs,
    );
}

#[test]
fn non_ip_ethertypes_are_not_ours() {
    if !privileged("non_ip_ethertypes_are_not_ours") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    fx.expect("ARP request", &Frame::arp().build(), Verdict::NotOurs);
    fx.expect(
        "ARP in VLAN",
        &Frame::arp().vlan(7).build(),
        Verdict::NotOurs,
    );
    fx.expect(
        "LLDP",
        &Frame::ethertype(0x88cc, 40).build(),
        Verdict::NotOurs,
    );
    fx.expect(
        "802.3 length field",
        &Frame::ethertype(0x002e, 46).build(),
        Verdict::NotOurs,
    );
    fx.expect(
        "bare Ethernet header, IPv4 ethertype spelled in the wrong byte order",
        &Frame::ethertype(0x0008, 0).build(),
        Verdict::NotOurs,
    );
    fx.expect(
        "ARP under two tags",
        &Frame::arp()
            .vlan(7)
            .vlan_tpid(ETH_P_8021AD)
            .inner_vlan(8)
            .build(),
        Verdict::NotOurs,
    );
}

// ---------------------------------------------------------------------------------------
// Parsing: VLAN, IPv4 options and fragments, IPv6 extension headers, truncation, garbage
// ---------------------------------------------------------------------------------------

#[test]
fn vlan_tagged_frames_are_handled_like_untagged() {
    if !privileged("vlan_tagged_frames_are_handled_like_untagged") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.128/25");
    fx.block("2001:db8:0:80::/57");
    for family in FAMILIES {
        let ok = family.source(1);
        let blocked = family.source(200);
        for (n, id) in [(10, 0), (11, 1), (12, 10), (13, 4095)] {
            fx.expect(
                &format!("{family:?} SYN in VLAN {id}"),
                &Frame::tcp(family.source(n), PORT).syn().vlan(id).build(),
                Verdict::Passed,
            );
            fx.expect(
                &format!("{family:?} ACK in VLAN {id}"),
                &Frame::tcp(ok, PORT).ack().vlan(id).build(),
                Verdict::Passed,
            );
            fx.expect(
                &format!("{family:?} blocked SYN in VLAN {id}"),
                &Frame::tcp(blocked, PORT).syn().vlan(id).build(),
                Verdict::BlockedCidr,
            );
            fx.expect(
                &format!("{family:?} blocked ACK in VLAN {id}"),
                &Frame::tcp(blocked, PORT).ack().vlan(id).build(),
                Verdict::BlockedCidr,
            );
            fx.expect(
                &format!("{family:?} SYN to another port in VLAN {id}"),
                &Frame::tcp(blocked, OTHER_PORT).syn().vlan(id).build(),
                Verdict::NotOurs,
            );
            fx.expect(
                &format!("{family:?} UDP in VLAN {id}"),
                &Frame::udp(blocked, PORT).vlan(id).build(),
                Verdict::NotOurs,
            );
        }
        // The limiter sees through the tag: tagged and untagged SYNs share one bucket.
        let src = family.source(2);
        fx.expect(
            "tagged SYN 1",
            &Frame::tcp(src, PORT).syn().vlan(3).build(),
            Verdict::Passed,
        );
        fx.expect(
            "untagged SYN 2",
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Passed,
        );
        fx.expect(
            "tagged SYN 3",
            &Frame::tcp(src, PORT).syn().vlan(4).build(),
            Verdict::Passed,
        );
        fx.expect(
            "untagged SYN 4",
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::SynRateLimited,
        );
        fx.expect(
            "tagged SYN 5",
            &Frame::tcp(src, PORT).syn().vlan(3).build(),
            Verdict::SynRateLimited,
        );
    }
}

/// Truncates `frame` at every length from 0 to its full length and expects `verdict_at(len)`.
#[track_caller]
fn expect_every_truncation(
    fx: &Fixture,
    what: &str,
    frame: &Frame,
    verdict_at: impl Fn(usize) -> Verdict,
) {
    let full = frame.layout().end;
    assert_eq!(frame.build().len(), full);
    // The kernel runs no XDP program on less than an Ethernet header (drivers do not deliver
    // such runts either): BPF_PROG_TEST_RUN refuses them, and nothing may be counted.
    for len in 0..ETH_HLEN {
        let before = fx.counts();
        match fx.try_run(&frame.clone().truncate(len).build()) {
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(Errno::EINVAL as i32) => {}
            other => panic!("{what} cut at {len}: expected EINVAL from the kernel, got {other:?}"),
        }
        assert_eq!(fx.counts(), before, "{what} cut at {len}: nothing counted");
    }
    for len in ETH_HLEN..=full {
        fx.expect(
            &format!("{what} cut at {len} of {full} bytes"),
            &frame.clone().truncate(len).build(),
            verdict_at(len),
        );
    }
}

#[test]
fn truncated_tcp_headers_are_unparsed_at_every_length() {
    if !privileged("truncated_tcp_headers_are_unparsed_at_every_length") {
        return;
    }
    // A burst large enough that no complete SYN here is limited.
    let fx = Fixture::new(XdpConfig {
        syn_burst: 1_000,
        ..DEFAULT_CONFIG
    });
    let cases = [
        ("IPv4 SYN", Frame::tcp_v4(v4(1), PORT).syn()),
        (
            "IPv4 SYN in VLAN",
            Frame::tcp_v4(v4(2), PORT).syn().vlan(10),
        ),
        (
            "IPv4 SYN with 1 option word",
            Frame::tcp_v4(v4(3), PORT).syn().ipv4_options(1),
        ),
        (
            "IPv4 SYN with 10 option words",
            Frame::tcp_v4(v4(4), PORT).syn().ipv4_options(10),
        ),
        (
            "IPv4 SYN with options in VLAN",
            Frame::tcp_v4(v4(5), PORT).syn().ipv4_options(3).vlan(10),
        ),
        ("IPv4 ACK", Frame::tcp_v4(v4(6), PORT).ack()),
        ("IPv6 SYN", Frame::tcp_v6(v6(1, 1), PORT).syn()),
        (
            "IPv6 SYN in VLAN",
            Frame::tcp_v6(v6(2, 1), PORT).syn().vlan(10),
        ),
        ("IPv6 ACK", Frame::tcp_v6(v6(3, 1), PORT).ack()),
    ];
    for (what, frame) in &cases {
        let full = frame.layout().end;
        expect_every_truncation(&fx, what, frame, |len| {
            if len == full {
                Verdict::Passed
            } else {
                Verdict::Unparsed
            }
        });
    }
    let mut expected = [0; Verdict::COUNT as usize];
    expected[Verdict::Passed as usize] = cases.len() as u64;
    expected[Verdict::Unparsed as usize] = cases
        .iter()
        .map(|(_, f)| (f.layout().end - ETH_HLEN) as u64)
        .sum::<u64>();
    assert_eq!(fx.counts(), expected);
}

#[test]
fn truncated_frames_of_other_protocols_are_not_ours_once_known() {
    if !privileged("truncated_frames_of_other_protocols_are_not_ours_once_known") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    // The verdict is NotOurs from the first length at which the protocol is known.
    let cases = [
        ("ARP", Frame::arp(), ETH_HLEN),
        ("ARP in VLAN", Frame::arp().vlan(9), ETH_HLEN + 4),
        // IPv4: the protocol is known with the fixed header, even while options are missing.
        ("IPv4 UDP", Frame::udp(v4(1), PORT), ETH_HLEN + IPV4_HLEN),
        (
            "IPv4 UDP with options",
            Frame::udp(v4(1), PORT).ipv4_options(4),
            ETH_HLEN + IPV4_HLEN,
        ),
        (
            "IPv4 ICMP in VLAN",
            Frame::icmp(v4(1)).vlan(9),
            ETH_HLEN + 4 + IPV4_HLEN,
        ),
        ("IPv6 UDP", Frame::udp(v6(1, 1), PORT), ETH_HLEN + IPV6_HLEN),
        (
            "IPv6 ICMPv6 in VLAN",
            Frame::icmp(v6(1, 1)).vlan(9),
            ETH_HLEN + 4 + IPV6_HLEN,
        ),
        (
            "IPv4 SYN to another port",
            Frame::tcp_v4(v4(1), OTHER_PORT).syn(),
            ETH_HLEN + IPV4_HLEN + 20,
        ),
        (
            "IPv6 SYN to another port",
            Frame::tcp_v6(v6(1, 1), OTHER_PORT).syn(),
            ETH_HLEN + IPV6_HLEN + 20,
        ),
    ];
    for (what, frame, known_at) in &cases {
        expect_every_truncation(&fx, what, frame, |len| {
            if len >= *known_at {
                Verdict::NotOurs
            } else {
                Verdict::Unparsed
            }
        });
    }
    // A non-first fragment is recognised with the fixed IPv4 header.
    let fragment = Frame::tcp_v4(v4(1), PORT).syn().fragment_offset(3);
    expect_every_truncation(&fx, "IPv4 fragment", &fragment, |len| {
        if len >= ETH_HLEN + IPV4_HLEN {
            Verdict::Fragment
        } else {
            Verdict::Unparsed
        }
    });
    // IPv6 extension headers are recognised with the base header.
    let ext = Frame::tcp_v6(v6(1, 1), PORT)
        .syn()
        .ipv6_extension(IPPROTO_HOPOPTS);
    expect_every_truncation(&fx, "IPv6 hop-by-hop", &ext, |_| Verdict::Unparsed);
}

#[test]
fn ipv4_options_are_skipped() {
    if !privileged("ipv4_options_are_skipped") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.200/32");
    // The options are NOPs (0x01 bytes): a parser that ignored IHL would read port 257.
    for words in 1..=10u8 {
        let ihl = 5 + words;
        fx.expect(
            &format!("SYN with IHL {ihl}"),
            &Frame::tcp_v4(v4(words), PORT)
                .syn()
                .ipv4_options(words)
                .build(),
            Verdict::Passed,
        );
        fx.expect(
            &format!("SYN to another port with IHL {ihl}"),
            &Frame::tcp_v4(v4(words), OTHER_PORT)
                .syn()
                .ipv4_options(words)
                .build(),
            Verdict::NotOurs,
        );
        fx.expect(
            &format!("blocked SYN with IHL {ihl}"),
            &Frame::tcp_v4(v4(200), PORT)
                .syn()
                .ipv4_options(words)
                .build(),
            Verdict::BlockedCidr,
        );
    }
    // The flags are read from the right place too: three SYNs with options use up the burst.
    let src = v4(50);
    let syn = Frame::tcp_v4(src, PORT).syn().ipv4_options(2).build();
    fx.expect_n("SYN with options", &syn, Verdict::Passed, 3);
    fx.expect(
        "SYN with options over budget",
        &syn,
        Verdict::SynRateLimited,
    );
    fx.expect(
        "ACK with options over budget",
        &Frame::tcp_v4(src, PORT).ack().ipv4_options(2).build(),
        Verdict::Passed,
    );
}

#[test]
fn ipv4_fragments_with_offset_are_passed_as_fragments() {
    if !privileged("ipv4_fragments_with_offset_are_passed_as_fragments") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.200/32");
    for offset in [1, 2, 185, 0x1fff] {
        fx.expect(
            &format!("TCP fragment at offset {offset}"),
            &Frame::tcp_v4(v4(1), PORT)
                .syn()
                .fragment_offset(offset)
                .build(),
            Verdict::Fragment,
        );
        fx.expect(
            &format!("middle TCP fragment at offset {offset}"),
            &Frame::tcp_v4(v4(1), PORT)
                .fragment_offset(offset)
                .more_fragments()
                .build(),
            Verdict::Fragment,
        );
        // No TCP header to look at, so not even a blocked source can be recognised as TCP.
        fx.expect(
            &format!("blocked source's fragment at offset {offset}"),
            &Frame::tcp_v4(v4(200), PORT)
                .syn()
                .fragment_offset(offset)
                .build(),
            Verdict::Fragment,
        );
        fx.expect(
            &format!("UDP fragment at offset {offset}"),
            &Frame::udp(v4(1), PORT).fragment_offset(offset).build(),
            Verdict::Fragment,
        );
    }
    // A first fragment (offset 0, More Fragments set) carries the TCP header: parsed normally.
    fx.expect(
        "first fragment of a SYN",
        &Frame::tcp_v4(v4(2), PORT).syn().more_fragments().build(),
        Verdict::Passed,
    );
    fx.expect(
        "first fragment from a blocked source",
        &Frame::tcp_v4(v4(200), PORT).syn().more_fragments().build(),
        Verdict::BlockedCidr,
    );
    // RFC 1858's tiny first fragment: offset 0 but only 8 bytes of the TCP header (ports, no
    // flags). The program cannot see the flags and passes it as unparsed, whoever sent it; the
    // rest of the header follows in a fragment with an offset, passed as a fragment.
    let tiny = ETH_HLEN + IPV4_HLEN + 8;
    fx.expect(
        "blocked source's tiny first fragment",
        &Frame::tcp_v4(v4(200), PORT)
            .syn()
            .more_fragments()
            .truncate(tiny)
            .build(),
        Verdict::Unparsed,
    );
    fx.expect(
        "fragment with options and offset",
        &Frame::tcp_v4(v4(1), PORT)
            .syn()
            .ipv4_options(2)
            .fragment_offset(7)
            .vlan(2)
            .build(),
        Verdict::Fragment,
    );
}

#[test]
fn ipv6_extension_headers_are_unparsed() {
    if !privileged("ipv6_extension_headers_are_unparsed") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("2001:db8:0:c8::/64");
    for kind in [
        IPPROTO_HOPOPTS,
        IPPROTO_ROUTING,
        IPPROTO_FRAGMENT,
        IPPROTO_DSTOPTS,
        50,
        51,
        135,
        139,
        140,
    ] {
        for (who, src) in [("allowed", v6(1, 1)), ("blocked", v6(200, 1))] {
            fx.expect(
                &format!("{who} SYN behind extension header {kind}"),
                &Frame::tcp_v6(src, PORT).syn().ipv6_extension(kind).build(),
                Verdict::Unparsed,
            );
            fx.expect(
                &format!("{who} SYN behind extension header {kind} in VLAN"),
                &Frame::tcp_v6(src, PORT)
                    .syn()
                    .ipv6_extension(kind)
                    .vlan(12)
                    .build(),
                Verdict::Unparsed,
            );
        }
    }
    fx.expect(
        "two extension headers",
        &Frame::tcp_v6(v6(1, 1), PORT)
            .syn()
            .ipv6_extension(IPPROTO_HOPOPTS)
            .ipv6_extension(IPPROTO_FRAGMENT)
            .build(),
        Verdict::Unparsed,
    );
    // Without the extension header the blocked source is recognised.
    fx.expect(
        "blocked SYN without extension header",
        &Frame::tcp_v6(v6(200, 1), PORT).syn().build(),
        Verdict::BlockedCidr,
    );
}

#[test]
fn two_vlan_tags_are_parsed_and_a_third_is_not() {
    if !privileged("two_vlan_tags_are_parsed_and_a_third_is_not") {
        return;
    }
    let mut fx = Fixture::new(XdpConfig {
        syn_burst: 2,
        ..DEFAULT_CONFIG
    });
    fx.block("198.51.100.200/32");
    for family in FAMILIES {
        let qinq = |src: IpAddr| {
            Frame::tcp(src, PORT)
                .syn()
                .vlan(5)
                .vlan_tpid(ETH_P_8021AD)
                .inner_vlan(6)
        };
        // A QinQ SYN is rated like an untagged one, and shares the source's bucket.
        let src = family.source(1);
        fx.expect("QinQ SYN", &qinq(src).build(), Verdict::Passed);
        fx.expect(
            "untagged SYN after it",
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Passed,
        );
        fx.expect(
            "QinQ SYN over budget",
            &qinq(src).build(),
            Verdict::SynRateLimited,
        );
        fx.expect(
            "two 802.1Q tags",
            &Frame::tcp(family.source(2), PORT)
                .syn()
                .vlan(5)
                .inner_vlan(6)
                .build(),
            Verdict::Passed,
        );
        assert_eq!(fx.unrated_mark(src), None, "{family:?}: rated, not marked");
    }
    fx.expect(
        "blocked source under two tags",
        &Frame::tcp_v4(v4(200), PORT)
            .syn()
            .vlan(5)
            .vlan_tpid(ETH_P_8021AD)
            .inner_vlan(6)
            .build(),
        Verdict::BlockedCidr,
    );
    // A third tag is more than the parser follows: unparsed, and with no source to mark,
    // every source is marked.
    assert_eq!(fx.unrated_any(), 0);
    let mut three = Frame::tcp_v4(v4(3), PORT)
        .syn()
        .vlan(5)
        .vlan_tpid(ETH_P_8021AD)
        .inner_vlan(6)
        .build();
    // After the outer tag's TPID and TCI (bytes 12..16), before the inner tag.
    three.splice(ETH_HLEN + 2..ETH_HLEN + 2, [0x81, 0x00, 0x00, 0x07]);
    let before = monotonic_ns();
    fx.expect("three tags", &three, Verdict::Unparsed);
    assert!(fx.unrated_any() >= before);
}

#[test]
fn sources_of_unrated_packets_are_marked() {
    if !privileged("sources_of_unrated_packets_are_marked") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    let before = monotonic_ns();
    let hop = IpAddr::V6(v6(1, 1));
    fx.expect(
        "SYN behind a hop-by-hop header",
        &Frame::tcp(hop, PORT)
            .syn()
            .ipv6_extension(IPPROTO_HOPOPTS)
            .build(),
        Verdict::Unparsed,
    );
    let fragment = IpAddr::V4(v4(1));
    fx.expect(
        "TCP fragment with an offset",
        &Frame::tcp(fragment, PORT).fragment_offset(1).build(),
        Verdict::Fragment,
    );
    let tiny = IpAddr::V4(v4(2));
    fx.expect(
        "tiny first fragment",
        &Frame::tcp(tiny, PORT)
            .syn()
            .more_fragments()
            .truncate(ETH_HLEN + IPV4_HLEN + 8)
            .build(),
        Verdict::Unparsed,
    );
    let after = monotonic_ns();
    for source in [hop, fragment, tiny] {
        let at = fx.unrated_mark(source);
        assert!(
            at.is_some_and(|at| (before..=after).contains(&at)),
            "{source} marked between {before} and {after}: {at:?}"
        );
    }
    // The /64 is marked, as the limiter keys IPv6 sources.
    assert!(fx.unrated_mark(IpAddr::V6(v6(1, 0xffff))).is_some());
    // Not marked: a UDP fragment, a rated SYN, a truncated IP header without a source.
    let udp = IpAddr::V4(v4(3));
    fx.expect(
        "UDP fragment",
        &Frame::udp(udp, PORT).fragment_offset(1).build(),
        Verdict::Fragment,
    );
    let rated = IpAddr::V4(v4(4));
    fx.expect(
        "plain SYN",
        &Frame::tcp(rated, PORT).syn().build(),
        Verdict::Passed,
    );
    for source in [udp, rated] {
        assert_eq!(fx.unrated_mark(source), None, "{source}");
    }
    assert_eq!(fx.unrated_any(), 0, "every unrated packet had a source");
}

#[test]
fn malformed_ip_headers_are_unparsed() {
    if !privileged("malformed_ip_headers_are_unparsed") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    for version in [0, 4 + 2, 15] {
        fx.expect(
            &format!("IPv4 EtherType, version {version}"),
            &Frame::tcp_v4(v4(1), PORT).syn().ip_version(version).build(),
            Verdict::Unparsed,
        );
    }
    for ihl in [0, 1, 4] {
        fx.expect(
            &format!("IPv4 IHL {ihl}"),
            &Frame::tcp_v4(v4(1), PORT).syn().ipv4_ihl(ihl).build(),
            Verdict::Unparsed,
        );
    }
    // IHL claims options the frame does not have: the TCP header it points to is cut short.
    fx.expect(
        "IPv4 IHL 15 without options",
        &Frame::tcp_v4(v4(1), PORT).syn().ipv4_ihl(15).build(),
        Verdict::Unparsed,
    );
    for version in [0, 4, 15] {
        fx.expect(
            &format!("IPv6 EtherType, version {version}"),
            &Frame::tcp_v6(v6(1, 1), PORT)
                .syn()
                .ip_version(version)
                .build(),
            Verdict::Unparsed,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Allowlist, blocklist, bans
// ---------------------------------------------------------------------------------------

#[test]
fn allowlisted_source_inside_blocked_cidr_passes() {
    if !privileged("allowlisted_source_inside_blocked_cidr_passes") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/24");
    fx.allow("198.51.100.7/32");
    fx.block("2001:db8::/32");
    fx.allow("2001:db8:0:7::/64");
    for (family, allowed, blocked) in [
        ("IPv4", IpAddr::V4(v4(7)), IpAddr::V4(v4(8))),
        ("IPv6", IpAddr::V6(v6(7, 0xabcd)), IpAddr::V6(v6(8, 1))),
    ] {
        // Allowlisted sources are never limited either.
        fx.expect_n(
            &format!("{family} allowlisted SYN"),
            &Frame::tcp(allowed, PORT).syn().build(),
            Verdict::Allowlisted,
            10,
        );
        fx.expect(
            &format!("{family} allowlisted ACK"),
            &Frame::tcp(allowed, PORT).ack().build(),
            Verdict::Allowlisted,
        );
        fx.expect(
            &format!("{family} allowlisted SYN in VLAN"),
            &Frame::tcp(allowed, PORT).syn().vlan(5).build(),
            Verdict::Allowlisted,
        );
        fx.expect(
            &format!("{family} allowlisted SYN to another port"),
            &Frame::tcp(allowed, OTHER_PORT).syn().build(),
            Verdict::NotOurs,
        );
        fx.expect(
            &format!("{family} neighbour in the blocked CIDR"),
            &Frame::tcp(blocked, PORT).syn().build(),
            Verdict::BlockedCidr,
        );
    }
}

/// The program looks an address family's allowlist up only while its flag says it may hold
/// entries: no lookup for the operators who allowlist nothing.
#[test]
fn an_allowlist_is_consulted_only_under_its_flag() {
    if !privileged("an_allowlist_is_consulted_only_under_its_flag") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/24");
    fx.block("2001:db8::/32");
    fx.allow("198.51.100.7/32");
    fx.allow("2001:db8:0:7::/64");
    let sources = [
        (XdpConfig::FLAG_ALLOW_V4, IpAddr::V4(v4(7))),
        (XdpConfig::FLAG_ALLOW_V6, IpAddr::V6(v6(7, 1))),
    ];
    for (flag, src) in sources {
        let frame = Frame::tcp(src, PORT).syn().build();
        fx.expect(
            &format!("{src} under the flag"),
            &frame,
            Verdict::Allowlisted,
        );
        fx.allow_flag(flag, false);
        fx.expect(&format!("{src} without it"), &frame, Verdict::BlockedCidr);
        fx.allow_flag(flag, true);
        fx.expect(
            &format!("{src} under it again"),
            &frame,
            Verdict::Allowlisted,
        );
    }
}

/// relay-ctl's map wrapper raises an allowlist's flag before its first entry goes in, clears
/// it once the last is gone, keeps it through new tunables, and finds it from the entries
/// already in the maps when it takes them (pinned maps carry a previous run's over).
#[test]
fn userspace_keeps_the_allowlist_flags_in_step() {
    if !privileged("userspace_keeps_the_allowlist_flags_in_step") {
        return;
    }
    use relay_common::PrefixList;
    let (mut ebpf, _logger) = relay_tests::kernel::load_xdp();
    // An IPv6 entry from "a previous run", in the map before relay-ctl takes it.
    let net = |text: &str| text.parse::<relay_ctl::config::Cidr>().expect("net").0;
    let v6 = net("2001:db8:0:7::/64");
    {
        let mut allow_v6: LpmTrie<&mut MapData, [u8; 16], u8> =
            LpmTrie::try_from(ebpf.map_mut(names::ALLOW_V6).expect("ALLOW_V6")).expect("trie");
        let (IpAddr::V6(addr), 64) = cidr("2001:db8:0:7::/64") else {
            unreachable!("an IPv6 /64")
        };
        allow_v6
            .insert(&Key::new(64, addr.octets()), 1, 0)
            .expect("insert");
    }
    let mut maps = relay_ctl::xdp::XdpMaps::take(&mut ebpf).expect("maps");
    let allow_flags = |maps: &relay_ctl::xdp::XdpMaps| {
        maps.config().expect("read CONFIG").flags & XdpConfig::ALLOW_FLAGS
    };
    assert_eq!(
        allow_flags(&maps),
        XdpConfig::FLAG_ALLOW_V6,
        "found at take"
    );
    let (v4, v4b) = (net("198.51.100.7/32"), net("198.51.100.64/26"));
    maps.insert_prefix(PrefixList::Block, net("198.18.0.0/15"))
        .expect("a blocklist entry");
    assert_eq!(
        allow_flags(&maps),
        XdpConfig::FLAG_ALLOW_V6,
        "blocklist: no flag"
    );
    maps.insert_prefix(PrefixList::Allow, v4).expect("insert");
    maps.insert_prefix(PrefixList::Allow, v4b).expect("insert");
    assert_eq!(allow_flags(&maps), XdpConfig::ALLOW_FLAGS);
    maps.set_config(DEFAULT_CONFIG).expect("new tunables");
    assert_eq!(
        maps.config().expect("read CONFIG").flags,
        XdpConfig::FLAG_SYN_LIMIT | XdpConfig::ALLOW_FLAGS,
        "tunables neither clear nor set the allowlist flags"
    );
    assert!(maps.remove_prefix(PrefixList::Allow, v6));
    assert_eq!(allow_flags(&maps), XdpConfig::FLAG_ALLOW_V4);
    assert!(maps.remove_prefix(PrefixList::Allow, v4));
    assert_eq!(
        allow_flags(&maps),
        XdpConfig::FLAG_ALLOW_V4,
        "one entry left"
    );
    assert!(maps.remove_prefix(PrefixList::Allow, v4b));
    assert_eq!(allow_flags(&maps), 0, "both allowlists empty");
    assert_eq!(
        maps.config().expect("read CONFIG"),
        DEFAULT_CONFIG,
        "the tunables as set"
    );
}

#[test]
fn allowlist_beats_ban() {
    if !privileged("allowlist_beats_ban") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.allow("198.51.100.0/28");
    fx.allow("2001:db8:0:1::/64");
    for src in [IpAddr::V4(v4(3)), IpAddr::V6(v6(1, 3))] {
        fx.ban(src, BanEntry::NEVER);
        fx.expect(
            &format!("{src} allowlisted and banned, SYN"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Allowlisted,
        );
        fx.expect(
            &format!("{src} allowlisted and banned, ACK"),
            &Frame::tcp(src, PORT).ack().build(),
            Verdict::Allowlisted,
        );
    }
}

#[test]
fn blocked_cidr_drops_syn_and_established_segments() {
    if !privileged("blocked_cidr_drops_syn_and_established_segments") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/25");
    fx.block("203.0.113.9/32");
    fx.block("2001:db8:0:100::/56");
    let blocked: [IpAddr; 6] = [
        v4(0).into(),
        v4(1).into(),
        v4(127).into(),
        Ipv4Addr::new(203, 0, 113, 9).into(),
        v6(0x100, 1).into(),
        v6(0x1ff, 0xffff).into(),
    ];
    for src in blocked {
        for (what, frame) in [
            ("SYN", Frame::tcp(src, PORT).syn()),
            ("ACK", Frame::tcp(src, PORT).ack()),
            ("SYN+ACK", Frame::tcp(src, PORT).syn().ack()),
            ("RST", Frame::tcp(src, PORT).rst()),
            (
                "PSH+ACK with data",
                Frame::tcp(src, PORT).psh().ack().payload(64),
            ),
        ] {
            fx.expect(
                &format!("{src} {what}"),
                &frame.build(),
                Verdict::BlockedCidr,
            );
        }
    }
    // Just outside each prefix.
    let outside: [IpAddr; 5] = [
        v4(128).into(),
        Ipv4Addr::new(198, 51, 99, 255).into(),
        Ipv4Addr::new(203, 0, 113, 8).into(),
        v6(0xff, 1).into(),
        v6(0x200, 1).into(),
    ];
    for src in outside {
        fx.expect(
            &format!("{src} SYN"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Passed,
        );
    }
}

#[test]
fn active_ban_drops() {
    if !privileged("active_ban_drops") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    let hour = 3_600 * 1_000_000_000;
    fx.ban(v4(1), monotonic_ns() + hour);
    fx.ban(v4(2), BanEntry::NEVER);
    fx.ban(v6(1, 1), monotonic_ns() + hour);
    fx.ban(v6(2, 1), BanEntry::NEVER);
    let banned: [IpAddr; 4] = [v4(1).into(), v4(2).into(), v6(1, 1).into(), v6(2, 1).into()];
    for src in banned {
        for (what, frame) in [
            ("SYN", Frame::tcp(src, PORT).syn()),
            ("ACK", Frame::tcp(src, PORT).ack()),
            ("SYN in VLAN", Frame::tcp(src, PORT).syn().vlan(8)),
        ] {
            fx.expect(
                &format!("banned {src} {what}"),
                &frame.build(),
                Verdict::Banned,
            );
        }
    }
    // IPv4 bans are exact addresses; IPv6 bans cover the /64, so rotating addresses inside
    // it does not escape.
    fx.expect(
        "another address in a banned /64",
        &Frame::tcp(v6(1, 2), PORT).syn().build(),
        Verdict::Banned,
    );
    let neighbours: [IpAddr; 3] = [v4(3).into(), v4(0).into(), v6(3, 1).into()];
    for src in neighbours {
        fx.expect(
            &format!("{src} next to a banned address"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Passed,
        );
    }
}

#[test]
fn ban_wins_over_blocklist() {
    if !privileged("ban_wins_over_blocklist") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/24");
    fx.block("2001:db8::/32");
    fx.ban(v4(1), BanEntry::NEVER);
    fx.ban(v6(1, 1), BanEntry::NEVER);
    for (banned, other) in [
        (IpAddr::V4(v4(1)), IpAddr::V4(v4(2))),
        // An IPv6 ban covers its /64: the blocked-only neighbour is in another /64.
        (IpAddr::V6(v6(1, 1)), IpAddr::V6(v6(2, 1))),
    ] {
        fx.expect(
            &format!("{banned} banned and blocked"),
            &Frame::tcp(banned, PORT).syn().build(),
            Verdict::Banned,
        );
        fx.expect(
            &format!("{other} blocked only"),
            &Frame::tcp(other, PORT).syn().build(),
            Verdict::BlockedCidr,
        );
    }
}

#[test]
fn expired_ban_passes() {
    if !privileged("expired_ban_passes") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    let now = monotonic_ns();
    fx.ban(v4(1), now - 1_000_000_000);
    fx.ban(v4(2), 0);
    fx.ban(v6(1, 1), now - 1_000_000_000);
    fx.ban(v6(2, 1), 1);
    let expired: [IpAddr; 4] = [v4(1).into(), v4(2).into(), v6(1, 1).into(), v6(2, 1).into()];
    for src in expired {
        fx.expect(
            &format!("{src} SYN after the ban lapsed"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::Passed,
        );
        fx.expect(
            &format!("{src} ACK after the ban lapsed"),
            &Frame::tcp(src, PORT).ack().build(),
            Verdict::Passed,
        );
    }
    // A lapsed ban does not shield a blocked source, nor exempt it from the limiter.
    fx.block("198.51.100.2/32");
    fx.expect(
        "lapsed ban inside a blocked CIDR",
        &Frame::tcp_v4(v4(2), PORT).syn().build(),
        Verdict::BlockedCidr,
    );
    let syn = Frame::tcp_v4(v4(1), PORT).syn().build();
    fx.expect_n("lapsed ban, SYNs 2..=3", &syn, Verdict::Passed, 2);
    fx.expect("lapsed ban, SYN 4", &syn, Verdict::SynRateLimited);
}

/// The ordinary limiter (burst 3) and, for front-banned sources, a smaller budget (burst 2),
/// neither refilling.
const FRONT_CONFIG: XdpConfig = XdpConfig {
    banned_syn_rate_per_sec: 0,
    banned_syn_burst: 2,
    ..DEFAULT_CONFIG
};

#[test]
fn front_ban_passes_within_its_budget_and_drops_syns_over_it() {
    if !privileged("front_ban_passes_within_its_budget_and_drops_syns_over_it") {
        return;
    }
    let mut fx = Fixture::new(FRONT_CONFIG);
    let hour = 3_600 * 1_000_000_000;
    for family in FAMILIES {
        let src = family.source(1);
        fx.ban_with(src, monotonic_ns() + hour, BanAction::Front);
        let syn = Frame::tcp(src, PORT).syn().build();
        fx.expect_n(
            &format!("{family:?} front-banned SYN"),
            &syn,
            Verdict::BannedFronted,
            2,
        );
        fx.expect_n(
            &format!("{family:?} front-banned SYN over its budget"),
            &syn,
            Verdict::BannedSynLimited,
            2,
        );
        // Its fronted connections carry data: nothing but bare SYNs spends the budget.
        for (what, frame) in [
            ("SYN+ACK", Frame::tcp(src, PORT).syn().ack()),
            ("ACK", Frame::tcp(src, PORT).ack()),
            ("PSH+ACK", Frame::tcp(src, PORT).psh().ack().payload(100)),
            ("FIN+ACK", Frame::tcp(src, PORT).fin().ack()),
            ("RST", Frame::tcp(src, PORT).rst()),
        ] {
            fx.expect(
                &format!("{family:?} front-banned {what}"),
                &frame.build(),
                Verdict::BannedFronted,
            );
        }
    }
    // An IPv6 front-ban covers the /64, and its budget is the /64's.
    fx.expect(
        "another address in the front-banned /64",
        &Frame::tcp(v6(1, 2), PORT).syn().build(),
        Verdict::BannedSynLimited,
    );
    // The banned budget is apart from the ordinary one: the sources' own buckets were never
    // touched, so once the bans go they get the full ordinary burst.
    fx.bans_v4.remove(&v4(1).octets()).expect("lift IPv4 ban");
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&v6(1, 1).octets()[..8]);
    fx.bans_v6.remove(&prefix).expect("lift IPv6 ban");
    for family in FAMILIES {
        let syn = Frame::tcp(family.source(1), PORT).syn().build();
        fx.expect_n(
            &format!("{family:?} after the ban"),
            &syn,
            Verdict::Passed,
            3,
        );
        fx.expect(
            &format!("{family:?} after the ban, over the burst"),
            &syn,
            Verdict::SynRateLimited,
        );
    }
}

#[test]
fn front_ban_budget_holds_with_the_limiter_off_and_refills() {
    if !privileged("front_ban_budget_holds_with_the_limiter_off_and_refills") {
        return;
    }
    // 2 tokens per second, a budget of 1, the ordinary limiter off.
    let mut fx = Fixture::new(XdpConfig {
        flags: 0,
        banned_syn_rate_per_sec: 2,
        banned_syn_burst: 1,
        ..DEFAULT_CONFIG
    });
    fx.ban_with(v4(1), BanEntry::NEVER, BanAction::Front);
    let syn = Frame::tcp(v4(1), PORT).syn().build();
    fx.expect("first SYN", &syn, Verdict::BannedFronted);
    fx.expect("at once", &syn, Verdict::BannedSynLimited);
    std::thread::sleep(std::time::Duration::from_millis(700));
    fx.expect("0.7 s later", &syn, Verdict::BannedFronted);
    fx.expect("at once again", &syn, Verdict::BannedSynLimited);
    // Without the ban, the limiter being off means no limit at all.
    fx.expect_n(
        "unbanned",
        &Frame::tcp(v4(2), PORT).syn().build(),
        Verdict::Passed,
        10,
    );
}

#[test]
fn blocked_cidr_and_drop_ban_beat_a_front_ban() {
    if !privileged("blocked_cidr_and_drop_ban_beat_a_front_ban") {
        return;
    }
    let mut fx = Fixture::new(FRONT_CONFIG);
    fx.block("198.51.100.0/28");
    fx.block("2001:db8:0:1::/64");
    fx.ban_with(v4(1), BanEntry::NEVER, BanAction::Front);
    fx.ban_with(v6(1, 1), BanEntry::NEVER, BanAction::Front);
    fx.ban_with(v4(20), BanEntry::NEVER, BanAction::Drop);
    fx.ban_with(v4(21), BanEntry::NEVER, BanAction::Front);
    fx.allow("198.51.100.22/32");
    fx.ban_with(v4(22), BanEntry::NEVER, BanAction::Front);
    for src in [IpAddr::V4(v4(1)), IpAddr::V6(v6(1, 1))] {
        fx.expect(
            &format!("{src} front-banned inside a blocked CIDR"),
            &Frame::tcp(src, PORT).ack().build(),
            Verdict::BlockedCidr,
        );
    }
    fx.expect(
        "drop-ban",
        &Frame::tcp(v4(20), PORT).ack().build(),
        Verdict::Banned,
    );
    fx.expect(
        "front-ban",
        &Frame::tcp(v4(21), PORT).ack().build(),
        Verdict::BannedFronted,
    );
    fx.expect(
        "allowlisted front-ban",
        &Frame::tcp(v4(22), PORT).syn().build(),
        Verdict::Allowlisted,
    );
    // A lapsed front-ban is no ban at all.
    fx.ban_with(v4(23), 1, BanAction::Front);
    fx.expect(
        "lapsed front-ban",
        &Frame::tcp(v4(23), PORT).syn().build(),
        Verdict::Passed,
    );
}

/// The userspace gate (XDP off, or the accept-time re-check) takes the kernel's decisions:
/// the same lists, bans and budgets give the same verdict for every SYN, in the same order.
#[test]
fn the_userspace_gate_decides_as_the_kernel_does() {
    if !privileged("the_userspace_gate_decides_as_the_kernel_does") {
        return;
    }
    let config = FRONT_CONFIG;
    let mut fx = Fixture::new(config);
    let gate = relay_ctl::admission::Gate::default();
    gate.set_config(config);
    let mut block = relay_ctl::admission::prefix_set::PrefixSet::default();
    let mut allow = relay_ctl::admission::prefix_set::PrefixSet::default();
    for text in ["198.51.100.128/26", "2001:db8:0:9::/64"] {
        fx.block(text);
        block.insert(text.parse::<relay_ctl::config::Cidr>().expect("CIDR").0);
    }
    fx.allow("198.51.100.130/32");
    allow.insert(
        "198.51.100.130/32"
            .parse::<relay_ctl::config::Cidr>()
            .expect("CIDR")
            .0,
    );
    gate.set_block(block);
    gate.set_allow(allow);
    let never = BanEntry::NEVER;
    let bans: [(IpAddr, BanAction); 5] = [
        (v4(1).into(), BanAction::Front),
        (v4(2).into(), BanAction::Drop),
        (v4(129).into(), BanAction::Front),
        (v6(1, 1).into(), BanAction::Front),
        (v6(2, 1).into(), BanAction::Drop),
    ];
    for (src, action) in bans {
        fx.ban_with(src, never, action);
        let reason = match action {
            BanAction::Drop => BanReason::ConnRate,
            BanAction::Front => BanReason::BadSecret,
        };
        gate.ban(src, BanEntry::new(never, reason, action));
    }
    let sources: [IpAddr; 10] = [
        v4(1).into(),
        v4(2).into(),
        v4(3).into(),
        v4(129).into(),
        v4(130).into(),
        v4(131).into(),
        v6(1, 1).into(),
        v6(1, 7).into(),
        v6(2, 1).into(),
        v6(9, 1).into(),
    ];
    let mut kernel = Vec::new();
    let mut userspace = Vec::new();
    // Five SYNs each, interleaved, past both the ordinary and the banned burst.
    for round in 0..5 {
        for src in sources {
            let what = format!("{src} SYN {round}");
            kernel.push((
                what.clone(),
                fx.verdict_of(&Frame::tcp(src, PORT).syn().build()),
            ));
            userspace.push((what, gate.admit(src, monotonic_ns())));
        }
    }
    assert_eq!(kernel, userspace);
    // Every kind of verdict a SYN can get here was reached.
    for v in [
        Verdict::Passed,
        Verdict::SynRateLimited,
        Verdict::Allowlisted,
        Verdict::BlockedCidr,
        Verdict::Banned,
        Verdict::BannedFronted,
        Verdict::BannedSynLimited,
    ] {
        assert!(
            kernel.iter().any(|(_, k)| *k == v),
            "{} not reached",
            v.name()
        );
    }
}

// ---------------------------------------------------------------------------------------
// New-connection limiter
// ---------------------------------------------------------------------------------------

#[test]
fn syn_burst_then_rate_limited() {
    if !privileged("syn_burst_then_rate_limited") {
        return;
    }
    const BURST: u32 = 5;
    let fx = Fixture::new(XdpConfig {
        syn_rate_per_sec: 0,
        syn_burst: BURST,
        ..DEFAULT_CONFIG
    });
    for family in FAMILIES {
        let src = family.source(1);
        let syn = Frame::tcp(src, PORT).syn().build();
        fx.expect_n(
            &format!("{family:?} SYN within burst"),
            &syn,
            Verdict::Passed,
            BURST as usize,
        );
        fx.expect_n(
            &format!("{family:?} SYN over budget"),
            &syn,
            Verdict::SynRateLimited,
            7,
        );
        // Only bare SYNs are limited: the source's established flows and handshake replies go on.
        for (what, frame) in [
            ("ACK", Frame::tcp(src, PORT).ack()),
            ("SYN+ACK", Frame::tcp(src, PORT).syn().ack()),
            ("PSH+ACK", Frame::tcp(src, PORT).psh().ack().payload(20)),
            ("FIN+ACK", Frame::tcp(src, PORT).fin().ack()),
            ("RST", Frame::tcp(src, PORT).rst()),
        ] {
            fx.expect(
                &format!("{family:?} {what} from an over-budget source"),
                &frame.build(),
                Verdict::Passed,
            );
        }
        // A SYN from another source port is still the same source.
        fx.expect(
            &format!("{family:?} SYN from another source port"),
            &Frame::tcp(src, PORT).src_port(1234).syn().build(),
            Verdict::SynRateLimited,
        );
        // SYNs to other ports are not ours and not counted against the budget.
        fx.expect(
            &format!("{family:?} SYN to another port"),
            &Frame::tcp(src, OTHER_PORT).syn().build(),
            Verdict::NotOurs,
        );
    }
    let mut expected = [0; Verdict::COUNT as usize];
    expected[Verdict::Passed as usize] = 2 * (u64::from(BURST) + 5);
    expected[Verdict::SynRateLimited as usize] = 2 * 8;
    expected[Verdict::NotOurs as usize] = 2;
    assert_eq!(fx.counts(), expected);
}

#[test]
fn burst_of_one() {
    if !privileged("burst_of_one") {
        return;
    }
    let fx = Fixture::new(XdpConfig {
        syn_burst: 1,
        ..DEFAULT_CONFIG
    });
    for family in FAMILIES {
        let syn = Frame::tcp(family.source(1), PORT).syn().build();
        fx.expect(&format!("{family:?} first SYN"), &syn, Verdict::Passed);
        fx.expect_n(
            &format!("{family:?} next SYNs"),
            &syn,
            Verdict::SynRateLimited,
            3,
        );
    }
}

#[test]
fn ipv4_sources_have_independent_buckets() {
    if !privileged("ipv4_sources_have_independent_buckets") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    let a = Frame::tcp_v4(v4(1), PORT).syn().build();
    let b = Frame::tcp_v4(v4(2), PORT).syn().build();
    fx.expect_n("A within burst", &a, Verdict::Passed, 3);
    fx.expect("A over budget", &a, Verdict::SynRateLimited);
    fx.expect_n("B within burst", &b, Verdict::Passed, 3);
    fx.expect("B over budget", &b, Verdict::SynRateLimited);
    fx.expect("A still over budget", &a, Verdict::SynRateLimited);
    // The IPv4-mapped IPv6 form of A is an IPv6 source with a bucket of its own.
    let mapped = Frame::tcp_v6(v4(1).to_ipv6_mapped(), PORT).syn().build();
    fx.expect_n("A as ::ffff:a.b.c.d", &mapped, Verdict::Passed, 3);
    fx.expect("A as ::ffff:a.b.c.d over", &mapped, Verdict::SynRateLimited);
}

#[test]
fn ipv6_sources_share_a_bucket_per_64() {
    if !privileged("ipv6_sources_share_a_bucket_per_64") {
        return;
    }
    let fx = Fixture::new(DEFAULT_CONFIG);
    let same_64 = [
        Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0xffff, 0xffff, 0xffff),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0x1234, 0, 0, 0),
    ];
    for (i, src) in same_64.iter().enumerate() {
        fx.expect(
            &format!("SYN {} from {src}", i + 1),
            &Frame::tcp_v6(*src, PORT).syn().build(),
            Verdict::Passed,
        );
    }
    for src in same_64 {
        fx.expect(
            &format!("{src}: its /64 is over budget"),
            &Frame::tcp_v6(src, PORT).syn().build(),
            Verdict::SynRateLimited,
        );
    }
    fx.expect(
        "fourth address in the same /64",
        &Frame::tcp_v6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9), PORT)
            .syn()
            .build(),
        Verdict::SynRateLimited,
    );
    // Neighbouring /64s have buckets of their own.
    for other in [
        Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0xffff, 0xffff, 0xffff, 0xffff),
        Ipv6Addr::new(0x2001, 0xdb9, 0, 1, 0, 0, 0, 1),
    ] {
        let syn = Frame::tcp_v6(other, PORT).syn().build();
        fx.expect_n(&format!("{other} within burst"), &syn, Verdict::Passed, 3);
        fx.expect(
            &format!("{other} over budget"),
            &syn,
            Verdict::SynRateLimited,
        );
    }
}

#[test]
fn tokens_refill_at_the_configured_rate() {
    if !privileged("tokens_refill_at_the_configured_rate") {
        return;
    }
    // 2 tokens per second, bucket of 1: one SYN now, then one more after half a second.
    let fx = Fixture::new(XdpConfig {
        syn_rate_per_sec: 2,
        syn_burst: 1,
        ..DEFAULT_CONFIG
    });
    for family in FAMILIES {
        let syn = Frame::tcp(family.source(1), PORT).syn().build();
        fx.expect(&format!("{family:?} first SYN"), &syn, Verdict::Passed);
        fx.expect(
            &format!("{family:?} at once"),
            &syn,
            Verdict::SynRateLimited,
        );
        std::thread::sleep(std::time::Duration::from_millis(700));
        fx.expect(&format!("{family:?} 0.7 s later"), &syn, Verdict::Passed);
        fx.expect(
            &format!("{family:?} at once again"),
            &syn,
            Verdict::SynRateLimited,
        );
    }
}

#[test]
fn listen_ports_follow_the_map() {
    if !privileged("listen_ports_follow_the_map") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/24");
    fx.block("2001:db8::/32");
    for family in FAMILIES {
        let src = family.source(1);
        fx.listen(8443);
        fx.expect(
            &format!("{family:?} blocked SYN to the added port"),
            &Frame::tcp(src, 8443).syn().build(),
            Verdict::BlockedCidr,
        );
        fx.unlisten(PORT);
        fx.expect(
            &format!("{family:?} blocked SYN to the removed port"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::NotOurs,
        );
        fx.unlisten(8443);
        fx.expect(
            &format!("{family:?} blocked SYN with no listen ports"),
            &Frame::tcp(src, 8443).syn().build(),
            Verdict::NotOurs,
        );
        fx.listen(PORT);
        fx.expect(
            &format!("{family:?} blocked SYN to the port added back"),
            &Frame::tcp(src, PORT).syn().build(),
            Verdict::BlockedCidr,
        );
    }
}

#[test]
fn limiter_disabled_never_limits() {
    if !privileged("limiter_disabled_never_limits") {
        return;
    }
    let mut fx = Fixture::new(XdpConfig {
        syn_rate_per_sec: 0,
        syn_burst: 1,
        new_state_per_cpu_per_sec: 0,
        flags: 0,
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: 2,
    });
    for family in FAMILIES {
        fx.expect_n(
            &format!("{family:?} SYN with the limiter off"),
            &Frame::tcp(family.source(1), PORT).syn().build(),
            Verdict::Passed,
            20,
        );
    }
    // Blocks and bans do not depend on the limiter.
    fx.block("198.51.100.9/32");
    fx.expect(
        "blocked with the limiter off",
        &Frame::tcp_v4(v4(9), PORT).syn().build(),
        Verdict::BlockedCidr,
    );
    // Switching it on (a reload) takes effect at the next packet.
    fx.set_config(XdpConfig {
        flags: XdpConfig::FLAG_SYN_LIMIT,
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: 2,
        new_state_per_cpu_per_sec: 1_000,
        ..DEFAULT_CONFIG
    });
    let syn = Frame::tcp_v4(v4(1), PORT).syn().build();
    fx.expect_n("limiter switched on", &syn, Verdict::Passed, 3);
    fx.expect("limiter switched on, over", &syn, Verdict::SynRateLimited);
    // And off again.
    fx.set_config(XdpConfig {
        flags: 0,
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: 2,
        ..DEFAULT_CONFIG
    });
    fx.expect_n("limiter switched off", &syn, Verdict::Passed, 5);
}

#[test]
fn state_budget_suppresses_new_sources_per_cpu() {
    if !privileged("state_budget_suppresses_new_sources_per_cpu") {
        return;
    }
    // STATE_BUDGET is per CPU and test runs execute on the calling CPU: stay on one.
    let cpu = pin_to_current_cpu();
    const K: u8 = 4;
    const M: u8 = 3;
    let fx = Fixture::new(XdpConfig {
        syn_rate_per_sec: 0,
        syn_burst: 2,
        new_state_per_cpu_per_sec: u32::from(K),
        flags: XdpConfig::FLAG_SYN_LIMIT,
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: 2,
    });
    // K IPv4 and IPv6 sources together: both families draw on one budget.
    let sources: Vec<IpAddr> = (1..=K + M)
        .map(|n| {
            if n % 2 == 0 {
                IpAddr::V4(v4(n))
            } else {
                IpAddr::V6(v6(u16::from(n), 1))
            }
        })
        .collect();
    for (i, src) in sources.iter().enumerate() {
        let verdict = if i < usize::from(K) {
            Verdict::Passed
        } else {
            Verdict::StateSuppressed
        };
        fx.expect(
            &format!("first SYN from new source {src} (#{})", i + 1),
            &Frame::tcp(*src, PORT).syn().build(),
            verdict,
        );
    }
    let budget = fx.state_budget(cpu);
    assert_eq!(
        (budget.created, budget.suppressed),
        (u32::from(K), u32::from(M)),
        "{budget:?}"
    );
    // Sources with state are limited as usual: one token left of a burst of 2.
    for src in &sources[..usize::from(K)] {
        let syn = Frame::tcp(*src, PORT).syn().build();
        fx.expect(&format!("{src} second SYN"), &syn, Verdict::Passed);
        fx.expect(&format!("{src} third SYN"), &syn, Verdict::SynRateLimited);
    }
    // Suppressed sources still get no state, however often they come, and are never dropped.
    for src in &sources[usize::from(K)..] {
        fx.expect_n(
            &format!("{src} again"),
            &Frame::tcp(*src, PORT).syn().build(),
            Verdict::StateSuppressed,
            3,
        );
    }
    // Packets that create no state are unaffected by the spent budget.
    fx.expect(
        "ACK from a suppressed source",
        &Frame::tcp(sources[usize::from(K)], PORT).ack().build(),
        Verdict::Passed,
    );
    let budget = fx.state_budget(cpu);
    assert_eq!(
        (budget.created, budget.suppressed),
        (u32::from(K), u32::from(M) * 4),
        "{budget:?}"
    );
    let mut expected = [0; Verdict::COUNT as usize];
    expected[Verdict::Passed as usize] = 2 * u64::from(K) + 1;
    expected[Verdict::SynRateLimited as usize] = u64::from(K);
    expected[Verdict::StateSuppressed as usize] = 4 * u64::from(M);
    assert_eq!(fx.counts(), expected);
}

#[test]
fn zero_state_budget_suppresses_every_new_source() {
    if !privileged("zero_state_budget_suppresses_every_new_source") {
        return;
    }
    pin_to_current_cpu();
    let fx = Fixture::new(XdpConfig {
        new_state_per_cpu_per_sec: 0,
        ..DEFAULT_CONFIG
    });
    for family in FAMILIES {
        fx.expect_n(
            &format!("{family:?} SYN with no state budget"),
            &Frame::tcp(family.source(1), PORT).syn().build(),
            Verdict::StateSuppressed,
            5,
        );
    }
}

// ---------------------------------------------------------------------------------------
// The harness itself
// ---------------------------------------------------------------------------------------

#[test]
fn fixture_instances_are_isolated() {
    if !privileged("fixture_instances_are_isolated") {
        return;
    }
    let mut a = Fixture::new(DEFAULT_CONFIG);
    let b = Fixture::new(DEFAULT_CONFIG);
    a.block("198.51.100.1/32");
    let syn = Frame::tcp_v4(v4(1), PORT).syn().build();
    a.expect("blocked in A", &syn, Verdict::BlockedCidr);
    b.expect("not blocked in B", &syn, Verdict::Passed);
    assert_eq!(a.counts()[Verdict::Passed as usize], 0);
    assert_eq!(b.counts()[Verdict::BlockedCidr as usize], 0);
    // The two programs are distinct kernel objects.
    let id = |fx: &Fixture| {
        let program: &Xdp = fx
            .ebpf
            .program(names::PROGRAM)
            .expect("program")
            .try_into()
            .expect("XDP");
        program.info().expect("program info").id()
    };
    assert_ne!(id(&a), id(&b));
}

/// relay-ctl's own map wrapper forgets limiter buckets that have been idle long enough (the
/// kernel would keep them until the LRU is full), and keeps fresh ones.
#[test]
fn idle_limiter_state_is_forgotten_by_userspace() {
    if !privileged("idle_limiter_state_is_forgotten_by_userspace") {
        return;
    }
    let (mut ebpf, _logger) = relay_tests::kernel::load_xdp();
    let mut maps = relay_ctl::xdp::XdpMaps::take(&mut ebpf).expect("maps");
    maps.set_config(XdpConfig {
        syn_rate_per_sec: 1,
        syn_burst: 4,
        new_state_per_cpu_per_sec: 1000,
        flags: XdpConfig::FLAG_SYN_LIMIT,
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: 2,
    })
    .expect("config");
    maps.set_ports(&[PORT]).expect("ports");
    let program: &Xdp = ebpf
        .program(names::PROGRAM)
        .expect("program")
        .try_into()
        .expect("XDP");
    for src in [IpAddr::V4(v4(7)), IpAddr::V6(v6(7, 1))] {
        let frame = Frame::tcp(src, PORT).syn().build();
        let mut out = vec![0u8; frame.len() + 256];
        let run = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("test run");
        assert_eq!(run.return_value, 2, "first SYN passes and creates state");
    }
    let now = monotonic_ns();
    let minute = 60 * 1_000_000_000;
    assert_eq!(
        maps.forget_idle_limiter_state(now, minute),
        0,
        "fresh state kept"
    );
    assert_eq!(
        maps.forget_idle_limiter_state(now + minute + 1, minute),
        2,
        "idle IPv4 and IPv6 buckets removed"
    );
    assert_eq!(maps.forget_idle_limiter_state(now + 2 * minute, minute), 0);
}

// ---------------------------------------------------------------------------------------
// The TC hook
// ---------------------------------------------------------------------------------------

/// The TC classifier (what `auto` attaches on a veth) shares the XDP program's parser, policy
/// and maps: every kind of frame gets the same verdict from both, counted in the same
/// counters, and a source's SYN budget is one budget across both.
#[test]
fn the_tc_hook_decides_as_xdp_does() {
    if !privileged("the_tc_hook_decides_as_xdp_does") {
        return;
    }
    let mut fx = Fixture::new(DEFAULT_CONFIG);
    fx.block("198.51.100.0/25");
    fx.block("2001:db8:0:c8::/64");
    fx.allow("198.51.100.7/32");
    fx.ban(v4(200), BanEntry::NEVER);
    fx.ban_with(v4(210), BanEntry::NEVER, BanAction::Front);
    let cases = [
        ("SYN", Frame::tcp(v4(201), PORT).syn(), Verdict::Passed),
        (
            "IPv6 ACK",
            Frame::tcp(v6(1, 1), PORT).ack(),
            Verdict::Passed,
        ),
        (
            "SYN from a blocked CIDR",
            Frame::tcp(v4(1), PORT).syn(),
            Verdict::BlockedCidr,
        ),
        (
            "IPv6 ACK from a blocked CIDR",
            Frame::tcp(v6(200, 1), PORT).ack(),
            Verdict::BlockedCidr,
        ),
        (
            "VLAN-tagged SYN from a blocked CIDR",
            Frame::tcp(v4(2), PORT).syn().vlan(10),
            Verdict::BlockedCidr,
        ),
        (
            "allowlisted inside the blocked CIDR",
            Frame::tcp(v4(7), PORT).syn(),
            Verdict::Allowlisted,
        ),
        ("banned", Frame::tcp(v4(200), PORT).ack(), Verdict::Banned),
        (
            "front-banned ACK",
            Frame::tcp(v4(210), PORT).psh().ack().payload(10),
            Verdict::BannedFronted,
        ),
        (
            "another port",
            Frame::tcp(v4(1), OTHER_PORT).syn(),
            Verdict::NotOurs,
        ),
        ("UDP", Frame::udp(v4(1), PORT), Verdict::NotOurs),
        (
            "IPv4 fragment",
            Frame::tcp(v4(1), PORT).fragment_offset(8),
            Verdict::Fragment,
        ),
        (
            "behind an IPv6 extension header",
            Frame::tcp_v6(v6(200, 1), PORT)
                .syn()
                .ipv6_extension(IPPROTO_HOPOPTS),
            Verdict::Unparsed,
        ),
        (
            "truncated TCP header",
            Frame::tcp(v4(1), PORT)
                .syn()
                .truncate(ETH_HLEN + IPV4_HLEN + 10),
            Verdict::Unparsed,
        ),
    ];
    for (what, frame, verdict) in &cases {
        let frame = frame.build();
        fx.expect(what, &frame, *verdict);
        fx.expect_tc(what, &frame, *verdict);
    }
    // One SYN budget (a burst of 3) per source, whichever hook spends it.
    let syn = Frame::tcp(v4(150), PORT).syn().build();
    fx.expect("SYN 1", &syn, Verdict::Passed);
    fx.expect_tc("SYN 2", &syn, Verdict::Passed);
    fx.expect("SYN 3", &syn, Verdict::Passed);
    fx.expect_tc("SYN 4", &syn, Verdict::SynRateLimited);
    fx.expect("SYN 5", &syn, Verdict::SynRateLimited);
    // One banned budget (a burst of 2) per front-banned source, likewise.
    let syn = Frame::tcp(v4(210), PORT).syn().build();
    fx.expect_tc("front-banned SYN 1", &syn, Verdict::BannedFronted);
    fx.expect("front-banned SYN 2", &syn, Verdict::BannedFronted);
    fx.expect_tc("front-banned SYN 3", &syn, Verdict::BannedSynLimited);
    fx.expect("front-banned SYN 4", &syn, Verdict::BannedSynLimited);
}
