//! Admission control: which sources may reach the relay and how many connections they may
//! hold. One concern, in four parts:
//!
//! - the [`policy`]: allow and block lists by source, bans, CrowdSec's decisions and the
//!   limits, as [`Change`]s to enforce, without knowing where they are enforced;
//! - the enforcers ([`Enforcer`]): the XDP program's maps in the kernel, and the userspace
//!   [`gate`], which decides at accept without XDP and re-checks the lists with it, both in
//!   the decision order of [`relay_common::decide`]; [`Enforcers`] applies changes to those
//!   in use;
//! - [`capacity`]: connection and handshake slots, taken at accept;
//! - [`misuse`]: the detector that bans sources and prefixes for what they did.
//!
//! [`Admission`] ties the policy to where it is enforced; [`AcceptCheck`] is its accept-time
//! verdict, usable without its lock.

pub mod bans;
pub mod capacity;
pub mod change;
pub mod enforcer;
pub mod gate;
pub mod keys;
pub mod lists;
pub mod misuse;
pub mod policy;
pub mod prefix_set;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, RwLock},
    time::Duration,
};

use relay_common::{BanAction, BanReason, Verdict};

pub use self::{
    bans::{BanRecord, BanTarget},
    change::{Change, Enforce, PrefixList},
    enforcer::{Enforcer, Enforcers},
    gate::Gate,
    keys::{PrefixKey, SourceKey},
    lists::ListSource,
    policy::{CrowdSecBan, DecisionChange, DecisionTarget, NotEnforced, Policy},
};
use crate::{
    clock::monotonic_ns,
    config::{Cidr, Config},
    xdp::{MapsError, UnratedMarks, XdpProgram},
};

/// Where the policy is enforced.
pub enum Enforcement {
    /// The XDP program drops packets before the kernel allocates anything.
    Kernel(Box<XdpProgram>),
    /// The accept loop checks each new connection.
    Userspace {
        /// Why XDP is not used, for status output.
        reason: String,
    },
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enforcement::Kernel(p) => {
                let list: Vec<String> =
                    p.attachments().map(|(i, m)| format!("{i} ({m})")).collect();
                write!(f, "XDP on {}", list.join(", "))
            }
            Enforcement::Userspace { reason } => write!(f, "userspace ({reason})"),
        }
    }
}

/// The accept-time check, shared with the [`Admission`] but usable without its lock: new
/// connections never wait for a writer of the admission (100,000 CrowdSec decisions loading).
#[derive(Clone)]
pub struct AcceptCheck {
    gate: Arc<Gate>,
    /// In kernel mode, the program's marks on sources whose SYNs it may not have rated.
    kernel: Option<Arc<RwLock<UnratedMarks>>>,
}

impl AcceptCheck {
    /// See [`Admission::admit`].
    pub fn admit(&self, source: IpAddr, now_ns: u64) -> Verdict {
        let Some(marks) = &self.kernel else {
            return self.gate.admit(source, now_ns);
        };
        let unrated = marks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .unrated(source, now_ns);
        self.gate.admit_behind_kernel(source, now_ns, unrated)
    }

    /// Decides on a client the kernel never saw (its packets came from a balancer, which
    /// named it in a PROXY header): the whole decision, the SYN limit included, here.
    pub fn admit_unseen(&self, source: IpAddr, now_ns: u64) -> Verdict {
        match &self.kernel {
            Some(_) => self.gate.admit_behind_kernel(source, now_ns, true),
            None => self.gate.admit(source, now_ns),
        }
    }
}

/// The policy and where it is enforced.
pub struct Admission {
    enforcement: Enforcement,
    gate: Arc<Gate>,
    policy: Policy,
}

/// The enforcers in use: the kernel's maps under [`Enforcement::Kernel`], and the gate. Takes
/// the two fields rather than the admission, so its policy stays borrowable next to them.
fn enforcers<'a>(enforcement: &'a mut Enforcement, gate: &'a mut Arc<Gate>) -> Enforcers<'a> {
    Enforcers {
        kernel: match enforcement {
            Enforcement::Kernel(program) => Some(program.maps() as &mut dyn Enforcer),
            Enforcement::Userspace { .. } => None,
        },
        gate,
    }
}

/// CLOCK_MONOTONIC expiry of a ban lasting `ttl` from now, never with `None`.
fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(relay_common::BanEntry::NEVER, |ttl| {
        monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
    })
}

