use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Origin::File(PathBuf::from("relay.toml")))
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
fn cidrs_and_addresses_are_normalised() {
    let config = parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[blocklist]\ncidrs = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::1/32\"]\n",
    )
    .expect("valid");
    let got: Vec<String> = config.blocklist.cidrs.iter().map(Cidr::to_string).collect();
    assert_eq!(got, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
}

fn expect_invalid(text: &str, want_line: usize, want_in_message: &str) {
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
fn unknown_key_is_rejected_with_its_line() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\nlisen = 3\n",
        3,
        "unknown field",
    );
}

#[test]
fn bad_cidr_names_line_and_value() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[blocklist]\ncidrs = [\"10.0.0.0/33\"]\n",
        5,
        "10.0.0.0/33",
    );
}

#[test]
fn bad_listen_address() {
    expect_invalid("[server]\nlisten = [\"localhost\"]\n", 2, "socket address");
}

#[test]
fn empty_listen_is_rejected() {
    expect_invalid("[server]\nlisten = []\n", 2, "at least one");
}

#[test]
fn zero_burst_is_rejected() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nsyn_burst = 0\n",
        4,
        "nonzero",
    );
}

#[test]
fn every_xdp_mode_parses() {
    for (text, mode) in [
        ("auto", XdpMode::Auto),
        ("native", XdpMode::Native),
        ("tc", XdpMode::Tc),
        ("generic", XdpMode::Generic),
        ("off", XdpMode::Off),
    ] {
        let config = parse(&format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[xdp]\nmode = \"{text}\"\n"
        ))
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(config.xdp.mode, mode, "{text}");
    }
}

#[test]
fn unknown_mode_is_rejected() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[xdp]\nmode = \"turbo\"\n",
        4,
        "turbo",
    );
}

#[test]
fn huge_rate_is_rejected_with_its_line() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nsyn_rate_per_sec = 4000000000\n",
        4,
        "at most",
    );
}

#[test]
fn auto_mixed_with_names_is_rejected() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[xdp]\ninterfaces = [\"auto\", \"eth0\"]\n",
        4,
        "auto",
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
fn user_limits_parse() {
    let config = parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"alice\"\nsecret = \"00112233445566778899aabbccddeeff\"\nmax_connections = 4\nmax_unique_ips = 2\nquota = \"1GiB\"\nexpires = \"2030-01-01T00:00:00Z\"\n[[users]]\nname = \"bob\"\nsecret = \"ffeeddccbbaa99887766554433221100\"\nquota = 1000\nenabled = false\n",
    )
    .expect("valid");
    let alice = config.users[0].limits();
    assert_eq!(alice.max_connections, Some(4));
    assert_eq!(alice.quota, Some(1 << 30));
    assert!(alice.expires.is_some());
    let bob = config.users[1].limits();
    assert_eq!(bob.quota, Some(1000));
    assert!(bob.disabled);
}

#[test]
fn bad_quota_and_expiry_are_reported_with_lines() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\nquota = \"lots\"\n",
        6,
        "lots",
    );
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\nexpires = \"next week\"\n",
        6,
        "RFC 3339",
    );
}

#[test]
fn duplicate_users_are_rejected() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\n[[users]]\nname = \"a\"\nsecret = \"ffeeddccbbaa99887766554433221100\"\n",
        4,
        "twice",
    );
}

