//! Other MTProto proxies measured next to relay (`relay-bench --peer NAME=PATH`): which ones
//! the benchmark knows, the files each is started with (written by the benchmark, pointing the
//! proxy at the fake DC in direct mode, or at the fake middle-end for the official C proxy,
//! which has no direct mode) and its command line, which rows each can take, and how to tell
//! that it listens.
//!
//! The proxies are built by whoever runs the benchmark, from their own repositories (see
//! docs/bench.md); nothing of theirs lives in this repository.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use thiserror::Error;

/// A proxy the benchmark can compare relay with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// telemt (Rust, tokio): `PATH` is its release binary.
    Telemt,
    /// mtprotoproxy (Python, asyncio): `PATH` is `mtprotoproxy.py`.
    Mtprotoproxy,
    /// The official C proxy (TelegramMessenger/MTProxy): `PATH` is `mtproto-proxy`.
    Mtproxy,
}

impl Kind {
    /// Every known kind, in the order the report lists them.
    pub const ALL: [Kind; 3] = [Kind::Telemt, Kind::Mtprotoproxy, Kind::Mtproxy];

    /// The name `--peer` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Telemt => "telemt",
            Kind::Mtprotoproxy => "mtprotoproxy",
            Kind::Mtproxy => "mtproxy",
        }
    }

    /// Whether it relays through middle proxies only (then it is measured through the fake
    /// middle-end, next to relay in middle mode), not direct to a DC.
    pub fn middle_only(self) -> bool {
        self == Kind::Mtproxy
    }

    /// Why this proxy cannot take the `mode` (`dd`, `tls`) rows with `users` users, if it
    /// cannot.
    pub fn cannot(self, mode: &str, users: usize) -> Option<&'static str> {
        match self {
            Kind::Mtproxy if mode == "tls" => Some(
                "the official C proxy's fake-TLS mode (-D) probes the domain's real TLS 1.3 \
                 server at start, which the benchmark's namespaces cannot reach",
            ),
            Kind::Mtproxy if users > MTPROXY_MAX_SECRETS => {
                Some("the official C proxy takes at most 16 secrets (-S)")
            }
            _ => None,
        }
    }
}

/// Secrets the official C proxy accepts (`-S`, repeated).
pub const MTPROXY_MAX_SECRETS: usize = 16;

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--peer` that could not be understood.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    /// No `=` between name and path.
    #[error("--peer {0}: expected NAME=PATH (NAME: telemt, mtprotoproxy or mtproxy)")]
    Shape(String),
    /// A name the benchmark does not know.
    #[error("--peer {0}: unknown proxy (known: telemt, mtprotoproxy, mtproxy)")]
    Unknown(String),
}

/// One `--peer NAME=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Which proxy.
    pub kind: Kind,
    /// Its binary (telemt, mtproxy) or script (mtprotoproxy).
    pub path: PathBuf,
}

impl FromStr for Peer {
    type Err = PeerError;

    fn from_str(s: &str) -> Result<Peer, PeerError> {
        let (name, path) = s
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| PeerError::Shape(s.to_owned()))?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| PeerError::Unknown(name.to_owned()))?;
        Ok(Peer {
            kind,
            path: PathBuf::from(path),
        })
    }
}

/// What a peer is configured with: the same listener, DC and users relay gets.
pub struct Setup<'a> {
    /// Where it listens for clients.
    pub listen: SocketAddr,
    /// The fake DC, which every DC id must lead to.
    pub dc: SocketAddr,
    /// The server's own address toward the fake DC (what outgoing connections bind to).
    pub upstream_ip: IpAddr,
    /// The fake-TLS domain.
    pub domain: &'a str,
    /// The users' secrets (32 hex digits each).
    pub secrets: &'a [String],
    /// A directory of its own for its configuration.
    pub dir: &'a Path,
    /// The Python interpreter for mtprotoproxy.
    pub python: &'a Path,
    /// The fake middle-end and its proxy-secret file, for a middle-only proxy.
    pub me: Option<(SocketAddr, &'a Path)>,
    /// Connections it may hold (the descriptors it can get bound this).
    pub max_conns: u64,
}

