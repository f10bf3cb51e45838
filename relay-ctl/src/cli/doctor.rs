//! `relay-ctl doctor`: checks what a relay needs to work (its config, the mask site, the
//! clock, the DCs and the SOCKS5 proxy to them, XDP, the running daemon, the public host
//! name, CrowdSec) and says what to do about each failure. Each check is a function returning
//! a [`Check`], so it can be tested alone.

mod crowdsec;
mod socks5;
mod xdp;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    config::{Config, UpstreamMode},
    control::{api::Request, client},
};
use relay_proto::dc::{IpFamily, dc_addrs};

/// How long each network step (resolve, connect, TLS handshake, answer) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest HTTP answer head read from the mask or the metrics endpoint.
const MAX_HEAD: usize = 16 * 1024;

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Broken: the check's `fix` says what to do.
    Fail,
    /// Not run (not applicable, `--offline`, or an earlier check failed).
    Skip,
}

/// One check's result: one line of output, one element of `--json`'s `checks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The check's name (`config`, `mask`, …).
    pub name: &'static str,
    /// What it found.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// The text line: `ok|FAIL|skip <name>: <detail>[; fix: <fix>]`.
    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        match &self.fix {
            Some(fix) => format!("{status} {}: {}; fix: {fix}", self.name, self.detail),
            None => format!("{status} {}: {}", self.name, self.detail),
        }
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether no check failed (skips allowed).
    pub ok: bool,
    /// Every check, in the order run.
    pub checks: Vec<Check>,
}

/// `relay-ctl doctor`'s options.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The configuration file; the embedded default without it.
    pub config: Option<PathBuf>,
    /// Skip checks that need the network beyond loopback.
    pub offline: bool,
    /// Trust this CA file (PEM) for the mask instead of the system bundle.
    pub mask_ca: Option<PathBuf>,
}

/// Why talking TLS to the mask failed.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// `[tls] mask` did not resolve.
    #[error("{target} does not resolve: {message}")]
    Resolve {
        /// The mask target.
        target: String,
        /// What the resolver said.
        message: String,
    },
    /// No address of the mask accepted a TCP connection.
    #[error("{target} unreachable: {message}")]
    Connect {
        /// The mask target.
        target: String,
        /// The last error.
        message: String,
    },
    /// The CA file could not be used.
    #[error("CA file {path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The certificate does not cover `[tls] domain`.
    #[error("the certificate of {target} is not valid for {domain}")]
    NameMismatch {
        /// The mask target.
        target: String,
        /// `[tls] domain`.
        domain: String,
    },
    /// The TLS handshake failed otherwise (untrusted or expired certificate, …).
    #[error("TLS with {target} failed: {message}")]
    Tls {
        /// The mask target.
        target: String,
        /// rustls's error.
        message: String,
    },
    /// The HTTP exchange after the handshake failed.
    #[error("HTTP HEAD to {target}: {message}")]
    Http {
        /// The mask target.
        target: String,
        /// What went wrong.
        message: String,
    },
}

/// What the mask answered: its address and its `Date` header, if it sent one.
#[derive(Debug, Clone)]
pub struct MaskProbe {
    /// The address connected to.
    pub addr: SocketAddr,
    /// Connect plus TLS handshake time.
    pub elapsed: Duration,
    /// The `Date` header as unix seconds, if present and readable.
    pub date_unix: Option<i64>,
    /// The raw `Date` header, if present.
    pub date_text: Option<String>,
}

