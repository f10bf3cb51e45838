//! relay-loadgen: the benchmark's load generator, built on `relay_tests::mtproto_client` (the
//! same blocking client the probe tests use, `dd` or fake TLS).
//!
//! ```text
//! relay-loadgen throughput --target A --mode dd|tls|direct [--domain D] --secrets FILE
//!               --conns N --frame BYTES --duration SECS [--max-bytes B] [--warmup SECS]
//!               [--rate BYTES_PER_SEC] [--lax-close]
//! relay-loadgen handshakes --target A --mode dd|tls ... --workers M --duration SECS [--frame B]
//!               [--user random|first|last|sticky] [--source-base IPV4]
//! relay-loadgen idle       --target A --mode dd|tls ... --conns K [--workers W] [--hold SECS]
//! relay-loadgen latency    --target A --mode dd|tls|direct ... --duration SECS [--rounds R]
//! ```
//!
//! `--hello-len N` (with `tls`): the ClientHello record is padded to N bytes, as real
//! clients' are (517); some proxies refuse shorter ones.
//!
//! `--framed` (with `dd` or `tls`): every message is one padded-intermediate frame (u32 LE
//! length counting 0..3 random padding bytes, payload, padding), and what comes back is read
//! frame by frame with the padding (length % 4) stripped, as a relay in middle mode needs:
//! it parses the client's frames and the middle-end echoes each as one message. Frame sizes
//! must then be multiples of 4.
//!
//! Every mode prints `begin` when its measurement window opens and `end` when it closes (the
//! orchestrator samples the relay's CPU and memory at those lines), then one line
//! `result {json}`. Each mode is bounded in time (and bytes or rounds where it applies).
//!
//! - throughput: N connections, each with a writer thread sending `frame`-byte writes of a
//!   known pattern and a reader thread checking every echoed byte against it; reports bytes
//!   echoed in the window. `--rate` paces the writers to that many bytes per second in all
//!   (a load below what the machine can carry), instead of as fast as they can. After the
//!   window each writer half-closes and the reader waits for the rest of the echo; with
//!   `--lax-close` a proxy that ends the whole connection instead (or resets it) loses that
//!   tail without failing the run (it is reported as `unechoed_after_window`). `--mode
//!   direct` speaks the DC side's protocol, to the fake DC or through a plain forwarder
//!   (`relay-floor`).
//! - handshakes: M workers, each looping connect, handshake, one echoed frame, close; counts
//!   completed handshakes. Each connection's user is picked at random from `--secrets` (the
//!   relay's average case), or is always the first or the last one (its best and worst case
//!   when it tries users in order). `sticky`: each worker picks one user at random and keeps
//!   it, as a real client does; with `--source-base A` worker `w` also connects from address
//!   `A + w` (which must be configured locally), so every source has its own user.
//! - idle: opens K connections (handshake plus one echoed frame each) and holds them idle
//!   until stdin closes or `--hold` passes.
//! - latency: one connection, 1 KiB request/response round trips; p50/p99. `--mode direct`
//!   talks to the fake DC itself (a DC-side obfuscated2 header, no relay), for the baseline.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rand::Rng as _;
use relay_proto::{AesCtr, ProtoTag, Secret, obfs2};
use relay_tests::{
    bench::{args::Args, procfs},
    mtproto_client::{ClientOptions, ClientReader, ClientWriter, MtprotoClient, Transport},
};
use serde_json::{Value, json};

/// Period of the payload pattern: prime, so it never lines up with frame or record sizes.
const PERIOD: usize = 251;
/// Receive buffer of a throughput reader.
const RECV_BUF: usize = 64 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    let mode = argv
        .next()
        .context("missing mode (throughput|handshakes|idle|latency)")?;
    let mut args = Args::parse(argv)?;
    procfs::raise_nofile(1 << 16)?;
    let common = Common::from_args(&mut args)?;
    let result = match mode.as_str() {
        "throughput" => throughput(&common, &mut args)?,
        "handshakes" => handshakes(&common, &mut args)?,
        "idle" => idle(&common, &mut args)?,
        "latency" => latency(&common, &mut args)?,
        other => bail!("unknown mode `{other}`"),
    };
    println!("result {result}");
    Ok(())
}

