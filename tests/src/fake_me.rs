//! A fake Telegram middle-end (ME) server: the far side of relay's ME transport, for the
//! integration tests and (through `relay-fakeme`) the benchmark.
//!
//! It speaks the server side of the RPC protocol: the plaintext RPC_NONCE exchange, the key
//! derivation from the proxy secret, AES-256-CBC in each direction, the RPC_HANDSHAKE, and
//! then RPC_PROXY_REQ (answered with an echo in RPC_PROXY_ANS, after an RPC_SIMPLE_ACK when
//! a quick ack was asked for), RPC_PING (answered with RPC_PONG) and RPC_CLOSE_EXT (noted);
//! RPC_CLOSE_CONN, which the official C proxy sends for an answer whose client has gone, is
//! accepted and not recorded (relay never sends it).
//! Everything the proxy gets wrong is recorded in [`FakeMe::errors`] and ends that
//! connection; nothing a peer sends can panic the test process.
//!
//! The protocol is implemented here directly on AES-CBC, MD5, SHA-1 and CRC-32, independently
//! of relay's own ME code, so a mistake there cannot cancel itself out.
//!
//! Threads: one accepting thread; per connection a reader thread (which also does the
//! handshake) and a writer thread fed by a channel, so answers for many multiplexed clients
//! flow while requests keep arriving.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    io::{self, ErrorKind, Read, Write as _},
    net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aes::cipher::{BlockDecryptMut as _, BlockEncryptMut as _, KeyIvInit as _};
use md5::{Digest as _, Md5};
use sha1::Sha1;

type CbcEnc = cbc::Encryptor<aes::Aes256>;
type CbcDec = cbc::Decryptor<aes::Aes256>;

/// RPC_NONCE: the plaintext key-exchange frame, both ways.
pub const RPC_NONCE: u32 = 0x7acb_87aa;
/// RPC_HANDSHAKE: the first encrypted frame, both ways.
pub const RPC_HANDSHAKE: u32 = 0x7682_eef5;
/// RPC_PROXY_REQ: a client's message, proxy to ME.
pub const RPC_PROXY_REQ: u32 = 0x36ce_f1ee;
/// RPC_PROXY_ANS: an answer for a client, ME to proxy.
pub const RPC_PROXY_ANS: u32 = 0x4403_da0d;
/// RPC_SIMPLE_ACK: a quick ack for a client, ME to proxy.
pub const RPC_SIMPLE_ACK: u32 = 0x3bac_409b;
/// RPC_CLOSE_EXT: the proxy's client went away.
pub const RPC_CLOSE_EXT: u32 = 0x5eb6_34a2;
/// RPC_CLOSE_CONN: the official C proxy's notice that an answer found its client gone.
pub const RPC_CLOSE_CONN: u32 = 0x1fcf_425d;
/// RPC_PING: keep-alive, proxy to ME.
pub const RPC_PING: u32 = 0x5730_a2df;
/// RPC_PONG: the answer to RPC_PING.
pub const RPC_PONG: u32 = 0x8430_eaa7;
/// TL_PROXY_TAG: opens the ad tag inside an RPC_PROXY_REQ's extra block.
pub const TL_PROXY_TAG: u32 = 0xdb1e_26ae;
/// The only crypto schema spoken: AES.
pub const CRYPTO_SCHEMA_AES: u32 = 1;

/// RPC_PROXY_REQ flag: the message starts with 8 zero bytes (auth_key_id 0).
pub const FLAG_NOT_ENCRYPTED: u32 = 0x2;
/// RPC_PROXY_REQ flag: an extra block follows the addresses (also implied by the ad tag flag).
pub const FLAG_EXTRA: u32 = 0x4;
/// RPC_PROXY_REQ flag: the extra block carries an ad tag.
pub const FLAG_HAS_AD_TAG: u32 = 0x8;
/// RPC_PROXY_REQ flag: "magic" (always set by real proxies).
pub const FLAG_MAGIC: u32 = 0x1000;
/// RPC_PROXY_REQ flag: extended mode 2 (always set by real proxies).
pub const FLAG_EXTMODE2: u32 = 0x2_0000;
/// RPC_PROXY_REQ flag: the client uses padded intermediate framing.
pub const FLAG_PAD: u32 = 0x800_0000;
/// RPC_PROXY_REQ flag: the client uses intermediate framing.
pub const FLAG_INTERMEDIATE: u32 = 0x2000_0000;
/// RPC_PROXY_REQ flag: the client uses abridged framing.
pub const FLAG_ABRIDGED: u32 = 0x4000_0000;
/// RPC_PROXY_REQ flag: the client asked for a quick ack.
pub const FLAG_QUICKACK: u32 = 0x8000_0000;

/// A frame of this length is one padding word, skipped by the reader.
const PAD_WORD: [u8; 4] = [4, 0, 0, 0];
/// Largest frame accepted (length field, so including the 12 framing bytes).
const MAX_FRAME: usize = 16 << 20;
/// Plaintext padding words tolerated between the proxy's RPC_NONCE and its first encrypted
/// block.
const MAX_NONCE_PADDING: usize = 15;
/// How long the nonce and handshake exchange may take before the connection counts as bad.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed difference between the proxy's clock in RPC_NONCE and ours, in seconds.
const CLOCK_SKEW: i64 = 300;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// The writer sends what it has once this much is queued, even if more answers are waiting.
const FLUSH_AT: usize = 256 * 1024;
/// Stored errors are capped here (a later one only bumps the count in the last entry).
const MAX_ERRORS: usize = 10_000;

/// A misbehaviour to inject into the fake ME's outgoing stream ([`FakeMe::inject`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next frame's CRC32 is off by one bit (xor 1).
    BadCrc,
    /// The next frame's sequence number is 5 too high, and numbering goes on from there.
    WrongSeq,
    /// The next frame's length field is 1 << 30, followed by nothing but the padding words
    /// that complete the cipher block; nothing is sent on that connection afterwards.
    Oversize,
    /// A well-formed RPC_PROXY_ANS for a random connection id the proxy never used, sent at
    /// once, carrying 16 bytes: 8 zero bytes (auth_key_id 0) and 8 random ones.
    UnknownConnId,
}

/// One RPC_PROXY_REQ as the fake ME saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyReq {
    /// The request's flags (`FLAG_*`).
    pub flags: u32,
    /// The proxy's id for the client connection.
    pub conn_id: u64,
    /// The client's address as the proxy reported it (IPv4-mapped addresses as IPv4).
    pub client: SocketAddr,
    /// The proxy's own address as it reported it (IPv4-mapped addresses as IPv4).
    pub proxy: SocketAddr,
    /// The ad tag, if the extra block carried one.
    pub ad_tag: Option<[u8; 16]>,
    /// Length of the client's message in bytes.
    pub len: usize,
}

