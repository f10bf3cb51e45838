//! Persistence: restoring operator lists, bans and usage from the state dir at start, saving
//! them as they change and periodically, and the replay memory's saves.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use relay_common::{BanAction, BanReason};

use super::Daemon;
use crate::{
    admission::{BanTarget, ListSource, PrefixList},
    clock::{monotonic_ns, unix_now},
    config::Cidr,
    control::saved_state::{Lists, SavedBan, SavedUsage},
    state_dir::StateError,
    xdp::MapsError,
};

/// Why a change to the operator lists did not fully take.
#[derive(Debug, thiserror::Error)]
pub enum ListsSaveError {
    /// The lists file could not be written: nothing changed.
    #[error("not saved, nothing changed: {0}")]
    NotSaved(StateError),
    /// Saved, but the admission's maps refused the new entries.
    #[error("saved, but the kernel map refused it: {0}")]
    NotApplied(MapsError),
}

impl Daemon {
    /// Loads operator lists, bans and usage from the state dir. A corrupt file is reported
    /// (and set aside by the store) and its part starts empty.
    pub(super) async fn restore(&self) {
        match self.saved.load_lists() {
            Ok(lists) => {
                if let Err(e) = self.apply_lists(&lists).await {
                    tracing::error!("restoring operator lists: {e}");
                }
                *self.lists.lock().await = lists;
            }
            Err(e) => tracing::error!("state: {e}"),
        }
        match self.saved.load_bans() {
            Ok(bans) => {
                let now = unix_now();
                let misuse = self.config().misuse.clone();
                let mut admission = self.admission.write().await;
                for ban in bans {
                    let (Ok(target), Some(reason)) = (
                        ban.addr.parse::<BanTarget>(),
                        BanReason::ALL.into_iter().find(|r| r.name() == ban.reason),
                    ) else {
                        tracing::warn!(addr = ban.addr, "state: skipping unreadable ban");
                        continue;
                    };
                    let ttl = match ban.expires_unix {
                        None => None,
                        Some(t) if t > now => Some(Duration::from_secs(t - now)),
                        Some(_) => continue,
                    };
                    // Files written before bans had an action get the one `[misuse]` gives.
                    let action = ban
                        .action
                        .as_deref()
                        .and_then(|name| BanAction::ALL.into_iter().find(|a| a.name() == name))
                        .unwrap_or_else(|| misuse.action_for(reason));
                    let restored = match target {
                        BanTarget::Addr(addr) => {
                            admission.ban(addr, reason, action, ttl, ban.count)
                        }
                        BanTarget::Prefix(prefix) => {
                            admission.ban_prefix(prefix, reason, action, ttl, ban.count)
                        }
                    };
                    if let Err(e) = restored {
                        tracing::error!(%target, "restoring ban: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("state: {e}"),
        }
        match self.saved.load_usage() {
            Ok(usage) => {
                for (name, saved) in usage {
                    if let Some(account) = self.accounts.get(&name) {
                        account.restore(saved.bytes_up, saved.bytes_down, saved.disabled);
                    }
                }
            }
            Err(e) => tracing::error!("state: {e}"),
        }
    }

    /// Pushes operator lists into the admission.
    async fn apply_lists(&self, lists: &Lists) -> Result<(), MapsError> {
        let now = unix_now();
        let block: BTreeSet<Cidr> = lists
            .block
            .iter()
            .filter(|(_, e)| e.expires_unix.is_none_or(|t| t > now))
            .filter_map(|(c, _)| c.parse().ok())
            .collect();
        let allow: BTreeSet<Cidr> = lists.allow.iter().filter_map(|c| c.parse().ok()).collect();
        let mut admission = self.admission.write().await;
        admission.set_prefixes(PrefixList::Block, ListSource::Operator, block)?;
        admission.set_prefixes(PrefixList::Allow, ListSource::Operator, allow)
    }

    /// Persists the changed operator lists, then applies them: a change the disk could not keep
    /// is not made. An error of `change` (the thing to change does not exist) changes nothing.
    pub(super) async fn change_lists<T, E: From<ListsSaveError>>(
        &self,
        change: impl FnOnce(&mut Lists) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut lists = self.lists.lock().await;
        let mut new = lists.clone();
        let reply = change(&mut new)?;
        self.saved
            .save_lists(&new)
            .map_err(ListsSaveError::NotSaved)?;
        let applied = self.apply_lists(&new).await;
        *lists = new;
        applied.map_err(ListsSaveError::NotApplied)?;
        Ok(reply)
    }

    /// Saves bans, usage and what changed in the replay memory (its filling generation at
    /// most every [`crate::control::replay_store::SAVE_NEWEST_EVERY`]); called periodically.
    pub async fn save_runtime_state(&self) {
        self.save_bans_and_usage().await;
        self.save_replay(false).await;
    }

    /// Saves everything, the whole replay memory included; called at shutdown.
    pub async fn save_state_at_exit(&self) {
        self.save_bans_and_usage().await;
        self.save_replay(true).await;
    }

    async fn save_bans_and_usage(&self) {
        if let Err(e) = self.save_bans().await {
            tracing::error!("saving bans: {e}");
        }
        if let Err(e) = self.save_usage().await {
            tracing::error!("saving usage: {e}");
        }
    }

    /// Writes the replay memory's changes off the async threads (files of about a megabyte).
    async fn save_replay(&self, force: bool) {
        let (store, replay) = (self.replay_store.clone(), self.replay.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || store.save(&replay, force)).await {
            tracing::error!("saving the replay memory: {e}");
        }
    }

    /// Writes the current bans. The snapshot is taken under the save lock, so a save can never
    /// overwrite a newer one with an older snapshot.
    pub(super) async fn save_bans(&self) -> Result<(), StateError> {
        let _order = self.saves.lock().await;
        let bans = self.saved_bans().await;
        self.saved.save_bans(&bans)
    }

    /// Writes every account's usage and operator switch (snapshot under the save lock).
    pub(super) async fn save_usage(&self) -> Result<(), StateError> {
        let _order = self.saves.lock().await;
        let usage: BTreeMap<String, SavedUsage> = self
            .accounts
            .all()
            .iter()
            .map(|a| {
                let u = a.usage(Instant::now(), Duration::ZERO);
                (
                    a.name.clone(),
                    SavedUsage {
                        bytes_up: u.bytes_up,
                        bytes_down: u.bytes_down,
                        disabled: u.operator_disabled,
                    },
                )
            })
            .collect();
        self.saved.save_usage(&usage)
    }

    async fn saved_bans(&self) -> Vec<SavedBan> {
        let now_mono = monotonic_ns();
        let now = unix_now();
        self.admission
            .read()
            .await
            .bans()
            .map(|b| SavedBan {
                addr: b.target.to_string(),
                reason: b.reason.name().to_owned(),
                action: Some(b.action.name().to_owned()),
                count: b.count,
                expires_unix: b.remaining(now_mono).map(|d| now + d.as_secs()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use relay_common::{BanAction, BanReason};
    use relay_proto::replay::ReplayKey;

    use crate::{
        admission::BanTarget,
        control::api::{Reply, Request},
        daemon::test_support::TestDaemon,
    };

    async fn restarted(relay: TestDaemon) -> TestDaemon {
        let TestDaemon { daemon, dir } = relay;
        daemon.save_state_at_exit().await;
        drop(daemon);
        TestDaemon::start_in(dir, "").await
    }

    #[tokio::test]
    async fn lists_bans_usage_and_replay_memory_survive_a_restart() {
        let relay = TestDaemon::start().await;
        relay
            .ok(Request::BlockAdd {
                cidr: "192.0.2.0/24".to_owned(),
                ttl_secs: Some(3600),
                reason: Some("scanner".to_owned()),
            })
            .await;
        relay
            .ok(Request::AllowAdd {
                cidr: "198.18.0.1".to_owned(),
            })
            .await;
        {
            let mut admission = relay.daemon.admission.write().await;
            let addr = "203.0.113.9".parse().expect("addr");
            let ttl = Some(std::time::Duration::from_secs(600));
            admission
                .ban(addr, BanReason::BadSecret, BanAction::Front, ttl, 12)
                .expect("ban");
            let Ok(BanTarget::Prefix(prefix)) = "198.51.100.0/24".parse::<BanTarget>() else {
                panic!("prefix");
            };
            admission
                .ban_prefix(prefix, BanReason::BadSecret, BanAction::Drop, None, 40)
                .expect("prefix ban");
        }
        let alice = relay.daemon.accounts.get("alice").expect("alice");
        alice.restore(1000, 2000, false);
        relay
            .ok(Request::UsersDisable {
                name: "alice".to_owned(),
            })
            .await;
        let key = ReplayKey::tls(&[7; 32]);
        let now = crate::clock::unix_now();
        assert!(
            !relay
                .daemon
                .replay
                .lock()
                .expect("replay")
                .check_and_insert(key, now)
        );

        let relay = restarted(relay).await;

        let Reply::Prefixes { entries } = relay.ok(Request::BlockList).await else {
            panic!("not a list");
        };
        let block = entries
            .iter()
            .find(|e| e.source == "operator")
            .expect("operator block restored");
        assert_eq!(block.cidr, "192.0.2.0/24");
        assert_eq!(block.reason.as_deref(), Some("scanner"));
        assert!(block.expires_in_secs.is_some_and(|s| s <= 3600));
        let Reply::Prefixes { entries } = relay.ok(Request::AllowList).await else {
            panic!("not a list");
        };
        assert!(
            entries.iter().any(|e| e.cidr == "198.18.0.1/32"),
            "{entries:?}"
        );

        let Reply::Bans { mut bans } = relay.ok(Request::BansList).await else {
            panic!("not bans");
        };
        bans.sort_by(|a, b| a.addr.cmp(&b.addr));
        assert_eq!(bans.len(), 2, "{bans:?}");
        assert_eq!(
            (
                bans[0].addr.as_str(),
                bans[0].action.as_str(),
                bans[0].count
            ),
            ("198.51.100.0/24", "drop", 40)
        );
        assert_eq!(bans[0].expires_in_secs, None);
        assert_eq!(
            (
                bans[1].addr.as_str(),
                bans[1].action.as_str(),
                bans[1].count
            ),
            ("203.0.113.9", "front", 12)
        );
        assert!(bans[1].expires_in_secs.is_some_and(|s| s <= 600));

        let Reply::Users { users } = relay
            .ok(Request::UsersShow {
                name: "alice".to_owned(),
            })
            .await
        else {
            panic!("not users");
        };
        assert_eq!((users[0].bytes_up, users[0].bytes_down), (1000, 2000));
        assert!(!users[0].enabled);

        assert!(relay.daemon.replay.lock().expect("replay").contains(&key));
    }

    #[tokio::test]
    async fn a_lapsed_ban_is_not_restored() {
        let relay = TestDaemon::start().await;
        relay
            .daemon
            .admission
            .write()
            .await
            .ban(
                "203.0.113.9".parse().expect("addr"),
                BanReason::BadSecret,
                BanAction::Drop,
                Some(std::time::Duration::ZERO),
                3,
            )
            .expect("ban");
        let relay = restarted(relay).await;
        assert_eq!(
            relay.ok(Request::BansList).await,
            Reply::Bans { bans: Vec::new() }
        );
    }

    #[tokio::test]
    async fn a_corrupt_lists_file_is_set_aside_and_the_daemon_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("state")).expect("mkdir");
        std::fs::write(dir.path().join("state/lists.json"), "{\"block\": ").expect("write");
        let relay = TestDaemon::start_in(dir, "").await;
        let Reply::Prefixes { entries } = relay.ok(Request::BlockList).await else {
            panic!("not a list");
        };
        assert!(entries.is_empty(), "{entries:?}");
        let names: Vec<String> = std::fs::read_dir(relay.state_path())
            .expect("state dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("lists.json.corrupt-")),
            "{names:?}"
        );
        // The next change writes a good file again.
        relay
            .ok(Request::AllowAdd {
                cidr: "198.18.0.1".to_owned(),
            })
            .await;
        assert!(relay.state_path().join("lists.json").is_file());
    }
}
