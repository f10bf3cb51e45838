//! Tests of the file as a whole, and the helpers every section's tests use.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, Limits, Origin, XdpMode};

/// The start of a configuration with a `[crowdsec]` section, for its keys to follow.
pub(super) const CS_BASE: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n[crowdsec]\n";

/// Parses `text` as the file `relay.toml`.
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Origin::File(PathBuf::from("relay.toml")))
}

/// Asserts that `text` is refused with a message containing `want_in_message` at `want_line`.
pub(super) fn expect_invalid(text: &str, want_line: usize, want_in_message: &str) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line,
            message,
            origin,
            ..
        }) => {
            assert_eq!(line, want_line, "line for {message:?}");
            assert!(
                message.contains(want_in_message),
                "{message:?} should mention {want_in_message:?}"
            );
            assert_eq!(origin, Origin::File(PathBuf::from("relay.toml")));
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn embedded_default_parses() {
    let config = Config::embedded().expect("embedded default");
    assert_eq!(config.listen_ports(), vec![443]);
    assert_eq!(config.xdp.mode, XdpMode::Auto);
    assert!(
        config.limits.syn_burst.get() >= 24,
        "must admit a client's fan-out"
    );
}

#[test]
fn minimal_file_gets_defaults() {
    let config = parse("[server]\nlisten = [\"127.0.0.1:8443\"]\n").expect("valid");
    assert_eq!(config.xdp.interfaces, vec!["auto"]);
    assert_eq!(config.limits, Limits::default());
    assert!(config.blocklist.cidrs.is_empty());
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n",
        3,
        "unknown field",
    );
}

#[test]
fn broken_toml_is_reported() {
    expect_invalid("[server\nlisten = 1\n", 1, "");
}

#[test]
fn missing_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/relay.toml")).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent/relay.toml"), "{err}");
}

#[test]
fn the_documented_example_parses() {
    let text = include_str!("../../../contrib/relay.example.toml");
    let config = Config::parse(text, Origin::Embedded).expect("contrib/relay.example.toml");
    assert_eq!(config.users.len(), 2);
    assert_eq!(config.users[1].quota, Some(50 << 30));
    assert_eq!(config.admin.mode, 0o600);
    assert_eq!(config.metrics, crate::config::Metrics::default());
    assert_eq!(config.log, crate::config::Log::default());
}

#[test]
fn metrics_and_log_defaults_are_private() {
    let config = Config::parse("[server]\nlisten = [\"0.0.0.0:443\"]\n", Origin::Embedded)
        .expect("minimal config");
    assert!(config.metrics.enabled);
    assert!(config.metrics.listen.ip().is_loopback());
    assert_eq!(config.metrics.listen.port(), 9810);
    assert_eq!(config.log.format, crate::config::LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.log.client_ips, crate::privacy::ClientIps::Truncated);
    let config = Config::parse(
        "[server]\nlisten = [\"0.0.0.0:443\"]\n[metrics]\nenabled = false\nlisten = \"[::1]:9000\"\n[log]\nformat = \"json\"\nlevel = \"warn,relay_ctl=debug\"\nclient_ips = \"none\"\n",
        Origin::Embedded,
    )
    .expect("metrics and log");
    assert!(!config.metrics.enabled);
    assert_eq!(config.metrics.listen, "[::1]:9000".parse().expect("addr"));
    assert_eq!(config.log.format, crate::config::LogFormat::Json);
    assert_eq!(config.log.client_ips, crate::privacy::ClientIps::None);
}
