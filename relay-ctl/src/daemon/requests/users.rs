//! `users`: the configured users, their usage and the operator's on/off switch.

use crate::{
    control::api::{ErrorKind, Reply},
    daemon::Daemon,
    state_dir::StateError,
};

use super::RequestFailure;

/// Why a users request failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No configured user has the name.
    #[error("no user named `{0}`")]
    NoSuchUser(String),
    /// The configuration disables the user: the operator switch cannot override it.
    #[error(
        "user `{0}` is disabled in the configuration (enabled = false): enable it there and reload"
    )]
    DisabledInConfig(String),
    /// usage.json could not be written, so the switch was put back.
    #[error("not saved, nothing changed: {0}")]
    NotSaved(StateError),
}

impl RequestFailure for UserError {
    fn kind(&self) -> ErrorKind {
        match self {
            UserError::NoSuchUser(_) => ErrorKind::NotFound,
            UserError::DisabledInConfig(_) => ErrorKind::BadRequest,
            UserError::NotSaved(_) => ErrorKind::Failed,
        }
    }
}

impl Daemon {
    /// `users list`: every user with its usage.
    pub(super) fn users_list(&self) -> Reply {
        Reply::Users {
            users: self.user_infos(),
        }
    }

    /// `users show`: one user.
    pub(super) fn users_show(&self, name: &str) -> Result<Reply, UserError> {
        let account = self
            .accounts
            .get(name)
            .ok_or_else(|| UserError::NoSuchUser(name.to_owned()))?;
        Ok(Reply::Users {
            users: vec![self.user_info(&account)],
        })
    }

    /// `users enable` and `users disable`: the operator's switch, saved before it is reported
    /// done.
    pub(super) async fn set_user_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> Result<Reply, UserError> {
        let account = self
            .accounts
            .get(name)
            .ok_or_else(|| UserError::NoSuchUser(name.to_owned()))?;
        if !disabled && account.disabled_in_config() {
            return Err(UserError::DisabledInConfig(name.to_owned()));
        }
        let before = account.set_operator_disabled(disabled);
        // Persist now: the operator is told it is done only once it is on disk.
        if let Err(e) = self.save_usage().await {
            account.set_operator_disabled(before);
            return Err(UserError::NotSaved(e));
        }
        Ok(Reply::Done)
    }
}
