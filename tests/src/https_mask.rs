//! A small HTTPS site on loopback to stand behind `[tls] mask`: a real TLS stack (rustls) with
//! a self-signed certificate for the site's name, an HTTP answer and an idle timeout, so that
//! a prober's view of the site can be compared with its view of the relay in front of it.
//!
//! Each connection has `idle` to complete its TLS handshake and send a request head; then it
//! gets a small HTML page, a close_notify and a FIN (as after `Connection: close`). A
//! connection that has not got that far by then is closed with a FIN. Input that is not TLS
//! gets what rustls does with it: an alert, then the close. The server counts the connections
//! it accepted, so tests can tell how many a relay opened.

use std::{
    io::{self, ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rustls::{
    ServerConfig, ServerConnection,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

/// The page every complete request gets.
const PAGE: &str = "<!doctype html><html><head><title>Welcome</title></head>\
<body><h1>It works</h1><p>Nothing to see here.</p></body></html>\n";

/// How long the server keeps reading after its answer, until the peer closes (a web server's
/// lingering close), so a late byte from the peer does not turn the FIN into a reset.
const LINGER: Duration = Duration::from_secs(1);

/// A running HTTPS site; it serves until the process ends.
#[derive(Clone)]
pub struct HttpsMask {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The connections' idle timeout.
    pub idle: Duration,
    /// The site's self-signed certificate (PEM): a CA file for clients that verify it.
    pub cert_pem: Arc<Vec<u8>>,
    accepted: Arc<AtomicUsize>,
}

impl HttpsMask {
    /// Starts a site for `domain` on a free loopback port with the idle timeout `idle`. Needs
    /// the `openssl` command (for the certificate).
    pub fn start(domain: &str, idle: Duration) -> HttpsMask {
        HttpsMask::start_with_date(domain, idle, None)
    }

    /// Like [`HttpsMask::start`], with a `Date` header in every answer when `date_offset` is
    /// set: the local clock plus that many seconds (negative: behind), for clock checks.
    pub fn start_with_date(domain: &str, idle: Duration, date_offset: Option<i64>) -> HttpsMask {
        let (config, cert_pem) = server_config(domain);
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("https mask bind");
        let mask = HttpsMask {
            addr: listener.local_addr().expect("https mask addr"),
            idle,
            cert_pem: Arc::new(cert_pem),
            accepted: Arc::default(),
        };
        let accepted = mask.accepted.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let deadline = Instant::now() + idle;
                accepted.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                thread::spawn(move || serve(stream, config, deadline, date_offset));
            }
        });
        mask
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until no new connection has come for `quiet` (at most `limit`): a relay that
    /// probes its mask at start (to learn its TLS flight) has then finished, and counts taken
    /// from here on are the test's own. Returns the connections accepted so far.
    pub fn wait_quiet(&self, quiet: Duration, limit: Duration) -> usize {
        let end = Instant::now() + limit;
        let mut count = self.accepted();
        let mut since = Instant::now();
        while Instant::now() < end {
            thread::sleep(Duration::from_millis(50));
            let now = self.accepted();
            if now != count {
                (count, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        count
    }
}

/// The rustls server configuration with a fresh self-signed certificate for `domain`, and
/// that certificate (PEM).
fn server_config(domain: &str) -> (ServerConfig, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path(), domain);
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.path().join("cert.pem"))
            .expect("read cert.pem")
            .collect::<Result<_, _>>()
            .expect("parse cert.pem");
    let key = PrivateKeyDer::from_pem_file(dir.path().join("key.pem")).expect("parse key.pem");
    let pem = std::fs::read(dir.path().join("cert.pem")).expect("read cert.pem");
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
    (config, pem)
}

/// A self-signed P-256 certificate for `domain` in `dir`: `cert.pem`, `key.pem`.
fn make_cert(dir: &Path, domain: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-subj")
        .arg(format!("/CN={domain}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{domain}"))
        // A server certificate, not a CA: clients that trust it directly (webpki) refuse a CA
        // certificate used as an end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (apt package openssl)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The answer; with a `Date` header `date_offset` seconds off the local clock if given.
fn response(date_offset: Option<i64>) -> Vec<u8> {
    let date = date_offset.map_or_else(String::new, |offset| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        format!("Date: {}\r\n", http_date(now + offset))
    });
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx\r\n{date}Content-Type: text/html\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
        PAGE.len()
    )
    .into_bytes()
}

/// Unix seconds as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[usize::try_from(days.rem_euclid(7)).unwrap_or(0)],
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Serves one connection until it is answered, fails or reaches `deadline`.
fn serve(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
    deadline: Instant,
    date_offset: Option<i64>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut tls) = ServerConnection::new(config) else {
        return;
    };
    let mut request = Vec::new();
    loop {
        if flush(&mut tls, &mut tcp).is_err() {
            return;
        }
        if request.windows(4).any(|w| w == b"\r\n\r\n") {
            let _ = tls.writer().write_all(&response(date_offset));
            tls.send_close_notify();
            let _ = flush(&mut tls, &mut tcp);
            let _ = tcp.shutdown(Shutdown::Write);
            linger(&mut tcp);
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Idle timeout: everything the peer sent has been read, so this is a FIN.
            let _ = tcp.shutdown(Shutdown::Both);
            return;
        }
        if tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match tls.read_tls(&mut tcp) {
            // The peer closed: so does the server.
            Ok(0) => return,
            Ok(_) => match tls.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let at = request.len();
                        request.resize(at + n, 0);
                        if tls.reader().read_exact(&mut request[at..]).is_err() {
                            return;
                        }
                    }
                }
                Err(_) => {
                    // rustls has queued its alert: send it, then close.
                    let _ = flush(&mut tls, &mut tcp);
                    return;
                }
            },
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Writes whatever TLS output is pending.
fn flush(tls: &mut ServerConnection, tcp: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(tcp)?;
    }
    Ok(())
}

/// Reads and discards until the peer closes or [`LINGER`] passes.
fn linger(tcp: &mut TcpStream) {
    let end = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match tcp.read(&mut buf) {
            Ok(1..) => {}
            _ => return,
        }
    }
}
