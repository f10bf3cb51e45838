//! Stand-ins for the site behind `[tls] mask`, and a recording TCP forwarder.
//!
//! [`MaskServer`] records every byte each connection sends it and, when given an HTTP
//! response, answers a complete request with it and closes (as a `Connection: close` web
//! server does). [`Recorder`] sits between a client and a server, forwards both ways and keeps
//! what the client sent: a censor's capture, ready to be replayed.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

/// What one connection did at the mask server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskConn {
    /// Every byte received, in order.
    pub received: Vec<u8>,
    /// Whether the peer half-closed (or the connection ended).
    pub closed: bool,
}

#[derive(Default)]
struct Shared {
    conns: Mutex<Vec<MaskConn>>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, index: usize, f: impl FnOnce(&mut MaskConn)) {
        let mut conns = self.conns.lock().expect("mask lock");
        f(&mut conns[index]);
        self.changed.notify_all();
    }
}

/// A recording TCP server on loopback; runs until the process ends.
#[derive(Clone)]
pub struct MaskServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// How long a mask connection may stay silent before the server gives up on it.
const MASK_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl MaskServer {
    /// Listens on a free loopback port. With `http_response`, a connection that has sent a
    /// complete request head (`\r\n\r\n`) gets exactly those bytes and is then closed.
    pub fn start(http_response: Option<Vec<u8>>) -> MaskServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("mask bind");
        let mask = MaskServer {
            addr: listener.local_addr().expect("mask addr"),
            shared: Arc::default(),
        };
        let shared = mask.shared.clone();
        let response = Arc::new(http_response);
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let index = {
                    let mut conns = shared.conns.lock().expect("mask lock");
                    conns.push(MaskConn::default());
                    shared.changed.notify_all();
                    conns.len() - 1
                };
                let shared = shared.clone();
                let response = response.clone();
                thread::spawn(move || serve(stream, index, &shared, response.as_deref()));
            }
        });
        mask
    }

    /// Connections seen so far.
    pub fn conns(&self) -> Vec<MaskConn> {
        self.shared.conns.lock().expect("mask lock").clone()
    }

    /// Waits until `done` holds for the connections seen, or `timeout` passes; returns them
    /// either way (the caller asserts).
    pub fn wait(&self, timeout: Duration, done: impl Fn(&[MaskConn]) -> bool) -> Vec<MaskConn> {
        let deadline = Instant::now() + timeout;
        let mut conns = self.shared.conns.lock().expect("mask lock");
        loop {
            if done(&conns) {
                return conns.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return conns.clone();
            }
            conns = self
                .shared
                .changed
                .wait_timeout(conns, left)
                .expect("mask lock")
                .0;
        }
    }
}

fn serve(mut stream: TcpStream, index: usize, shared: &Shared, response: Option<&[u8]>) {
    let _ = stream.set_read_timeout(Some(MASK_READ_TIMEOUT));
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        shared.update(index, |c| c.received.extend_from_slice(&buf[..n]));
        if let Some(response) = response
            && seen.windows(4).any(|w| w == b"\r\n\r\n")
        {
            let _ = stream.write_all(response);
            let _ = stream.shutdown(Shutdown::Write);
            // Like a web server after `Connection: close`: drain until the peer goes away.
            while let Ok(n @ 1..) = stream.read(&mut buf) {
                shared.update(index, |c| c.received.extend_from_slice(&buf[..n]));
            }
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    shared.update(index, |c| c.closed = true);
}

/// A forwarder on a free loopback port that relays every connection to `target` and records
/// what each client sent.
#[derive(Clone)]
pub struct Recorder {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Recorder {
    /// Starts forwarding to `target`.
    pub fn start(target: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("recorder bind");
        let recorder = Recorder {
            addr: listener.local_addr().expect("recorder addr"),
            shared: Arc::default(),
        };
        let shared = recorder.shared.clone();
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let index = {
                    let mut conns = shared.conns.lock().expect("recorder lock");
                    conns.push(MaskConn::default());
                    conns.len() - 1
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let up_shared = shared.clone();
                thread::spawn(move || copy(client, server, Some((index, &up_shared))));
                thread::spawn(move || copy(server2, client2, None));
            }
        });
        recorder
    }

    /// What each client sent so far, in connection order.
    pub fn captured(&self) -> Vec<MaskConn> {
        self.shared.conns.lock().expect("recorder lock").clone()
    }

    /// Waits until connection `index` has ended its sending side; returns what it sent.
    pub fn wait_closed(&self, index: usize, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut conns = self.shared.conns.lock().expect("recorder lock");
        loop {
            if let Some(c) = conns.get(index)
                && c.closed
            {
                return Some(c.received.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            conns = self
                .shared
                .changed
                .wait_timeout(conns, left)
                .expect("recorder lock")
                .0;
        }
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, record: Option<(usize, &Shared)>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((index, shared)) = record {
            shared.update(index, |c| c.received.extend_from_slice(&buf[..n]));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    if let Some((index, shared)) = record {
        shared.update(index, |c| c.closed = true);
    }
}
