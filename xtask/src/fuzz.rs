//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` for a bounded time, starting
//! from the committed seed corpus (copied, so new inputs never land in the repository).

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cmd::Cmd;

/// The targets in `fuzz/Cargo.toml`, one per parser that reads peer or operator bytes.
pub const TARGETS: [&str; 11] = [
    "obfs2_header",
    "client_hello",
    "tls_records",
    "config",
    "netset",
    "admin_request",
    "server_flight",
    "crowdsec_stream",
    "middle_proxy",
    "proxy_header",
    "socks5_reply",
];

/// Fuzzes each target for `seconds`; fails on the first crash, naming its artifact.
pub fn fuzz(root: &Path, seconds: u64) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    let scratch = root.join("target/fuzz-corpus");
    for target in TARGETS {
        let seeds = fuzz_dir.join("corpus").join(target);
        let corpus = scratch.join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        for seed in
            std::fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))?
        {
            let seed = seed?.path();
            if let Some(name) = seed.file_name() {
                std::fs::copy(&seed, corpus.join(name))?;
            }
        }
        println!("xtask: fuzzing {target} for {seconds} s");
        let run = Cmd::new("cargo")
            .args(["+nightly", "fuzz", "run", "-O", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}")])
            .current_dir(&fuzz_dir)
            .run_attached();
        if let Err(e) = run {
            bail!(
                "fuzz target {target} failed: {e:#}\nthe crashing input is under {}; add it as a \
                 regression test before fixing",
                fuzz_dir.join("artifacts").join(target).display()
            );
        }
    }
    Ok(())
}
