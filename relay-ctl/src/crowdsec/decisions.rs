//! The CrowdSec decisions relay enforces, without any I/O: stream batches in, changes for the
//! admission out.
//!
//! State is keyed by (scope, value), never by decision id: the LAPI returns only the longest
//! of several decisions on one value, so the id of the `new` item and of the later `deleted`
//! item for the same address can differ.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;

use super::{
    api::{Decision, Stream},
    duration,
};
use crate::admission::{CrowdSecBan, DecisionChange, DecisionTarget};
/// What the LAPI sends goes into logs, tables and metric labels only in this form: the filter
/// the HTTP client applies to error answers, so both stay one.
pub use crate::http_client::printable;

/// What a decision applies to, as relay enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Scope `Ip`: an IPv4 address goes into the kernel ban map, an IPv6 address into the
    /// block trie as a /128 (the ban map bans IPv6 per /64, which would be wider).
    Ip(IpAddr),
    /// Scope `Range`: a prefix in the block tries.
    Range(IpNet),
}

impl Target {
    /// Parses a decision's scope and value. Scopes are matched exactly (`Ip`, `Range`), as
    /// the LAPI stores them.
    pub fn parse(scope: &str, value: &str) -> Result<Target, DecisionError> {
        let bad_value = || DecisionError::Value {
            scope: printable(scope, 16),
            value: printable(value, 64),
        };
        match scope {
            "Ip" => value
                .parse::<IpAddr>()
                .map(|a| Target::Ip(a.to_canonical()))
                .map_err(|_| bad_value()),
            "Range" => value
                .parse::<IpNet>()
                .map(|n| Target::Range(n.trunc()))
                .map_err(|_| bad_value()),
            other => Err(DecisionError::Scope {
                scope: printable(other, 16),
            }),
        }
    }

    /// The scope name the LAPI uses.
    pub fn scope(&self) -> &'static str {
        match self {
            Target::Ip(_) => "Ip",
            Target::Range(_) => "Range",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(a) => a.fmt(f),
            Target::Range(n) => n.fmt(f),
        }
    }
}

/// Why a decision was not taken over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// A scope relay does not enforce.
    #[error("unsupported scope `{scope}`")]
    Scope {
        /// The scope.
        scope: String,
    },
    /// The value does not fit the scope.
    #[error("`{value}` is not a valid {scope} value")]
    Value {
        /// The scope.
        scope: String,
        /// The value (shortened).
        value: String,
    },
    /// The duration is not a Go duration.
    #[error("{}", printable(&.0.to_string(), 80))]
    Duration(#[from] duration::BadDuration),
    /// A range wider than `[crowdsec] max_range_v4` / `max_range_v6` allows.
    #[error("range {range} is wider than /{max}, the widest relay accepts")]
    TooWide {
        /// The range.
        range: IpNet,
        /// The shortest prefix length accepted for its family.
        max: u8,
    },
}

impl DecisionError {
    /// The `kind` label of `relay_crowdsec_rejected_total` for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            DecisionError::Scope { .. } => "bad_scope",
            DecisionError::Value { .. } => "bad_value",
            DecisionError::Duration(_) => "bad_duration",
            DecisionError::TooWide { .. } => "wide_range",
        }
    }
}

/// Every `kind` of `relay_crowdsec_rejected_total`: the three above for single decisions,
/// `too_many` and `too_large` for a whole pull refused.
pub const REJECTION_KINDS: [&str; 6] = [
    "wide_range",
    "bad_value",
    "bad_scope",
    "bad_duration",
    "too_many",
    "too_large",
];

/// What relay accepts from the LAPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Shortest IPv4 prefix length of a `Range` decision (`8`: a /7 is rejected).
    pub max_range_v4: u8,
    /// Shortest IPv6 prefix length of a `Range` decision.
    pub max_range_v6: u8,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_range_v4: 8,
            max_range_v6: 32,
        }
    }
}

impl Limits {
    /// `target`, or why it is wider than allowed.
    fn check(&self, target: Target) -> Result<Target, DecisionError> {
        let max = match target {
            Target::Ip(_) => return Ok(target),
            Target::Range(IpNet::V4(_)) => self.max_range_v4,
            Target::Range(IpNet::V6(_)) => self.max_range_v6,
        };
        match target {
            Target::Range(range) if range.prefix_len() < max => {
                Err(DecisionError::TooWide { range, max })
            }
            _ => Ok(target),
        }
    }
}

