//! Whether the configuration file gives its secrets away through its permission bits.

use std::path::Path;

use super::Config;

/// A warning when `path` holds user secrets and other users on the host can read it (mode bits
/// `o+r`), or `None`.
pub fn secrets_exposure(path: &Path, config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let crowdsec_inline = config
        .crowdsec
        .as_ref()
        .is_some_and(|c| c.bouncer_key.is_some() || c.password.is_some());
    if config.users.is_empty() && !crowdsec_inline {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{} holds secrets (user secrets or [crowdsec] keys) and is readable by every user \
             on this host (mode {:o}): chmod o-r it (e.g. root:relay 0640)",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::secrets_exposure;
    use crate::config::{Config, tests::CS_BASE};

    #[test]
    fn world_readable_secrets_are_flagged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\n",
        )
        .expect("write");
        let config = Config::load(&path).expect("valid");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let warning = secrets_exposure(&path, &config).expect("0644 is flagged");
        assert!(
            warning.contains("644") && warning.contains("relay.toml"),
            "{warning}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(secrets_exposure(&path, &config), None);
        // No users in the file: no secrets in it either.
        let embedded = Config::embedded().expect("embedded");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(secrets_exposure(&path, &embedded), None);
    }

    #[test]
    fn an_inline_crowdsec_key_is_a_secret_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            format!("{CS_BASE}lapi_url = \"http://127.0.0.1:8080\"\nbouncer_key = \"k\"\n"),
        )
        .expect("write");
        let config = Config::load(&path).expect("valid");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(secrets_exposure(&path, &config).is_some());
    }
}