/// Runs the doctor and prints its report; exit status 0 when no check failed.
pub fn main(options: &Options, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relay-ctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(run(options));
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("relay-ctl: encoding the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        for check in &report.checks {
            println!("{}", check.line());
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every check: the config first (the others need it), then the rest concurrently.
pub async fn run(options: &Options) -> Report {
    let (config_check, config) = check_config(options.config.as_deref());
    let mut checks = vec![config_check];
    match config {
        None => {
            for name in [
                "mask",
                "clock",
                "dc",
                "socks5",
                "xdp",
                "admin",
                "metrics",
                "public_host",
                "crowdsec",
            ] {
                checks.push(Check::skip(name, "no usable configuration"));
            }
        }
        Some(config) => {
            let ((mask, clock), dc, socks5, xdp, admin, metrics, public_host, crowdsec) = tokio::join!(
                check_mask_and_clock(&config, options),
                check_dc(&config, options.offline),
                socks5::check(&config, options.offline),
                xdp::check(&config),
                check_admin(&config),
                check_metrics(&config),
                check_public_host(&config, options.offline),
                crowdsec::check(&config, options.offline),
            );
            checks.extend([
                mask,
                clock,
                dc,
                socks5,
                xdp,
                admin,
                metrics,
                public_host,
                crowdsec,
            ]);
        }
    }
    Report {
        ok: checks.iter().all(|c| c.status != Status::Fail),
        checks,
    }
}

/// `config`: the file loads and validates, and does not show its secrets to every user.
pub fn check_config(path: Option<&Path>) -> (Check, Option<Config>) {
    const NAME: &str = "config";
    let Some(path) = path else {
        return match Config::embedded() {
            Ok(config) => (
                Check::ok(NAME, "embedded default (no --config)"),
                Some(config),
            ),
            Err(e) => (
                Check::fail(
                    NAME,
                    e.to_string(),
                    "report this: the embedded default is broken",
                ),
                None,
            ),
        };
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            return (
                Check::fail(
                    NAME,
                    e.to_string(),
                    format!(
                        "make {} readable and valid (`relay-ctl config check {}` shows the \
                         error in place)",
                        path.display(),
                        path.display()
                    ),
                ),
                None,
            );
        }
    };
    let check = match crate::config::secrets_exposure(path, &config) {
        Some(warning) => Check::fail(
            NAME,
            warning,
            format!("chmod o-r {} (or chmod 600)", path.display()),
        ),
        None => Check::ok(NAME, format!("{} loads and validates", path.display())),
    };
    (check, Some(config))
}

/// Whether `host` (a name or address, without port) is this host's loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host:port` (or `[v6]:port`) into host and port.
fn split_target(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port = port.parse().ok()?;
    Some((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// `mask` and `clock`: one TLS connection to the mask serves both.
pub async fn check_mask_and_clock(config: &Config, options: &Options) -> (Check, Check) {
    let target = config.tls.mask_target();
    let host = split_target(&target).map_or(target.as_str(), |(h, _)| h);
    if options.offline && !is_loopback_host(host) {
        return (
            Check::skip("mask", format!("--offline: {target} is not on loopback")),
            Check::skip("clock", "--offline: the mask is not on loopback"),
        );
    }
    match probe_mask(&target, &config.tls.domain, options.mask_ca.as_deref()).await {
        Ok(probe) => (
            Check::ok(
                "mask",
                format!(
                    "{target} ({}) serves a certificate for {} ({} ms)",
                    probe.addr,
                    config.tls.domain,
                    probe.elapsed.as_millis()
                ),
            ),
            check_clock(&probe, unix_now(), config.tls.time_skew_secs),
        ),
        Err(e) => {
            let fix = match &e {
                MaskError::NameMismatch { .. } => format!(
                    "pick a mask that serves {} ([tls] mask, or [tls] domain)",
                    config.tls.domain
                ),
                MaskError::Ca { .. } => "give a readable PEM CA file".to_owned(),
                _ => format!(
                    "make {target} reachable from this host, or pick a mask that serves {} \
                     ([tls] mask)",
                    config.tls.domain
                ),
            };
            (
                Check::fail("mask", e.to_string(), fix),
                Check::skip("clock", "the mask did not answer"),
            )
        }
    }
}

/// The local clock as unix seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `clock`: the mask's `Date` against `now`; fake-TLS clients are refused past
/// `time_skew_secs`, so a half of it is the most this host may be off.
pub fn check_clock(probe: &MaskProbe, now: i64, time_skew_secs: u32) -> Check {
    const NAME: &str = "clock";
    let Some(date) = probe.date_unix else {
        return match &probe.date_text {
            Some(text) => Check::skip(
                NAME,
                format!("the mask's Date header is unreadable: {text}"),
            ),
            None => Check::skip(NAME, "the mask sent no Date header"),
        };
    };
    let offset = now - date;
    let limit = i64::from(time_skew_secs / 2);
    let detail = format!(
        "local clock {} the mask's Date by {} s (limit {limit} s: half of [tls] time_skew_secs)",
        if offset >= 0 { "ahead of" } else { "behind" },
        offset.abs()
    );
    if offset.abs() > limit {
        Check::fail(
            NAME,
            detail,
            "synchronise the clock (systemd-timesyncd, chrony or ntpd): fake-TLS clients are \
             refused past [tls] time_skew_secs",
        )
    } else {
        Check::ok(NAME, detail)
    }
}

/// Connects to `target` with TLS as a client of `domain` would, then sends `HEAD /` and reads
/// the answer's `Date`.
pub async fn probe_mask(
    target: &str,
    domain: &str,
    ca_file: Option<&Path>,
) -> Result<MaskProbe, MaskError> {
    let connector = tls_connector(ca_file)?;
    let name = ServerName::try_from(domain.to_owned()).map_err(|e| MaskError::Tls {
        target: target.to_owned(),
        message: format!("[tls] domain `{domain}`: {e}"),
    })?;
    let addrs = resolve(target)
        .await
        .map_err(|message| MaskError::Resolve {
            target: target.to_owned(),
            message,
        })?;
    let started = Instant::now();
    let (tcp, addr) = connect_any(&addrs)
        .await
        .map_err(|message| MaskError::Connect {
            target: target.to_owned(),
            message,
        })?;
    let tls_error = |e: std::io::Error| {
        let mismatch = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName
                            | rustls::CertificateError::NotValidForNameContext { .. }
                    )
                )
            });
        if mismatch {
            MaskError::NameMismatch {
                target: target.to_owned(),
                domain: domain.to_owned(),
            }
        } else {
            MaskError::Tls {
                target: target.to_owned(),
                message: e.to_string(),
            }
        }
    };
    let mut tls = match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(tls_error(e)),
        Err(_) => {
            return Err(MaskError::Tls {
                target: target.to_owned(),
                message: format!("no handshake within {} s", STEP_TIMEOUT.as_secs()),
            });
        }
    };
    let elapsed = started.elapsed();
    let http = |message: String| MaskError::Http {
        target: target.to_owned(),
        message,
    };
    let request = format!(
        "HEAD / HTTP/1.1\r\nHost: {domain}\r\nUser-Agent: relay-doctor\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    let head = tokio::time::timeout(STEP_TIMEOUT, async {
        tls.write_all(request.as_bytes()).await?;
        read_head(&mut tls).await
    })
    .await
    .map_err(|_| http(format!("no answer within {} s", STEP_TIMEOUT.as_secs())))?
    .map_err(|e| http(e.to_string()))?;
    let date_text = header(&head, "date");
    Ok(MaskProbe {
        addr,
        elapsed,
        date_unix: date_text.as_deref().and_then(parse_http_date),
        date_text,
    })
}