/// Origin names kept as they are beyond [`MAX_ORIGINS`]: CrowdSec's own.
pub const KNOWN_ORIGINS: [&str; 6] = [
    "crowdsec",
    "cscli",
    "cscli-import",
    "CAPI",
    "lists",
    "relay",
];

/// Other distinct origin names kept; later ones are enforced under [`OTHER_ORIGIN`], so the
/// LAPI cannot grow the origin labels of metrics and tables without bound.
pub const MAX_ORIGINS: usize = 16;

/// The origin decisions beyond [`MAX_ORIGINS`] are kept under.
pub const OTHER_ORIGIN: &str = "other";

/// Longest origin name kept.
const ORIGIN_CHARS: usize = 64;

/// The origin names admitted so far (for the life of the process, so labels do not churn).
#[derive(Debug, Default)]
struct Origins {
    admitted: BTreeSet<String>,
}

impl Origins {
    /// The name `origin` is enforced and counted under.
    fn label(&mut self, origin: &str) -> String {
        let name = printable(origin, ORIGIN_CHARS);
        if name.is_empty() {
            return OTHER_ORIGIN.to_owned();
        }
        if KNOWN_ORIGINS.contains(&name.as_str()) || self.admitted.contains(&name) {
            return name;
        }
        if self.admitted.len() < MAX_ORIGINS {
            self.admitted.insert(name.clone());
            return name;
        }
        OTHER_ORIGIN.to_owned()
    }
}

/// How far a full pull may move an expiry before the entry is rewritten.
pub const RESYNC_SLACK_NS: u64 = 2_000_000_000;

/// One enforced decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The decision's origin (`cscli`, `crowdsec`, `CAPI`, `lists`, `relay`, ...).
    pub origin: String,
    /// CLOCK_MONOTONIC expiry, ns.
    pub expires_ns: u64,
}

/// A change the admission has to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Enforce `target` until `entry.expires_ns` (new, or a new expiry or origin).
    Set {
        /// What.
        target: Target,
        /// Origin and expiry now.
        entry: Entry,
        /// Origin before, when it was already enforced under another origin.
        previous_origin: Option<String>,
    },
    /// Stop enforcing `target`, which was held under `origin`.
    Remove {
        /// What.
        target: Target,
        /// Its origin.
        origin: String,
    },
}

impl From<Target> for DecisionTarget {
    fn from(target: Target) -> Self {
        match target {
            Target::Ip(addr) => DecisionTarget::Addr(addr),
            Target::Range(net) => DecisionTarget::Range(net),
        }
    }
}

/// The admission policy's terms for a change: relay's own origin marks its own bans coming
/// back, which keep their action.
impl From<Change> for DecisionChange {
    fn from(change: Change) -> Self {
        match change {
            Change::Set {
                target,
                entry,
                previous_origin,
            } => DecisionChange::Set {
                target: target.into(),
                ban: CrowdSecBan {
                    own: entry.origin == super::ORIGIN,
                    origin: entry.origin,
                    expires_ns: entry.expires_ns,
                },
                previous_origin,
            },
            Change::Remove { target, origin } => DecisionChange::Remove {
                target: target.into(),
                origin,
            },
        }
    }
}

/// What one stream batch changed.
#[derive(Debug, Default)]
pub struct Batch {
    /// For the admission, removals first.
    pub changes: Vec<Change>,
    /// Decisions of another type than `ban` (captcha, ...), not enforced.
    pub ignored: u64,
    /// Decisions rejected, by kind ([`DecisionError::kind`]): how many, and the first.
    pub rejected: BTreeMap<&'static str, (u64, Rejected)>,
}

impl Batch {
    fn reject(&mut self, error: DecisionError, d: &Decision) {
        let kind = error.kind();
        let (n, _) = self.rejected.entry(kind).or_insert_with(|| {
            (
                0,
                Rejected {
                    error,
                    origin: printable(&d.origin, ORIGIN_CHARS),
                    scenario: printable(&d.scenario, 128),
                },
            )
        });
        *n += 1;
    }
}

/// A rejected decision, for the log: only printable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: DecisionError,
    /// Its origin.
    pub origin: String,
    /// Its scenario.
    pub scenario: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (origin `{}`, scenario `{}`)",
            self.error, self.origin, self.scenario
        )
    }
}

/// The decisions in force, by (scope, value).
#[derive(Debug, Default)]
pub struct Decisions {
    entries: HashMap<Target, Entry>,
    by_origin: BTreeMap<String, u64>,
    limits: Limits,
    origins: Origins,
}