/// A running fake ME; it serves until [`FakeMe::stop`] or the end of the process. Clones
/// share one server.
#[derive(Clone)]
pub struct FakeMe {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

/// State shared by the handle, the accepting thread and every connection.
struct Shared {
    secret: Vec<u8>,
    state: Mutex<State>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    /// Delay before answering an RPC_PROXY_REQ, in nanoseconds.
    answer_delay_ns: AtomicU64,
    /// Whether requests and closes are kept in lists (counts are kept either way).
    recording: AtomicBool,
}

#[derive(Default)]
struct State {
    requests: Vec<ProxyReq>,
    request_count: u64,
    closes: Vec<u64>,
    close_count: u64,
    handshakes: usize,
    errors: Vec<String>,
    /// Open connections by our own connection number.
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    stopped: bool,
    /// A duplicate of the listening socket, for [`FakeMe::stop`] to shut it down.
    listener: Option<TcpListener>,
}

/// An open ME connection as the handle sees it.
struct Conn {
    /// A duplicate of the socket, to shut it down.
    stream: TcpStream,
    /// The writer's queue, once the handshake is through.
    out: Option<mpsc::Sender<Out>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_error(&self, msg: String) {
        let mut st = self.state();
        if st.errors.len() < MAX_ERRORS {
            st.errors.push(msg);
        } else if let Some(last) = st.errors.last_mut() {
            *last = format!("{msg} (and more errors after the first {MAX_ERRORS})");
        }
    }
}

impl FakeMe {
    /// Listens on `addr` (port 0 picks one) with proxy secret `secret` (the bytes relay reads
    /// from its secret file; at least 4, the first 4 are the key selector). Panics if it cannot
    /// listen.
    pub fn start(addr: SocketAddr, secret: Vec<u8>) -> FakeMe {
        FakeMe::try_start(addr, secret).unwrap_or_else(|e| panic!("fake ME on {addr}: {e}"))
    }

    /// [`FakeMe::start`] that reports a bind failure or a too-short secret instead of
    /// panicking.
    pub fn try_start(addr: SocketAddr, secret: Vec<u8>) -> io::Result<FakeMe> {
        if secret.len() < 4 {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the proxy secret has {} bytes, at least 4 needed",
                    secret.len()
                ),
            ));
        }
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            secret,
            state: Mutex::new(State {
                listener: Some(listener.try_clone()?),
                ..State::default()
            }),
            acceptor: Mutex::new(None),
            answer_delay_ns: AtomicU64::new(0),
            recording: AtomicBool::new(true),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("fake-me-accept".into())
                .spawn(move || accept_loop(&listener, &shared))?
        };
        *shared
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(acceptor);
        Ok(FakeMe { addr, shared })
    }

    /// Every RPC_PROXY_REQ seen (while recording), in the order they arrived.
    pub fn requests(&self) -> Vec<ProxyReq> {
        self.shared.state().requests.clone()
    }

    /// How many RPC_PROXY_REQ frames arrived, recorded or not.
    pub fn request_count(&self) -> u64 {
        self.shared.state().request_count
    }

    /// Connection ids of the RPC_CLOSE_EXT frames received (while recording), in order.
    pub fn closes(&self) -> Vec<u64> {
        self.shared.state().closes.clone()
    }

    /// How many RPC_CLOSE_EXT frames arrived, recorded or not.
    pub fn close_count(&self) -> u64 {
        self.shared.state().close_count
    }

    /// ME connections whose RPC_HANDSHAKE arrived and was valid (ever, not just open ones).
    pub fn handshakes(&self) -> usize {
        self.shared.state().handshakes
    }

    /// ME connections open now (accepted, not closed by either side, not killed).
    pub fn live(&self) -> usize {
        self.shared.state().conns.len()
    }

    /// Protocol errors seen from the proxy, each naming the connection; tests assert it is
    /// empty. Connections ended by [`FakeMe::kill_connections`] or [`FakeMe::stop`] add none.
    pub fn errors(&self) -> Vec<String> {
        self.shared.state().errors.clone()
    }

    /// Shuts down (both ways) every open ME connection, as a middle-end going away mid-traffic
    /// would. [`FakeMe::live`] is 0 when this returns; new connections are still accepted.
    pub fn kill_connections(&self) {
        let conns = std::mem::take(&mut self.shared.state().conns);
        for conn in conns.into_values() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
    }

    /// Stops accepting (the listening socket is shut down and closed, so connects are
    /// refused and the address can be bound again) and kills every open connection.
    pub fn stop(&self) {
        let listener = {
            let mut st = self.shared.state();
            st.stopped = true;
            st.listener.take()
        };
        if let Some(listener) = listener {
            // Takes the socket out of the listening state at once and wakes the blocked
            // accept(2).
            let _ = socket2::SockRef::from(&listener).shutdown(Shutdown::Both);
        }
        self.kill_connections();
        let acceptor = self
            .shared
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(acceptor) = acceptor {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !acceptor.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if acceptor.is_finished() {
                let _ = acceptor.join();
            }
        }
    }

    /// Makes the next frame sent on every open (handshaken) connection faulty; see [`Fault`].
    /// A connection with nothing to send keeps the fault until it next sends, except
    /// [`Fault::UnknownConnId`], which is a frame of its own and goes out at once.
    pub fn inject(&self, fault: Fault) {
        for conn in self.shared.state().conns.values() {
            if let Some(out) = &conn.out {
                let _ = out.send(Out::Fault(fault));
            }
        }
    }

    /// Delays the answers (quick ack and RPC_PROXY_ANS) to each RPC_PROXY_REQ by `d` from
    /// its arrival, without holding up the requests behind it. Zero by default. Frames queued
    /// behind a delayed answer (a pong, say) wait for it.
    pub fn set_answer_delay(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.answer_delay_ns.store(ns, Ordering::Relaxed);
    }

    /// Whether to keep every request and close in the lists ([`FakeMe::requests`],
    /// [`FakeMe::closes`]); on by default. The benchmark turns it off so that memory stays
    /// flat; the counts go on either way.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }
}

/// Writes the text of a getProxyConfig file that sends every DC id in `dcs`, and its
/// negative (the media DC), to `addr`, with `default <default>;`.
pub fn proxy_config_text(addr: SocketAddr, dcs: &[i16], default: i16) -> String {
    let mut text = String::from("# fake ME configuration written by relay-tests\n");
    let _ = writeln!(text, "default {default};");
    let mut seen: Vec<i16> = Vec::new();
    for &dc in dcs {
        for id in [Some(dc), dc.checked_neg()].into_iter().flatten() {
            if !seen.contains(&id) {
                seen.push(id);
                let _ = writeln!(text, "proxy_for {id} {addr};");
            }
        }
    }
    text
}

