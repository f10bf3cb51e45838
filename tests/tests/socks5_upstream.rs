//! `[upstream] socks5`: relay reaches the DC through a SOCKS5 proxy.
//!
//! A small SOCKS5 server ([`relay_tests::socks5`]) sits between relay-ctl and the fake DC and
//! records every CONNECT target. Telethon echoes must come back byte for byte with and without
//! authentication; a wrong password and a refused CONNECT must each close the client with a
//! log line naming the SOCKS step, and leave the process serving.

use std::{io, net::SocketAddr, path::Path, time::Duration};

use relay_proto::Secret;
use relay_tests::{
    fake_dc::FakeDc,
    mtproto_client::{ClientOptions, MtprotoClient, Transport as RawTransport},
    pyclient::{self, Echo, Transport},
    relay::{Relay, new_secret},
    socks5::{Behaviour, SocksServer},
};

/// Telethon needs multiples of 4.
const SIZES: [usize; 3] = [16, 1024, 65_536];
const USER: &str = "relay";
const PASSWORD: &str = "correct horse";

/// A relay whose DC 2 is `dc`, reached through `socks` (with `auth` = username and password
/// file if given).
fn start_relay(
    dc: SocketAddr,
    socks: SocketAddr,
    auth: Option<(&str, &Path)>,
    state: &Path,
    secret: &str,
) -> (Relay, u16) {
    let auth = auth.map_or_else(String::new, |(user, file)| {
        format!(
            "socks5_username = \"{user}\"\nsocks5_password_file = \"{}\"\n",
            file.display()
        )
    });
    Relay::start_local_on_free_port(|port| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["classic"]

[xdp]
mode = "off"

[tls]
fronting = false

[upstream]
default_dc = 2
connect_timeout_secs = 5
socks5 = "{socks}"
{auth}
[upstream.dc]
"2" = ["{dc}"]

[state]
dir = "{state}"

[[users]]
name = "alice"
secret = "{secret}"
"#,
            state = state.display()
        )
    })
}

/// Telethon echoes through relay→SOCKS5→fake DC; the SOCKS server saw the DC's address.
fn echo_through(test: &str, credentials: Option<(String, String)>, file_text: &str) {
    let Some(python) = pyclient::python(test) else {
        return;
    };
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let socks = SocksServer::start(Behaviour {
        credentials: credentials.clone(),
        reply: 0,
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("socks5.pass");
    std::fs::write(&file, file_text).expect("password file");
    let secret = new_secret();
    let state = dir.path().join("state");
    let (relay, port) = start_relay(
        dc.addr,
        socks.addr,
        credentials
            .as_ref()
            .map(|(u, _)| (u.as_str(), file.as_path())),
        &state,
        &secret,
    );
    let run = Echo::local(port, secret, 2, &SIZES).telethon(&python, Transport::Intermediate);
    assert!(run.ok(), "{}\n{}", run.describe(), relay.log());
    assert_eq!(run.echoed(), SIZES, "{}", run.describe());
    assert_eq!(socks.targets(), [dc.addr], "{}", relay.log());
    let sessions = dc.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].dc, 2);
    assert!(!sessions[0].forbidden_prefix);
    relay.stop();
}

#[test]
fn telethon_echoes_through_socks5_without_auth() {
    echo_through("telethon_echoes_through_socks5_without_auth", None, "");
}

#[test]
fn telethon_echoes_through_socks5_with_username_and_password() {
    echo_through(
        "telethon_echoes_through_socks5_with_username_and_password",
        Some((USER.to_owned(), PASSWORD.to_owned())),
        &format!("{PASSWORD}\n"),
    );
}

/// A client whose DC leg fails through the proxy: the relay logs `needle` and closes it, then
/// keeps serving.
fn failure_closes_client(behaviour: Behaviour, file_text: &str, needle: &str) {
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let needle = needle.replace("{dc}", &dc.addr.to_string());
    let socks = SocksServer::start(behaviour.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("socks5.pass");
    std::fs::write(&file, file_text).expect("password file");
    let secret = new_secret();
    let (mut relay, port) = start_relay(
        dc.addr,
        socks.addr,
        behaviour
            .credentials
            .as_ref()
            .map(|_| (USER, file.as_path())),
        &dir.path().join("state"),
        &secret,
    );
    let options = ClientOptions::new(
        Secret::from_hex(&secret).expect("secret"),
        RawTransport::Intermediate,
    );
    let relay_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..2 {
        let mut client =
            MtprotoClient::connect_with(relay_addr, &options, &[0; 16]).expect("handshake");
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        // The relay closes the client: EOF (or a reset), never a timeout.
        match client.recv_to_end() {
            Ok(bytes) => assert!(bytes.is_empty(), "got {} bytes", bytes.len()),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "client not closed: {e}"
            ),
        }
    }
    let line = relay.wait_for("DC connection failed", Duration::from_secs(10));
    assert!(line.contains(&needle), "{line}");
    assert!(
        line.contains(&format!("SOCKS5 proxy {} ", socks.addr)),
        "{line}"
    );
    assert!(dc.sessions().is_empty(), "the DC was reached");
    assert!(!relay.exited(), "relay-ctl exited:\n{}", relay.log());
    relay.stop();
}

#[test]
fn a_wrong_socks5_password_closes_the_client_with_a_clear_log_line() {
    failure_closes_client(
        Behaviour {
            credentials: Some((USER.to_owned(), PASSWORD.to_owned())),
            reply: 0,
        },
        "wrong\n",
        "refused the username/password (status 1)",
    );
}

#[test]
fn a_refused_socks5_connect_closes_the_client_with_a_clear_log_line() {
    failure_closes_client(
        Behaviour {
            credentials: None,
            reply: 5,
        },
        "",
        "refused CONNECT to {dc}: connection refused by destination (code 5)",
    );
}