/// A rustls connector trusting `ca_file` (else the system bundle).
fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, MaskError> {
    let path = ca_file.unwrap_or(Path::new(crate::http_client::SYSTEM_CA_BUNDLE));
    let ca_error = |message: String| MaskError::Ca {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))? {
        // A bundle may hold certificates webpki cannot use; the others still count.
        let _ = roots.add(cert.map_err(|e| ca_error(e.to_string()))?);
    }
    if roots.is_empty() {
        return Err(ca_error("no usable certificate".to_owned()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ca_error(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Resolves `host:port`, bounded in time.
async fn resolve(target: &str) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host(target)).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("no address".to_owned())
            } else {
                Ok(addrs)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
    }
}

/// Connects to the first of `addrs` that answers, each bounded by [`STEP_TIMEOUT`].
async fn connect_any(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut last = "no address".to_owned();
    for &addr in addrs {
        match connect(addr).await {
            Ok((tcp, _)) => return Ok((tcp, addr)),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// One TCP connect bounded by [`STEP_TIMEOUT`], with the time it took.
async fn connect(addr: SocketAddr) -> Result<(TcpStream, Duration), String> {
    let started = Instant::now();
    match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Ok((tcp, started.elapsed())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
    }
}

/// One tunnel through the SOCKS5 proxy to `addr`, bounded by twice [`STEP_TIMEOUT`] (two
/// connects), with the time it took.
async fn connect_socks5(
    proxy: &crate::relay::upstream::Socks5Upstream,
    addr: SocketAddr,
) -> Result<Duration, String> {
    let started = Instant::now();
    let dial = crate::relay::upstream::dial_socks5(proxy, addr);
    match tokio::time::timeout(STEP_TIMEOUT * 2, dial).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no tunnel within {} s",
            (STEP_TIMEOUT * 2).as_secs()
        )),
    }
}

/// Reads an HTTP answer's head (up to the blank line, the end of stream or [`MAX_HEAD`]).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            // A server that closes without close_notify still sent its head.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !head.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    if head.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without answering",
        ));
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// The value of header `name` (lowercase) in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7) as unix seconds.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let (_, rest) = text.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: i64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = i64::try_from(MONTHS.iter().position(|m| *m == month)? + 1).ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The addresses `dc` checks per DC: the middle proxies in middle mode, else `[upstream.dc]`
/// overrides or the built-in addresses of DCs 1 to 5. `Err` says why there are none.
fn dc_targets(config: &Config) -> Result<(&'static str, BTreeMap<i16, Vec<SocketAddr>>), String> {
    if config.upstream.effective_mode() == UpstreamMode::Middle {
        let mut list = relay_proto::middle::proxy_config::ProxyConfig::default();
        if let Some(file) = &config.upstream.middle.config_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("reading {}: {e}", file.display()))?;
            list = relay_proto::middle::proxy_config::ProxyConfig::parse(&text)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        } else if let Ok(state) = super::open_state_dir(config)
            && let Ok(Some(cached)) = crate::middle::sources::cached(&state)
        {
            list = cached.config;
        }
        if list.dcs.is_empty() {
            return Err(
                "middle mode, and no middle-proxy list cached yet (the relay fetches it \
                        at start)"
                    .to_owned(),
            );
        }
        return Ok(("middle proxies of DC", list.dcs));
    }
    let targets = (1..=5)
        .map(|id| {
            let addrs = config.upstream.dc.get(&id).cloned().unwrap_or_else(|| {
                let mut addrs = dc_addrs(id, IpFamily::V4).to_vec();
                addrs.extend_from_slice(dc_addrs(id, IpFamily::V6));
                addrs
            });
            (id, addrs)
        })
        .collect();
    Ok(("DC", targets))
}

