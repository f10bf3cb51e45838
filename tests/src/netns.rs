//! Two network namespaces joined by a veth pair, created per test and always removed.
//!
//! Addresses come from the benchmarking ranges (198.18.0.0/15, 2001:2::/48) and exist only
//! inside the namespaces, so tests never touch the host's network and can run in parallel.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::sched::{CloneFlags, setns};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// The relay's side of the pair.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The relay's IPv6 address.
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

/// IPv4 address number `n` (2..=254) of the client side.
pub fn client_v4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
}

/// IPv6 address number `n` of the client side.
pub fn client_v6(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, n))
}

/// A server namespace and a client namespace joined by a veth pair.
pub struct NetPair {
    /// Namespace the relay runs in.
    pub server_ns: String,
    /// Namespace the clients run in.
    pub client_ns: String,
    /// The veth end inside the server namespace (where XDP attaches).
    pub server_if: String,
    /// The veth end inside the client namespace.
    pub client_if: String,
}

/// A short id unique to this test process and call, for namespace and interface names
/// (interface names must stay under 16 bytes), so tests can run in parallel.
pub fn unique_id() -> String {
    format!(
        "{}x{}",
        std::process::id() % 100_000,
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` with `args`, panicking with its output on failure.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl NetPair {
    /// Creates the namespaces and the link; the client side gets addresses 2..=`clients`+1
    /// (IPv4 and IPv6), the server side [`SERVER_V4`] and [`SERVER_V6`].
    pub fn new(tag: &str, clients: u8) -> NetPair {
        let id = unique_id();
        let pair = NetPair {
            server_ns: format!("relay-{tag}-s{id}"),
            client_ns: format!("relay-{tag}-c{id}"),
            server_if: format!("rs{id}"),
            client_if: format!("rc{id}"),
        };
        ip(&["netns", "add", &pair.server_ns]);
        ip(&["netns", "add", &pair.client_ns]);
        ip(&[
            "link",
            "add",
            &pair.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_if,
        ]);
        ip(&["link", "set", &pair.server_if, "netns", &pair.server_ns]);
        ip(&["link", "set", &pair.client_if, "netns", &pair.client_ns]);
        let (s, c) = (&pair.server_ns, &pair.client_ns);
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_V4}/24"),
            "dev",
            &pair.server_if,
        ]);
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            &pair.server_if,
            "nodad",
        ]);
        for n in 2..clients.saturating_add(2) {
            ip(&[
                "-n",
                c,
                "addr",
                "add",
                &format!("{}/24", client_v4(n)),
                "dev",
                &pair.client_if,
            ]);
            let v6 = client_v6(u16::from(n));
            ip(&[
                "-n",
                c,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                &pair.client_if,
                "nodad",
            ]);
        }
        for (ns, dev) in [(s, &pair.server_if), (c, &pair.client_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// Runs `f` on a thread inside the client namespace (sockets it creates live there).
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.client_ns, f)
    }

    /// The XDP attachment of the server interface, as `(mode, program id)`, if any. Mode is
    /// `"xdp"` for native, `"xdpgeneric"` for generic.
    pub fn server_xdp(&self) -> Option<(String, u32)> {
        let json = ip(&[
            "-n",
            &self.server_ns,
            "-j",
            "-d",
            "link",
            "show",
            "dev",
            &self.server_if,
        ]);
        let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        let xdp = links.get(0)?.get("xdp")?;
        let id = xdp.get("prog")?.get("id")?.as_u64()?;
        let mode = match xdp.get("mode")?.as_u64()? {
            1 => "xdp",
            2 => "xdpgeneric",
            3 => "xdpoffload",
            _ => "unknown",
        };
        Some((mode.to_owned(), u32::try_from(id).ok()?))
    }

    /// The program enforcing on the server interface, as `(hook, program id)`: `"xdp"`
    /// (native), `"xdpgeneric"` or `"tcx"` (TC ingress), if any.
    pub fn server_hook(&self) -> Option<(String, u32)> {
        if let Some(xdp) = self.server_xdp() {
            return Some(xdp);
        }
        let ids = in_namespace(&self.server_ns, || {
            SchedClassifier::query_tcx(&self.server_if, TcAttachType::Ingress)
                .map(|(_, programs)| programs.iter().map(|p| p.id()).collect::<Vec<u32>>())
        })
        .ok()?;
        ids.first().map(|&id| ("tcx".to_owned(), id))
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it, and with it the peer.
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`.
pub fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
