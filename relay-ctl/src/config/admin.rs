//! `[admin]`: the Unix socket the CLI talks to.

use std::path::PathBuf;

use serde::Deserialize;

use super::{SectionError, serde_helpers::octal_mode};

/// `[admin]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// Permission bits of the socket, as an octal string (`"0600"`).
    #[serde(deserialize_with = "octal_mode")]
    pub mode: u32,
    /// Group owning the socket (then `mode` typically `"0660"`), if any. Its members (and
    /// root, and the relay's own user) may send every request.
    pub group: Option<String>,
    /// Group whose members may only read (list, show, stats). When set, the socket belongs to
    /// this group (`mode` must grant the group read and write, e.g. `"0660"`), so members of
    /// `group` must also be members of `read_group` to reach it; the role of each caller is
    /// decided from its credentials (`SO_PEERCRED`), and callers in neither group are refused.
    pub read_group: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: PathBuf::from("/run/relay/admin.sock"),
            mode: 0o600,
            group: None,
            read_group: None,
        }
    }
}

impl Admin {
    /// Checks that a `read_group` can reach the socket through its group bits.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        if self.read_group.is_some() && self.mode & 0o060 != 0o060 {
            return Err(SectionError::new(
                "read_group",
                format!(
                    "[admin] read_group needs a socket its group can use: mode = \"0660\" \
                     (now \"{:04o}\")",
                    self.mode
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{expect_invalid, parse};

    #[test]
    fn read_group_needs_a_group_usable_socket() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[admin]\nread_group = \"relay-view\"\n",
            4,
            "read_group needs a socket its group can use: mode = \"0660\" (now \"0600\")",
        );
        let config = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[admin]\nmode = \"0660\"\ngroup = \"relay-admin\"\n\
             read_group = \"relay-view\"\n",
        )
        .expect("valid");
        assert_eq!(config.admin.read_group.as_deref(), Some("relay-view"));
        assert_eq!(config.admin.group.as_deref(), Some("relay-admin"));
    }
}
