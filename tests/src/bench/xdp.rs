//! Group `xdp-verdict`: what relay's XDP verdict costs per packet, next to a minimal program
//! doing the same lookups (`relay-xdp-minimal`, `relay-ebpf/src/minimal.rs`), both run in the
//! kernel with `BPF_PROG_TEST_RUN`.
//!
//! Both programs get the same 10,001 blocked IPv4 prefixes and see the same four frames: a SYN
//! from a blocked prefix, a bare SYN from an allowed source (through the limiter), an ACK to the
//! listen port and a packet to another port. A measurement is the kernel's own `duration`: the
//! mean ns per run over `repeat` runs, rounded down to whole ns by the kernel. A round takes the
//! mean of `calls` such measurements of each program for each frame (finer than whole ns),
//! alternating which program goes first so that noise falls on both; the report gives each
//! program's median round and the ratio of the medians.
//! Before measuring, one run of each frame must give the expected action and move exactly the
//! expected verdict counter of each program. `--xdp-baseline PATH` adds a third program: relay's
//! from another build (an object file, say main's), to compare two builds in one run.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use relay_common::{Verdict, XdpConfig, maps as names};
use serde_json::{Value, json};

use crate::packet::Frame;

/// ELF object of the minimal program, compiled by `tests/build.rs`.
static MINIMAL: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-xdp-minimal"));
/// Name of the minimal program in its object.
const MINIMAL_PROGRAM: &str = "relay_xdp_minimal";

/// The listen port: the one the minimal program compares with.
const LISTEN_PORT: u16 = 443;
/// A port neither program acts on.
const OTHER_PORT: u16 = 8080;
/// Blocked prefixes spread over the IPv4 space, besides [`BLOCKED_SOURCE`]'s.
const SPREAD_PREFIXES: usize = 10_000;
/// The blocked source, inside the 10,001st prefix (198.19.0.0/24).
const BLOCKED_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 7);
/// A source no prefix covers.
const ALLOWED_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 7);

/// Limits the minimal program has as constants: high enough that the SYN always passes, so
/// every run spends a token the same way.
const CONFIG: XdpConfig = XdpConfig {
    syn_rate_per_sec: 1_000_000,
    syn_burst: 1_000_000,
    new_state_per_cpu_per_sec: 1_000_000,
    flags: XdpConfig::FLAG_SYN_LIMIT,
    banned_syn_rate_per_sec: 0,
    banned_syn_burst: 1,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Rounds, test runs per program and frame in a round, and runs per test run.
#[derive(Clone, Copy)]
struct Sizes {
    rounds: usize,
    calls: u32,
    repeat: u32,
}

/// One measured frame.
struct Packet {
    name: &'static str,
    frame: Vec<u8>,
    verdict: Verdict,
}

fn packets() -> [Packet; 4] {
    [
        Packet {
            name: "SYN from a blocked prefix",
            frame: Frame::tcp_v4(BLOCKED_SOURCE, LISTEN_PORT).syn().build(),
            verdict: Verdict::BlockedCidr,
        },
        Packet {
            name: "bare SYN through the limiter",
            frame: Frame::tcp_v4(ALLOWED_SOURCE, LISTEN_PORT).syn().build(),
            verdict: Verdict::Passed,
        },
        Packet {
            name: "ACK to the listen port",
            frame: Frame::tcp_v4(ALLOWED_SOURCE, LISTEN_PORT).ack().build(),
            verdict: Verdict::Passed,
        },
        Packet {
            name: "packet to another port",
            frame: Frame::tcp_v4(ALLOWED_SOURCE, OTHER_PORT).ack().build(),
            verdict: Verdict::NotOurs,
        },
    ]
}

/// 10,000 distinct prefixes (/16 to /32, mostly /24 and /32, as blocklist feeds are) from a
/// fixed pseudo-random sequence, none inside 198.18.0.0/15, then 198.19.0.0/24.
fn blocked_prefixes() -> Vec<(u32, [u8; 4])> {
    const LENGTHS: [u32; 10] = [16, 20, 22, 24, 24, 24, 28, 32, 32, 32];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut seen = std::collections::HashSet::new();
    let mut prefixes = Vec::with_capacity(SPREAD_PREFIXES + 1);
    while prefixes.len() < SPREAD_PREFIXES {
        let r = next();
        let len = LENGTHS[(r % LENGTHS.len() as u64) as usize];
        let addr = (r >> 32) as u32 & (u32::MAX << (32 - len));
        if addr >> 17 == u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17 || !seen.insert((len, addr))
        {
            continue;
        }
        prefixes.push((len, addr.to_be_bytes()));
    }
    prefixes.push((24, [198, 19, 0, 0]));
    prefixes
}

/// One loaded program, its verdict counters, and what keeps it alive.
struct Loaded {
    ebpf: Ebpf,
    program: &'static str,
    verdicts: PerCpuArray<MapData, u64>,
    _logger: Option<relay_ctl::xdp::Logger>,
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} not in the object"))?;
    T::try_from(map).with_context(|| format!("map {name}"))
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} not in the object"))?
        .try_into()
        .context("not an XDP program")?;
    program
        .load()
        .with_context(|| format!("verifier refused {name}"))
}