#[test]
fn the_documented_example_parses() {
    let text = include_str!("../../../contrib/relay.example.toml");
    let config = Config::parse(text, Origin::Embedded).expect("contrib/relay.example.toml");
    assert_eq!(config.users.len(), 2);
    assert_eq!(config.users[1].limits().quota, Some(50 << 30));
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

#[test]
fn world_readable_secrets_are_flagged() {
    use std::os::unix::fs::PermissionsExt as _;
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

const CS_BASE: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n[crowdsec]\n";

#[test]
fn crowdsec_is_off_unless_configured_and_has_defaults() {
    assert_eq!(
        parse("[server]\nlisten = [\"127.0.0.1:1\"]\n")
            .expect("valid")
            .crowdsec,
        None
    );
    let config = parse(&format!(
        "{CS_BASE}lapi_url = \"http://127.0.0.1:8080\"\nbouncer_key = \"k\"\n"
    ))
    .expect("valid");
    let cs = config.crowdsec.expect("crowdsec");
    assert_eq!(cs.poll_interval, std::time::Duration::from_secs(10));
    assert_eq!(cs.resync, std::time::Duration::from_secs(3600));
    assert_eq!(cs.machine_id, None);
    assert_eq!((cs.max_range_v4, cs.max_range_v6), (8, 32));
    assert_eq!((cs.max_decisions, cs.max_body_bytes), (500_000, 128 << 20));
    assert!(!cs.allow_insecure);
    assert!(
        !format!("{cs:?}").contains("\"k\""),
        "the key is not in Debug output"
    );
    let cs = parse(&format!(
        "{CS_BASE}lapi_url = \"https://lapi.example.org\"\nbouncer_key_file = \"/etc/relay/key\"\n\
         poll_interval = \"1s\"\nresync = 600\nmachine_id = \"relay-1\"\npassword_file = \"/p\"\n\
         ca_file = \"/etc/relay/ca.pem\"\norigins = [\"crowdsec\", \"lists:firehol\"]\n"
    ))
    .expect("valid")
    .crowdsec
    .expect("crowdsec");
    assert_eq!(cs.poll_interval, std::time::Duration::from_secs(1));
    assert_eq!(cs.resync, std::time::Duration::from_secs(600));
}

#[test]
fn crowdsec_mistakes_are_named() {
    let url = "lapi_url = \"http://127.0.0.1:8080\"\n";
    for (body, line, message) in [
        (
            "lapi_url = \"127.0.0.1:8080\"\nbouncer_key = \"k\"\n",
            4,
            "http://",
        ),
        (url, 4, "exactly one of bouncer_key"),
        (
            &format!("{url}bouncer_key = \"k\"\nbouncer_key_file = \"/k\"\n") as &str,
            5,
            "exactly one",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nmachine_id = \"m\"\n"),
            6,
            "go together",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\npassword = \"p\"\n"),
            4,
            "go together",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\npoll_interval = \"10 parsecs\"\n"),
            6,
            "duration",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\npoll_interval = \"10s\"\nresync = \"5s\"\n"),
            7,
            "resync",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nca_file = \"/ca\"\n"),
            6,
            "https",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\norigins = [\"a b\"]\n"),
            6,
            "origins",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nkey = 1\n"),
            6,
            "unknown field",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nmax_range_v4 = 33\n"),
            6,
            "max_range_v4",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nmax_range_v6 = 129\n"),
            6,
            "max_range_v6",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nmax_decisions = 0\n"),
            6,
            "max_decisions",
        ),
        (
            &format!("{url}bouncer_key = \"k\"\nmax_body_bytes = 100\n"),
            6,
            "max_body_bytes",
        ),
    ] {
        expect_invalid(&format!("{CS_BASE}{body}"), line, message);
    }
}

#[test]
fn plain_http_to_a_lapi_off_loopback_needs_allow_insecure() {
    for remote in [
        "http://10.0.0.5:8080",
        "http://lapi.example.org",
        "http://[2001:db8::1]:8080",
    ] {
        expect_invalid(
            &format!("{CS_BASE}lapi_url = \"{remote}\"\nbouncer_key = \"k\"\n"),
            4,
            "allow_insecure",
        );
        parse(&format!(
            "{CS_BASE}lapi_url = \"{remote}\"\nbouncer_key = \"k\"\nallow_insecure = true\n"
        ))
        .expect("allowed explicitly");
    }
    for local in [
        "http://127.0.0.1:8080",
        "http://127.0.0.53:8080",
        "http://[::1]:8080",
        "http://localhost:8080",
        "https://10.0.0.5:8080",
    ] {
        parse(&format!(
            "{CS_BASE}lapi_url = \"{local}\"\nbouncer_key = \"k\"\n"
        ))
        .expect(local);
    }
}

#[test]
fn an_inline_crowdsec_key_is_a_secret_too() {
    use std::os::unix::fs::PermissionsExt as _;
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

#[test]
fn mask_grace_must_fit_inside_the_handshake_deadline() {
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[timeouts]\nhandshake_secs = 1\nmask_grace_ms = 1000\n",
        5,
        "mask_grace_ms",
    );
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[timeouts]\nmask_grace_ms = 0\n",
        4,
        "mask_grace_ms",
    );
}

