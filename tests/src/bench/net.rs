//! The benchmark's network: three namespaces with names unique to the run, deleted when
//! dropped. The client namespace (generator, flood sender) reaches the server namespace (the
//! relay) over one veth pair; the server namespace reaches the DC namespace (fake DC) over
//! another, as a real relay reaches Telegram through a NIC. (With the fake DC on the relay's
//! loopback, 64 KiB loopback segments made receive queues prune and connections stall for
//! RTO backoffs; not what a relay sees.) The server namespace forwards between the two, so
//! the generator can also talk to the fake DC directly: the baseline for added latency.
//!
//! Addresses are from the benchmarking range 198.18.0.0/15; the flood's spoofed sources are
//! from 198.19.0.0/16, which no interface carries.

use std::{fs::File, net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

/// The relay's address (server namespace, client side).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The client namespace's address (generator).
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// First of [`SOURCES`] extra addresses of the client namespace: one per handshake worker in
/// the per-source scenarios, so each source has its own user as with real clients.
pub const SOURCE_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 64);
/// How many extra client addresses there are, from [`SOURCE_BASE`].
pub const SOURCES: u8 = 64;
/// The server namespace's address on the DC side.
pub const SERVER_UP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// The fake DC's address (DC namespace).
pub const DC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The relay's port.
pub const RELAY_PORT: u16 = 4443;
/// The floor forwarder's port (server namespace, next to the relay's).
pub const FLOOR_PORT: u16 = 4444;
/// The port other proxies compared with relay listen on (server namespace, `--peer`).
pub const PEER_PORT: u16 = 4445;
/// The fake DC's port.
pub const DC_PORT: u16 = 9002;
/// The fake middle-end's port (`relay-fakeme`, at [`DC`] in the fake DC's namespace).
pub const ME_PORT: u16 = 8888;
/// Spoofed flood sources that the relay's blocklist covers.
pub const BLOCKED_NET: &str = "198.19.128.0/17";
/// Spoofed flood sources that are not blocked, only rate-limited (a few addresses, each far
/// over its SYN budget).
pub const LIMITED_NET: &str = "198.19.1.0/24";

/// Prefix of every namespace this harness creates (`rbench-<pid>-srv`, `-cli`, `-dc`);
/// `cargo xtask bench` deletes what a crashed run left by it.
pub const NS_PREFIX: &str = "rbench-";

/// The three namespaces and the links between them.
pub struct Net {
    /// The relay.
    pub server_ns: String,
    /// Generator and flood sender.
    pub client_ns: String,
    /// The fake DC.
    pub dc_ns: String,
    /// The server's veth end (where XDP attaches).
    pub server_if: String,
    /// The client's veth end (where the flood is injected).
    pub client_if: String,
    /// MAC address of the server's veth end (the flood's destination).
    pub server_mac: String,
}