/// How to reach the relay (or the fake DC).
struct Common {
    target: SocketAddr,
    /// `None`: talk to the fake DC directly.
    transport: Option<Transport>,
    secrets: Vec<Secret>,
    timeout: Duration,
    /// `--framed`: messages are padded-intermediate frames, not raw bytes.
    framed: bool,
    /// `--hello-len`: the fake-TLS ClientHello record's padded length (0: unpadded).
    hello_len: usize,
}

impl Common {
    fn from_args(args: &mut Args) -> Result<Common> {
        let target = args.need("target")?;
        let mode: String = args.need("mode")?;
        let domain: String = args.get("domain", "bench.example.org".to_owned())?;
        let transport = match mode.as_str() {
            "dd" => Some(Transport::Secure),
            "tls" | "ee" => Some(Transport::FakeTls { domain }),
            "direct" => None,
            other => bail!("--mode {other}: expected dd, tls or direct"),
        };
        let mut secrets = Vec::new();
        if let Some(file) = args.opt::<String>("secrets")? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                secrets.push(
                    line.parse::<Secret>()
                        .map_err(|e| anyhow::anyhow!("{file}: secret `{line}`: {e}"))?,
                );
            }
        }
        if let Some(secret) = args.opt::<String>("secret")? {
            secrets.push(
                secret
                    .parse::<Secret>()
                    .map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
            );
        }
        if transport.is_some() && secrets.is_empty() {
            bail!("--secrets FILE or --secret HEX is needed for --mode {mode}");
        }
        let timeout = Duration::from_secs_f64(args.get("timeout-secs", 10.0)?);
        let framed = args.flag("framed");
        let hello_len: usize = args.get("hello-len", 0)?;
        if framed && transport.is_none() {
            bail!("--framed needs --mode dd or tls");
        }
        Ok(Common {
            target,
            transport,
            secrets,
            timeout,
            framed,
            hello_len,
        })
    }

    /// Connects and handshakes as user `user` (index into the secrets).
    fn connect(&self, user: usize) -> io::Result<Conn> {
        self.connect_from(user, None)
    }

    /// [`Common::connect`] from local address `source` (any, when `None`).
    fn connect_from(&self, user: usize, source: Option<Ipv4Addr>) -> io::Result<Conn> {
        let Some(transport) = &self.transport else {
            return Direct::connect(self.target, self.timeout).map(|d| Conn::Direct(Box::new(d)));
        };
        let secret = self.secrets[user % self.secrets.len()].clone();
        let mut options = ClientOptions::new(secret, transport.clone());
        options.timeout = self.timeout;
        options.hello_len = self.hello_len;
        let client = match source {
            None => MtprotoClient::connect(self.target, &options)?,
            Some(ip) => {
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
                socket.connect_timeout(&self.target.into(), self.timeout)?;
                MtprotoClient::handshake(socket.into(), &options, &[])?
            }
        };
        // Bounds every later read and write too, so a stalled relay ends a run with an error
        // instead of hanging it.
        client.set_read_timeout(Some(self.timeout))?;
        client.stream().set_write_timeout(Some(self.timeout))?;
        Ok(Conn::Proxy(Box::new(client)))
    }

    /// A user index picked uniformly at random.
    fn random_user(&self) -> usize {
        rand::rng().random_range(0..self.secrets.len().max(1))
    }
}

/// A connection through the relay, or straight to the fake DC.
enum Conn {
    Proxy(Box<MtprotoClient>),
    Direct(Box<Direct>),
}

impl Conn {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Proxy(c) => c.send(data),
            Conn::Direct(d) => d.send(data),
        }
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Conn::Proxy(c) => c.recv_exact(buf),
            Conn::Direct(d) => d.recv_exact(buf),
        }
    }

    /// Splits into a reader and a writer usable from different threads.
    fn split(self) -> io::Result<(ConnReader, ConnWriter)> {
        Ok(match self {
            Conn::Proxy(c) => {
                let (reader, writer) = c.split();
                (ConnReader::Proxy(reader), ConnWriter::Proxy(writer))
            }
            Conn::Direct(d) => {
                let Direct { reader, writer } = *d;
                (ConnReader::Direct(reader), ConnWriter::Direct(writer))
            }
        })
    }

    /// Sends `frame` (as one padded-intermediate frame when `framed`) and checks that
    /// exactly it comes back.
    fn echo(&mut self, frame: &[u8], scratch: &mut Vec<u8>, framed: bool) -> io::Result<()> {
        if framed {
            let mut wire = Vec::with_capacity(frame.len() + 7);
            encode_frame(&mut wire, frame);
            self.send(&wire)?;
            let mut header = [0u8; 4];
            self.recv_exact(&mut header)?;
            let len = frame_len(header)?;
            scratch.resize(len, 0);
            self.recv_exact(scratch)?;
            scratch.truncate(len - len % 4);
        } else {
            self.send(frame)?;
            scratch.resize(frame.len(), 0);
            self.recv_exact(scratch)?;
        }
        if scratch[..] != *frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "echoed frame differs from the one sent",
            ));
        }
        Ok(())
    }
}

