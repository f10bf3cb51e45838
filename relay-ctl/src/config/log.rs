//! `[log]`: log format, filter and how much of client addresses is shown.

use serde::Deserialize;

use super::SectionError;
use crate::privacy::ClientIps;

/// `[log]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `"text"` (readable, for a terminal or journald) or `"json"` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter such as `"info"` or `"warn,relay_ctl=debug"`; `RUST_LOG` overrides it.
    pub level: String,
    /// How much of a client's address log lines show: `"none"`, `"truncated"` (/24, /48) or
    /// `"full"`. Ban entries always show the banned address.
    pub client_ips: ClientIps,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".to_owned(),
            client_ips: ClientIps::Truncated,
        }
    }
}

impl Log {
    /// Checks that `level` is a filter `tracing` accepts.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            return Err(SectionError::new(
                "level",
                format!(
                    "[log] level `{}` is not a filter like \"info\" or \"warn,relay_ctl=debug\": {e}",
                    self.level
                ),
            ));
        }
        Ok(())
    }
}

/// See [`Log::format`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON objects, one per line.
    Json,
}

#[cfg(test)]
mod tests {
    use crate::config::tests::expect_invalid;

    #[test]
    fn bad_log_settings_are_rejected() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[log]\nclient_ips = \"partial\"\n",
            4,
            "unknown variant",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[log]\nlevel = \"info,relay_ctl=loud\"\n",
            4,
            "[log] level",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[metrics]\nlisten = \"localhost\"\n",
            4,
            "",
        );
    }
}
