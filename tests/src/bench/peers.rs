//! Other MTProto proxies measured next to relay (`relay-bench --peer NAME=PATH`): which ones
//! the benchmark knows, the files each is started with (written by the benchmark, pointing the
//! proxy at the fake DC in direct mode) and its command line, and how to tell that it listens.
//!
//! The proxies are built by whoever runs the benchmark, from their own repositories (see
//! docs/bench.md); nothing of theirs lives in this repository.

use std::{
    fmt,
    net::SocketAddr,
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

    /// Why this proxy cannot take the benchmark's load (direct to the fake DC), if it cannot.
    pub fn unsupported(self) -> Option<&'static str> {
        match self {
            Kind::Mtproxy => Some(
                "the official C proxy (TelegramMessenger/MTProxy) has no direct mode: it relays \
                 only through Telegram's middle proxies listed in proxy-multi.conf, so it cannot \
                 be pointed at the fake DC; and its fake-TLS mode (-D) probes the domain's real \
                 TLS 1.3 server at start, which the benchmark's namespaces cannot reach. Its \
                 rows are skipped",
            ),
            Kind::Telemt | Kind::Mtprotoproxy => None,
        }
    }
}

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
    /// The fake-TLS domain.
    pub domain: &'a str,
    /// The users' secrets (32 hex digits each).
    pub secrets: &'a [String],
    /// A directory of its own for its configuration.
    pub dir: &'a Path,
    /// The Python interpreter for mtprotoproxy.
    pub python: &'a Path,
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

/// The files and command that start `peer` as `setup` says. Panics never; `Kind::Mtproxy`
/// (see [`Kind::unsupported`]) has no launch and gives `None`.
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
        Kind::Mtproxy => None,
    }
}

/// A string literal valid in TOML and Python alike (JSON's escapes are a subset of both).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// telemt in direct mode (`use_middle_proxy = false`), `dd` and fake TLS, every DC id of
/// the client's header sent to the fake DC through `[dc_overrides]`, no masking (nothing to
/// forward a failed client to) and no TLS emulation (it would fetch the domain's real
/// certificate), no API listener.
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
        domain = quoted(setup.domain),
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
            domain: "bench.example.org",
            secrets,
            dir,
            python: Path::new("/venv/bin/python"),
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
        assert!(Kind::Mtproxy.unsupported().is_some());
        assert!(Kind::Telemt.unsupported().is_none());
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
        let mtproxy: Peer = "mtproxy=/x".parse().unwrap();
        assert!(super::launch(&mtproxy, &setup(&secrets, dir)).is_none());
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
