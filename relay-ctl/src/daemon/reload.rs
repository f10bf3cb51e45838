//! Configuration reload (SIGHUP): the new file is checked whole before anything changes, so a
//! broken one leaves the running configuration in force.

use std::sync::{Arc, atomic::Ordering};

use super::Daemon;
use crate::{
    admission::capacity::Bounds,
    config::{Config, ConfigError},
    relay::{RelayContext, mask_target::MaskTarget},
    state_dir::StateError,
    users,
    xdp::MapsError,
};

/// Why a reload was rejected; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The daemon was started without a config file.
    #[error("running on the embedded default configuration: nothing to reload")]
    NoConfigFile,
    /// The file cannot be read or is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The default user's secret in the state dir cannot be read or created.
    #[error(transparent)]
    Users(#[from] StateError),
    /// The enforcement maps refused the new lists or limits. Its message already ends with the
    /// maps' own reason, so it is not repeated as a source.
    #[error("applying lists and limits: {0}")]
    Apply(MapsError),
}

impl Daemon {
    /// Reloads the config file: on success users, limits, lists and thresholds change for new
    /// connections (established ones and XDP stay); on failure the old config stays. Counted
    /// for `relay_config_reloads_total`.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let result = self.try_reload().await;
        self.reloads[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_reload(&self) -> Result<(), ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(ReloadError::NoConfigFile);
        };
        let new = Config::load(path)?;
        let old = self.config();
        warn_restart_only_changes(&old, &new);
        let (users, _) = users::resolve(&new, &self.state)?;
        self.admission
            .write()
            .await
            .apply(&new)
            .map_err(ReloadError::Apply)?;
        self.misuse.reconfigure(&new.misuse);
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_limits(new.replay.limits());
        self.capacity.set_bounds(Bounds::from(&new.limits));
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        self.accounts.retain(&names);
        // User indices may now mean other users: old hints would only cost wasted tries.
        self.hints.clear();
        let mut relay = RelayContext::new(
            &new,
            users,
            &self.accounts,
            self.replay.clone(),
            self.hints.clone(),
            self.misuse.clone(),
            self.relay.load().stats.clone(),
            self.flight.clone(),
        );
        // Same mask, same cached addresses.
        relay.mask = MaskTarget::reuse(self.relay.load().mask.as_ref(), relay.mask.take());
        relay.middle = self.middle_for(&new);
        relay.socks5 = self.socks5.clone();
        relay.passage = self.passage.clone();
        self.flight.reconfigure(&old, &new);
        self.relay.store(Arc::new(relay));
        crate::logging::reconfigure(&new.log);
        self.config.store(Arc::new(new));
        self.refresh_feeds().await;
        Ok(())
    }
}

/// Warns about the changed settings a reload does not apply.
fn warn_restart_only_changes(old: &Config, new: &Config) {
    if new.server.listen != old.server.listen {
        tracing::warn!("[server] listen changed: takes effect only after a restart");
    }
    if new.metrics != old.metrics {
        tracing::warn!("[metrics] changed: takes effect only after a restart");
    }
    let socks5 = |c: &Config| {
        (
            c.upstream.socks5.clone(),
            c.upstream.socks5_username.clone(),
            c.upstream.socks5_password_file.clone(),
        )
    };
    if socks5(new) != socks5(old) {
        tracing::warn!("[upstream] socks5 changed: takes effect only after a restart");
    }
    if new.crowdsec != old.crowdsec {
        tracing::warn!("[crowdsec] changed: takes effect only after a restart");
    }
    if new.log.format != old.log.format {
        tracing::warn!("[log] format changed: takes effect only after a restart");
    }
    if new.state.dir != old.state.dir {
        tracing::warn!("[state] dir changed: takes effect only after a restart");
    }
}

#[cfg(test)]
mod tests {
    use super::ReloadError;
    use crate::{
        config::ConfigError,
        control::api::{Reply, Request},
        daemon::test_support::{TestDaemon, config_text},
        telemetry::Metric,
    };

    async fn user_names(relay: &TestDaemon) -> Vec<String> {
        let Reply::Users { users } = relay.ok(Request::UsersList).await else {
            panic!("not users");
        };
        users.into_iter().map(|u| u.name).collect()
    }

    async fn reload_counts(relay: &TestDaemon) -> Vec<(String, u64)> {
        let stats = relay.daemon.stats().await;
        stats
            .metrics
            .by_label(Metric::ConfigReloads)
            .into_iter()
            .map(|(result, n)| (result.to_owned(), n))
            .collect()
    }

    #[tokio::test]
    async fn a_broken_config_is_rejected_and_the_running_one_stays() {
        let relay = TestDaemon::start().await;
        let good = std::fs::read_to_string(relay.config_path()).expect("config");
        let broken = format!("{good}[[users]\nname = \"mallory\"\n");
        let bad_line = good.lines().count() + 1;
        std::fs::write(relay.config_path(), broken).expect("write");

        let err = relay.daemon.reload().await.expect_err("broken config");
        assert!(
            matches!(&err, ReloadError::Config(ConfigError::Invalid { line, .. }) if *line == bad_line),
            "{err:?}"
        );
        // The operator is told the file and line.
        let path = relay.config_path().display().to_string();
        assert!(
            err.to_string().starts_with(&format!("{path}:{bad_line}:")),
            "{err}"
        );
        assert_eq!(user_names(&relay).await, ["alice", "bob"]);
        assert_eq!(relay.daemon.config().users.len(), 2);
        assert_eq!(
            reload_counts(&relay).await,
            [("failure".to_owned(), 1), ("success".to_owned(), 0)]
        );
    }

    #[tokio::test]
    async fn a_good_config_replaces_users_and_lists() {
        let relay = TestDaemon::start().await;
        let without_bob = config_text(&relay.dir, "[blocklist]\ncidrs = [\"192.0.2.0/24\"]\n")
            .replace(
                "[[users]]\nname = \"bob\"\nsecret = \"ffeeddccbbaa99887766554433221100\"\nenabled = false\n",
                "",
            );
        std::fs::write(relay.config_path(), without_bob).expect("write");
        relay.daemon.reload().await.expect("reloaded");
        assert_eq!(user_names(&relay).await, ["alice"]);
        let Reply::Prefixes { entries } = relay.ok(Request::BlockList).await else {
            panic!("not a list");
        };
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].cidr, "192.0.2.0/24");
        assert_eq!(
            reload_counts(&relay).await,
            [("failure".to_owned(), 0), ("success".to_owned(), 1)]
        );
    }

    #[test]
    fn without_a_config_file_there_is_nothing_to_reload() {
        assert_eq!(
            ReloadError::NoConfigFile.to_string(),
            "running on the embedded default configuration: nothing to reload"
        );
    }
}