#[test]
fn replay_memory_and_uptime_clock_settings() {
    let config = parse("[server]\nlisten = [\"127.0.0.1:1\"]\n").expect("valid");
    assert!(
        config.tls.accept_uptime_clock,
        "accepted by default, as before"
    );
    let limits = config.replay.limits();
    assert_eq!(
        (
            limits.retention_secs,
            limits.handshakes,
            limits.memory_bytes
        ),
        (86_400, 1_000_000, 32 << 20)
    );
    let config = parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\naccept_uptime_clock = false\n\
         [replay]\nmemory_bytes = 8388608\n",
    )
    .expect("an old config's memory_bytes still fits a million handshakes");
    assert!(!config.tls.accept_uptime_clock);
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[replay]\nmemory_bytes = 65536\n",
        4,
        "cannot hold 1000000 handshakes",
    );
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ntime_skew_secs = 600\n[replay]\nretention_secs = 900\n",
        6,
        "at least 2 × [tls] time_skew_secs = 1200",
    );
}

#[test]
fn misuse_ban_action_defaults_to_front_for_probes_only() {
    use relay_common::{BanAction, BanReason};
    let config = parse("[server]\nlisten = [\"127.0.0.1:1\"]\n").expect("valid");
    assert_eq!(config.misuse.action, ProbeBanAction::Front);
    assert_eq!(
        config.misuse.action_for(BanReason::BadSecret),
        BanAction::Front
    );
    assert_eq!(
        config.misuse.action_for(BanReason::ConnRate),
        BanAction::Drop
    );
    let config = parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\naction = \"drop\"\nbanned_syn_rate_per_sec = 1\nbanned_syn_burst = 3\n",
    )
    .expect("valid");
    assert_eq!(config.misuse.action_for(BanReason::Replay), BanAction::Drop);
    assert_eq!(config.misuse.banned_syn_burst.get(), 3);
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\naction = \"reset\"\n",
        4,
        "unknown variant",
    );
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nbanned_syn_burst = 0\n",
        4,
        "nonzero",
    );
}

#[test]
fn prefix_thresholds_default_well_above_a_sources_and_can_be_set() {
    let config = parse("[server]\nlisten = [\"127.0.0.1:1\"]\n").expect("valid");
    let levels = config.misuse.thresholds();
    assert!(levels.prefix.bad_secret >= 10 * levels.source.bad_secret);
    assert!(levels.prefix.replay >= 10 * levels.source.replay);
    assert_eq!(
        levels.prefix.connections, 0,
        "off: a CGNAT /24 carries many users"
    );
    let config = parse(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nprefix_bad_secret = 40\nprefix_connections = 50000\n",
    )
    .expect("valid");
    let levels = config.misuse.thresholds();
    assert_eq!(levels.prefix.bad_secret, 40);
    assert_eq!(levels.prefix.connections, 50_000);
    expect_invalid(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nprefix_bad_secrets = 40\n",
        4,
        "unknown field",
    );
}

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

#[test]
fn connection_rate_parses_with_an_optional_burst() {
    const USER: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\n";
    let off = parse(USER).expect("valid").users[0].limits();
    assert_eq!(off.connection_rate, None, "off by default");
    let rate = parse(&format!(
        "{USER}connection_rate = \"20/s\"\nconnection_burst = 40\n"
    ))
    .expect("valid")
    .users[0]
        .limits()
        .connection_rate
        .expect("rate");
    assert_eq!(
        (rate.rate.to_string(), rate.burst()),
        ("20/s".to_owned(), 40)
    );
    let default_burst = parse(&format!("{USER}connection_rate = \"5/m\"\n"))
        .expect("valid")
        .users[0]
        .limits()
        .connection_rate
        .expect("rate");
    assert_eq!(default_burst.burst(), 5);
    expect_invalid(&format!("{USER}connection_rate = \"fast\"\n"), 6, "fast");
    expect_invalid(
        &format!("{USER}connection_burst = 3\n"),
        6,
        "needs connection_rate",
    );
}
