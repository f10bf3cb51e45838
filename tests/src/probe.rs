//! Client-side probes: open a TCP connection from a chosen source and classify what happens.

use std::{
    io::{ErrorKind, Read as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

/// What became of a connection attempt.
#[derive(Debug)]
pub enum Outcome {
    /// Connected, and the server kept the connection open.
    Held(TcpStream),
    /// No answer to the SYN within the timeout: dropped before the kernel saw it.
    NoAnswer,
    /// Connected, then closed or reset by the server at once (userspace refusal), or refused.
    Refused(String),
}

impl Outcome {
    /// Whether the connection is open.
    pub fn is_held(&self) -> bool {
        matches!(self, Outcome::Held(_))
    }
}

/// Connects from `source` to `target` and watches it for `hold_check`.
pub fn connect_from(
    source: IpAddr,
    target: SocketAddr,
    connect_timeout: Duration,
    hold_check: Duration,
) -> Outcome {
    let socket = crate::util::bound_socket(source).unwrap_or_else(|e| panic!("bind {source}: {e}"));
    match socket.connect_timeout(&target.into(), connect_timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            return Outcome::NoAnswer;
        }
        Err(e) => return Outcome::Refused(format!("connect: {e}")),
    }
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(hold_check))
        .expect("read timeout");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => Outcome::Refused("closed by server".to_owned()),
        Ok(n) => Outcome::Refused(format!("server sent {n} unexpected bytes")),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            Outcome::Held(stream)
        }
        Err(e) => Outcome::Refused(format!("read: {e}")),
    }
}

/// Sends a probe on `stream`: 64 bytes no secret decrypts (a bad obfuscated2 header), then
/// waits up to 5 s for the relay's answer or close, so the failure has been counted.
pub fn send_bad_header(stream: &mut TcpStream) {
    use std::io::Write as _;
    stream.write_all(&[0x5a; 64]).expect("send probe");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let _ = stream.read(&mut buf);
}
