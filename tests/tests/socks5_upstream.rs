//! `[upstream] socks5`: relay reaches the DC through a SOCKS5 proxy.
//!
//! A small SOCKS5 server (std threads, CONNECT only, no-auth or RFC 1929 username/password,
//! told to refuse with a given reply code) sits between relay-ctl and the fake DC and records
//! every CONNECT target. Telethon echoes must come back byte for byte with and without
//! authentication; a wrong password and a refused CONNECT must each close the client with a
//! log line naming the SOCKS step, and leave the process serving.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use relay_proto::Secret;
use relay_tests::{
    fake_dc::FakeDc,
    mtproto_client::{ClientOptions, MtprotoClient, Transport as RawTransport},
    pyclient::{self, Echo, Transport},
    relay::{Relay, relay_ctl_bin},
};

/// Telethon needs multiples of 4.
const SIZES: [usize; 3] = [16, 1024, 65_536];
const USER: &str = "relay";
const PASSWORD: &str = "correct horse";

/// How the SOCKS5 server behaves.
#[derive(Clone)]
struct Behaviour {
    /// Required credentials; `None`: no authentication.
    credentials: Option<(String, String)>,
    /// Reply code for every CONNECT (0: connect and relay).
    reply: u8,
}

/// A SOCKS5 server on loopback; records the CONNECT targets it was asked for.
struct SocksServer {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
}

impl SocksServer {
    fn start(behaviour: Behaviour) -> SocksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("socks bind");
        let server = SocksServer {
            addr: listener.local_addr().expect("socks addr"),
            targets: Arc::default(),
        };
        let targets = server.targets.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (behaviour, targets) = (behaviour.clone(), targets.clone());
                thread::spawn(move || {
                    // A session ends with an error whenever either side hangs up.
                    let _ = serve(stream, &behaviour, &targets);
                });
            }
        });
        server
    }

    fn targets(&self) -> Vec<SocketAddr> {
        self.targets.lock().expect("targets").clone()
    }
}

fn read_vec(stream: &mut TcpStream, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn serve(
    mut client: TcpStream,
    behaviour: &Behaviour,
    targets: &Mutex<Vec<SocketAddr>>,
) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_vec(&mut client, 2)?;
    assert_eq!(head[0], 5, "greeting version");
    let methods = read_vec(&mut client, usize::from(head[1]))?;
    let want = if behaviour.credentials.is_some() {
        2
    } else {
        0
    };
    if !methods.contains(&want) {
        client.write_all(&[5, 0xff])?;
        return Ok(());
    }
    client.write_all(&[5, want])?;
    if let Some((user, password)) = &behaviour.credentials {
        let head = read_vec(&mut client, 2)?;
        assert_eq!(head[0], 1, "RFC 1929 version");
        let got_user = read_vec(&mut client, usize::from(head[1]))?;
        let plen = read_vec(&mut client, 1)?;
        let got_password = read_vec(&mut client, usize::from(plen[0]))?;
        if got_user != user.as_bytes() || got_password != password.as_bytes() {
            client.write_all(&[1, 1])?;
            return Ok(());
        }
        client.write_all(&[1, 0])?;
    }
    let head = read_vec(&mut client, 4)?;
    assert_eq!(&head[..3], &[5, 1, 0], "CONNECT request");
    let ip: IpAddr = match head[3] {
        1 => {
            let o: [u8; 4] = read_vec(&mut client, 4)?.try_into().expect("4 bytes");
            Ipv4Addr::from(o).into()
        }
        4 => {
            let o: [u8; 16] = read_vec(&mut client, 16)?.try_into().expect("16 bytes");
            Ipv6Addr::from(o).into()
        }
        other => panic!("address type {other}"),
    };
    let port = read_vec(&mut client, 2)?;
    let target = SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]));
    targets.lock().expect("targets").push(target);
    if behaviour.reply != 0 {
        client.write_all(&[5, behaviour.reply, 0, 1, 0, 0, 0, 0, 0, 0])?;
        return Ok(());
    }
    let upstream = TcpStream::connect(target)?;
    // Bound address: a domain name, so the client must skip a variable-length field.
    client.write_all(b"\x05\x00\x00\x03\x09localhost\x04\x38")?;
    client.set_read_timeout(None)?;
    let (mut c2, mut u2) = (client.try_clone()?, upstream.try_clone()?);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(Shutdown::Write);
    });
    let (mut c, mut u) = (client, upstream);
    let _ = io::copy(&mut u, &mut c);
    let _ = c.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

fn new_secret() -> String {
    let out = Command::new(relay_ctl_bin())
        .args(["secret", "new"])
        .output()
        .expect("run relay-ctl secret new");
    assert!(out.status.success(), "relay-ctl secret new: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

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