/// Makes [`LISTEN_PORT`] relay's one listen port: in the port set of this build, or in the
/// `LISTEN_PORTS` hash map of builds from before the set became a global (a baseline).
fn listen(ebpf: &mut Ebpf) -> Result<()> {
    if ebpf.map(names::LISTEN_PORTS).is_some() {
        let mut ports: Array<MapData, [u8; names::LISTEN_PORT_SLOTS]> =
            take(ebpf, names::LISTEN_PORTS)?;
        let mut set = [0; names::LISTEN_PORT_SLOTS];
        set[usize::from(LISTEN_PORT)] = 1;
        return ports.set(0, set, 0).context("add the listen port");
    }
    let mut ports: HashMap<MapData, u16, u8> = take(ebpf, "LISTEN_PORTS")?;
    ports
        .insert(LISTEN_PORT, 1, 0)
        .context("add the listen port")
}

fn fill(trie: &mut LpmTrie<MapData, [u8; 4], u8>, prefixes: &[(u32, [u8; 4])]) -> Result<()> {
    for (len, addr) in prefixes {
        trie.insert(&Key::new(*len, *addr), 1, 0)
            .context("insert a blocked prefix")?;
    }
    Ok(())
}

impl Loaded {
    /// relay's program from `object` (the embedded one, as relay-ctl loads it, or a baseline
    /// build) with [`CONFIG`], [`LISTEN_PORT`] and the blocked prefixes.
    fn relay(ebpf: Result<Ebpf, aya::EbpfError>, prefixes: &[(u32, [u8; 4])]) -> Result<Loaded> {
        let mut ebpf = ebpf.context("load relay's object")?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).context("eBPF logger")?;
        load_program(&mut ebpf, names::PROGRAM)?;
        let mut config: Array<MapData, XdpConfig> = take(&mut ebpf, names::CONFIG)?;
        config.set(0, CONFIG, 0).context("write CONFIG")?;
        listen(&mut ebpf)?;
        fill(&mut take(&mut ebpf, names::BLOCK_V4)?, prefixes)?;
        let verdicts = take(&mut ebpf, names::VERDICTS)?;
        Ok(Loaded {
            ebpf,
            program: names::PROGRAM,
            verdicts,
            _logger: Some(logger),
        })
    }

    /// The minimal program with the blocked prefixes.
    fn minimal(prefixes: &[(u32, [u8; 4])]) -> Result<Loaded> {
        let mut ebpf = Ebpf::load(MINIMAL).context("load the minimal object")?;
        load_program(&mut ebpf, MINIMAL_PROGRAM)?;
        fill(&mut take(&mut ebpf, names::BLOCK_V4)?, prefixes)?;
        let verdicts = take(&mut ebpf, names::VERDICTS)?;
        Ok(Loaded {
            ebpf,
            program: MINIMAL_PROGRAM,
            verdicts,
            _logger: None,
        })
    }

    /// Runs the program `repeat` times on `frame`: its action and the kernel's mean ns per run.
    fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
        let program: &Xdp = self
            .ebpf
            .program(self.program)
            .context("program")?
            .try_into()
            .context("XDP")?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", self.program))?;
        let ns = u32::try_from(result.duration.as_nanos()).unwrap_or(u32::MAX);
        Ok((result.return_value, ns))
    }

    fn counts(&self) -> Result<Vec<u64>> {
        (0..Verdict::COUNT)
            .map(|i| {
                Ok(self
                    .verdicts
                    .get(&i, 0)
                    .context("read VERDICTS")?
                    .iter()
                    .sum())
            })
            .collect()
    }

    /// One run of `packet`: the expected action, and exactly its verdict counted once.
    fn check(&self, packet: &Packet) -> Result<()> {
        let before = self.counts()?;
        let (action, _) = self.run(&packet.frame, 1)?;
        let after = self.counts()?;
        let moved: Vec<(u32, u64)> = (0..Verdict::COUNT)
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a != b)
            .map(|(i, (b, a))| (i, a - b))
            .collect();
        ensure!(
            moved == [(packet.verdict as u32, 1)],
            "{}: {}: counters moved {moved:?}, expected {} once",
            self.program,
            packet.name,
            packet.verdict.name()
        );
        let wanted = if packet.verdict.drops() {
            XDP_DROP
        } else {
            XDP_PASS
        };
        if action != wanted {
            bail!(
                "{}: {}: action {action}, expected {wanted}",
                self.program,
                packet.name
            );
        }
        Ok(())
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The group's rows, one per frame. With `baseline`, an ELF object of relay's program from
/// another build (say, main's) is measured in the same rounds, next to this build's. Runs on a
/// thread of its own pinned to one CPU, so the caller's affinity (inherited by everything it
/// spawns later) is left alone.
pub fn verdict_costs(smoke: bool, baseline: Option<PathBuf>) -> Result<Vec<Value>> {
    let sizes = if smoke {
        Sizes {
            rounds: 3,
            calls: 1,
            repeat: 100,
        }
    } else {
        Sizes {
            rounds: 61,
            calls: 4,
            repeat: 5_000,
        }
    };
    std::thread::spawn(move || measure(sizes, baseline.as_deref()))
        .join()
        .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

fn measure(sizes: Sizes, baseline: Option<&Path>) -> Result<Vec<Value>> {
    let cpu = nix::sched::sched_getcpu().context("sched_getcpu")?;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .context("sched_setaffinity")?;
    let prefixes = blocked_prefixes();
    let mut programs = vec![
        Loaded::relay(Ebpf::load(relay_ctl::ebpf::OBJECT), &prefixes)?,
        Loaded::minimal(&prefixes)?,
    ];
    if let Some(path) = baseline {
        let loaded = Loaded::relay(Ebpf::load_file(path), &prefixes)
            .with_context(|| format!("baseline {}", path.display()))?;
        programs.push(loaded);
    }
    let packets = packets();
    for packet in &packets {
        for program in &programs {
            program.check(packet)?;
        }
    }
    // samples[packet][program]: one value per round.
    let mut samples = vec![vec![Vec::new(); programs.len()]; packets.len()];
    for round in 0..sizes.rounds {
        for (packet, per_program) in packets.iter().zip(samples.iter_mut()) {
            for k in 0..programs.len() {
                // Each program goes first in turn.
                let i = (k + round) % programs.len();
                let mut total = 0.0;
                for _ in 0..sizes.calls {
                    total += f64::from(programs[i].run(&packet.frame, sizes.repeat)?.1);
                }
                per_program[i].push(total / f64::from(sizes.calls));
            }
        }
    }
    Ok(packets
        .iter()
        .zip(samples)
        .map(|(packet, mut per_program)| {
            let medians: Vec<f64> = per_program.iter_mut().map(|s| median(s)).collect();
            let mut row = json!({
                "name": packet.name,
                "verdict": packet.verdict.name(),
                "relay_ns": medians[0],
                "minimal_ns": medians[1],
                "ratio": medians[0] / medians[1],
                "relay_ns_min": per_program[0].first(),
                "minimal_ns_min": per_program[1].first(),
                "rounds": sizes.rounds,
                "calls": sizes.calls,
                "repeat": sizes.repeat,
                "blocked_prefixes": prefixes.len(),
            });
            if let Some(path) = baseline {
                row["baseline"] = json!(path.display().to_string());
                row["baseline_ns"] = json!(medians[2]);
                row["baseline_ratio"] = json!(medians[2] / medians[1]);
            }
            row
        })
        .collect())
}
