//! A TCP forwarder that splits a client's first segment: what the server behind it sees from a
//! client whose ClientHello or obfuscated2 header arrives in two TCP segments (MSS clamping,
//! DPI-evasion tools, a slow network).
//!
//! Each accepted connection takes the next split point `k` from a queue the test fills. The
//! forwarder reads the client's first burst (until the client pauses, and until it holds more
//! than `k` bytes, bounded in time), writes its first `k` bytes, pauses, then writes the rest; with TCP_NODELAY the two
//! writes leave as separate segments. Everything after that is forwarded as it comes, both
//! ways. Each connection to the target comes from a loopback source address of its own
//! ([`crate::util::loopback_source`]), so the target's per-source limits stay out of the way.

use std::{
    collections::VecDeque,
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How long the forwarder waits for a client's first burst to exceed the split point.
const FIRST_BURST_WAIT: Duration = Duration::from_secs(2);
/// A pause this long ends the first burst.
const BURST_GAP: Duration = Duration::from_millis(20);

/// Where to split a first burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// After this many bytes.
    At(usize),
    /// This many bytes before its end (for clients whose hello length varies).
    BeforeEnd(usize),
}

/// What the forwarder did with one connection's first burst.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRecord {
    /// The split point taken from the queue (`None`: the queue was empty, no split).
    pub split_at: Option<Split>,
    /// The byte it split after (`None`: not split).
    pub split_after: Option<usize>,
    /// Length of the client's first burst.
    pub first_len: usize,
    /// Whether the burst really went out as two writes.
    pub split: bool,
    /// Bytes the target sent back to the client on this connection.
    pub answered: u64,
}

#[derive(Default)]
struct Shared {
    splits: Mutex<VecDeque<Option<Split>>>,
    records: Mutex<Vec<SplitRecord>>,
}

/// A running splitting forwarder; it serves until the process ends.
#[derive(Clone)]
pub struct SplitForwarder {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl SplitForwarder {
    /// Listens on a free loopback port and forwards to `target`, pausing `pause` between the
    /// two halves of a split first burst.
    pub fn start(target: SocketAddr, pause: Duration) -> SplitForwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("forwarder bind");
        let forwarder = SplitForwarder {
            addr: listener.local_addr().expect("forwarder addr"),
            shared: Arc::default(),
        };
        let shared = forwarder.shared.clone();
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let split_at = shared
                    .splits
                    .lock()
                    .expect("splits lock")
                    .pop_front()
                    .flatten();
                let shared = shared.clone();
                thread::spawn(move || {
                    let record = forward(client, target, split_at, pause);
                    shared.records.lock().expect("records lock").push(record);
                });
            }
        });
        forwarder
    }

    /// Queues split points for the next connections, one each in accept order (`None`: do
    /// not split that connection).
    pub fn queue(&self, splits: impl IntoIterator<Item = Option<Split>>) {
        self.shared
            .splits
            .lock()
            .expect("splits lock")
            .extend(splits);
    }

    /// What the forwarder did with each first burst so far, in the order they were sent.
    pub fn records(&self) -> Vec<SplitRecord> {
        self.shared.records.lock().expect("records lock").clone()
    }
}

/// Forwards one connection; returns what became of its first burst.
fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    split_at: Option<Split>,
    pause: Duration,
) -> SplitRecord {
    let mut record = SplitRecord {
        split_at,
        split_after: None,
        first_len: 0,
        split: false,
        answered: 0,
    };
    let Ok(mut server) = crate::util::connect_from_own_source(target, Duration::from_secs(5))
    else {
        return record;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let at_least = match split_at {
        Some(Split::At(k) | Split::BeforeEnd(k)) => k,
        None => 0,
    };
    let first = first_burst(&mut client, at_least);
    record.first_len = first.len();
    let k = match split_at {
        Some(Split::At(k)) => k,
        Some(Split::BeforeEnd(n)) => first.len().saturating_sub(n),
        None => 0,
    };
    let sent = if k > 0 && k < first.len() {
        record.split = true;
        record.split_after = Some(k);
        server.write_all(&first[..k]).is_ok() && {
            thread::sleep(pause);
            server.write_all(&first[k..]).is_ok()
        }
    } else {
        server.write_all(&first).is_ok()
    };
    if !sent || first.is_empty() {
        let _ = server.shutdown(Shutdown::Write);
    }
    let _ = client.set_read_timeout(None);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return record;
    };
    let down = thread::spawn(move || copy(server2, client2));
    if sent && !first.is_empty() {
        copy(client, server);
    }
    record.answered = down.join().unwrap_or(0);
    record
}

/// The client's first burst: everything it sends until it pauses for [`BURST_GAP`] (a
/// client writing its hello in several writes still has it in one burst), extended (for at
/// most [`FIRST_BURST_WAIT`]) until it holds more than `k` bytes. Empty if the client closed
/// first.
fn first_burst(client: &mut TcpStream, k: usize) -> Vec<u8> {
    let deadline = Instant::now() + FIRST_BURST_WAIT;
    let mut first = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if first.len() > k {
            BURST_GAP.min(left)
        } else {
            left
        };
        if wait.is_zero() || client.set_read_timeout(Some(wait)).is_err() {
            return first;
        }
        match client.read(&mut buf) {
            Ok(0) => return first,
            Ok(n) => first.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return first,
        }
    }
}

/// Copies until `from` ends, then passes the end on; returns the bytes copied.
fn copy(mut from: TcpStream, mut to: TcpStream) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        copied += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    copied
}
