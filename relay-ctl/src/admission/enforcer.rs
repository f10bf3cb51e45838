//! The two enforcers of the policy's [`Change`]s (the XDP program's maps, and the userspace
//! [`Gate`]) and [`Enforcers`], the one place that applies changes to those in use.

use std::sync::Arc;

use super::{
    change::{Change, Enforce},
    gate::Gate,
};
use crate::xdp::{MapsError, XdpMaps};

/// Something that enforces changes: the kernel maps, or the userspace gate.
pub trait Enforcer {
    /// Enforces one change; a full map refuses it.
    fn apply(&mut self, change: &Change) -> Result<(), MapsError>;
}

/// The kernel enforcer: the XDP program's maps.
impl Enforcer for XdpMaps {
    fn apply(&mut self, change: &Change) -> Result<(), MapsError> {
        match change {
            Change::Limits(config) => self.set_config(*config),
            Change::Ports(ports) => self.set_ports(ports),
            Change::InsertPrefix(list, net) => self.insert_prefix(*list, *net),
            Change::RemovePrefix(list, net) => {
                // Already gone is fine.
                self.remove_prefix(*list, *net);
                Ok(())
            }
            Change::Ban(addr, entry) => self.ban(*addr, *entry),
            Change::Unban(addr) => {
                self.unban(*addr);
                Ok(())
            }
            // No kernel map for prefix front-bans: the gate enforces them at accept.
            Change::FrontPrefix(..) | Change::UnfrontPrefix(_) => Ok(()),
        }
    }
}

/// The userspace enforcer, shared with the accept path; it never refuses.
impl Enforcer for Arc<Gate> {
    fn apply(&mut self, change: &Change) -> Result<(), MapsError> {
        self.take(change);
        Ok(())
    }
}

/// The enforcers in use: the kernel's when XDP is attached, and always the gate, which
/// decides at accept without XDP and re-checks the lists (and prefix front-bans) with it.
pub struct Enforcers<'a> {
    /// The kernel maps, when XDP is attached. They can refuse (full).
    pub kernel: Option<&'a mut dyn Enforcer>,
    /// The gate. It cannot refuse.
    pub gate: &'a mut dyn Enforcer,
}

impl Enforcers<'_> {
    /// The kernel takes `changes` in order, stopping at its first refusal.
    fn kernel(&mut self, changes: &[Change]) -> Result<(), MapsError> {
        match &mut self.kernel {
            Some(kernel) => changes.iter().try_for_each(|c| kernel.apply(c)),
            None => Ok(()),
        }
    }

    fn gate(&mut self, changes: &[Change]) {
        for change in changes {
            // The gate never refuses.
            let _ = self.gate.apply(change);
        }
    }
}

impl Enforce for Enforcers<'_> {
    type Error = MapsError;

    fn enforce(&mut self, changes: &[Change]) -> Result<(), MapsError> {
        let result = self.kernel(changes);
        self.gate(changes);
        result
    }

    fn enforce_or_refuse(&mut self, changes: &[Change]) -> Result<(), MapsError> {
        self.kernel(changes)?;
        self.gate(changes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use relay_common::{BanAction, BanEntry, BanReason, Verdict};

    use super::*;

    /// A kernel whose maps are full.
    struct Full;

    impl Enforcer for Full {
        fn apply(&mut self, change: &Change) -> Result<(), MapsError> {
            Err(MapsError::Full {
                what: "ban",
                capacity: 0,
                entry: format!("{change:?}"),
            })
        }
    }

    fn ban(addr: IpAddr) -> Change {
        Change::Ban(
            addr,
            BanEntry::new(BanEntry::NEVER, BanReason::Operator, BanAction::Drop),
        )
    }

    #[test]
    fn a_kept_change_reaches_the_gate_and_a_refused_one_does_not() {
        let mut gate = Arc::new(Gate::default());
        let kept: IpAddr = "198.18.0.1".parse().expect("ip");
        let refused: IpAddr = "198.18.0.2".parse().expect("ip");
        let mut kernel = Full;
        let mut enforcers = Enforcers {
            kernel: Some(&mut kernel),
            gate: &mut gate,
        };
        assert!(enforcers.enforce(&[ban(kept)]).is_err());
        assert!(enforcers.enforce_or_refuse(&[ban(refused)]).is_err());
        assert_eq!(gate.check_lists(kept, 1), Some(Verdict::Banned));
        assert_eq!(gate.check_lists(refused, 1), None);
    }
}
