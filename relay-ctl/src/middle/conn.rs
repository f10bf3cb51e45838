//! One connection to a middle proxy: the handshake, then a writer task that frames and
//! encrypts what clients send, and a reader task that routes answers to clients by connection
//! id. The reader never waits on a client: answers go into each client's inbox, and a client
//! whose inbox passes [`MAX_QUEUED_PER_CLIENT`] is dropped (and the ME told), so a slow
//! reader cannot stall the others on the same connection.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, watch},
};

use super::{MiddleError, stats::MiddleStats};
use crate::clock::{monotonic_ns, unix_now};
use relay_proto::middle::{
    FrameReader, FrameWriter, FromMe, KdfInput, Purpose, derive_keys,
    rpc::{self, Nonce},
};

/// Answers queued for one client before it is dropped as too slow.
pub const MAX_QUEUED_PER_CLIENT: usize = 4 << 20;
/// Messages waiting for the writer before senders wait.
const OUTGOING_QUEUE: usize = 1024;
/// Bytes the writer gathers into one write.
const WRITE_BATCH: usize = 256 * 1024;
/// Keep-alive interval; a connection silent for three of them is dead.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Closed connection ids remembered, so answers racing a close are not protocol errors.
const RECENTLY_CLOSED: usize = 4096;
/// This proxy's PID in RPC_HANDSHAKE (the field is opaque to the ME; the official proxy puts
/// its address, port, pid and start time there).
const OUR_PID: [u8; 12] = *b"relay-proxy\0";

/// What a middle proxy sent for one client.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// An MTProto message, unframed.
    Data(Vec<u8>),
    /// A quick acknowledgement's 4 bytes.
    QuickAck([u8; 4]),
}

/// One client's receiving side, shared with the reader task: its answers wait in a queue
/// that holds no memory while empty (an idle client costs a few words here).
#[derive(Default)]
pub struct Inbox {
    /// Bytes delivered and not yet taken.
    pub queued: AtomicUsize,
    /// Set when the client was dropped for queueing too much.
    pub overflowed: AtomicBool,
    dropped: tokio::sync::Notify,
    answers: Mutex<Answers>,
    arrived: tokio::sync::Notify,
}

#[derive(Default)]
struct Answers {
    queue: VecDeque<Answer>,
    /// The route is gone: no answer follows the queued ones.
    closed: bool,
}

impl Inbox {
    /// Completes once the client has been dropped for queueing too much.
    pub async fn overflow(&self) {
        while !self.overflowed.load(Ordering::Relaxed) {
            self.dropped.notified().await;
        }
    }

    /// The next answer; `None` once the route is closed and every answer taken.
    pub async fn next(&self) -> Option<Answer> {
        loop {
            let arrived = self.arrived.notified();
            {
                let mut answers = lock(&self.answers);
                if let Some(answer) = answers.queue.pop_front() {
                    if answers.queue.is_empty() {
                        // A burst's queue does not stay with an idle client.
                        answers.queue = VecDeque::new();
                    }
                    return Some(answer);
                }
                if answers.closed {
                    return None;
                }
            }
            arrived.await;
        }
    }

    fn push(&self, answer: Answer) {
        let mut answers = lock(&self.answers);
        if !answers.closed {
            answers.queue.push_back(answer);
        }
        drop(answers);
        self.arrived.notify_one();
    }