/// Accepts until [`FakeMe::stop`], one reader thread per connection.
fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if shared.state().stopped => return,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) =>
            {
                continue;
            }
            Err(_) => {
                // Out of descriptors or the like: let it pass.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Ok(dup) = stream.try_clone() else {
            continue;
        };
        let id = {
            let mut st = shared.state();
            if st.stopped {
                return;
            }
            st.next_conn += 1;
            let id = st.next_conn;
            st.conns.insert(
                id,
                Conn {
                    stream: dup,
                    out: None,
                },
            );
            id
        };
        let conn_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("fake-me-{id}"))
            .spawn(move || serve(stream, id, &conn_shared));
        if spawned.is_err() {
            shared.state().conns.remove(&id);
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Stop {
    /// The peer closed at a frame boundary, the socket failed, or we killed it.
    Closed,
    /// The peer broke the protocol.
    Proto(String),
}

/// Something for a connection's writer thread.
enum Out {
    /// Frames to send, not before `at`.
    Frames { at: Instant, payloads: Vec<Vec<u8>> },
    /// A fault for the next frame.
    Fault(Fault),
}

/// Serves one accepted connection to its end, then deregisters it and records why it ended
/// if that was the proxy's fault.
fn serve(stream: TcpStream, id: u64, shared: &Shared) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let result = run_conn(&stream, id, shared);
    let registered = shared.state().conns.remove(&id).is_some();
    if let Err(Stop::Proto(msg)) = result {
        // A connection we killed ends however it ends; that is not the proxy's fault.
        if registered {
            shared.record_error(format!("ME connection {id} from {peer}: {msg}"));
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn run_conn(stream: &TcpStream, id: u64, shared: &Shared) -> Result<(), Stop> {
    let local = unmap(stream.local_addr().map_err(|_| Stop::Closed)?);
    let peer = unmap(stream.peer_addr().map_err(|_| Stop::Closed)?);
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|_| Stop::Closed)?;
    let mut inbound = Inbound::new(stream.try_clone().map_err(|_| Stop::Closed)?);
    let secret = &shared.secret;

    // 1. The proxy's RPC_NONCE, in plaintext; ours back, with nothing after it.
    let nonce = inbound.read_frame()?;
    let (clt_ts, nonce_clt) = check_nonce(&nonce, secret).map_err(Stop::Proto)?;
    let nonce_srv: [u8; 16] = rand::random();
    let mut answer = Vec::new();
    Outbound::plain().frame(
        &mut answer,
        &nonce_payload(secret, unix_now(), &nonce_srv),
        None,
    );
    let mut writer = stream;
    writer.write_all(&answer).map_err(|_| Stop::Closed)?;

    // From here on a close before the handshake is the proxy giving up on our answer.
    let handshake = |inbound: &mut Inbound<TcpStream>| -> Result<Vec<u8>, Stop> {
        // 2. Keys: the proxy encrypts with "CLIENT", we with "SERVER".
        let (key, iv) = derive_key(
            b"CLIENT", &nonce_srv, &nonce_clt, clt_ts, local, peer, secret,
        );
        let mut expect = Vec::with_capacity(12);
        expect.extend_from_slice(&44u32.to_le_bytes());
        expect.extend_from_slice(&(-1i32).to_le_bytes());
        expect.extend_from_slice(&RPC_HANDSHAKE.to_le_bytes());
        inbound.start_decryption(CbcDec::new(&key.into(), &iv.into()), &expect)?;
        // 3. The proxy's RPC_HANDSHAKE.
        inbound.read_frame()
    };
    let hs = handshake(&mut inbound).map_err(|e| match e {
        Stop::Closed => {
            Stop::Proto("closed after the RPC_NONCE exchange, before RPC_HANDSHAKE".into())
        }
        proto => proto,
    })?;
    if hs.len() != 32 || le32(&hs, 0) != RPC_HANDSHAKE {
        return Err(Stop::Proto(format!(
            "expected a 32-byte RPC_HANDSHAKE, got {} bytes of type {:#010x}",
            hs.len(),
            le32(&hs, 0)
        )));
    }
    let mut proxy_pid = [0u8; 12];
    proxy_pid.copy_from_slice(&hs[8..20]);

    let (key, iv) = derive_key(
        b"SERVER", &nonce_srv, &nonce_clt, clt_ts, local, peer, secret,
    );
    let (tx, rx) = mpsc::channel();
    let out_stream = stream.try_clone().map_err(|_| Stop::Closed)?;
    {
        let mut st = shared.state();
        let Some(conn) = st.conns.get_mut(&id) else {
            // Killed meanwhile.
            return Err(Stop::Closed);
        };
        conn.out = Some(tx.clone());
        st.handshakes += 1;
    }
    let _ = tx.send(Out::Frames {
        at: Instant::now(),
        payloads: vec![handshake_payload(&our_pid(local), &proxy_pid)],
    });
    let outbound = Outbound {
        cipher: Some(CbcEnc::new(&key.into(), &iv.into())),
        seq: -1,
    };
    thread::Builder::new()
        .name(format!("fake-me-{id}-out"))
        .spawn(move || write_loop(out_stream, outbound, &rx))
        .map_err(|_| Stop::Closed)?;
    stream.set_read_timeout(None).map_err(|_| Stop::Closed)?;

    // 4. Requests, pings and closes until the proxy hangs up.
    loop {
        let frame = inbound.read_frame()?;
        handle_frame(&frame, id, shared, &tx)?;
    }
}

/// Handles one frame after the handshake; a soft problem (a bad client message) is recorded
/// and the connection goes on, a broken frame ends it.
fn handle_frame(
    frame: &[u8],
    id: u64,
    shared: &Shared,
    tx: &mpsc::Sender<Out>,
) -> Result<(), Stop> {
    if frame.len() < 4 {
        return Err(Stop::Proto(format!(
            "a {}-byte frame has no type",
            frame.len()
        )));
    }
    match le32(frame, 0) {
        RPC_PROXY_REQ => {
            let (req, message) = parse_proxy_req(frame).map_err(Stop::Proto)?;
            let problem = check_message(req.flags, message);
            {
                let mut st = shared.state();
                st.request_count += 1;
                if shared.recording.load(Ordering::Relaxed) {
                    st.requests.push(req.clone());
                }
            }
            if let Some(problem) = problem {
                shared.record_error(format!(
                    "ME connection {id}: RPC_PROXY_REQ for conn {:#x}: {problem}; not answered",
                    req.conn_id
                ));
                return Ok(());
            }
            let mut payloads = Vec::with_capacity(2);
            if req.flags & FLAG_QUICKACK != 0 {
                let mut ack = Vec::with_capacity(16);
                ack.extend_from_slice(&RPC_SIMPLE_ACK.to_le_bytes());
                ack.extend_from_slice(&req.conn_id.to_le_bytes());
                ack.extend_from_slice(&(le32(message, 0) | 0x8000_0000).to_le_bytes());
                payloads.push(ack);
            }
            payloads.push(proxy_ans(req.conn_id, message));
            let delay = Duration::from_nanos(shared.answer_delay_ns.load(Ordering::Relaxed));
            let _ = tx.send(Out::Frames {
                at: Instant::now() + delay,
                payloads,
            });
        }
        RPC_CLOSE_EXT => {
            if frame.len() != 12 {
                return Err(Stop::Proto(format!(
                    "RPC_CLOSE_EXT of {} bytes, expected 12",
                    frame.len()
                )));
            }
            let conn_id = le64(frame, 4);
            let mut st = shared.state();
            st.close_count += 1;
            if shared.recording.load(Ordering::Relaxed) {
                st.closes.push(conn_id);
            }
        }
        RPC_CLOSE_CONN => {
            if frame.len() != 12 {
                return Err(Stop::Proto(format!(
                    "RPC_CLOSE_CONN of {} bytes, expected 12",
                    frame.len()
                )));
            }
        }
        RPC_PING => {
            if frame.len() != 12 {
                return Err(Stop::Proto(format!(
                    "RPC_PING of {} bytes, expected 12",
                    frame.len()
                )));
            }
            let mut pong = Vec::with_capacity(12);
            pong.extend_from_slice(&RPC_PONG.to_le_bytes());
            pong.extend_from_slice(&frame[4..12]);
            let _ = tx.send(Out::Frames {
                at: Instant::now(),
                payloads: vec![pong],
            });
        }
        other => {
            return Err(Stop::Proto(format!(
                "unexpected frame type {other:#010x} ({} bytes)",
                frame.len()
            )));
        }
    }
    Ok(())
}

/// Parses an RPC_PROXY_REQ into what it says and the client's message.
fn parse_proxy_req(p: &[u8]) -> Result<(ProxyReq, &[u8]), String> {
    if p.len() < 56 {
        return Err(format!(
            "RPC_PROXY_REQ of {} bytes, shorter than its 56-byte header",
            p.len()
        ));
    }
    let flags = le32(p, 4);
    let conn_id = le64(p, 8);
    let client = wire_addr(&p[16..36]).map_err(|e| format!("client address: {e}"))?;
    let proxy = wire_addr(&p[36..56]).map_err(|e| format!("proxy address: {e}"))?;
    let mut rest = &p[56..];
    let mut ad_tag = None;
    if flags & (FLAG_HAS_AD_TAG | FLAG_EXTRA) != 0 {
        if rest.len() < 4 {
            return Err(format!(
                "flags {flags:#x} announce an extra block, but the frame ends"
            ));
        }
        let extra_len = le32(rest, 0) as usize;
        if !extra_len.is_multiple_of(4) || extra_len > rest.len() - 4 {
            return Err(format!(
                "extra block of {extra_len} bytes (must be a multiple of 4 and fit in the {} left)",
                rest.len() - 4
            ));
        }
        let extra = &rest[4..4 + extra_len];
        rest = &rest[4 + extra_len..];
        if extra.len() >= 4 && le32(extra, 0) == TL_PROXY_TAG {
            if extra.len() < 24 || extra[4] != 16 || extra[21..24] != [0, 0, 0] {
                return Err(format!(
                    "malformed TL_PROXY_TAG in the extra block: {}",
                    hex(extra)
                ));
            }
            let mut tag = [0u8; 16];
            tag.copy_from_slice(&extra[5..21]);
            ad_tag = Some(tag);
        }
    }
    if flags & FLAG_HAS_AD_TAG != 0 && ad_tag.is_none() {
        return Err(format!(
            "flags {flags:#x} announce an ad tag, but the extra block has no TL_PROXY_TAG"
        ));
    }
    let req = ProxyReq {
        flags,
        conn_id,
        client,
        proxy,
        ad_tag,
        len: rest.len(),
    };
    Ok((req, rest))
}

/// What is wrong with a client message, if anything.
fn check_message(flags: u32, message: &[u8]) -> Option<String> {
    if message.is_empty() || !message.len().is_multiple_of(4) {
        return Some(format!(
            "message of {} bytes (must be a positive multiple of 4)",
            message.len()
        ));
    }
    let zero_key = message.len() >= 8 && message[..8] == [0; 8];
    if (flags & FLAG_NOT_ENCRYPTED != 0) != zero_key {
        return Some(format!(
            "flag {FLAG_NOT_ENCRYPTED:#x} is {} but the message {} with 8 zero bytes",
            if flags & FLAG_NOT_ENCRYPTED != 0 {
                "set"
            } else {
                "clear"
            },
            if zero_key { "starts" } else { "does not start" }
        ));
    }
    None
}

/// A 20-byte wire address: 16-byte IPv6 (IPv4 mapped) and a u32 port.
fn wire_addr(b: &[u8]) -> Result<SocketAddr, String> {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let ip = Ipv6Addr::from(ip);
    let port = le32(b, 16);
    let port = u16::try_from(port).map_err(|_| format!("port {port} out of range"))?;
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    Ok(SocketAddr::new(ip, port))
}

/// An RPC_PROXY_ANS payload for `conn_id`.
fn proxy_ans(conn_id: u64, message: &[u8]) -> Vec<u8> {
    let mut ans = Vec::with_capacity(16 + message.len());
    ans.extend_from_slice(&RPC_PROXY_ANS.to_le_bytes());
    ans.extend_from_slice(&0u32.to_le_bytes());
    ans.extend_from_slice(&conn_id.to_le_bytes());
    ans.extend_from_slice(message);
    ans
}

/// Checks a proxy's RPC_NONCE payload; returns its time bytes and its nonce.
fn check_nonce(p: &[u8], secret: &[u8]) -> Result<([u8; 4], [u8; 16]), String> {
    if p.len() != 32 || le32(p, 0) != RPC_NONCE {
        return Err(format!(
            "expected a 32-byte RPC_NONCE, got {} bytes of type {:#010x}",
            p.len(),
            if p.len() >= 4 { le32(p, 0) } else { 0 }
        ));
    }
    if p[4..8] != secret[..4] {
        return Err(format!(
            "RPC_NONCE key selector {}, our secret's is {}",
            hex(&p[4..8]),
            hex(&secret[..4])
        ));
    }
    let schema = le32(p, 8);
    if schema != CRYPTO_SCHEMA_AES {
        return Err(format!(
            "RPC_NONCE crypto schema {schema}, expected {CRYPTO_SCHEMA_AES}"
        ));
    }
    let ts = le32(p, 12);
    let skew = i64::from(ts) - i64::from(unix_now());
    if skew.abs() > CLOCK_SKEW {
        return Err(format!(
            "RPC_NONCE time {ts} is {skew} s off our clock (at most {CLOCK_SKEW} allowed)"
        ));
    }
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&p[16..32]);
    Ok((ts.to_le_bytes(), nonce))
}

/// An RPC_NONCE payload: type, key selector, schema, time, nonce.
fn nonce_payload(secret: &[u8], time: u32, nonce: &[u8; 16]) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&RPC_NONCE.to_le_bytes());
    p.extend_from_slice(&secret[..4]);
    p.extend_from_slice(&CRYPTO_SCHEMA_AES.to_le_bytes());
    p.extend_from_slice(&time.to_le_bytes());
    p.extend_from_slice(nonce);
    p
}

