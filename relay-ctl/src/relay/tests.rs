//! The accept, front and close decisions of [`super::serve`], on in-memory connections with a
//! test-driven mask host, mostly in paused time. They mirror what the integration tests
//! (probe_suite, relay_probes, split_handshakes) observe through processes.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rand::SeedableRng as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc::UnboundedReceiver,
    task::JoinHandle,
    time::Instant,
};

use super::{
    RelayContext,
    accounts::Accounts,
    context::RelayUser,
    handshake,
    hints::Hints,
    intake::Intake,
    mask_flight::MaskFlight,
    memory::{Ending, MemMask, MemStream, pair},
    stats::RelayStats,
};
use crate::{
    admission::{
        Admission, BanRecord, BanTarget, Enforcement,
        capacity::{Bounds, Capacity, Slot, handshakes::HandshakeBounds},
        misuse::Misuse,
    },
    config::{Config, Origin},
    state_dir::StateDir,
    telemetry::{Metric, Samples},
};
use relay_common::BanReason;
use relay_proto::{
    ProtoTag, Secret,
    obfs2::{self, HEADER_LEN},
    replay::ReplayMemory,
    tls::{build_client_hello, record::encode_records},
};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const STRANGER: &str = "fedcba9876543210fedcba9876543210";
const DOMAIN: &str = "example.com";
const GRACE: Duration = Duration::from_millis(250);
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\r\n";

fn secret() -> Secret {
    Secret::from_hex(SECRET).expect("secret")
}

fn stranger() -> Secret {
    Secret::from_hex(STRANGER).expect("secret")
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

fn tls_hello(secret: &Secret, domain: &str) -> Vec<u8> {
    build_client_hello(&mut rand::rng(), secret, domain, unix_now())
}

fn secure_header(secret: &Secret) -> Vec<u8> {
    obfs2::client_header(&mut rand::rng(), secret, ProtoTag::PaddedIntermediate, 2)
        .wire
        .to_vec()
}

/// Where mask connections go.
enum Mask {
    /// Fronting on, the mask accepts.
    Up,
    /// Fronting on, the mask refuses.
    Down,
    /// `[tls] fronting = false`.
    Off,
}

/// What a test changes from the defaults.
struct Options {
    modes: &'static str,
    mask: Mask,
    handshake_secs: u64,
    on_limit: &'static str,
    /// Extra lines in the user's `[[users]]` entry.
    user: &'static str,
    max_handshakes: usize,
    /// A DC address override (the good-handshake test's loopback DC).
    dc: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            modes: r#"["tls"]"#,
            mask: Mask::Up,
            handshake_secs: 5,
            on_limit: "close",
            user: "",
            max_handshakes: 64,
            dc: None,
        }
    }
}

/// A relay context over an in-memory mask, and the slots connections are admitted with.
struct Relay {
    ctx: Arc<RelayContext<MemMask>>,
    /// The far ends of the mask connections the relay opens, in order.
    masks: UnboundedReceiver<MemStream>,
    capacity: Arc<Capacity>,
    /// The admission the misuse detector bans through.
    admission: Arc<tokio::sync::RwLock<Admission>>,
    /// `[misuse] timeout`: timeout-class offences per window that ban a source.
    timeout_threshold: u32,
    _state: tempfile::TempDir,
}