/// The receiving half of a [`Conn`].
enum ConnReader {
    Proxy(ClientReader),
    Direct(DirectReader),
}

impl ConnReader {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            ConnReader::Proxy(r) => r.set_read_timeout(timeout),
            ConnReader::Direct(r) => r.stream.set_read_timeout(timeout),
        }
    }

    /// Up to `buf.len()` decrypted bytes; 0 at the end of the stream.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ConnReader::Proxy(r) => r.recv(buf),
            ConnReader::Direct(r) => r.recv(buf),
        }
    }

    /// Exactly `buf.len()` decrypted bytes.
    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            ConnReader::Proxy(r) => r.recv_exact(buf),
            ConnReader::Direct(r) => {
                r.stream.read_exact(buf)?;
                r.decrypt.apply(buf);
                Ok(())
            }
        }
    }

    /// The next padded-intermediate frame into `buf` (grown as needed); its payload length
    /// (padding stripped), or `None` at the end of the stream between frames.
    fn recv_frame(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut header = [0u8; 4];
        if self.recv(&mut header[..1])? == 0 {
            return Ok(None);
        }
        self.recv_exact(&mut header[1..])?;
        let len = frame_len(header)?;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        self.recv_exact(&mut buf[..len])?;
        Ok(Some(len - len % 4))
    }
}

/// The sending half of a [`Conn`].
enum ConnWriter {
    Proxy(ClientWriter),
    Direct(DirectWriter),
}

impl ConnWriter {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            ConnWriter::Proxy(w) => w.send(data),
            ConnWriter::Direct(w) => w.send(data),
        }
    }

    /// Half-closes: the other side sees the end of the stream.
    fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ConnWriter::Proxy(w) => w.shutdown(),
            ConnWriter::Direct(w) => w.stream.shutdown(std::net::Shutdown::Write),
        }
    }
}

/// A client of the fake DC itself: a DC-side obfuscated2 header (what the relay sends), then
/// AES-CTR both ways. The baseline for "added" latency, and what `relay-floor` forwards.
struct Direct {
    reader: DirectReader,
    writer: DirectWriter,
}

/// [`Direct`]'s receiving half: the DC → client keystream.
struct DirectReader {
    stream: TcpStream,
    decrypt: AesCtr,
}

/// [`Direct`]'s sending half: the client → DC keystream.
struct DirectWriter {
    stream: TcpStream,
    encrypt: AesCtr,
    scratch: Vec<u8>,
}

impl Direct {
    fn connect(target: SocketAddr, timeout: Duration) -> io::Result<Direct> {
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let leg = obfs2::dc_header(&mut rand::rng(), ProtoTag::PaddedIntermediate, 2, None);
        stream.write_all(&leg.wire)?;
        Ok(Direct {
            reader: DirectReader {
                stream: stream.try_clone()?,
                decrypt: leg.decrypt,
            },
            writer: DirectWriter {
                stream,
                encrypt: leg.encrypt,
                scratch: Vec::new(),
            },
        })
    }

    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.writer.send(data)
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.reader.stream.read_exact(buf)?;
        self.reader.decrypt.apply(buf);
        Ok(())
    }
}

impl DirectReader {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        self.decrypt.apply(&mut buf[..n]);
        Ok(n)
    }
}

impl DirectWriter {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.extend_from_slice(data);
        self.encrypt.apply(&mut self.scratch);
        self.stream.write_all(&self.scratch)
    }
}

