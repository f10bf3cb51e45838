//! Costs without sockets: this machine's `openssl speed -evp aes-256-ctr`, the relay's own
//! client→DC transform (`ToUpstream`: decrypt with the client's key, re-encrypt with the DC's)
//! run in-process on 16 KiB buffers, for the ratio between them, the middle-proxy leg's
//! framing (AES-256-CBC and CRC32 each way), and the handshake's cryptography (header and
//! ClientHello checks, the fake-TLS server flight).

use std::{
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use rand::Rng as _;
use relay_ctl::relay::{pump::Transform as _, transform::ToUpstream};
use relay_proto::{
    AesCtr, ModeSet, ProtoTag, Secret, obfs2,
    tls::{
        flight::server_flight,
        hello::{
            HelloKey, HelloPolicy, build_client_hello, verify_client_hello,
            verify_client_hello_keys,
        },
        reader::{ClientHelloReader, HelloRead},
    },
};
use serde_json::{Value, json};

/// The buffer size of both measurements: one full TLS record, the relay's read buffer.
pub const BUF: usize = 16 * 1024;

/// `openssl speed -evp aes-256-ctr -seconds 1` (`-bytes 16384` only, in a smoke run): bytes per
/// second at 16 KiB blocks, one core.
pub fn openssl_speed(smoke: bool) -> Result<Value> {
    let mut command = Command::new("openssl");
    command.args(["speed", "-evp", "aes-256-ctr", "-seconds", "1"]);
    if smoke {
        command.args(["-bytes", "16384"]);
    }
    let out = command.output().context("running openssl speed")?;
    if !out.status.success() {
        bail!(
            "openssl speed failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes_per_sec = parse_openssl(&text, 16384)
        .with_context(|| format!("no 16384-byte aes-256-ctr figure in:\n{text}"))?;
    let version = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(json!({
        "command": format!("openssl speed -evp aes-256-ctr -seconds 1{}", if smoke { " -bytes 16384" } else { "" }),
        "version": version,
        "block": 16384,
        "bytes_per_sec": bytes_per_sec,
    }))
}

/// The `aes-256-ctr` figure for `block`-byte blocks from `openssl speed`'s table (in 1000s of
/// bytes per second, suffix `k`), as bytes per second.
pub fn parse_openssl(text: &str, block: usize) -> Option<f64> {
    let header = text.lines().rfind(|l| l.starts_with("type"))?;
    let sizes: Vec<usize> = header
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    let column = sizes.iter().position(|s| *s == block)?;
    // OpenSSL 3 prints the row as `AES-256-CTR`, 1.1 as `aes-256-ctr`.
    let row = text
        .lines()
        .rfind(|l| l.to_ascii_lowercase().starts_with("aes-256-ctr"))?;
    let value = row.split_whitespace().skip(1).nth(column)?;
    let kilo: f64 = value.trim_end_matches('k').parse().ok()?;
    Some(kilo * 1000.0)
}

/// Runs `step` on a 16 KiB buffer until `budget` has passed; bytes per second.
fn rate(budget: Duration, mut step: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; BUF];
    // Warm caches and the CPU's frequency.
    for _ in 0..64 {
        step(&mut buf);
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            step(&mut buf);
        }
        bytes += 64 * BUF as u64;
    }
    std::hint::black_box(&buf);
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// The relay's transforms in-process, `budget` each: one AES-CTR pass (`AesCtr::apply`), and
/// `ToUpstream` (decrypt + re-encrypt, what every client→DC byte costs; in fast mode the
/// DC→client direction costs nothing, without it the same again).
pub fn transform(budget: Duration) -> Value {
    let key = |b: u8| [b; 32];
    let iv = |b: u8| [b; 16];
    let mut single = AesCtr::new(&key(1), &iv(2));
    let one_pass = rate(budget, |buf| single.apply(buf));
    let mut to_upstream = ToUpstream::new(
        AesCtr::new(&key(3), &iv(4)),
        AesCtr::new(&key(5), &iv(6)),
        None,
    );
    let mut scratch = Vec::new();
    let relay = rate(budget, |buf| {
        // Plain obfuscated2 never fails to transform.
        let _ = to_upstream.transform(buf, &mut scratch);
    });
    json!({
        "buffer": BUF,
        "aes_ctr_one_pass_bytes_per_sec": one_pass,
        "aes_ctr_implementation": relay_proto::cipher::AesCtr::implementation(),
        "to_upstream_bytes_per_sec": relay,
    })
}

/// The middle-proxy leg's framing in-process, `budget` each way, on 16 KiB payloads: framing,
/// CRC32 and AES-256-CBC encryption toward the ME (`FrameWriter::write`), and decryption,
/// CRC check and parsing from it (`FrameReader`). CBC encryption chains every block on the
/// one before, so it runs at one AES latency per block whatever the CPU's width: with the
/// two, the CPU-seconds per GB echoed that no middle-mode proxy gets under.
pub fn middle_framing(budget: Duration) -> Value {
    use relay_proto::middle::{FrameReader, FrameWriter};
    let (key, iv) = ([7u8; 32], [9u8; 16]);
    let mut writer = FrameWriter::new();
    writer.encrypt(&key, &iv);
    let mut wire = Vec::with_capacity(2 * BUF);
    let encrypt = rate(budget, |buf| {
        wire.clear();
        // 16 KiB is whole 32-bit words: always framed.
        let _ = writer.write(buf, &mut wire);
    });
    // One stream of frames to decrypt, then parsed over and over with a fresh reader.
    let mut writer = FrameWriter::new();
    writer.encrypt(&key, &iv);
    let payload = vec![0x5au8; BUF];
    let mut stream = Vec::new();
    for _ in 0..64 {
        let _ = writer.write(&payload, &mut stream);
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < budget {
        let mut reader = FrameReader::new();
        reader.decrypt(&key, &iv);
        reader.push(&stream);
        while let Ok(Some(frame)) = reader.next_frame() {
            bytes += frame.len() as u64;
        }
    }
    let decrypt = bytes as f64 / start.elapsed().as_secs_f64();
    json!({
        "payload": BUF,
        "encrypt_bytes_per_sec": encrypt,
        "decrypt_bytes_per_sec": decrypt,
        // Each echoed byte goes to the ME once and comes back once.
        "cpu_sec_per_gb_echoed": 1e9 / encrypt + 1e9 / decrypt,
    })
}

/// The handshake's own CPU cost in-process, without sockets: the obfuscated2 header check
/// (`accept_client_header`, what a `dd` handshake costs) and the fake-TLS ClientHello check
/// (`verify_client_hello`) against 1 and 1,000 secrets with the client's secret picked at
/// random, and the fake-TLS server flight (`server_flight`, an X25519 key share and an HMAC).
/// Microseconds per call, `budget` each.
pub fn handshake_costs(budget: Duration) -> Value {
    let mut rng = rand::rng();
    let mut out = serde_json::Map::new();
    for users in [1usize, 1000] {
        let secrets: Vec<Secret> = (0..users).map(|_| Secret::random()).collect();
        let headers: Vec<[u8; obfs2::HEADER_LEN]> = (0..1024)
            .map(|_| {
                let secret = &secrets[rng.random_range(0..users)];
                obfs2::client_header(&mut rng, secret, ProtoTag::PaddedIntermediate, 2).wire
            })
            .collect();
        let obfs2_us = per_call(budget, headers.len(), |i| {
            let accepted =
                obfs2::accept_client_header(&headers[i], &secrets, ModeSet::DEFAULT, false);
            std::hint::black_box(accepted.is_ok());
        });
        out.insert(format!("obfs2_accept_us_{users}_users"), json!(obfs2_us));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let hellos: Vec<Vec<u8>> = (0..256)
            .map(|_| {
                let secret = &secrets[rng.random_range(0..users)];
                let record = build_client_hello(&mut rng, secret, DOMAIN, now as u32);
                match ClientHelloReader::new().feed(&record) {
                    Ok(HelloRead::Done(hello)) => hello.handshake,
                    _ => Vec::new(),
                }
            })
            .collect();
        let policy = HelloPolicy {
            domain: DOMAIN,
            now,
            window_secs: 120,
            allow_uptime: true,
        };
        // Prepared once, as the relay does when it loads its configuration.
        let keys: Vec<HelloKey> = secrets.iter().map(HelloKey::new).collect();
        let tls_us = per_call(budget, hellos.len(), |i| {
            let verified = verify_client_hello_keys(&hellos[i], &keys, None, &policy);
            std::hint::black_box(verified.is_ok());
        });
        out.insert(format!("tls_hello_verify_us_{users}_users"), json!(tls_us));
        if users == 1 {
            let Ok(verified) = verify_client_hello(&hellos[0], &secrets, &policy) else {
                continue;
            };
            let flight_us = per_call(budget, 1, |_| {
                let flight = server_flight(&mut rand::rng(), &secrets[0], &verified, 3000);
                std::hint::black_box(flight.len());
            });
            out.insert("tls_server_flight_us".to_owned(), json!(flight_us));
        }
    }
    Value::Object(out)
}

/// Calls `step(i % items)` until `budget` has passed; microseconds per call.
fn per_call(budget: Duration, items: usize, mut step: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    let mut calls = 0usize;
    while start.elapsed() < budget || calls == 0 {
        for _ in 0..16 {
            step(calls % items);
            calls += 1;
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / calls as f64
}

/// The SNI of the in-process fake-TLS hellos.
const DOMAIN: &str = "bench.example.org";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_table_is_parsed() {
        let text = "Doing aes-256-ctr ops for 1s on 16 size blocks\n\
            version: 3.0.19\n\
            The 'numbers' are in 1000s of bytes per second processed.\n\
            type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes\n\
            aes-256-ctr     612345.67k  2000000.00k  5000000.00k  7000000.00k  8400000.00k  8500000.12k\n";
        let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1.0);
        assert!(close(parse_openssl(text, 16384), 8_500_000_120.0));
        assert!(close(parse_openssl(text, 16), 612_345_670.0));
        let one = "type          16384 bytes\nAES-256-CTR    8000000.00k\n";
        assert!(close(parse_openssl(one, 16384), 8e9));
        assert_eq!(parse_openssl("nothing", 16384), None);
    }

    #[test]
    fn handshake_costs_are_measured() {
        let v = handshake_costs(Duration::from_millis(5));
        for key in [
            "obfs2_accept_us_1_users",
            "obfs2_accept_us_1000_users",
            "tls_hello_verify_us_1_users",
            "tls_hello_verify_us_1000_users",
            "tls_server_flight_us",
        ] {
            assert!(v[key].as_f64().is_some_and(|us| us > 0.0), "{key}: {v}");
        }
    }

    #[test]
    fn transform_measures_something() {
        let v = transform(Duration::from_millis(20));
        assert!(v["to_upstream_bytes_per_sec"].as_f64().unwrap() > 0.0);
    }
}
