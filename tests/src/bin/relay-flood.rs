//! relay-flood: a bounded SYN flood for the benchmark, sent from the client namespace through
//! an `AF_PACKET` socket bound to the client's veth, so the frames enter the relay's namespace
//! exactly like frames from the wire (and meet its XDP program first).
//!
//! ```text
//! relay-flood --iface rbc123 --dst-mac 02:..:01 --dst 198.18.0.1:4443
//!             --src-net 198.19.128.0/17 [--src-count N] [--pps P]
//!             --count C --duration SECS [--stop-on-stdin-eof]
//! ```
//!
//! Sources are random addresses of `--src-net` (`--src-count 0`), or its first N host
//! addresses in turn. Frames are Ethernet + IPv4 + TCP SYN with valid checksums, random source
//! port, sequence number and IP id. It stops after `--count` frames, after `--duration`, or
//! (with `--stop-on-stdin-eof`) when its stdin reaches end of file, as the orchestrator closes
//! it when it has measured, whichever comes first; `--pps` paces it (0: as fast as the socket takes them). Prints
//! `result {"sent":…,"secs":…,"pps":…,"errors":…}`.

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::libc;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use relay_tests::bench::args::Args;
use serde_json::json;

/// Ethernet (14) + IPv4 (20) + TCP (20).
const FRAME_LEN: usize = 54;
/// Frames sent per pacing check.
const BATCH: u64 = 64;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-flood: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = Args::from_env()?;
    let iface: String = args.need("iface")?;
    let dst_mac = parse_mac(&args.need::<String>("dst-mac")?)?;
    let dst: SocketAddrV4 = args.need("dst")?;
    let (net, prefix) = parse_net(&args.need::<String>("src-net")?)?;
    let src_count: u32 = args.get("src-count", 0)?;
    let pps: u64 = args.get("pps", 0)?;
    let count: u64 = args.need("count")?;
    let duration: f64 = args.need("duration")?;
    let watch_stdin = args.flag("stop-on-stdin-eof");
    args.finish()?;
    if !(0.0..=600.0).contains(&duration) || count > 1_000_000_000 {
        bail!("--duration must be 0..=600 s and --count at most 1e9");
    }
    let src_mac = parse_mac(
        std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
            .with_context(|| format!("MAC address of {iface}"))?
            .trim(),
    )?;
    let socket = PacketSocket::bind(&iface)?;
    let host_bits = 32 - prefix;
    let hosts: u64 = if host_bits >= 32 {
        u64::from(u32::MAX)
    } else {
        (1u64 << host_bits).saturating_sub(2).max(1)
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut frame = template(src_mac, dst_mac, *dst.ip(), dst.port());
    let deadline = Duration::from_secs_f64(duration);
    let stdin_closed = Arc::new(AtomicBool::new(false));
    if watch_stdin {
        let flag = stdin_closed.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = io::stdin().lock().read_to_end(&mut sink);
            flag.store(true, Ordering::Relaxed);
        });
    }
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    'outer: while sent < count {
        for _ in 0..BATCH.min(count - sent) {
            let host = if src_count == 0 {
                rng.random_range(1..=hosts)
            } else {
                (sent % u64::from(src_count)).min(hosts - 1) + 1
            };
            let src = Ipv4Addr::from(u32::from(net).wrapping_add(host as u32));
            fill(&mut frame, src, rng.random(), rng.random(), rng.random());
            match socket.send(&frame) {
                Ok(()) => {}
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| e.to_string());
                    if errors > 1000 && errors > sent {
                        break 'outer;
                    }
                }
            }
            sent += 1;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline || stdin_closed.load(Ordering::Relaxed) {
            break;
        }
        if pps > 0 {
            let due = Duration::from_secs_f64(sent as f64 / pps as f64);
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(deadline - elapsed));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "result {}",
        json!({
            "sent": sent - errors,
            "errors": errors,
            "first_error": first_error,
            "secs": secs,
            "pps": (sent - errors) as f64 / secs.max(1e-9),
        })
    );
    Ok(())
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address `{text}`"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address `{text}` is not 6 bytes"))
}

fn parse_net(text: &str) -> Result<(Ipv4Addr, u32)> {
    let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
    let addr: Ipv4Addr = addr.parse().with_context(|| format!("network `{text}`"))?;
    let len: u32 = len.parse().with_context(|| format!("prefix of `{text}`"))?;
    if len > 32 {
        bail!("prefix of `{text}` is longer than 32");
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ok((Ipv4Addr::from(u32::from(addr) & mask), len))
}

/// The frame with everything that does not change per packet.
fn template(src_mac: [u8; 6], dst_mac: [u8; 6], dst: Ipv4Addr, port: u16) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[16..20].copy_from_slice(&dst.octets());
    let tcp = &mut f[34..54];
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    f
}

/// Sets the per-packet fields and both checksums.
fn fill(f: &mut [u8; FRAME_LEN], src: Ipv4Addr, id: u16, sport: u16, seq: u32) {
    f[18..20].copy_from_slice(&id.to_be_bytes());
    f[26..30].copy_from_slice(&src.octets());
    f[24..26].fill(0);
    let ip_sum = checksum(0, &f[14..34]);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f[50..52].fill(0);
    // Pseudo-header: source, destination, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..8].copy_from_slice(&f[26..34]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_sum = checksum(sum(0, &pseudo), &f[34..54]);
    f[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
}

fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    acc
}

/// The Internet checksum of `bytes` on top of the partial sum `acc`.
fn checksum(acc: u32, bytes: &[u8]) -> u16 {
    let mut acc = sum(acc, bytes);
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An `AF_PACKET` raw socket bound to one interface, for sending only (protocol 0: it
/// receives nothing).
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(iface: &str) -> Result<PacketSocket> {
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("interface {iface}"));
        }
        // SAFETY: no pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket (needs CAP_NET_RAW)");
        }
        // SAFETY: a fresh fd nobody else owns.
        let socket = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: zeroed sockaddr_ll is valid; we set the fields bind looks at.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        // SAFETY: a valid fd and a sockaddr_ll of the right size.
        let bound = unsafe {
            libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("bind to {iface}"));
        }
        // Skip the qdisc layer where the kernel allows it (veth has none anyway).
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and an int option.
        let _ = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(socket)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: a valid fd and buffer.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let mut f = template([2; 6], [4; 6], Ipv4Addr::new(198, 18, 0, 1), 4443);
        fill(&mut f, Ipv4Addr::new(198, 19, 200, 7), 77, 40000, 123456);
        assert_eq!(checksum(0, &f[14..34]), 0, "IPv4 header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[26..34]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(checksum(sum(0, &pseudo), &f[34..54]), 0, "TCP checksum");
    }

    #[test]
    fn networks_are_masked() {
        assert_eq!(
            parse_net("198.19.200.9/17").unwrap(),
            (Ipv4Addr::new(198, 19, 128, 0), 17)
        );
        assert!(parse_net("198.19.0.0/33").is_err());
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap()[5], 10);
    }
}
