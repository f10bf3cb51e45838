//! The allow and block lists by source: each source (config, operator, feed, CrowdSec origin,
//! misuse prefix bans) holds its own entries, and the effective list is their union.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use crate::config::Cidr;

/// Where a list entry comes from. The effective list is the union of all sources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListSource {
    /// `[blocklist] cidrs` / `[allowlist] cidrs` in the config file.
    Config,
    /// Added with the CLI (persisted in the state dir).
    Operator,
    /// A feed file from `[blocklist] files`.
    Feed(std::path::PathBuf),
    /// CrowdSec decisions of one origin (`cscli`, `crowdsec`, `CAPI`, `relay`, ...).
    CrowdSec(String),
    /// Prefix bans of the misuse detector with the drop action (see [`super::Admission::ban_prefix`]).
    Misuse,
}

impl fmt::Display for ListSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListSource::Config => f.write_str("config"),
            ListSource::Operator => f.write_str("operator"),
            ListSource::Feed(path) => write!(f, "feed:{}", path.display()),
            ListSource::CrowdSec(origin) => write!(f, "crowdsec:{origin}"),
            ListSource::Misuse => f.write_str("misuse"),
        }
    }
}

/// One list (allow or block): entries per source, and how many sources hold each prefix.
#[derive(Debug, Default)]
pub(super) struct SourcedList {
    pub(super) by_source: BTreeMap<ListSource, BTreeSet<Cidr>>,
    pub(super) holders: BTreeMap<Cidr, u32>,
}

impl SourcedList {
    /// Replaces one source's entries; returns the prefixes that entered and left the union.
    pub(super) fn replace(
        &mut self,
        source: ListSource,
        new: BTreeSet<Cidr>,
    ) -> (Vec<Cidr>, Vec<Cidr>) {
        let old = self.by_source.remove(&source).unwrap_or_default();
        let mut entered = Vec::new();
        let mut left = Vec::new();
        for cidr in new.difference(&old) {
            let n = self.holders.entry(*cidr).or_insert(0);
            *n += 1;
            if *n == 1 {
                entered.push(*cidr);
            }
        }
        for cidr in old.difference(&new) {
            if let Some(n) = self.holders.get_mut(cidr) {
                *n -= 1;
                if *n == 0 {
                    self.holders.remove(cidr);
                    left.push(*cidr);
                }
            }
        }
        if !new.is_empty() {
            self.by_source.insert(source, new);
        }
        (entered, left)
    }

    /// Adds one prefix for `source`; returns whether it entered the union.
    pub(super) fn insert(&mut self, source: ListSource, cidr: Cidr) -> bool {
        if !self.by_source.entry(source).or_default().insert(cidr) {
            return false;
        }
        let n = self.holders.entry(cidr).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Removes one prefix of `source`; returns whether it left the union.
    pub(super) fn remove(&mut self, source: &ListSource, cidr: Cidr) -> bool {
        let Some(set) = self.by_source.get_mut(source) else {
            return false;
        };
        if !set.remove(&cidr) {
            return false;
        }
        if set.is_empty() {
            self.by_source.remove(source);
        }
        match self.holders.get_mut(&cidr) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.holders.remove(&cidr);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|c| c.parse().expect("test CIDR")).collect()
    }

    #[test]
    fn union_counts_every_source() {
        let mut list = SourcedList::default();
        let (entered, left) = list.replace(ListSource::Config, cidrs(&["10.0.0.0/8", "192.0.2.1"]));
        assert_eq!((entered.len(), left.len()), (2, 0));
        let (entered, left) =
            list.replace(ListSource::Operator, cidrs(&["10.0.0.0/8", "192.0.2.2"]));
        assert_eq!(
            entered,
            vec![cidrs(&["192.0.2.2"]).into_iter().next().expect("one")]
        );
        assert!(left.is_empty());
        // 10/8 is still held by the operator after the config drops it.
        let (entered, left) = list.replace(ListSource::Config, BTreeSet::new());
        assert!(entered.is_empty());
        assert_eq!(
            left,
            vec![cidrs(&["192.0.2.1"]).into_iter().next().expect("one")]
        );
        assert_eq!(list.holders.len(), 2);
        let (_, left) = list.replace(ListSource::Operator, BTreeSet::new());
        assert_eq!(left.len(), 2);
        assert_eq!(list.holders.len(), 0);
        assert!(list.by_source.is_empty());
    }
}