/// `dc`: every DC (or middle proxy group) answers a TCP connect on one of its addresses.
pub async fn check_dc(config: &Config, offline: bool) -> Check {
    const NAME: &str = "dc";
    let (what, targets) = match dc_targets(config) {
        Ok(targets) => targets,
        Err(why) => return Check::skip(NAME, why),
    };
    // Through the SOCKS5 proxy when there is one, as the relay connects; its own failures
    // are the `socks5` check's.
    let proxy = match crate::relay::upstream::Socks5Upstream::read(&config.upstream) {
        Ok(proxy) => proxy.map(Arc::new),
        Err(_) => return Check::skip(NAME, "the SOCKS5 proxy cannot be used (see socks5)"),
    };
    if offline
        && proxy.is_none()
        && targets
            .values()
            .flatten()
            .any(|addr| !addr.ip().is_loopback())
    {
        return Check::skip(NAME, "--offline: the DCs are not on loopback");
    }
    let what = match &proxy {
        Some(p) => format!("{what} (through SOCKS5 proxy {})", p.server),
        None => what.to_owned(),
    };
    let results = connect_times(&targets, proxy).await;
    let mut found = Vec::new();
    let mut dead = Vec::new();
    for (id, result) in results {
        match result {
            Ok((addr, time)) => found.push(format!("{id} {} ms via {addr}", time.as_millis())),
            Err(e) => dead.push(format!("{id} ({e})")),
        }
    }
    if dead.is_empty() {
        Check::ok(NAME, format!("{what} {}", found.join(", ")))
    } else {
        Check::fail(
            NAME,
            format!("no address answers for {what} {}", dead.join(", ")),
            "let this host reach Telegram on TCP (firewall, routing, provider blocks), or \
             correct [upstream.dc]",
        )
    }
}