impl Relay {
    fn start(options: Options) -> Relay {
        let state = tempfile::tempdir().expect("tempdir");
        let dc = options
            .dc
            .map(|addr| format!("[upstream.dc]\n2 = [\"{addr}\"]\n"))
            .unwrap_or_default();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:443\"]\nmodes = {modes}\non_limit = \"{on_limit}\"\n\
             [tls]\ndomain = \"{DOMAIN}\"\nmask = \"127.0.0.1:9\"\nfronting = {fronting}\n\
             learn_flight = false\n[timeouts]\nhandshake_secs = {handshake}\n\
             [state]\ndir = {dir:?}\n{dc}[[users]]\nname = \"alice\"\nsecret = \"{SECRET}\"\n\
             {user}\n",
            modes = options.modes,
            on_limit = options.on_limit,
            fronting = !matches!(options.mask, Mask::Off),
            handshake = options.handshake_secs,
            dir = state.path().display().to_string(),
            user = options.user,
        );
        let config = Config::parse(&text, Origin::Embedded).expect("config");
        let (mask, masks) = MemMask::up();
        let mask = match options.mask {
            Mask::Up => Some(mask),
            Mask::Down => Some(MemMask::down()),
            Mask::Off => None,
        };
        let admission = Arc::new(tokio::sync::RwLock::new(Admission::new(
            Enforcement::Userspace {
                reason: "test".into(),
            },
        )));
        let replay =
            ReplayMemory::with_rng(config.replay.limits(), rand::rngs::StdRng::seed_from_u64(1));
        let flight = MaskFlight::start(
            &config,
            StateDir::open_own(state.path()).expect("state dir"),
        );
        let ctx = RelayContext::new(
            &config,
            vec![RelayUser {
                name: "alice".into(),
                secret: secret(),
            }],
            &Accounts::default(),
            Arc::new(Mutex::new(replay)),
            Arc::new(Hints::default()),
            Arc::new(Misuse::new(&config.misuse, Arc::clone(&admission))),
            Arc::new(RelayStats::default()),
            Arc::new(flight),
        )
        .with_mask(mask);
        let handshakes = HandshakeBounds {
            total: options.max_handshakes,
            per_source: 64,
            per_prefix: 64,
        };
        let capacity = Capacity::new(Bounds {
            connections: 64,
            per_source: 64,
            handshakes,
        });
        Relay {
            ctx: Arc::new(ctx),
            masks,
            capacity,
            admission,
            timeout_threshold: config.misuse.timeout,
            _state: state,
        }
    }

    fn slot(&self, peer: IpAddr) -> Slot {
        self.capacity.try_admit(peer, false).expect("admitted")
    }

    /// A client from `peer` connected now, served by its own task.
    fn connect(&self, peer: &str) -> (MemStream, JoinHandle<()>) {
        let peer: SocketAddr = peer.parse().expect("peer");
        let slot = self.slot(peer.ip());
        let (client, served) = pair();
        let task = tokio::spawn(super::serve(served, peer, slot, Arc::clone(&self.ctx)));
        (client, task)
    }

    /// The next mask connection, if the relay opens one within `wait`.
    async fn mask_within(&mut self, wait: Duration) -> Option<MemStream> {
        tokio::time::timeout(wait, self.masks.recv())
            .await
            .ok()
            .flatten()
    }

    async fn next_mask(&mut self) -> MemStream {
        self.mask_within(Duration::from_secs(60))
            .await
            .expect("a mask connection")
    }

    /// The relay's counter `metric` with label values `labels`, as exported.
    fn metric(&self, metric: Metric, labels: &[&str]) -> u64 {
        let mut samples = Samples::default();
        self.ctx.stats.export(&mut samples);
        samples.get(metric, labels)
    }

    fn failures(&self, name: &str) -> u64 {
        self.metric(Metric::HandshakeFailures, &[name])
    }

    fn fronted(&self, reason: &str) -> u64 {
        self.metric(Metric::FrontedConnections, &[reason])
    }

    fn mask_legs(&self, outcome: &str) -> u64 {
        self.metric(Metric::MaskLegs, &[outcome])
    }

    /// The ban on the address `peer`, if any.
    async fn ban_on(&self, peer: &str) -> Option<BanRecord> {
        let addr: IpAddr = peer.parse().expect("ip");
        self.admission
            .read()
            .await
            .bans()
            .find(|ban| ban.target == BanTarget::Addr(addr))
            .cloned()
    }
}

/// Reads from the mask until it has `n` bytes.
async fn mask_reads(mask: &mut MemStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    mask.read_exact(&mut got).await.expect("mask reads");
    got
}

