//! What the policy asks of its enforcers: a typed list of [`Change`]s, and the [`Enforce`]
//! sink it hands them to. Nothing here knows a map or a socket.

use std::{convert::Infallible, net::IpAddr};

use ipnet::IpNet;
pub use relay_common::PrefixList;
use relay_common::{BanEntry, XdpConfig};

use super::keys::PrefixKey;

/// One change to what is enforced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The limiter's tunables.
    Limits(XdpConfig),
    /// The exact set of TCP ports the policy applies to.
    Ports(Vec<u16>),
    /// A prefix entered the union of a list.
    InsertPrefix(PrefixList, IpNet),
    /// A prefix left the union of a list.
    RemovePrefix(PrefixList, IpNet),
    /// Adds or replaces the ban on a source (IPv4: the address; IPv6: its /64).
    Ban(IpAddr, BanEntry),
    /// Lifts the ban on a source.
    Unban(IpAddr),
    /// Adds or replaces a front-ban of a whole prefix (enforced at accept only: the kernel
    /// has no map for them; a drop-ban of a prefix is a block list entry instead).
    FrontPrefix(PrefixKey, BanEntry),
    /// Lifts a front-ban of a prefix.
    UnfrontPrefix(PrefixKey),
}

/// Where the policy's changes go. The policy calls one of the two methods depending on
/// whether it keeps the changes when they cannot all be enforced (a full kernel map).
pub trait Enforce {
    /// Why a change could not be enforced.
    type Error;

    /// Enforces changes the policy keeps whatever happens: an enforcer that refuses one
    /// stops there and the refusal is returned; those that cannot refuse take every change.
    fn enforce(&mut self, changes: &[Change]) -> Result<(), Self::Error>;

    /// Enforces changes the policy keeps only if they are taken: on a refusal, no enforcer
    /// that could still be spared sees them, and the policy undoes them.
    fn enforce_or_refuse(&mut self, changes: &[Change]) -> Result<(), Self::Error>;
}

/// Collecting changes is enforcing them: what the policy's unit tests look at.
impl Enforce for Vec<Change> {
    type Error = Infallible;

    fn enforce(&mut self, changes: &[Change]) -> Result<(), Infallible> {
        self.extend_from_slice(changes);
        Ok(())
    }

    fn enforce_or_refuse(&mut self, changes: &[Change]) -> Result<(), Infallible> {
        self.enforce(changes)
    }
}
