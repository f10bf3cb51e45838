//! The anti-replay memory outlives the relay: handshakes captured before a restart and replayed
//! after it (with the same `[state] dir`) are fronted, never relayed. relay-ctl on loopback
//! (`[xdp] mode = "off"`), a recording mask server, the echoing fake DC, the Rust MTProto
//! client behind a recording forwarder (the censor's capture). Every wait is bounded.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use relay_proto::Secret;
use relay_tests::{
    fake_dc::FakeDc,
    mask::{MaskServer, Recorder},
    mtproto_client::{ClientOptions, MtprotoClient, Transport},
    relay::Relay,
};

const DOMAIN: &str = "example.com";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

fn config(port: u16, dc: SocketAddr, mask: SocketAddr, state: &Path) -> String {
    config_with(port, dc, mask, state, true)
}

fn config_with(
    port: u16,
    dc: SocketAddr,
    mask: SocketAddr,
    state: &Path,
    accept_uptime_clock: bool,
) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["secure", "tls"]

[xdp]
mode = "off"

[limits]
syn_limit = false

[[users]]
name = "alice"
secret = "{SECRET}"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"
accept_uptime_clock = {accept_uptime_clock}

[upstream]
default_dc = 2
connect_timeout_secs = 3

[upstream.dc]
"2" = ["{dc}"]

[timeouts]
handshake_secs = 2

[misuse]
replay = 1000

[state]
dir = {state:?}
"#,
        state = state.display().to_string()
    )
}

/// A genuine client's whole session through `recorder` (connection `index` there): sends,
/// gets its echo, half-closes. Returns every byte it sent, as a censor would capture them.
fn genuine_session(recorder: &Recorder, index: usize, transport: Transport) -> Vec<u8> {
    let secret = Secret::from_hex(SECRET).expect("secret");
    let options = ClientOptions::new(secret, transport);
    let mut client = MtprotoClient::connect(recorder.addr, &options).expect("genuine client");
    let payload = b"a genuine client's first request, 48 bytes long";
    client.send(payload).expect("send");
    let mut echo = vec![0u8; payload.len()];
    client.recv_exact(&mut echo).expect("echo");
    assert_eq!(&echo, payload);
    client.shutdown_write().expect("half-close");
    client.recv_to_end().expect("clean end");
    let captured = recorder
        .wait_closed(index, WAIT)
        .expect("recorder saw the genuine client finish");
    assert!(captured.starts_with(client.handshake_bytes()));
    captured
}

/// Sends `captured` on a new connection and half-closes; returns what came back (bounded).
fn replay(relay: SocketAddr, captured: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&relay, WAIT).expect("connect");
    s.write_all(captured).expect("replay");
    s.shutdown(Shutdown::Write).expect("half-close");
    let deadline = Instant::now() + WAIT;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

#[test]
fn replays_captured_before_a_restart_are_fronted_after_it() {
    let state = tempfile::tempdir().expect("state dir");
    let mask = MaskServer::start(None);
    let dc = FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let start = || {
        let (relay, port) =
            Relay::start_local_on_free_port(|port| config(port, dc.addr, mask.addr, state.path()));
        (relay, SocketAddr::from(([127, 0, 0, 1], port)))
    };

    let (relay, addr) = start();
    let recorder = Recorder::start(addr);
    let dd = genuine_session(&recorder, 0, Transport::Secure);
    let tls = genuine_session(
        &recorder,
        1,
        Transport::FakeTls {
            domain: DOMAIN.to_owned(),
        },
    );
    assert_eq!(
        dc.sessions().len(),
        2,
        "both genuine clients reached the DC"
    );
    // A graceful stop saves the memory; the next relay starts from it.
    let log = relay.stop();
    assert!(
        state
            .path()
            .join("replay")
            .read_dir()
            .expect("replay dir")
            .count()
            > 0,
        "nothing saved in the state dir:\n{log}"
    );

    let (relay, addr) = start();
    for (what, captured) in [("dd header", &dd), ("ClientHello", &tls)] {
        let answer = replay(addr, captured);
        let conns = mask.wait(WAIT, |c| c.iter().any(|c| c.received == *captured));
        assert!(
            conns.iter().any(|c| c.received == *captured),
            "the replayed {what} never reached the mask byte for byte (mask saw {:?} bytes)\nrelay log:\n{}",
            conns.iter().map(|c| c.received.len()).collect::<Vec<_>>(),
            relay.log()
        );
        assert!(
            answer.is_empty(),
            "the replayed {what} got {} bytes the mask never sent (a server flight or DC data?)",
            answer.len()
        );
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        dc.sessions().len(),
        2,
        "a replayed handshake reached the DC after the restart\nrelay log:\n{}",
        relay.log()
    );
}

/// `[tls] accept_uptime_clock`: a hello stamped with an uptime (an hour since boot) is
/// answered when it is on, and fronted like a probe when it is off.
#[test]
fn uptime_clock_hellos_follow_the_switch() {
    let secret = Secret::from_hex(SECRET).expect("secret");
    for accept in [true, false] {
        let state = tempfile::tempdir().expect("state dir");
        let mask = MaskServer::start(None);
        let dc = FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)));
        let (relay, port) = Relay::start_local_on_free_port(|port| {
            config_with(port, dc.addr, mask.addr, state.path(), accept)
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let hello = relay_proto::tls::build_client_hello(&mut rand::rng(), &secret, DOMAIN, 3600);
        let answer = replay(addr, &hello);
        let answered = answer.starts_with(&[0x16, 0x03, 0x03]);
        if accept {
            assert!(
                answered,
                "uptime hello not answered with a server flight ({} bytes back)\n{}",
                answer.len(),
                relay.log()
            );
        } else {
            assert!(!answered, "uptime hello answered although refused");
            let conns = mask.wait(WAIT, |c| c.iter().any(|c| c.received == hello));
            assert!(
                conns.iter().any(|c| c.received == hello),
                "the refused uptime hello never reached the mask\n{}",
                relay.log()
            );
        }
    }
}
