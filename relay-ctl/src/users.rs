//! The users a relay serves: those in the config, or a single `default` user whose secret is
//! generated on first start and kept in the state directory.

use crate::{
    config::Config,
    relay::context::RelayUser,
    state::{self, StateError},
};

/// Resolves the users of `config`. Returns them and whether a default secret was just created.
pub fn resolve(config: &Config) -> Result<(Vec<RelayUser>, bool), StateError> {
    if !config.users.is_empty() {
        let users = config
            .users
            .iter()
            .map(|u| RelayUser {
                name: u.name.clone(),
                secret: u.secret.clone(),
            })
            .collect();
        return Ok((users, false));
    }
    let (secret, created) = state::default_secret(&config.state.dir)?;
    Ok((
        vec![RelayUser {
            name: "default".to_owned(),
            secret,
        }],
        created,
    ))
}
