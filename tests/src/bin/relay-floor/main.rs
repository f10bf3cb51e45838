//! relay-floor: the benchmark's floor. A TCP forwarder that does nothing but move bytes: no
//! protocol, no crypto, the relay's socket options (`TCP_NODELAY` both ways, quick ACK off
//! while connecting upstream) and one worker thread per CPU, each with its own `SO_REUSEPORT`
//! listener. What it costs per GB echoed and per connection is what TCP and a lean event
//! loop alone cost on the bench's topology: the floor under a relay that makes the same
//! system calls, to which an MTProto relay adds a handshake check and the decryption and
//! re-encryption of at least one direction.
//!
//! ```text
//! relay-floor --listen 198.18.0.1:4444 --upstream 198.18.1.2:9002 [--move splice|copy|dd|sockmap]
//!             [--secret HEX] [--threads N] [--lifetime-secs 3600]
//! ```
//!
//! `--move splice` (the default) moves every byte with the relay's own `splice(2)` bursts,
//! never copying it to user space, on a single-threaded tokio runtime per worker as the
//! relay runs: the floor for bulk transfer. `--move copy` reads into one buffer per worker and
//! writes it out, in a hand-written edge-triggered epoll loop (no runtime, no task, no pipe
//! per connection, no system call an event does not need): the floor for short
//! connections. `--move dd` is that loop doing a `dd` relay's essential work with `--secret`
//! ([`epoll_loop`]): what a relay on a hand-written event loop would start from.
//! `--move sockmap` runs the relay's own loop with nothing counted: the upstream → client
//! direction through the relay's sockmap program (needs CAP_BPF), the other spliced, as the
//! relay moves a fronted connection.
//!
//! Prints `listening <addr>` on stdout once every thread listens; runs until killed or until
//! `--lifetime-secs` have passed (a bound for a forgotten process).

mod epoll_loop;

use std::{
    io,
    net::{Shutdown, SocketAddr},
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use relay_ctl::{
    passage::Passage,
    relay::{
        pump::{self, Offload, Passthrough},
        splice::{self, BurstEnd},
        upstream::dc_socket,
    },
};
use relay_proto::Secret;
use relay_tests::bench::{args::Args, epoll::reuseport_listener, procfs};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The relay's listen backlog.
const BACKLOG: i32 = 1024;

/// How bytes get from one socket to the other.
#[derive(Clone, Copy)]
enum Move {
    Splice,
    Copy,
    Dd,
    Sockmap,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = Args::from_env()?;
    let listen: SocketAddr = args.need("listen")?;
    let upstream: SocketAddr = args.need("upstream")?;
    let how = match args.get("move", "splice".to_owned())?.as_str() {
        "splice" => Move::Splice,
        "copy" => Move::Copy,
        "dd" => Move::Dd,
        "sockmap" => Move::Sockmap,
        other => bail!("--move {other}: expected splice, copy, dd or sockmap"),
    };
    let users = match (how, args.opt::<String>("secret")?) {
        (Move::Dd, Some(hex)) => Some(vec![
            Secret::from_hex(&hex).map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
        ]),
        (Move::Dd, None) => bail!("--move dd needs --secret HEX"),
        (_, _) => None,
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = args.get("threads", cpus)?;
    let lifetime: u64 = args.get("lifetime-secs", 3600)?;
    args.finish()?;
    let passage = match how {
        Move::Sockmap => Some(std::sync::Arc::new(
            Passage::load().context("loading the sockmap program")?,
        )),
        _ => None,
    };
    procfs::raise_nofile(1 << 16)?;
    let mut listeners = Vec::new();
    for _ in 0..threads.max(1) {
        listeners.push(reuseport_listener(listen, BACKLOG)?);
    }
    println!("listening {}", listeners[0].local_addr()?);
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(lifetime));
        eprintln!("relay-floor: lifetime of {lifetime} s over, exiting");
        std::process::exit(0);
    });
    let workers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let users = users.clone();
            let passage = passage.clone();
            thread::spawn(move || match how {
                Move::Splice | Move::Sockmap => serve_tokio(l, upstream, passage),
                Move::Copy | Move::Dd => epoll_loop::serve(l, upstream, users),
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

/// One thread's accept loop on its own single-threaded runtime, splicing, or through the
/// sockmap program when given `passage`.
fn serve_tokio(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    passage: Option<std::sync::Arc<Passage>>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (client, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("relay-floor: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let passage = passage.clone();
            tokio::spawn(async move {
                let done = match passage {
                    Some(passage) => through_kernel(client, upstream, &passage).await,
                    None => forward(client, upstream).await,
                };
                if let Err(e) = done {
                    eprintln!("relay-floor: connection: {e:#}");
                }
            });
        }
    })
}

/// Connects to `upstream` and splices both ways until both directions end.
async fn forward(client: TcpStream, upstream: SocketAddr) -> Result<()> {
    let dc = dial(upstream)
        .await
        .with_context(|| format!("connect {upstream}"))?;
    let (up, down) = tokio::join!(splice_one_way(&client, &dc), splice_one_way(&dc, &client));
    up.context("client to DC")?;
    down.context("DC to client")
}

/// Connects to `upstream` and relays both ways through the sockmap program until both
/// directions end.
async fn through_kernel(client: TcpStream, upstream: SocketAddr, passage: &Passage) -> Result<()> {
    let dc = dial(upstream)
        .await
        .with_context(|| format!("connect {upstream}"))?;
    let offload = Offload {
        passage: Some(passage),
        copy_only: false,
        stats: None,
    };
    let (_, error) = pump::relay(
        client.into_split(),
        dc.into_split(),
        Passthrough,
        Passthrough,
        Duration::from_secs(600),
        &(),
        offload,
    )
    .await;
    error.map_or(Ok(()), |e| Err(anyhow::anyhow!("relay: {e}")))
}

/// As the relay's DC leg (the relay's own socket setup).
async fn dial(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpSocket::from_std_stream(dc_socket(addr)?.into())
        .connect(addr)
        .await
}

/// Splices `from` into `to` with the relay's own [`splice::burst`] until EOF, then
/// half-closes `to`.
async fn splice_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    loop {
        from.readable().await?;
        match splice::burst(from, to, &mut |_| true).await? {
            BurstEnd::Quiet => {}
            BurstEnd::Eof => return socket2::SockRef::from(to).shutdown(Shutdown::Write),
            BurstEnd::NoPipe => return Err(io::Error::other("no pipe: out of descriptors")),
            BurstEnd::Stopped => return Err(io::Error::other("a burst stopped uncounted")),
        }
    }
}