impl Decisions {
    /// No decisions yet; later ones are checked against `limits`.
    pub fn new(limits: Limits) -> Decisions {
        Decisions {
            limits,
            ..Decisions::default()
        }
    }

    /// Number of decisions in force.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is in force.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decisions in force per origin.
    pub fn by_origin(&self) -> &BTreeMap<String, u64> {
        &self.by_origin
    }

    /// The entry for `target`, if enforced.
    pub fn get(&self, target: &Target) -> Option<&Entry> {
        self.entries.get(target)
    }

    /// Applies one stream answer received at `now_ns`. With `startup` the answer is the full
    /// set: it replaces the state (its `deleted` part is history and is ignored). Otherwise
    /// `deleted` items are removed (whatever their duration's sign) and then `new` items are
    /// added, keeping the later expiry of a value already enforced.
    pub fn apply(&mut self, stream: Stream, startup: bool, now_ns: u64) -> Batch {
        let mut batch = Batch::default();
        if startup {
            let mut fresh: HashMap<Target, Entry> = HashMap::new();
            for d in stream.new.unwrap_or_default() {
                let Some((target, entry)) = self.live(&d, now_ns, &mut batch) else {
                    continue;
                };
                match fresh.get(&target) {
                    Some(old) if old.expires_ns >= entry.expires_ns => {}
                    _ => {
                        fresh.insert(target, entry);
                    }
                }
            }
            let gone: Vec<Target> = self
                .entries
                .keys()
                .filter(|t| !fresh.contains_key(t))
                .copied()
                .collect();
            for target in gone {
                self.remove(target, &mut batch.changes);
            }
            for (target, entry) in fresh {
                // The remaining time is re-read on every full pull: an expiry that moved by
                // less than RESYNC_SLACK_NS is the same decision, and rewriting 100,000 kernel
                // entries for that would be waste.
                let same = self.entries.get(&target).is_some_and(|old| {
                    old.origin == entry.origin
                        && old.expires_ns.abs_diff(entry.expires_ns) < RESYNC_SLACK_NS
                });
                if !same {
                    self.set(target, entry, &mut batch.changes);
                }
            }
            return batch;
        }
        for d in stream.deleted.unwrap_or_default() {
            // Nothing to count here: a value that does not parse was rejected, and counted,
            // when it came as new.
            if d.kind != "ban" {
                continue;
            }
            if let Ok(target) = Target::parse(&d.scope, &d.value) {
                self.remove(target, &mut batch.changes);
            }
        }
        for d in stream.new.unwrap_or_default() {
            let Some((target, entry)) = self.live(&d, now_ns, &mut batch) else {
                continue;
            };
            if self
                .entries
                .get(&target)
                .is_some_and(|old| old.expires_ns >= entry.expires_ns)
            {
                continue;
            }
            self.set(target, entry, &mut batch.changes);
        }
        batch
    }

    /// Removes the decisions that ended by `now_ns` (the kernel ban map already ignores an
    /// expired IPv4 ban, but the block tries have no expiry).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Change> {
        let ended: Vec<Target> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_ns <= now_ns)
            .map(|(t, _)| *t)
            .collect();
        let mut changes = Vec::with_capacity(ended.len());
        for target in ended {
            self.remove(target, &mut changes);
        }
        changes
    }

    fn set(&mut self, target: Target, entry: Entry, changes: &mut Vec<Change>) {
        *self.by_origin.entry(entry.origin.clone()).or_insert(0) += 1;
        let previous = self.entries.insert(target, entry.clone());
        let previous_origin = previous.and_then(|old| {
            self.uncount(&old.origin);
            (old.origin != entry.origin).then_some(old.origin)
        });
        changes.push(Change::Set {
            target,
            entry,
            previous_origin,
        });
    }

    fn remove(&mut self, target: Target, changes: &mut Vec<Change>) {
        if let Some(old) = self.entries.remove(&target) {
            self.uncount(&old.origin);
            changes.push(Change::Remove {
                target,
                origin: old.origin,
            });
        }
    }

    /// A `new` decision as the entry to enforce from `now_ns`; `None` if it is not a ban, is
    /// rejected (counted in `batch`) or has already ended.
    fn live(&mut self, d: &Decision, now_ns: u64, batch: &mut Batch) -> Option<(Target, Entry)> {
        if d.kind != "ban" {
            batch.ignored += 1;
            return None;
        }
        let parsed = Target::parse(&d.scope, &d.value)
            .and_then(|target| self.limits.check(target))
            .and_then(|target| Ok((target, duration::parse(&d.duration)?.remaining())));
        let (target, remaining) = match parsed {
            Ok(p) => p,
            Err(e) => {
                batch.reject(e, d);
                return None;
            }
        };
        if remaining.is_zero() {
            return None;
        }
        let entry = Entry {
            origin: self.origins.label(&d.origin),
            expires_ns: expiry(now_ns, remaining),
        };
        Some((target, entry))
    }

    fn uncount(&mut self, origin: &str) {
        if let Some(n) = self.by_origin.get_mut(origin) {
            *n -= 1;
            if *n == 0 {
                self.by_origin.remove(origin);
            }
        }
    }
}