    fn close(&self) {
        lock(&self.answers).closed = true;
        self.arrived.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client's entry in its connection's table; dropping it (the client closed, or the
/// connection died) ends the client's answers.
struct Route {
    inbox: Arc<Inbox>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.inbox.close();
    }
}

#[derive(Default)]
struct Routes {
    live: HashMap<u64, Route>,
    closed: VecDeque<u64>,
    closed_set: HashSet<u64>,
}

impl Routes {
    fn close(&mut self, id: u64) -> Option<Route> {
        let route = self.live.remove(&id);
        if route.is_some() && self.closed_set.insert(id) {
            self.closed.push_back(id);
            if self.closed.len() > RECENTLY_CLOSED
                && let Some(old) = self.closed.pop_front()
            {
                self.closed_set.remove(&old);
            }
        }
        route
    }
}

/// Keys, addresses and limits a connection is opened with.
#[derive(Clone)]
pub struct Dial {
    /// Telegram's proxy secret.
    pub secret: Arc<Vec<u8>>,
    /// The address the ME sees for this host, when it is not the local one (NAT).
    pub public_ip: Option<IpAddr>,
    /// Limit for connecting and for the handshake.
    pub timeout: Duration,
}

/// A live (or just died) ME connection.
pub struct MeConn {
    /// The middle proxy.
    pub addr: SocketAddr,
    out: mpsc::Sender<Vec<u8>>,
    routes: Mutex<Routes>,
    dead: watch::Sender<bool>,
    /// Round-trip time of the last keep-alive, in microseconds (0: none yet).
    pub rtt_us: AtomicU64,
    last_heard_ns: AtomicU64,
    stats: Arc<MiddleStats>,
}

impl MeConn {
    /// Connects to `addr` and completes the handshake; the connection's tasks then run on
    /// the current runtime until it fails or [`MeConn::kill`] is called.
    pub async fn open(
        addr: SocketAddr,
        dial: &Dial,
        stats: Arc<MiddleStats>,
    ) -> Result<Arc<MeConn>, MiddleError> {
        let connected = tokio::time::timeout(dial.timeout, async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let local = stream.local_addr()?;
            let clt = SocketAddr::new(dial.public_ip.unwrap_or(local.ip()), local.port());
            let (writer, reader) = handshake(&mut stream, clt, addr, &dial.secret).await?;
            Ok::<_, MiddleError>((stream, writer, reader))
        })
        .await
        .map_err(|_| MiddleError::Timeout(addr))?;
        let (stream, writer, reader) = connected?;
        let (out, out_rx) = mpsc::channel(OUTGOING_QUEUE);
        let conn = Arc::new(MeConn {
            addr,
            out,
            routes: Mutex::default(),
            dead: watch::Sender::new(false),
            rtt_us: AtomicU64::new(0),
            last_heard_ns: AtomicU64::new(monotonic_ns()),
            stats,
        });
        let (r, w) = stream.into_split();
        tokio::spawn(write_loop(w, writer, out_rx, conn.clone()));
        tokio::spawn(read_loop(r, reader, conn.clone()));
        tokio::spawn(keep_alive(conn.clone()));
        Ok(conn)
    }

    /// Whether the connection has failed or been closed.
    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// Completes when the connection is dead.
    pub async fn died(&self) {
        let mut rx = self.dead.subscribe();
        let _ = rx.wait_for(|dead| *dead).await;
    }

    /// Clients on this connection now.
    pub fn clients(&self) -> usize {
        self.routes.lock().map_or(0, |r| r.live.len())
    }

    /// Ends the connection: its clients' inboxes close, its tasks stop.
    pub fn kill(&self, reason: &str) {
        if self.dead.send_replace(true) {
            return;
        }
        let clients = self
            .routes
            .lock()
            .map(|mut r| std::mem::take(&mut r.live).len())
            .unwrap_or(0);
        crate::warn_limited!(
            (1, 10),
            me = %self.addr,
            clients,
            "middle-proxy connection closed: {reason}"
        );
    }

    /// Registers a client; its answers arrive in the returned inbox.
    pub fn register(&self) -> Result<(u64, Arc<Inbox>), MiddleError> {
        let inbox = Arc::new(Inbox::default());
        let mut routes = self.routes.lock().map_err(|_| MiddleError::Down)?;
        if self.is_dead() {
            return Err(MiddleError::Down);
        }
        let id = loop {
            let id: u64 = rand::random();
            if !routes.live.contains_key(&id) && !routes.closed_set.contains(&id) {
                break id;
            }
        };
        routes.live.insert(
            id,
            Route {
                inbox: inbox.clone(),
            },
        );
        Ok((id, inbox))
    }

    /// Queues an RPC payload for the ME, waiting while the writer is behind.
    pub async fn send(&self, payload: Vec<u8>) -> Result<(), MiddleError> {
        if self.is_dead() {
            return Err(MiddleError::Down);
        }
        self.out.send(payload).await.map_err(|_| MiddleError::Down)
    }

    /// A client left: forget its route and tell the ME, unless the ME closed it first.
    pub fn close_client(&self, id: u64) {
        let known = self.routes.lock().is_ok_and(|mut r| r.close(id).is_some());
        if known && !self.is_dead() {
            // A full queue means a congested ME: the close is then lost, and the ME times
            // the connection out itself.
            let _ = self.out.try_send(rpc::encode_close_ext(id).to_vec());
        }
    }

    /// Routes one frame from the ME; an error ends the connection.
    fn dispatch(&self, frame: &[u8]) -> Result<(), MiddleError> {
        self.last_heard_ns.store(monotonic_ns(), Ordering::Relaxed);
        match FromMe::decode(frame)? {
            FromMe::ProxyAns { conn_id, message } => {
                self.deliver(conn_id, Answer::Data(message.to_vec()), message.len())
            }
            FromMe::SimpleAck { conn_id, confirm } => {
                self.deliver(conn_id, Answer::QuickAck(confirm), 4)
            }
            FromMe::Close { conn_id } => {
                if let Ok(mut routes) = self.routes.lock() {
                    routes.close(conn_id);
                }
                Ok(())
            }
            FromMe::Ping(id) => {
                let _ = self.out.try_send(rpc::encode_ping(id, true).to_vec());
                Ok(())
            }
            FromMe::Pong(sent_ns) => {
                let rtt = monotonic_ns().saturating_sub(sent_ns) / 1000;
                self.rtt_us.store(rtt.max(1), Ordering::Relaxed);
                Ok(())
            }
            FromMe::Other(_) => Ok(()),
        }
    }

    fn deliver(&self, id: u64, answer: Answer, len: usize) -> Result<(), MiddleError> {
        let mut routes = self.routes.lock().map_err(|_| MiddleError::Down)?;
        let Some(route) = routes.live.get(&id) else {
            // An answer racing the client's close is normal; an id never given out is not.
            return if routes.closed_set.contains(&id) {
                Ok(())
            } else {
                Err(MiddleError::UnknownConnection(id))
            };
        };
        let queued = route.inbox.queued.fetch_add(len, Ordering::Relaxed) + len;
        if queued > MAX_QUEUED_PER_CLIENT {
            route.inbox.overflowed.store(true, Ordering::Relaxed);
            route.inbox.dropped.notify_one();
            routes.close(id);
            drop(routes);
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            let _ = self.out.try_send(rpc::encode_close_ext(id).to_vec());
            return Ok(());
        }
        route.inbox.push(answer);
        Ok(())
    }
}

/// The plaintext nonce exchange, the keys, and the encrypted RPC_HANDSHAKE. `clt` is this
/// host's address as the ME sees it.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    clt: SocketAddr,
    srv: SocketAddr,
    secret: &[u8],
) -> Result<(FrameWriter, FrameReader), MiddleError> {
    let mut writer = FrameWriter::new();
    let mut reader = FrameReader::new();
    let mut key_selector = [0u8; 4];
    key_selector.copy_from_slice(secret.get(..4).ok_or(MiddleError::Secret)?);
    let sent = Nonce {
        key_selector,
        time: unix_now() as u32,
        nonce: rand::random(),
    };
    let mut buf = Vec::new();
    writer.write(&sent.encode(), &mut buf)?;
    stream.write_all(&buf).await?;
    let answer = read_frame(stream, &mut reader).await?;
    let theirs = Nonce::decode_answer(&answer, &sent)?;

    let input = KdfInput {
        nonce_srv: &theirs.nonce,
        nonce_clt: &sent.nonce,
        clt_time: sent.time,
        clt,
        srv,
        secret,
    };
    let (key, iv) = derive_keys(&input, Purpose::Client);
    writer.encrypt(&key, &iv);
    let (key, iv) = derive_keys(&input, Purpose::Server);
    reader.decrypt(&key, &iv);

    buf.clear();
    writer.write(&rpc::encode_handshake(&OUR_PID, &[0; 12]), &mut buf)?;
    stream.write_all(&buf).await?;
    let answer = read_frame(stream, &mut reader).await?;
    rpc::check_handshake_answer(&answer, &OUR_PID)?;
    Ok((writer, reader))
}