/// An RPC_HANDSHAKE payload: type, flags 0, sender PID, peer PID.
fn handshake_payload(sender: &[u8; 12], peer: &[u8; 12]) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&RPC_HANDSHAKE.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(sender);
    p.extend_from_slice(peer);
    p
}

/// Our 12-byte process id: IPv4 (as a LE u32, 0 for IPv6), port, pid, start time.
fn our_pid(local: SocketAddr) -> [u8; 12] {
    let mut pid = [0u8; 12];
    if let IpAddr::V4(ip) = local.ip() {
        pid[..4].copy_from_slice(&u32::from(ip).to_le_bytes());
    }
    pid[4..6].copy_from_slice(&local.port().to_le_bytes());
    pid[6..8].copy_from_slice(&(std::process::id() as u16).to_le_bytes());
    pid[8..12].copy_from_slice(&unix_now().to_le_bytes());
    pid
}

/// The AES-256-CBC key and IV for one direction of an ME connection.
///
/// `purpose` is `CLIENT` for the proxy-to-ME direction and `SERVER` for ME-to-proxy; `srv`
/// and `clt` are the ME's and the proxy's ends of the TCP connection (the same two values on
/// both sides), `clt_ts` the time bytes of the proxy's RPC_NONCE.
fn derive_key(
    purpose: &[u8; 6],
    nonce_srv: &[u8; 16],
    nonce_clt: &[u8; 16],
    clt_ts: [u8; 4],
    srv: SocketAddr,
    clt: SocketAddr,
    secret: &[u8],
) -> ([u8; 32], [u8; 16]) {
    let (srv, clt) = (unmap(srv), unmap(clt));
    let (srv_ip, clt_ip, ip6) = match (srv.ip(), clt.ip()) {
        (IpAddr::V4(s), IpAddr::V4(c)) => (
            u32::from(s).to_le_bytes(),
            u32::from(c).to_le_bytes(),
            Vec::new(),
        ),
        (s, c) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            ([0; 4], [0; 4], [v6(c), v6(s)].concat())
        }
    };
    let mut s = Vec::with_capacity(128 + secret.len());
    s.extend_from_slice(nonce_srv);
    s.extend_from_slice(nonce_clt);
    s.extend_from_slice(&clt_ts);
    s.extend_from_slice(&srv_ip);
    s.extend_from_slice(&clt.port().to_le_bytes());
    s.extend_from_slice(purpose);
    s.extend_from_slice(&clt_ip);
    s.extend_from_slice(&srv.port().to_le_bytes());
    s.extend_from_slice(secret);
    s.extend_from_slice(nonce_srv);
    s.extend_from_slice(&ip6);
    s.extend_from_slice(nonce_clt);
    let mut key = [0u8; 32];
    key[..12].copy_from_slice(&Md5::digest(&s[1..])[..12]);
    key[12..].copy_from_slice(&Sha1::digest(&s));
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&Md5::digest(&s[2..]));
    (key, iv)
}

