//! The users a relay serves: those in the config, or a single `default` user whose secret is
//! generated on first start and kept in the state directory.

use crate::{
    config::Config,
    relay::context::RelayUser,
    state_dir::{self, StateDir, StateError},
};

/// The users listed in `config`, if it lists any (no state dir needed then).
pub fn configured(config: &Config) -> Option<Vec<RelayUser>> {
    (!config.users.is_empty()).then(|| {
        config
            .users
            .iter()
            .map(|u| RelayUser {
                name: u.name.clone(),
                secret: u.secret.clone(),
            })
            .collect()
    })
}

/// Resolves the users of `config`, with the default user's secret kept in `state`. Returns
/// them and whether a default secret was just created.
pub fn resolve(config: &Config, state: &StateDir) -> Result<(Vec<RelayUser>, bool), StateError> {
    if let Some(users) = configured(config) {
        return Ok((users, false));
    }
    let (secret, created) = state_dir::default_secret(state)?;
    Ok((
        vec![RelayUser {
            name: "default".to_owned(),
            secret,
        }],
        created,
    ))
}
