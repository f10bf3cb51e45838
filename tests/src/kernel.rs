//! Reading a running relay's kernel state from outside the process, by program id.

use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use relay_common::Verdict;

/// The verdict counters (summed over CPUs) of the XDP program with id `prog_id`.
pub fn verdict_counts(prog_id: u32) -> [u64; Verdict::COUNT as usize] {
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .unwrap_or_else(|| panic!("program {prog_id} not loaded"));
    let map_id = info
        .map_ids()
        .expect("map ids")
        .expect("program has maps")
        .into_iter()
        .find(|id| {
            MapInfo::from_id(*id)
                .ok()
                .is_some_and(|m| m.name_as_str() == Some(relay_common::maps::VERDICTS))
        })
        .expect("VERDICTS map");
    let data = MapData::from_id(map_id).expect("open VERDICTS");
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("per-CPU array");
    std::array::from_fn(|i| {
        array
            .get(&u32::try_from(i).expect("index"), 0)
            .expect("counter")
            .iter()
            .sum()
    })
}

/// relay's eBPF object with its XDP program loaded into the kernel (verified, not attached),
/// and the log channel that must outlive it (it owns the log ring buffer's fd).
pub fn load_xdp() -> (aya::Ebpf, relay_ctl::xdp::Logger) {
    let mut ebpf = aya::Ebpf::load(relay_ctl::ebpf::OBJECT).expect("load the eBPF object");
    let logger = aya_log::EbpfLogger::init(&mut ebpf).expect("eBPF logger");
    let program: &mut aya::programs::Xdp = ebpf
        .program_mut(relay_common::maps::PROGRAM)
        .expect("XDP program in the object")
        .try_into()
        .expect("an XDP program");
    program.load().expect("verifier accepts the program");
    (ebpf, logger)
}