fn expiry(now_ns: u64, remaining: Duration) -> u64 {
    now_ns.saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn d(scope: &str, value: &str, duration: &str, origin: &str) -> Decision {
        Decision {
            duration: duration.into(),
            origin: origin.into(),
            scenario: "test".into(),
            scope: scope.into(),
            kind: "ban".into(),
            value: value.into(),
        }
    }

    fn stream(new: Vec<Decision>, deleted: Vec<Decision>) -> Stream {
        Stream {
            new: (!new.is_empty()).then_some(new),
            deleted: (!deleted.is_empty()).then_some(deleted),
        }
    }

    fn ip(s: &str) -> Target {
        Target::Ip(s.parse().expect("ip"))
    }

    fn range(s: &str) -> Target {
        Target::Range(s.parse().expect("net"))
    }

    #[test]
    fn startup_then_incremental_add_and_delete() {
        let mut state = Decisions::default();
        let mut captcha = d("Ip", "198.18.1.6", "1h", "cscli");
        captcha.kind = "captcha".into();
        let batch = state.apply(
            stream(
                vec![
                    d("Range", "2001:db8:1::/48", "1m29.2s", "cscli"),
                    d("Range", "198.18.2.0/24", "29m59.2s", "cscli"),
                    d("Ip", "198.18.1.5", "59m59.2s", "cscli"),
                    captcha,
                    d("Ip", "2001:db8::5", "1h59m59.2s", "crowdsec"),
                ],
                vec![d("Ip", "198.18.9.9", "-1s", "cscli")],
            ),
            true,
            100 * S,
        );
        assert_eq!(batch.changes.len(), 4);
        assert_eq!(batch.ignored, 1);
        assert_eq!(state.len(), 4);
        assert_eq!(state.by_origin().get("cscli"), Some(&3));
        assert_eq!(
            state.get(&ip("198.18.1.5")).map(|e| e.expires_ns),
            Some(100 * S + 3599 * S + 200_000_000)
        );
        assert!(state.get(&range("198.18.2.0/24")).is_some());

        let batch = state.apply(
            stream(
                vec![d("Ip", "198.18.1.7", "10m", "relay")],
                vec![
                    d("Ip", "198.18.1.5", "-105.3ms", "cscli"),
                    d("Range", "198.18.2.0/24", "-7.2ms", "cscli"),
                    // Not enforced: nothing to remove.
                    d("Ip", "203.0.113.1", "-1s", "cscli"),
                ],
            ),
            false,
            200 * S,
        );
        assert_eq!(
            batch.changes,
            vec![
                Change::Remove {
                    target: ip("198.18.1.5"),
                    origin: "cscli".into()
                },
                Change::Remove {
                    target: range("198.18.2.0/24"),
                    origin: "cscli".into()
                },
                Change::Set {
                    target: ip("198.18.1.7"),
                    entry: Entry {
                        origin: "relay".into(),
                        expires_ns: 800 * S
                    },
                    previous_origin: None
                },
            ]
        );
        assert_eq!(state.len(), 3);
        assert_eq!(state.by_origin().get("relay"), Some(&1));
        assert_eq!(state.by_origin().get("cscli"), Some(&1));
    }

    #[test]
    fn keyed_by_value_not_id_and_the_longest_wins() {
        let mut state = Decisions::default();
        state.apply(
            stream(vec![d("Ip", "198.18.1.8", "3h", "cscli")], vec![]),
            false,
            0,
        );
        // A shorter decision on the same value does not shorten the ban.
        let batch = state.apply(
            stream(vec![d("Ip", "198.18.1.8", "1h", "crowdsec")], vec![]),
            false,
            0,
        );
        assert!(batch.changes.is_empty());
        assert_eq!(
            state.get(&ip("198.18.1.8")).map(|e| e.expires_ns),
            Some(3 * 3600 * S)
        );
        // A longer one from another origin takes over, and says which origin it replaced.
        let batch = state.apply(
            stream(vec![d("Ip", "198.18.1.8", "5h", "relay")], vec![]),
            false,
            0,
        );
        assert!(matches!(
            &batch.changes[..],
            [Change::Set { previous_origin: Some(o), .. }] if o == "cscli"
        ));
        assert_eq!(state.by_origin().len(), 1);
        // Deleted under any id, the value goes.
        let batch = state.apply(
            stream(vec![], vec![d("Ip", "198.18.1.8", "-1s", "crowdsec")]),
            false,
            0,
        );
        assert_eq!(batch.changes.len(), 1);
        assert!(state.is_empty());
        assert!(state.by_origin().is_empty());
    }

    #[test]
    fn resync_replaces_the_set() {
        let mut state = Decisions::default();
        state.apply(
            stream(
                vec![
                    d("Ip", "198.18.1.1", "1h", "cscli"),
                    d("Ip", "198.18.1.2", "1h", "cscli"),
                ],
                vec![],
            ),
            true,
            0,
        );
        // 198.18.1.1 vanished silently (alert flush); 198.18.1.2 unchanged; .3 new.
        let batch = state.apply(
            stream(
                vec![
                    d("Ip", "198.18.1.2", "1h", "cscli"),
                    d("Ip", "198.18.1.3", "1h", "cscli"),
                ],
                vec![d("Ip", "198.18.1.2", "-1s", "cscli")],
            ),
            true,
            0,
        );
        assert_eq!(
            batch.changes,
            vec![
                Change::Remove {
                    target: ip("198.18.1.1"),
                    origin: "cscli".into()
                },
                Change::Set {
                    target: ip("198.18.1.3"),
                    entry: Entry {
                        origin: "cscli".into(),
                        expires_ns: 3600 * S
                    },
                    previous_origin: None
                }
            ]
        );
        assert_eq!(state.len(), 2);
        // The same set a moment later: the expiries moved a little, nothing to rewrite.
        let batch = state.apply(
            stream(
                vec![
                    d("Ip", "198.18.1.2", "1h", "cscli"),
                    d("Ip", "198.18.1.3", "1h", "cscli"),
                ],
                vec![],
            ),
            true,
            S / 2,
        );
        assert!(batch.changes.is_empty(), "{:?}", batch.changes);
    }

    #[test]
    fn expiry_and_bad_items() {
        let mut state = Decisions::default();
        let batch = state.apply(
            stream(
                vec![
                    d("Ip", "198.18.1.1", "2s", "cscli"),
                    d("Range", "198.18.3.7/24", "1h", "cscli"),
                    d("ip", "198.18.1.2", "1h", "cscli"),
                    d("Ip", "not-an-ip", "1h", "cscli"),
                    d("Ip", "198.18.1.3", "1d", "cscli"),
                    d("Ip", "198.18.1.4", "-3s", "cscli"),
                    d("Ip", "::ffff:198.18.1.5", "1h", "cscli"),
                ],
                vec![],
            ),
            false,
            0,
        );
        let counts: Vec<(&str, u64)> = batch.rejected.iter().map(|(k, (n, _))| (*k, *n)).collect();
        assert_eq!(
            counts,
            [("bad_duration", 1), ("bad_scope", 1), ("bad_value", 1)]
        );
        assert!(matches!(
            batch.rejected.get("bad_scope"),
            Some((
                _,
                Rejected {
                    error: DecisionError::Scope { .. },
                    ..
                }
            ))
        ));
        assert!(
            state.get(&range("198.18.3.0/24")).is_some(),
            "host bits cleared"
        );
        assert!(state.get(&ip("198.18.1.5")).is_some(), "mapped v4 is v4");
        assert!(
            state.get(&ip("198.18.1.4")).is_none(),
            "nothing left: not added"
        );
        assert_eq!(state.expire(S), vec![]);
        assert_eq!(
            state.expire(2 * S),
            vec![Change::Remove {
                target: ip("198.18.1.1"),
                origin: "cscli".into()
            }]
        );
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn ranges_wider_than_the_limits_are_rejected() {
        let mut state = Decisions::default();
        let batch = state.apply(
            stream(
                vec![
                    d("Range", "0.0.0.0/0", "1h", "cscli"),
                    d("Range", "::/0", "1h", "cscli"),
                    d("Range", "10.0.0.0/7", "1h", "cscli"),
                    d("Range", "2001:db8::/31", "1h", "cscli"),
                    d("Range", "11.0.0.0/8", "1h", "cscli"),
                    d("Range", "2001:db8::/32", "1h", "cscli"),
                    d("Range", "198.18.1.5/32", "1h", "cscli"),
                    d("Ip", "198.18.1.6", "1h", "cscli"),
                ],
                vec![],
            ),
            true,
            0,
        );
        assert_eq!(batch.rejected.get("wide_range").map(|(n, _)| *n), Some(4));
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(state.len(), 4);
        assert!(state.get(&range("0.0.0.0/0")).is_none());
        assert!(state.get(&range("11.0.0.0/8")).is_some());
        assert_eq!(
            batch.rejected["wide_range"].1.error.to_string(),
            "range 0.0.0.0/0 is wider than /8, the widest relay accepts"
        );
        // The bounds are the operator's: 0 accepts everything, 32 no IPv4 range but a host.
        let mut open = Decisions::new(Limits {
            max_range_v4: 0,
            max_range_v6: 128,
        });
        let batch = open.apply(
            stream(
                vec![
                    d("Range", "0.0.0.0/0", "1h", "cscli"),
                    d("Range", "2001:db8::/64", "1h", "cscli"),
                    d("Range", "2001:db8::1/128", "1h", "cscli"),
                ],
                vec![],
            ),
            false,
            0,
        );
        assert_eq!(open.len(), 2);
        assert_eq!(batch.rejected["wide_range"].0, 1);
    }

    #[test]
    fn printable_text_only() {
        for (raw, clean) in [
            ("cscli", "cscli"),
            ("lists:firehol_level1", "lists:firehol_level1"),
            ("a\u{1b}[31mred\u{1b}[0m", "a[31mred[0m"),
            ("line\r\nINFO forged", "lineINFO forged"),
            ("nul\0tab\tdel\u{7f}c1\u{85}", "nultabdelc1"),
            ("bidi\u{202e}txt.exe\u{2066}\u{2028}", "biditxt.exe"),
            ("ünïcödé ok", "ünïcödé ok"),
        ] {
            assert_eq!(printable(raw, 64), clean, "{raw:?}");
        }
        assert_eq!(printable(&"x".repeat(100), 64).len(), 64);
    }

    #[test]
    fn origins_are_printable_and_few() {
        let mut state = Decisions::default();
        let mut new = vec![
            d("Ip", "198.18.0.1", "1h", "evil\u{1b}[2J\norigin"),
            d("Ip", "198.18.0.2", "1h", "\u{7}"),
        ];
        for i in 0..30 {
            new.push(d("Ip", &format!("198.18.1.{i}"), "1h", &format!("o{i}")));
        }
        for (i, known) in KNOWN_ORIGINS.iter().enumerate() {
            new.push(d("Ip", &format!("198.18.2.{i}"), "1h", known));
        }
        state.apply(stream(new, vec![]), false, 0);
        let labels: Vec<&String> = state.by_origin().keys().collect();
        assert!(labels.iter().all(|o| !o.chars().any(char::is_control)));
        assert!(state.by_origin().contains_key("evil[2Jorigin"));
        // 16 others (the cleaned one among them), CrowdSec's own names, and "other".
        assert_eq!(
            labels.len(),
            MAX_ORIGINS + KNOWN_ORIGINS.len() + 1,
            "{labels:?}"
        );
        assert_eq!(
            state.by_origin().get(OTHER_ORIGIN),
            Some(&(32 - MAX_ORIGINS as u64))
        );
        assert_eq!(state.by_origin().values().sum::<u64>(), 32 + 6);
        assert_eq!(
            state.get(&ip("198.18.1.29")).map(|e| e.origin.as_str()),
            Some(OTHER_ORIGIN)
        );
    }

    #[test]
    fn readding_after_delete_in_one_batch_keeps_the_ban() {
        let mut state = Decisions::default();
        state.apply(
            stream(vec![d("Ip", "198.18.1.1", "1h", "cscli")], vec![]),
            false,
            0,
        );
        let batch = state.apply(
            stream(
                vec![d("Ip", "198.18.1.1", "30m", "cscli")],
                vec![d("Ip", "198.18.1.1", "-1s", "cscli")],
            ),
            false,
            0,
        );
        assert_eq!(batch.changes.len(), 2);
        assert_eq!(
            state.get(&ip("198.18.1.1")).map(|e| e.expires_ns),
            Some(1800 * S)
        );
    }
}