impl Admission {
    /// An admission enforcing through `enforcement`, with empty lists.
    pub fn new(enforcement: Enforcement) -> Self {
        Admission {
            enforcement,
            gate: Arc::new(Gate::default()),
            policy: Policy::default(),
        }
    }

    /// Where the policy is enforced.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Whether the kernel enforces.
    pub fn in_kernel(&self) -> bool {
        matches!(self.enforcement, Enforcement::Kernel(_))
    }

    /// Writes limits, ports and lists from `config`, replacing what was there.
    pub fn apply(&mut self, config: &Config) -> Result<(), MapsError> {
        self.policy.apply(
            config,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// Replaces the entries `source` contributes to `list`; only the prefixes that enter or
    /// leave the union touch the kernel maps. On a full map the entries added so far stay and
    /// the error names the first that did not fit.
    pub fn set_prefixes(
        &mut self,
        list: PrefixList,
        source: ListSource,
        cidrs: BTreeSet<Cidr>,
    ) -> Result<(), MapsError> {
        self.policy.set_prefixes(
            list,
            source,
            cidrs,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// Every entry of `list` with its source.
    pub fn prefixes(&self, list: PrefixList) -> Vec<(Cidr, ListSource)> {
        self.policy.prefixes(list)
    }

    /// Number of entries `list` has from each source.
    pub fn prefix_counts(&self, list: PrefixList) -> BTreeMap<String, u64> {
        self.policy.prefix_counts(list)
    }

    /// Whether `addr` is on the allowlist (and so is never banned).
    pub fn is_allowlisted(&self, addr: IpAddr) -> bool {
        self.gate.check_lists(addr, 0) == Some(Verdict::Allowlisted)
    }

    /// Bans `addr` (IPv4: the address; IPv6: its /64) for `ttl`, or for good with `None`;
    /// `action` says whether its traffic is dropped or its connections fronted.
    pub fn ban(
        &mut self,
        addr: IpAddr,
        reason: BanReason,
        action: BanAction,
        ttl: Option<Duration>,
        count: u32,
    ) -> Result<(), MapsError> {
        let addr = addr.to_canonical();
        let record = BanRecord {
            target: BanTarget::Addr(addr),
            reason,
            action,
            expires_ns: expiry(ttl),
            count,
        };
        self.policy.ban(
            addr,
            record,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// Lifts the ban covering `addr`; returns it if there was one.
    pub fn unban(&mut self, addr: IpAddr) -> Option<BanRecord> {
        self.policy
            .unban(addr, &mut enforcers(&mut self.enforcement, &mut self.gate))
    }

    /// Bans `prefix` (an IPv4 /24 or IPv6 /48) for `ttl`, or for good with `None` (see
    /// [`Policy::ban_prefix`] for how it is enforced).
    pub fn ban_prefix(
        &mut self,
        prefix: PrefixKey,
        reason: BanReason,
        action: BanAction,
        ttl: Option<Duration>,
        count: u32,
    ) -> Result<(), MapsError> {
        let record = BanRecord {
            target: BanTarget::Prefix(prefix),
            reason,
            action,
            expires_ns: expiry(ttl),
            count,
        };
        self.policy.ban_prefix(
            prefix,
            record,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// Lifts the ban on `prefix`; returns it if there was one.
    pub fn unban_prefix(&mut self, prefix: PrefixKey) -> Option<BanRecord> {
        self.policy.unban_prefix(
            prefix,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// Lifts the ban on `target`; returns it if there was one.
    pub fn lift(&mut self, target: BanTarget) -> Option<BanRecord> {
        self.policy.lift(
            target,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// The prefix ban covering `addr`, if any.
    pub fn prefix_ban_covering(&self, addr: IpAddr) -> Option<&BanRecord> {
        self.policy.prefix_ban_covering(addr)
    }

    /// Applies CrowdSec decision changes (see [`Policy::apply_crowdsec`]). Changes that
    /// cannot be written (a full map) do not stop the others.
    pub fn apply_crowdsec(
        &mut self,
        changes: &[DecisionChange],
    ) -> Result<(), Box<NotEnforced<MapsError>>> {
        self.policy
            .apply_crowdsec(
                changes,
                &mut enforcers(&mut self.enforcement, &mut self.gate),
            )
            .map_err(Box::new)
    }

    /// CrowdSec's IPv4 bans (IPv6 addresses and ranges are block list entries).
    pub fn crowdsec_bans(&self) -> impl Iterator<Item = (&Ipv4Addr, &CrowdSecBan)> {
        self.policy.crowdsec_bans()
    }

    /// CrowdSec's ban on `addr`, if any.
    pub fn crowdsec_ban(&self, addr: IpAddr) -> Option<&CrowdSecBan> {
        self.policy.crowdsec_ban(addr)
    }

    /// Current bans: of addresses, then of prefixes.
    pub fn bans(&self) -> impl Iterator<Item = &BanRecord> {
        self.policy.bans()
    }

    /// Removes bans that have lapsed by `now_ns` and returns them. Address bans already
    /// stopped matching in the kernel; a prefix ban with the drop action stops here.
    pub fn expire_bans(&mut self, now_ns: u64) -> Vec<BanRecord> {
        self.policy.expire_bans(
            now_ns,
            &mut enforcers(&mut self.enforcement, &mut self.gate),
        )
    }

    /// Decides on a connection just accepted from `source`. In kernel mode the program already
    /// rate-limited its SYN, and the lists are checked again; but a source the program marked
    /// as sending packets it could not rate (a SYN behind IPv6 extension headers or in IPv4
    /// fragments) gets the whole decision here, the SYN limit included, with userspace's own
    /// buckets. Those buckets count only such sources' connections, so a source whose SYNs the
    /// program rates is never charged twice.
    pub fn admit(&self, source: IpAddr, now_ns: u64) -> Verdict {
        self.accept_check().admit(source, now_ns)
    }

    /// The accept-time check as a handle that does not need the admission's lock.
    pub fn accept_check(&self) -> AcceptCheck {
        AcceptCheck {
            gate: self.gate.clone(),
            kernel: match &self.enforcement {
                Enforcement::Kernel(program) => Some(program.maps_ref().unrated()),
                Enforcement::Userspace { .. } => None,
            },
        }
    }

    /// Forgets idle limiter state (see [`Gate::forget_idle`]), in the kernel maps too.
    pub fn forget_idle(&mut self, now_ns: u64) {
        self.gate.forget_idle(now_ns);
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            let removed = program
                .maps()
                .forget_idle_limiter_state(now_ns, gate::IDLE_FORGET_NS);
            if removed > 0 {
                tracing::debug!(removed, "forgot idle kernel limiter state");
            }
        }
    }

    /// Verdict counters from wherever the policy is enforced. In kernel mode these are the
    /// program's packet counts plus the connections decided in full at accept (sources the
    /// program marked as unrated).
    pub fn verdict_counts(&self) -> Result<[u64; Verdict::COUNT as usize], MapsError> {
        let gate = self.gate.verdict_counts();
        match &self.enforcement {
            Enforcement::Kernel(program) => {
                let kernel = program.maps_ref().verdict_counts()?;
                Ok(std::array::from_fn(|i| kernel[i] + gate[i]))
            }
            Enforcement::Userspace { .. } => Ok(gate),
        }
    }

    /// Removes entries the kernel maps hold but the policy does not: maps pinned by an earlier
    /// run (`[xdp] keep_on_exit`) keep protecting during a restart, and once this run has
    /// restored its own lists and bans, what is left over is stale. Returns how many went.
    pub fn drop_stale_kernel_entries(&mut self) -> usize {
        let Enforcement::Kernel(program) = &mut self.enforcement else {
            return 0;
        };
        let maps = program.maps();
        let mut removed = 0;
        for list in [PrefixList::Allow, PrefixList::Block] {
            for net in maps.prefixes(list) {
                if !self.policy.holds_prefix(list, net) && maps.remove_prefix(list, net) {
                    removed += 1;
                }
            }
        }
        for addr in maps.banned() {
            if !self.policy.holds_ban(addr) && maps.unban(addr) {
                removed += 1;
            }
        }
        removed
    }

    /// Detaches XDP, if attached (unless `[xdp] keep_on_exit` pinned it).
    pub fn shutdown(&mut self) {
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.detach_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|c| c.parse().expect("test CIDR")).collect()
    }

    fn userspace() -> Admission {
        Admission::new(Enforcement::Userspace {
            reason: "test".into(),
        })
    }

    fn set(target: &str, origin: &str, expires_ns: u64) -> DecisionChange {
        let target = match target.parse::<IpAddr>() {
            Ok(a) => DecisionTarget::Addr(a),
            Err(_) => DecisionTarget::Range(target.parse().expect("test net")),
        };
        DecisionChange::Set {
            target,
            ban: CrowdSecBan {
                origin: origin.into(),
                expires_ns,
                own: origin == "relay",
            },
            previous_origin: None,
        }
    }

    fn verdict(admission: &Admission, addr: &str) -> Verdict {
        admission.admit(addr.parse().expect("addr"), 1)
    }

    #[test]
    fn crowdsec_entries_are_enforced_in_userspace_and_never_beat_the_allowlist() {
        let mut admission = userspace();
        admission
            .set_prefixes(
                PrefixList::Allow,
                ListSource::Operator,
                cidrs(&["198.18.9.9"]),
            )
            .expect("allow");
        admission
            .apply_crowdsec(&[
                set("198.18.1.1", "cscli", u64::MAX),
                set("198.18.9.9", "CAPI", u64::MAX),
                set("2001:db8::5", "crowdsec", u64::MAX),
                set("198.18.2.0/24", "cscli", u64::MAX),
            ])
            .expect("all enforced");
        assert_eq!(verdict(&admission, "198.18.1.1"), Verdict::Banned);
        assert_eq!(verdict(&admission, "198.18.9.9"), Verdict::Allowlisted);
        assert_eq!(verdict(&admission, "2001:db8::5"), Verdict::BlockedCidr);
        // A v6 address decision is that address only, not its /64.
        assert_eq!(verdict(&admission, "2001:db8::6"), Verdict::Passed);
        assert_eq!(verdict(&admission, "198.18.2.77"), Verdict::BlockedCidr);
        let sources: BTreeSet<String> = admission
            .prefixes(PrefixList::Block)
            .into_iter()
            .map(|(_, s)| s.to_string())
            .collect();
        assert_eq!(
            sources,
            ["crowdsec:crowdsec", "crowdsec:cscli"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        // Ending the decisions lifts them.
        admission
            .apply_crowdsec(&[
                DecisionChange::Remove {
                    target: DecisionTarget::Range("198.18.2.0/24".parse().expect("net")),
                    origin: "cscli".into(),
                },
                DecisionChange::Remove {
                    target: DecisionTarget::Addr("198.18.1.1".parse().expect("ip")),
                    origin: "cscli".into(),
                },
            ])
            .expect("enforced");
        assert_eq!(verdict(&admission, "198.18.2.77"), Verdict::Passed);
        assert_eq!(verdict(&admission, "198.18.1.1"), Verdict::Passed);
    }

    #[test]
    fn operator_and_crowdsec_entries_do_not_remove_each_other() {
        let mut admission = userspace();
        admission
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                cidrs(&["198.18.2.0/24"]),
            )
            .expect("operator");
        admission
            .apply_crowdsec(&[set("198.18.2.0/24", "cscli", u64::MAX)])
            .expect("enforced");
        // `block rm` of the operator entry: CrowdSec's stays.
        admission
            .set_prefixes(PrefixList::Block, ListSource::Operator, BTreeSet::new())
            .expect("operator rm");
        assert_eq!(verdict(&admission, "198.18.2.1"), Verdict::BlockedCidr);
        admission
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                cidrs(&["198.18.2.0/24"]),
            )
            .expect("operator again");
        admission
            .apply_crowdsec(&[DecisionChange::Remove {
                target: DecisionTarget::Range("198.18.2.0/24".parse().expect("net")),
                origin: "cscli".into(),
            }])
            .expect("enforced");
        assert_eq!(verdict(&admission, "198.18.2.1"), Verdict::BlockedCidr);

        // Relay's own ban and CrowdSec's on one IPv4 address: lifting one keeps the other.
        let addr: IpAddr = "198.18.1.1".parse().expect("ip");
        admission
            .ban(
                addr,
                BanReason::BadSecret,
                BanAction::Drop,
                Some(Duration::from_secs(60)),
                5,
            )
            .expect("ban");
        admission
            .apply_crowdsec(&[set("198.18.1.1", "relay", u64::MAX)])
            .expect("enforced");
        assert!(admission.unban(addr).is_some());
        assert_eq!(verdict(&admission, "198.18.1.1"), Verdict::Banned);
        assert_eq!(admission.bans().count(), 0, "relay's own list is empty");
        admission
            .ban(
                addr,
                BanReason::BadSecret,
                BanAction::Drop,
                Some(Duration::from_secs(60)),
                5,
            )
            .expect("ban");
        admission
            .apply_crowdsec(&[DecisionChange::Remove {
                target: DecisionTarget::Addr(addr),
                origin: "relay".into(),
            }])
            .expect("enforced");
        assert_eq!(verdict(&admission, "198.18.1.1"), Verdict::Banned);
        assert!(admission.crowdsec_ban(addr).is_none());
        admission.unban(addr);
        assert_eq!(verdict(&admission, "198.18.1.1"), Verdict::Passed);
    }

    #[test]
    fn a_front_ban_keeps_its_action_against_its_own_echo_only() {
        let mut admission = userspace();
        let addr: IpAddr = "198.18.1.2".parse().expect("ip");
        admission
            .ban(
                addr,
                BanReason::BadSecret,
                BanAction::Front,
                Some(Duration::from_secs(60)),
                5,
            )
            .expect("ban");
        assert_eq!(verdict(&admission, "198.18.1.2"), Verdict::BannedFronted);
        // Relay's own ban back from the LAPI: still fronted.
        admission
            .apply_crowdsec(&[set("198.18.1.2", "relay", u64::MAX)])
            .expect("enforced");
        assert_eq!(verdict(&admission, "198.18.1.2"), Verdict::BannedFronted);
        // A decision of CrowdSec's own: dropped while it holds, fronted again after it.
        admission
            .apply_crowdsec(&[set("198.18.1.2", "cscli", u64::MAX)])
            .expect("enforced");
        assert_eq!(verdict(&admission, "198.18.1.2"), Verdict::Banned);
        admission
            .apply_crowdsec(&[DecisionChange::Remove {
                target: DecisionTarget::Addr(addr),
                origin: "cscli".into(),
            }])
            .expect("enforced");
        assert_eq!(verdict(&admission, "198.18.1.2"), Verdict::BannedFronted);
        assert_eq!(
            admission.bans().map(|b| b.action).collect::<Vec<_>>(),
            [BanAction::Front]
        );
    }

    #[test]
    fn prefix_bans_drop_or_front_the_whole_prefix_and_lift_cleanly() {
        let mut admission = userspace();
        let v4 = PrefixKey::from("198.18.3.9".parse::<IpAddr>().expect("ip"));
        let v6 = PrefixKey::from("2001:db8:7::1".parse::<IpAddr>().expect("ip"));
        let ttl = Some(Duration::from_secs(60));
        admission
            .ban_prefix(v4, BanReason::BadSecret, BanAction::Drop, ttl, 100)
            .expect("drop ban");
        admission
            .ban_prefix(v6, BanReason::Garbage, BanAction::Front, ttl, 100)
            .expect("front ban");
        // Every address of the prefix, not only the ones that offended.
        assert_eq!(verdict(&admission, "198.18.3.200"), Verdict::BlockedCidr);
        assert_eq!(verdict(&admission, "198.18.4.1"), Verdict::Passed);
        assert_eq!(
            verdict(&admission, "2001:db8:7:ffff::1"),
            Verdict::BannedFronted
        );
        assert_eq!(verdict(&admission, "2001:db8:8::1"), Verdict::Passed);
        // The drop ban is a block list entry of its own source; listed with the bans.
        assert_eq!(
            admission.prefixes(PrefixList::Block),
            vec![(
                "198.18.3.0/24".parse::<Cidr>().expect("cidr"),
                ListSource::Misuse
            )]
        );
        let listed: Vec<String> = admission.bans().map(|b| b.target.to_string()).collect();
        assert_eq!(listed, ["198.18.3.0/24", "2001:db8:7::/48"]);
        // An operator block of the same /24 outlives the ban.
        admission
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                cidrs(&["198.18.3.0/24"]),
            )
            .expect("operator block");
        assert!(admission.lift(BanTarget::Prefix(v4)).is_some());
        assert_eq!(verdict(&admission, "198.18.3.200"), Verdict::BlockedCidr);
        admission
            .set_prefixes(PrefixList::Block, ListSource::Operator, BTreeSet::new())
            .expect("operator unblock");
        assert_eq!(verdict(&admission, "198.18.3.200"), Verdict::Passed);
        // Lapsed: swept like an address ban.
        let expired = admission.expire_bans(u64::MAX);
        assert_eq!(expired.len(), 1);
        assert_eq!(verdict(&admission, "2001:db8:7::1"), Verdict::Passed);
        assert_eq!(admission.bans().count(), 0);
    }
}