/// Largest frame a relay in middle mode accepts (2 MiB), padding included.
const MAX_FRAME: usize = 2 << 20;
/// The payload of the frame that ends a framed throughput connection: the pattern's bytes are
/// all below 251, so it never appears in the pattern.
const FIN: [u8; 4] = [0xff; 4];
/// Framed, the most bytes a connection's writer has sent that have not come back yet: a
/// relay in middle mode drops a client whose answers queue up (4 MiB), as an echo client
/// writing without bound would make them.
const FRAMED_WINDOW: usize = 1 << 20;

/// Appends one padded-intermediate frame holding `payload` to `out`: the length (payload plus
/// 0..3 random padding bytes), the payload, the padding.
fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let mut rng = rand::rng();
    let pad = rng.random_range(0..4usize);
    out.extend_from_slice(&((payload.len() + pad) as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend((0..pad).map(|_| rng.random::<u8>()));
}

/// The length field of a received frame, checked: non-zero, within [`MAX_FRAME`], quick-ack
/// bit clear.
fn frame_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if !(4..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("echoed frame length {len:#x} out of range"),
        ));
    }
    Ok(len)
}

/// `len` bytes of the pattern, plus a period so any offset can be sliced.
fn pattern(len: usize) -> Vec<u8> {
    (0..len + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

/// Prints a marker line for the orchestrator at once.
fn mark(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn secs(args: &mut Args, name: &str, default: f64) -> Result<Duration> {
    let s: f64 = args.get(name, default)?;
    if !(0.0..=3600.0).contains(&s) {
        bail!("--{name} {s}: expected 0..=3600 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// N connections streaming frames both ways; bytes echoed in the window.
fn throughput(common: &Common, args: &mut Args) -> Result<Value> {
    let conns: usize = args.need("conns")?;
    let frame: usize = args.need("frame")?;
    let duration = secs(args, "duration", 3.0)?;
    let warmup = secs(args, "warmup", 0.3)?;
    let max_bytes: u64 = args.get("max-bytes", u64::MAX)?;
    let rate: Option<f64> = args.opt("rate")?;
    let lax_close = args.flag("lax-close");
    args.finish()?;
    if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of bytes per second");
    }
    // Each writer's share of the rate.
    let per_conn = rate.map(|r| r / conns.max(1) as f64);
    if conns == 0 || frame == 0 {
        bail!("throughput needs --conns ≥ 1 and --frame ≥ 1");
    }
    let framed = common.framed;
    if framed && (!frame.is_multiple_of(4) || frame > MAX_FRAME - 3) {
        bail!("--framed needs a --frame that is a multiple of 4, at most 2 MiB");
    }
    let pat = Arc::new(pattern(frame.max(RECV_BUF)));
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..conns).map(|_| Arc::default()).collect();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (i, counter) in counters.iter().enumerate() {
        let (mut reader, mut writer) = common
            .connect(0)
            .with_context(|| format!("connection {i}: handshake"))?
            .split()?;
        let (pat_w, pat_r, stop_w) = (pat.clone(), pat.clone(), stop.clone());
        let echoed = counter.clone();
        // Framed, the writer ends with a FIN frame and stays open until every echo is read
        // (a relay in middle mode may close a half-closed client before the echoes arrive).
        writers.push(thread::spawn(
            move || -> io::Result<(u64, Option<ConnWriter>)> {
                let mut sent = 0usize;
                let mut wire = Vec::with_capacity(frame + 8);
                let started = Instant::now();
                while !stop_w.load(Ordering::Relaxed) {
                    if framed && sent - echoed.load(Ordering::Relaxed) as usize > FRAMED_WINDOW {
                        thread::sleep(Duration::from_micros(100));
                        continue;
                    }
                    let at = sent % PERIOD;
                    if framed {
                        wire.clear();
                        encode_frame(&mut wire, &pat_w[at..at + frame]);
                        writer.send(&wire)?;
                    } else {
                        writer.send(&pat_w[at..at + frame])?;
                    }
                    sent += frame;
                    if let Some(rate) = per_conn {
                        let due = Duration::from_secs_f64(sent as f64 / rate);
                        // Short sleeps, so a stop is noticed within 50 ms.
                        while let Some(wait) = due.checked_sub(started.elapsed()) {
                            if stop_w.load(Ordering::Relaxed) {
                                break;
                            }
                            thread::sleep(wait.min(Duration::from_millis(50)));
                        }
                    }
                }
                if framed {
                    wire.clear();
                    encode_frame(&mut wire, &FIN);
                    writer.send(&wire)?;
                    return Ok((sent as u64, Some(writer)));
                }
                match writer.shutdown() {
                    Err(e) if !(lax_close && closed_early(&e)) => return Err(e),
                    _ => {}
                }
                Ok((sent as u64, None))
            },
        ));
        let counter = counter.clone();
        let stop_r = stop.clone();
        readers.push(thread::spawn(move || -> io::Result<u64> {
            reader.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut buf = vec![0u8; RECV_BUF];
            let mut got = 0usize;
            if framed {
                loop {
                    let frame_read = match reader.recv_frame(&mut buf) {
                        Err(e)
                            if lax_close && stop_r.load(Ordering::Relaxed) && closed_early(&e) =>
                        {
                            return Ok(got as u64);
                        }
                        other => other?,
                    };
                    let Some(n) = frame_read else {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the stream ended before the FIN frame came back",
                        ));
                    };
                    if buf[..n] == FIN {
                        return Ok(got as u64);
                    }
                    let at = got % PERIOD;
                    if n != frame || buf[..n] != pat_r[at..at + n] {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "echoed frame of {n} bytes differs from the one sent, at byte {got}"
                            ),
                        ));
                    }
                    got += n;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            loop {
                let n = match reader.recv(&mut buf) {
                    Ok(n) => n,
                    // After the window only: the proxy ended the connection its own way.
                    Err(e) if lax_close && stop_r.load(Ordering::Relaxed) && closed_early(&e) => 0,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    return Ok(got as u64);
                }
                let at = got % PERIOD;
                if buf[..n] != pat_r[at..at + n] {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "echo differs from what was sent, within bytes {got}..{}",
                            got + n
                        ),
                    ));
                }
                got += n;
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    thread::sleep(warmup);
    let (bytes0, cpu0, t0) = (total(), procfs::rusage_self(), Instant::now());
    mark("begin");
    while t0.elapsed() < duration && total() - bytes0 < max_bytes {
        thread::sleep(Duration::from_millis(10));
    }
    let (bytes1, cpu1, window) = (total(), procfs::rusage_self(), t0.elapsed());
    mark("end");
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut open = Vec::new();
    for w in writers {
        let (bytes, writer) = join(w).context("writer")?;
        sent += bytes;
        open.extend(writer);
    }
    let mut received = 0;
    for r in readers {
        received += join(r).context("reader")?;
    }
    drop(open);
    if received != sent && !lax_close {
        bail!("sent {sent} bytes but {received} came back");
    }
    Ok(json!({
        "unechoed_after_window": sent.saturating_sub(received),
        "conns": conns,
        "frame": frame,
        "window_secs": window.as_secs_f64(),
        "bytes_echoed": bytes1 - bytes0,
        "total_echoed": received,
        "cpu_secs": cpu1 - cpu0,
    }))
}

/// Whether `e` is a connection ended or stalled by the far side rather than a broken echo.
fn closed_early(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

fn join<T>(handle: thread::JoinHandle<io::Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?
        .map_err(anyhow::Error::from)
}

/// M workers: connect, handshake, one echoed frame, close, again.
fn handshakes(common: &Common, args: &mut Args) -> Result<Value> {
    let workers: usize = args.get("workers", 32)?;
    let duration = secs(args, "duration", 3.0)?;
    let frame: usize = args.get("frame", 128)?;
    let pick: String = args.get("user", "random".to_owned())?;
    let source_base: Option<Ipv4Addr> = args.opt("source-base")?;
    args.finish()?;
    let last = common.secrets.len().saturating_sub(1);
    let sticky = pick == "sticky";
    let user = move || match pick.as_str() {
        "first" => Ok(0),
        "last" => Ok(last),
        "random" | "sticky" => Ok(common.random_user()),
        other => Err(anyhow::anyhow!(
            "--user {other}: expected random, first, last or sticky"
        )),
    };
    user()?;
    let pat = pattern(frame);
    let payload = &pat[..frame];
    let ok = AtomicU64::new(0);
    let late = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let cpu0 = procfs::rusage_self();
    mark("begin");
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let window = thread::scope(|scope| {
        for worker in 0..workers.max(1) {
            let source =
                source_base.map(|base| Ipv4Addr::from(u32::from(base).wrapping_add(worker as u32)));
            let (user, ok, late, failed, first_error) = (&user, &ok, &late, &failed, &first_error);
            scope.spawn(move || {
                let mut scratch = Vec::new();
                let mine = user().unwrap_or(0);
                while Instant::now() < deadline {
                    let who = if sticky { mine } else { user().unwrap_or(0) };
                    let outcome = common
                        .connect_from(who, source)
                        .and_then(|mut c| c.echo(payload, &mut scratch, common.framed));
                    match outcome {
                        Ok(()) if Instant::now() < deadline => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(()) => late.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        mark("end");
        t0.elapsed()
    });
    let cpu1 = procfs::rusage_self();
    let ok = ok.into_inner();
    if ok == 0 {
        bail!(
            "no handshake completed; first error: {}",
            first_error
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_default()
        );
    }
    Ok(json!({
        "workers": workers,
        "window_secs": window.as_secs_f64(),
        "handshakes": ok,
        "completed_after_window": late.into_inner(),
        "failed": failed.into_inner(),
        "first_error": first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
        "cpu_secs": cpu1 - cpu0,
    }))
}

/// Opens K connections (handshake and one echo each) and holds them idle.
fn idle(common: &Common, args: &mut Args) -> Result<Value> {
    let conns: usize = args.need("conns")?;
    let workers: usize = args.get("workers", 16)?;
    let hold = secs(args, "hold", 30.0)?;
    let frame: usize = args.get("frame", 64)?;
    args.finish()?;
    let pat = pattern(frame);
    let payload = &pat[..frame];
    let held = Mutex::new(Vec::with_capacity(conns));
    let next = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let t0 = Instant::now();
    thread::scope(|scope| {
        for _ in 0..workers.clamp(1, conns.max(1)) {
            scope.spawn(|| {
                let mut scratch = Vec::new();
                // Stop opening after the first failures: they usually mean a limit was hit.
                while next.fetch_add(1, Ordering::Relaxed) < conns as u64
                    && failed.load(Ordering::Relaxed) < 100
                {
                    match common
                        .connect(0)
                        .and_then(|mut c| c.echo(payload, &mut scratch, common.framed).map(|()| c))
                    {
                        Ok(c) => held.lock().unwrap_or_else(|p| p.into_inner()).push(c),
                        Err(e) => {
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert_with(|| e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let opened = held.lock().unwrap_or_else(|p| p.into_inner()).len();
    let open_secs = t0.elapsed().as_secs_f64();
    mark(&format!("begin {opened}"));
    // Held until the orchestrator closes our stdin (it has measured), or `hold` passes.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = io::stdin().lock().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(hold);
    mark("end");
    let first_error = first_error.into_inner().unwrap_or_else(|p| p.into_inner());
    if opened == 0 {
        bail!("no connection opened; first error: {first_error:?}");
    }
    Ok(json!({
        "wanted": conns,
        "opened": opened,
        "failed": failed.into_inner(),
        "first_error": first_error,
        "open_secs": open_secs,
    }))
}

/// Sequential request/response round trips on one connection.
fn latency(common: &Common, args: &mut Args) -> Result<Value> {
    let duration = secs(args, "duration", 2.0)?;
    let rounds: usize = args.get("rounds", 100_000)?;
    let frame: usize = args.get("frame", 1024)?;
    args.finish()?;
    let pat = pattern(frame);
    let payload = &pat[..frame];
    let mut conn = common.connect(0).context("connect")?;
    let mut scratch = Vec::new();
    for _ in 0..50 {
        conn.echo(payload, &mut scratch, common.framed)?;
    }
    let mut samples = Vec::with_capacity(rounds.min(1 << 20));
    mark("begin");
    let t0 = Instant::now();
    while samples.len() < rounds && t0.elapsed() < duration {
        let t = Instant::now();
        conn.echo(payload, &mut scratch, common.framed)?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    mark("end");
    if samples.is_empty() {
        bail!("no round trip in the window");
    }
    samples.sort_unstable();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)] as f64 / 1e3;
    Ok(json!({
        "rounds": samples.len(),
        "frame": frame,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": samples.last().copied().unwrap_or(0) as f64 / 1e3,
        "mean_us": samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64 / 1e3,
    }))
}
