//! What the configuration lets a censor see.

use relay_proto::Mode;

use super::Config;

/// What the configuration lets a censor see, one line per setting, for `config check` and the
/// start-up log: enabled obfuscated2 modes and fronting turned off.
pub fn exposure(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let modes = config.server.modes;
    if modes.contains(Mode::Classic) {
        lines.push(
            "mode \"classic\" is enabled: plain obfuscated2 has fixed packet sizes a censor can \
             match on the wire, and its header is random bytes, so relay cannot tell a client \
             from a probe before 64 bytes arrive (see \"secure\")"
                .to_owned(),
        );
    }
    if modes.contains(Mode::Secure) || modes.contains(Mode::Classic) {
        lines.push(format!(
            "obfuscated2 modes are enabled: random bytes are a possible client header, so a \
             probe of fewer than 64 random bytes reaches the mask site up to \
             [timeouts] mask_grace_ms ({} ms) later than the site itself would see it, and the \
             stream has no TLS cover; \"tls\" alone avoids both",
            config.timeouts.mask_grace_ms
        ));
    }
    if !config.tls.fronting {
        lines.push(
            "[tls] fronting is off: failed handshakes and probes are closed instead of handed \
             to the mask site, which tells a censor this is not that site"
                .to_owned(),
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use relay_proto::{Mode, ModeSet};

    use super::exposure;
    use crate::config::{Config, tests::parse};

    #[test]
    fn default_modes_are_tls_only_and_expose_nothing() {
        let config = Config::embedded().expect("embedded default");
        assert_eq!(config.server.modes, ModeSet::EMPTY.with(Mode::Tls));
        assert!(exposure(&config).is_empty(), "{:?}", exposure(&config));
        assert_eq!(config.timeouts.mask_grace_ms, 250);
    }

    #[test]
    fn obfuscated2_modes_and_fronting_off_are_named_as_exposures() {
        let secure = parse("[server]\nlisten = [\"127.0.0.1:1\"]\nmodes = [\"secure\", \"tls\"]\n")
            .expect("valid");
        let lines = exposure(&secure);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("64 random bytes") && lines[0].contains("250 ms"),
            "{lines:?}"
        );
        let classic = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nmodes = [\"classic\"]\n[tls]\nfronting = false\n",
        )
        .expect("valid");
        let lines = exposure(&classic);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("fixed packet sizes")));
        assert!(lines.iter().any(|l| l.contains("fronting is off")));
    }
}
