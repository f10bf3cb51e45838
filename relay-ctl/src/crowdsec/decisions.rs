//! The CrowdSec decisions relay enforces, without any I/O: stream batches in, changes for the
//! shield out.
//!
//! State is keyed by (scope, value), never by decision id: the LAPI returns only the longest
//! of several decisions on one value, so the id of the `new` item and of the later `deleted`
//! item for the same address can differ.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;

use super::{
    api::{Decision, Stream},
    duration,
};

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
            scope: scope.chars().take(16).collect(),
            value: value.chars().take(64).collect(),
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
                scope: other.chars().take(16).collect(),
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
    #[error(transparent)]
    Duration(#[from] duration::BadDuration),
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

/// A change the shield has to make.
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

/// What one stream batch changed.
#[derive(Debug, Default)]
pub struct Batch {
    /// For the shield, removals first.
    pub changes: Vec<Change>,
    /// Decisions of another type than `ban` (captcha, ...), not enforced.
    pub ignored: u64,
    /// Decisions that could not be parsed; the first error is kept for the log.
    pub invalid: u64,
    /// The first parse error.
    pub first_error: Option<DecisionError>,
}

/// The decisions in force, by (scope, value).
#[derive(Debug, Default)]
pub struct Decisions {
    entries: HashMap<Target, Entry>,
    by_origin: BTreeMap<String, u64>,
}

/// A decision parsed: its target, origin and remaining time.
struct Parsed {
    target: Target,
    origin: String,
    remaining: Duration,
}

impl Decisions {
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
                let Some((target, entry)) = live(&d, now_ns, &mut batch) else {
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
            if let Some(p) = parse(&d, &mut batch) {
                self.remove(p.target, &mut batch.changes);
            }
        }
        for d in stream.new.unwrap_or_default() {
            let Some((target, entry)) = live(&d, now_ns, &mut batch) else {
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

    fn uncount(&mut self, origin: &str) {
        if let Some(n) = self.by_origin.get_mut(origin) {
            *n -= 1;
            if *n == 0 {
                self.by_origin.remove(origin);
            }
        }
    }
}

/// A `ban` decision's target, origin and time left; other types and bad items are counted in
/// `batch` and skipped.
fn parse(d: &Decision, batch: &mut Batch) -> Option<Parsed> {
    if d.kind != "ban" {
        batch.ignored += 1;
        return None;
    }
    let parsed = Target::parse(&d.scope, &d.value).and_then(|target| {
        let remaining = duration::parse(&d.duration)?.remaining();
        Ok(Parsed {
            target,
            origin: d.origin.chars().take(64).collect(),
            remaining,
        })
    });
    match parsed {
        Ok(p) => Some(p),
        Err(e) => {
            batch.invalid += 1;
            batch.first_error.get_or_insert(e);
            None
        }
    }
}

/// A `new` decision as the entry to enforce from `now_ns`; `None` (counted in `batch` by
/// [`parse`]) if relay cannot enforce it, or `None` if it has already ended.
fn live(d: &Decision, now_ns: u64, batch: &mut Batch) -> Option<(Target, Entry)> {
    let p = parse(d, batch)?;
    if p.remaining.is_zero() {
        return None;
    }
    let entry = Entry {
        origin: p.origin,
        expires_ns: expiry(now_ns, p.remaining),
    };
    Some((p.target, entry))
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
        assert_eq!(batch.invalid, 3);
        assert!(matches!(
            batch.first_error,
            Some(DecisionError::Scope { .. })
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