/// Connects to every address of every target at once; per target, the fastest address or
/// the last error.
async fn connect_times(
    targets: &BTreeMap<i16, Vec<SocketAddr>>,
    proxy: Option<Arc<crate::relay::upstream::Socks5Upstream>>,
) -> Vec<(i16, Result<(SocketAddr, Duration), String>)> {
    let mut set = tokio::task::JoinSet::new();
    for (&id, addrs) in targets {
        for &addr in addrs {
            let proxy = proxy.clone();
            set.spawn(async move {
                let time = match proxy {
                    Some(proxy) => connect_socks5(&proxy, addr).await,
                    None => connect(addr).await.map(|(_, t)| t),
                };
                (id, addr, time)
            });
        }
    }
    let mut best: BTreeMap<i16, Result<(SocketAddr, Duration), String>> = targets
        .keys()
        .map(|&id| (id, Err("no address".to_owned())))
        .collect();
    while let Some(joined) = set.join_next().await {
        let Ok((id, addr, result)) = joined else {
            continue;
        };
        let slot = best.entry(id).or_insert_with(|| Err(String::new()));
        match (result, &slot) {
            (Ok(time), Ok((_, old))) if time >= *old => {}
            (Ok(time), _) => *slot = Ok((addr, time)),
            (Err(e), Err(_)) => *slot = Err(format!("{addr}: {e}")),
            (Err(_), Ok(_)) => {}
        }
    }
    best.into_iter().collect()
}

/// `admin`: the admin socket answers a stats request.
pub async fn check_admin(config: &Config) -> Check {
    const NAME: &str = "admin";
    let socket = config.admin.socket.clone();
    let answer = tokio::task::spawn_blocking(move || {
        client::call_with_timeout(&socket, &Request::Stats, STEP_TIMEOUT)
    })
    .await;
    let socket = config.admin.socket.display();
    match answer {
        Ok(Ok(_)) => Check::ok(NAME, format!("{socket} answers a stats request")),
        Ok(Err(e)) => Check::fail(
            NAME,
            e.to_string(),
            format!(
                "is relay running? (systemctl status relay); it listens on {socket} ([admin] \
                 socket)"
            ),
        ),
        Err(e) => Check::fail(NAME, e.to_string(), "report this"),
    }
}

