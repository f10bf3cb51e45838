//! Kernel passthrough: the sockmap stream verdict program that moves a flow's bytes (one
//! direction of a relayed pair whose bytes pass through unchanged) from its source socket into
//! its target socket without a trip through userspace; see `relay_common::passage` for the
//! maps and `relay-ebpf/src/passage.rs` for the program.
//!
//! [`Passage::load`] loads the program; [`Passage::open`] puts a pair of sockets in the maps
//! and returns the [`Flow`] that takes them out again when dropped.

mod flow;
mod socket;

use std::{
    os::fd::AsRawFd as _,
    sync::{Mutex, RwLock},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, MapData, MapError, SockHash},
    programs::{ProgramError, SkSkb},
};
use relay_common::passage::{self as names, FlowControl, FlowCounts};

pub use self::flow::Flow;

/// Why the program is not used.
#[derive(Debug, thiserror::Error)]
pub enum PassageError {
    /// The object could not be loaded (no CAP_BPF, verifier rejection, ...).
    #[error("loading the sockmap object failed: {0}")]
    Load(#[source] EbpfError),
    /// The program could not be loaded or attached.
    #[error("loading the stream verdict program failed: {0}")]
    Program(#[source] ProgramError),
    /// A map was missing or of the wrong type.
    #[error("sockmap map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: MapError,
    },
    /// `[server] passthrough` is not `"auto"`.
    #[error("[server] passthrough is not \"auto\"")]
    Off,
}

/// The loaded program and its maps.
pub struct Passage {
    sockets: Mutex<Sockets>,
    control: Mutex<HashMap<MapData, u64, FlowControl>>,
    counts: RwLock<HashMap<MapData, u64, FlowCounts>>,
    /// Keeps the program loaded and attached.
    _ebpf: Mutex<Ebpf>,
}

struct Sockets {
    sources: SockHash<MapData, u64>,
    targets: SockHash<MapData, u64>,
}

/// Entries in each of the program's maps (a flow has one in each).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Entries {
    /// Source sockets.
    pub sources: u64,
    /// Target sockets.
    pub targets: u64,
    /// Flow controls.
    pub control: u64,
    /// Flow counters.
    pub counts: u64,
}

impl Entries {
    /// Label value and count of each map.
    pub fn by_map(&self) -> [(&'static str, u64); 4] {
        [
            ("sources", self.sources),
            ("targets", self.targets),
            ("control", self.control),
            ("counts", self.counts),
        ]
    }
}

impl Passage {
    /// Loads and attaches the program as `mode` says; `Err` says why the relay splices instead.
    pub fn start(mode: crate::config::PassthroughMode) -> Result<Passage, PassageError> {
        match mode {
            crate::config::PassthroughMode::Auto => Passage::load(),
            _ => Err(PassageError::Off),
        }
    }

    /// Loads the embedded program and attaches it to the source map.
    pub fn load() -> Result<Passage, PassageError> {
        let mut ebpf = EbpfLoader::new()
            .load(crate::ebpf::PASSAGE)
            .map_err(PassageError::Load)?;
        let sources: SockHash<MapData, u64> = take(&mut ebpf, names::SOURCES)?;
        let targets: SockHash<MapData, u64> = take(&mut ebpf, names::TARGETS)?;
        let control = take(&mut ebpf, names::CONTROL)?;
        let counts = take(&mut ebpf, names::COUNTS)?;
        let program: &mut SkSkb = ebpf
            .program_mut("relay_passage")
            .ok_or(ProgramError::NotLoaded)
            .and_then(TryInto::try_into)
            .map_err(PassageError::Program)?;
        program.load().map_err(PassageError::Program)?;
        program
            .attach(sources.fd())
            .map_err(PassageError::Program)?;
        Ok(Passage {
            sockets: Mutex::new(Sockets { sources, targets }),
            control: Mutex::new(control),
            counts: RwLock::new(counts),
            _ebpf: Mutex::new(ebpf),
        })
    }

    /// Puts `from` (as a source) and `to` (as its target) in the maps, with `budget` bytes the
    /// program may redirect before it passes everything to userspace. `from` must have no
    /// segment read in part: the program would forward it whole again.
    pub fn open<'a>(
        &'a self,
        from: &impl std::os::fd::AsFd,
        to: &impl std::os::fd::AsFd,
        budget: u64,
    ) -> std::io::Result<Flow<'a>> {
        Flow::open(self, from.as_fd(), to.as_fd(), budget)
    }

    /// Entries in each map now (walks them: for metrics and tests, not the data path).
    pub fn entries(&self) -> Entries {
        let count = |keys: &mut dyn Iterator<Item = Result<u64, MapError>>| {
            keys.filter(Result::is_ok).count() as u64
        };
        let sockets = lock(&self.sockets);
        let control = lock(&self.control);
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        Entries {
            sources: count(&mut sockets.sources.keys()),
            targets: count(&mut sockets.targets.keys()),
            control: count(&mut control.keys()),
            counts: count(&mut counts.keys()),
        }
    }

    fn insert_sockets(
        &self,
        source: u64,
        from: std::os::fd::BorrowedFd<'_>,
        target: u64,
        to: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), MapError> {
        let mut sockets = lock(&self.sockets);
        sockets.targets.insert(target, to.as_raw_fd(), 0)?;
        if let Err(e) = sockets.sources.insert(source, from.as_raw_fd(), 0) {
            let _ = sockets.targets.remove(&target);
            return Err(e);
        }
        Ok(())
    }

    fn remove_sockets(&self, source: u64, target: u64) {
        let mut sockets = lock(&self.sockets);
        // The source first: from then on nothing is redirected into the target.
        let _ = sockets.sources.remove(&source);
        let _ = sockets.targets.remove(&target);
    }

    fn set_control(&self, source: u64, control: FlowControl) -> Result<(), MapError> {
        lock(&self.control).insert(source, control, 0)
    }

    fn remove_control(&self, source: u64) {
        let _ = lock(&self.control).remove(&source);
    }

    fn create_counts(&self, source: u64) -> Result<(), MapError> {
        self.counts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source, FlowCounts::default(), 0)
    }

    fn counts(&self, source: u64) -> Result<FlowCounts, MapError> {
        self.counts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&source, 0)
    }

    fn remove_counts(&self, source: u64) {
        let _ = self
            .counts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&source);
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, PassageError> {
    let map = ebpf.take_map(name).ok_or(PassageError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| PassageError::Map { name, source })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