/// Runs `ip ARGS`; errs with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Net {
    /// Creates `rbench-<id>-srv`, `-cli` and `-dc`; on failure removes what it made.
    pub fn create(id: u32) -> Result<Net> {
        let mut net = Net {
            server_ns: format!("{NS_PREFIX}{id}-srv"),
            client_ns: format!("{NS_PREFIX}{id}-cli"),
            dc_ns: format!("{NS_PREFIX}{id}-dc"),
            server_if: format!("rbs{id}"),
            client_if: format!("rbc{id}"),
            server_mac: String::new(),
        };
        // From here on Drop cleans up, whatever fails.
        net.configure()?;
        Ok(net)
    }

    fn configure(&mut self) -> Result<()> {
        let (s, c, d) = (
            self.server_ns.clone(),
            self.client_ns.clone(),
            self.dc_ns.clone(),
        );
        ip(&["netns", "add", &s])?;
        ip(&["netns", "add", &c])?;
        ip(&["netns", "add", &d])?;
        let (up, dc_if) = (
            format!("{}u", self.server_if),
            format!("{}d", self.server_if),
        );
        ip(&[
            "link", "add", &up, "netns", &s, "type", "veth", "peer", "name", &dc_if, "netns", &d,
        ])?;
        ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("{SERVER_UP}/24"),
            "dev",
            &up,
        ])?;
        ip(&["-n", &d, "addr", "add", &format!("{DC}/24"), "dev", &dc_if])?;
        ip(&["-n", &s, "link", "set", &up, "up"])?;
        ip(&["-n", &d, "link", "set", "lo", "up"])?;
        ip(&["-n", &d, "link", "set", &dc_if, "up"])?;
        ip(&[
            "-n",
            &d,
            "route",
            "add",
            "default",
            "via",
            &SERVER_UP.to_string(),
        ])?;
        ip(&[
            "link",
            "add",
            &self.server_if,
            "netns",
            &s,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            &c,
        ])?;
        ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("{SERVER}/24"),
            "dev",
            &self.server_if,
        ])?;
        ip(&[
            "-n",
            &c,
            "addr",
            "add",
            &format!("{CLIENT}/24"),
            "dev",
            &self.client_if,
        ])?;
        for i in 0..SOURCES {
            let source = Ipv4Addr::from(u32::from(SOURCE_BASE) + u32::from(i));
            ip(&[
                "-n",
                &c,
                "addr",
                "add",
                &format!("{source}/24"),
                "dev",
                &self.client_if,
            ])?;
        }
        for (ns, dev) in [(&s, &self.server_if), (&c, &self.client_if)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            // Tens of thousands of short connections per run: every port, and TIME_WAIT
            // reuse for outgoing ones (the generator's, and the relay's to the fake DC).
            sysctl(ns, "net.ipv4.ip_local_port_range", "1024 65535")?;
            sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")?;
        }
        // The generator reaches the fake DC through the server namespace (latency baseline).
        ip(&[
            "-n",
            &c,
            "route",
            "add",
            "198.18.1.0/24",
            "via",
            &SERVER.to_string(),
        ])?;
        sysctl(&s, "net.ipv4.ip_forward", "1")?;
        // Nothing here resolves names, but a peer proxy (`--peer`) looks up its public
        // address or STUN servers at start: with the default route below, queries to the
        // host's resolver would vanish and each lookup wait out its timeout. `ip netns exec`
        // mounts this file over /etc/resolv.conf, so they fail at once on the loopback.
        let etc = resolver_dir(&s);
        std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")
            .with_context(|| format!("writing {}/resolv.conf", etc.display()))?;
        // Like a real server, the relay's side has a default route, so answers to spoofed
        // sources (SYN-ACKs, cookies) are really sent rather than failing a route lookup.
        ip(&[
            "-n",
            &s,
            "route",
            "add",
            "default",
            "via",
            &CLIENT.to_string(),
        ])?;
        let link = ip(&["-n", &s, "-o", "link", "show", "dev", &self.server_if])?;
        self.server_mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("no MAC address in `{link}`"))?;
        Ok(())
    }

    /// Runs `f` on a thread that has joined namespace `ns` (for reading its `/proc/net`).
    pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let path = format!("/var/run/netns/{ns}");
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path).with_context(|| format!("open {path}"))?;
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns {path}"))?;
                    f()
                })
                .join()
                .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        })
    }

    /// `/proc/net/netstat` and `/proc/net/snmp` counters of the server namespace.
    pub fn server_counters(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        Net::in_ns(&self.server_ns, || {
            let mut all = super::procfs::netstat_counters(&std::fs::read_to_string(
                "/proc/thread-self/net/netstat",
            )?);
            all.extend(super::procfs::netstat_counters(&std::fs::read_to_string(
                "/proc/thread-self/net/snmp",
            )?));
            Ok(all)
        })
    }
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    Net::in_ns(ns, move || {
        std::fs::write(&path, &value).with_context(|| format!("sysctl {path} = {value}"))
    })
}

/// Where `ip netns exec NS` finds files it mounts over `/etc` (here, `resolv.conf`).
pub fn resolver_dir(ns: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(ns)
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(resolver_dir(&self.server_ns));
        // Deleting a namespace destroys the veth end inside it, and with it the peer.
        for ns in [&self.server_ns, &self.client_ns, &self.dc_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
