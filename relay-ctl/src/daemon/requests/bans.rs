//! `bans`: listing and lifting the bans relay imposed (CrowdSec's are listed, not lifted).

use std::{net::IpAddr, time::Duration};

use relay_common::BanAction;

use crate::{
    admission::bans::BanTargetError,
    admission::{BanTarget, ListSource},
    clock::monotonic_ns,
    control::api::{BanInfo, ErrorKind, Reply},
    daemon::Daemon,
    state_dir::StateError,
};

use super::RequestFailure;

/// Why a ban could not be lifted.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// Not an address, /24 or /48.
    #[error(transparent)]
    BadTarget(BanTargetError),
    /// No ban on that prefix.
    #[error("no ban on {0}")]
    NoBan(BanTarget),
    /// The address is banned only through a prefix ban.
    #[error("{addr} has no ban of its own; the prefix ban on {prefix} covers it")]
    CoveredByPrefix {
        /// The address asked about.
        addr: IpAddr,
        /// The prefix ban covering it.
        prefix: BanTarget,
    },
    /// The address is banned by a CrowdSec decision, which is deleted in CrowdSec.
    #[error(
        "{addr} is banned by CrowdSec (origin {origin}), not by relay: delete the decision in \
         CrowdSec (cscli decisions delete --ip {addr})"
    )]
    CrowdSec {
        /// The address asked about.
        addr: IpAddr,
        /// The decision's origin.
        origin: String,
    },
    /// Nothing bans the address.
    #[error("no ban covers {0}")]
    NotBanned(IpAddr),
    /// The bans were lifted but bans.json could not be written.
    #[error("ban state not saved: {0}")]
    NotSaved(StateError),
}

impl RequestFailure for BanError {
    fn kind(&self) -> ErrorKind {
        match self {
            BanError::BadTarget(_) => ErrorKind::BadRequest,
            BanError::NoBan(_)
            | BanError::CoveredByPrefix { .. }
            | BanError::CrowdSec { .. }
            | BanError::NotBanned(_) => ErrorKind::NotFound,
            BanError::NotSaved(_) => ErrorKind::Failed,
        }
    }
}

impl Daemon {
    /// `bans list`: relay's bans, then CrowdSec's by address.
    pub(super) async fn bans_list(&self) -> Reply {
        let now = monotonic_ns();
        let admission = self.admission.read().await;
        let mut bans: Vec<BanInfo> = admission
            .bans()
            .map(|b| BanInfo {
                addr: b.target.to_string(),
                reason: b.reason.name().to_owned(),
                action: b.action.name().to_owned(),
                count: b.count,
                expires_in_secs: b.remaining(now).map(|d| d.as_secs()),
                source: "relay".to_owned(),
            })
            .collect();
        let mut crowdsec: Vec<BanInfo> = admission
            .crowdsec_bans()
            .map(|(addr, b)| BanInfo {
                addr: addr.to_string(),
                reason: "crowdsec".to_owned(),
                action: BanAction::Drop.name().to_owned(),
                count: 0,
                expires_in_secs: Some(
                    Duration::from_nanos(b.expires_ns.saturating_sub(now)).as_secs(),
                ),
                source: ListSource::CrowdSec(b.origin.clone()).to_string(),
            })
            .collect();
        crowdsec.sort_by(|a, b| a.addr.cmp(&b.addr));
        bans.append(&mut crowdsec);
        Reply::Bans { bans }
    }

    /// `bans rm`: lifts the ban on `addr` (an address or a prefix). An address banned only
    /// through a prefix ban or by CrowdSec is named with what lifts it.
    pub(super) async fn bans_rm(&self, addr: &str) -> Result<Reply, BanError> {
        let target = addr.parse::<BanTarget>().map_err(BanError::BadTarget)?;
        let mut admission = self.admission.write().await;
        if admission.lift(target).is_none() {
            let BanTarget::Addr(addr) = target else {
                return Err(BanError::NoBan(target));
            };
            if let Some(prefix) = admission.prefix_ban_covering(addr) {
                return Err(BanError::CoveredByPrefix {
                    addr,
                    prefix: prefix.target,
                });
            }
            if let Some(cs) = admission.crowdsec_ban(addr) {
                return Err(BanError::CrowdSec {
                    addr,
                    origin: cs.origin.clone(),
                });
            }
            return Err(BanError::NotBanned(addr));
        }
        drop(admission);
        self.save_bans().await.map_err(BanError::NotSaved)?;
        Ok(Reply::Done)
    }

    /// `bans clear`: lifts every ban relay imposed.
    pub(super) async fn bans_clear(&self) -> Result<Reply, BanError> {
        let changed = {
            let mut admission = self.admission.write().await;
            let targets: Vec<BanTarget> = admission.bans().map(|b| b.target).collect();
            targets
                .into_iter()
                .filter(|t| admission.lift(*t).is_some())
                .count()
        };
        self.save_bans().await.map_err(BanError::NotSaved)?;
        Ok(Reply::Count { changed })
    }
}
