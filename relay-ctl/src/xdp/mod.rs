//! Loading the XDP program, attaching it to interfaces, and detaching it again.

pub mod driver;
pub mod interfaces;
pub mod maps;

pub mod pin;
pub mod unrated;

use std::{fmt, path::PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
};
use tokio::io::{Interest, unix::AsyncFd};

pub use self::{
    maps::{MapsError, XdpMaps},
    unrated::UnratedMarks,
};
use crate::config;

/// How the program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before any allocation.
    Native,
    /// In the core stack after the skb is built (drivers without XDP support). Copies every
    /// packet that lacks XDP's 256 bytes of headroom, which is nearly all of them.
    Generic,
    /// Not XDP: the same program as a TC ingress (tcx) classifier, after the skb is built like
    /// generic XDP but without its copy. For veth, where both XDP modes copy every packet.
    Tc,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Tc => "tc",
        })
    }
}

/// Why the XDP program could not be used.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The object could not be loaded (no CAP_BPF, no BTF, verifier rejection, ...).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] EbpfError),
    /// The program could not be loaded into the kernel.
    #[error("loading the XDP program failed: {0}")]
    Program(#[source] ProgramError),
    /// Attaching to an interface failed in every allowed mode.
    #[error("attaching XDP to {interface} failed: {reason}")]
    Attach {
        /// The interface.
        interface: String,
        /// What each attempted mode said.
        reason: String,
    },
    /// A map was missing or refused an update.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// The pin directory could not be used.
    #[error(transparent)]
    Pin(#[from] pin::PinDirError),
}

/// The loaded program, its maps, and the interfaces it is attached to. Dropping it detaches,
/// except for links pinned with `[xdp] keep_on_exit`.
pub struct XdpProgram {
    ebpf: Ebpf,
    maps: XdpMaps,
    links: Vec<(String, AttachMode, LinkId)>,
    /// With `keep_on_exit`: where maps and links are pinned.
    pins: Option<pin::PinDir>,
}

/// The kernel's handle on one attachment.
#[derive(Debug)]
enum LinkId {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

/// The program's log channel; must be drained (see [`drain_logs`]).
pub type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

impl XdpProgram {
    /// Loads the embedded object into the kernel (not yet attached). With `pins`, the maps are
    /// pinned there, or taken over if an earlier run pinned them (bans and limiter state
    /// carry over). The returned logger must stay alive while the program is loaded.
    pub fn load(pins: Option<pin::PinDir>) -> Result<(Self, Option<Logger>), XdpError> {
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            for name in relay_common::maps::PINNED {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader.load(crate::ebpf::OBJECT).map_err(XdpError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::warn!("eBPF log channel unavailable, kernel-side messages are lost: {e}");
                None
            }
        };
        program(&mut ebpf)
            .and_then(Xdp::load)
            .map_err(XdpError::Program)?;
        // Only the TC mode needs it: where it fails, the XDP modes still work.
        if let Err(e) = classifier(&mut ebpf).and_then(SchedClassifier::load) {
            tracing::warn!(
                "the program's TC variant did not load, only XDP modes are available: {}",
                error_chain(&e)
            );
        }
        let maps = XdpMaps::take(&mut ebpf)?;
        Ok((
            XdpProgram {
                ebpf,
                maps,
                links: Vec::new(),
                pins,
            },
            logger,
        ))
    }

    /// Attaches to `interface` in the first mode of [`driver::attach_order`] that works.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: config::XdpMode,
    ) -> Result<AttachMode, XdpError> {
        let driver = driver::driver(interface).ok();
        let attempts = driver::attach_order(mode, driver.as_deref());
        if let Some(attached) = self.take_over(interface, attempts)? {
            return Ok(attached);
        }
        let mut failures = Vec::new();
        for &attempt in attempts {
            match self.attach_once(interface, attempt) {
                Ok(link) => {
                    if !failures.is_empty() {
                        tracing::info!(
                            interface,
                            "falling back to {attempt} mode: {}",
                            failures.join("; ")
                        );
                    } else if attempt == AttachMode::Tc && mode == config::XdpMode::Auto {
                        tracing::info!(
                            interface,
                            driver = driver.as_deref().unwrap_or("unknown"),
                            "TC ingress instead of XDP: on this driver XDP copies every packet"
                        );
                    }
                    let link = match &self.pins {
                        Some(pins) => {
                            self.pin_link(interface, attempt, link, pins.link(interface, attempt))?
                        }
                        None => link,
                    };
                    self.links.push((interface.to_owned(), attempt, link));
                    return Ok(attempt);
                }
                Err(e) => failures.push(format!("{attempt} mode: {}", error_chain(&e))),
            }
        }
        Err(XdpError::Attach {
            interface: interface.to_owned(),
            reason: failures.join("; "),
        })
    }

    /// One attach in `mode`, unpinned.
    fn attach_once(&mut self, interface: &str, mode: AttachMode) -> Result<LinkId, ProgramError> {
        let ebpf = &mut self.ebpf;
        match mode {
            AttachMode::Native => program(ebpf)?
                .attach(interface, XdpMode::Driver)
                .map(LinkId::Xdp),
            AttachMode::Generic => program(ebpf)?
                .attach(interface, XdpMode::Skb)
                .map(LinkId::Xdp),
            AttachMode::Tc => classifier(ebpf)?
                .attach(interface, TcAttachType::Ingress)
                .map(LinkId::Tc),
        }
    }

    /// With pins: if an earlier run left a link on `interface` in an allowed mode, swaps this
    /// program into it atomically (no moment without a program). A link in a mode no longer
    /// allowed is removed, which detaches it, and a fresh attach follows.
    fn take_over(
        &mut self,
        interface: &str,
        allowed: &[AttachMode],
    ) -> Result<Option<AttachMode>, XdpError> {
        let Some(pins) = &self.pins else {
            return Ok(None);
        };
        let Some((mode, path)) = pins.existing_link(interface) else {
            return Ok(None);
        };
        if !allowed.contains(&mode) {
            tracing::info!(interface, %mode, "pinned XDP link in a mode no longer configured: detaching it");
            pins.remove(&path);
            return Ok(None);
        }
        let failed = |reason: String| XdpError::Attach {
            interface: interface.to_owned(),
            reason,
        };
        let pinned = PinnedLink::from_pin(&path).map_err(|e| {
            failed(format!(
                "opening pinned link {}: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        let id = self
            .replace_program(mode, FdLink::from(pinned))
            .map_err(|e| failed(format!("pinned link {}: {e}", path.display())))?;
        tracing::info!(interface, %mode, "took over the pinned link without detaching");
        self.links.push((interface.to_owned(), mode, id));
        Ok(Some(mode))
    }

    /// Pins a fresh link at `path` so it outlives the process; returns the program's handle on
    /// it (closing that handle leaves the pinned link attached).
    fn pin_link(
        &mut self,
        interface: &str,
        mode: AttachMode,
        id: LinkId,
        path: PathBuf,
    ) -> Result<LinkId, XdpError> {
        let failed = |reason: String| XdpError::Attach {
            interface: interface.to_owned(),
            reason,
        };
        let fd = match id {
            LinkId::Xdp(id) => program(&mut self.ebpf)
                .and_then(|p| p.take_link(id))
                .map(FdLink::try_from),
            LinkId::Tc(id) => classifier(&mut self.ebpf)
                .and_then(|p| p.take_link(id))
                .map(FdLink::try_from),
        }
        .map_err(XdpError::Program)?
        .map_err(|e| {
            failed(format!(
                "{mode} attachment is not a bpf_link, cannot pin it: {}",
                error_chain(&e)
            ))
        })?;
        let pinned = fd.pin(&path).map_err(|e| {
            failed(format!(
                "pinning at {}: {}",
                path.display(),
                error_chain(&e)
            ))
        })?;
        self.replace_program(mode, FdLink::from(pinned))
            .map_err(failed)
    }

    /// Makes `link` (a bpf_link in `mode`) run this program, atomically, and returns the
    /// program's handle on it.
    fn replace_program(&mut self, mode: AttachMode, link: FdLink) -> Result<LinkId, String> {
        match mode {
            AttachMode::Native | AttachMode::Generic => {
                let link = XdpLink::try_from(link).map_err(|e| error_chain(&e))?;
                program(&mut self.ebpf)
                    .and_then(|p| p.attach_to_link(link))
                    .map(LinkId::Xdp)
            }
            AttachMode::Tc => {
                let link = SchedClassifierLink::try_from(link).map_err(|e| error_chain(&e))?;
                classifier(&mut self.ebpf)
                    .and_then(|p| p.attach_to_link(link))
                    .map(LinkId::Tc)
            }
        }
        .map_err(|e| format!("replacing the program: {}", error_chain(&e)))
    }

    /// Whether links and maps stay after exit.
    pub fn keeps_on_exit(&self) -> bool {
        self.pins.is_some()
    }

    /// Interfaces the program is attached to, with their modes.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.links.iter().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// The maps, for writing lists and reading counters.
    pub fn maps(&mut self) -> &mut XdpMaps {
        &mut self.maps
    }

    /// Read access to the maps.
    pub fn maps_ref(&self) -> &XdpMaps {
        &self.maps
    }

    /// Detaches from every interface, logging each; with pins, leaves everything attached.
    pub fn detach_all(&mut self) {
        if self.pins.is_some() {
            for (interface, mode, _) in &self.links {
                tracing::info!(interface, %mode, "program left attached and pinned (keep_on_exit)");
            }
            // Closing the program's handles leaves the pinned links attached.
            self.links.clear();
            return;
        }
        let links = std::mem::take(&mut self.links);
        for (interface, mode, link) in links {
            let detached = match link {
                LinkId::Xdp(link) => program(&mut self.ebpf).and_then(|p| p.detach(link)),
                LinkId::Tc(link) => classifier(&mut self.ebpf).and_then(|p| p.detach(link)),
            };
            match detached {
                Ok(()) => tracing::info!(interface, %mode, "program detached"),
                Err(e) => tracing::warn!(interface, %mode, "detaching failed: {e}"),
            }
        }
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The XDP program in `ebpf`.
fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, ProgramError> {
    named(ebpf, relay_common::maps::PROGRAM)?.try_into()
}

/// The TC classifier in `ebpf`.
fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, ProgramError> {
    named(ebpf, relay_common::maps::PROGRAM_TC)?.try_into()
}

/// Program `name` in `ebpf`; aya has no "not found" error, so a missing one is reported as
/// the wrong type.
fn named<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, ProgramError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
}

/// An error and its sources on one line: aya's top-level messages alone hide the errno.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Forwards the program's log records to the process logger until the task is dropped.
pub async fn drain_logs(logger: Logger) {
    // SAFETY: the logger owns its ring-buffer fd for its whole life and always reports the same
    // one; the AsyncFd owns the logger, so the fd outlives the registration.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot poll the eBPF log channel: {}", e.into_parts().1);
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