/// How to start a peer: files to write first, then the command.
#[derive(Debug)]
pub struct Launch {
    /// Files (path, contents) the command reads.
    pub files: Vec<(PathBuf, String)>,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The files and command that start `peer` as `setup` says; `None` for a middle-only proxy
/// without `setup.me`.
pub fn launch(peer: &Peer, setup: &Setup<'_>) -> Option<Launch> {
    match peer.kind {
        Kind::Telemt => {
            let config = setup.dir.join("telemt.toml");
            Some(Launch {
                files: vec![(config.clone(), telemt_config(setup))],
                program: peer.path.clone(),
                args: vec![config.display().to_string()],
            })
        }
        Kind::Mtprotoproxy => {
            let config = setup.dir.join("mtprotoproxy-config.py");
            let launcher = setup.dir.join("mtprotoproxy-launch.py");
            Some(Launch {
                files: vec![
                    (config.clone(), mtprotoproxy_config(setup)),
                    (
                        launcher.clone(),
                        mtprotoproxy_launcher(&peer.path, &config, setup.dc),
                    ),
                ],
                program: setup.python.to_path_buf(),
                args: vec![launcher.display().to_string()],
            })
        }
        Kind::Mtproxy => {
            let (me, secret) = setup.me?;
            let config = setup.dir.join("proxy-multi.conf");
            let mut args = [
                "-u",
                "root",
                // Its local stats port, next to the client port.
                "-p",
                &(setup.listen.port() + 1).to_string(),
                "-H",
                &setup.listen.port().to_string(),
                "--address",
                &setup.listen.ip().to_string(),
                "-c",
                &setup.max_conns.to_string(),
                "--aes-pwd",
                &secret.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            for s in setup.secrets.iter().take(MTPROXY_MAX_SECRETS) {
                args.extend(["-S".to_owned(), s.clone()]);
            }
            args.push(config.display().to_string());
            Some(Launch {
                files: vec![(
                    config,
                    crate::fake_me::proxy_config_text(me, &[1, 2, 3, 4, 5], 2),
                )],
                program: peer.path.clone(),
                args,
            })
        }
    }
}

/// A string literal valid in TOML and Python alike (JSON's escapes are a subset of both).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// telemt in direct mode (`use_middle_proxy = false`), `dd` and fake TLS, every DC id of
/// the client's header sent to the fake DC through `[dc_overrides]`, no masking (nothing to
/// forward a failed client to) and no TLS emulation (it would fetch the domain's real
/// certificate), no API listener. Its direct upstream binds to the server's address toward
/// the DC: telemt finds its IPv4 address by routing towards a public one, and without it
/// turns IPv4, and its IPv4 listener, off.
pub fn telemt_config(setup: &Setup<'_>) -> String {
    let mut users = String::new();
    for (i, secret) in setup.secrets.iter().enumerate() {
        users.push_str(&format!("u{i} = {}\n", quoted(secret)));
    }
    let dc = quoted(&setup.dc.to_string());
    let overrides: String = [1, 2, 3, 4, 5]
        .iter()
        .map(|id| format!("\"{id}\" = [{dc}]\n\"-{id}\" = [{dc}]\n"))
        .collect();
    format!(
        r#"# Generated by relay-bench: telemt direct to the fake DC.
[general]
use_middle_proxy = false
fast_mode = true
log_level = "normal"
# Its state files, in its own directory rather than wherever it was started.
data_path = {dir}
quota_state_path = {quota}
beobachten_file = {beobachten}

[general.modes]
classic = false
secure = true
tls = true

[network]
ipv4 = true
ipv6 = false
prefer = 4

[server]
port = {port}

[server.api]
enabled = false

[[server.listeners]]
ip = {ip}

[[upstreams]]
type = "direct"
bind_addresses = [{upstream}]

[censorship]
tls_domain = {domain}
mask = false
tls_emulation = false

[access.users]
{users}
[dc_overrides]
{overrides}"#,
        port = setup.listen.port(),
        ip = quoted(&setup.listen.ip().to_string()),
        upstream = quoted(&setup.upstream_ip.to_string()),
        domain = quoted(setup.domain),
        dir = quoted(&setup.dir.display().to_string()),
        quota = quoted(&setup.dir.join("telemt.limit.json").display().to_string()),
        beobachten = quoted(&setup.dir.join("beobachten.txt").display().to_string()),
    )
}

/// mtprotoproxy's `config.py`: direct mode (no ad tag, `USE_MIDDLE_PROXY = False`), `dd`
/// and fake TLS, no masking, IPv4 only.
pub fn mtprotoproxy_config(setup: &Setup<'_>) -> String {
    let users: Vec<String> = setup
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| format!("    \"u{i}\": {},\n", quoted(s)))
        .collect();
    format!(
        "# Generated by relay-bench: mtprotoproxy direct to the fake DC.\n\
         PORT = {port}\n\
         LISTEN_ADDR_IPV4 = {ip}\n\
         LISTEN_ADDR_IPV6 = None\n\
         PREFER_IPV6 = False\n\
         USE_MIDDLE_PROXY = False\n\
         FAST_MODE = True\n\
         MODES = {{\"classic\": False, \"secure\": True, \"tls\": True}}\n\
         TLS_DOMAIN = {domain}\n\
         MASK = False\n\
         STATS_PRINT_PERIOD = 3600\n\
         USERS = {{\n{users}}}\n",
        port = setup.listen.port(),
        ip = quoted(&setup.listen.ip().to_string()),
        domain = quoted(setup.domain),
        users = users.concat(),
    )
}

/// mtprotoproxy has no setting for DC addresses (they are the module's `TG_DATACENTERS_V4`
/// and `TG_DATACENTER_PORT`): this launcher loads the script as a module, points both at
/// the fake DC and runs its `main()` on `config`.
pub fn mtprotoproxy_launcher(script: &Path, config: &Path, dc: SocketAddr) -> String {
    let script = script.display().to_string();
    format!(
        "# Generated by relay-bench: mtprotoproxy with every DC at the fake DC.\n\
         import importlib.util, os, sys\n\
         script = {script}\n\
         sys.path.insert(0, os.path.dirname(os.path.abspath(script)))\n\
         sys.argv = [script, {config}]\n\
         spec = importlib.util.spec_from_file_location(\"mtprotoproxy\", script)\n\
         proxy = importlib.util.module_from_spec(spec)\n\
         spec.loader.exec_module(proxy)\n\
         proxy.TG_DATACENTERS_V4 = [{ip}] * 5\n\
         proxy.TG_DATACENTER_PORT = {port}\n\
         proxy.main()\n",
        script = quoted(&script),
        config = quoted(&config.display().to_string()),
        ip = quoted(&dc.ip().to_string()),
        port = dc.port(),
    )
}

/// Whether a `/proc/net/tcp`- or `tcp6`-style table has a socket listening on `port`.
pub fn table_listens(table: &str, port: u16) -> bool {
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Columns: sl, local address, remote address, state (0A = listen), …
        cols.get(1).is_some_and(|local| local.ends_with(&port)) && cols.get(3) == Some(&"0A")
    })
}