/// `metrics`: the metrics endpoint answers `GET /metrics` with 200.
pub async fn check_metrics(config: &Config) -> Check {
    const NAME: &str = "metrics";
    if !config.metrics.enabled {
        return Check::skip(NAME, "[metrics] enabled = false");
    }
    let mut addr = config.metrics.listen;
    // A wildcard listener is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let fix = format!("is relay running? ([metrics] listen = \"{addr}\")");
    let exchange = async {
        let (mut tcp, _) = connect(addr).await?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: relay-doctor\r\n\
             Connection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(STEP_TIMEOUT, read_head(&mut tcp))
            .await
            .map_err(|_| format!("no answer within {} s", STEP_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())
    };
    match exchange.await {
        Ok(head) => {
            let status = head.lines().next().unwrap_or_default().to_owned();
            if status.split(' ').nth(1) == Some("200") {
                Check::ok(NAME, format!("http://{addr}/metrics answers"))
            } else {
                Check::fail(NAME, format!("http://{addr}/metrics: {status}"), fix)
            }
        }
        Err(e) => Check::fail(NAME, format!("http://{addr}/metrics: {e}"), fix),
    }
}

/// `public_host`: `[server] public_host` resolves, and whether one of its addresses is this
/// host's (a warning in the detail, not a failure: a balancer or NAT is in front).
pub async fn check_public_host(config: &Config, offline: bool) -> Check {
    const NAME: &str = "public_host";
    let Some(host) = config.server.public_host.as_deref() else {
        return Check::skip(NAME, "[server] public_host unset");
    };
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    if offline && literal.is_none() && !is_loopback_host(host) {
        return Check::skip(NAME, format!("--offline: {host} needs DNS"));
    }
    let addrs: Vec<IpAddr> = match literal {
        Some(ip) => vec![ip],
        None => match resolve(&format!("{host}:443")).await {
            Ok(addrs) => addrs.into_iter().map(|a| a.ip()).collect(),
            Err(e) => {
                return Check::fail(
                    NAME,
                    format!("{host} does not resolve: {e}"),
                    "add the DNS record, or correct [server] public_host",
                );
            }
        },
    };
    let local = local_addrs();
    let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let note = if addrs.iter().any(|a| local.contains(a)) {
        "one of them is this host's"
    } else {
        "warning: none is an address of this host, links may point elsewhere (fine behind NAT \
         or a balancer)"
    };
    Check::ok(NAME, format!("{host} is {}; {note}", shown.join(", ")))
}

/// This host's interface addresses (empty if they cannot be listed).
fn local_addrs() -> Vec<IpAddr> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifaddrs
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(date: Option<i64>) -> MaskProbe {
        MaskProbe {
            addr: SocketAddr::from(([127, 0, 0, 1], 443)),
            elapsed: Duration::ZERO,
            date_unix: date,
            date_text: date.map(|d| d.to_string()),
        }
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }

    #[test]
    fn clock_within_half_the_skew_passes() {
        assert_eq!(check_clock(&probe(Some(1000)), 1005, 10).status, Status::Ok);
        assert_eq!(check_clock(&probe(Some(1000)), 995, 10).status, Status::Ok);
    }

    #[test]
    fn clock_past_half_the_skew_fails_with_the_offset() {
        let check = check_clock(&probe(Some(1000)), 4600, 120);
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.detail.contains("ahead of the mask's Date by 3600 s"),
            "{check:?}"
        );
        let check = check_clock(&probe(Some(4600)), 1000, 120);
        assert!(
            check.detail.contains("behind the mask's Date by 3600 s"),
            "{check:?}"
        );
    }

    #[test]
    fn clock_without_date_is_skipped() {
        assert_eq!(check_clock(&probe(None), 1000, 10).status, Status::Skip);
    }

    #[test]
    fn headers_are_found_case_insensitively() {
        let head = "HTTP/1.1 200 OK\r\nServer: x\r\nDATE: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n";
        assert_eq!(
            header(head, "date").as_deref(),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        assert_eq!(header(head, "location"), None);
    }

    #[test]
    fn lines_carry_status_name_detail_and_fix() {
        assert_eq!(Check::ok("dc", "fine").line(), "ok dc: fine");
        assert_eq!(Check::skip("dc", "n/a").line(), "skip dc: n/a");
        assert_eq!(
            Check::fail("dc", "down", "fix it").line(),
            "FAIL dc: down; fix: fix it"
        );
    }

    #[test]
    fn missing_config_file_fails() {
        let (check, config) = check_config(Some(Path::new("/nonexistent/relay.toml")));
        assert_eq!(check.status, Status::Fail);
        assert!(config.is_none());
        assert!(check.fix.is_some());
    }

    #[test]
    fn a_world_readable_config_with_secrets_fails() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = [\"127.0.0.1:8443\"]\nmodes = [\"secure\"]\n\n[[users]]\n\
             name = \"alice\"\nsecret = \"00112233445566778899aabbccddeeff\"\n",
        )
        .expect("write config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (check, config) = check_config(Some(&path));
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(
            check
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("chmod o-r")),
            "{check:?}"
        );
        assert!(config.is_some(), "the other checks still run");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(check_config(Some(&path)).0.status, Status::Ok);
    }

    #[tokio::test]
    async fn public_host_on_loopback_is_local_and_unset_is_skipped() {
        let mut config = Config::embedded().expect("embedded config");
        assert_eq!(check_public_host(&config, false).await.status, Status::Skip);
        config.server.public_host = Some("127.0.0.1".to_owned());
        let check = check_public_host(&config, true).await;
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert!(check.detail.contains("this host's"), "{check:?}");
        config.server.public_host = Some("proxy.example.com".to_owned());
        assert_eq!(check_public_host(&config, true).await.status, Status::Skip);
    }

    #[tokio::test]
    async fn offline_skips_a_remote_mask() {
        let mut config = Config::embedded().expect("embedded config");
        config.tls.mask = Some("www.example.com:443".to_owned());
        let options = Options {
            offline: true,
            ..Options::default()
        };
        let (mask, clock) = check_mask_and_clock(&config, &options).await;
        assert_eq!((mask.status, clock.status), (Status::Skip, Status::Skip));
    }

    #[test]
    fn dc_targets_take_overrides_and_builtins() {
        let mut config = Config::embedded().expect("embedded config");
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        config.upstream.dc.insert(2, vec![addr]);
        let (_, targets) = dc_targets(&config).expect("targets");
        assert_eq!(targets.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(targets[&2], [addr]);
        assert!(targets[&1].len() >= 2, "IPv4 and IPv6: {:?}", targets[&1]);
    }

    #[tokio::test]
    async fn a_closed_port_fails_the_dc_check() {
        let mut config = Config::embedded().expect("embedded config");
        // A port just released is closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        for id in 1..=5 {
            let addr = if id == 3 {
                closed
            } else {
                open.local_addr().expect("addr")
            };
            config.upstream.dc.insert(id, vec![addr]);
        }
        let check = check_dc(&config, true).await;
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.detail.contains("DC 3"), "{check:?}");
    }
}