async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
) -> Result<Vec<u8>, MiddleError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = reader.next_frame()? {
            return Ok(frame.to_vec());
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(MiddleError::Closed);
        }
        reader.push(&buf[..n]);
    }
}

async fn write_loop(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut writer: FrameWriter,
    mut rx: mpsc::Receiver<Vec<u8>>,
    conn: Arc<MeConn>,
) {
    let mut dead = conn.dead.subscribe();
    let mut buf = Vec::with_capacity(64 * 1024);
    let reason = loop {
        let first = tokio::select! {
            p = rx.recv() => p,
            _ = dead.wait_for(|d| *d) => break String::new(),
        };
        let Some(first) = first else {
            break String::new();
        };
        buf.clear();
        let mut next = Some(first);
        while let Some(payload) = next.take() {
            if let Err(e) = writer.write(&payload, &mut buf) {
                // Payloads are built from whole 32-bit words; this is a bug, not input.
                tracing::error!("middle proxy: unframeable payload: {e}");
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = w.write_all(&buf).await {
            break format!("write: {e}");
        }
        if buf.capacity() > 4 * WRITE_BATCH {
            buf = Vec::with_capacity(64 * 1024);
        }
    };
    conn.kill(if reason.is_empty() { "closed" } else { &reason });
    let _ = w.shutdown().await;
}

async fn read_loop(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut reader: FrameReader,
    conn: Arc<MeConn>,
) {
    let mut dead = conn.dead.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    let reason = 'outer: loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = dead.wait_for(|d| *d) => break String::new(),
        };
        match n {
            Ok(0) => break "the middle proxy closed it".to_owned(),
            Ok(n) => reader.push(&buf[..n]),
            Err(e) => break format!("read: {e}"),
        }
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    if let Err(e) = conn.dispatch(frame) {
                        conn.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        break 'outer e.to_string();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    conn.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    break 'outer e.to_string();
                }
            }
        }
    };
    conn.kill(if reason.is_empty() { "closed" } else { &reason });
}

/// Pings every [`PING_EVERY`] (the id is the send time, so the pong gives the RTT); a
/// connection that has sent nothing for three intervals is declared dead.
async fn keep_alive(conn: Arc<MeConn>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = conn.died() => return,
        }
        let silent = monotonic_ns().saturating_sub(conn.last_heard_ns.load(Ordering::Relaxed));
        if silent > 3 * PING_EVERY.as_nanos() as u64 {
            conn.kill("no answer to keep-alives");
            return;
        }
        let _ = conn
            .out
            .try_send(rpc::encode_ping(monotonic_ns(), false).to_vec());
    }
}
