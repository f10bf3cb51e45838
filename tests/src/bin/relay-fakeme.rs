//! relay-fakeme: the benchmark's fake Telegram middle-end. It is `relay_tests::fake_me` as a
//! process: the server side of the ME RPC protocol (nonce exchange, AES-CBC, handshake), every
//! RPC_PROXY_REQ echoed back in an RPC_PROXY_ANS (after an RPC_SIMPLE_ACK when a quick ack
//! was asked for), RPC_PING answered. ME connections are few (a pool per DC), so a thread pair
//! per connection stays out of the way of the measurement; requests and closes are only
//! counted, not kept, so memory stays flat.
//!
//! ```text
//! relay-fakeme --listen 198.18.0.1:8888 --secret-file PATH [--lifetime-secs 3600]
//! ```
//!
//! `PATH` holds the proxy secret as raw bytes, exactly as relay reads it (at least 4 bytes;
//! the first 4 are the key selector). Prints `listening on <addr>` on stdout once it listens;
//! protocol errors from relay go to stderr as they happen. Runs until killed or until
//! `--lifetime-secs` have passed (a bound for a forgotten process).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use relay_tests::{bench::args::Args, fake_me::FakeMe};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-fakeme: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = Args::from_env()?;
    let listen: SocketAddr = args.need("listen")?;
    let secret_file: PathBuf = args.need("secret-file")?;
    let lifetime: u64 = args.get("lifetime-secs", 3600)?;
    args.finish()?;
    let secret = std::fs::read(&secret_file)
        .with_context(|| format!("reading the proxy secret {}", secret_file.display()))?;
    if secret.len() < 4 {
        bail!(
            "{}: the proxy secret has {} bytes, at least 4 needed",
            secret_file.display(),
            secret.len()
        );
    }
    let me = FakeMe::try_start(listen, secret).with_context(|| format!("listening on {listen}"))?;
    me.set_recording(false);
    println!("listening on {}", me.addr);

    let end = Instant::now() + Duration::from_secs(lifetime);
    let mut reported = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        let errors = me.errors();
        for e in errors.iter().skip(reported) {
            eprintln!("relay-fakeme: {e}");
        }
        reported = reported.max(errors.len());
    }
    eprintln!(
        "relay-fakeme: lifetime of {lifetime} s over ({} handshakes, {} requests, {} closes), exiting",
        me.handshakes(),
        me.request_count(),
        me.close_count()
    );
    Ok(())
}
