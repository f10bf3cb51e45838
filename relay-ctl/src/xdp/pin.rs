//! The bpffs directory where `[xdp] keep_on_exit` pins maps and links:
//! `<pin_dir>/<layout>/<MAP>` and `<pin_dir>/<layout>/link-<interface>-<mode>`.

use std::{
    io,
    path::{Path, PathBuf},
};

use relay_common::maps::PIN_LAYOUT;

use super::AttachMode;

/// `BPF_FS_MAGIC` (linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why the pin directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinDirError {
    /// Not on a bpf filesystem: pins there would fail, or not survive.
    #[error(
        "[xdp] pin_dir {0} is not on a bpf filesystem; mount one (mount -t bpf bpf /sys/fs/bpf) \
         or set keep_on_exit = false"
    )]
    NotBpffs(PathBuf),
    /// Creating or inspecting it failed.
    #[error("[xdp] pin_dir {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A usable pin directory (the layout version included).
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Creates `<pin_dir>/<layout>` if needed and checks it is on a bpffs.
    pub fn open(pin_dir: &Path) -> Result<PinDir, PinDirError> {
        let root = pin_dir.join(PIN_LAYOUT);
        let io = |source| PinDirError::Io {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&root).map_err(io)?;
        let stat = nix::sys::statfs::statfs(&root).map_err(|e| io(e.into()))?;
        #[allow(
            clippy::useless_conversion,
            reason = "the field's type differs between libcs"
        )]
        let magic = i64::from(stat.filesystem_type().0);
        if magic != BPF_FS_MAGIC {
            return Err(PinDirError::NotBpffs(pin_dir.to_owned()));
        }
        Ok(PinDir { root })
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where the link on `interface` in `mode` is pinned.
    pub fn link(&self, interface: &str, mode: AttachMode) -> PathBuf {
        self.root.join(format!("link-{interface}-{mode}"))
    }

    /// A link an earlier run pinned on `interface`, with its mode.
    pub fn existing_link(&self, interface: &str) -> Option<(AttachMode, PathBuf)> {
        [AttachMode::Native, AttachMode::Generic, AttachMode::Tc]
            .into_iter()
            .map(|mode| (mode, self.link(interface, mode)))
            .find(|(_, path)| path.exists())
    }

    /// The mode of a link an earlier run left pinned on `interface` under `pin_dir`, without
    /// opening (or creating) the directory: for `relay-ctl doctor`.
    pub fn pinned_mode(pin_dir: &Path, interface: &str) -> Option<AttachMode> {
        let dir = PinDir {
            root: pin_dir.join(PIN_LAYOUT),
        };
        dir.existing_link(interface).map(|(mode, _)| mode)
    }

    /// Removes a pin; for a link this detaches it once no process holds it.
    pub fn remove(&self, path: &Path) {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "removing pin failed: {e}");
        }
    }

    /// Removes everything an earlier `keep_on_exit` run left in `pin_dir` (links first, which
    /// detaches them): used when keep_on_exit is now off. Returns how many pins went.
    pub fn clear(pin_dir: &Path) -> usize {
        let root = pin_dir.join(PIN_LAYOUT);
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(dir = %root.display(), "cannot read the pin directory: {e}");
                return 0;
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        // Links before maps, so no program is left running on freed maps' stale contents.
        paths.sort_by_key(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
        });
        let removed = paths
            .iter()
            .filter(|p| match std::fs::remove_file(p) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(path = %p.display(), "removing pin failed: {e}");
                    false
                }
            })
            .count();
        let _ = std::fs::remove_dir(&root);
        removed
    }
}