/// Lets every task run until it waits on something (time stands still while paused).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// `bytes` sent, fronted at once: the mask gets exactly them, the relay says nothing itself,
/// the client gets the mask's answer and its FIN.
async fn fronted_at_once(relay: &mut Relay, bytes: &[u8], failure: &str) {
    let started = Instant::now();
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(bytes).await.expect("send");
    let mut mask = relay.next_mask().await;
    assert!(started.elapsed() < GRACE, "{failure}: waited for the grace");
    assert_eq!(mask_reads(&mut mask, bytes.len()).await, bytes);
    assert!(
        client.received().is_empty(),
        "{failure}: the relay answered"
    );
    mask.write_all(HTTP_RESPONSE).await.expect("answer");
    drop(mask);
    assert_eq!(
        client.read_to_end().await,
        (HTTP_RESPONSE.to_vec(), Ending::Fin)
    );
    drop(client);
    task.await.expect("served");
    assert_eq!(relay.failures(failure), 1, "{failure}");
    assert_eq!(relay.fronted(failure), 1, "{failure}");
}

#[tokio::test(start_paused = true)]
async fn bad_secret_wrong_sni_and_stale_timestamp_are_fronted() {
    let stale = build_client_hello(&mut rand::rng(), &secret(), DOMAIN, unix_now() - 3600);
    for (failure, hello) in [
        ("bad_secret", tls_hello(&stranger(), DOMAIN)),
        ("unknown_sni", tls_hello(&secret(), "other.example.org")),
        ("bad_timestamp", stale),
    ] {
        let mut relay = Relay::start(Options::default());
        fronted_at_once(&mut relay, &hello, failure).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_obfuscated2_header_of_another_secret_is_fronted() {
    let mut relay = Relay::start(Options {
        modes: r#"["secure", "tls"]"#,
        ..Options::default()
    });
    let mut header = secure_header(&stranger());
    header.extend_from_slice(b"and some payload");
    fronted_at_once(&mut relay, &header, "bad_secret").await;
}

#[tokio::test(start_paused = true)]
async fn http_and_non_tls_bytes_are_fronted_at_once() {
    let mut relay = Relay::start(Options::default());
    fronted_at_once(&mut relay, HTTP_REQUEST, "garbage").await;
    let mut relay = Relay::start(Options::default());
    fronted_at_once(&mut relay, b"\x05\x01\x00", "garbage").await;
}

#[tokio::test(start_paused = true)]
async fn a_mode_that_is_off_is_fronted() {
    // A genuine dd header reaching a TLS-only relay.
    let mut relay = Relay::start(Options::default());
    let header = secure_header(&secret());
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(&header).await.expect("send");
    let mut mask = relay.next_mask().await;
    assert_eq!(mask_reads(&mut mask, header.len()).await, header);
    drop(mask);
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    drop(client);
    task.await.expect("served");
    assert_eq!(relay.fronted("garbage") + relay.fronted("mode_disabled"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replayed_handshake_is_fronted_never_relayed() {
    let mut tls_opening = tls_hello(&secret(), DOMAIN);
    tls_opening.extend_from_slice(&tls_header_record(&secret()));
    for (modes, opening) in [
        (r#"["tls"]"#, tls_opening),
        (r#"["secure"]"#, secure_header(&secret())),
    ] {
        let mut relay = Relay::start(Options {
            modes,
            ..Options::default()
        });
        // The genuine connection: its handshake is accepted.
        let (mut genuine, mut served) = pair();
        let mut intake = Intake::new(&relay.ctx, Arc::new(Default::default()), Vec::new());
        genuine.write_all(&opening).await.expect("send");
        let mut answered = false;
        handshake::accept(
            &mut served,
            "192.0.2.1".parse().expect("ip"),
            &relay.ctx,
            &mut intake,
            &mut answered,
        )
        .await
        .expect("the genuine handshake");
        // The capture, replayed: fronted with every byte, no server flight.
        fronted_at_once(&mut relay, &opening, "replay").await;
        assert_eq!(relay.metric(Metric::ReplaysDetected, &[]), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_reaches_the_mask_after_the_grace() {
    let mut relay = Relay::start(Options::default());
    let started = Instant::now();
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    let mut mask = relay.next_mask().await;
    assert_eq!(started.elapsed(), GRACE);
    assert_eq!(relay.mask_legs("opened"), 1);
    // From then on the prober talks to the mask.
    client.write_all(HTTP_REQUEST).await.expect("send");
    assert_eq!(
        mask_reads(&mut mask, HTTP_REQUEST.len()).await,
        HTTP_REQUEST
    );
    mask.write_all(HTTP_RESPONSE).await.expect("answer");
    drop(mask);
    assert_eq!(
        client.read_to_end().await,
        (HTTP_RESPONSE.to_vec(), Ending::Fin)
    );
    drop(client);
    task.await.expect("served");
    assert_eq!(relay.fronted("garbage"), 1);
}

#[tokio::test(start_paused = true)]
async fn bytes_after_the_grace_follow_to_the_mask_and_its_answer_ends_the_handshake() {
    let mut relay = Relay::start(Options::default());
    let started = Instant::now();
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(&[0x16, 0x03, 0x01]).await.expect("send");
    let mut mask = relay.next_mask().await;
    assert_eq!(started.elapsed(), GRACE);
    assert_eq!(mask_reads(&mut mask, 3).await, [0x16, 0x03, 0x01]);
    // Still short of a hello: forwarded as it arrives.
    client.write_all(&[0x00, 0x10]).await.expect("send more");
    assert_eq!(mask_reads(&mut mask, 2).await, [0x00, 0x10]);
    // The mask answers first: the connection is fronted on that answer, long before the
    // relay's own deadline.
    mask.write_all(HTTP_RESPONSE).await.expect("answer");
    drop(mask);
    assert_eq!(
        client.read_to_end().await,
        (HTTP_RESPONSE.to_vec(), Ending::Fin)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(client);
    task.await.expect("served");
    assert_eq!(relay.failures("incomplete"), 1);
    assert_eq!(relay.fronted("incomplete"), 1);
}

/// A prober that dribbles a plausible opening (every byte still leaves a handshake possible)
/// gets its mask connection the grace after its first byte, as a stalled one does, instead of
/// being held until the relay's own deadline; the mask's answer ends it.
#[tokio::test(start_paused = true)]
async fn a_dribbled_opening_reaches_the_mask_the_grace_after_its_first_byte() {
    for (modes, opening) in [
        (r#"["tls"]"#, tls_hello(&stranger(), DOMAIN)),
        (r#"["secure", "tls"]"#, secure_header(&stranger())),
    ] {
        let mut relay = Relay::start(Options {
            modes,
            ..Options::default()
        });
        let (mut client, task) = relay.connect("192.0.2.1:40000");
        // Quiet at first: the grace is measured from the first byte, not from the connect.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first_byte = Instant::now();
        let mut chunks = opening.chunks(10);
        let mut sent = 0;
        let mut mask = loop {
            let chunk = chunks.next().expect("the opening outlasts the grace");
            client.write_all(chunk).await.expect("send");
            sent += chunk.len();
            if let Some(mask) = relay.mask_within(Duration::from_millis(100)).await {
                break mask;
            }
        };
        assert_eq!(first_byte.elapsed(), GRACE, "{modes}: mask leg opened late");
        assert_eq!(
            mask_reads(&mut mask, sent).await,
            opening[..sent],
            "{modes}"
        );
        // Still short of a whole opening: forwarded as it arrives.
        let chunk = chunks.next().expect("more of the opening");
        client.write_all(chunk).await.expect("send more");
        assert_eq!(mask_reads(&mut mask, chunk.len()).await, chunk, "{modes}");
        mask.write_all(HTTP_RESPONSE).await.expect("answer");
        drop(mask);
        assert_eq!(
            client.read_to_end().await,
            (HTTP_RESPONSE.to_vec(), Ending::Fin),
            "{modes}"
        );
        drop(client);
        task.await.expect("served");
        assert_eq!(relay.failures("incomplete"), 1, "{modes}");
        assert_eq!(relay.fronted("incomplete"), 1, "{modes}");
        assert_eq!(relay.mask_legs("opened"), 1, "{modes}");
    }
}

/// A genuine client whose opening arrives in parts, each within the grace of its first byte,
/// costs no mask connection.
#[tokio::test(start_paused = true)]
async fn an_opening_split_within_the_grace_opens_no_mask_leg() {
    let mut relay = Relay::start(Options {
        modes: r#"["secure", "tls"]"#,
        ..Options::default()
    });
    let header = secure_header(&secret());
    let (mut client, mut served) = pair();
    let mut intake = Intake::new(&relay.ctx, Arc::new(Default::default()), Vec::new());
    let ctx = Arc::clone(&relay.ctx);
    let accept = tokio::spawn(async move {
        let mut answered = false;
        handshake::accept(
            &mut served,
            "192.0.2.1".parse().expect("ip"),
            &ctx,
            &mut intake,
            &mut answered,
        )
        .await
        .map(|accepted| accepted.user)
    });
    for part in header.chunks(20) {
        client.write_all(part).await.expect("send");
        tokio::time::sleep(GRACE / 5).await;
    }
    assert_eq!(accept.await.expect("accept task"), Ok(0));
    assert!(relay.mask_within(Duration::from_secs(1)).await.is_none());
    assert_eq!(relay.mask_legs("opened"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_truncated_hello_ends_when_the_mask_ends_it() {
    let mut relay = Relay::start(Options::default());
    let hello = tls_hello(&secret(), DOMAIN);
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(&hello[..100]).await.expect("send");
    let mut mask = relay.next_mask().await;
    assert_eq!(mask_reads(&mut mask, 100).await, hello[..100]);
    // The mask closes without a word: so does the client's connection.
    drop(mask);
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    drop(client);
    task.await.expect("served");
    assert_eq!(relay.failures("incomplete"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_mask_reset_reaches_the_client_as_a_reset() {
    let mut relay = Relay::start(Options::default());
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(HTTP_REQUEST).await.expect("send");
    let mut mask = relay.next_mask().await;
    mask_reads(&mut mask, HTTP_REQUEST.len()).await;
    mask.write_all(b"partial").await.expect("answer");
    mask.reset();
    assert_eq!(
        client.read_to_end().await,
        (b"partial".to_vec(), Ending::Reset)
    );
    drop(client);
    task.await.expect("served");
}

#[tokio::test(start_paused = true)]
async fn a_client_closing_mid_hello_is_fronted_with_its_bytes() {
    let mut relay = Relay::start(Options::default());
    // A record header that promises more than is sent, then the client's FIN.
    let bytes = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x02];
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(&bytes).await.expect("send");
    client.shutdown().await.expect("half-close");
    let mut mask = relay.next_mask().await;
    assert_eq!(mask.read_to_end().await, (bytes.to_vec(), Ending::Fin));
    drop(mask);
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    task.await.expect("served");
    assert_eq!(relay.failures("closed"), 1);
    assert_eq!(relay.fronted("closed"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_times_out_onto_its_mask_connection() {
    let mut relay = Relay::start(Options {
        handshake_secs: 2,
        ..Options::default()
    });
    let started = Instant::now();
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    let mut mask = relay.next_mask().await;
    // The mask says nothing either; the relay's deadline hands the connection over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(relay.failures("timeout"), 1);
    assert_eq!(relay.fronted("timeout"), 1);
    assert!(relay.mask_within(Duration::from_secs(1)).await.is_none());
    client.write_all(b"late").await.expect("send");
    assert_eq!(mask_reads(&mut mask, 4).await, b"late");
    drop(mask);
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    assert!(started.elapsed() >= Duration::from_secs(2));
    drop(client);
    task.await.expect("served");
}

#[tokio::test(start_paused = true)]
async fn without_fronting_bad_connections_are_closed() {
    let mut relay = Relay::start(Options {
        mask: Mask::Off,
        handshake_secs: 1,
        ..Options::default()
    });
    // Silent: closed at the handshake timeout.
    let started = Instant::now();
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    task.await.expect("served");
    // Garbage and a bad hello: closed at once.
    for bytes in [HTTP_REQUEST.to_vec(), tls_hello(&stranger(), DOMAIN)] {
        let started = Instant::now();
        let (mut client, task) = relay.connect("192.0.2.2:40000");
        client.write_all(&bytes).await.expect("send");
        assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
        assert_eq!(started.elapsed(), Duration::ZERO);
        task.await.expect("served");
    }
    assert!(relay.masks.try_recv().is_err());
    assert_eq!(relay.fronted("garbage") + relay.fronted("timeout"), 0);
}

#[tokio::test(start_paused = true)]
async fn with_the_mask_down_bad_connections_are_closed_not_hung() {
    let relay = Relay::start(Options {
        mask: Mask::Down,
        handshake_secs: 1,
        ..Options::default()
    });
    for (bytes, bound) in [
        (HTTP_REQUEST.to_vec(), Duration::ZERO),
        (tls_hello(&stranger(), DOMAIN), Duration::ZERO),
        (Vec::new(), Duration::from_secs(1)),
    ] {
        let started = Instant::now();
        let (mut client, task) = relay.connect("192.0.2.1:40000");
        client.write_all(&bytes).await.expect("send");
        assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
        assert_eq!(started.elapsed(), bound);
        task.await.expect("served");
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_handshake_evicted_for_a_newer_one_is_fronted() {
    let mut relay = Relay::start(Options {
        max_handshakes: 1,
        ..Options::default()
    });
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    settle().await;
    // A newer handshake takes the only slot.
    let newer = relay.slot("192.0.2.2".parse().expect("ip"));
    let mut mask = relay.next_mask().await;
    assert_eq!(relay.failures("evicted"), 1);
    assert_eq!(relay.fronted("evicted"), 1);
    assert_eq!(relay.mask_legs("opened"), 0, "evicted before the grace");
    client.write_all(b"after").await.expect("send");
    assert_eq!(mask_reads(&mut mask, 5).await, b"after");
    drop((mask, newer));
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    drop(client);
    task.await.expect("served");
}

/// Leaving before the handshake is complete, and being evicted for a newer handshake, are how
/// handshake slots are starved: each counts as a `timeout` offence, and a source that keeps
/// doing either is banned for `timeout` when it reaches `[misuse] timeout`, not before.
#[tokio::test(start_paused = true)]
async fn early_closes_and_evictions_ban_their_source_for_timeout() {
    let relay = Relay::start(Options {
        mask: Mask::Off,
        max_handshakes: 1,
        ..Options::default()
    });
    let threshold = relay.timeout_threshold;
    assert!(threshold > 1, "a threshold the test can approach");

    // Closes before the hello is complete: with nothing sent, and with part of a record.
    let closer = "192.0.2.1";
    for i in 1..=threshold {
        assert_eq!(relay.ban_on(closer).await, None, "banned before close {i}");
        let (mut client, task) = relay.connect(&format!("{closer}:40000"));
        if i % 2 == 0 {
            client.write_all(&[0x16, 0x03, 0x01]).await.expect("send");
        }
        drop(client);
        task.await.expect("served");
    }
    assert_eq!(relay.failures("closed"), u64::from(threshold));
    let ban = relay.ban_on(closer).await.expect("the closer is banned");
    assert_eq!(ban.reason, BanReason::Timeout);
    assert_eq!(ban.count, threshold);

    // Silent handshakes evicted, each for a newer one from elsewhere.
    let holder = "192.0.2.2";
    for i in 1..=threshold {
        assert_eq!(
            relay.ban_on(holder).await,
            None,
            "banned before eviction {i}"
        );
        let (client, task) = relay.connect(&format!("{holder}:40000"));
        settle().await;
        let newer = relay.slot("198.51.100.1".parse().expect("ip"));
        task.await.expect("served");
        drop((client, newer));
    }
    assert_eq!(relay.failures("evicted"), u64::from(threshold));
    let ban = relay.ban_on(holder).await.expect("the holder is banned");
    assert_eq!(ban.reason, BanReason::Timeout);
    assert_eq!(ban.count, threshold);
    assert_eq!(relay.ban_on("198.51.100.1").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_pressured_handshake_gets_a_quarter_of_the_deadline() {
    let relay = Relay::start(Options {
        mask: Mask::Off,
        handshake_secs: 4,
        max_handshakes: 4,
        ..Options::default()
    });
    let held: Vec<Slot> = (1..=3)
        .map(|i| relay.slot(format!("192.0.2.{i}").parse().expect("ip")))
        .collect();
    let started = Instant::now();
    let (mut client, task) = relay.connect("192.0.2.9:40000");
    assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    task.await.expect("served");
    drop(held);
}

/// The fake-TLS opening of a genuine client: the hello, then (after the flight) the header in
/// an application-data record.
fn tls_header_record(secret: &Secret) -> Vec<u8> {
    let mut record = Vec::new();
    encode_records(&secure_header(secret), &mut record);
    record
}

/// Reads the relay's server flight (records up to the first application-data one).
async fn read_flight(client: &mut MemStream) -> Vec<u8> {
    let mut flight = Vec::new();
    loop {
        let mut head = [0u8; 5];
        client.read_exact(&mut head).await.expect("flight record");
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        let mut body = vec![0u8; len];
        client
            .read_exact(&mut body)
            .await
            .expect("flight record body");
        flight.extend_from_slice(&head);
        flight.extend_from_slice(&body);
        if head[0] == 0x17 {
            return flight;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn after_the_server_flight_failures_close_and_never_front() {
    // Silent after the flight: closed at the deadline; garbage after it: closed at once.
    for garbage in [None, Some(HTTP_REQUEST.to_vec())] {
        let mut relay = Relay::start(Options {
            handshake_secs: 1,
            ..Options::default()
        });
        let (mut client, task) = relay.connect("192.0.2.1:40000");
        client
            .write_all(&tls_hello(&secret(), DOMAIN))
            .await
            .expect("hello");
        let flight = read_flight(&mut client).await;
        assert_eq!(flight[..3], [0x16, 0x03, 0x03]);
        if let Some(garbage) = &garbage {
            client.write_all(garbage).await.expect("send");
        }
        assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
        task.await.expect("served");
        assert!(relay.masks.try_recv().is_err(), "the mask saw the client");
        assert_eq!(relay.failures("bad_after_flight"), 1);
        assert_eq!(relay.fronted("bad_after_flight"), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_verified_handshake_abandons_the_mask_connection() {
    for (modes, opening) in [
        (r#"["secure", "tls"]"#, secure_header(&secret())),
        (r#"["tls"]"#, tls_hello(&secret(), DOMAIN)),
    ] {
        let mut relay = Relay::start(Options {
            modes,
            ..Options::default()
        });
        let (mut client, mut served) = pair();
        let mut intake = Intake::new(&relay.ctx, Arc::new(Default::default()), Vec::new());
        let ctx = Arc::clone(&relay.ctx);
        let accept = tokio::spawn(async move {
            let mut answered = false;
            let accepted = handshake::accept(
                &mut served,
                "192.0.2.1".parse().expect("ip"),
                &ctx,
                &mut intake,
                &mut answered,
            )
            .await;
            (accepted, answered, served, intake)
        });
        // The first 32 bytes, a pause past the grace: the mask gets them meanwhile.
        client.write_all(&opening[..32]).await.expect("send");
        let mut mask = relay.next_mask().await;
        assert_eq!(mask_reads(&mut mask, 32).await, opening[..32]);
        client
            .write_all(&opening[32..])
            .await
            .expect("send the rest");
        if modes == r#"["tls"]"# {
            read_flight(&mut client).await;
            client
                .write_all(&tls_header_record(&secret()))
                .await
                .expect("header");
        }
        let (accepted, answered, _served, _intake) = accept.await.expect("accept task");
        let accepted = accepted.expect("the handshake verifies");
        assert_eq!(accepted.user, 0);
        assert_eq!(answered, modes == r#"["tls"]"#);
        // The mask connection is closed (not merely dropped with the intake), never having
        // seen the bytes that completed the handshake.
        let ended = tokio::time::timeout(Duration::from_secs(1), mask.read_to_end()).await;
        assert_eq!(ended.ok(), Some((Vec::new(), Ending::Fin)));
        assert_eq!(relay.mask_legs("opened"), 1);
        assert_eq!(relay.mask_legs("abandoned"), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn refused_by_a_user_limit_closes_or_fronts_as_configured() {
    // Disabled or expired: closed by default, fronted (obfuscated2 only) with on_limit front.
    for user in ["enabled = false", "expires = \"2001-01-01T00:00:00Z\""] {
        let relay = Relay::start(Options {
            modes: r#"["secure", "tls"]"#,
            user,
            ..Options::default()
        });
        let (mut client, task) = relay.connect("192.0.2.1:40000");
        client
            .write_all(&secure_header(&secret()))
            .await
            .expect("send");
        assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
        task.await.expect("served");
        assert_eq!(relay.fronted("user_limit"), 0);

        let mut relay = Relay::start(Options {
            modes: r#"["secure", "tls"]"#,
            user,
            on_limit: "front",
            ..Options::default()
        });
        let header = secure_header(&secret());
        let (mut client, task) = relay.connect("192.0.2.1:40000");
        client.write_all(&header).await.expect("send");
        let mut mask = relay.next_mask().await;
        assert_eq!(mask_reads(&mut mask, HEADER_LEN).await, header);
        drop(mask);
        assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
        drop(client);
        task.await.expect("served");
        assert_eq!(relay.fronted("user_limit"), 1);

        // A fake-TLS client has had its server flight: closed even with on_limit front.
        let (mut client, task) = relay.connect("192.0.2.2:40000");
        client
            .write_all(&tls_hello(&secret(), DOMAIN))
            .await
            .expect("hello");
        read_flight(&mut client).await;
        client
            .write_all(&tls_header_record(&secret()))
            .await
            .expect("header");
        assert_eq!(client.read_to_end().await, (Vec::new(), Ending::Fin));
        task.await.expect("served");
        assert_eq!(relay.fronted("user_limit"), 1);
        assert!(relay.mask_within(Duration::from_secs(1)).await.is_none());
    }
}

/// A good handshake goes to the DC: the DC gets a fresh header and the client's first bytes,
/// and its answer reaches the client. The DC is a loopback socket, so real time.
#[tokio::test]
async fn a_good_handshake_is_relayed_to_the_dc() {
    let dc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut relay = Relay::start(Options {
        modes: r#"["secure"]"#,
        dc: Some(dc.local_addr().expect("addr")),
        ..Options::default()
    });
    let side = obfs2::client_header(&mut rand::rng(), &secret(), ProtoTag::PaddedIntermediate, 2);
    let mut encrypt = side.encrypt;
    let mut decrypt = side.decrypt;
    let mut first = side.wire.to_vec();
    let mut payload = b"hello, DC".to_vec();
    encrypt.apply(&mut payload);
    first.extend_from_slice(&payload);
    let (mut client, task) = relay.connect("192.0.2.1:40000");
    client.write_all(&first).await.expect("send");

    let (mut upstream, _) = dc.accept().await.expect("the relay dials the DC");
    let mut header = [0u8; HEADER_LEN];
    upstream.read_exact(&mut header).await.expect("DC header");
    let mut leg = obfs2::accept_dc_header(&header).expect("a DC header");
    let mut got = vec![0u8; 9];
    upstream.read_exact(&mut got).await.expect("client bytes");
    leg.decrypt.apply(&mut got);
    assert_eq!(got, b"hello, DC");
    let mut answer = b"hello, client".to_vec();
    leg.encrypt.apply(&mut answer);
    upstream.write_all(&answer).await.expect("answer");
    drop(upstream);
    let (mut back, ending) = client.read_to_end().await;
    decrypt.apply(&mut back);
    assert_eq!((back, ending), (b"hello, client".to_vec(), Ending::Fin));
    drop(client);
    task.await.expect("served");
    assert!(relay.masks.try_recv().is_err());
    let mut samples = Samples::default();
    relay.ctx.stats.export(&mut samples);
    assert_eq!(samples.total(Metric::HandshakeFailures), 0);
}

#[tokio::test]
async fn a_connection_future_holds_no_phase_state() {
    // Every connection holds its `serve` future for its whole life: each phase (handshake,
    // dial, relay, fronting) keeps its state in a box of its own, so a connection pays only
    // for the phase it is in, not for the largest of all of them.
    let relay = Relay::start(Options::default());
    let peer: SocketAddr = "198.18.0.9:1000".parse().expect("peer");
    let slot = relay.slot(peer.ip());
    let (_client, served) = pair();
    let fut = super::serve(served, peer, slot, Arc::clone(&relay.ctx));
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 768, "the serve future grew to {size} bytes");
}