/// An IPv4-mapped IPv6 socket address as the IPv4 one it is.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// The LE u32 at `at`; callers check the length first.
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The LE u64 at `at`; callers check the length first.
fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receiving half of one direction: raw bytes in, decrypted when the cipher is on,
/// frames out.
struct Inbound<R> {
    src: R,
    /// Bytes received; `buf[pos..plain_end]` is plaintext not consumed yet, and
    /// `buf[plain_end..]` ciphertext not decrypted yet (less than a block once decrypted).
    buf: Vec<u8>,
    pos: usize,
    plain_end: usize,
    /// Where reads land before they are appended to `buf`.
    scratch: Box<[u8]>,
    cipher: Option<CbcDec>,
    /// The sequence number the next frame must carry.
    seq: i32,
}

impl<R: Read> Inbound<R> {
    fn new(src: R) -> Inbound<R> {
        Inbound {
            src,
            buf: Vec::new(),
            pos: 0,
            plain_end: 0,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            cipher: None,
            seq: -2,
        }
    }

    /// Makes at least `n` plaintext bytes available at `pos`.
    fn fill(&mut self, n: usize) -> Result<(), Stop> {
        loop {
            match &mut self.cipher {
                None => self.plain_end = self.buf.len(),
                Some(dec) => {
                    let blocks = (self.buf.len() - self.plain_end) / 16 * 16;
                    let end = self.plain_end + blocks;
                    for block in self.buf[self.plain_end..end].chunks_exact_mut(16) {
                        dec.decrypt_block_mut(block.into());
                    }
                    self.plain_end = end;
                }
            }
            if self.plain_end - self.pos >= n {
                return Ok(());
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> Result<(), Stop> {
        if self.pos == self.buf.len() || self.pos >= 1 << 20 {
            self.buf.drain(..self.pos);
            self.plain_end -= self.pos;
            self.pos = 0;
        }
        let old = self.buf.len();
        loop {
            match self.src.read(&mut self.scratch[..]) {
                Ok(0) => {
                    return Err(if old > self.pos {
                        Stop::Proto(format!(
                            "closed in the middle of a frame ({} bytes of it received)",
                            old - self.pos
                        ))
                    } else {
                        Stop::Closed
                    });
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&self.scratch[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Stop::Proto(format!(
                        "nothing received for {} s during the handshake",
                        HANDSHAKE_TIMEOUT.as_secs()
                    )));
                }
                Err(_) => return Err(Stop::Closed),
            }
        }
    }

    /// The next frame's payload, skipping padding words; checks length, sequence and CRC.
    fn read_frame(&mut self) -> Result<Vec<u8>, Stop> {
        let len = loop {
            self.fill(4)?;
            let len = le32(&self.buf, self.pos);
            if len != 4 {
                break len as usize;
            }
            self.pos += 4;
        };
        if !(12..=MAX_FRAME).contains(&len) || !len.is_multiple_of(4) {
            return Err(Stop::Proto(format!(
                "frame length {len} (must be 12..={MAX_FRAME} and a multiple of 4)"
            )));
        }
        self.fill(len)?;
        let frame = &self.buf[self.pos..self.pos + len];
        let seq = le32(frame, 4) as i32;
        let got = le32(frame, len - 4);
        let want = crc32fast::hash(&frame[..len - 4]);
        if got != want {
            return Err(Stop::Proto(format!(
                "bad CRC32 in a {len}-byte frame (seq {seq}): {got:#010x}, computed {want:#010x}"
            )));
        }
        if seq != self.seq {
            return Err(Stop::Proto(format!(
                "frame seq {seq}, expected {}",
                self.seq
            )));
        }
        let payload = frame[8..len - 4].to_vec();
        self.pos += len;
        self.seq = self.seq.wrapping_add(1);
        Ok(payload)
    }

    /// Switches to decryption for what follows the plaintext RPC_NONCE. Plaintext padding
    /// words the proxy may have sent after its RPC_NONCE are skipped: a candidate first block
    /// is tried with the key (it must decrypt to a frame header starting with `expect`) before
    /// a padding word is taken for one.
    fn start_decryption(&mut self, dec: CbcDec, expect: &[u8]) -> Result<(), Stop> {
        for _ in 0..=MAX_NONCE_PADDING {
            self.fill(16)?;
            let mut block = [0u8; 16];
            block.copy_from_slice(&self.buf[self.pos..self.pos + 16]);
            dec.clone().decrypt_block_mut((&mut block).into());
            if block.starts_with(expect) {
                self.set_cipher(dec);
                return Ok(());
            }
            if self.buf[self.pos..self.pos + 4] != PAD_WORD {
                break;
            }
            self.pos += 4;
        }
        Err(Stop::Proto(
            "after RPC_NONCE came neither a padding word nor an RPC_HANDSHAKE under the \
             expected key (key derivation, addresses or secret differ?)"
                .into(),
        ))
    }

    /// Everything from `pos` on is ciphertext under `dec`.
    fn set_cipher(&mut self, dec: CbcDec) {
        self.plain_end = self.pos;
        self.cipher = Some(dec);
    }
}

/// The sending half of one direction: frames in, bytes (padded and encrypted once the cipher
/// is on) out.
struct Outbound {
    cipher: Option<CbcEnc>,
    /// The sequence number of the next frame.
    seq: i32,
}

impl Outbound {
    /// Plaintext, starting at seq -2.
    fn plain() -> Outbound {
        Outbound {
            cipher: None,
            seq: -2,
        }
    }

    /// Appends the frame for `payload` to `out`, with `fault` if given.
    fn frame(&mut self, out: &mut Vec<u8>, payload: &[u8], fault: Option<Fault>) {
        let start = out.len();
        if fault == Some(Fault::Oversize) {
            out.extend_from_slice(&(1u32 << 30).to_le_bytes());
        } else {
            if fault == Some(Fault::WrongSeq) {
                self.seq = self.seq.wrapping_add(5);
            }
            out.extend_from_slice(&((payload.len() + 12) as u32).to_le_bytes());
            out.extend_from_slice(&self.seq.to_le_bytes());
            out.extend_from_slice(payload);
            let mut crc = crc32fast::hash(&out[start..]);
            if fault == Some(Fault::BadCrc) {
                crc ^= 1;
            }
            out.extend_from_slice(&crc.to_le_bytes());
            self.seq = self.seq.wrapping_add(1);
        }
        if let Some(enc) = &mut self.cipher {
            // Padding words up to the block; stray bytes only for a payload that is not a
            // whole number of words (which this server never sends).
            let rem = (16 - (out.len() - start) % 16) % 16;
            for _ in 0..rem / 4 {
                out.extend_from_slice(&PAD_WORD);
            }
            out.resize(out.len() + rem % 4, 0);
            for block in out[start..].chunks_exact_mut(16) {
                enc.encrypt_block_mut(block.into());
            }
        }
    }
}

/// A connection's writer: sends queued frames, applying injected faults, until the queue is
/// closed or the socket fails.
fn write_loop(mut stream: TcpStream, mut out: Outbound, rx: &mpsc::Receiver<Out>) {
    let mut faults: VecDeque<Fault> = VecDeque::new();
    let mut buf = Vec::new();
    // After an Oversize frame nothing more is sent.
    let mut silent = false;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let (at, payloads) = match item {
                Out::Fault(Fault::UnknownConnId) => {
                    let mut message = [0u8; 16];
                    message[8..].copy_from_slice(&rand::random::<[u8; 8]>());
                    (None, vec![proxy_ans(rand::random(), &message)])
                }
                Out::Fault(fault) => {
                    faults.push_back(fault);
                    (None, Vec::new())
                }
                Out::Frames { at, payloads } => (Some(at), payloads),
            };
            if let Some(wait) = at.and_then(|at| at.checked_duration_since(Instant::now())) {
                if stream.write_all(&buf).is_err() {
                    return;
                }
                buf.clear();
                thread::sleep(wait);
            }
            for payload in payloads {
                if silent {
                    break;
                }
                let fault = faults.pop_front();
                silent = fault == Some(Fault::Oversize);
                out.frame(&mut buf, &payload, fault);
            }
            if buf.len() < FLUSH_AT {
                next = rx.try_recv().ok();
            }
        }
        if stream.write_all(&buf).is_err() {
            return;
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::util::wait_until;

    const WAIT: Duration = Duration::from_secs(5);

    fn secret() -> Vec<u8> {
        (0..128u32).map(|i| (i * 37 + 11) as u8).collect()
    }

    fn start() -> FakeMe {
        FakeMe::start("127.0.0.1:0".parse().unwrap(), secret())
    }

    /// The proxy's side of an ME connection, written from the protocol description.
    struct Client {
        stream: TcpStream,
        inbound: Inbound<TcpStream>,
        out: Outbound,
        pid: [u8; 12],
    }

    impl Client {
        /// Connects and does the nonce and handshake exchange, with `pads` plaintext padding
        /// words after the RPC_NONCE.
        fn connect(me: &FakeMe, secret: &[u8], pads: usize) -> Client {
            let mut client = Client::nonce_only(me, secret, pads).expect("nonce exchange");
            let hs = client.recv().expect("handshake answer");
            assert_eq!(hs.len(), 32);
            assert_eq!(le32(&hs, 0), RPC_HANDSHAKE);
            assert_eq!(le32(&hs, 4), 0, "flags");
            assert_eq!(hs[20..32], client.pid, "our PID echoed as the peer PID");
            client
        }

        /// Does the nonce exchange and sends the handshake; returns before reading the
        /// answer, or the error the server's RPC_NONCE answer gave.
        fn nonce_only(me: &FakeMe, secret: &[u8], pads: usize) -> Result<Client, Stop> {
            let stream = TcpStream::connect(me.addr).expect("connect");
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let nonce_clt: [u8; 16] = rand::random();
            let ts = unix_now();
            let mut bytes = Vec::new();
            Outbound::plain().frame(&mut bytes, &nonce_payload(secret, ts, &nonce_clt), None);
            for _ in 0..pads {
                bytes.extend_from_slice(&PAD_WORD);
            }
            (&stream).write_all(&bytes).unwrap();

            let mut inbound = Inbound::new(stream.try_clone().unwrap());
            let answer = inbound.read_frame()?;
            assert_eq!(answer.len(), 32);
            assert_eq!(le32(&answer, 0), RPC_NONCE);
            assert_eq!(answer[4..8], secret[..4], "key selector");
            assert_eq!(le32(&answer, 8), CRYPTO_SCHEMA_AES);
            assert!((i64::from(le32(&answer, 12)) - i64::from(ts)).abs() <= 2);
            let mut nonce_srv = [0u8; 16];
            nonce_srv.copy_from_slice(&answer[16..32]);

            let local = stream.local_addr().unwrap();
            let peer = stream.peer_addr().unwrap();
            let ts = ts.to_le_bytes();
            let (key, iv) = derive_key(b"CLIENT", &nonce_srv, &nonce_clt, ts, peer, local, secret);
            let out = Outbound {
                cipher: Some(CbcEnc::new(&key.into(), &iv.into())),
                seq: -1,
            };
            let (key, iv) = derive_key(b"SERVER", &nonce_srv, &nonce_clt, ts, peer, local, secret);
            // No tolerance here: a byte after the server's RPC_NONCE breaks the handshake.
            inbound.set_cipher(CbcDec::new(&key.into(), &iv.into()));
            let pid: [u8; 12] = rand::random();
            let mut client = Client {
                stream,
                inbound,
                out,
                pid,
            };
            client.send(&handshake_payload(&pid, &[0; 12]), None);
            Ok(client)
        }

        fn send(&mut self, payload: &[u8], fault: Option<Fault>) {
            let mut bytes = Vec::new();
            self.out.frame(&mut bytes, payload, fault);
            (&self.stream).write_all(&bytes).unwrap();
        }

        fn recv(&mut self) -> Result<Vec<u8>, Stop> {
            self.inbound.read_frame()
        }

        /// Whether the server closed the connection (EOF or reset) within the read timeout.
        fn closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            loop {
                match (&self.stream).read(&mut byte) {
                    Ok(0) => return true,
                    Ok(_) => {}
                    Err(e) => {
                        return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
                    }
                }
            }
        }
    }

    fn wire(addr: SocketAddr) -> Vec<u8> {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut b = ip.octets().to_vec();
        b.extend_from_slice(&u32::from(addr.port()).to_le_bytes());
        b
    }

    fn proxy_req(flags: u32, conn_id: u64, tag: Option<[u8; 16]>, message: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&RPC_PROXY_REQ.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&conn_id.to_le_bytes());
        p.extend_from_slice(&wire("192.0.2.7:40001".parse().unwrap()));
        p.extend_from_slice(&wire("[2001:db8::1]:443".parse().unwrap()));
        if let Some(tag) = tag {
            p.extend_from_slice(&24u32.to_le_bytes());
            p.extend_from_slice(&TL_PROXY_TAG.to_le_bytes());
            p.push(16);
            p.extend_from_slice(&tag);
            p.extend_from_slice(&[0, 0, 0]);
        }
        p.extend_from_slice(message);
        p
    }

    fn ping(id: u64) -> Vec<u8> {
        let mut p = RPC_PING.to_le_bytes().to_vec();
        p.extend_from_slice(&id.to_le_bytes());
        p
    }

    fn expect_error(me: &FakeMe, what: &str) -> String {
        let errors = wait_until(WAIT, || Some(me.errors()).filter(|e| !e.is_empty()))
            .unwrap_or_else(|| panic!("no error recorded, expected one about {what}"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains(what), "{errors:?} should mention {what}");
        errors[0].clone()
    }

    #[test]
    fn kdf_known_answer() {
        // Expected values from Python's hashlib over the same bytes, laid out as the protocol
        // description says (MD5(s[1..])[..12] ‖ SHA1(s), MD5(s[2..])).
        let nonce_srv: [u8; 16] = std::array::from_fn(|i| i as u8);
        let nonce_clt: [u8; 16] = std::array::from_fn(|i| 0x10 + i as u8);
        let ts = 0x65a1_b2c3u32.to_le_bytes();
        let cases = [
            (
                "10.1.2.3:8888",
                "192.168.7.9:40123",
                b"CLIENT",
                "76c89f90c7de65f1024437f6759b9ff88225c5282914bf31ed97a33b499fab66",
                "4b8c10b84346513f5202a15e6fe8b38a",
            ),
            (
                "10.1.2.3:8888",
                "192.168.7.9:40123",
                b"SERVER",
                "f100d2616a51f5c20b319d29d11f01d4030b8896b976d29eb6f95ba6219cc43a",
                "76ac971267480987ce79291cac296f63",
            ),
            (
                "[2001:db8::1]:443",
                "[2001:db8::abcd]:50000",
                b"CLIENT",
                "2ffb58e87d680224a88a61b3ccac63f32c88d91f04b43045e38fe1c5b69a5c42",
                "820780e5c416434ae816084145aa2961",
            ),
            (
                "[2001:db8::1]:443",
                "[2001:db8::abcd]:50000",
                b"SERVER",
                "e307f6099d04c1c7e7d68195d8448f2443a5898bef540860db28c6a548f26b3e",
                "25e097c45341cc9cf1ab91bd0ac0c337",
            ),
        ];
        for (srv, clt, purpose, key, iv) in cases {
            let (k, v) = derive_key(
                purpose,
                &nonce_srv,
                &nonce_clt,
                ts,
                srv.parse().unwrap(),
                clt.parse().unwrap(),
                &secret(),
            );
            assert_eq!(hex(&k), key, "key {srv} {clt} {purpose:?}");
            assert_eq!(hex(&v), iv, "iv {srv} {clt} {purpose:?}");
        }
        // An IPv4-mapped address derives as the IPv4 one.
        let mapped = derive_key(
            b"CLIENT",
            &nonce_srv,
            &nonce_clt,
            ts,
            "[::ffff:10.1.2.3]:8888".parse().unwrap(),
            "[::ffff:192.168.7.9]:40123".parse().unwrap(),
            &secret(),
        );
        assert_eq!(hex(&mapped.0), cases[0].3);
    }

    #[test]
    fn frame_known_answer() {
        // Expected bytes from Python's struct and zlib.crc32.
        let mut bytes = Vec::new();
        let mut out = Outbound::plain();
        let nonce: Vec<u8> = (0..32).collect();
        out.frame(&mut bytes, &nonce, None);
        assert_eq!(
            hex(&bytes),
            "2c000000feffffff000102030405060708090a0b0c0d0e0f\
             101112131415161718191a1b1c1d1e1fb44cb4f9"
        );
        bytes.clear();
        out.seq = 0;
        out.frame(&mut bytes, &ping(0x0102_0304_0506_0708), None);
        assert_eq!(
            hex(&bytes),
            "1800000000000000dfa230570807060504030201c5d3df4b"
        );
        // Encrypted frames are padded with padding words to whole blocks, and read back.
        let (key, iv) = ([7u8; 32], [9u8; 16]);
        let mut out = Outbound {
            cipher: Some(CbcEnc::new(&key.into(), &iv.into())),
            seq: 0,
        };
        let mut bytes = Vec::new();
        out.frame(&mut bytes, &ping(1), None);
        out.frame(&mut bytes, &proxy_ans(5, &[1; 20]), None);
        assert_eq!(bytes.len(), 32 + 48);
        let mut inbound = Inbound::new(&bytes[..]);
        inbound.seq = 0;
        inbound.set_cipher(CbcDec::new(&key.into(), &iv.into()));
        assert_eq!(inbound.read_frame().unwrap(), ping(1));
        assert_eq!(inbound.read_frame().unwrap(), proxy_ans(5, &[1; 20]));
        assert!(matches!(inbound.read_frame(), Err(Stop::Closed)));
    }

    #[test]
    fn request_ack_echo_ping_and_close() {
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        assert_eq!(me.handshakes(), 1);
        assert_eq!(me.live(), 1);

        let tag: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let message: Vec<u8> = (0..40u8)
            .map(|i| i.wrapping_mul(7).wrapping_add(1))
            .collect();
        let flags =
            FLAG_MAGIC | FLAG_EXTMODE2 | FLAG_HAS_AD_TAG | FLAG_INTERMEDIATE | FLAG_QUICKACK;
        c.send(
            &proxy_req(flags, 0x1122_3344_5566_7788, Some(tag), &message),
            None,
        );

        let ack = c.recv().expect("simple ack");
        assert_eq!(ack.len(), 16);
        assert_eq!(le32(&ack, 0), RPC_SIMPLE_ACK);
        assert_eq!(le64(&ack, 4), 0x1122_3344_5566_7788);
        assert_eq!(le32(&ack, 12), le32(&message, 0) | 0x8000_0000);
        let ans = c.recv().expect("proxy answer");
        assert_eq!(ans, proxy_ans(0x1122_3344_5566_7788, &message));

        c.send(&ping(0xdead_beef_0bad_cafe), None);
        let pong = c.recv().expect("pong");
        assert_eq!(le32(&pong, 0), RPC_PONG);
        assert_eq!(le64(&pong, 4), 0xdead_beef_0bad_cafe);

        // Without the quick-ack flag there is no ack; an unencrypted message needs flag 0x2.
        let mut plain_msg = vec![0u8; 8];
        plain_msg.extend_from_slice(&[5; 12]);
        c.send(
            &proxy_req(FLAG_MAGIC | FLAG_NOT_ENCRYPTED, 9, None, &plain_msg),
            None,
        );
        assert_eq!(c.recv().unwrap(), proxy_ans(9, &plain_msg));

        let mut close = RPC_CLOSE_EXT.to_le_bytes().to_vec();
        close.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        c.send(&close, None);
        assert!(
            wait_until(WAIT, || (me.closes() == [0x1122_3344_5566_7788])
                .then_some(()))
            .is_some()
        );
        assert_eq!(
            me.requests(),
            [
                ProxyReq {
                    flags,
                    conn_id: 0x1122_3344_5566_7788,
                    client: "192.0.2.7:40001".parse().unwrap(),
                    proxy: "[2001:db8::1]:443".parse().unwrap(),
                    ad_tag: Some(tag),
                    len: 40,
                },
                ProxyReq {
                    flags: FLAG_MAGIC | FLAG_NOT_ENCRYPTED,
                    conn_id: 9,
                    client: "192.0.2.7:40001".parse().unwrap(),
                    proxy: "[2001:db8::1]:443".parse().unwrap(),
                    ad_tag: None,
                    len: 20,
                },
            ]
        );
        assert_eq!(me.request_count(), 2);
        assert_eq!(me.close_count(), 1);
        assert!(me.errors().is_empty(), "{:?}", me.errors());

        // The proxy hanging up between frames is no error.
        drop(c);
        assert!(wait_until(WAIT, || (me.live() == 0).then_some(())).is_some());
        assert!(me.errors().is_empty(), "{:?}", me.errors());
    }

    #[test]
    fn padding_after_the_nonce_is_tolerated() {
        let me = start();
        for pads in [1, 3, 4] {
            let mut c = Client::connect(&me, &secret(), pads);
            c.send(&ping(pads as u64), None);
            assert_eq!(le64(&c.recv().unwrap(), 4), pads as u64);
        }
        assert_eq!(me.handshakes(), 3);
        assert!(me.errors().is_empty(), "{:?}", me.errors());
    }

    #[test]
    fn many_requests_flow_while_more_arrive() {
        let me = start();
        me.set_answer_delay(Duration::from_millis(200));
        let mut c = Client::connect(&me, &secret(), 0);
        let started = Instant::now();
        // Pipelined: all requests go out before any answer is read; the answers are delayed
        // from each request's arrival, not one after another.
        let messages: Vec<Vec<u8>> = (0..300u32)
            .map(|i| (0..(4 + i % 50) * 4).map(|b| (b ^ i) as u8 | 1).collect())
            .collect();
        for (i, m) in messages.iter().enumerate() {
            c.send(&proxy_req(FLAG_MAGIC, i as u64 % 10, None, m), None);
        }
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(c.recv().unwrap(), proxy_ans(i as u64 % 10, m), "answer {i}");
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_eq!(me.requests().len(), 300);
        assert!(me.errors().is_empty(), "{:?}", me.errors());
    }

    #[test]
    fn faults_from_the_client_are_errors_and_close() {
        for (fault, what) in [
            (Fault::BadCrc, "bad CRC32"),
            (Fault::WrongSeq, "frame seq 5, expected 0"),
            (Fault::Oversize, "frame length 1073741824"),
        ] {
            let me = start();
            let mut c = Client::connect(&me, &secret(), 0);
            c.send(&ping(1), Some(fault));
            assert!(c.closed(), "{fault:?}: connection still open");
            expect_error(&me, what);
            assert!(wait_until(WAIT, || (me.live() == 0).then_some(())).is_some());
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        // Unknown frame type: error, connection ends.
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        c.send(&[0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0], None);
        assert!(c.closed());
        expect_error(&me, "unexpected frame type 0x44332211");

        // An empty message (framing keeps it whole words): recorded, not answered, the
        // connection stays.
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        c.send(&proxy_req(FLAG_MAGIC, 3, None, &[]), None);
        expect_error(&me, "message of 0 bytes");
        c.send(&ping(2), None);
        assert_eq!(le32(&c.recv().unwrap(), 0), RPC_PONG);

        // Flag 0x2 must match the message.
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        c.send(&proxy_req(FLAG_MAGIC, 3, None, &[0; 16]), None);
        expect_error(&me, "flag 0x2 is clear");

        // Ad tag flag without the tag.
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        c.send(&proxy_req(FLAG_HAS_AD_TAG, 3, None, &[0; 4]), None);
        assert!(c.closed());
        expect_error(&me, "extra block");
    }

    #[test]
    fn wrong_selector_is_an_error() {
        let me = start();
        let mut other = secret();
        other[0] ^= 0xff;
        let result = Client::nonce_only(&me, &other, 0);
        assert!(matches!(result, Err(Stop::Closed)), "no answer expected");
        expect_error(&me, "key selector");
        assert_eq!(me.handshakes(), 0);

        // A secret that differs past the selector fails at the handshake.
        let me = start();
        let mut other = secret();
        other[100] ^= 1;
        let mut c = Client::nonce_only(&me, &other, 0).unwrap();
        assert!(c.closed());
        expect_error(&me, "under the expected key");
    }

    #[test]
    fn injected_faults_reach_the_proxy() {
        for (fault, what) in [
            (Fault::BadCrc, "bad CRC32"),
            (Fault::WrongSeq, "frame seq 5, expected 0"),
            (Fault::Oversize, "frame length 1073741824"),
        ] {
            let me = start();
            let mut c = Client::connect(&me, &secret(), 0);
            me.inject(fault);
            c.send(&ping(7), None);
            let err = c.recv().expect_err("a faulty frame");
            assert!(
                matches!(&err, Stop::Proto(m) if m.contains(what)),
                "{fault:?}: {err:?}"
            );
            assert!(me.errors().is_empty(), "{:?}", me.errors());
        }

        // WrongSeq goes on counting from the wrong number.
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        me.inject(Fault::WrongSeq);
        c.send(&ping(1), None);
        c.send(&ping(2), None);
        c.inbound.seq = 5;
        assert_eq!(le64(&c.recv().unwrap(), 4), 1);
        assert_eq!(le64(&c.recv().unwrap(), 4), 2);

        // UnknownConnId goes out at once and is well-formed; normal traffic goes on.
        let me = start();
        let mut c = Client::connect(&me, &secret(), 0);
        me.inject(Fault::UnknownConnId);
        let ans = c.recv().unwrap();
        assert_eq!(le32(&ans, 0), RPC_PROXY_ANS);
        assert_eq!(ans.len(), 32);
        assert_eq!(ans[16..24], [0; 8]);
        c.send(&ping(3), None);
        assert_eq!(le64(&c.recv().unwrap(), 4), 3);
        assert!(me.errors().is_empty(), "{:?}", me.errors());
    }

    #[test]
    fn kill_and_stop() {
        let me = start();
        let mut a = Client::connect(&me, &secret(), 0);
        let mut b = Client::connect(&me, &secret(), 0);
        assert_eq!(me.live(), 2);
        me.kill_connections();
        assert_eq!(me.live(), 0);
        assert!(a.closed() && b.closed());

        let mut c = Client::connect(&me, &secret(), 0);
        c.send(&ping(1), None);
        assert_eq!(le32(&c.recv().unwrap(), 0), RPC_PONG);
        assert_eq!(me.live(), 1);
        me.stop();
        assert_eq!(me.live(), 0);
        assert!(c.closed());
        let refused = TcpStream::connect_timeout(&me.addr, WAIT).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(me.handshakes(), 3);
        assert!(me.errors().is_empty(), "{:?}", me.errors());

        // The address is free again: a new fake ME can take it over.
        let again = FakeMe::start(me.addr, secret());
        let mut d = Client::connect(&again, &secret(), 0);
        d.send(&ping(2), None);
        assert_eq!(le32(&d.recv().unwrap(), 0), RPC_PONG);
    }

    #[test]
    fn silent_or_truncating_peers_end_with_bounded_errors() {
        let me = start();
        // Half a nonce frame, then a close.
        let s = TcpStream::connect(me.addr).unwrap();
        (&s).write_all(&[44, 0, 0, 0, 0xfe]).unwrap();
        drop(s);
        expect_error(&me, "closed in the middle of a frame");
        // A connect and close without a byte is a probe, not an error.
        let me = start();
        drop(TcpStream::connect(me.addr).unwrap());
        assert!(wait_until(WAIT, || (me.live() == 0).then_some(())).is_some());
        assert!(me.errors().is_empty(), "{:?}", me.errors());
    }

    #[test]
    fn proxy_config_lists_every_dc() {
        let addr: SocketAddr = "127.0.0.1:8888".parse().unwrap();
        let text = proxy_config_text(addr, &[1, 2, 2, -3], 2);
        assert_eq!(
            text,
            "# fake ME configuration written by relay-tests\n\
             default 2;\n\
             proxy_for 1 127.0.0.1:8888;\n\
             proxy_for -1 127.0.0.1:8888;\n\
             proxy_for 2 127.0.0.1:8888;\n\
             proxy_for -2 127.0.0.1:8888;\n\
             proxy_for -3 127.0.0.1:8888;\n\
             proxy_for 3 127.0.0.1:8888;\n"
        );
        let v6 = proxy_config_text("[::1]:443".parse().unwrap(), &[4], 4);
        assert!(v6.contains("proxy_for -4 [::1]:443;\n"));
    }
}