/// Whether process `pid` (seen from its own network namespace) has a listener on `port`.
pub fn listens(pid: u32, port: u16) -> bool {
    ["tcp", "tcp6"].iter().any(|file| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{file}"))
            .is_ok_and(|table| table_listens(&table, port))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup<'a>(secrets: &'a [String], dir: &'a Path) -> Setup<'a> {
        Setup {
            listen: "198.18.0.1:4445".parse().unwrap(),
            dc: "198.18.1.2:9002".parse().unwrap(),
            upstream_ip: "198.18.1.1".parse().unwrap(),
            domain: "bench.example.org",
            secrets,
            dir,
            python: Path::new("/venv/bin/python"),
            me: None,
            max_conns: 10_000,
        }
    }

    #[test]
    fn peers_parse_by_name() {
        assert_eq!(
            "telemt=/x/telemt".parse::<Peer>(),
            Ok(Peer {
                kind: Kind::Telemt,
                path: "/x/telemt".into()
            })
        );
        assert_eq!(
            "mtproxy=a=b".parse::<Peer>().map(|p| p.path),
            Ok(PathBuf::from("a=b"))
        );
        assert!(matches!(
            "nginx=/x".parse::<Peer>(),
            Err(PeerError::Unknown(_))
        ));
        assert!(matches!("telemt".parse::<Peer>(), Err(PeerError::Shape(_))));
        assert!(matches!(
            "telemt=".parse::<Peer>(),
            Err(PeerError::Shape(_))
        ));
        assert!(Kind::Mtproxy.middle_only());
        assert!(!Kind::Telemt.middle_only());
        assert!(Kind::Mtproxy.cannot("tls", 1).is_some());
        assert!(Kind::Mtproxy.cannot("dd", 100).is_some());
        assert!(Kind::Mtproxy.cannot("dd", 1).is_none());
        assert!(Kind::Mtprotoproxy.cannot("tls", 100).is_none());
    }

    #[test]
    fn telemt_goes_direct_to_the_fake_dc() {
        let secrets = vec!["00112233445566778899aabbccddeeff".to_owned(); 2];
        let dir = Path::new("/tmp/p");
        let peer: Peer = "telemt=/bin/telemt".parse().unwrap();
        let launch = launch(&peer, &setup(&secrets, dir)).unwrap();
        assert_eq!(launch.program, Path::new("/bin/telemt"));
        assert_eq!(launch.args, ["/tmp/p/telemt.toml"]);
        let config = &launch.files[0].1;
        let parsed: toml::Table = config.parse().expect("valid TOML");
        assert_eq!(parsed["general"]["use_middle_proxy"].as_bool(), Some(false));
        assert_eq!(
            parsed["general"]["quota_state_path"].as_str(),
            Some("/tmp/p/telemt.limit.json")
        );
        assert_eq!(parsed["server"]["port"].as_integer(), Some(4445));
        assert_eq!(
            parsed["dc_overrides"]["2"][0].as_str(),
            Some("198.18.1.2:9002")
        );
        assert_eq!(
            parsed["dc_overrides"]["-5"][0].as_str(),
            Some("198.18.1.2:9002")
        );
        assert_eq!(parsed["access"]["users"].as_table().unwrap().len(), 2);
        assert_eq!(
            parsed["upstreams"][0]["bind_addresses"][0].as_str(),
            Some("198.18.1.1")
        );
        assert_eq!(
            parsed["censorship"]["tls_domain"].as_str(),
            Some("bench.example.org")
        );
    }

    #[test]
    fn mtprotoproxy_runs_through_a_launcher_that_moves_the_dcs() {
        let secrets: Vec<String> = (0..3).map(|i| format!("{i:032x}")).collect();
        let dir = Path::new("/tmp/p");
        let peer: Peer = "mtprotoproxy=/src/mtprotoproxy.py".parse().unwrap();
        let launch = launch(&peer, &setup(&secrets, dir)).unwrap();
        assert_eq!(launch.program, Path::new("/venv/bin/python"));
        assert_eq!(launch.args, ["/tmp/p/mtprotoproxy-launch.py"]);
        let (_, config) = &launch.files[0];
        assert!(config.contains("PORT = 4445\n"));
        assert!(config.contains("USE_MIDDLE_PROXY = False\n"));
        assert!(config.contains(&format!("\"u2\": \"{}\"", secrets[2])));
        let (_, launcher) = &launch.files[1];
        assert!(launcher.contains("script = \"/src/mtprotoproxy.py\"\n"));
        assert!(launcher.contains("proxy.TG_DATACENTERS_V4 = [\"198.18.1.2\"] * 5\n"));
        assert!(launcher.contains("proxy.TG_DATACENTER_PORT = 9002\n"));
        assert!(launcher.contains("\"/tmp/p/mtprotoproxy-config.py\""));
    }

    #[test]
    fn mtproxy_goes_through_the_fake_middle_end() {
        let secrets: Vec<String> = (0..20).map(|i| format!("{i:032x}")).collect();
        let dir = Path::new("/tmp/p");
        let peer: Peer = "mtproxy=/bin/mtproto-proxy".parse().unwrap();
        assert!(
            launch(&peer, &setup(&secrets, dir)).is_none(),
            "no ME given"
        );
        let me_secret = Path::new("/tmp/me-secret.bin");
        let with_me = Setup {
            me: Some(("198.18.1.2:8888".parse().unwrap(), me_secret)),
            ..setup(&secrets, dir)
        };
        let launch = launch(&peer, &with_me).unwrap();
        assert_eq!(launch.program, Path::new("/bin/mtproto-proxy"));
        let args = launch.args.join(" ");
        assert!(args.contains("-H 4445 "), "{args}");
        assert!(args.contains("--aes-pwd /tmp/me-secret.bin "), "{args}");
        assert_eq!(launch.args.iter().filter(|a| *a == "-S").count(), 16);
        assert!(args.ends_with("/tmp/p/proxy-multi.conf"));
        assert!(launch.files[0].1.contains("proxy_for 2 198.18.1.2:8888;"));
    }

    #[test]
    fn listeners_are_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                     0: 010012C6:115D 00000000:0000 0A 00000000:00000000\n\
                     1: 010012C6:115C 020012C6:D431 01 00000000:00000000\n";
        assert!(table_listens(table, 4445));
        assert!(!table_listens(table, 4444), "established, not listening");
        assert!(!table_listens(table, 9002));
    }
}
