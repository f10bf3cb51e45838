//! `block` and `allow`: the operator's lists, saved before they are applied.

use crate::{
    admission::{ListSource, PrefixList},
    clock::unix_now,
    config::{Cidr, CidrError},
    control::{
        api::{ErrorKind, PrefixEntry, Reply},
        saved_state::BlockEntry,
    },
    daemon::{Daemon, persistence::ListsSaveError},
};

use super::RequestFailure;

/// Why a change to the operator lists was refused or did not take.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Not an address or CIDR.
    #[error(transparent)]
    BadCidr(#[from] CidrError),
    /// The prefix is a prefix ban, which `bans rm` lifts.
    #[error("{0} is not an operator block; it is a prefix ban: relay-ctl bans rm {0}")]
    PrefixBanNotBlock(Cidr),
    /// The prefix comes from a CrowdSec decision, which is deleted in CrowdSec.
    #[error(
        "{cidr} is not an operator block; it is a CrowdSec decision ({origin}): delete it in \
         CrowdSec (cscli decisions delete --range {cidr})"
    )]
    CrowdSecNotBlock {
        /// The prefix.
        cidr: Cidr,
        /// The decision's list source.
        origin: ListSource,
    },
    /// No operator block on the prefix.
    #[error("{0} is not an operator block")]
    NotABlock(Cidr),
    /// No operator allowlist entry for the prefix.
    #[error("{0} is not an operator allowlist entry")]
    NotAllowed(Cidr),
    /// The changed lists could not be saved or applied.
    #[error(transparent)]
    Save(#[from] ListsSaveError),
}

impl RequestFailure for ListError {
    fn kind(&self) -> ErrorKind {
        match self {
            ListError::BadCidr(_) => ErrorKind::BadRequest,
            ListError::PrefixBanNotBlock(_)
            | ListError::CrowdSecNotBlock { .. }
            | ListError::NotABlock(_)
            | ListError::NotAllowed(_) => ErrorKind::NotFound,
            ListError::Save(_) => ErrorKind::Failed,
        }
    }
}

fn parse_cidr(text: &str) -> Result<Cidr, ListError> {
    Ok(text.parse::<Cidr>()?)
}

impl Daemon {
    /// `block add`: blocks `cidr`, for `ttl_secs` if given.
    pub(super) async fn block_add(
        &self,
        cidr: &str,
        ttl_secs: Option<u64>,
        reason: Option<String>,
    ) -> Result<Reply, ListError> {
        let cidr = parse_cidr(cidr)?;
        self.change_lists(|lists| {
            lists.block.insert(
                cidr.to_string(),
                BlockEntry {
                    reason,
                    expires_unix: ttl_secs.map(|t| unix_now() + t),
                },
            );
            Ok(Reply::Done)
        })
        .await
    }

    /// `block rm`: lifts an operator block. A prefix that is blocked for another reason is
    /// named with what removes it.
    pub(super) async fn block_rm(&self, cidr: &str) -> Result<Reply, ListError> {
        let cidr = parse_cidr(cidr)?;
        // Said up front: CrowdSec's entries are removed in CrowdSec, prefix bans with
        // `bans rm`, not with this command.
        let other = self
            .admission
            .read()
            .await
            .prefixes(PrefixList::Block)
            .into_iter()
            .find(|(c, s)| *c == cidr && matches!(s, ListSource::CrowdSec(_) | ListSource::Misuse))
            .map(|(_, s)| s);
        self.change_lists(|lists| match lists.block.remove(&cidr.to_string()) {
            Some(_) => Ok(Reply::Done),
            None => Err(match other {
                Some(ListSource::Misuse) => ListError::PrefixBanNotBlock(cidr),
                Some(origin) => ListError::CrowdSecNotBlock { cidr, origin },
                None => ListError::NotABlock(cidr),
            }),
        })
        .await
    }

    /// `block import`: blocks every entry (all or none: one bad entry refuses the lot).
    pub(super) async fn block_import(
        &self,
        entries: &[String],
        source: &str,
    ) -> Result<Reply, ListError> {
        let parsed = entries
            .iter()
            .map(|e| parse_cidr(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.change_lists(|lists| {
            let mut changed = 0;
            for cidr in parsed {
                let entry = BlockEntry {
                    reason: Some(format!("imported from {source}")),
                    expires_unix: None,
                };
                if lists.block.insert(cidr.to_string(), entry).is_none() {
                    changed += 1;
                }
            }
            Ok(Reply::Count { changed })
        })
        .await
    }

    /// `block list` and `allow list`: every entry of `list` with where it comes from.
    pub(super) async fn prefix_list(&self, list: PrefixList) -> Reply {
        let operator = self.lists.lock().await.clone();
        let now = unix_now();
        let entries = self
            .admission
            .read()
            .await
            .prefixes(list)
            .into_iter()
            .map(|(cidr, source)| {
                let op = (source == ListSource::Operator)
                    .then(|| operator.block.get(&cidr.to_string()))
                    .flatten();
                PrefixEntry {
                    cidr: cidr.to_string(),
                    source: source.to_string(),
                    reason: op.and_then(|e| e.reason.clone()),
                    expires_in_secs: op
                        .and_then(|e| e.expires_unix)
                        .map(|t| t.saturating_sub(now)),
                }
            })
            .collect();
        Reply::Prefixes { entries }
    }

    /// `allow add`: exempts `cidr` from every check.
    pub(super) async fn allow_add(&self, cidr: &str) -> Result<Reply, ListError> {
        let cidr = parse_cidr(cidr)?.to_string();
        self.change_lists(|lists| {
            if !lists.allow.contains(&cidr) {
                lists.allow.push(cidr);
            }
            Ok(Reply::Done)
        })
        .await
    }

    /// `allow rm`: removes an operator allowlist entry.
    pub(super) async fn allow_rm(&self, cidr: &str) -> Result<Reply, ListError> {
        let cidr = parse_cidr(cidr)?;
        let entry = cidr.to_string();
        self.change_lists(|lists| {
            let before = lists.allow.len();
            lists.allow.retain(|c| *c != entry);
            if lists.allow.len() == before {
                return Err(ListError::NotAllowed(cidr));
            }
            Ok(Reply::Done)
        })
        .await
    }
}
